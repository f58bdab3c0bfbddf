//! The queue's consuming side, checked once against RabbitMQ (with the Redis worker) and once
//! against process memory (with the in-memory worker), through `otp_delivery::source`: a job
//! given up on becomes a dead letter with its ids, reason, attempts and time; an unreadable one
//! becomes a dead letter without ids; a delivered one does not; listing leaves them in place.

use std::{sync::Arc, time::Duration};

use lapin::types::FieldTable;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use otp_delivery::{
    memory_queue::{MemoryConsumer, MemoryQueue, Message, memory_queue},
    metrics::DeliveryMetrics,
    sender::SmsSender,
    source::{DeadLetter, DeadLetters, JobSource, serve},
    worker::Worker,
};
use otp_dispatcher::{consumer::Consumer, dlq::DeadLetterQueue};
use otp_shared::{
    amqp::{Topology, job_properties},
    job::SendJob,
    memory::DeliveryRecords,
    phone::PhoneNumber,
    status::{self, DeliveryState},
};
use otp_testkit::eventually;

use crate::helpers::{AMQP_URL, PHONE, REFUSED_REASON, Recorder, World, job_key};

/// A valid number the test provider refuses.
const REFUSED: &str = "+14155552672";
const CONCURRENCY: usize = 4;

/// One queue backend: how a producer publishes to it and announces jobs (the delivery record
/// the API writes first), and its consuming side as the dispatcher sees it.
trait Backend {
    type Source: JobSource;
    type Dead: DeadLetters + Sync;

    /// The consuming side and the dead letters, with a worker sending through `sender`.
    fn open(&mut self, sender: Arc<dyn SmsSender>) -> (Self::Source, Self::Dead, Worker);
    async fn publish(&self, body: Vec<u8>);
    async fn announce(&self, job: &SendJob);
    async fn state(&self, verification_id: Uuid) -> Option<DeliveryState>;
}

struct Rabbit(World);

impl Backend for Rabbit {
    type Source = Consumer;
    type Dead = DeadLetterQueue;

    fn open(&mut self, sender: Arc<dyn SmsSender>) -> (Consumer, DeadLetterQueue, Worker) {
        let world = &self.0;
        let metrics = Arc::new(DeliveryMetrics::new());
        let config = world.config("http://127.0.0.1:9");
        let worker = Worker::on_redis(
            &world.redis,
            config.redis.keys(),
            vec![sender],
            &config.delivery,
            config.job_encryption_key.clone(),
            config.reports.resend_on_undelivered,
            metrics.clone(),
        )
        .unwrap();
        let consumer = Consumer::new(
            AMQP_URL.parse().unwrap(),
            Topology::new(&world.queue),
            CONCURRENCY as u16,
            world.redis.clone(),
            world.keys(),
            otp_dispatcher::agreement::Agreement::new(
                world.redis.clone(),
                world.keys().settings_fingerprint(),
                otp_shared::agreement::Fingerprint::of(
                    &config.redis,
                    &config.amqp,
                    &config.reports,
                    &config.job_encryption_key,
                ),
                metrics.clone(),
            ),
            metrics,
        );
        let dead = DeadLetterQueue::new(world.channel.clone(), Topology::new(&world.queue));
        (consumer, dead, worker)
    }

    async fn publish(&self, body: Vec<u8>) {
        let properties = job_properties("queue-conformance", FieldTable::default());
        self.0.publish_raw(&body, properties).await;
    }

    async fn announce(&self, job: &SendJob) {
        let mut redis = self.0.redis.clone();
        let keys = self.0.keys();
        let vid = job.verification_id;
        status::record(&mut redis, &keys, vid, DeliveryState::Queued, 0, &[])
            .await
            .unwrap();
    }

    async fn state(&self, verification_id: Uuid) -> Option<DeliveryState> {
        self.0.status(verification_id).await.map(|s| s.state)
    }
}

struct Memory {
    records: DeliveryRecords,
    queue: MemoryQueue,
    consumer: Option<MemoryConsumer>,
}

impl Memory {
    fn new() -> Self {
        let (queue, consumer) = memory_queue(CONCURRENCY);
        Self {
            records: DeliveryRecords::default(),
            queue,
            consumer: Some(consumer),
        }
    }
}

impl Backend for Memory {
    type Source = MemoryConsumer;
    type Dead = MemoryQueue;

