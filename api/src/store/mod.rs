//! Where codes, limits, idempotency records and delivery records (with what delivery reports
//! need) live. The service talks to the [`OtpStore`] trait;
//! [`RedisStore`] is the production implementation, [`MemoryStore`] the same rules in process
//! memory (the conformance suite, `api/tests/api/conformance.rs`, keeps the two in step).

mod memory;
mod redis_store;
mod rules;

use std::future::Future;

use uuid::Uuid;

use otp_shared::{
    phone::PhoneNumber,
    status::{DeliveryState, DeliveryStatus},
};

use crate::{
    config::{Config, CountryBudgets},
    fraud::FraudSettings,
};

pub use memory::MemoryStore;
pub use redis_store::RedisStore;

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

impl StorePolicy {
    /// The policy `config` sets.
    pub fn from_config(config: &Config) -> Self {
        let (otp, limits) = (&config.otp, &config.limits);
        Self {
            code_ttl_seconds: otp.otp_validity_seconds,
            max_attempts: otp.otp_max_attempts,
            resend_cooldown_seconds: limits.resend_cooldown_seconds,
            max_sends_per_number_per_hour: limits.max_sends_per_number_per_hour,
            max_requests_per_ip_per_minute: limits.max_requests_per_ip_per_minute,
            max_verifies_per_number_per_15_minutes: limits.max_verifies_per_number_per_15_minutes,
            max_verifies_per_ip_per_minute: limits.max_verifies_per_ip_per_minute,
            max_sends_per_hour: limits.sends_per_hour(),
            max_sends_per_country_per_hour: limits.max_sends_per_country_per_hour.clone(),
            fraud: config.fraud.clone(),
        }
    }
}

/// A limit's state, for the RateLimit-* and Retry-After headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u32,
    pub remaining: u32,
    pub reset_seconds: u64,
}

impl RateLimit {
    /// `None` when no limit applied (all disabled), so no RateLimit-* headers are sent.
    pub fn enabled(self) -> Option<Self> {
        (self.limit > 0).then_some(self)
    }
}

/// Which abuse limit stopped a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    RequestsPerIp,
    ResendCooldown,
    SendsPerHour,
    VerifiesPerNumber,
    VerifiesPerIp,
    /// MAX_SENDS_PER_COUNTRY_PER_HOUR.
    CountrySendsPerHour,
    /// MAX_SENDS_PER_HOUR.
    TotalSendsPerHour,
}

impl LimitKind {
    /// The stable name in logs and in `otp_rate_limited_total{limit}`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RequestsPerIp => "requests_per_ip",
            Self::ResendCooldown => "resend_cooldown",
            Self::SendsPerHour => "sends_per_number_per_hour",
            Self::VerifiesPerNumber => "verifies_per_number",
            Self::VerifiesPerIp => "verifies_per_ip",
            Self::CountrySendsPerHour => "sends_per_country_per_hour",
            Self::TotalSendsPerHour => "sends_per_hour",
        }
    }

    pub const ALL: [Self; 7] = [
        Self::RequestsPerIp,
        Self::ResendCooldown,
        Self::SendsPerHour,
        Self::VerifiesPerNumber,
        Self::VerifiesPerIp,
        Self::CountrySendsPerHour,
        Self::TotalSendsPerHour,
    ];
}

/// The result of trying to issue a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueOutcome {
    /// The digest is stored and the delivery state is `queued`; `fraud` is what the fraud
    /// guard saw (in monitor mode a blocked prefix is issued anyway).
    Issued(RateLimit, FraudSignal),
    Limited(LimitKind, RateLimit),
    /// The destination is blocked: by an operator ([`FraudSignal::Manual`]), or by the fraud
    /// guard with FRAUD_GUARD=enforce ([`FraudSignal::Blocked`], [`FraudSignal::NewBlock`]).
    Blocked(FraudSignal),
}

