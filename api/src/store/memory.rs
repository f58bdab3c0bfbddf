//! Every store role in process memory: the rules of the Lua scripts beside [`super::RedisStore`]
//! (limits, codes, attempts, idempotency, send budgets, the fraud guard's prefix counts), kept
//! under one lock, so every call is atomic; delivery records and what reports need are the
//! [`DeliveryRecords`] it shares with the in-memory dispatcher. Time is tokio's clock, so tests can pause it.
//! Nothing survives the process; one process is the only replica.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;
use uuid::Uuid;

use otp_shared::{
    memory::DeliveryRecords,
    phone::PhoneNumber,
    status::{DeliveryState, DeliveryStatus},
};

use crate::fraud::Mode;

use futures_util::future::BoxFuture;

use super::{
    BlockRule, BlockedPrefix, BudgetUse, CodeStore, Finished, FraudSignal, FraudStore, GuardBlock,
    IdempotencyClaim, IdempotencyStore, IssueOutcome, KeyBudget, LimitKind, REPORT_NONCE_TTL,
    RateLimit, ReportStore, Requester, ResendRefusal, ResendStore, StoreError, StorePolicy,
    VerifyLookup,
    rules::{
        IDEMPOTENCY_PENDING_TTL_SECONDS, IDEMPOTENCY_TTL_SECONDS, VERIFY_WINDOW_SECONDS,
        country_of, rate, tighter,
    },
};

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * 60;
/// Expired entries are swept out every this many calls, so memory follows live entries only.
const SWEEP_EVERY: u64 = 1024;

#[derive(Clone)]
pub struct MemoryStore {
    policy: StorePolicy,
    state: Arc<Mutex<State>>,
    /// Delivery records, shared with the in-memory dispatcher backends.
    records: DeliveryRecords,
}

/// A value with an expiry, like a Redis key with a TTL.
struct Expiring<T> {
    value: T,
    until: Instant,
}

impl<T> Expiring<T> {
    fn new(value: T, ttl: Duration) -> Self {
        Self {
            value,
            until: Instant::now() + ttl,
        }
    }

    /// Seconds left, rounded up (what Retry-After reports).
    fn ttl_seconds(&self) -> u64 {
        let left = self.until.saturating_duration_since(Instant::now());
        left.as_millis().div_ceil(1000) as u64
    }
}

/// Keys whose values expire: reads skip expired entries, and [`State::sweep`] drops them.
struct Table<K, V>(HashMap<K, Expiring<V>>);

impl<K: std::hash::Hash + Eq, V> Default for Table<K, V> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq, V> Table<K, V> {
    fn get(&self, key: &K) -> Option<&Expiring<V>> {
        self.0.get(key).filter(|e| e.until > Instant::now())
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut Expiring<V>> {
        self.0.get_mut(key).filter(|e| e.until > Instant::now())
    }

    fn set(&mut self, key: K, value: V, ttl: Duration) {
        self.0.insert(key, Expiring::new(value, ttl));
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let now = Instant::now();
        self.0
            .remove(key)
            .filter(|e| e.until > now)
            .map(|e| e.value)
    }

    fn sweep(&mut self, now: Instant) {
        self.0.retain(|_, e| e.until > now);
    }
}

/// Fixed-window counters by name: the first count starts the window.
#[derive(Default)]
struct Counters(Table<String, u32>);

impl Counters {
    fn count(&self, key: &str) -> u32 {
        self.0.get(&key.to_owned()).map_or(0, |e| e.value)
    }

    /// Adds one; returns the new count and the seconds left in its window.
    fn hit(&mut self, key: &str, window: Duration) -> (u32, u64) {
        let key = key.to_owned();
        match self.0.get_mut(&key) {
            Some(e) => {
                e.value += 1;
                (e.value, e.ttl_seconds())
            }
            None => {
                self.0.set(key, 1, window);
                (1, window.as_secs())
            }
        }
    }

