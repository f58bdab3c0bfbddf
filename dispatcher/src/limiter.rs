//! PLIVO_MAX_RPS as one global rate, shared by every dispatcher through Redis (GCRA): one
//! script call per send reserves a slot, and the task sleeps until it.

use std::{sync::LazyLock, time::Duration};

use otp_shared::redis_conn::RedisConn;
use redis::Script;
use tokio::time::Instant;

use otp_shared::keys::Keys;

static BUCKET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("bucket.lua")));

#[derive(Clone)]
pub struct RateLimiter {
    conn: RedisConn,
    key: String,
    per_second: u32,
}

impl RateLimiter {
    pub fn new(conn: RedisConn, keys: &Keys, per_second: u32) -> Self {
        Self {
            conn,
            key: keys.provider_bucket(),
            per_second,
        }
    }

    /// Reserves the next send slot and sleeps until it. Returns false, reserving nothing, if
    /// the slot is at or after `deadline`. If Redis is unreachable the error is returned:
    /// sending blind could exceed the account's limit.
    pub async fn acquire(&self, deadline: Instant) -> redis::RedisResult<bool> {
        let max_wait = deadline.saturating_duration_since(Instant::now());
        let wait_ms: i64 = BUCKET
            .key(&self.key)
            .arg(self.per_second)
            .arg(max_wait.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if wait_ms < 0 {
            return Ok(false);
        }
        if wait_ms > 0 {
            tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
        }
        Ok(true)
    }
}