/// Which fraud guard rule blocked a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRule {
    /// FRAUD_GUARD_MIN_SENDS counted sends converting below FRAUD_GUARD_MIN_CONVERSION.
    Conversion,
    /// FRAUD_GUARD_BURST unverified sends within the grace.
    Burst,
}

impl BlockRule {
    /// The name in logs (`rule=`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Conversion => "conversion",
            Self::Burst => "burst",
        }
    }
}

/// What the fraud guard saw when a code was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FraudSignal {
    Clear,
    /// The prefix is blocked (monitor mode: not enforced).
    Blocked,
    /// This request blocked the prefix (monitor mode: not enforced).
    NewBlock(BlockRule),
    /// The prefix is blocked (`new`: by this request) and this send was let through on the
    /// hourly allowance (FRAUD_GUARD_BLOCKED_SENDS_PER_HOUR).
    Trickle {
        new: Option<BlockRule>,
    },
    /// An operator blocked a prefix of the number (`otp-api fraud block`), in every mode.
    Manual,
    /// The fraud state could not be used: the request was not blocked on its account.
    Unavailable,
}

impl FraudSignal {
    /// From `guard.lua`'s `fraud` and `rule` answers.
    pub(crate) fn from_script(fraud: &str, rule: &str) -> Result<Self, StoreError> {
        let rule = match rule {
            "" => None,
            "conversion" => Some(BlockRule::Conversion),
            "burst" => Some(BlockRule::Burst),
            other => return Err(StoreError::Corrupt(format!("fraud rule '{other}'"))),
        };
        Ok(match (fraud, rule) {
            ("", _) => Self::Clear,
            ("blocked", _) => Self::Blocked,
            ("new_block", Some(rule)) => Self::NewBlock(rule),
            ("trickle", new) => Self::Trickle { new },
            ("manual", _) => Self::Manual,
            ("error", _) => Self::Unavailable,
            (other, _) => return Err(StoreError::Corrupt(format!("fraud signal '{other}'"))),
        })
    }
}

/// Why the one resend after an undelivered report was not made: what a new request for the
/// number would have been refused for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendRefusal {
    /// A manual block, or the fraud guard enforcing one (no trickle for resends).
    Blocked,
    TotalBudget,
    CountryBudget,
    NumberLimit,
}

impl ResendRefusal {
    /// The fixed text the delivery status shows.
    pub fn text(self) -> &'static str {
        match self {
            Self::Blocked => "not resent: destination blocked",
            Self::TotalBudget => "not resent: hourly send budget spent",
            Self::CountryBudget => "not resent: country's hourly send budget spent",
            Self::NumberLimit => "not resent: number's hourly limit reached",
        }
    }
}

/// The id a resend's send is counted under by the fraud guard: another send of the same
/// verification, given back on its own if the resend is refused.
pub fn resend_member(verification_id: Uuid) -> Uuid {
    Uuid::new_v5(&verification_id, b"resend")
}

/// What a verify finds before comparing digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyLookup {
    Limited(LimitKind, RateLimit),
    /// `record` is the live code's (verification id, hex digest), if the number has one.
    Found {
        rate: RateLimit,
        record: Option<(Uuid, String)>,
    },
}

/// What an Idempotency-Key already stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// First use: this request owns the key now.
    Claimed,
    /// The first request with this key is still being handled.
    InProgress,
    /// Seen with the same body: replay this stored response (JSON).
    Replay(String),
    /// Seen with a different body.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or failed; the source says how.
    #[error("the code store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the code store returned something unexpected: {0}")]
    Corrupt(String),
}