    fn give_back(&mut self, key: &str) {
        if let Some(e) = self.0.get_mut(&key.to_owned()) {
            e.value = e.value.saturating_sub(1);
        }
    }

    fn ttl_or(&self, key: &str, default: u64) -> u64 {
        self.0
            .get(&key.to_owned())
            .map_or(default, Expiring::ttl_seconds)
    }
}

struct Code {
    verification_id: Uuid,
    digest: String,
    /// When the fraud guard counted its send (ms on [`State::clock_ms`]; 0: not counted).
    sent_ms: u64,
}

enum Idempotency {
    Pending { body: String },
    Done { body: String, response: String },
}

/// One destination prefix's sends and verified codes, by send time (ms), and the client
/// networks that sent to it, by last send time, for the fraud guard.
#[derive(Default)]
struct Prefix {
    country: String,
    sends: Vec<(u64, Uuid)>,
    verified: Vec<(u64, Uuid)>,
    clients: HashMap<String, u64>,
    blocked_until: Option<Instant>,
    /// What the guard saw when it blocked (or last renewed the block).
    block: Option<GuardBlock>,
}

impl Prefix {
    fn forget_before(&mut self, oldest: u64) {
        self.sends.retain(|(ms, _)| *ms > oldest);
        self.verified.retain(|(ms, _)| *ms > oldest);
        self.clients.retain(|_, ms| *ms > oldest);
    }
}

#[derive(Default)]
struct State {
    counters: Counters,
    /// Per number: the verification that started the cooldown.
    cooldowns: Table<String, Uuid>,
    codes: Table<String, Code>,
    failures: Table<String, u32>,
    idempotency: Table<String, Idempotency>,
    prefixes: HashMap<String, Prefix>,
    /// Operators' blocks: prefix → end.
    manual: HashMap<String, Instant>,
    started: Option<Instant>,
    calls: u64,
}

impl State {
    /// Milliseconds since the store started, from 1 (0 means "not counted").
    fn clock_ms(&mut self) -> u64 {
        let started = *self.started.get_or_insert_with(Instant::now);
        started.elapsed().as_millis() as u64 + 1
    }

    fn sweep(&mut self, fraud_window_ms: u64) {
        self.calls += 1;
        if !self.calls.is_multiple_of(SWEEP_EVERY) {
            return;
        }
        let now = Instant::now();
        self.counters.0.sweep(now);
        self.cooldowns.sweep(now);
        self.codes.sweep(now);
        self.failures.sweep(now);
        self.idempotency.sweep(now);
        let oldest = self.clock_ms().saturating_sub(fraud_window_ms);
        self.prefixes.retain(|_, p| {
            p.forget_before(oldest);
            !p.sends.is_empty() || p.blocked_until.is_some_and(|until| until > now)
        });
        self.manual.retain(|_, until| *until > now);
    }
}

/// Counter names, one per limit (as the Redis keys are, without a prefix).
fn requests_per_ip(client: &str) -> String {
    format!("rip:{client}")
}
fn verifies_per_ip(client: &str) -> String {
    format!("vip:{client}")
}
fn verifies(e164: &str) -> String {
    format!("ver:{e164}")
}
fn sends_per_hour(e164: &str) -> String {
    format!("hour:{e164}")
}
fn sends_country(country: &str) -> String {
    format!("country:{country}")
}
fn sends_key(key: &str) -> String {
    format!("sends-key:{key}")
}

fn trickle(prefix: &str) -> String {
    format!("trickle:{prefix}")
}
const SENDS_ALL: &str = "all";

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

impl MemoryStore {
    pub fn new(policy: StorePolicy, records: DeliveryRecords) -> Self {
        Self {
            policy,
            state: Arc::default(),
            records,
        }
    }

    /// Whether `verification_id` is still the live code of `e164` (the dispatcher's condition
    /// for a resend).
    pub fn is_live(&self, e164: &str, verification_id: Uuid) -> bool {
        self.lock()
            .codes
            .get(&e164.to_owned())
            .is_some_and(|c| c.value.verification_id == verification_id)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.sweep(self.policy.fraud.window().as_millis() as u64);
        state
    }

