//! The queue's consuming side as a seam: where send jobs come from, what settles them, and where
//! the ones given up on are kept. RabbitMQ implements it (otp-dispatcher's `consumer::Consumer`
//! and `dlq::DeadLetterQueue`) and so does process memory ([`crate::memory_queue`]).
//! [`serve`] runs either one with a shutdown grace period.

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;

use otp_shared::backend::Unavailable;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use otp_shared::job::SendJob;

use crate::worker::Worker;

/// Delivers send jobs to the worker and does what it says with each ([`crate::outcome::Settle`]):
/// acks it, keeps it as a dead letter, or leaves it to be delivered again.
pub trait JobSource: Send + 'static {
    /// What in-flight jobs still need once consuming has stopped (the AMQP connection their acks
    /// go through).
    type Held: Send;

    /// Hands each job to `worker` as a task on `tracker` and settles it, until `stop` fires.
    /// `abort` is passed on to the worker (the end of the shutdown grace period).
    fn consume(
        self,
        worker: Arc<Worker>,
        stop: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) -> BoxFuture<'static, Option<Self::Held>>;

    /// Closes what [`JobSource::consume`] returned, once in-flight jobs are done.
    fn release(held: Self::Held) -> BoxFuture<'static, ()>;
}

/// The dead letters, as an operator sees them, wherever they are kept.
pub trait DeadLetters: Send + Sync {
    /// Up to `limit` dead letters, oldest first; they stay where they are.
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, Unavailable>>;
}

/// One dead letter as an operator sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// None when the message is not a readable send job.
    pub job_id: Option<Uuid>,
    pub verification_id: Option<Uuid>,
    pub reason: String,
    /// RFC 3339; None when the message carries no time.
    pub dead_lettered_at: Option<String>,
    /// Provider calls made before it was dead-lettered, when known.
    pub attempts: Option<u32>,
    #[serde(skip)]
    pub dead_at: Option<OffsetDateTime>,
    #[serde(skip)]
    pub expires_at: Option<OffsetDateTime>,
}

impl DeadLetter {
    /// A dead letter from its message and what was noted when it was given up on: why, when,
    /// and after how many provider attempts.
    pub fn new(
        body: &[u8],
        reason: String,
        dead_at: Option<OffsetDateTime>,
        attempts: Option<u32>,
    ) -> Self {
        let job = serde_json::from_slice::<SendJob>(body).ok();
        Self {
            job_id: job.as_ref().map(|j| j.job_id),
            verification_id: job.as_ref().map(|j| j.verification_id),
            reason,
            dead_lettered_at: dead_at.and_then(|t| t.format(&Rfc3339).ok()),
            attempts,
            dead_at,
            expires_at: job.map(|j| j.expires_at),
        }
    }

    /// One line for `dlq list`.
    pub fn line(&self) -> String {
        let id = |v: Option<Uuid>| v.map_or_else(|| "-".to_owned(), |u| u.to_string());
        format!(
            "{}  verification={}  dead_at={}  attempts={}  reason={}",
            id(self.job_id),
            id(self.verification_id),
            self.dead_lettered_at.as_deref().unwrap_or("-"),
            self.attempts
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
            self.reason
        )
    }
}

/// How long jobs aborted at the end of the grace period get to release their leases.
const ABORTED_JOBS_GRACE: Duration = Duration::from_secs(2);

/// Consumes from `source` until `stop` fires; then stops taking jobs at once, gives those in
/// flight `grace` to finish, and aborts the rest (left for redelivery). Returns how many jobs
/// were in flight at the stop.
pub async fn serve<S: JobSource>(
    source: S,
    worker: Arc<Worker>,
    stop: CancellationToken,
    grace: Duration,
) -> usize {
    let abort = CancellationToken::new();
    let tracker = TaskTracker::new();
    let held = source
        .consume(worker, stop, abort.clone(), tracker.clone())
        .await;
    tracker.close();
    let in_flight = tracker.len();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            unfinished = tracker.len(),
            "grace period over; unfinished jobs are left for redelivery"
        );
        abort.cancel();
        let _ = tokio::time::timeout(ABORTED_JOBS_GRACE, tracker.wait()).await;
    }
    if let Some(held) = held {
        S::release(held).await;
    }
    in_flight
}
