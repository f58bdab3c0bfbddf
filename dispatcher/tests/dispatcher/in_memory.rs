//! The dispatcher's pipeline with every backend in process memory (queue, ledger, rate, breaker,
//! delivery records): no Redis and no RabbitMQ. The same worker as in production, so duplicates
//! are sent once, withdrawn jobs not at all, and unreadable ones dead-lettered.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use otp_dispatcher::{
    memory_queue::{MemoryQueue, Message, memory_queue},
    metrics::DispatcherMetrics,
    outcome::Attempt,
    sender::SmsSender,
    worker::Worker,
};
use otp_shared::{
    job::SendJob, memory::DeliveryRecords, phone::PhoneNumber, status::DeliveryState,
    testing::eventually,
};
use time::OffsetDateTime;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::helpers::{PHONE, job_key};

/// A provider that accepts everything and remembers what it was asked to send.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String)>>);

impl SmsSender for Recorder {
    fn name(&self) -> &'static str {
        "plivo"
    }

    fn send<'a>(&'a self, destination: &'a str, text: &'a str) -> BoxFuture<'a, Attempt> {
        let mut sent = self.0.lock().unwrap();
        sent.push((destination.to_owned(), text.to_owned()));
        let id = format!("mem-{}", sent.len());
        Box::pin(async move {
            Attempt::Sent {
                provider_id: Some(id),
            }
        })
    }
}

struct Pipeline {
    queue: MemoryQueue,
    records: DeliveryRecords,
    provider: Arc<Recorder>,
    metrics: Arc<DispatcherMetrics>,
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
    );
    let metrics = worker.metrics.clone();
    let (queue, consumer) = memory_queue();
    let stop = CancellationToken::new();
    tokio::spawn(consumer.run(
        Arc::new(worker),
        8,
        stop.clone(),
        CancellationToken::new(),
        TaskTracker::new(),
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
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("otp_jobs_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
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

    let sent = pipeline.provider.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, PHONE);
    assert!(sent[0].1.contains("424242"));
    let status = pipeline.records.load(job.verification_id).unwrap();
    assert_eq!((status.state, status.attempts), (DeliveryState::Sent, 1));
    assert_eq!(status.provider_message_id.as_deref(), Some("mem-1"));
    assert!(pipeline.queue.dead_letters().is_empty());
}

#[tokio::test]
async fn withdrawn_jobs_are_not_sent_and_unreadable_ones_are_dead_lettered() {
    let pipeline = start();
    // No delivery record: the API withdrew it.
    pipeline.publish(job("111111").to_bytes());
    pipeline.publish(b"{not a job".to_vec());
    pipeline.wait_handled(2).await;

    assert!(pipeline.provider.0.lock().unwrap().is_empty());
    let dead = pipeline.queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.body, b"{not a job");
    assert!(dead[0].reason.contains("malformed"), "{}", dead[0].reason);
}
