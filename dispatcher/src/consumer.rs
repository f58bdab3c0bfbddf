//! The RabbitMQ side (the AMQP adapter): one connection, a confirm-mode channel with prefetch
//! DISPATCHER_CONCURRENCY, one task per delivery; reconnects with backoff whenever the broker
//! goes away. The worker says what to do with each message ([`Settle`]); this module alone acks,
//! rejects and dead-letters.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures_util::{StreamExt, future::BoxFuture};
use lapin::{
    BasicProperties, Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions,
    },
    types::FieldTable,
};
use time::OffsetDateTime;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use otp_shared::{
    amqp::{
        ATTEMPTS_HEADER, DEAD_AT_HEADER, DEAD_REASON_HEADER, Topology, header_str, long_string,
        open_confirmed_channel,
    },
    keys::Keys,
    redis_conn::RedisConn,
    supervise::{CLOSE_TIMEOUT, Session, close, supervise},
    urls::AmqpUrl,
};

use crate::depths::DepthWatch;
use otp_delivery::{
    metrics::DeliveryMetrics,
    outcome::Settle,
    source::JobSource,
    worker::{Incoming, Worker},
};

/// How long the broker may take to confirm a dead-letter copy before the original is rejected
/// instead.
const DEAD_LETTER_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Consumer {
    pub url: AmqpUrl,
    pub topology: Topology,
    pub concurrency: u16,
    /// True while consuming; read by /readyz.
    pub connected: Arc<AtomicBool>,
    pub metrics: Arc<DeliveryMetrics>,
    /// Exports the queue depths while this dispatcher holds their lease.
    pub depths: DepthWatch,
}

/// The connection and channel in-flight jobs ack through after consuming stopped.
pub struct Open(Connection, Channel);

impl JobSource for Consumer {
    type Held = Open;

    /// Consumes until `stop` fires, then cancels the consumer and hands back the connection and
    /// channel, which must stay open until in-flight jobs have acked. Reconnects by itself
    /// (`otp_shared::supervise`).
    fn consume(
        self,
        worker: Arc<Worker>,
        stop: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) -> BoxFuture<'static, Option<Open>> {
        Box::pin(async move {
            let tag = format!("otp-dispatcher-{}", uuid::Uuid::new_v4());
            let (this, worker, tag, stop, abort, tracker) =
                (&self, &worker, &tag, &stop, &abort, &tracker);
            supervise(stop, move || {
                this.session(worker, tag, stop, abort, tracker)
            })
            .await
            .flatten()
        })
    }

    fn release(Open(connection, channel): Open) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            close(connection, Some(channel)).await;
        })
    }
}

impl Consumer {
    /// A consumer of `topology`'s queue that is not yet connected.
    pub fn new(
        url: AmqpUrl,
        topology: Topology,
        concurrency: u16,
        redis: RedisConn,
        keys: Keys,
        metrics: Arc<DeliveryMetrics>,
    ) -> Self {
        let depths = DepthWatch {
            redis,
            keys,
            topology: topology.clone(),
            metrics: metrics.clone(),
            owner: uuid::Uuid::new_v4().to_string(),
        };
        Self {
            url,
            topology,
            concurrency,
            connected: Arc::new(AtomicBool::new(false)),
            metrics,
            depths,
        }
    }

    /// One connection: consume, handing each delivery to a worker task, until the connection
    /// breaks or `stop` fires.
    async fn session(
        &self,
        worker: &Arc<Worker>,
        tag: &str,
        stop: &CancellationToken,
        abort: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<Session<Option<Open>>> {
        let (connection, channel, mut deliveries) = tokio::select! {
            _ = stop.cancelled() => return Ok(Session::Stopped(None)),
            opened = self.open(tag) => opened?,
        };
        tracing::info!(queue = %self.topology.queue, concurrency = self.concurrency, "consuming");
        self.connected.store(true, Ordering::SeqCst);
        let depths = tokio::spawn(self.depths.clone().run(connection.create_channel().await));
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    depths.abort();
                    self.depths.clear();
                    self.connected.store(false, Ordering::SeqCst);
                    let cancel = channel.basic_cancel(tag.into(), BasicCancelOptions::default());
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, cancel).await;
                    tracing::info!("stopped consuming");
                    return Ok(Session::Stopped(Some(Open(connection, channel))));
                }
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let (worker, channel, abort) = (worker.clone(), channel.clone(), abort.clone());
                        let topology = self.topology.clone();
                        tracker.spawn(async move {
                            let header = |name: &str| header_str(&delivery.properties, name);
                            let incoming = Incoming {
                                body: &delivery.data,
                                redelivered: delivery.redelivered,
                                header: &header,
                            };
                            let outcome = worker.handle(incoming, abort).await;
                            settle(&channel, &topology, &delivery, outcome).await;
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the RabbitMQ connection failed");
                        break;
                    }
                    None => {
                        tracing::warn!("the broker cancelled the consumer");
                        break;
                    }
                }
            }
        }
        depths.abort();
        self.depths.clear();
        self.connected.store(false, Ordering::SeqCst);
        close(connection, Some(channel)).await;
        Ok(Session::Broken)
    }

    async fn open(&self, tag: &str) -> anyhow::Result<(Connection, Channel, lapin::Consumer)> {
        // Confirms make dead-letter copies safe before the original is acked.
        let (connection, channel) =
            open_confirmed_channel(&self.url, "otp-dispatcher", &self.topology).await?;
        channel
            .basic_qos(self.concurrency, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let consumer = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from {}", self.topology.queue))?;
        Ok((connection, channel, consumer))
    }
}

/// Does what the worker said with a delivery: the only place that acks, rejects or
/// dead-letters.
async fn settle(channel: &Channel, topology: &Topology, delivery: &Delivery, settle: Settle) {
    match settle {
        Settle::Ack => ack(delivery).await,
        Settle::DeadLetter { reason, attempts } => {
            dead_letter(channel, topology, delivery, &reason, attempts).await
        }
        Settle::Leave => {}
    }
}

/// Copies the message to the dead-letter queue with reason, time (unix seconds) and
/// provider-attempt headers, then acks it. If that publish fails, the message is rejected
/// instead, so the queue's own dead-letter exchange takes it (without our reason): it never
/// loops.
async fn dead_letter(
    channel: &Channel,
    topology: &Topology,
    delivery: &Delivery,
    reason: &str,
    attempts: u32,
) {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(DEAD_REASON_HEADER.into(), long_string(reason));
    let now = OffsetDateTime::now_utc().unix_timestamp();
    headers.insert(DEAD_AT_HEADER.into(), long_string(&now.to_string()));
    headers.insert(ATTEMPTS_HEADER.into(), long_string(&attempts.to_string()));
    let properties: BasicProperties = delivery.properties.clone().with_headers(headers);
    let published = async {
        channel
            .basic_publish(
                topology.dead_exchange.as_str().into(),
                topology.dead_queue.as_str().into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await?
            .await
    };
    match tokio::time::timeout(DEAD_LETTER_CONFIRM_TIMEOUT, published).await {
        Ok(Ok(confirm)) if confirm.is_ack() => ack(delivery).await,
        other => {
            tracing::warn!(
                ?other,
                "dead-letter publish not confirmed; rejecting instead"
            );
            let reject = BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            };
            if let Err(e) = delivery.nack(reject).await {
                tracing::warn!(error = %e, "reject failed; the broker will redeliver");
            }
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        // The channel is gone; the broker redelivers and the ledger makes that a no-op.
        tracing::warn!(error = %e, "ack failed; the job will be redelivered and skipped");
    }
}
