//! PLIVO_MAX_RPS as one global rate, shared by every dispatcher through a Redis token bucket.

use std::{sync::LazyLock, time::Duration};

use redis::{Script, aio::ConnectionManager};
use tokio::time::Instant;

use otp_shared::keys::Keys;

static BUCKET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("bucket.lua")));

#[derive(Clone)]
pub struct RateLimiter {
    conn: ConnectionManager,
    key: String,
    per_second: u32,
}

impl RateLimiter {
    pub fn new(conn: ConnectionManager, keys: &Keys, per_second: u32) -> Self {
        Self {
            conn,
            key: keys.provider_bucket(),
            per_second,
        }
    }

    /// Waits for a send token. Returns false if none could be had before `deadline`. If Redis
    /// is unreachable the error is returned: sending blind could exceed the account's limit.
    pub async fn acquire(&self, deadline: Instant) -> redis::RedisResult<bool> {
        loop {
            let wait_ms: u64 = BUCKET
                .key(&self.key)
                .arg(self.per_second)
                .invoke_async(&mut self.conn.clone())
                .await?;
            if wait_ms == 0 {
                return Ok(true);
            }
            let wait = Duration::from_millis(wait_ms);
            if Instant::now() + wait >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(wait).await;
        }
    }
}
