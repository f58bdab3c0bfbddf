//! Verification events delivered to the app as webhooks (EVENTS_WEBHOOK_URL;
//! [`otp_delivery::webhook`]): a queue of its own (`<SMS_QUEUE>.events.webhook`) bound to
//! `otp.events`, consumed one event at a time. At least once: an event is acked only after a
//! 2xx; when it is too old it is moved to `<queue>.dead`. One at a time per dispatcher keeps one
//! dispatcher's events in order, retries included; with several dispatchers, events of one
//! verification can arrive out of order (use `occurredAt`).

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;

use otp_delivery::webhook::{WebhookArgs, WebhookSender};
use otp_shared::{events::EXCHANGE, urls::AmqpUrl};

/// The first reconnect's delay; each next one doubles, up to 30 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The webhook queue of `sms_queue`'s deployment.
pub fn queue_name(sms_queue: &str) -> String {
    format!("{sms_queue}.events.webhook")
}

pub struct Webhooks {
    sender: WebhookSender,
    queue: String,
}

impl Webhooks {
    /// The webhooks EVENTS_WEBHOOK_URL asks for; `None` without it.
    pub fn from_args(args: &WebhookArgs, sms_queue: &str) -> anyhow::Result<Option<Self>> {
        Ok(WebhookSender::from_args(args)?.map(|sender| Self {
            sender,
            queue: queue_name(sms_queue),
        }))
    }

    /// Delivers events until `stop`, reconnecting with backoff when the broker goes away.
    pub async fn run(self, amqp: AmqpUrl, stop: CancellationToken) {
        let mut wait = FIRST_BACKOFF;
        while !stop.is_cancelled() {
            match self.session(&amqp, &stop).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "webhook delivery interrupted"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    async fn session(&self, amqp: &AmqpUrl, stop: &CancellationToken) -> anyhow::Result<()> {
        let connection = otp_shared::amqp::connect_url(amqp, "otp-dispatcher-webhooks")
            .await
            .context("connecting for webhooks")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        let dead = format!("{}.dead", self.queue);
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        for queue in [&self.queue, &dead] {
            channel
                .queue_declare(queue.as_str().into(), durable, FieldTable::default())
                .await
                .with_context(|| format!("declaring {queue}"))?;
        }
        channel
            .queue_bind(
                self.queue.as_str().into(),
                EXCHANGE.into(),
                "verification.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // One at a time: a retried event holds the ones after it, which keeps their order.
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        let mut deliveries = channel
            .basic_consume(
                self.queue.as_str().into(),
                "otp-webhooks".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.queue, "delivering events to the webhook");
        loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = deliveries.next() => match next {
                    Some(delivery) => delivery?,
                    None => anyhow::bail!("the broker cancelled the webhook consumer"),
                },
            };
            if self.sender.deliver(&delivery.data, stop).await {
                delivery.ack(BasicAckOptions::default()).await?;
            } else if !stop.is_cancelled() {
                dead_letter(&channel, &dead, &delivery.data).await?;
                delivery.ack(BasicAckOptions::default()).await?;
            } else {
                return Ok(());
            }
        }
    }
}

/// Moves an event to the webhook's dead-letter queue, confirmed.
async fn dead_letter(channel: &Channel, dead: &str, body: &[u8]) -> anyhow::Result<()> {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            "".into(),
            dead.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    anyhow::ensure!(
        confirm.is_ack(),
        "the dead-letter publish was not confirmed"
    );
    Ok(())
}
