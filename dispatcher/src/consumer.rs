//! The RabbitMQ side: one connection, a confirm-mode channel with prefetch
//! DISPATCHER_CONCURRENCY, one task per delivery; reconnects with backoff whenever the broker
//! goes away.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::{
    Channel, Connection,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use otp_shared::amqp::{Topology, connect};

use crate::worker::Worker;

pub struct Consumer {
    pub url: SecretString,
    pub topology: Topology,
    pub concurrency: u16,
    pub worker: Arc<Worker>,
    /// True while consuming; read by /readyz.
    pub connected: Arc<AtomicBool>,
}

impl Consumer {
    /// Consumes until `stop` fires, then cancels the consumer and hands back the connection,
    /// which must stay open until in-flight jobs have acked.
    pub async fn run(
        self,
        stop: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) -> Option<Connection> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times();
        let mut delays = backoff.build();
        let tag = format!("otp-dispatcher-{}", uuid::Uuid::new_v4());
        loop {
            let opened = tokio::select! {
                _ = stop.cancelled() => return None,
                opened = self.open(&tag) => opened,
            };
            match opened {
                Ok((connection, channel, mut deliveries)) => {
                    tracing::info!(queue = %self.topology.queue, concurrency = self.concurrency, "consuming");
                    self.connected.store(true, Ordering::SeqCst);
                    delays = backoff.build();
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => {
                                self.connected.store(false, Ordering::SeqCst);
                                let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                                let _ = tokio::time::timeout(Duration::from_secs(2), cancel).await;
                                tracing::info!("stopped consuming");
                                return Some(connection);
                            }
                            next = deliveries.next() => match next {
                                Some(Ok(delivery)) => {
                                    let (worker, channel, abort) = (self.worker.clone(), channel.clone(), abort.clone());
                                    tracker.spawn(async move { worker.handle(&channel, delivery, abort).await });
                                }
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "lost the RabbitMQ connection; reconnecting");
                                    break;
                                }
                                None => {
                                    tracing::warn!("the broker cancelled the consumer; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                    self.connected.store(false, Ordering::SeqCst);
                    let close = connection.close(200, "reconnecting".into());
                    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                }
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot consume from RabbitMQ; retrying"
                ),
            }
            // Endless iterator (`without_max_times`); the fallback only satisfies the type.
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn open(&self, tag: &str) -> anyhow::Result<(Connection, Channel, lapin::Consumer)> {
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            connect(self.url.expose_secret(), "otp-dispatcher"),
        )
        .await
        .context("connecting to RabbitMQ timed out")??;
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        // Confirms make dead-letter copies safe before the original is acked.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        self.topology.declare(&channel).await?;
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
