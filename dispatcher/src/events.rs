//! The dispatcher's verification events (`sent`, `failed`), published to `otp.events` on the
//! consumer's confirm-mode channel while it has one. A publish runs in a task of its own; one
//! that is not confirmed in time (or finds no channel) is counted in `otp_events_failed_total`
//! and logged, and never holds up the job.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use lapin::{Channel, options::BasicPublishOptions};

use otp_shared::events::{EXCHANGE, Event, Events};

/// How long an event's publish may wait for its confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct AmqpEvents {
    channel: Arc<RwLock<Option<Channel>>>,
    failed: prometheus::IntCounter,
}

impl AmqpEvents {
    pub fn new(failed: prometheus::IntCounter) -> Self {
        Self {
            channel: Arc::new(RwLock::new(None)),
            failed,
        }
    }

    /// The channel to publish on from now on (`None` while reconnecting).
    pub fn use_channel(&self, channel: Option<Channel>) {
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = channel;
    }
}

impl Events for AmqpEvents {
    fn emit(&self, event: Event) {
        let channel = self
            .channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let failed = self.failed.clone();
        tokio::spawn(async move {
            let published = async {
                let channel = channel?;
                let properties = lapin::BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(event.id.to_string().into());
                let confirm = channel
                    .basic_publish(
                        EXCHANGE.into(),
                        event.routing_key().as_str().into(),
                        BasicPublishOptions::default(),
                        &event.to_json(),
                        properties,
                    )
                    .await
                    .ok()?
                    .await
                    .ok()?;
                confirm.is_ack().then_some(())
            };
            let confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, published).await;
            if !matches!(confirmed, Ok(Some(()))) {
                failed.inc();
                tracing::warn!(
                    event = event.kind.as_str(),
                    "a verification event was not published"
                );
            }
        });
    }
}
