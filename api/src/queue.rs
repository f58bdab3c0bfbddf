//! Publishing send jobs. The service talks to [`JobQueue`]; [`AmqpPublisher`] keeps one
//! long-lived RabbitMQ connection and a confirm-mode channel, and reconnects by itself.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use futures_util::future::BoxFuture;
use lapin::{Channel, Confirmation, Connection, options::BasicPublishOptions, types::FieldTable};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use otp_shared::{
    amqp::{
        REQUEST_ID_HEADER, RESEND_HEADER, Topology, job_properties, long_string,
        open_confirmed_channel,
    },
    job::SendJob,
    supervise::Session,
    telemetry::inject_trace_context,
    urls::AmqpUrl,
};

/// Why a job was not queued: the same for every queue, whatever the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the queue")]
    NotConnected,
    #[error("the queue refused the message (nack)")]
    Nacked,
    #[error("the queue could not route the message to {0} (returned)")]
    Returned(String),
    #[error("the queue did not confirm the publish within {0:?}")]
    Timeout(Duration),
    /// The broker failed; the source says how.
    #[error("publish failed")]
    Broker(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<lapin::Error> for PublishError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(Box::new(e))
    }
}

/// Where send jobs go. `publish` resolves only once the job is safely stored by the queue.
pub trait JobQueue: Send + Sync {
    fn publish<'a>(
        &'a self,
        job: &'a SendJob,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Publishes a sent job again, for a resend after an undelivered report, asking the
    /// dispatcher to avoid `provider` (the one that failed to deliver).
    fn republish<'a>(
        &'a self,
        job: &'a SendJob,
        provider: &'a str,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    fn is_connected(&self) -> bool;
}

#[derive(Clone)]
pub struct AmqpPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    topology: Topology,
    confirm_timeout: Duration,
    /// The live confirm-mode channel; `None` while (re)connecting.
    channel: RwLock<Option<Channel>>,
    /// Wakes the supervisor when a publish hits a dead connection.
    broken: Notify,
    /// `otp_queue_consumers{queue}`: the dispatchers consuming the send queue.
    consumers: prometheus::IntGaugeVec,
    /// `otp_events_failed_total`: events whose publish was not confirmed.
    events_failed: prometheus::IntCounter,
}

impl AmqpPublisher {
    /// Starts the connection supervisor; the publisher is usable once it has connected
    /// (`is_connected`), and publishes fail fast with `NotConnected` until then.
    pub fn start(
        url: AmqpUrl,
        topology: Topology,
        confirm_timeout: Duration,
        consumers: prometheus::IntGaugeVec,
        events_failed: prometheus::IntCounter,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let inner = Arc::new(Inner {
            topology,
            confirm_timeout,
            channel: RwLock::new(None),
            broken: Notify::new(),
            consumers,
            events_failed,
        });
        let task = tokio::spawn(supervise(inner.clone(), url, shutdown));
        (Self { inner }, task)
    }

    fn channel(&self) -> Option<Channel> {
        let guard = self.inner.channel.read().unwrap_or_else(|e| e.into_inner());
        guard.clone().filter(|c| c.status().connected())
    }
}

impl crate::events::Events for AmqpPublisher {
    /// Publishes to `otp.events` with a publisher confirm, in a task of its own.
    fn emit(&self, event: otp_shared::events::Event) {
        otp_shared::events::publish_in_background(
            self.channel(),
            event,
            self.inner.confirm_timeout,
            self.inner.events_failed.clone(),
        );
    }
}

impl JobQueue for AmqpPublisher {
    fn publish<'a>(
        &'a self,
        job: &'a SendJob,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let mut headers = FieldTable::default();
            headers.insert(REQUEST_ID_HEADER.into(), long_string(request_id));
            self.publish_with(job, headers).await
        })
    }

    fn republish<'a>(
        &'a self,
        job: &'a SendJob,
        provider: &'a str,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let mut headers = FieldTable::default();
            headers.insert(RESEND_HEADER.into(), long_string(provider));
            self.publish_with(job, headers).await
        })
    }

    fn is_connected(&self) -> bool {
        self.channel().is_some()
    }
}

