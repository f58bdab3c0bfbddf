//! Every store role on Redis. Every multi-key step is one Lua script over keys of one hash tag (see
//! `otp_shared::keys`), so it is atomic on a single server and on Redis Cluster alike.
//!
//! # Where a request takes several steps
//! A request that touches keys of several tags takes one step per tag, ordered so that a
//! failure between steps errs on the safe side:
//! - **Issue**: (1) the per-IP counter, (2) `guard.lua` in `{global}`: send budgets and fraud
//!   guard, (3) `issue.lua` in the number's tag: cooldown, hourly limit, the code, (4) the
//!   delivery record and the replaced code's sealed job, in the verifications' tags. A request
//!   refused at (2) or (3) still counted at (1): the per-IP limit counts attempts. One refused
//!   at (3) gives back what (2) spent (`unguard.lua`); if that call fails, a budget is one send
//!   too low for the rest of its hour, which only ever refuses more, never less. On a single
//!   Redis (no Cluster, so no slots to respect) (1) to (4) are one script, `guard_and_issue.lua`
//!   (`hit.lua`, `guard.lua`, `issue.lua` and `unguard.lua` as its functions): one round trip.
//! - **Verify**: (1) the per-IP verify counter, (2) `verify_begin.lua` and (3)
//!   `verify_finish.lua` in the number's tag, which decide; then (4) the consumed code's sealed
//!   job is removed and the fraud guard counts the conversion. A failure at (4) can leave a
//!   sealed job until it expires (it is never resent: the dispatcher resends only a live code)
//!   or miss one conversion (the fraud guard then sees slightly less conversion than there was).
//! - **Revoke** (publish failed): `revoke.lua` in the number's tag, then the delivery record and
//!   the budgets. The record goes even if the rest fails, and a job without its record is
//!   never sent (the dispatcher treats it as withdrawn).

use std::{
    ops::Not,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use otp_shared::redis_conn::RedisConn;
use redis::Script;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use otp_shared::{
    keys::Keys,
    phone::PhoneNumber,
    status::{self, DeliveryState, DeliveryStatus},
};

use futures_util::future::BoxFuture;

use super::{
    BlockRule, BlockedPrefix, BudgetUse, CodeStore, Finished, FraudStore, GuardBlock,
    IdempotencyClaim, IdempotencyStore, IssueOutcome, KeyBudget, LimitKind, REPORT_NONCE_TTL,
    RateLimit, ReportStore, Requester, ResendRefusal, ResendStore, StoreError, StorePolicy,
    VerifyLookup,
    replies::{GuardVerdict, Guarded, KeyClaim, NumberIssued, VerifyBegun, VerifyFinished},
    rules::{
        IDEMPOTENCY_PENDING_TTL_SECONDS, IDEMPOTENCY_TTL_SECONDS, VERIFY_WINDOW_SECONDS,
        country_of, rate, tighter,
    },
};

static GUARD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("guard.lua")));
static UNGUARD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("unguard.lua")));
static ISSUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("issue.lua")));
/// `hit.lua`, `guard.lua`, `issue.lua` and `unguard.lua` as local functions of one script, and
/// `guard_and_issue.lua` calling them: the single-Redis way to issue (see the script).
static GUARD_AND_ISSUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "local function hit(KEYS, ARGV)\n{}\nend\n\
         local function guard(KEYS, ARGV)\n{}\nend\nlocal function issue(KEYS, ARGV)\n{}\nend\n\
         local function unguard(KEYS, ARGV)\n{}\nend\n{}",
        include_str!("hit.lua"),
        include_str!("guard.lua"),
        include_str!("issue.lua"),
        include_str!("unguard.lua"),
        include_str!("guard_and_issue.lua"),
    ))
});
/// `guard.lua`'s arguments before the number's prefixes.
const GUARD_FIXED_ARGS: usize = 17;
static CONVERTED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("converted.lua")));
/// Sets one field of a hash only while it exists (a delivery record is never re-created).
static ANNOTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then \
           return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end return 0",
    )
});
static REVOKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("revoke.lua")));
/// Removes a number's code only while it is this verification's (ARGV[1]); 1 when removed.
static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('HGET', KEYS[1], 'vid') == ARGV[1] then \
           redis.call('DEL', KEYS[1]) return 1 end return 0",
    )
});
static VERIFY_BEGIN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("verify_begin.lua")));
static VERIFY_FINISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("verify_finish.lua")));
static HIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("hit.lua")));
static IDEMPOTENCY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("idempotency.lua")));

/// What `guard.lua` gets for a caller without a key budget (its counter is never touched).
const NO_KEY_BUDGET: KeyBudget<'static> = KeyBudget {
    key: "public",
    per_hour: 0,
};

