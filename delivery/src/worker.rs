//! Handles one delivery from the queue, start to finish: decode, claim, send with retries,
//! record, then ack or dead-letter.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use otp_shared::{
    amqp::{REQUEST_ID_HEADER, RESEND_HEADER},
    crypto::JobKey,
    events::{Event, EventType, Events, NoEvents},
    job::{JobContent, SendJob},
    ledger::JobOutcome,
    memory::DeliveryRecords,
    phone::mask_e164,
    status::{DeliveryState, FIELD_ATTEMPTS, FIELD_PROVIDER, FIELD_PROVIDER_ID, FIELD_REASON},
    telemetry::adopt_remote_context,
};

use crate::{
    breaker::{Breaker, BreakerSettings, MemoryBreakerStore, SystemClock},
    ledger::{Claim, Entry, Ledger, MemoryLedger, SendLedger, SentRecord, keep_alive},
    limiter::{MemoryRateLimiter, RateLimiter, SendRate},
    metrics::{DeliveryMetrics, InFlight, JobResult},
    outcome::{Attempt, DeadReason, Final, Settle},
    records::{JobRecords, LiveCode, MemoryJobRecords, RedisJobRecords},
    retry::{RetryPolicy, run_attempts},
    router::{JobRoute, Provider, Router},
    sender::SmsSender,
    settings::DeliveryArgs,
};

/// How long a provider message id stays mapped to its verification after the code expires.
const REPORT_MARGIN_SECONDS: u64 = 3600;
/// How long to wait before asking Redis again when it is unreachable.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// The shortest wait before claiming again a job another dispatcher holds.
const BUSY_RECHECK_MIN: Duration = Duration::from_millis(50);
/// Recording an outcome is retried after 1, 2, 3 and 4 times this.
const RECORD_RETRY_STEP: Duration = Duration::from_millis(200);

/// A send slot reserved ahead of an attempt: when, and what the limiter answered.
type Reserved = (
    Instant,
    Result<Option<Duration>, otp_shared::backend::Unavailable>,
);

/// An attempt's send slot: one must be free before `deadline` (the code's expiry).
struct Slot {
    deadline: Instant,
    /// Reserved with the job's claim; otherwise reserved by the attempt.
    reserved: Option<Reserved>,
}

/// How a job was handled, for recording its outcome.
struct Sent {
    ledger_id: Entry,
    owner: Uuid,
    provider: &'static str,
    /// A resend after an undelivered report.
    resend: bool,
}

/// A send job as it arrives, whatever brought it (the AMQP adapter: `consumer`).
pub struct Incoming<'a> {
    pub body: &'a [u8],
    /// Delivered before, to this or another dispatcher.
    pub redelivered: bool,
    /// The message's header by name (request id, resend, trace context).
    pub header: &'a (dyn Fn(&str) -> Option<String> + Sync),
}

pub struct Worker {
    pub ledger: Arc<dyn SendLedger>,
    pub limiter: Arc<dyn SendRate>,
    pub router: Router,
    pub policy: RetryPolicy,
    pub job_key: JobKey,
    /// The delivery record and the code's liveness.
    pub records: Arc<dyn JobRecords>,
    pub metrics: Arc<DeliveryMetrics>,
    /// RESEND_ON_UNDELIVERED: keep sent jobs' envelopes for one resend.
    pub resend_on_undelivered: bool,
    /// Verification events: `sent` and `failed` (see [`Worker::with_events`]).
    pub events: Arc<dyn Events>,
}

/// How long an in-memory ledger claim holds without renewal.
const MEMORY_LEASE: Duration = Duration::from_secs(30);

