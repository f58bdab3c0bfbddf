//! SMS_MAX_RPS as one global rate (GCRA, the generic cell rate algorithm): one call reserves
//! the next free send slot and says when it is, and the task sleeps until it. Never polls.
//! [`RateLimiter`] shares the rate among every dispatcher through Redis; [`MemoryRateLimiter`]
//! keeps it in this process. Both allow a burst of one second's worth.

use std::{
    sync::{LazyLock, Mutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use otp_shared::{backend::Unavailable, keys::Keys, redis_conn::RedisConn};
use redis::Script;
use tokio::time::Instant;

static BUCKET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("bucket.lua")));

/// The provider rate, wherever it is kept.
pub trait SendRate: Send + Sync {
    /// Reserves the next send slot and says how long until it, or reserves nothing and says
    /// `None` when the slot is more than `max_wait` away. A backend that cannot be reached is
    /// an error: sending blind could exceed the account's limit.
    fn reserve(&self, max_wait: Duration) -> BoxFuture<'_, Result<Option<Duration>, Unavailable>>;

    /// Reserves the next send slot and sleeps until it. Returns false, reserving nothing, if
    /// the slot is after `deadline`.
    fn acquire(&self, deadline: Instant) -> BoxFuture<'_, Result<bool, Unavailable>> {
        Box::pin(async move {
            let max_wait = deadline.saturating_duration_since(Instant::now());
            let Some(wait) = self.reserve(max_wait).await? else {
                return Ok(false);
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            Ok(true)
        })
    }
}

/// The rate in Redis, shared by every dispatcher (`bucket.lua`; Redis's clock, so dispatcher
/// clocks need not agree).
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
}

impl SendRate for RateLimiter {
    fn reserve(&self, max_wait: Duration) -> BoxFuture<'_, Result<Option<Duration>, Unavailable>> {
        Box::pin(async move {
            let wait_ms: i64 = BUCKET
                .key(&self.key)
                .arg(self.per_second)
                .arg(max_wait.as_millis() as u64)
                .invoke_async(&mut self.conn.clone())
                .await?;
            Ok(u64::try_from(wait_ms).ok().map(Duration::from_millis))
        })
    }
}

/// The rate in this process (one dispatcher), on tokio's clock: the same rule as `bucket.lua`.
pub struct MemoryRateLimiter {
    interval: Duration,
    /// How far ahead of now slots may be handed out at once: one second's worth, less one.
    tolerance: Duration,
    /// The theoretical arrival time of the next send.
    next: Mutex<Option<Instant>>,
}

impl MemoryRateLimiter {
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        Self {
            interval,
            tolerance: interval * (per_second - 1),
            next: Mutex::new(None),
        }
    }
}

impl SendRate for MemoryRateLimiter {
    fn reserve(&self, max_wait: Duration) -> BoxFuture<'_, Result<Option<Duration>, Unavailable>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let tat = next.map_or(now, |t| t.max(now));
            let slot = (tat.checked_sub(self.tolerance)).map_or(now, |s| s.max(now));
            if slot > now + max_wait {
                return Ok(None);
            }
            *next = Some(tat + self.interval);
            Ok(Some(slot - now))
        })
    }
}