#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    keys: Keys,
    policy: StorePolicy,
    /// Whether any operator's block may exist. Only consulted when neither the fraud guard nor a
    /// budget makes `guard.lua` run anyway: then the script (the exact, live check) runs only
    /// while this is set. True until [`RedisStore::watch_manual_blocks`] has looked.
    manual_blocks: Arc<AtomicBool>,
}

#[derive(Serialize, Deserialize)]
struct IdempotencyRecord {
    body: String,
    response: Option<String>,
}

impl From<redis::RedisError> for StoreError {
    /// A reply that could not be read is the store's fault, not its availability's.
    fn from(e: redis::RedisError) -> Self {
        match e.kind() {
            redis::ErrorKind::Parse => Self::Corrupt(e.to_string()),
            _ => Self::Unavailable(Box::new(e)),
        }
    }
}

impl RedisStore {
    pub fn new(conn: RedisConn, keys: Keys, policy: StorePolicy) -> Self {
        Self {
            conn,
            keys,
            policy,
            manual_blocks: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether a request must run `guard.lua`: for the fraud guard, a budget, or a manual block.
    fn guarded(&self, phone: &PhoneNumber, budget: Option<KeyBudget<'_>>) -> bool {
        let p = &self.policy;
        p.fraud.fraud_guard.enabled()
            || p.max_sends_per_hour > 0
            || budget.is_some_and(|b| b.per_hour > 0)
            || p.max_sends_per_country_per_hour.limit_for(phone.country()) > 0
            || self.manual_blocks.load(Ordering::Relaxed)
    }

    /// Keeps the view of manual blocks current, every `every`, until `stop`:
    /// with FRAUD_GUARD=off and no budget, a request pays for `guard.lua` only while an
    /// operator's block exists (a new block takes effect within `every`). Unreadable: assume
    /// there is one.
    pub async fn watch_manual_blocks(self, every: Duration, stop: CancellationToken) {
        loop {
            let count: redis::RedisResult<i64> = redis::cmd("HLEN")
                .arg(self.keys.fraud_manual())
                .query_async(&mut self.conn.clone())
                .await;
            self.manual_blocks
                .store(count.is_ok_and(|n| n == 0).not(), Ordering::Relaxed);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Counts one call against `key`'s fixed window of `seconds`, and says whether it went
    /// over `limit`, with the limit's state.
    async fn hit(&self, key: String, limit: u32, seconds: u64) -> Result<HitOutcome, StoreError> {
        let counted: (i64, i64) = HIT
            .key(key)
            .arg(seconds)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(HitOutcome::of(counted, limit))
    }

    /// Sets a single-use mark for [`REPORT_NONCE_TTL`]; false when it was set already.
    async fn set_once(
        &self,
        key: String,
        value: &str,
        ttl: std::time::Duration,
    ) -> redis::RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs())
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    async fn del(&self, key: String) -> redis::RedisResult<i64> {
        redis::cmd("DEL")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Runs `guard.lua` for a send to `phone`. `client` is '' for a resend (no client
    /// network), and `trickle` the sends a blocked prefix may still take this hour.
    async fn guard(
        &self,
        phone: &PhoneNumber,
        requester: Requester<'_>,
        vid: &str,
        trickle: u32,
    ) -> Result<Guarded, StoreError> {
        let mut call = GUARD.prepare_invoke();
        self.guard_args(&mut call, phone, requester, vid, trickle);
        Ok(call.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Appends `guard.lua`'s keys and arguments to `call`; returns how many arguments.
    fn guard_args(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
        phone: &PhoneNumber,
        requester: Requester<'_>,
        vid: &str,
        trickle: u32,
    ) -> usize {
        let (p, fraud) = (&self.policy, &self.policy.fraud);
        let budget = requester.budget.unwrap_or(NO_KEY_BUDGET);
        let country_limit = p.max_sends_per_country_per_hour.limit_for(phone.country());
        let destination = fraud.destination(phone);
        let prefixes = crate::fraud::prefixes_of(phone);
        let count = GUARD_FIXED_ARGS + prefixes.len();
        call.key(self.keys.sends_all())
            .key(self.keys.sends_country(&country_of(phone)))
            .key(self.keys.fraud_sends(&destination.prefix))
            .key(self.keys.fraud_verified(&destination.prefix))
            .key(self.keys.fraud_block(&destination.prefix))
            .key(self.keys.fraud_country(&destination.country))
            .key(self.keys.fraud_countries())
            .key(self.keys.fraud_blocked())
            .key(self.keys.fraud_clients(&destination.prefix))
            .key(self.keys.fraud_trickle(&destination.prefix))
            .key(self.keys.fraud_manual())
            .key(self.keys.sends_key(budget.key))
            .arg(p.max_sends_per_hour)
            .arg(country_limit)
            .arg(fraud.fraud_guard.code())
            .arg(fraud.window().as_millis() as u64)
            .arg(fraud.grace().as_millis() as u64)
            .arg(fraud.fraud_guard_min_sends)
            .arg(fraud.min_conversion_per_mille())
            .arg(p.fraud_block.as_millis() as u64)
            .arg(u8::from(destination.safe))
            .arg(&destination.country)
            .arg(&destination.prefix)
            .arg(vid)
            .arg(fraud.fraud_guard_burst)
            .arg(fraud.fraud_guard_min_clients)
            .arg(trickle)
            .arg(requester.client)
            .arg(budget.per_hour)
            .arg(prefixes);
        count
    }

    /// Appends `issue.lua`'s keys and arguments to `call`; with `record` (a single Redis), the
    /// new delivery record's too, with these extra fields.
    fn issue_args(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
        phone: &PhoneNumber,
        verification_id: Uuid,
        digest: &str,
        sent_ms: i64,
        record: Option<&[(&str, &str)]>,
    ) {
        let (e164, p) = (phone.as_e164(), &self.policy);
        call.key(self.keys.cooldown(e164))
            .key(self.keys.sends_per_hour(e164))
            .key(self.keys.code(e164))
            .key(self.keys.failures(e164))
            .arg(p.resend_cooldown_seconds)
            .arg(p.max_sends_per_number_per_hour)
            .arg(verification_id.to_string())
            .arg(digest)
            .arg(p.code_ttl_seconds)
            .arg(sent_ms);
        if let Some(extra) = record {
            call.key(self.keys.status(verification_id))
                .arg(status::STATUS_TTL_SECONDS)
                .arg(status::record_fields(DeliveryState::Queued, 0, extra));
        }
    }

    /// What `unguard.lua` would give back for a request: (send budgets, the caller key's
    /// budget), or `None` when nothing was spent.
    fn spent(&self, phone: &PhoneNumber, budget: Option<KeyBudget<'_>>) -> Option<(bool, bool)> {
        let p = &self.policy;
        let budget = budget.is_some_and(|b| b.per_hour > 0);
        let budgets = p.max_sends_per_hour > 0
            || p.max_sends_per_country_per_hour.limit_for(phone.country()) > 0;
        (budgets || budget || p.fraud.fraud_guard.enabled()).then_some((budgets, budget))
    }

    /// Gives back what `guard.lua` spent for `verification_id` (see the module docs).
    async fn unguard(
        &self,
        phone: &PhoneNumber,
        budget: Option<KeyBudget<'_>>,
        verification_id: Uuid,
        sent_ms: i64,
    ) -> Result<(), StoreError> {
        let p = &self.policy;
        let Some((budgets, key_budget)) = self.spent(phone, budget) else {
            return Ok(());
        };
        let destination = p.fraud.destination(phone);
        let _: i64 = UNGUARD
            .key(self.keys.sends_all())
            .key(self.keys.sends_country(&country_of(phone)))
            .key(self.keys.fraud_sends(&destination.prefix))
            .key(self.keys.fraud_country(&destination.country))
            .key(self.keys.sends_key(budget.unwrap_or(NO_KEY_BUDGET).key))
            .arg(u8::from(budgets))
            .arg(u8::from(key_budget))
            .arg(verification_id.to_string())
            .arg(sent_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

enum HitOutcome {
    Under(RateLimit),
    Over(RateLimit),
}

/// The per-IP limits' window, in seconds.
const PER_IP_WINDOW_SECONDS: u64 = 60;

impl HitOutcome {
    /// `hit.lua`'s reply (the count and the seconds left) against `limit`.
    fn of((n, reset): (i64, i64), limit: u32) -> Self {
        let limit = i64::from(limit);
        let rate = rate(limit, limit - n, reset);
        if n > limit {
            Self::Over(rate)
        } else {
            Self::Under(rate)
        }
    }
}

impl CodeStore for RedisStore {
    fn hit_request_ip<'a>(
        &'a self,
        client: &'a str,
    ) -> BoxFuture<'a, Result<Option<RateLimit>, StoreError>> {
        Box::pin(async move {
            let limit = self.policy.max_requests_per_ip_per_minute;
            if limit == 0 {
                return Ok(None);
            }
            Ok(
                match self
                    .hit(
                        self.keys.requests_per_ip(client),
                        limit,
                        PER_IP_WINDOW_SECONDS,
                    )
                    .await?
                {
                    HitOutcome::Over(rate) => Some(rate),
                    HitOutcome::Under(_) => None,
                },
            )
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
            let vid = verification_id.to_string();

            // (1) The client's per-IP limit: counts attempts, whatever happens next. (2) Manual
            // blocks, send budgets and fraud guard, over all traffic; (3) the number's limits and
            // its code. On a single Redis the three go in one script, which also writes the
            // delivery record (4) and gives back what (2) spent if (3) refuses.
            let single = matches!(self.conn, RedisConn::Single(_));
            let ip_limit = if count_ip {
                p.max_requests_per_ip_per_minute
            } else {
                0
            };
            let guarded = self.guarded(phone, budget);
            let number_field = [(status::FIELD_NUMBER, phone.as_e164())];
            let record = single.then_some(&number_field[..]);
            let trickle = p.fraud.fraud_guard_blocked_sends_per_hour;
            let mut best = None;
            let (guarded, number) = if single && (ip_limit > 0 || guarded) {
                let mut call = GUARD_AND_ISSUE.prepare_invoke();
                if ip_limit > 0 {
                    call.key(self.keys.requests_per_ip(client));
                }
                let guard_argc = if guarded {
                    self.guard_args(&mut call, phone, requester, &vid, trickle)
                } else {
                    0
                };
                self.issue_args(&mut call, phone, verification_id, digest, 0, record);
                let spent = self.spent(phone, budget).filter(|_| guarded);
                let (budgets, key_budget) = spent.unwrap_or_default();
                call.arg(u8::from(spent.is_some()))
                    .arg(u8::from(budgets))
                    .arg(u8::from(key_budget))
                    .arg(ip_limit)
                    .arg(PER_IP_WINDOW_SECONDS)
                    .arg(guard_argc);
                type Reply = (Option<(i64, i64)>, Option<Guarded>, Option<NumberIssued>);
                let reply: redis::RedisResult<Reply> =
                    call.invoke_async(&mut self.conn.clone()).await;
                match reply {
                    Ok((counted, guard_reply, number)) => {
                        if let Some(counted) = counted {
                            match HitOutcome::of(counted, ip_limit) {
                                HitOutcome::Over(rate) => {
                                    return Ok(IssueOutcome::Limited(
                                        LimitKind::RequestsPerIp,
                                        rate,
                                    ));
                                }
                                HitOutcome::Under(rate) => best = tighter(best, rate),
                            }
                        }
                        let guarded = guard_reply.unwrap_or_else(Guarded::pass);
                        (guarded, number.map(Ok))
                    }
                    Err(e) => {
                        // Not known to have run: give back what it may have spent.
                        if spent.is_some()
                            && let Err(e) = self.unguard(phone, budget, verification_id, 0).await
                        {
                            tracing::warn!(error = %e, "could not give back the send budgets of a request not issued");
                        }
                        return Err(e.into());
                    }
                }
            } else {
                if ip_limit > 0 {
                    let key = self.keys.requests_per_ip(client);
                    match self.hit(key, ip_limit, PER_IP_WINDOW_SECONDS).await? {
                        HitOutcome::Over(rate) => {
                            return Ok(IssueOutcome::Limited(LimitKind::RequestsPerIp, rate));
                        }
                        HitOutcome::Under(rate) => best = tighter(best, rate),
                    }
                }
                let guarded = if guarded {
                    self.guard(phone, requester, &vid, trickle).await?
                } else {
                    Guarded::pass()
                };
                let number = if guarded.verdict == GuardVerdict::Pass {
                    let mut call = ISSUE.prepare_invoke();
                    self.issue_args(
                        &mut call,
                        phone,
                        verification_id,
                        digest,
                        guarded.sent_ms,
                        record,
                    );
                    let number: redis::RedisResult<NumberIssued> =
                        call.invoke_async(&mut self.conn.clone()).await;
                    // Refused, or not known to be issued: give back what (2) spent.
                    let issued = matches!(&number, Ok(n) if n.refused.is_none());
                    let sent_ms = guarded.sent_ms;
                    if !issued
                        && let Err(e) = self.unguard(phone, budget, verification_id, sent_ms).await
                    {
                        tracing::warn!(error = %e, "could not give back the send budgets of a request not issued");
                    }
                    Some(number)
                } else {
                    None
                };
                (guarded, number)
            };
            let signal = guarded.signal;
            let number = match (guarded.verdict, number) {
                (GuardVerdict::Pass, Some(number)) => number,
                (GuardVerdict::Blocked, _) => return Ok(IssueOutcome::Blocked(signal)),
                (GuardVerdict::Refused(limit), _) => {
                    let refused = rate(guarded.limit, 0, guarded.reset);
                    return Ok(IssueOutcome::Limited(limit, refused));
                }
                (GuardVerdict::Pass, None) => {
                    return Err(StoreError::Corrupt("no reply from issue.lua".into()));
                }
            };
            let number = number?;
            let number_rate = rate(number.limit, number.remaining, number.reset);
            if let Some(limit) = number.refused {
                return Ok(IssueOutcome::Limited(limit, number_rate));
            }

            // (4) The delivery record (in a Cluster), and the replaced code's sealed job (never
            // resent now).
            let mut conn = self.conn.clone();
            let record = async {
                if single {
                    return Ok(());
                }
                status::record(
                    &mut conn,
                    &self.keys,
                    verification_id,
                    DeliveryState::Queued,
                    0,
                    &number_field,
                )
                .await
            };
            let drop_replaced = async {
                match number.replaced {
                    Some(old) => self.del(self.keys.sealed_job(old)).await,
                    None => Ok(0),
                }
            };
            let (recorded, dropped) = tokio::join!(record, drop_replaced);
            if let Err(e) = dropped {
                tracing::warn!(error = %e, "could not remove the replaced code's sealed job");
            }
            if let Err(e) = recorded {
                let _ = self.revoke(phone, budget, verification_id).await;
                return Err(e.into());
            }

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
            let e164 = phone.as_e164();
            let sent_ms: i64 = REVOKE
                .key(self.keys.code(e164))
                .key(self.keys.cooldown(e164))
                .key(self.keys.sends_per_hour(e164))
                .arg(verification_id.to_string())
                .invoke_async(&mut self.conn.clone())
                .await?;
            let (forgot, unguarded) = tokio::join!(
                self.del(self.keys.status(verification_id)),
                self.unguard(phone, budget, verification_id, sent_ms)
            );
            forgot?;
            unguarded
        })
    }

    fn begin_verify<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        client: &'a str,
    ) -> BoxFuture<'a, Result<VerifyLookup, StoreError>> {
        Box::pin(async move {
            let e164 = phone.as_e164();
            let p = &self.policy;
            // The per-IP limit first: a call it refuses does not count against the number.
            let mut best = None;
            if p.max_verifies_per_ip_per_minute > 0 {
                let key = self.keys.verifies_per_ip(client);
                match self
                    .hit(key, p.max_verifies_per_ip_per_minute, PER_IP_WINDOW_SECONDS)
                    .await?
                {
                    HitOutcome::Over(rate) => {
                        return Ok(VerifyLookup::Limited(LimitKind::VerifiesPerIp, rate));
                    }
                    HitOutcome::Under(rate) => best = tighter(best, rate),
                }
            }
            let begun: VerifyBegun = VERIFY_BEGIN
                .key(self.keys.verifies(e164))
                .key(self.keys.code(e164))
                .arg(p.max_verifies_per_number_per_15_minutes)
                .arg(VERIFY_WINDOW_SECONDS)
                .invoke_async(&mut self.conn.clone())
                .await?;
            let number_rate = rate(begun.limit, begun.remaining, begun.reset);
            if begun.over_limit {
                return Ok(VerifyLookup::Limited(
                    LimitKind::VerifiesPerNumber,
                    number_rate,
                ));
            }
            let rate = tighter(best, number_rate).unwrap_or(rate(0, 0, 0));
            Ok(VerifyLookup::Found {
                rate,
                record: begun.record,
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
            let e164 = phone.as_e164();
            let VerifyFinished {
                consumed,
                sent_ms,
                exhausted,
            } = VERIFY_FINISH
                .key(self.keys.code(e164))
                .key(self.keys.failures(e164))
                .arg(verification_id.map(|v| v.to_string()).unwrap_or_default())
                .arg(u8::from(matched))
                .arg(self.policy.max_attempts)
                .arg(self.policy.code_ttl_seconds)
                .invoke_async(&mut self.conn.clone())
                .await?;
            let Some(vid) = verification_id.filter(|_| consumed) else {
                return Ok(match exhausted {
                    true => Finished::Exhausted,
                    false => Finished::Failed,
                });
            };
            // The code is used: its sealed job is never resent, its delivery record says
            // `verified` (one round trip: both keys share the verification's hash tag), and the
            // fraud guard counts the conversion (all best effort; see the module docs).
            let status = self.keys.status(vid);
            let drop_sealed = async {
                redis::pipe()
                    .atomic()
                    .del(self.keys.sealed_job(vid))
                    .ignore()
                    .hset(&status, status::FIELD_VERIFIED, "1")
                    .ignore()
                    .expire(&status, status::STATUS_TTL_SECONDS as i64)
                    .ignore()
                    .query_async::<()>(&mut self.conn.clone())
                    .await
            };
            let destination = self.policy.fraud.destination(phone);
            let convert = async {
                if sent_ms == 0 {
                    return Ok(0);
                }
                CONVERTED
                    .key(self.keys.fraud_verified(&destination.prefix))
                    .key(self.keys.fraud_country(&destination.country))
                    .key(self.keys.fraud_block(&destination.prefix))
                    .key(self.keys.fraud_blocked())
                    .key(self.keys.fraud_sends(&destination.prefix))
                    .key(self.keys.fraud_clients(&destination.prefix))
                    .key(self.keys.fraud_trickle(&destination.prefix))
                    .arg(vid.to_string())
                    .arg(sent_ms)
                    .arg(self.policy.fraud.window().as_secs() + 60)
                    .arg(&destination.prefix)
                    .invoke_async::<i64>(&mut self.conn.clone())
                    .await
            };
            let (dropped, converted) = tokio::join!(drop_sealed, convert);
            if let Err(e) = dropped.and(converted) {
                tracing::warn!(error = %e, "could not tidy up after a verified code");
            }
            Ok(Finished::Consumed)
        })
    }

    fn cancel(&self, verification_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let record = self.keys.status(verification_id);
            let number: Option<String> = redis::cmd("HGET")
                .arg(&record)
                .arg(status::FIELD_NUMBER)
                .query_async(&mut self.conn.clone())
                .await?;
            let Some(number) = number else {
                return Ok(false);
            };
            let removed: i64 = CANCEL
                .key(self.keys.code(&number))
                .arg(verification_id.to_string())
                .invoke_async(&mut self.conn.clone())
                .await?;
            if removed == 0 {
                return Ok(false);
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
            let _: () = redis::pipe()
                .hset(
                    &record,
                    status::FIELD_STATE,
                    DeliveryState::Canceled.as_str(),
                )
                .ignore()
                .hset(&record, status::FIELD_UPDATED_AT, now)
                .ignore()
                .del(self.keys.sealed_job(verification_id))
                .ignore()
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(true)
        })
    }

    fn first_captcha<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let key = self.keys.captcha_token(digest);
            Ok(self
                .set_once(key, "1", crate::captcha::TOKEN_MEMORY)
                .await?)
        })
    }

    fn budgets(&self) -> BoxFuture<'_, Result<Vec<BudgetUse>, StoreError>> {
        Box::pin(async move {
            let scopes = self.policy.budget_scopes();
            if scopes.is_empty() {
                return Ok(Vec::new());
            }
            // Every budget key is in the `{global}` slot: one MGET, even on a cluster.
            let keys: Vec<String> = scopes
                .iter()
                .map(|(country, _)| match country {
                    Some(country) => self.keys.sends_country(country),
                    None => self.keys.sends_all(),
                })
                .collect();
            let spent: Vec<Option<u32>> = redis::cmd("MGET")
                .arg(keys)
                .query_async(&mut self.conn.clone())
                .await?;
            let spent = spent.into_iter().map(Option::unwrap_or_default).collect();
            Ok(super::budget_uses(scopes, spent))
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let _: String = redis::cmd("PING")
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(())
        })
    }
}

impl IdempotencyStore for RedisStore {
    fn claim_idempotency<'a>(
        &'a self,
        key_digest: &'a str,
        body_digest: &'a str,
    ) -> BoxFuture<'a, Result<IdempotencyClaim, StoreError>> {
        Box::pin(async move {
            let pending = IdempotencyRecord {
                body: body_digest.to_owned(),
                response: None,
            };
            let claim: KeyClaim = IDEMPOTENCY
                .key(self.keys.idempotency(key_digest))
                .arg(
                    serde_json::to_string(&pending)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                )
                .arg(IDEMPOTENCY_PENDING_TTL_SECONDS)
                .invoke_async(&mut self.conn.clone())
                .await?;
            let existing = match claim {
                KeyClaim::Claimed => return Ok(IdempotencyClaim::Claimed),
                KeyClaim::Existing(record) => record,
            };
            let record: IdempotencyRecord = serde_json::from_str(&existing)
                .map_err(|e| StoreError::Corrupt(format!("idempotency record: {e}")))?;
            Ok(match record.response {
                _ if record.body != body_digest => IdempotencyClaim::Conflict,
                Some(response) => IdempotencyClaim::Replay(response),
                None => IdempotencyClaim::InProgress,
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
            let record = IdempotencyRecord {
                body: body_digest.to_owned(),
                response: Some(response_json.to_owned()),
            };
            let json =
                serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let _: () = redis::cmd("SET")
                .arg(self.keys.idempotency(key_digest))
                .arg(json)
                .arg("EX")
                .arg(IDEMPOTENCY_TTL_SECONDS)
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(())
        })
    }

    fn release_idempotency<'a>(
        &'a self,
        key_digest: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = redis::cmd("DEL")
                .arg(self.keys.idempotency(key_digest))
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(())
        })
    }
}

