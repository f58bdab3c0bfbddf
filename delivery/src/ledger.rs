//! The idempotency ledger in Redis: who is sending a job right now (a short lease, kept alive
//! while the job is worked on) and how each job ended (kept longer than any job lives).

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use otp_shared::redis_conn::RedisConn;
use redis::Script;
use uuid::Uuid;

use otp_shared::{
    backend::Unavailable,
    keys::Keys,
    ledger::JobOutcome,
    memory::DeliveryRecords,
    status::{self, DeliveryState},
};

static CLAIM: LazyLock<Script> =
    LazyLock::new(|| status::lua_with_record(include_str!("claim.lua")));
static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("finish.lua")));
static FINISH_SENT: LazyLock<Script> =
    LazyLock::new(|| status::lua_with_record(include_str!("finish_sent.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));

/// Outcomes are kept a day: far longer than a job can live (codes last at most 10 minutes).
const OUTCOME_TTL_SECONDS: u64 = 24 * 60 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker holds the lease.
    Claimed,
    /// This worker holds the lease, but the verification's delivery record is gone: the API
    /// withdrew it (see `claim_send`).
    Withdrawn,
    /// The job already ended.
    Done(JobOutcome),
    /// Another worker holds the lease for this much longer.
    Busy(Duration),
}

/// `claim.lua`'s reply: `{state, value}`. Never a guess: a reply read as "busy" would stall the
/// job, as "claimed" send it twice, so anything else is an error.
impl redis::FromRedisValue for Claim {
    fn from_redis_value(reply: redis::Value) -> Result<Self, redis::ParsingError> {
        let (state, value): (String, String) = redis::FromRedisValue::from_redis_value(reply)?;
        let claim = match (state.as_str(), value.as_str()) {
            ("done", outcome) => JobOutcome::parse(outcome).map(Claim::Done),
            ("claimed", "withdrawn") => Ok(Claim::Withdrawn),
            ("claimed", "") => Ok(Claim::Claimed),
            ("busy", ms) => ms
                .parse()
                .map(|ms| Claim::Busy(Duration::from_millis(ms)))
                .map_err(|_| format!("lease time '{ms}'")),
            _ => Err(format!("reply ({state}, {value})")),
        };
        claim.map_err(|detail| format!("unexpected reply from the ledger's claim: {detail}").into())
    }
}

/// One ledger entry: a send job, under its verification's hash tag (see `otp_shared::keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    pub verification_id: Uuid,
    pub job_id: Uuid,
}

/// What an accepted send leaves besides its outcome.
pub struct SentRecord {
    /// The provider that accepted the SMS, and its message id: mapped to the verification for
    /// `mapping_ttl_seconds`, so delivery reports find it.
    pub provider: &'static str,
    pub provider_message_id: String,
    pub mapping_ttl_seconds: u64,
    /// The job's envelope, kept for one resend after an undelivered report.
    pub sealed: Option<Vec<u8>>,
    pub sealed_ttl_seconds: u64,
    /// Fields of the delivery record, moved forward to `sent` with the outcome; `None` leaves
    /// the record alone (a resend sets its own).
    pub status: Option<Vec<(&'static str, String)>>,
}

/// Who is sending a job right now, and how each job ended: what keeps a job from being sent
/// twice, however many dispatchers get it. [`Ledger`] keeps it in Redis, [`MemoryLedger`] in
/// this process.
pub trait SendLedger: Send + Sync {
    /// How long a claim holds without renewal.
    fn lease(&self) -> Duration;

    /// Claims `job` for `owner`, or renews the lease if `owner` already holds it.
    fn claim(&self, job: Entry, owner: Uuid) -> BoxFuture<'_, Result<Claim, Unavailable>>;

    /// [`Self::claim`], also checking that the verification's delivery record still exists
    /// ([`Claim::Withdrawn`] when not), and marking it `sending` (attempt 1) when claimed.
    fn claim_send(&self, job: Entry, owner: Uuid) -> BoxFuture<'_, Result<Claim, Unavailable>>;

    /// Records how the job ended and frees `owner`'s lease.
    fn finish<'a>(
        &'a self,
        job: Entry,
        owner: Uuid,
        outcome: &'a JobOutcome,
    ) -> BoxFuture<'a, Result<(), Unavailable>>;

    /// [`Self::finish`] for an accepted send, with what it leaves beside (see [`SentRecord`]).
    fn finish_sent<'a>(
        &'a self,
        job: Entry,
        owner: Uuid,
        outcome: &'a JobOutcome,
        sent: &'a SentRecord,
    ) -> BoxFuture<'a, Result<(), Unavailable>>;

    /// Frees `owner`'s lease without an outcome (the job goes back to the queue).
    fn release(&self, job: Entry, owner: Uuid) -> BoxFuture<'_, Result<(), Unavailable>>;
}

