//! Where codes, limits, idempotency records and delivery records (with what delivery reports
//! need) live, seen through one trait per role: [`CodeStore`] (codes and their limits),
//! [`IdempotencyStore`], [`ReportStore`] (delivery records and reports), [`ResendStore`] and
//! [`FraudStore`] (blocks, for operators and the conversion gauge). [`RedisStore`] is the
//! production implementation of every role, [`MemoryStore`] the same rules in process memory
//! (the conformance suite, `api/tests/api/conformance.rs`, keeps the two in step).
//!
//! Every seam in the workspace is written one way: a `Send + Sync` trait whose async methods
//! return a `BoxFuture`, held as `Arc<dyn Trait>`, so a backend is chosen at start-up without
//! generics or forwarding enums.

mod memory;
mod redis_store;
mod replies;
mod rules;

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;

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
    /// How long a fraud guard block lasts (FRAUD_GUARD_BLOCK_HOURS).
    pub fraud_block: Duration,
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
            fraud_block: config.fraud.block(),
        }
    }

    /// For the operator tools (`otp-api fraud …`), which only read and write blocks: every
    /// limit off, and the fraud guard off with its default shape.
    pub fn operator_tools() -> Self {
        Self {
            code_ttl_seconds: 0,
            max_attempts: 0,
            resend_cooldown_seconds: 0,
            max_sends_per_number_per_hour: 0,
            max_requests_per_ip_per_minute: 0,
            max_verifies_per_number_per_15_minutes: 0,
            max_verifies_per_ip_per_minute: 0,
            max_sends_per_hour: 0,
            max_sends_per_country_per_hour: CountryBudgets::default(),
            fraud: FraudSettings::off(),
            fraud_block: Duration::from_secs(12 * 3600),
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
    /// API_KEY_MAX_SENDS_PER_HOUR.
    KeySendsPerHour,
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
            Self::KeySendsPerHour => "sends_per_key_per_hour",
        }
    }

    pub const ALL: [Self; 8] = [
        Self::RequestsPerIp,
        Self::ResendCooldown,
        Self::SendsPerHour,
        Self::VerifiesPerNumber,
        Self::VerifiesPerIp,
        Self::CountrySendsPerHour,
        Self::TotalSendsPerHour,
        Self::KeySendsPerHour,
    ];
}

/// A caller key's hourly send budget (API_KEY_MAX_SENDS_PER_HOUR), spent with the other
/// budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBudget<'a> {
    pub key: &'a str,
    pub per_hour: u32,
}

/// Who asks for a code, as the limits see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester<'a> {
    /// The caller's network (the per-IP limit's key), which the fraud guard counts.
    pub client: &'a str,
    /// Whether the per-IP limit is still to be applied (false when
    /// [`CodeStore::hit_request_ip`] did).
    pub count_ip: bool,
    /// The caller key's budget, if it has one.
    pub budget: Option<KeyBudget<'a>>,
}

impl<'a> Requester<'a> {
    /// A caller known by its network alone, with no key budget.
    pub fn network(client: &'a str, count_ip: bool) -> Self {
        Self {
            client,
            count_ip,
            budget: None,
        }
    }
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

/// How a verify's second half ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The code matched and is used up.
    Consumed,
    /// No code consumed (wrong, void, replaced or gone).
    Failed,
    /// A wrong guess that used the last attempt: the code is void from now on.
    Exhausted,
}

impl Finished {
    pub fn consumed(self) -> bool {
        self == Self::Consumed
    }
}