    /// Counts one call against `key`; `Err` with the limit's state when over it.
    fn hit(state: &mut State, key: &str, limit: u32, window: u64) -> Result<RateLimit, RateLimit> {
        let (n, reset) = state.counters.hit(key, secs(window));
        let rate = rate(limit.into(), i64::from(limit) - i64::from(n), reset as i64);
        if n > limit { Err(rate) } else { Ok(rate) }
    }

    /// The send budgets and the fraud guard (guard.lua): `Err` when they refuse the request;
    /// otherwise spends the budgets, counts the send, and returns the signal and send time.
    fn guard(
        &self,
        state: &mut State,
        phone: &PhoneNumber,
        requester: Requester<'_>,
        verification_id: Uuid,
        trickle_allowance: u32,
    ) -> Result<(FraudSignal, u64), IssueOutcome> {
        let client = requester.client;
        // An operator's block of any prefix of the number holds in every mode.
        let now = Instant::now();
        let manual = crate::fraud::prefixes_of(phone)
            .into_iter()
            .any(|prefix| state.manual.get(prefix).is_some_and(|until| *until > now));
        if manual {
            return Err(IssueOutcome::Blocked(FraudSignal::Manual));
        }
        let p = &self.policy;
        let country = sends_country(&country_of(phone));
        let country_limit = p.max_sends_per_country_per_hour.limit_for(phone.country());
        if country_limit > 0 && state.counters.count(&country) >= country_limit {
            let reset = state.counters.ttl_or(&country, HOUR);
            return Err(IssueOutcome::Limited(
                LimitKind::CountrySendsPerHour,
                rate(country_limit.into(), 0, reset as i64),
            ));
        }
        let global_limit = p.max_sends_per_hour;
        if global_limit > 0 && state.counters.count(SENDS_ALL) >= global_limit {
            let reset = state.counters.ttl_or(SENDS_ALL, HOUR);
            return Err(IssueOutcome::Limited(
                LimitKind::TotalSendsPerHour,
                rate(global_limit.into(), 0, reset as i64),
            ));
        }
        let key_budget = requester.budget.filter(|b| b.per_hour > 0);
        if let Some(budget) = key_budget {
            let key = sends_key(budget.key);
            if state.counters.count(&key) >= budget.per_hour {
                let reset = state.counters.ttl_or(&key, HOUR);
                return Err(IssueOutcome::Limited(
                    LimitKind::KeySendsPerHour,
                    rate(budget.per_hour.into(), 0, reset as i64),
                ));
            }
        }

        let fraud = &p.fraud;
        let mode = fraud.fraud_guard;
        let now_ms = state.clock_ms();
        let mut signal = FraudSignal::Clear;
        if mode.enabled() {
            let destination = fraud.destination(phone);
            let window = fraud.window().as_millis() as u64;
            let grace = fraud.grace().as_millis() as u64;
            let (oldest, newest) = (now_ms.saturating_sub(window), now_ms.saturating_sub(grace));
            let trickle_key = trickle(&destination.prefix);
            let prefix = state.prefixes.entry(destination.prefix).or_default();
            prefix.country = destination.country;
            prefix.forget_before(oldest);
            if !destination.safe {
                let counted = |list: &[(u64, Uuid)]| {
                    list.iter().filter(|(ms, _)| *ms <= newest).count() as u64
                };
                let (sends, verified) = (counted(&prefix.sends), counted(&prefix.verified));
                let young = (prefix.sends.len() - sends as usize)
                    .saturating_sub(prefix.verified.len() - verified as usize);
                let clients =
                    prefix.clients.len() + usize::from(!prefix.clients.contains_key(client));
                let rule = if clients < fraud.fraud_guard_min_clients as usize {
                    None
                } else if sends >= u64::from(fraud.fraud_guard_min_sends)
                    && verified * 1000 < fraud.min_conversion_per_mille() * sends
                {
                    Some(BlockRule::Conversion)
                } else if young >= fraud.fraud_guard_burst as usize {
                    Some(BlockRule::Burst)
                } else {
                    None
                };
                let blocked = prefix.blocked_until.is_some_and(|until| until > now);
                if let Some(rule) = rule {
                    // Blocked, or renewed while the pattern continues.
                    prefix.blocked_until = Some(now + p.fraud_block);
                    prefix.block = Some(GuardBlock {
                        rule,
                        country: prefix.country.clone(),
                        sends,
                        verified,
                        young: young as u64,
                        clients: clients as u64,
                    });
                }
                signal = match (blocked, rule) {
                    (false, Some(rule)) => FraudSignal::NewBlock(rule),
                    (true, _) => FraudSignal::Blocked,
                    (false, None) => FraudSignal::Clear,
                };
            }
            if mode == Mode::Enforce && signal != FraudSignal::Clear {
                if state.counters.count(&trickle_key) >= trickle_allowance {
                    return Err(IssueOutcome::Blocked(signal));
                }
                state.counters.hit(&trickle_key, secs(HOUR));
                let new = match signal {
                    FraudSignal::NewBlock(rule) => Some(rule),
                    _ => None,
                };
                signal = FraudSignal::Trickle { new };
            }
        }

        if country_limit > 0 {
            state.counters.hit(&country, secs(HOUR));
        }
        if global_limit > 0 {
            state.counters.hit(SENDS_ALL, secs(HOUR));
        }
        if let Some(budget) = key_budget {
            state.counters.hit(&sends_key(budget.key), secs(HOUR));
        }
        let mut sent_ms = 0;
        if mode.enabled() {
            let prefix = fraud.destination(phone).prefix;
            let entry = state.prefixes.entry(prefix).or_default();
            entry.sends.push((now_ms, verification_id));
            if !client.is_empty() {
                entry.clients.insert(client.to_owned(), now_ms);
            }
            sent_ms = now_ms;
        }
        Ok((signal, sent_ms))
    }