/// Renews `owner`'s lease every third of its length until dropped, so a long retry sequence
/// keeps it, while a crashed worker's lease lapses quickly.
pub fn keep_alive(ledger: Arc<dyn SendLedger>, job: Entry, owner: Uuid) -> KeepAlive {
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(ledger.lease() / 3).await;
            match ledger.claim(job, owner).await {
                Ok(Claim::Claimed | Claim::Withdrawn) => {}
                Ok(other) => {
                    tracing::warn!(?other, "lost the lease of a job being sent");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not renew a job lease"),
            }
        }
    });
    KeepAlive(task)
}

/// The ledger in Redis: one script per step, under the verification's hash tag.
#[derive(Clone)]
pub struct Ledger {
    conn: RedisConn,
    keys: Keys,
    lease: Duration,
}

impl Ledger {
    pub fn new(conn: RedisConn, keys: Keys, lease: Duration) -> Self {
        Self { conn, keys, lease }
    }

    async fn claim_with(
        &self,
        job: Entry,
        owner: Uuid,
        check_status: bool,
    ) -> redis::RedisResult<Claim> {
        let mut invocation = CLAIM.key(self.keys.job_outcome(job.verification_id, job.job_id));
        invocation.key(self.keys.job_lease(job.verification_id, job.job_id));
        invocation
            .arg(owner.to_string())
            .arg(self.lease.as_millis() as u64);
        if check_status {
            invocation
                .key(self.keys.status(job.verification_id))
                .arg(DeliveryState::Sending.as_str())
                .arg(time::OffsetDateTime::now_utc().unix_timestamp())
                .arg(status::STATUS_TTL_SECONDS);
        }
        invocation.invoke_async(&mut self.conn.clone()).await
    }

    async fn finish_with(
        &self,
        job: Entry,
        owner: Uuid,
        outcome: &JobOutcome,
    ) -> redis::RedisResult<()> {
        let _: i64 = FINISH
            .key(self.keys.job_outcome(job.verification_id, job.job_id))
            .key(self.keys.job_lease(job.verification_id, job.job_id))
            .arg(owner.to_string())
            .arg(outcome.encode())
            .arg(OUTCOME_TTL_SECONDS)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Records an accepted send: outcome, lease freed, the sealed job kept for a resend and the
    /// delivery record moved to `sent` (one script under the verification's tag), and the
    /// provider's message id mapped to the verification (a key of its own, so a report can find
    /// it by message id alone): in the same script on a single Redis, beside it in a Cluster.
    async fn finish_sent_with(
        &self,
        job: Entry,
        owner: Uuid,
        outcome: &JobOutcome,
        sent: &SentRecord,
    ) -> redis::RedisResult<()> {
        let mapping_key = self
            .keys
            .provider_message(sent.provider, &sent.provider_message_id);
        let mapping_ttl = sent.mapping_ttl_seconds.max(1);
        let vid = job.verification_id.to_string();
        let map_here = matches!(self.conn, RedisConn::Single(_));
        let mut finish = FINISH_SENT.prepare_invoke();
        finish
            .key(self.keys.job_outcome(job.verification_id, job.job_id))
            .key(self.keys.job_lease(job.verification_id, job.job_id))
            .key(self.keys.sealed_job(job.verification_id))
            .arg(owner.to_string())
            .arg(outcome.encode())
            .arg(OUTCOME_TTL_SECONDS)
            .arg(sent.sealed.as_deref().unwrap_or_default())
            .arg(sent.sealed_ttl_seconds.max(1))
            .arg(if map_here { mapping_ttl } else { 0 })
            .arg(&vid);
        if map_here {
            finish.key(&mapping_key);
        }
        if let Some(fields) = &sent.status {
            finish.key(self.keys.status(job.verification_id));
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            status::advance_args(&mut finish, DeliveryState::Sent, &fields);
        }
        if map_here {
            let _: i64 = finish.invoke_async(&mut self.conn.clone()).await?;
            return Ok(());
        }
        let mapping = redis::cmd("SET")
            .arg(&mapping_key)
            .arg(&vid)
            .arg("EX")
            .arg(mapping_ttl)
            .to_owned();
        let (mut a, mut b) = (self.conn.clone(), self.conn.clone());
        let (finished, mapped) = tokio::join!(
            finish.invoke_async::<i64>(&mut a),
            mapping.query_async::<()>(&mut b)
        );
        finished?;
        mapped
    }

    async fn release_with(&self, job: Entry, owner: Uuid) -> redis::RedisResult<()> {
        let _: i64 = RELEASE
            .key(self.keys.job_lease(job.verification_id, job.job_id))
            .arg(owner.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

impl SendLedger for Ledger {
    fn lease(&self) -> Duration {
        self.lease
    }

    fn claim(&self, job: Entry, owner: Uuid) -> BoxFuture<'_, Result<Claim, Unavailable>> {
        Box::pin(async move { Ok(self.claim_with(job, owner, false).await?) })
    }

    fn claim_send(&self, job: Entry, owner: Uuid) -> BoxFuture<'_, Result<Claim, Unavailable>> {
        Box::pin(async move { Ok(self.claim_with(job, owner, true).await?) })
    }

    fn finish<'a>(
        &'a self,
        job: Entry,
        owner: Uuid,
        outcome: &'a JobOutcome,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async move { Ok(self.finish_with(job, owner, outcome).await?) })
    }

    fn finish_sent<'a>(
        &'a self,
        job: Entry,
        owner: Uuid,
        outcome: &'a JobOutcome,
        sent: &'a SentRecord,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async move { Ok(self.finish_sent_with(job, owner, outcome, sent).await?) })
    }