impl ReportStore for RedisStore {
    fn delivery_status(
        &self,
        verification_id: Uuid,
    ) -> BoxFuture<'_, Result<Option<DeliveryStatus>, StoreError>> {
        Box::pin(async move {
            Ok(status::load(&mut self.conn.clone(), &self.keys, verification_id).await?)
        })
    }

    fn reported_verification<'a>(
        &'a self,
        provider: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Uuid>, StoreError>> {
        Box::pin(async move {
            let verification: Option<String> = redis::cmd("GET")
                .arg(self.keys.provider_message(provider, message_id))
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(verification.and_then(|v| Uuid::parse_str(&v).ok()))
        })
    }

    fn first_report<'a>(
        &'a self,
        provider: &'a str,
        nonce: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let key = self.keys.report_nonce(provider, nonce);
            Ok(self.set_once(key, "1", REPORT_NONCE_TTL).await?)
        })
    }

    fn forget_report<'a>(
        &'a self,
        provider: &'a str,
        nonce: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.del(self.keys.report_nonce(provider, nonce)).await?;
            Ok(())
        })
    }

    fn advance_delivery<'a>(
        &'a self,
        verification_id: Uuid,
        state: DeliveryState,
        extra: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            Ok(status::advance(&mut conn, &self.keys, verification_id, state, extra).await?)
        })
    }

    fn annotate_delivery<'a>(
        &'a self,
        verification_id: Uuid,
        field: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = ANNOTATE
                .key(self.keys.status(verification_id))
                .arg(field)
                .arg(value)
                .invoke_async(&mut self.conn.clone())
                .await?;
            Ok(())
        })
    }
}