impl AmqpPublisher {
    /// Publishes `job` (persistent, mandatory) with `headers` plus the trace context, and waits
    /// for the broker's confirm.
    async fn publish_with(
        &self,
        job: &SendJob,
        mut headers: FieldTable,
    ) -> Result<(), PublishError> {
        let channel = self.channel().ok_or_else(|| {
            self.inner.broken.notify_one();
            PublishError::NotConnected
        })?;
        inject_trace_context(&mut headers);
        let topology = &self.inner.topology;
        let publish = async {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    topology.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &job.to_bytes(),
                    job_properties(&job.job_id.to_string(), headers),
                )
                .await?;
            match confirm.await? {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(_)) => Err(PublishError::Returned(topology.queue.clone())),
                Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked),
            }
        };
        let result = tokio::time::timeout(self.inner.confirm_timeout, publish)
            .await
            .unwrap_or(Err(PublishError::Timeout(self.inner.confirm_timeout)));
        if matches!(result, Err(PublishError::Broker(_))) {
            self.inner.broken.notify_one();
        }
        result
    }
}

/// Keeps a connection up for as long as the process runs (`otp_shared::supervise`).
async fn supervise(inner: Arc<Inner>, url: AmqpUrl, shutdown: CancellationToken) {
    let (inner, url, shutdown) = (&inner, &url, &shutdown);
    otp_shared::supervise::supervise(shutdown, move || session(inner, url, shutdown)).await;
}

/// One connection: open it and declare the topology, wait for it to break, close it.
async fn session(
    inner: &Inner,
    url: &AmqpUrl,
    shutdown: &CancellationToken,
) -> anyhow::Result<Session<()>> {
    let connection = tokio::select! {
        _ = shutdown.cancelled() => return Ok(Session::Stopped(())),
        result = open(inner, url) => result?,
    };
    let consumers = tokio::spawn(watch_consumers(
        connection.create_channel().await,
        inner.topology.queue.clone(),
        inner.consumers.clone(),
    ));
    wait_until_broken(inner, &connection, shutdown).await;
    consumers.abort();
    let _ = inner
        .consumers
        .remove_label_values(&[&inner.topology.queue]);
    let channel = inner
        .channel
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    otp_shared::supervise::close(connection, channel).await;
    Ok(if shutdown.is_cancelled() {
        Session::Stopped(())
    } else {
        Session::Broken
    })
}

async fn open(inner: &Inner, url: &AmqpUrl) -> anyhow::Result<Connection> {
    let (connection, channel) = open_confirmed_channel(url, "otp-api", &inner.topology).await?;
    *inner.channel.write().unwrap_or_else(|e| e.into_inner()) = Some(channel);
    Ok(connection)
}

/// How often `otp_queue_consumers` is refreshed.
const CONSUMER_REFRESH: Duration = Duration::from_secs(5);
/// How often a quiet connection is checked; a failed publish wakes the check at once.
const CONNECTION_CHECK: Duration = Duration::from_millis(500);

/// Keeps `gauge{queue}` at the number of consumers of `queue` (the dispatchers taking its
/// jobs; 0 means the jobs wait), every [`CONSUMER_REFRESH`], on a channel of its own (a failed
/// passive declare closes it). Ends, with the series removed, when the channel fails.
async fn watch_consumers(
    channel: lapin::Result<Channel>,
    queue: String,
    gauge: prometheus::IntGaugeVec,
) {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if let Ok(channel) = channel {
        while let Ok(declared) = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            gauge
                .with_label_values(&[&queue])
                .set(declared.consumer_count().into());
            tokio::time::sleep(CONSUMER_REFRESH).await;
        }
    }
    let _ = gauge.remove_label_values(&[&queue]);
}

async fn wait_until_broken(inner: &Inner, connection: &Connection, shutdown: &CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = inner.broken.notified() => {}
            _ = tokio::time::sleep(CONNECTION_CHECK) => {}
        }
        let channel_ok = inner
            .channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|c| c.status().connected());
        if !connection.status().connected() || !channel_ok {
            return;
        }
    }
}

/// Send jobs through process memory to the dispatcher's worker in the same process (the
/// one-process mode): always "connected", and a publish is confirmed once queued.
#[derive(Clone)]
pub struct MemoryJobQueue(pub otp_delivery::memory_queue::MemoryQueue);

impl MemoryJobQueue {
    fn send(&self, job: &SendJob, header: (&str, &str)) -> Result<(), PublishError> {
        let message = otp_delivery::memory_queue::Message {
            body: job.to_bytes(),
            headers: [(header.0.to_owned(), header.1.to_owned())].into(),
            redelivered: false,
        };
        self.0
            .publish(message)
            .then_some(())
            .ok_or(PublishError::NotConnected)
    }
}

impl JobQueue for MemoryJobQueue {
    fn publish<'a>(
        &'a self,
        job: &'a SendJob,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move { self.send(job, (REQUEST_ID_HEADER, request_id)) })
    }

    fn republish<'a>(
        &'a self,
        job: &'a SendJob,
        provider: &'a str,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move { self.send(job, (RESEND_HEADER, provider)) })
    }

    fn is_connected(&self) -> bool {
        true
    }
}