    fn release(&self, job: Entry, owner: Uuid) -> BoxFuture<'_, Result<(), Unavailable>> {
        Box::pin(async move { Ok(self.release_with(job, owner).await?) })
    }
}

/// Stops renewing a lease when dropped.
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The ledger in this process (one dispatcher), on tokio's clock: the rules of the Redis
/// scripts, with the delivery records (and message ids, kept jobs) shared with the in-memory
/// code store.
#[derive(Clone)]
pub struct MemoryLedger {
    lease: Duration,
    records: DeliveryRecords,
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Default)]
struct MemoryState {
    outcomes: HashMap<Entry, (JobOutcome, Instant)>,
    leases: HashMap<Entry, (Uuid, Instant)>,
}

impl MemoryState {
    fn sweep(&mut self, now: Instant) {
        self.outcomes.retain(|_, (_, until)| *until > now);
        self.leases.retain(|_, (_, until)| *until > now);
    }

    fn end(&mut self, job: Entry, owner: Uuid, outcome: &JobOutcome, now: Instant) {
        let kept = now + Duration::from_secs(OUTCOME_TTL_SECONDS);
        self.outcomes.insert(job, (outcome.clone(), kept));
        if self
            .leases
            .get(&job)
            .is_some_and(|(held, _)| *held == owner)
        {
            self.leases.remove(&job);
        }
    }
}

impl MemoryLedger {
    pub fn new(records: DeliveryRecords, lease: Duration) -> Self {
        Self {
            lease,
            records,
            state: Arc::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState, Instant) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        state.sweep(now);
        f(&mut state, now)
    }

    fn claim_now(&self, job: Entry, owner: Uuid, check_status: bool) -> Claim {
        self.with(|state, now| {
            if let Some((outcome, _)) = state.outcomes.get(&job) {
                return Claim::Done(outcome.clone());
            }
            match state.leases.get(&job) {
                Some((held, until)) if *held != owner => return Claim::Busy(*until - now),
                _ => state.leases.insert(job, (owner, now + self.lease)),
            };
            if check_status {
                let record = self.records.load(job.verification_id);
                if record.is_none_or(|r| r.state == DeliveryState::Canceled) {
                    return Claim::Withdrawn;
                }
                self.records
                    .record(job.verification_id, DeliveryState::Sending, 1, &[]);
            }
            Claim::Claimed
        })
    }
}

impl SendLedger for MemoryLedger {
    fn lease(&self) -> Duration {
        self.lease
    }

    fn claim(&self, job: Entry, owner: Uuid) -> BoxFuture<'_, Result<Claim, Unavailable>> {
        Box::pin(async move { Ok(self.claim_now(job, owner, false)) })
    }

    fn claim_send(&self, job: Entry, owner: Uuid) -> BoxFuture<'_, Result<Claim, Unavailable>> {
        Box::pin(async move { Ok(self.claim_now(job, owner, true)) })
    }

    fn finish<'a>(
        &'a self,
        job: Entry,
        owner: Uuid,
        outcome: &'a JobOutcome,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async move {
            self.with(|state, now| state.end(job, owner, outcome, now));
            Ok(())
        })
    }

    fn finish_sent<'a>(
        &'a self,
        job: Entry,
        owner: Uuid,
        outcome: &'a JobOutcome,
        sent: &'a SentRecord,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async move {
            self.with(|state, now| {
                state.end(job, owner, outcome, now);
                if let Some(sealed) = &sent.sealed {
                    let ttl = Duration::from_secs(sent.sealed_ttl_seconds.max(1));
                    self.records
                        .keep_sealed(job.verification_id, sealed.clone(), ttl);
                }
                self.records.map_message(
                    sent.provider,
                    &sent.provider_message_id,
                    job.verification_id,
                    Duration::from_secs(sent.mapping_ttl_seconds.max(1)),
                );
                if let Some(fields) = &sent.status {
                    let fields: Vec<(&str, &str)> =
                        fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    self.records
                        .advance(job.verification_id, DeliveryState::Sent, &fields);
                }
            });
            Ok(())
        })
    }

    fn release(&self, job: Entry, owner: Uuid) -> BoxFuture<'_, Result<(), Unavailable>> {
        Box::pin(async move {
            self.with(|state, _| {
                if state
                    .leases
                    .get(&job)
                    .is_some_and(|(held, _)| *held == owner)
                {
                    state.leases.remove(&job);
                }
            });
            Ok(())
        })
    }
}
