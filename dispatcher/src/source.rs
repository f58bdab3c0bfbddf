//! The queue's consuming side as a seam: where send jobs come from, what settles them, and where
//! the ones given up on are kept. RabbitMQ implements it ([`crate::consumer::Consumer`],
//! [`crate::dlq::DeadLetterQueue`]) and so does process memory ([`crate::memory_queue`]).
//! [`serve`] runs either one with a shutdown grace period.

use std::{future::Future, sync::Arc, time::Duration};

use otp_shared::backend::Unavailable;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{dlq::DeadLetter, worker::Worker};

/// Delivers send jobs to the worker and does what it says with each ([`crate::worker::Settle`]):
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
    ) -> impl Future<Output = Option<Self::Held>> + Send;

    /// Closes what [`JobSource::consume`] returned, once in-flight jobs are done.
    fn release(held: Self::Held) -> impl Future<Output = ()> + Send;
}

/// The dead letters, as an operator sees them, wherever they are kept.
pub trait DeadLetters {
    /// Up to `limit` dead letters, oldest first; they stay where they are.
    fn list(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, Unavailable>> + Send;
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