impl ResendStore for RedisStore {
    fn take_resend<'a>(
        &'a self,
        verification_id: Uuid,
        failed: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let marker = self.keys.resend_marker(verification_id);
            if !self.set_once(marker, failed, REPORT_NONCE_TTL).await? {
                return Ok(None);
            }
            Ok(redis::cmd("GET")
                .arg(self.keys.sealed_job(verification_id))
                .query_async(&mut self.conn.clone())
                .await?)
        })
    }

    fn spend_resend<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        verification_id: Uuid,
    ) -> BoxFuture<'a, Result<Option<ResendRefusal>, StoreError>> {
        Box::pin(async move {
            let member = super::resend_member(verification_id);
            let resend = Requester::network("", false);
            let guarded = self.guard(phone, resend, &member.to_string(), 0).await?;
            match guarded.verdict {
                GuardVerdict::Pass => {}
                GuardVerdict::Blocked => return Ok(Some(ResendRefusal::Blocked)),
                GuardVerdict::Refused(LimitKind::CountrySendsPerHour) => {
                    return Ok(Some(ResendRefusal::CountryBudget));
                }
                GuardVerdict::Refused(_) => return Ok(Some(ResendRefusal::TotalBudget)),
            }
            let sent_ms = guarded.sent_ms;
            let hourly = self.policy.max_sends_per_number_per_hour;
            if hourly == 0 {
                return Ok(None);
            }
            let key = self.keys.sends_per_hour(phone.as_e164());
            if let HitOutcome::Over(_) = self.hit(key, hourly, 3600).await? {
                // Refused after all: give back what the guard spent.
                self.unguard(phone, None, member, sent_ms).await?;
                return Ok(Some(ResendRefusal::NumberLimit));
            }
            Ok(None)
        })
    }

    fn release_resend(&self, verification_id: Uuid) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.del(self.keys.resend_marker(verification_id)).await?;
            Ok(())
        })
    }
}

