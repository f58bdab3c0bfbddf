//! The OTP use cases, independent of HTTP: issue a code, verify a code, read delivery state.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use otp_shared::{
    crypto::JobKey,
    events::{Event, EventType},
    job::SendJob,
    phone::{CountryCode, PhoneNumber},
    status::DeliveryStatus,
};

use crate::{
    callers::{Caller, KeyBudgets},
    code::{CandidateCode, CodeHasher, OtpCode, hex},
    error::ApiError,
    fraud::FraudSettings,
    metrics::{ApiMetrics, VerifyOutcome},
    queue::JobQueue,
    store::{
        BlockRule, Finished, FraudSignal, IdempotencyClaim, IssueOutcome, KeyBudget, LimitKind,
        RateLimit, Requester, Stores, VerifyLookup,
    },
};

/// The service as deployed: Redis and RabbitMQ, or memory in the one-process mode.
pub type AppService = OtpService;

/// Code policy the service applies.
#[derive(Debug, Clone)]
pub struct CodePolicy {
    pub length: usize,
    pub validity: Duration,
    /// The SMS templates by language, and how a request's is chosen.
    pub templates: Arc<crate::templates::Templates>,
    /// Empty means every country is allowed.
    pub allowed_countries: Vec<CountryCode>,
    pub resend_cooldown_seconds: u32,
    /// API_KEY_MAX_SENDS_PER_HOUR.
    pub key_budgets: KeyBudgets,
}

/// What a successful code request returns (and what an Idempotency-Key replays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub verification_id: Uuid,
    pub expires_in_seconds: u64,
    pub resend_after_seconds: u64,
    /// The language the SMS was written in (records stored before locales read as `en`).
    #[serde(default = "default_locale")]
    pub locale: String,
}

fn default_locale() -> String {
    "en".into()
}

/// `rate` is `None` for a replayed response (no limit was consulted) or when every limit is off.
#[derive(Debug, Clone)]
pub struct Issued {
    pub accepted: Accepted,
    pub rate: Option<RateLimit>,
}

pub struct OtpService {
    stores: Stores,
    queue: Arc<dyn JobQueue>,
    /// Verification events (`otp.events`, or the console).
    events: Arc<dyn crate::events::Events>,
    hasher: CodeHasher,
    job_key: JobKey,
    policy: CodePolicy,
    metrics: Arc<ApiMetrics>,
    fraud: FraudSettings,
    /// Set at SIGTERM: /readyz says not ready while requests are still served.
    draining: std::sync::atomic::AtomicBool,
}

