//! [`OtpStore`] on Redis: every multi-key step is one Lua script, so it is atomic and costs one
//! round trip.

use std::sync::LazyLock;

use redis::{Script, aio::ConnectionManager};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use otp_shared::{
    keys::Keys,
    phone::PhoneNumber,
    status::{self, DeliveryStatus, STATUS_TTL_SECONDS},
};

use crate::{config::CountryBudgets, fraud::FraudSettings};

use super::{
    FraudSignal, IdempotencyClaim, IssueOutcome, LimitKind, OtpStore, RateLimit, StoreError,
    VerifyLookup,
};

static ISSUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("issue.lua")));
static REVOKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("revoke.lua")));
static VERIFY_BEGIN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("verify_begin.lua")));
static VERIFY_FINISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("verify_finish.lua")));
/// One request counted against its client's per-minute limit; returns {count, ttl}.
static IP_HIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local n = redis.call('INCR', KEYS[1]) \
         if n == 1 then redis.call('EXPIRE', KEYS[1], 60) end \
         return {n, redis.call('TTL', KEYS[1])}",
    )
});
static IDEMPOTENCY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("idempotency.lua")));

/// Replayable responses are kept this long (the Idempotency-Key promise).
const IDEMPOTENCY_TTL_SECONDS: u64 = 24 * 60 * 60;
/// A claim whose request never finished (process killed) frees itself after this long.
const IDEMPOTENCY_PENDING_TTL_SECONDS: u64 = 30;
const VERIFY_WINDOW_SECONDS: u64 = 15 * 60;

/// The limits and lifetimes the store applies; 0 disables a limit.
#[derive(Debug, Clone)]
pub struct StorePolicy {
    pub code_ttl_seconds: u32,
    pub max_attempts: u32,
    pub resend_cooldown_seconds: u32,
    pub max_sends_per_number_per_hour: u32,
    pub max_requests_per_ip_per_minute: u32,
    pub max_verifies_per_number_per_15_minutes: u32,
    pub max_verifies_per_ip_per_minute: u32,
    pub max_sends_per_hour: u32,
    pub max_sends_per_country_per_hour: CountryBudgets,
    pub fraud: FraudSettings,
}

/// The budget counter's name for a number's country (`ZZ`: no single country).
fn country_of(phone: &PhoneNumber) -> String {
    phone
        .country()
        .map_or_else(|| "ZZ".to_owned(), |c| c.as_str().to_owned())
}

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    policy: StorePolicy,
}

#[derive(Serialize, Deserialize)]
struct IdempotencyRecord {
    body: String,
    response: Option<String>,
}

impl RedisStore {
    pub fn new(conn: ConnectionManager, keys: Keys, policy: StorePolicy) -> Self {
        Self { conn, keys, policy }
    }
}