    fn open(&mut self, sender: Arc<dyn SmsSender>) -> (MemoryConsumer, MemoryQueue, Worker) {
        let live = Arc::new(|_: &str, _: Uuid| true);
        let metrics = Arc::new(DeliveryMetrics::new());
        let records = self.records.clone();
        let worker = Worker::in_memory(vec![sender], job_key(), records, live, 1000, metrics);
        let consumer = self.consumer.take().expect("opened once");
        (consumer, self.queue.clone(), worker)
    }

    async fn publish(&self, body: Vec<u8>) {
        let headers = Default::default();
        let message = Message {
            body,
            headers,
            redelivered: false,
        };
        assert!(self.queue.publish(message));
    }

    async fn announce(&self, job: &SendJob) {
        let vid = job.verification_id;
        self.records.record(vid, DeliveryState::Queued, 0, &[]);
    }

    async fn state(&self, verification_id: Uuid) -> Option<DeliveryState> {
        self.records.load(verification_id).map(|s| s.state)
    }
}

fn job(phone: &str) -> SendJob {
    let now = OffsetDateTime::now_utc();
    let number = PhoneNumber::parse(phone).unwrap();
    let expires = now + time::Duration::minutes(5);
    SendJob::seal(
        &job_key(),
        Uuid::new_v4(),
        &number,
        "123456",
        "{code}",
        now,
        expires,
    )
}

/// Dead letters until there are `count` (or 10 s passed), unreadable ones first.
async fn dead_letters(dead: &impl DeadLetters, count: usize) -> Vec<DeadLetter> {
    let listed = || async { dead.list(10).await.unwrap() };
    eventually(Duration::from_secs(10), || async {
        listed().await.len() >= count
    })
    .await;
    let mut letters = listed().await;
    letters.sort_by_key(|l| l.job_id);
    letters
}

async fn jobs_given_up_on_become_dead_letters(mut backend: impl Backend) {
    let provider = Recorder::refusing(REFUSED);
    let (source, dead, worker) = backend.open(provider.clone());
    let stop = CancellationToken::new();
    let grace = Duration::from_secs(5);
    let serving = tokio::spawn(serve(source, Arc::new(worker), stop.clone(), grace));

    let (refused, delivered) = (job(REFUSED), job(PHONE));
    backend.announce(&refused).await;
    backend.announce(&delivered).await;
    backend.publish(b"{not a job".to_vec()).await;
    backend.publish(refused.to_bytes()).await;
    backend.publish(delivered.to_bytes()).await;

    let letters = dead_letters(&dead, 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let (unreadable, given_up) = (&letters[0], &letters[1]);
    assert_eq!(
        (unreadable.job_id, unreadable.verification_id),
        (None, None)
    );
    assert!(unreadable.reason.contains("malformed"), "{unreadable:?}");
    assert_eq!(unreadable.attempts, Some(0));
    assert_eq!(given_up.job_id, Some(refused.job_id));
    assert_eq!(given_up.verification_id, Some(refused.verification_id));
    assert_eq!(given_up.reason, REFUSED_REASON);
    assert_eq!(given_up.attempts, Some(1));
    assert_eq!(given_up.expires_at, Some(refused.expires_at));
    let now = OffsetDateTime::now_utc();
    for letter in &letters {
        let at = letter.dead_at.expect("a dead letter has a time");
        assert!((now - at).abs() < time::Duration::minutes(1), "{letter:?}");
    }
    // Listing took nothing away.
    assert_eq!(dead_letters(&dead, 2).await, letters);

    let sent = || async { backend.state(delivered.verification_id).await };
    eventually(Duration::from_secs(10), || async {
        sent().await == Some(DeliveryState::Sent)
    })
    .await;
    assert_eq!(sent().await, Some(DeliveryState::Sent));
    let failed = backend.state(refused.verification_id).await;
    assert_eq!(failed, Some(DeliveryState::Failed));
    let destinations: Vec<String> = provider.sent().into_iter().map(|(to, _)| to).collect();
    assert_eq!(destinations, [PHONE]);

    stop.cancel();
    let in_flight = serving.await.unwrap();
    assert_eq!(in_flight, 0);
}

async fn on_rabbitmq() -> Rabbit {
    Rabbit(World::new().await)
}

async fn in_memory() -> Memory {
    Memory::new()
}

otp_testkit::conformance!(
    shared: on_rabbitmq, in_memory: in_memory;
    jobs_given_up_on_become_dead_letters,
);
