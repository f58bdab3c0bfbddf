//! The idempotency ledger in Redis: who is sending a job right now (a short lease, kept alive
//! while the job is worked on) and how each job ended (kept longer than any job lives).

use std::{sync::LazyLock, time::Duration};

use otp_shared::redis_conn::RedisConn;
use redis::Script;
use uuid::Uuid;

use otp_shared::{
    keys::Keys,
    ledger::JobOutcome,
    status::{self, DeliveryState},
};

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("claim.lua")));
static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("finish.lua")));
static FINISH_SENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        status::ADVANCE_FN,
        include_str!("finish_sent.lua")
    ))
});
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

/// One ledger entry: a send job, under its verification's hash tag (see `otp_shared::keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub verification_id: Uuid,
    pub job_id: Uuid,
}

/// What an accepted send leaves besides its outcome.
pub struct SentRecord {
    /// `msg:<provider>:<message id>`, pointing at the verification.
    pub mapping_key: String,
    pub mapping_ttl_seconds: u64,
    /// The job's envelope, kept for one resend after an undelivered report.
    pub sealed: Option<Vec<u8>>,
    pub sealed_ttl_seconds: u64,
    /// Fields of the delivery record, moved forward to `sent` with the outcome; `None` leaves
    /// the record alone (a resend sets its own).
    pub status: Option<Vec<(&'static str, String)>>,
}

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

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Claims `job` for `owner`, or renews the lease if `owner` already holds it.
    pub async fn claim(&self, job: Entry, owner: Uuid) -> redis::RedisResult<Claim> {
        self.claim_with(job, owner, false).await
    }

    /// [`Self::claim`], also checking in the same round trip that the verification's delivery
    /// record still exists ([`Claim::Withdrawn`] when not), and marking it `sending` (attempt 1)
    /// when claimed.
    pub async fn claim_send(&self, job: Entry, owner: Uuid) -> redis::RedisResult<Claim> {
        self.claim_with(job, owner, true).await
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
        let (state, value): (String, String) =
            invocation.invoke_async(&mut self.conn.clone()).await?;
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
        // Never a guess: a reply read as "busy" would stall the job, as "claimed" send it twice.
        claim.map_err(|detail| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply from the ledger's claim",
                detail,
            ))
        })
    }

    pub async fn finish(
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
    /// delivery record moved to `sent` (one script under the verification's tag), and beside it
    /// the provider's message id mapped to the verification (a key of its own, so a report can
    /// find it by message id alone).
    pub async fn finish_sent(
        &self,
        job: Entry,
        owner: Uuid,
        outcome: &JobOutcome,
        sent: &SentRecord,
    ) -> redis::RedisResult<()> {
        let mut finish = FINISH_SENT.prepare_invoke();
        finish
            .key(self.keys.job_outcome(job.verification_id, job.job_id))
            .key(self.keys.job_lease(job.verification_id, job.job_id))
            .key(self.keys.sealed_job(job.verification_id))
            .arg(owner.to_string())
            .arg(outcome.encode())
            .arg(OUTCOME_TTL_SECONDS)
            .arg(sent.sealed.as_deref().unwrap_or_default())
            .arg(sent.sealed_ttl_seconds.max(1));
        if let Some(fields) = &sent.status {
            finish.key(self.keys.status(job.verification_id));
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            status::advance_args(&mut finish, DeliveryState::Sent, &fields);
        }
        let mapping = redis::cmd("SET")
            .arg(&sent.mapping_key)
            .arg(job.verification_id.to_string())
            .arg("EX")
            .arg(sent.mapping_ttl_seconds.max(1))
            .to_owned();
        let (mut a, mut b) = (self.conn.clone(), self.conn.clone());
        let (finished, mapped) = tokio::join!(
            finish.invoke_async::<i64>(&mut a),
            mapping.query_async::<()>(&mut b)
        );
        finished?;
        mapped
    }

    pub async fn release(&self, job: Entry, owner: Uuid) -> redis::RedisResult<()> {
        let _: i64 = RELEASE
            .key(self.keys.job_lease(job.verification_id, job.job_id))
            .arg(owner.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Renews the lease every third of its length until dropped, so a long retry sequence keeps
    /// it, while a crashed worker's lease lapses quickly.
    pub fn keep_alive(&self, job: Entry, owner: Uuid) -> KeepAlive {
        let ledger = self.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ledger.lease / 3).await;
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
}

/// Stops renewing a lease when dropped.
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}