fn rate(limit: i64, remaining: i64, reset: i64) -> RateLimit {
    RateLimit {
        limit: limit.clamp(0, u32::MAX.into()) as u32,
        remaining: remaining.clamp(0, u32::MAX.into()) as u32,
        reset_seconds: reset.max(0) as u64,
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl OtpStore for RedisStore {
    async fn hit_request_ip(&self, client: &str) -> Result<Option<RateLimit>, StoreError> {
        let limit = self.policy.max_requests_per_ip_per_minute;
        if limit == 0 {
            return Ok(None);
        }
        let (n, reset): (i64, i64) = IP_HIT
            .key(self.keys.requests_per_ip(client))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((n > i64::from(limit)).then(|| rate(limit.into(), 0, reset)))
    }

    async fn issue(
        &self,
        phone: &PhoneNumber,
        client: Option<&str>,
        verification_id: Uuid,
        digest: &str,
    ) -> Result<IssueOutcome, StoreError> {
        let e164 = phone.as_e164();
        let p = &self.policy;
        let ip_limit = if client.is_some() {
            p.max_requests_per_ip_per_minute
        } else {
            0
        };
        let fraud = &p.fraud;
        let destination = fraud.destination(phone);
        let (outcome, limit, remaining, reset, signal): (String, i64, i64, i64, String) = ISSUE
            .key(self.keys.requests_per_ip(client.unwrap_or_default()))
            .key(self.keys.cooldown(e164))
            .key(self.keys.sends_per_hour(e164))
            .key(self.keys.code(e164))
            .key(self.keys.status(verification_id))
            .key(self.keys.failures(e164))
            .key(self.keys.sends_all())
            .key(self.keys.sends_country(&country_of(phone)))
            .key(self.keys.fraud_sends(&destination.prefix))
            .key(self.keys.fraud_verified(&destination.prefix))
            .key(self.keys.fraud_block(&destination.prefix))
            .key(self.keys.fraud_country(&destination.country))
            .key(self.keys.fraud_countries())
            .arg(ip_limit)
            .arg(p.resend_cooldown_seconds)
            .arg(p.max_sends_per_number_per_hour)
            .arg(verification_id.to_string())
            .arg(digest)
            .arg(p.code_ttl_seconds)
            .arg(STATUS_TTL_SECONDS)
            .arg(unix_now())
            .arg(p.max_sends_per_hour)
            .arg(p.max_sends_per_country_per_hour.limit_for(phone.country()))
            .arg(self.keys.prefix())
            .arg(fraud.fraud_guard.code())
            .arg(fraud.window().as_millis() as u64)
            .arg(fraud.grace().as_millis() as u64)
            .arg(fraud.fraud_guard_min_sends)
            .arg(fraud.min_conversion_per_mille())
            .arg(fraud.block().as_secs())
            .arg(u8::from(destination.safe))
            .arg(&destination.country)
            .arg(&destination.prefix)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let rate = rate(limit, remaining, reset);
        let signal = match signal.as_str() {
            "blocked" => FraudSignal::Blocked,
            "new_block" => FraudSignal::NewBlock,
            "error" => FraudSignal::Unavailable,
            _ => FraudSignal::Clear,
        };
        Ok(match outcome.as_str() {
            "ok" => IssueOutcome::Issued(rate, signal),
            "blocked" => IssueOutcome::Blocked {
                new: signal == FraudSignal::NewBlock,
            },
            "ip" => IssueOutcome::Limited(LimitKind::RequestsPerIp, rate),
            "cooldown" => IssueOutcome::Limited(LimitKind::ResendCooldown, rate),
            "hourly" => IssueOutcome::Limited(LimitKind::SendsPerHour, rate),
            "country" => IssueOutcome::Limited(LimitKind::CountrySendsPerHour, rate),
            "global" => IssueOutcome::Limited(LimitKind::TotalSendsPerHour, rate),
            other => return Err(StoreError::Corrupt(format!("issue outcome '{other}'"))),
        })
    }

    async fn revoke(&self, phone: &PhoneNumber, verification_id: Uuid) -> Result<(), StoreError> {
        let e164 = phone.as_e164();
        let _: i64 = REVOKE
            .key(self.keys.code(e164))
            .key(self.keys.cooldown(e164))
            .key(self.keys.sends_per_hour(e164))
            .key(self.keys.status(verification_id))
            .key(self.keys.sends_all())
            .key(self.keys.sends_country(&country_of(phone)))
            .arg(verification_id.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn begin_verify(
        &self,
        phone: &PhoneNumber,
        client: &str,
    ) -> Result<VerifyLookup, StoreError> {
        let e164 = phone.as_e164();
        let (outcome, limit, remaining, reset, vid, digest): (
            String,
            i64,
            i64,
            i64,
            String,
            String,
        ) = VERIFY_BEGIN
            .key(self.keys.verifies(e164))
            .key(self.keys.code(e164))
            .key(self.keys.verifies_per_ip(client))
            .arg(self.policy.max_verifies_per_number_per_15_minutes)
            .arg(VERIFY_WINDOW_SECONDS)
            .arg(self.policy.max_verifies_per_ip_per_minute)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let rate = rate(limit, remaining, reset);
        match outcome.as_str() {
            "ip" => return Ok(VerifyLookup::Limited(LimitKind::VerifiesPerIp, rate)),
            "number" => return Ok(VerifyLookup::Limited(LimitKind::VerifiesPerNumber, rate)),
            _ => {}
        }
        let record = Uuid::parse_str(&vid).ok().map(|vid| (vid, digest));
        Ok(VerifyLookup::Found { rate, record })
    }

    async fn finish_verify(
        &self,
        phone: &PhoneNumber,
        verification_id: Option<Uuid>,
        matched: bool,
    ) -> Result<bool, StoreError> {
        let e164 = phone.as_e164();
        let destination = self.policy.fraud.destination(phone);
        let consumed: i64 = VERIFY_FINISH
            .key(self.keys.code(e164))
            .key(self.keys.failures(e164))
            .key(self.keys.sealed_job(verification_id.unwrap_or_default()))
            .key(self.keys.fraud_verified(&destination.prefix))
            .key(self.keys.fraud_country(&destination.country))
            .arg(verification_id.map(|v| v.to_string()).unwrap_or_default())
            .arg(u8::from(matched))
            .arg(self.policy.max_attempts)
            .arg(self.policy.code_ttl_seconds)
            .arg(self.policy.fraud.window().as_secs() + 60)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(consumed == 1)
    }

    async fn claim_idempotency(
        &self,
        key_digest: &str,
        body_digest: &str,
    ) -> Result<IdempotencyClaim, StoreError> {
        let pending = IdempotencyRecord {
            body: body_digest.to_owned(),
            response: None,
        };
        let (outcome, existing): (String, String) = IDEMPOTENCY
            .key(self.keys.idempotency(key_digest))
            .arg(serde_json::to_string(&pending).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            .arg(IDEMPOTENCY_PENDING_TTL_SECONDS)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if outcome == "claimed" {
            return Ok(IdempotencyClaim::Claimed);
        }
        let record: IdempotencyRecord = serde_json::from_str(&existing)
            .map_err(|e| StoreError::Corrupt(format!("idempotency record: {e}")))?;
        Ok(match record.response {
            _ if record.body != body_digest => IdempotencyClaim::Conflict,
            Some(response) => IdempotencyClaim::Replay(response),
            None => IdempotencyClaim::InProgress,
        })
    }

    async fn complete_idempotency(
        &self,
        key_digest: &str,
        body_digest: &str,
        response_json: &str,
    ) -> Result<(), StoreError> {
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
    }

    async fn release_idempotency(&self, key_digest: &str) -> Result<(), StoreError> {
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.idempotency(key_digest))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn delivery_status(
        &self,
        verification_id: Uuid,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        Ok(status::load(&mut self.conn.clone(), &self.keys, verification_id).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