impl Worker {
    /// A worker on Redis (ledger, rate, breakers and delivery records, all shared by every
    /// dispatcher), sending through `senders` in order.
    pub fn on_redis(
        redis: &otp_shared::redis_conn::RedisConn,
        keys: otp_shared::keys::Keys,
        senders: Vec<Arc<dyn SmsSender>>,
        settings: &DeliveryArgs,
        job_key: JobKey,
        resend_on_undelivered: bool,
        metrics: Arc<DeliveryMetrics>,
    ) -> anyhow::Result<Self> {
        let breaker = settings.breaker.settings();
        let providers = senders
            .into_iter()
            .map(|sender| {
                let breaker = Breaker::new(
                    redis.clone(),
                    &keys,
                    sender.name(),
                    breaker.clone(),
                    Arc::new(SystemClock),
                    metrics.breaker(sender.name()),
                );
                Provider { sender, breaker }
            })
            .collect();
        Ok(Self {
            ledger: Arc::new(Ledger::new(
                redis.clone(),
                keys.clone(),
                settings.retry.lease(),
            )),
            limiter: Arc::new(RateLimiter::new(
                redis.clone(),
                &keys,
                settings.rate.max_rps(),
            )),
            router: Router::new(
                providers,
                settings.retry.failover_after_retries,
                metrics.clone(),
            ),
            policy: settings.retry.policy()?,
            job_key,
            records: Arc::new(RedisJobRecords {
                conn: redis.clone(),
                keys,
            }),
            metrics,
            resend_on_undelivered,
            events: Arc::new(NoEvents),
        })
    }

    /// A worker with every backend in this process (ledger, rate, breakers, records), sending
    /// through `senders` in order: the one-process mode's dispatcher. `live` answers whether a
    /// code is still live (the code store is the API's). The retry policy and breakers have
    /// the settings' defaults.
    pub fn in_memory(
        senders: Vec<Arc<dyn SmsSender>>,
        job_key: JobKey,
        records: DeliveryRecords,
        live: LiveCode,
        sends_per_second: u32,
        metrics: Arc<DeliveryMetrics>,
    ) -> Self {
        let providers = senders
            .into_iter()
            .map(|sender| {
                let breaker = Breaker::with_store(
                    Arc::new(MemoryBreakerStore::default()),
                    sender.name(),
                    BreakerSettings::default(),
                    Arc::new(SystemClock),
                    metrics.breaker(sender.name()),
                );
                Provider { sender, breaker }
            })
            .collect();
        Self {
            ledger: Arc::new(MemoryLedger::new(records.clone(), MEMORY_LEASE)),
            limiter: Arc::new(MemoryRateLimiter::new(sends_per_second)),
            router: Router::new(providers, 2, metrics.clone()),
            policy: RetryPolicy::default(),
            job_key,
            records: Arc::new(MemoryJobRecords { records, live }),
            metrics,
            resend_on_undelivered: false,
            events: Arc::new(NoEvents),
        }
    }

