//! The dispatcher's verification events (`sent`, `failed`), published to `otp.events` on the
//! consumer's confirm-mode channel while it has one. A publish runs in a task of its own; one
//! that is not confirmed in time (or finds no channel) is counted in `otp_events_failed_total`
//! and logged, and never holds up the job.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use lapin::Channel;

use otp_shared::events::{Event, Events, publish_in_background};

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
        publish_in_background(channel, event, CONFIRM_TIMEOUT, self.failed.clone());
    }
}