/// Codes and the limits around them. Implementations make `issue` and `finish_verify` atomic,
/// and enforce limits across every API replica.
pub trait CodeStore: Send + Sync {
    /// Counts a code request against its client's per-minute limit on its own (done before an
    /// Idempotency-Key is claimed); `Some` when the client is over it.
    fn hit_request_ip<'a>(
        &'a self,
        client: &'a str,
    ) -> BoxFuture<'a, Result<Option<RateLimit>, StoreError>>;

    /// Applies the request limits and, if none is hit, stores `digest` as the number's only code.
    fn issue<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        requester: Requester<'a>,
        verification_id: Uuid,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<IssueOutcome, StoreError>>;

    /// Undoes `issue` after its send job could not be published; `budget` is the key budget
    /// the issue spent.
    fn revoke<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        budget: Option<KeyBudget<'a>>,
        verification_id: Uuid,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Counts a verify call against the client's and the number's limits and returns the
    /// number's live code, if any.
    fn begin_verify<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        client: &'a str,
    ) -> BoxFuture<'a, Result<VerifyLookup, StoreError>>;

    /// Consumes the code if `matched` and it is still live and not void; otherwise counts a
    /// failure. Returns whether the code was consumed. Exactly one concurrent caller can win.
    fn finish_verify<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        verification_id: Option<Uuid>,
        matched: bool,
    ) -> BoxFuture<'a, Result<Finished, StoreError>>;

    /// Voids a verification's code if it is still the number's live code (not used, expired,
    /// replaced or canceled): the code is removed, the delivery record says `canceled` (so a
    /// job still queued is withdrawn) and the sealed job is never resent. False when there was
    /// nothing to cancel.
    fn cancel(&self, verification_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Marks a CAPTCHA token (its digest) seen for [`crate::captcha::TOKEN_MEMORY`]; false
    /// when it was seen within that time (a reuse).
    fn first_captcha<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Each configured send budget's use in the current hour (`otp_send_budget_remaining`).
    fn budgets(&self) -> BoxFuture<'_, Result<Vec<BudgetUse>, StoreError>>;

    /// Whether the backend answers (readiness).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// A send budget's use in the current hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetUse {
    /// `global` (MAX_SENDS_PER_HOUR) or a country named in MAX_SENDS_PER_COUNTRY_PER_HOUR.
    pub scope: String,
    pub limit: u32,
    pub spent: u32,
}

impl StorePolicy {
    /// The configured budgets, by scope, with their limits: the global one, then each named
    /// country's (0, none, is left out).
    pub fn budget_scopes(&self) -> Vec<(Option<String>, u32)> {
        let global = (self.max_sends_per_hour > 0).then_some((None, self.max_sends_per_hour));
        let countries = self
            .max_sends_per_country_per_hour
            .named()
            .filter(|(_, limit)| *limit > 0)
            .map(|(country, limit)| (Some(country.as_str().to_owned()), limit));
        global.into_iter().chain(countries).collect()
    }
}

/// Pairs each budget scope with what was spent on it.
pub(crate) fn budget_uses(scopes: Vec<(Option<String>, u32)>, spent: Vec<u32>) -> Vec<BudgetUse> {
    scopes
        .into_iter()
        .zip(spent)
        .map(|((country, limit), spent)| BudgetUse {
            scope: country.unwrap_or_else(|| "global".to_owned()),
            limit,
            spent,
        })
        .collect()
}

/// Idempotency-Key records: which response a key stands for.
pub trait IdempotencyStore: Send + Sync {
    fn claim_idempotency<'a>(
        &'a self,
        key_digest: &'a str,
        body_digest: &'a str,
    ) -> BoxFuture<'a, Result<IdempotencyClaim, StoreError>>;

    /// Stores the response to replay for a claimed key.
    fn complete_idempotency<'a>(
        &'a self,
        key_digest: &'a str,
        body_digest: &'a str,
        response_json: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Frees a claimed key whose request failed, so the client can retry with it.
    fn release_idempotency<'a>(
        &'a self,
        key_digest: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Delivery records and what delivery reports need: the message-id map and used nonces.
pub trait ReportStore: Send + Sync {
    fn delivery_status(
        &self,
        verification_id: Uuid,
    ) -> BoxFuture<'_, Result<Option<DeliveryStatus>, StoreError>>;

    /// The verification a provider's message id belongs to (mapped by the dispatcher when the
    /// provider accepted the SMS).
    fn reported_verification<'a>(
        &'a self,
        provider: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Uuid>, StoreError>>;