/// Everything the API keeps about codes. Implementations must make `issue` and `finish_verify`
/// atomic, and enforce limits across every API replica.
pub trait OtpStore: Send + Sync + 'static {
    /// Counts a code request against its client's per-minute limit on its own (done before an
    /// Idempotency-Key is claimed); `Some` when the client is over it.
    fn hit_request_ip(
        &self,
        client: &str,
    ) -> impl Future<Output = Result<Option<RateLimit>, StoreError>> + Send;

    /// Applies the request limits and, if none is hit, stores `digest` as the number's only code.
    /// `client` is the caller's network (the per-IP limit's key), which the fraud guard counts;
    /// `count_ip` is false when its per-IP limit was already applied ([`Self::hit_request_ip`]).
    fn issue(
        &self,
        phone: &PhoneNumber,
        client: &str,
        count_ip: bool,
        verification_id: Uuid,
        digest: &str,
    ) -> impl Future<Output = Result<IssueOutcome, StoreError>> + Send;

    /// Undoes `issue` after its send job could not be published.
    fn revoke(
        &self,
        phone: &PhoneNumber,
        verification_id: Uuid,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Counts a verify call against the client's and the number's limits and returns the
    /// number's live code, if any.
    fn begin_verify(
        &self,
        phone: &PhoneNumber,
        client: &str,
    ) -> impl Future<Output = Result<VerifyLookup, StoreError>> + Send;

    /// Consumes the code if `matched` and it is still live and not void; otherwise counts a
    /// failure. Returns whether the code was consumed. Exactly one concurrent caller can win.
    fn finish_verify(
        &self,
        phone: &PhoneNumber,
        verification_id: Option<Uuid>,
        matched: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn claim_idempotency(
        &self,
        key_digest: &str,
        body_digest: &str,
    ) -> impl Future<Output = Result<IdempotencyClaim, StoreError>> + Send;

    /// Stores the response to replay for a claimed key.
    fn complete_idempotency(
        &self,
        key_digest: &str,
        body_digest: &str,
        response_json: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Frees a claimed key whose request failed, so the client can retry with it.
    fn release_idempotency(
        &self,
        key_digest: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn delivery_status(
        &self,
        verification_id: Uuid,
    ) -> impl Future<Output = Result<Option<DeliveryStatus>, StoreError>> + Send;

    /// The verification a provider's message id belongs to (mapped by the dispatcher when the
    /// provider accepted the SMS).
    fn reported_verification(
        &self,
        provider: &str,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<Uuid>, StoreError>> + Send;

    /// Marks a delivery report's nonce used for [`REPORT_NONCE_TTL`]; false when it was used
    /// before (a replay).
    fn first_report(
        &self,
        provider: &str,
        nonce: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Forgets a nonce, so the provider's retry of a report that could not be applied counts.
    fn forget_report(
        &self,
        provider: &str,
        nonce: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves the verification's delivery record forward to `state` (never back, and only while
    /// the record exists), with extra fields; returns whether it moved.
    fn advance_delivery(
        &self,
        verification_id: Uuid,
        state: DeliveryState,
        extra: &[(&str, &str)],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Takes the verification's only resend (after the `failed` provider could not deliver):
    /// the sealed job kept for it, or `None` when the resend was taken before or no job is kept
    /// (its code was used or replaced, or it expired). Either way the resend is spent.
    fn take_resend(
        &self,
        verification_id: Uuid,
        failed: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Spends what the resend of `verification_id` to `phone` costs, as a new request would:
    /// the send budgets, the fraud guard (a blocked prefix gets no resend, not even on the
    /// trickle) and the number's hourly limit; `Some` says why it must not be made.
    fn spend_resend(
        &self,
        phone: &PhoneNumber,
        verification_id: Uuid,
    ) -> impl Future<Output = Result<Option<ResendRefusal>, StoreError>> + Send;

    /// Sets one field of the verification's delivery record, if it exists, its state unchanged.
    fn annotate_delivery(
        &self,
        verification_id: Uuid,
        field: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives back a taken resend whose publish failed.
    fn release_resend(
        &self,
        verification_id: Uuid,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The fraud guard's conversion per country: (country, verified ÷ counted sends) for the
    /// countries with sends counted in the window (those younger than the grace are not).
    fn conversion_by_country(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, f64)>, StoreError>> + Send;

    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How long a delivery report's nonce, and a verification's spent resend, are remembered.
pub const REPORT_NONCE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// The store a running API uses: Redis, or memory in the one-process mode.
#[derive(Clone)]
pub enum AnyStore {
    Redis(RedisStore),
    Memory(MemoryStore),
}

/// Calls the same method on whichever store it is.
macro_rules! on_store {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Redis($store) => $call.await,
            AnyStore::Memory($store) => $call.await,
        }
    };
}

impl OtpStore for AnyStore {
    async fn hit_request_ip(&self, client: &str) -> Result<Option<RateLimit>, StoreError> {
        on_store!(self, s => s.hit_request_ip(client))
    }

    async fn issue(
        &self,
        phone: &PhoneNumber,
        client: &str,
        count_ip: bool,
        verification_id: Uuid,
        digest: &str,
    ) -> Result<IssueOutcome, StoreError> {
        on_store!(self, s => s.issue(phone, client, count_ip, verification_id, digest))
    }

    async fn revoke(&self, phone: &PhoneNumber, verification_id: Uuid) -> Result<(), StoreError> {
        on_store!(self, s => s.revoke(phone, verification_id))
    }

    async fn begin_verify(
        &self,
        phone: &PhoneNumber,
        client: &str,
    ) -> Result<VerifyLookup, StoreError> {
        on_store!(self, s => s.begin_verify(phone, client))
    }

    async fn finish_verify(
        &self,
        phone: &PhoneNumber,
        verification_id: Option<Uuid>,
        matched: bool,
    ) -> Result<bool, StoreError> {
        on_store!(self, s => s.finish_verify(phone, verification_id, matched))
    }

    async fn claim_idempotency(
        &self,
        key_digest: &str,
        body_digest: &str,
    ) -> Result<IdempotencyClaim, StoreError> {
        on_store!(self, s => s.claim_idempotency(key_digest, body_digest))
    }

    async fn complete_idempotency(
        &self,
        key_digest: &str,
        body_digest: &str,
        response_json: &str,
    ) -> Result<(), StoreError> {
        on_store!(self, s => s.complete_idempotency(key_digest, body_digest, response_json))
    }

    async fn release_idempotency(&self, key_digest: &str) -> Result<(), StoreError> {
        on_store!(self, s => s.release_idempotency(key_digest))
    }

    async fn delivery_status(
        &self,
        verification_id: Uuid,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        on_store!(self, s => s.delivery_status(verification_id))
    }

    async fn reported_verification(
        &self,
        provider: &str,
        message_id: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        on_store!(self, s => s.reported_verification(provider, message_id))
    }

    async fn first_report(&self, provider: &str, nonce: &str) -> Result<bool, StoreError> {
        on_store!(self, s => s.first_report(provider, nonce))
    }

    async fn forget_report(&self, provider: &str, nonce: &str) -> Result<(), StoreError> {
        on_store!(self, s => s.forget_report(provider, nonce))
    }

    async fn advance_delivery(
        &self,
        verification_id: Uuid,
        state: DeliveryState,
        extra: &[(&str, &str)],
    ) -> Result<bool, StoreError> {
        on_store!(self, s => s.advance_delivery(verification_id, state, extra))
    }

    async fn take_resend(
        &self,
        verification_id: Uuid,
        failed: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        on_store!(self, s => s.take_resend(verification_id, failed))
    }

    async fn spend_resend(
        &self,
        phone: &PhoneNumber,
        verification_id: Uuid,
    ) -> Result<Option<ResendRefusal>, StoreError> {
        on_store!(self, s => s.spend_resend(phone, verification_id))
    }

    async fn annotate_delivery(
        &self,
        verification_id: Uuid,
        field: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        on_store!(self, s => s.annotate_delivery(verification_id, field, value))
    }

    async fn release_resend(&self, verification_id: Uuid) -> Result<(), StoreError> {
        on_store!(self, s => s.release_resend(verification_id))
    }

    async fn conversion_by_country(&self) -> Result<Vec<(String, f64)>, StoreError> {
        on_store!(self, s => s.conversion_by_country())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        on_store!(self, s => s.ping())
    }
}