impl OtpService {
    // Each argument is one collaborator the service keeps; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stores: Stores,
        queue: Arc<dyn JobQueue>,
        events: Arc<dyn crate::events::Events>,
        hasher: CodeHasher,
        job_key: JobKey,
        policy: CodePolicy,
        metrics: Arc<ApiMetrics>,
        fraud: FraudSettings,
    ) -> Self {
        Self {
            stores,
            queue,
            events,
            hasher,
            job_key,
            policy,
            metrics,
            fraud,
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on /readyz answers 503 (`draining`); requests are still served.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Parses a destination and applies ALLOWED_COUNTRIES.
    pub fn destination(&self, raw: &str) -> Result<PhoneNumber, ApiError> {
        let phone = parse_number(raw)?;
        let allowed = &self.policy.allowed_countries;
        if !allowed.is_empty() && !phone.country().is_some_and(|c| allowed.contains(&c)) {
            return Err(ApiError::CountryNotAllowed);
        }
        Ok(phone)
    }

    /// Issues a code and queues its SMS. With an Idempotency-Key, a retry of the same request
    /// replays the first response instead of sending another SMS.
    ///
    /// `client` is the end user's per-IP bucket ([`crate::client_ip::limit_key`]), and `caller`
    /// who called (a caller key, or the public). With an Idempotency-Key, the per-IP limit is
    /// applied before the key is looked at, so probing keys costs like any request; a replay
    /// spends nothing else (no cooldown, no send, no budget).
    #[tracing::instrument(skip_all, fields(phone = %phone.masked(), verification_id))]
    pub async fn request(
        &self,
        phone: &PhoneNumber,
        client: &str,
        caller: &Caller,
        idempotency_key: Option<&str>,
        request_id: &str,
        locale: Option<&str>,
    ) -> Result<Issued, ApiError> {
        let Some(key) = idempotency_key else {
            return self
                .issue(phone, client, true, caller, request_id, locale)
                .await;
        };
        if let Some(rate) = self.stores.codes.hit_request_ip(client).await? {
            return Err(self.limited(LimitKind::RequestsPerIp, rate));
        }
        // Scoped to the caller (its key, or for the public its network): the same key from
        // another caller is another key, so knowing someone's key neither reveals their
        // verification nor blocks their retry.
        let scope = match caller {
            Caller::Key(id) => format!("key:{id}"),
            Caller::Public => format!("net:{client}"),
        };
        let key_digest = sha256_hex(format!("{scope}\n{key}").as_bytes());
        let body_digest = sha256_hex(phone.as_e164().as_bytes());
        match self
            .stores
            .idempotency
            .claim_idempotency(&key_digest, &body_digest)
            .await?
        {
            IdempotencyClaim::Claimed => {}
            IdempotencyClaim::InProgress => return Err(ApiError::IdempotencyInProgress),
            IdempotencyClaim::Conflict => return Err(ApiError::IdempotencyKeyReused),
            IdempotencyClaim::Replay(json) => {
                let accepted = serde_json::from_str(&json)
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored response: {e}")))?;
                tracing::info!("replaying the response stored for this Idempotency-Key");
                return Ok(Issued {
                    accepted,
                    rate: None,
                });
            }
        }
        let result = self
            .issue(phone, client, false, caller, request_id, locale)
            .await;
        let stored = match &result {
            Ok(issued) => {
                // Serialising a struct of ids and numbers cannot fail.
                let json = serde_json::to_string(&issued.accepted).expect("Accepted serialises");
                self.stores
                    .idempotency
                    .complete_idempotency(&key_digest, &body_digest, &json)
                    .await
            }
            Err(_) => {
                self.stores
                    .idempotency
                    .release_idempotency(&key_digest)
                    .await
            }
        };
        if let Err(e) = stored {
            // The request itself is done; only a future replay is affected.
            tracing::warn!(error = %e, "could not update the Idempotency-Key record");
        }
        result
    }

    /// Logs and counts what the fraud guard saw; `enforced` when the request was refused. The
    /// lines never name the prefix (it shows more of the number than the masked number does):
    /// operators read it from `otp-api fraud list`.
    fn fraud_signal(&self, phone: &PhoneNumber, signal: FraudSignal, enforced: bool) {
        let country = self.fraud.destination(phone).country;
        let country = country.as_str();
        let new_block = |rule: BlockRule| {
            self.metrics.fraud_block(country);
            tracing::warn!(
                event = "fraud_block",
                rule = rule.name(),
                country,
                enforced,
                "fraud guard blocked the destination's prefix"
            );
        };
        match signal {
            FraudSignal::Clear => {}
            FraudSignal::Unavailable => {
                tracing::warn!(
                    "fraud guard state unavailable; the request was not blocked on its account"
                );
            }
            FraudSignal::Manual => {
                self.metrics.fraud_blocked_request(country);
                tracing::info!(country, "request to a prefix an operator blocked");
            }
            FraudSignal::Trickle { new } => {
                if let Some(rule) = new {
                    new_block(rule);
                }
                tracing::info!(
                    country,
                    "request to a blocked destination prefix let through (hourly allowance)"
                );
            }
            FraudSignal::Blocked | FraudSignal::NewBlock(_) => {
                self.metrics.fraud_blocked_request(country);
                if let FraudSignal::NewBlock(rule) = signal {
                    new_block(rule);
                }
                tracing::info!(country, enforced, "request to a blocked destination prefix");
            }
        }
    }

    /// Logs and counts a refusal by `limit`, and makes it the 429.
    fn limited(&self, limit: LimitKind, rate: RateLimit) -> ApiError {
        self.metrics.rate_limited(limit);
        tracing::info!(
            limit = limit.name(),
            retry_after = rate.reset_seconds,
            "rate limited"
        );
        ApiError::RateLimited(rate)
    }

    /// `count_ip` is false when the client's per-IP limit was applied already.
    async fn issue(
        &self,
        phone: &PhoneNumber,
        client: &str,
        count_ip: bool,
        caller: &Caller,
        request_id: &str,
        locale: Option<&str>,
    ) -> Result<Issued, ApiError> {
        let per_hour = self.policy.key_budgets.limit_for(caller);
        let budget = (per_hour > 0).then(|| KeyBudget {
            key: caller.id(),
            per_hour,
        });
        let requester = Requester {
            client,
            count_ip,
            budget,
        };
        let verification_id = otp_shared::ids::random_uuid();
        tracing::Span::current()
            .record("verification_id", tracing::field::display(verification_id));
        let code = OtpCode::generate(self.policy.length);
        let digest = self.hasher.digest(phone, verification_id, &code);
        let rate = match self
            .stores
            .codes
            .issue(phone, requester, verification_id, &digest)
            .await?
        {
            IssueOutcome::Issued(rate, signal) => {
                self.fraud_signal(phone, signal, false);
                rate
            }
            IssueOutcome::Limited(kind, rate) => return Err(self.limited(kind, rate)),
            IssueOutcome::Blocked(signal) => {
                self.fraud_signal(phone, signal, true);
                let caller_id = caller.is_keyed().then(|| caller.id());
                self.emit(EventType::Blocked, verification_id, Some(phone), caller_id);
                return Err(ApiError::DestinationBlocked);
            }
        };
        let now = OffsetDateTime::now_utc();
        let (locale, template) = self.policy.templates.choose(locale, phone.country());
        let job = SendJob::seal(
            &self.job_key,
            verification_id,
            phone,
            code.expose(),
            template,
            now,
            now + self.policy.validity,
        );
        drop(code);
        let started = Instant::now();
        let published = self.queue.publish(&job, request_id).await;
        self.metrics
            .publish(started.elapsed(), published.as_ref().map(|_| ()));
        if let Err(e) = published {
            let revoked = self.stores.codes.revoke(phone, budget, verification_id);
            if let Err(revoke) = revoked.await {
                tracing::error!(error = %revoke, "could not remove the code of an unpublished job");
            }
            return Err(ApiError::Unavailable(
                anyhow::Error::new(e).context("publishing the send job"),
            ));
        }
        self.metrics.code_issued(caller);
        tracing::info!(job_id = %job.job_id, "code issued and send job queued");
        let caller_id = caller.is_keyed().then(|| caller.id());
        self.emit(
            EventType::Requested,
            verification_id,
            Some(phone),
            caller_id,
        );
        Ok(Issued {
            accepted: Accepted {
                verification_id,
                expires_in_seconds: self.policy.validity.as_secs(),
                resend_after_seconds: self.policy.resend_cooldown_seconds.into(),
                locale: locale.to_owned(),
            },
            rate: rate.enabled(),
        })
    }

    /// Checks a code once. Every way of failing gives the same `InvalidOtp`, after the same two
    /// store round trips and one HMAC, so neither answer nor timing says why. With
    /// `verification_id`, the code must be the one issued for that request (ASVS 2.7.3); a
    /// mismatch counts as a wrong guess.
    #[tracing::instrument(skip_all, fields(phone = %phone.masked()))]
    pub async fn verify(
        &self,
        phone: &PhoneNumber,
        otp: &str,
        verification_id: Option<Uuid>,
        client: &str,
    ) -> Result<(Option<RateLimit>, Uuid), ApiError> {
        let Some(candidate) = CandidateCode::parse(otp, self.policy.length) else {
            self.metrics.verification(VerifyOutcome::Invalid);
            return Err(ApiError::InvalidOtp);
        };
        let (rate, record) = match self.stores.codes.begin_verify(phone, client).await? {
            VerifyLookup::Limited(kind, rate) => {
                self.metrics.verification(VerifyOutcome::RateLimited);
                return Err(self.limited(kind, rate));
            }
            VerifyLookup::Found { rate, record } => (rate, record),
        };
        let (vid, digest) = match &record {
            Some((vid, digest)) => (Some(*vid), digest.as_str()),
            None => (None, ""),
        };
        let bound = verification_id.is_none_or(|wanted| Some(wanted) == vid);
        let matched = self
            .hasher
            .matches(phone, vid.unwrap_or(Uuid::nil()), &candidate, digest)
            & bound;
        let finished = self.stores.codes.finish_verify(phone, vid, matched).await?;
        if finished == Finished::Exhausted
            && let Some(vid) = vid
        {
            self.emit(EventType::AttemptsExhausted, vid, Some(phone), None);
        }
        if finished.consumed()
            && let Some(vid) = vid
        {
            self.metrics.verification(VerifyOutcome::Success);
            tracing::info!("code verified");
            self.emit(EventType::Verified, vid, Some(phone), None);
            Ok((rate.enabled(), vid))
        } else {
            self.metrics.verification(VerifyOutcome::Invalid);
            tracing::info!("code rejected");
            Err(ApiError::InvalidOtp)
        }
    }

    /// Voids a verification's live code. A used, expired, canceled or unknown verification
    /// gives the same `NotFound`, so the answer reveals nothing about it.
    pub async fn cancel(&self, verification_id: Uuid) -> Result<(), ApiError> {
        if !self.stores.codes.cancel(verification_id).await? {
            return Err(ApiError::NotFound(
                "No live code for this verification id.".into(),
            ));
        }
        tracing::info!(%verification_id, "verification canceled");
        self.emit(EventType::Canceled, verification_id, None, None);
        Ok(())
    }

    /// Publishes a verification event in the background (never the request's failure).
    fn emit(
        &self,
        kind: EventType,
        verification_id: Uuid,
        phone: Option<&PhoneNumber>,
        caller_key_id: Option<&str>,
    ) {
        let mut event = Event::new(kind, verification_id, phone);
        event.caller_key_id = caller_key_id.map(str::to_owned);
        self.events.emit(event);
    }

    pub async fn status(&self, verification_id: Uuid) -> Result<DeliveryStatus, ApiError> {
        self.stores
            .reports
            .delivery_status(verification_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("Unknown verification id.".into()))
    }

    /// Names of the dependencies that are down; empty when ready.
    pub async fn unavailable_dependencies(&self) -> Vec<&'static str> {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return vec!["this instance (draining before a stop)"];
        }
        otp_shared::supervise::unavailable(
            self.stores.codes.ping().await.is_ok(),
            self.queue.is_connected(),
        )
    }
}

/// Parses a number as typed by a client. Verify uses this alone: country policy only matters
/// when issuing, and a barred number simply never has a code.
pub fn parse_number(raw: &str) -> Result<PhoneNumber, ApiError> {
    PhoneNumber::parse(raw)
        .map_err(|e| ApiError::InvalidPhoneNumber(format!("Invalid phone number: {e}.")))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
