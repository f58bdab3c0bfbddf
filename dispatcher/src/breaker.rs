//! A circuit breaker per provider, shared by every dispatcher through Redis: it opens after
//! BREAKER_FAILURES consecutive failures, or when more than BREAKER_FAILURE_RATIO of at least
//! BREAKER_MIN_CALLS calls in a BREAKER_WINDOW_SECONDS window failed; after
//! BREAKER_COOLDOWN_SECONDS it lets one probe through, and closes again when a call succeeds.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use otp_shared::redis_conn::RedisConn;
use prometheus::IntGauge;
use redis::Script;

use otp_shared::keys::Keys;

static BREAKER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("breaker.lua")));

/// How long a dispatcher trusts a `closed` it read from Redis: meanwhile a send skips the
/// `allow` round trip. A breaker another dispatcher opened is seen at most this late (this
/// dispatcher's own failures see it at once: each is recorded, and the answer says `open`).
const CLOSED_TRUST: Duration = Duration::from_secs(1);

/// Milliseconds on a clock every dispatcher shares (wall time in production).
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |d| d.as_millis() as u64)
    }
}

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    /// Share of failed calls (0 to 1) in a window that opens the breaker.
    pub failure_ratio: f64,
    pub min_calls: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    fn parse(s: &str) -> Self {
        match s {
            "open" => Self::Open,
            "half_open" => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    /// The value of `otp_provider_breaker_state`.
    fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Clone)]
pub struct Breaker {
    conn: RedisConn,
    key: String,
    provider: &'static str,
    settings: BreakerSettings,
    clock: Arc<dyn Clock>,
    gauge: IntGauge,
    /// Until when (on `clock`) the last state read is trusted to be `closed`; 0: not closed.
    closed_until_ms: Arc<AtomicU64>,
}

impl Breaker {
    pub fn new(
        conn: RedisConn,
        keys: &Keys,
        provider: &'static str,
        settings: BreakerSettings,
        clock: Arc<dyn Clock>,
        gauge: IntGauge,
    ) -> Self {
        Self {
            conn,
            key: keys.breaker(provider),
            provider,
            settings,
            clock,
            gauge,
            closed_until_ms: Arc::default(),
        }
    }

    /// Whether a call may go to this provider now. Redis trouble allows it: the breaker guards
    /// against a failing provider, not against our own store.
    pub async fn allows(&self) -> bool {
        if self.clock.now_ms() < self.closed_until_ms.load(Ordering::Relaxed) {
            return true;
        }
        match self.run("allow").await {
            Ok((_, allowed)) => allowed,
            Err(e) => {
                tracing::warn!(provider = self.provider, error = %e, "circuit breaker unavailable; allowing the call");
                true
            }
        }
    }

    /// Records a call's outcome: `ok` is any answer that shows the provider works.
    pub async fn record(&self, ok: bool) {
        if let Err(e) = self.run(if ok { "ok" } else { "fail" }).await {
            tracing::warn!(provider = self.provider, error = %e, "could not record a call in the circuit breaker");
        }
    }

    /// The state as stored, without changing it (tests, diagnostics).
    pub async fn state(&self) -> redis::RedisResult<State> {
        let state: Option<String> = redis::cmd("HGET")
            .arg(&self.key)
            .arg("state")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(State::parse(state.as_deref().unwrap_or("closed")))
    }

    async fn run(&self, op: &str) -> redis::RedisResult<(State, bool)> {
        let s = &self.settings;
        let ttl = (s.window + s.cooldown).as_secs() * 10 + 60;
        let now = self.clock.now_ms();
        let (state, allowed, changed): (String, i64, String) = BREAKER
            .key(&self.key)
            .arg(op)
            .arg(now)
            .arg(s.consecutive_failures)
            .arg((s.failure_ratio * 1000.0).round() as u64)
            .arg(s.min_calls)
            .arg(s.window.as_millis() as u64)
            .arg(s.cooldown.as_millis() as u64)
            .arg(ttl)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let state = State::parse(&state);
        self.gauge.set(state.gauge());
        let trusted = match state {
            State::Closed => now + CLOSED_TRUST.as_millis() as u64,
            State::Open | State::HalfOpen => 0,
        };
        self.closed_until_ms.store(trusted, Ordering::Relaxed);
        if !changed.is_empty() {
            tracing::warn!(provider = self.provider, state = %changed, "circuit breaker changed state");
        }
        Ok((state, allowed == 1))
    }
}