    /// Works on one send job, whatever brought it, and says what to do with its message.
    /// `abort` fires when the shutdown grace period is over: the job is then left for the broker
    /// to redeliver to another dispatcher ([`Settle::Leave`]).
    pub async fn handle(&self, incoming: Incoming<'_>, abort: CancellationToken) -> Settle {
        let _in_flight = InFlight::start(&self.metrics.jobs_in_flight);
        let request_id = (incoming.header)(REQUEST_ID_HEADER).unwrap_or_default();
        let (job, content) = match SendJob::decode(incoming.body, &self.job_key) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(%request_id, error = %e, "unreadable send job; dead-lettering it");
                self.metrics.job(JobResult::Failed);
                self.metrics.dead_lettered(DeadReason::Unreadable);
                return Settle::DeadLetter {
                    reason: e.to_string(),
                    attempts: 0,
                };
            }
        };
        let span = tracing::info_span!(
            "send_job",
            job_id = %job.job_id,
            verification_id = %job.verification_id,
            %request_id,
            phone = %mask_e164(&content.destination),
            redelivered = incoming.redelivered,
        );
        adopt_remote_context(&span, incoming.header);
        let resend = (incoming.header)(RESEND_HEADER);
        self.process(&job, &content, resend, abort)
            .instrument(span)
            .await
    }

    async fn process(
        &self,
        job: &SendJob,
        content: &JobContent,
        resend: Option<String>,
        abort: CancellationToken,
    ) -> Settle {
        let deadline = deadline_of(job);
        let owner = otp_shared::ids::random_uuid();
        // A resend after an undelivered report has its own ledger entry, derived from the job's,
        // so it too is sent at most once however often it is delivered.
        let ledger_id = Entry {
            verification_id: job.verification_id,
            job_id: match resend {
                Some(_) => Uuid::new_v5(&job.job_id, b"resend"),
                None => job.job_id,
            },
        };
        let mut withdrawn = false;
        // A first send also learns, in the same round trip, whether the API withdrew it.
        let claim = || async {
            match resend {
                Some(_) => self.ledger.claim(ledger_id, owner).await,
                None => self.ledger.claim_send(ledger_id, owner).await,
            }
        };
        // The first claim goes out together with the first attempt's reservation of a send
        // slot (one round trip for both); a job that turns out not to be ours wastes that slot.
        let max_wait = deadline.saturating_duration_since(Instant::now());
        let reserve = async { (Instant::now(), self.limiter.reserve(max_wait).await) };
        let (mut claimed, reserved) = tokio::join!(claim(), reserve);
        let mut slot = Some(reserved);
        loop {
            let wait = match claimed {
                Ok(Claim::Claimed) => break,
                Ok(Claim::Withdrawn) => {
                    withdrawn = true;
                    break;
                }
                Ok(Claim::Done(outcome)) => {
                    tracing::info!(%outcome, "job already handled; acknowledging the duplicate");
                    self.metrics.job(JobResult::Duplicate);
                    return Settle::Ack;
                }
                // Another dispatcher is sending this job (a duplicate delivery): wait for it
                // to finish, or for its lease to lapse if it died.
                Ok(Claim::Busy(left)) => left.max(BUSY_RECHECK_MIN),
                Err(e) => {
                    tracing::warn!(error = %e, "Redis unavailable; cannot claim the job yet");
                    REDIS_RETRY
                }
            };
            tokio::select! {
                _ = abort.cancelled() => return Settle::Leave,
                _ = tokio::time::sleep(wait) => {}
            }
            // A reservation made before waiting is stale now.
            slot = None;
            claimed = claim().await;
        }

        // The API writes a delivery record before publishing and deletes it when the publish was
        // not confirmed (it answered 503 and removed the code): such a job would deliver a dead
        // code. A resend is wanted only while its code is still the number's live one.
        let live = match resend {
            Some(_) => self.code_is_live(job, content).await,
            None => !withdrawn,
        };
        if !live {
            tracing::info!(
                resend = resend.is_some(),
                "the verification was withdrawn, or its code used or replaced; not sending"
            );
            if let Err(e) = self
                .ledger
                .finish(ledger_id, owner, &JobOutcome::Withdrawn)
                .await
            {
                tracing::warn!(error = %e, "could not record the withdrawn job");
            }
            self.metrics.job(JobResult::Withdrawn);
            return Settle::Ack;
        }

        let keep_alive = keep_alive(self.ledger.clone(), ledger_id, owner);
        let route = self.router.route_avoiding(resend.as_deref());
        // A first send's claim marked its record `sending` for attempt 1.
        let marked = resend.is_none();
        let attempts = run_attempts(&self.policy, deadline, |n| {
            let slot = Slot {
                deadline,
                reserved: slot.take(),
            };
            self.attempt(job, content, n, marked, &route, slot)
        });
        let outcome = tokio::select! {
            outcome = attempts => outcome,
            _ = abort.cancelled() => {
                drop(keep_alive);
                let _ = self.ledger.release(ledger_id, owner).await;
                tracing::warn!("shutdown grace period over mid-job; leaving it for redelivery");
                return Settle::Leave;
            }
        };
        drop(keep_alive);
        let provider = route.last_provider().unwrap_or("none");
        let sent = Sent {
            ledger_id,
            owner,
            provider,
            resend: resend.is_some(),
        };
        self.record(job, &sent, &outcome).await;
        self.count(job, provider, &outcome);
        outcome.settle()
    }

    /// Where this worker's `sent` and `failed` events go (by default nowhere).
    pub fn with_events(mut self, events: Arc<dyn Events>) -> Self {
        self.events = events;
        self
    }

    fn count(&self, job: &SendJob, provider: &str, outcome: &Final) {
        let event = match outcome {
            Final::Sent { .. } => Some((EventType::Sent, None)),
            Final::Failed { cause, .. } => Some((EventType::Failed, Some(cause.as_str()))),
            Final::Expired { .. } => None,
        };
        if let Some((kind, reason)) = event {
            let mut event = Event::new(kind, job.verification_id, None);
            event.provider = Some(provider.to_owned()).filter(|p| !p.is_empty());
            event.reason = reason.map(str::to_owned);
            self.events.emit(event);
        }
        let result = match outcome {
            Final::Sent { .. } => {
                let waited = OffsetDateTime::now_utc() - job.created_at;
                self.metrics
                    .time_to_accept
                    .observe(waited.as_seconds_f64().max(0.0));
                self.metrics.sent_by(provider);
                JobResult::Sent
            }
            Final::Failed { cause, .. } => {
                self.metrics.dead_lettered(*cause);
                JobResult::Failed
            }
            Final::Expired { .. } => JobResult::Expired,
        };
        self.metrics.job(result);
    }

    async fn attempt(
        &self,
        job: &SendJob,
        content: &JobContent,
        n: u32,
        marked: bool,
        route: &JobRoute,
        slot: Slot,
    ) -> Attempt {
        if n > 1 {
            self.metrics.send_retries.inc();
        }
        if n > 1 || !marked {
            self.set_state(job, DeliveryState::Sending, n, &[]).await;
        }
        let waited = Instant::now();
        let Slot { deadline, reserved } = slot;
        let slot = match reserved {
            // Reserved with the claim: the wait counts from then.
            Some((at, Ok(Some(wait)))) => {
                if !wait.is_zero() {
                    tokio::time::sleep_until(at + wait).await;
                }
                Ok(true)
            }
            Some((_, reserved)) => reserved.map(|_| false),
            None => self.limiter.acquire(deadline).await,
        };
        self.metrics
            .rate_wait
            .observe(waited.elapsed().as_secs_f64());
        match slot {
            Ok(true) => {}
            Ok(false) => {
                return Attempt::Retry {
                    reason: "no send slot under SMS_MAX_RPS before the code expires".into(),
                    after: Some(deadline.saturating_duration_since(Instant::now())),
                };
            }
            Err(e) => {
                return Attempt::Retry {
                    reason: format!("rate limiter unavailable: {e}"),
                    after: None,
                };
            }
        }
        self.router
            .attempt(route, &content.destination, &content.message_text())
            .await
    }

    /// Writes the outcome to the ledger first (that is what prevents a second send), then the
    /// delivery state shown to clients.
    async fn record(&self, job: &SendJob, how: &Sent, outcome: &Final) {
        let provider = how.provider;
        let (ledger_value, state, extra): (JobOutcome, DeliveryState, Vec<(&str, String)>) =
            match outcome {
                Final::Sent { provider_id, .. } => {
                    let id = provider_id.clone().unwrap_or_default();
                    tracing::info!(provider, provider_id = %id, attempts = outcome.attempts(), "SMS accepted by the provider");
                    (
                        JobOutcome::Sent {
                            provider: provider.to_owned(),
                            message_id: id.clone(),
                        },
                        DeliveryState::Sent,
                        vec![
                            (FIELD_PROVIDER_ID, id),
                            (FIELD_PROVIDER, provider.to_owned()),
                        ],
                    )
                }
                Final::Failed { reason, .. } => {
                    tracing::error!(%reason, attempts = outcome.attempts(), "SMS failed permanently");
                    (
                        JobOutcome::Failed {
                            reason: reason.clone(),
                        },
                        DeliveryState::Failed,
                        vec![(FIELD_REASON, reason.clone())],
                    )
                }
                Final::Expired { .. } => {
                    tracing::warn!(
                        attempts = outcome.attempts(),
                        "code expired before the SMS could be sent"
                    );
                    (JobOutcome::Expired, DeliveryState::Expired, vec![])
                }
            };
        let sent_record = match outcome {
            Final::Sent {
                provider_id: Some(id),
                ..
            } => Some(self.sent_record(job, how, id, outcome.attempts())),
            _ => None,
        };
        // A lost outcome could mean a second SMS on redelivery: try hard, but not forever.
        for attempt in 1..=5 {
            let written = match &sent_record {
                Some(sent) => {
                    self.ledger
                        .finish_sent(how.ledger_id, how.owner, &ledger_value, sent)
                        .await
                }
                None => {
                    self.ledger
                        .finish(how.ledger_id, how.owner, &ledger_value)
                        .await
                }
            };
            match written {
                Ok(()) => break,
                Err(e) if attempt == 5 => {
                    tracing::error!(error = %e, "could not record the job outcome; a redelivery may resend");
                }
                Err(_) => tokio::time::sleep(RECORD_RETRY_STEP * attempt).await,
            }
        }
        let mut extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match outcome {
            // A first send's record moved to `sent` with the ledger outcome.
            Final::Sent {
                provider_id: Some(_),
                ..
            } if !how.resend => {}
            // A resend moves the record back from `undelivered` on purpose.
            Final::Sent {
                provider_id: Some(_),
                ..
            } => {
                extra.push(("resent", "1"));
                self.set_state(job, state, outcome.attempts(), &extra).await;
            }
            _ => self.set_state(job, state, outcome.attempts(), &extra).await,
        }
    }

    /// What an accepted send leaves besides its outcome: the message id mapping (reports can
    /// trail the code's expiry, so it lasts an hour longer), and for a first send the sealed job
    /// and the delivery record's move to `sent` (forward only: a fast delivery report may
    /// already have said `delivered`).
    fn sent_record(
        &self,
        job: &SendJob,
        how: &Sent,
        provider_id: &str,
        attempts: u32,
    ) -> SentRecord {
        let left = (job.expires_at - OffsetDateTime::now_utc())
            .whole_seconds()
            .max(0) as u64;
        let first = !how.resend;
        SentRecord {
            provider: how.provider,
            provider_message_id: provider_id.to_owned(),
            mapping_ttl_seconds: left + REPORT_MARGIN_SECONDS,
            sealed: (self.resend_on_undelivered && first).then(|| job.to_bytes()),
            sealed_ttl_seconds: left,
            status: first.then(|| {
                vec![
                    (FIELD_ATTEMPTS, attempts.to_string()),
                    (FIELD_PROVIDER_ID, provider_id.to_owned()),
                    (FIELD_PROVIDER, how.provider.to_owned()),
                ]
            }),
        }
    }

    /// Whether the job's code is still the number's live code (not used, replaced or expired):
    /// the condition of a resend. Unknown (the store unreachable) counts as not live.
    async fn code_is_live(&self, job: &SendJob, content: &JobContent) -> bool {
        let live = self
            .records
            .code_is_live(&content.destination, job.verification_id)
            .await;
        live.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not tell whether the code is live; not resending");
            false
        })
    }

    async fn set_state(
        &self,
        job: &SendJob,
        state: DeliveryState,
        attempts: u32,
        extra: &[(&str, &str)],
    ) {
        let recorded = self
            .records
            .record(job.verification_id, state, attempts, extra)
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, %state, "could not record the delivery state");
        }
    }
}

/// The job's expiry as a monotonic instant (so retry timing works with tokio's clock).
fn deadline_of(job: &SendJob) -> Instant {
    let left = job.expires_at - OffsetDateTime::now_utc();
    Instant::now() + Duration::try_from(left).unwrap_or(Duration::ZERO)
}