impl FraudStore for RedisStore {
    fn conversion_by_country(&self) -> BoxFuture<'_, Result<Vec<(String, f64)>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let fraud = &self.policy.fraud;
            Ok(conversion_by_country(&mut conn, &self.keys, fraud).await?)
        })
    }

    fn block<'a>(
        &'a self,
        prefix: &'a str,
        lasting: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // guard.lua looks up every prefix of a number in this one hash, in every mode.
            let until = unix_ms() + lasting.as_millis() as u64;
            let _: () = redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(self.keys.fraud_manual())
                .arg(prefix)
                .arg(until)
                .ignore()
                .cmd("ZADD")
                .arg(self.keys.fraud_blocked())
                .arg(until)
                .arg(prefix)
                .ignore()
                .query_async(&mut self.conn.clone())
                .await?;
            self.manual_blocks.store(true, Ordering::Relaxed);
            Ok(())
        })
    }

    fn unblock<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let keys = &self.keys;
            let (auto, manual, _, _): (i64, i64, i64, i64) = redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(keys.fraud_block(prefix))
                .cmd("HDEL")
                .arg(keys.fraud_manual())
                .arg(prefix)
                .cmd("DEL")
                .arg(keys.fraud_sends(prefix))
                .arg(keys.fraud_verified(prefix))
                .arg(keys.fraud_clients(prefix))
                .arg(keys.fraud_trickle(prefix))
                .cmd("ZREM")
                .arg(keys.fraud_blocked())
                .arg(prefix)
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(auto + manual > 0)
        })
    }

    fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockedPrefix>, StoreError>> {
        Box::pin(async move {
            let (keys, mut conn) = (&self.keys, self.conn.clone());
            // The index of blocks (one sorted set, by when each ends), not a scan: a scan would
            // have to visit every node of a cluster.
            let (index, manual) = (keys.fraud_blocked(), keys.fraud_manual());
            let now = unix_ms();
            let (_, mut found, manual_ends): (i64, Vec<String>, Vec<(String, u64)>) = redis::pipe()
                .atomic()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(now)
                .cmd("ZRANGE")
                .arg(&index)
                .arg(0)
                .arg(-1)
                .cmd("HGETALL")
                .arg(&manual)
                .query_async(&mut conn)
                .await?;
            found.sort();
            let mut blocks = Vec::new();
            for prefix in found {
                if let Some((_, until)) = manual_ends.iter().find(|(p, _)| *p == prefix) {
                    if *until > now {
                        let expires_in_seconds = (until - now) / 1000;
                        blocks.push(BlockedPrefix {
                            prefix,
                            expires_in_seconds,
                            guard: None,
                        });
                    }
                    continue;
                }
                let key = keys.fraud_block(&prefix);
                let (block, ttl): (GuardBlockFields, i64) = redis::pipe()
                    .cmd("HGETALL")
                    .arg(&key)
                    .cmd("TTL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await?;
                // Lifted meanwhile, or gone with its TTL.
                if let (Some(guard), Ok(expires_in_seconds)) = (block.0, u64::try_from(ttl)) {
                    blocks.push(BlockedPrefix {
                        prefix,
                        expires_in_seconds,
                        guard: Some(guard),
                    });
                }
            }
            // Manual blocks past their end are tidied away here (the guard ignores them).
            let stale: Vec<&String> = manual_ends
                .iter()
                .filter(|(_, until)| *until <= now)
                .map(|(p, _)| p)
                .collect();
            if !stale.is_empty() {
                let _: i64 = redis::cmd("HDEL")
                    .arg(&manual)
                    .arg(stale)
                    .query_async(&mut conn)
                    .await?;
            }
            Ok(blocks)
        })
    }
}

