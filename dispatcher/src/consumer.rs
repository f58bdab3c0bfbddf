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
        BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions,
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

use crate::{
    acks::{Acks, Flushed},
    agreement::Agreement,
    depths::DepthWatch,
    events::AmqpEvents,
};
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
    /// Whether the shared settings agree with the API's: consuming waits for it.
    pub agreement: Agreement,
    /// The workers' `sent` and `failed` events, published on this consumer's channel.
    pub events: AmqpEvents,
}

/// The connection and channel in-flight jobs ack through after consuming stopped, and the
/// task that sends their acks.
pub struct Open(Connection, Channel, Flushed);

impl JobSource for Consumer {
    type Held = Open;

    /// Consumes until `stop` fires, then cancels the consumer and hands back the connection and
    /// channel, which must stay open until in-flight jobs have acked. Reconnects by itself
    /// (`otp_shared::supervise`). Compares the shared settings with the API's meanwhile, and
    /// consumes only while they agree.
    fn consume(
        self,
        worker: Arc<Worker>,
        stop: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) -> BoxFuture<'static, Option<Open>> {
        Box::pin(async move {
            tokio::spawn(self.agreement.clone().run(stop.clone()));
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

    fn release(Open(connection, channel, acks): Open) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            acks.wait(CLOSE_TIMEOUT).await;
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
        agreement: Agreement,
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
            events: AmqpEvents::new(metrics.events_failed.clone()),
            metrics,
            depths,
            agreement,
        }
    }

    /// One connection: consume, handing each delivery to a worker task, until the connection
    /// breaks or `stop` fires. While the shared settings disagree with the API's, it holds the
    /// connection without consuming.
    async fn session(
        &self,
        worker: &Arc<Worker>,
        tag: &str,
        stop: &CancellationToken,
        abort: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<Session<Option<Open>>> {
        let (connection, channel) = tokio::select! {
            _ = stop.cancelled() => return Ok(Session::Stopped(None)),
            opened = self.open() => opened?,
        };
        self.connected.store(true, Ordering::SeqCst);
        let depths = tokio::spawn(self.depths.clone().run(connection.create_channel().await));
        self.events.use_channel(Some(channel.clone()));
        let (acks, flushed) = Acks::start();
        let ended = self
            .consume(&channel, &acks, worker, tag, stop, abort, tracker)
            .await;
        drop(acks);
        if ended.is_err() {
            self.events.use_channel(None);
        }
        depths.abort();
        self.depths.clear();
        self.connected.store(false, Ordering::SeqCst);
        match ended {
            Ok(()) => Ok(Session::Stopped(Some(Open(connection, channel, flushed)))),
            Err(e) => {
                tracing::warn!(error = %e, "the RabbitMQ connection failed");
                close(connection, Some(channel)).await;
                Ok(Session::Broken)
            }
        }
    }

    /// Consumes on `channel` while the settings agree, until `stop` (`Ok`) or the channel
    /// fails (`Err`).
    // Each argument is what one consuming session works with.
    #[allow(clippy::too_many_arguments)]
    async fn consume(
        &self,
        channel: &Channel,
        acks: &Acks,
        worker: &Arc<Worker>,
        tag: &str,
        stop: &CancellationToken,
        abort: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = self.agreement.admitted() => {}
            }
            let mut deliveries = channel
                .basic_consume(
                    self.topology.queue.as_str().into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming from {}", self.topology.queue))?;
            tracing::info!(queue = %self.topology.queue, concurrency = self.concurrency, "consuming");
            let mut pausing = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        let cancel = channel.basic_cancel(tag.into(), BasicCancelOptions::default());
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, cancel).await;
                        tracing::info!("stopped consuming");
                        return Ok(());
                    }
                    // The deliveries already on their way still come, and are put back.
                    _ = self.agreement.refused(), if !pausing => {
                        pausing = true;
                        channel
                            .basic_cancel(tag.into(), BasicCancelOptions::default())
                            .await
                            .context("pausing the consumer")?;
                    }
                    next = deliveries.next() => match next {
                        Some(Ok(delivery)) => self.dispatch(delivery, channel, acks, worker, abort, tracker),
                        Some(Err(e)) => return Err(e.into()),
                        None if pausing => break,
                        None => anyhow::bail!("the broker cancelled the consumer"),
                    }
                }
            }
        }
    }

    /// Hands one delivery to a worker task, which settles it; or puts it back in the queue
    /// when the settings do not agree.
    fn dispatch(
        &self,
        delivery: Delivery,
        channel: &Channel,
        acks: &Acks,
        worker: &Arc<Worker>,
        abort: &CancellationToken,
        tracker: &TaskTracker,
    ) {
        let (worker, channel, abort) = (worker.clone(), channel.clone(), abort.clone());
        let (topology, agreement) = (self.topology.clone(), self.agreement.clone());
        acks.delivered(delivery.delivery_tag);
        let acks = acks.clone();
        tracker.spawn(async move {
            if !agreement.admits_job().await {
                let back = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                if let Err(e) = delivery.nack(back).await {
                    tracing::warn!(error = %e, "requeue failed; the broker will redeliver");
                }
                acks.settled(delivery.delivery_tag);
                return;
            }
            let header = |name: &str| header_str(&delivery.properties, name);
            let incoming = Incoming {
                body: &delivery.data,
                redelivered: delivery.redelivered,
                header: &header,
            };
            let outcome = worker.handle(incoming, abort).await;
            settle(&channel, &topology, &acks, &delivery, outcome).await;
        });
    }

    async fn open(&self) -> anyhow::Result<(Connection, Channel)> {
        // Confirms make dead-letter copies safe before the original is acked.
        let (connection, channel) =
            open_confirmed_channel(&self.url, "otp-dispatcher", &self.topology).await?;
        channel
            .basic_qos(self.concurrency, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        Ok((connection, channel))
    }
}

/// Does what the worker said with a delivery: the only place that acks (through [`Acks`]),
/// rejects or dead-letters.
async fn settle(
    channel: &Channel,
    topology: &Topology,
    acks: &Acks,
    delivery: &Delivery,
    settle: Settle,
) {
    let tag = delivery.delivery_tag;
    match settle {
        Settle::Ack => acks.ack(tag, delivery.acker.clone()),
        Settle::DeadLetter { reason, attempts } => {
            if dead_letter(channel, topology, delivery, &reason, attempts).await {
                acks.ack(tag, delivery.acker.clone());
            } else {
                acks.settled(tag);
            }
        }
        Settle::Leave => acks.left(tag),
    }
}

/// Copies the message to the dead-letter queue with reason, time (unix seconds) and
/// provider-attempt headers; true when that copy is confirmed (the original is then acked). If
/// that publish fails, the message is rejected instead, so the queue's own dead-letter exchange
/// takes it (without our reason): it never loops.
async fn dead_letter(
    channel: &Channel,
    topology: &Topology,
    delivery: &Delivery,
    reason: &str,
    attempts: u32,
) -> bool {
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
        Ok(Ok(confirm)) if confirm.is_ack() => true,
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
            false
        }
    }
}