    /// Gives back what [`Self::guard`] spent (unguard.lua).
    fn unguard(
        &self,
        state: &mut State,
        phone: &PhoneNumber,
        budget: Option<KeyBudget<'_>>,
        verification_id: Uuid,
    ) {
        let p = &self.policy;
        if let Some(budget) = budget.filter(|b| b.per_hour > 0) {
            state.counters.give_back(&sends_key(budget.key));
        }
        if p.max_sends_per_country_per_hour.limit_for(phone.country()) > 0 {
            state.counters.give_back(&sends_country(&country_of(phone)));
        }
        if p.max_sends_per_hour > 0 {
            state.counters.give_back(SENDS_ALL);
        }
        let prefix = p.fraud.destination(phone).prefix;
        if let Some(entry) = state.prefixes.get_mut(&prefix) {
            entry.sends.retain(|(_, vid)| *vid != verification_id);
        }
    }
}

impl CodeStore for MemoryStore {
    fn hit_request_ip<'a>(
        &'a self,
        client: &'a str,
    ) -> BoxFuture<'a, Result<Option<RateLimit>, StoreError>> {
        Box::pin(async move {
            let limit = self.policy.max_requests_per_ip_per_minute;
            if limit == 0 {
                return Ok(None);
            }
            let mut state = self.lock();
            Ok(Self::hit(&mut state, &requests_per_ip(client), limit, MINUTE).err())
        })
    }

    fn issue<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        requester: Requester<'a>,
        verification_id: Uuid,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<IssueOutcome, StoreError>> {
        Box::pin(async move {
            let Requester {
                client,
                count_ip,
                budget,
            } = requester;
            let p = &self.policy;
            let e164 = phone.as_e164().to_owned();
            let mut state = self.lock();
            let state = &mut *state;

            let mut best = None;
            if count_ip && p.max_requests_per_ip_per_minute > 0 {
                let key = requests_per_ip(client);
                match Self::hit(state, &key, p.max_requests_per_ip_per_minute, MINUTE) {
                    Ok(rate) => best = tighter(best, rate),
                    Err(rate) => return Ok(IssueOutcome::Limited(LimitKind::RequestsPerIp, rate)),
                }
            }

            let (signal, sent_ms) = match self.guard(
                state,
                phone,
                requester,
                verification_id,
                p.fraud.fraud_guard_blocked_sends_per_hour,
            ) {
                Ok(guarded) => guarded,
                Err(refused) => return Ok(refused),
            };

            // The number's limits (issue.lua); a refusal gives back what the guard spent.
            let cooldown = p.resend_cooldown_seconds;
            if cooldown > 0
                && let Some(until) = state.cooldowns.get(&e164)
            {
                let reset = until.ttl_seconds();
                self.unguard(state, phone, budget, verification_id);
                return Ok(IssueOutcome::Limited(
                    LimitKind::ResendCooldown,
                    rate(1, 0, reset as i64),
                ));
            }
            let mut number_rate = rate(0, 0, 0);
            let hourly = p.max_sends_per_number_per_hour;
            if hourly > 0 {
                let key = sends_per_hour(&e164);
                if state.counters.count(&key) >= hourly {
                    let reset = state.counters.ttl_or(&key, HOUR);
                    self.unguard(state, phone, budget, verification_id);
                    return Ok(IssueOutcome::Limited(
                        LimitKind::SendsPerHour,
                        rate(hourly.into(), 0, reset as i64),
                    ));
                }
                let (n, reset) = state.counters.hit(&key, secs(HOUR));
                number_rate = rate(hourly.into(), i64::from(hourly - n), reset as i64);
            }
            if cooldown > 0 {
                state
                    .cooldowns
                    .set(e164.clone(), verification_id, secs(cooldown.into()));
            }
            // Replaces any previous code; failed attempts survive, at least as long as the new code.
            let ttl = secs(p.code_ttl_seconds.into());
            let code = Code {
                verification_id,
                digest: digest.to_owned(),
                sent_ms,
            };
            // The replaced code's sealed job is never resent now.
            if let Some(old) = state.codes.remove(&e164) {
                self.records.drop_sealed(old.verification_id);
            }
            state.codes.set(e164.clone(), code, ttl);
            if let Some(failures) = state.failures.get_mut(&e164) {
                failures.until = failures.until.max(Instant::now() + ttl);
            }
            self.records.record(
                verification_id,
                DeliveryState::Queued,
                0,
                &[(otp_shared::status::FIELD_NUMBER, &e164)],
            );
            let best = tighter(best, number_rate).unwrap_or(rate(0, 0, 0));
            Ok(IssueOutcome::Issued(best, signal))
        })
    }

    fn revoke<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        budget: Option<KeyBudget<'a>>,
        verification_id: Uuid,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let e164 = phone.as_e164().to_owned();
            let mut state = self.lock();
            let state = &mut *state;
            if state
                .codes
                .get(&e164)
                .is_some_and(|c| c.value.verification_id == verification_id)
            {
                state.codes.remove(&e164);
            }
            if state
                .cooldowns
                .get(&e164)
                .is_some_and(|c| c.value == verification_id)
            {
                state.cooldowns.remove(&e164);
            }
            state.counters.give_back(&sends_per_hour(&e164));
            self.records.remove(verification_id);
            self.unguard(state, phone, budget, verification_id);
            Ok(())
        })
    }

    fn begin_verify<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        client: &'a str,
    ) -> BoxFuture<'a, Result<VerifyLookup, StoreError>> {
        Box::pin(async move {
            let p = &self.policy;
            let e164 = phone.as_e164();
            let mut state = self.lock();
            let mut best = None;
            if p.max_verifies_per_ip_per_minute > 0 {
                let key = verifies_per_ip(client);
                match Self::hit(&mut state, &key, p.max_verifies_per_ip_per_minute, MINUTE) {
                    Ok(rate) => best = tighter(best, rate),
                    Err(rate) => return Ok(VerifyLookup::Limited(LimitKind::VerifiesPerIp, rate)),
                }
            }
            let limit = p.max_verifies_per_number_per_15_minutes;
            if limit > 0 {
                let key = verifies(e164);
                match Self::hit(&mut state, &key, limit, VERIFY_WINDOW_SECONDS) {
                    Ok(rate) => best = tighter(best, rate),
                    Err(rate) => {
                        return Ok(VerifyLookup::Limited(LimitKind::VerifiesPerNumber, rate));
                    }
                }
            }
            let record = state
                .codes
                .get(&e164.to_owned())
                .map(|c| (c.value.verification_id, c.value.digest.clone()));
            Ok(VerifyLookup::Found {
                rate: best.unwrap_or(rate(0, 0, 0)),
                record,
            })
        })
    }

    fn finish_verify<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        verification_id: Option<Uuid>,
        matched: bool,
    ) -> BoxFuture<'a, Result<Finished, StoreError>> {
        Box::pin(async move {
            let e164 = phone.as_e164().to_owned();
            let max = self.policy.max_attempts;
            let mut state = self.lock();
            let state = &mut *state;
            let Some(vid) = verification_id else {
                return Ok(Finished::Failed);
            };
            let sent_ms = match state.codes.get(&e164) {
                Some(code) if code.value.verification_id == vid => code.value.sent_ms,
                _ => return Ok(Finished::Failed),
            };
            let fails = state.failures.get(&e164).map_or(0, |f| f.value);
            if fails >= max {
                state.codes.remove(&e164);
                return Ok(Finished::Failed);
            }
            if matched {
                state.codes.remove(&e164);
                state.failures.remove(&e164);
                // The code is used: its sealed job is never resent, and its record says so.
                self.records.drop_sealed(vid);
                self.records
                    .annotate(vid, otp_shared::status::FIELD_VERIFIED, "1");
                if sent_ms > 0 {
                    // converted.lua: a code verified under a block lifts it, counts afresh.
                    let prefix = self.policy.fraud.destination(phone).prefix;
                    let entry = state.prefixes.entry(prefix.clone()).or_default();
                    if entry
                        .blocked_until
                        .is_some_and(|until| until > Instant::now())
                    {
                        *entry = Prefix {
                            country: std::mem::take(&mut entry.country),
                            ..Prefix::default()
                        };
                        state.counters.0.remove(&trickle(&prefix));
                    } else {
                        entry.verified.push((sent_ms, vid));
                    }
                }
                return Ok(Finished::Consumed);
            }
            let fails = fails + 1;
            let ttl = secs(self.policy.code_ttl_seconds.into());
            state.failures.set(e164.clone(), fails, ttl);
            if fails >= max {
                state.codes.remove(&e164);
                return Ok(Finished::Exhausted);
            }
            Ok(Finished::Failed)
        })
    }

    fn cancel(&self, verification_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            use otp_shared::status::{FIELD_NUMBER, FIELD_STATE, FIELD_UPDATED_AT};
            let Some(number) = self.records.field(verification_id, FIELD_NUMBER) else {
                return Ok(false);
            };
            {
                let mut state = self.lock();
                let live = state
                    .codes
                    .get(&number)
                    .is_some_and(|c| c.value.verification_id == verification_id);
                if !live {
                    return Ok(false);
                }
                state.codes.remove(&number);
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
            let canceled = DeliveryState::Canceled.as_str();
            self.records
                .annotate(verification_id, FIELD_STATE, canceled);
            self.records
                .annotate(verification_id, FIELD_UPDATED_AT, &now);
            self.records.drop_sealed(verification_id);
            Ok(true)
        })
    }

    fn first_captcha<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mark = format!("captcha:{digest}");
            Ok(self.records.mark(&mark, crate::captcha::TOKEN_MEMORY))
        })
    }

    fn budgets(&self) -> BoxFuture<'_, Result<Vec<BudgetUse>, StoreError>> {
        Box::pin(async move {
            let scopes = self.policy.budget_scopes();
            let state = self.lock();
            let spent = scopes
                .iter()
                .map(|(country, _)| match country {
                    Some(country) => state.counters.count(&sends_country(country)),
                    None => state.counters.count(SENDS_ALL),
                })
                .collect();
            Ok(super::budget_uses(scopes, spent))
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { Ok(()) })
    }
}