    /// Marks a delivery report's nonce used for [`REPORT_NONCE_TTL`]; false when it was used
    /// before (a replay).
    fn first_report<'a>(
        &'a self,
        provider: &'a str,
        nonce: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Forgets a nonce, so the provider's retry of a report that could not be applied counts.
    fn forget_report<'a>(
        &'a self,
        provider: &'a str,
        nonce: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Moves the verification's delivery record forward to `state` (never back, and only while
    /// the record exists), with extra fields; returns whether it moved.
    fn advance_delivery<'a>(
        &'a self,
        verification_id: Uuid,
        state: DeliveryState,
        extra: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Sets one field of the verification's delivery record, if it exists, its state unchanged.
    fn annotate_delivery<'a>(
        &'a self,
        verification_id: Uuid,
        field: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The one resend after an undelivered report.
pub trait ResendStore: Send + Sync {
    /// Takes the verification's only resend (after the `failed` provider could not deliver):
    /// the sealed job kept for it, or `None` when the resend was taken before or no job is kept
    /// (its code was used or replaced, or it expired). Either way the resend is spent.
    fn take_resend<'a>(
        &'a self,
        verification_id: Uuid,
        failed: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Spends what the resend of `verification_id` to `phone` costs, as a new request would:
    /// the send budgets, the fraud guard (a blocked prefix gets no resend, not even on the
    /// trickle) and the number's hourly limit; `Some` says why it must not be made.
    fn spend_resend<'a>(
        &'a self,
        phone: &'a PhoneNumber,
        verification_id: Uuid,
    ) -> BoxFuture<'a, Result<Option<ResendRefusal>, StoreError>>;

    /// Gives back a taken resend whose publish failed.
    fn release_resend(&self, verification_id: Uuid) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// A blocked destination prefix, as `otp-api fraud list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedPrefix {
    pub prefix: String,
    /// Time left, in whole seconds.
    pub expires_in_seconds: u64,
    /// `None`: an operator's block (`fraud block`); else what the fraud guard saw.
    pub guard: Option<GuardBlock>,
}

/// What the fraud guard saw when it blocked (or last renewed the block of) a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardBlock {
    pub rule: BlockRule,
    pub country: String,
    /// Sends counted in the window (past the grace), and how many of them were verified.
    pub sends: u64,
    pub verified: u64,
    /// Unverified sends younger than the grace.
    pub young: u64,
    /// Distinct client networks in the window.
    pub clients: u64,
}

/// The fraud guard's state, as operators and the conversion gauge see it (the guard itself
/// runs inside [`CodeStore::issue`]).
pub trait FraudStore: Send + Sync {
    /// The fraud guard's conversion per country: (country, verified ÷ counted sends) for the
    /// countries with sends counted in the window (those younger than the grace are not).
    fn conversion_by_country(&self) -> BoxFuture<'_, Result<Vec<(String, f64)>, StoreError>>;

    /// An operator's block of `prefix` (`+` and digits) for `lasting`: every number under it
    /// is refused, in every FRAUD_GUARD mode, off included.
    fn block<'a>(
        &'a self,
        prefix: &'a str,
        lasting: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Lifts any block of `prefix` at once, with the counts that made it (else the next
    /// request would block it again); false when it was not blocked.
    fn unblock<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The prefixes blocked now, operators' and the guard's, by prefix.
    fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockedPrefix>, StoreError>>;
}

/// How long a delivery report's nonce, and a verification's spent resend, are remembered.
pub const REPORT_NONCE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Every role of one backend, as the service and the report handler hold them: each part is
/// the same store seen through one role.
#[derive(Clone)]
pub struct Stores {
    pub codes: Arc<dyn CodeStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub reports: Arc<dyn ReportStore>,
    pub resends: Arc<dyn ResendStore>,
    pub fraud: Arc<dyn FraudStore>,
}

impl Stores {
    /// Every role of `store`.
    pub fn of<S>(store: S) -> Self
    where
        S: CodeStore + IdempotencyStore + ReportStore + ResendStore + FraudStore + 'static,
    {
        let store = Arc::new(store);
        Self {
            codes: store.clone(),
            idempotency: store.clone(),
            reports: store.clone(),
            resends: store.clone(),
            fraud: store,
        }
    }
}
