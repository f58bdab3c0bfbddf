//! The dispatcher's pipeline with every backend in process memory (queue, ledger, rate, breaker,
//! delivery records): no Redis and no RabbitMQ. The same worker as in production, so duplicates
//! are sent once and withdrawn jobs not at all (dead-lettering: `queues.rs`, on both backends).

use std::{sync::Arc, time::Duration};

use otp_delivery::{
    memory_queue::{MemoryQueue, Message, memory_queue},
    metrics::DeliveryMetrics,
    source::{DeadLetters, serve},
    worker::Worker,
};
use otp_shared::{
    job::SendJob, memory::DeliveryRecords, phone::PhoneNumber, status::DeliveryState,
};
use otp_testkit::{eventually, metric_sum};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{PHONE, Recorder, job_key};

struct Pipeline {
    queue: MemoryQueue,
    records: DeliveryRecords,
    provider: Arc<Recorder>,
    metrics: Arc<DeliveryMetrics>,
    stop: CancellationToken,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start() -> Pipeline {
    let records = DeliveryRecords::default();
    let provider = Arc::new(Recorder::default());
    let worker = Worker::in_memory(
        vec![provider.clone()],
        job_key(),
        records.clone(),
        Arc::new(|_, _| true),
        100,
        Arc::new(DeliveryMetrics::new()),
    );
    let metrics = worker.metrics.clone();
    let (queue, consumer) = memory_queue(8);
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        consumer,
        Arc::new(worker),
        stop.clone(),
        Duration::from_secs(1),
    ));
    Pipeline {
        queue,
        records,
        provider,
        metrics,
        stop,
    }
}

impl Pipeline {
    fn publish(&self, body: Vec<u8>) {
        let message = Message {
            body,
            headers: Default::default(),
            redelivered: false,
        };
        assert!(self.queue.publish(message));
    }

    /// Jobs decided so far (`otp_jobs_total`, every result).
    fn handled(&self) -> u64 {
        metric_sum(&self.metrics.render(), "otp_jobs_total") as u64
    }

    async fn wait_handled(&self, jobs: u64) {
        let reached = eventually(Duration::from_secs(5), || async { self.handled() >= jobs }).await;
        assert!(
            reached && self.handled() == jobs,
            "{} handled",
            self.handled()
        );
    }
}

fn job(code: &str) -> SendJob {
    let now = OffsetDateTime::now_utc();
    SendJob::seal(
        &job_key(),
        Uuid::new_v4(),
        &PhoneNumber::parse(PHONE).unwrap(),
        code,
        "Your code is {code}",
        now,
        now + time::Duration::minutes(5),
    )
}

#[tokio::test]
async fn a_job_delivered_twice_is_sent_once_and_recorded() {
    let pipeline = start();
    let job = job("424242");
    pipeline
        .records
        .record(job.verification_id, DeliveryState::Queued, 0, &[]);
    pipeline.publish(job.to_bytes());
    pipeline.publish(job.to_bytes());
    pipeline.wait_handled(2).await;

    let sent = pipeline.provider.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, PHONE);
    assert!(sent[0].1.contains("424242"));
    let status = pipeline.records.load(job.verification_id).unwrap();
    assert_eq!((status.state, status.attempts), (DeliveryState::Sent, 1));
    assert_eq!(status.provider_message_id.as_deref(), Some("mem-1"));
    assert!(pipeline.queue.list(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn withdrawn_jobs_are_not_sent() {
    let pipeline = start();
    // No delivery record: the API withdrew it.
    pipeline.publish(job("111111").to_bytes());
    pipeline.wait_handled(1).await;

    assert!(pipeline.provider.sent().is_empty());
    assert!(pipeline.queue.list(10).await.unwrap().is_empty());
}