impl IdempotencyStore for MemoryStore {
    fn claim_idempotency<'a>(
        &'a self,
        key_digest: &'a str,
        body_digest: &'a str,
    ) -> BoxFuture<'a, Result<IdempotencyClaim, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let key = key_digest.to_owned();
            Ok(match state.idempotency.get(&key).map(|e| &e.value) {
                None => {
                    let pending = Idempotency::Pending {
                        body: body_digest.to_owned(),
                    };
                    let ttl = secs(IDEMPOTENCY_PENDING_TTL_SECONDS);
                    state.idempotency.set(key, pending, ttl);
                    IdempotencyClaim::Claimed
                }
                Some(Idempotency::Pending { body } | Idempotency::Done { body, .. })
                    if body != body_digest =>
                {
                    IdempotencyClaim::Conflict
                }
                Some(Idempotency::Pending { .. }) => IdempotencyClaim::InProgress,
                Some(Idempotency::Done { response, .. }) => {
                    IdempotencyClaim::Replay(response.clone())
                }
            })
        })
    }

    fn complete_idempotency<'a>(
        &'a self,
        key_digest: &'a str,
        body_digest: &'a str,
        response_json: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let done = Idempotency::Done {
                body: body_digest.to_owned(),
                response: response_json.to_owned(),
            };
            let ttl = secs(IDEMPOTENCY_TTL_SECONDS);
            self.lock()
                .idempotency
                .set(key_digest.to_owned(), done, ttl);
            Ok(())
        })
    }

    fn release_idempotency<'a>(
        &'a self,
        key_digest: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.lock().idempotency.remove(&key_digest.to_owned());
            Ok(())
        })
    }
}

