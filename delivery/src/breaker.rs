//! A circuit breaker per provider, shared by every dispatcher through Redis: it opens after
//! BREAKER_FAILURES consecutive failures, or when more than BREAKER_FAILURE_RATIO of at least
//! BREAKER_MIN_CALLS calls in a BREAKER_WINDOW_SECONDS window failed; after
//! BREAKER_COOLDOWN_SECONDS it lets one probe through, and closes again when a call succeeds.

use std::{
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::future::BoxFuture;

use otp_shared::redis_conn::RedisConn;
use prometheus::IntGauge;
use redis::Script;

use otp_shared::{backend::Unavailable, keys::Keys};

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

impl Default for BreakerSettings {
    /// The settings' defaults: BREAKER_FAILURES 5, BREAKER_FAILURE_RATIO 0.5, BREAKER_MIN_CALLS
    /// 20, BREAKER_WINDOW_SECONDS 60, BREAKER_COOLDOWN_SECONDS 30.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        }
    }
}

impl BreakerSettings {
    /// The failure share in thousandths, as the store compares it.
    fn ratio_per_mille(&self) -> u64 {
        (self.failure_ratio * 1000.0).round() as u64
    }
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

    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
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

/// One step of a breaker, as its store runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Allow,
    Ok,
    Fail,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Ok => "ok",
            Self::Fail => "fail",
        }
    }
}

/// What a step found: the state after it, whether a call may go, and the state it changed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub state: State,
    pub allowed: bool,
    pub changed: Option<State>,
}

/// `breaker.lua`'s reply: `{state, allowed (1/0), changed ('' when not)}`.
impl redis::FromRedisValue for Step {
    fn from_redis_value(reply: redis::Value) -> Result<Self, redis::ParsingError> {
        let (state, allowed, changed): (String, i64, String) =
            redis::FromRedisValue::from_redis_value(reply)?;
        Ok(Self {
            state: State::parse(&state),
            allowed: allowed == 1,
            changed: (!changed.is_empty()).then(|| State::parse(&changed)),
        })
    }
}

/// Where a breaker's state lives: [`RedisBreakerStore`] (shared by every dispatcher, the rules
/// in `breaker.lua`) or [`MemoryBreakerStore`] (this process, the same rules in Rust).
pub trait BreakerStore: Send + Sync {
    /// Runs one step at `now_ms` (on the breaker's clock), after counting `earlier_oks`
    /// successful calls seen while the breaker was closed and not reported until now.
    fn step(
        &self,
        op: Op,
        earlier_oks: u64,
        now_ms: u64,
        settings: &BreakerSettings,
    ) -> BoxFuture<'_, Result<Step, Unavailable>>;

    /// The state as stored, without changing it.
    fn state(&self) -> BoxFuture<'_, Result<State, Unavailable>>;
}

pub struct RedisBreakerStore {
    conn: RedisConn,
    key: String,
}

impl RedisBreakerStore {
    pub fn new(conn: RedisConn, keys: &Keys, provider: &str) -> Self {
        Self {
            conn,
            key: keys.breaker(provider),
        }
    }
}

impl BreakerStore for RedisBreakerStore {
    fn step(
        &self,
        op: Op,
        earlier_oks: u64,
        now_ms: u64,
        s: &BreakerSettings,
    ) -> BoxFuture<'_, Result<Step, Unavailable>> {
        let ttl = (s.window + s.cooldown).as_secs() * 10 + 60;
        let mut invocation = BREAKER.key(&self.key);
        invocation
            .arg(op.as_str())
            .arg(now_ms)
            .arg(s.consecutive_failures)
            .arg(s.ratio_per_mille())
            .arg(s.min_calls)
            .arg(s.window.as_millis() as u64)
            .arg(s.cooldown.as_millis() as u64)
            .arg(ttl)
            .arg(earlier_oks);
        Box::pin(async move { Ok(invocation.invoke_async(&mut self.conn.clone()).await?) })
    }

    fn state(&self) -> BoxFuture<'_, Result<State, Unavailable>> {
        Box::pin(async move {
            let state: Option<String> = redis::cmd("HGET")
                .arg(&self.key)
                .arg("state")
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(State::parse(state.as_deref().unwrap_or("closed")))
        })
    }
}

/// A breaker's state in this process: the rules of `breaker.lua`.
#[derive(Default)]
pub struct MemoryBreakerStore(Mutex<Fields>);

#[derive(Default)]
struct Fields {
    state: Option<State>,
    open_until: u64,
    probe_until: u64,
    window_start: u64,
    calls: u64,
    failures: u64,
    consecutive: u64,
}