/// The country counters' bucket width (guard.lua, unguard.lua and converted.lua use the same).
const BUCKET_MS: u64 = 10_000;

/// (country, verified ÷ counted sends) for the countries with counted sends in the window;
/// a 10-second bucket counts once it started before the grace. Drops buckets past the window.
async fn conversion_by_country<C: redis::aio::ConnectionLike + Send>(
    redis: &mut C,
    keys: &otp_shared::keys::Keys,
    settings: &crate::fraud::FraudSettings,
) -> redis::RedisResult<Vec<(String, f64)>> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(redis).await?;
    let now = secs * 1000 + micros / 1000;
    let oldest = now.saturating_sub(settings.window().as_millis() as u64);
    let newest = now.saturating_sub(settings.grace().as_millis() as u64);
    let countries: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.fraud_countries())
        .arg(oldest)
        .arg("+inf")
        .query_async(redis)
        .await?;
    let mut out = Vec::new();
    for country in countries {
        let key = keys.fraud_country(&country);
        let buckets: std::collections::HashMap<String, u64> =
            redis::cmd("HGETALL").arg(&key).query_async(redis).await?;
        let (mut sends, mut verified, mut stale) = (0, 0, Vec::new());
        for (field, count) in buckets {
            let Some((kind, bucket)) = field.split_once(':') else {
                continue;
            };
            let start = bucket.parse::<u64>().unwrap_or(0) * BUCKET_MS;
            if start + BUCKET_MS <= oldest {
                stale.push(field);
            } else if start <= newest {
                match kind {
                    "s" => sends += count,
                    "v" => verified += count,
                    _ => {}
                }
            }
        }
        if !stale.is_empty() {
            let _: i64 = redis::cmd("HDEL")
                .arg(&key)
                .arg(&stale)
                .query_async(redis)
                .await?;
        }
        if sends > 0 {
            out.push((country, verified as f64 / sends as f64));
        }
    }
    Ok(out)
}

/// A prefix's block hash as guard.lua writes it; `None` when the hash is gone.
struct GuardBlockFields(Option<GuardBlock>);

impl redis::FromRedisValue for GuardBlockFields {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let fields: std::collections::HashMap<String, String> =
            redis::FromRedisValue::from_redis_value(value)?;
        if fields.is_empty() {
            return Ok(Self(None));
        }
        let number = |name: &str| -> Result<u64, redis::ParsingError> {
            fields
                .get(name)
                .map_or(Ok(0), |v| v.parse())
                .map_err(|_| format!("block field {name} is not a count").into())
        };
        // Blocks written before the burst rule existed have no rule: conversion.
        let rule = match fields.get("rule").map(String::as_str) {
            None | Some("conversion") => BlockRule::Conversion,
            Some("burst") => BlockRule::Burst,
            Some(other) => return Err(format!("block rule '{other}'").into()),
        };
        Ok(Self(Some(GuardBlock {
            rule,
            country: fields.get("country").cloned().unwrap_or_default(),
            sends: number("sends")?,
            verified: number("verified")?,
            young: number("young")?,
            clients: number("clients")?,
        })))
    }
}

fn unix_ms() -> u64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}