impl ReportStore for MemoryStore {
    fn delivery_status(
        &self,
        verification_id: Uuid,
    ) -> BoxFuture<'_, Result<Option<DeliveryStatus>, StoreError>> {
        Box::pin(async move { Ok(self.records.load(verification_id)) })
    }

    fn reported_verification<'a>(
        &'a self,
        provider: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Uuid>, StoreError>> {
        Box::pin(async move { Ok(self.records.message(provider, message_id)) })
    }

    fn first_report<'a>(
        &'a self,
        provider: &'a str,
        nonce: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mark = format!("nonce:{provider}:{nonce}");
            Ok(self.records.mark(&mark, REPORT_NONCE_TTL))
        })
    }

    fn forget_report<'a>(
        &'a self,
        provider: &'a str,
        nonce: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.records.unmark(&format!("nonce:{provider}:{nonce}"));
            Ok(())
        })
    }

    fn advance_delivery<'a>(
        &'a self,
        verification_id: Uuid,
        state: DeliveryState,
        extra: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.records.advance(verification_id, state, extra)) })
    }

    fn annotate_delivery<'a>(
        &'a self,
        verification_id: Uuid,
        field: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.records.annotate(verification_id, field, value);
            Ok(())
        })
    }
}

impl ResendStore for MemoryStore {
    fn take_resend<'a>(
        &'a self,
        verification_id: Uuid,
        _failed: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            if !self
                .records
                .mark(&format!("resend:{verification_id}"), REPORT_NONCE_TTL)
            {
                return Ok(None);
            }
            Ok(self.records.sealed(verification_id))
        })
    }

    fn spend_resend<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        verification_id: Uuid,
    ) -> BoxFuture<'a, Result<Option<ResendRefusal>, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let state = &mut *state;
            let member = super::resend_member(verification_id);
            let resend = Requester::network("", false);
            match self.guard(state, phone, resend, member, 0) {
                Ok(_) => {}
                Err(IssueOutcome::Limited(LimitKind::CountrySendsPerHour, _)) => {
                    return Ok(Some(ResendRefusal::CountryBudget));
                }
                Err(IssueOutcome::Limited(..)) => return Ok(Some(ResendRefusal::TotalBudget)),
                Err(_) => return Ok(Some(ResendRefusal::Blocked)),
            }
            let hourly = self.policy.max_sends_per_number_per_hour;
            if hourly > 0
                && Self::hit(state, &sends_per_hour(phone.as_e164()), hourly, HOUR).is_err()
            {
                self.unguard(state, phone, None, member);
                return Ok(Some(ResendRefusal::NumberLimit));
            }
            Ok(None)
        })
    }

    fn release_resend(&self, verification_id: Uuid) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.records.unmark(&format!("resend:{verification_id}"));
            Ok(())
        })
    }
}