impl MemoryBreakerStore {
    fn step_now(&self, op: Op, earlier_oks: u64, now: u64, s: &BreakerSettings) -> Step {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let state = f.state.unwrap_or(State::Closed);
        let cooldown = s.cooldown.as_millis() as u64;
        let window = s.window.as_millis() as u64;
        let current_window = |f: &mut Fields| {
            if now.saturating_sub(f.window_start) >= window {
                (f.window_start, f.calls, f.failures) = (now, 0, 0);
            }
        };
        if earlier_oks > 0 {
            current_window(&mut f);
            f.calls += earlier_oks;
            f.consecutive = 0;
        }
        let step = |state, allowed, changed| Step {
            state,
            allowed,
            changed,
        };
        if op == Op::Allow {
            return match state {
                State::Closed => step(state, true, None),
                State::Open if now < f.open_until => step(state, false, None),
                // Cool-down over: this caller is the probe.
                State::Open => {
                    f.state = Some(State::HalfOpen);
                    f.probe_until = now + cooldown;
                    step(State::HalfOpen, true, Some(State::HalfOpen))
                }
                // One probe at a time; a probe that never reported frees its slot after a while.
                State::HalfOpen if now >= f.probe_until => {
                    f.probe_until = now + cooldown;
                    step(state, true, None)
                }
                State::HalfOpen => step(state, false, None),
            };
        }
        current_window(&mut f);
        f.calls += 1;
        if op == Op::Ok {
            f.consecutive = 0;
            if state != State::Closed {
                f.state = Some(State::Closed);
                return step(State::Closed, true, Some(State::Closed));
            }
            return step(state, true, None);
        }
        f.failures += 1;
        f.consecutive += 1;
        let trips = f.consecutive >= u64::from(s.consecutive_failures)
            || (f.calls >= u64::from(s.min_calls)
                && f.failures * 1000 >= s.ratio_per_mille() * f.calls);
        if state == State::HalfOpen || (state == State::Closed && trips) {
            f.state = Some(State::Open);
            f.open_until = now + cooldown;
            return step(State::Open, true, Some(State::Open));
        }
        step(state, true, None)
    }
}

impl BreakerStore for MemoryBreakerStore {
    fn step(
        &self,
        op: Op,
        earlier_oks: u64,
        now_ms: u64,
        settings: &BreakerSettings,
    ) -> BoxFuture<'_, Result<Step, Unavailable>> {
        let step = self.step_now(op, earlier_oks, now_ms, settings);
        Box::pin(async move { Ok(step) })
    }

    fn state(&self) -> BoxFuture<'_, Result<State, Unavailable>> {
        let f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let state = f.state.unwrap_or(State::Closed);
        Box::pin(async move { Ok(state) })
    }
}

#[derive(Clone)]
pub struct Breaker {
    store: Arc<dyn BreakerStore>,
    provider: &'static str,
    settings: BreakerSettings,
    clock: Arc<dyn Clock>,
    gauge: IntGauge,
    /// Until when (on `clock`) the last state read is trusted to be `closed`; 0: not closed.
    closed_until_ms: Arc<AtomicU64>,
    /// Successful calls made while trusted closed, not yet in the store: they go with the next
    /// step this dispatcher runs (at the latest when the trust lapses, within a second), so a
    /// success costs no round trip of its own.
    unreported_oks: Arc<AtomicU64>,
}

impl Breaker {
    /// A breaker whose state is in Redis, shared by every dispatcher.
    pub fn new(
        conn: RedisConn,
        keys: &Keys,
        provider: &'static str,
        settings: BreakerSettings,
        clock: Arc<dyn Clock>,
        gauge: IntGauge,
    ) -> Self {
        let store = Arc::new(RedisBreakerStore::new(conn, keys, provider));
        Self::with_store(store, provider, settings, clock, gauge)
    }

    pub fn with_store(
        store: Arc<dyn BreakerStore>,
        provider: &'static str,
        settings: BreakerSettings,
        clock: Arc<dyn Clock>,
        gauge: IntGauge,
    ) -> Self {
        Self {
            store,
            provider,
            settings,
            clock,
            gauge,
            closed_until_ms: Arc::default(),
            unreported_oks: Arc::default(),
        }
    }

    /// Whether a call may go to this provider now. Trouble with the store allows it: the
    /// breaker guards against a failing provider, not against our own store.
    pub async fn allows(&self) -> bool {
        if self.trusted_closed() {
            return true;
        }
        match self.run(Op::Allow).await {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::warn!(provider = self.provider, error = %e, "circuit breaker unavailable; allowing the call");
                true
            }
        }
    }

    /// Records a call's outcome: `ok` is any answer that shows the provider works.
    /// A success while the breaker is trusted closed is only counted here, and reported with
    /// the next step.
    pub async fn record(&self, ok: bool) {
        if ok && self.trusted_closed() {
            self.unreported_oks.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(e) = self.run(if ok { Op::Ok } else { Op::Fail }).await {
            tracing::warn!(provider = self.provider, error = %e, "could not record a call in the circuit breaker");
        }
    }

    /// The state as stored, without changing it (tests, diagnostics).
    pub async fn state(&self) -> Result<State, Unavailable> {
        self.store.state().await
    }

    fn trusted_closed(&self) -> bool {
        self.clock.now_ms() < self.closed_until_ms.load(Ordering::Relaxed)
    }

    async fn run(&self, op: Op) -> Result<bool, Unavailable> {
        let now = self.clock.now_ms();
        let earlier = self.unreported_oks.swap(0, Ordering::Relaxed);
        let step = match self.store.step(op, earlier, now, &self.settings).await {
            Ok(step) => step,
            Err(e) => {
                // Reported with a later step instead.
                self.unreported_oks.fetch_add(earlier, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.gauge.set(step.state.gauge());
        let trusted = match step.state {
            State::Closed => now + CLOSED_TRUST.as_millis() as u64,
            State::Open | State::HalfOpen => 0,
        };
        self.closed_until_ms.store(trusted, Ordering::Relaxed);
        if let Some(changed) = step.changed {
            tracing::warn!(
                provider = self.provider,
                state = changed.as_str(),
                "circuit breaker changed state"
            );
        }
        Ok(step.allowed)
    }
}