impl FraudStore for MemoryStore {
    fn conversion_by_country(&self) -> BoxFuture<'_, Result<Vec<(String, f64)>, StoreError>> {
        Box::pin(async move {
            let fraud = &self.policy.fraud;
            let mut state = self.lock();
            let now_ms = state.clock_ms();
            let oldest = now_ms.saturating_sub(fraud.window().as_millis() as u64);
            let newest = now_ms.saturating_sub(fraud.grace().as_millis() as u64);
            let counted = |list: &[(u64, Uuid)]| {
                list.iter()
                    .filter(|(ms, _)| *ms > oldest && *ms <= newest)
                    .count() as u64
            };
            let mut countries: HashMap<&str, (u64, u64)> = HashMap::new();
            for prefix in state.prefixes.values() {
                let entry = countries.entry(&prefix.country).or_default();
                entry.0 += counted(&prefix.sends);
                entry.1 += counted(&prefix.verified);
            }
            Ok(countries
                .into_iter()
                .filter(|(_, (sends, _))| *sends > 0)
                .map(|(country, (sends, verified))| {
                    (country.to_owned(), verified as f64 / sends as f64)
                })
                .collect())
        })
    }

    fn block<'a>(
        &'a self,
        prefix: &'a str,
        lasting: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let until = Instant::now() + lasting;
            self.lock().manual.insert(prefix.to_owned(), until);
            Ok(())
        })
    }

    fn unblock<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let now = Instant::now();
            let manual = state.manual.remove(prefix).is_some_and(|until| until > now);
            let auto = match state.prefixes.get_mut(prefix) {
                Some(entry) => {
                    let blocked = entry.blocked_until.is_some_and(|until| until > now);
                    // The counts go too: else the next request would block it again at once.
                    *entry = Prefix {
                        country: std::mem::take(&mut entry.country),
                        ..Prefix::default()
                    };
                    blocked
                }
                None => false,
            };
            state.counters.0.remove(&trickle(prefix));
            Ok(manual || auto)
        })
    }

    fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockedPrefix>, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let now = Instant::now();
            state.manual.retain(|_, until| *until > now);
            let left = |until: Instant| until.saturating_duration_since(now).as_secs();
            let mut blocks: Vec<BlockedPrefix> = state
                .manual
                .iter()
                .map(|(prefix, until)| BlockedPrefix {
                    prefix: prefix.clone(),
                    expires_in_seconds: left(*until),
                    guard: None,
                })
                .collect();
            for (prefix, entry) in &state.prefixes {
                let until = entry.blocked_until.filter(|until| *until > now);
                if let (Some(until), Some(guard)) = (until, &entry.block)
                    && !state.manual.contains_key(prefix)
                {
                    blocks.push(BlockedPrefix {
                        prefix: prefix.clone(),
                        expires_in_seconds: left(until),
                        guard: Some(guard.clone()),
                    });
                }
            }
            blocks.sort_by(|a, b| a.prefix.cmp(&b.prefix));
            Ok(blocks)
        })
    }
}
