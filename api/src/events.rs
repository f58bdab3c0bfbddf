//! Where verification events go ([`otp_shared::events`]): RabbitMQ's `otp.events` exchange
//! (the [`crate::queue::AmqpPublisher`]), or in the one-process mode the console and, with
//! EVENTS_WEBHOOK_URL, the webhook ([`EmbeddedEvents`]). Emitting never waits and never fails
//! the request: a publish that is not confirmed is counted (`otp_events_failed_total`) and
//! logged.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use otp_delivery::webhook::{WebhookArgs, WebhookSender};
use otp_shared::events::Event;
pub use otp_shared::events::Events;

/// Events waiting for the one-process mode's webhook; beyond it new ones are dropped (and
/// logged): the mode is for trying the service, and memory stays bounded.
const WEBHOOK_BACKLOG: usize = 10_000;

/// The one-process mode's events: printed, and delivered in order to EVENTS_WEBHOOK_URL (when
/// set) by a task of their own, with the dispatcher's signing and retries.
pub struct EmbeddedEvents {
    webhook: Option<mpsc::Sender<Vec<u8>>>,
}

impl EmbeddedEvents {
    pub fn start(args: &WebhookArgs, stop: CancellationToken) -> anyhow::Result<Self> {
        let webhook = WebhookSender::from_args(args)?.map(|sender| {
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WEBHOOK_BACKLOG);
            tokio::spawn(async move {
                loop {
                    let body = tokio::select! {
                        _ = stop.cancelled() => return,
                        body = rx.recv() => match body {
                            Some(body) => body,
                            None => return,
                        },
                    };
                    sender.deliver(&body, &stop).await;
                }
            });
            tx
        });
        Ok(Self { webhook })
    }
}

impl Events for EmbeddedEvents {
    fn emit(&self, event: Event) {
        let body = event.to_json();
        println!("[event] {}", String::from_utf8_lossy(&body));
        if let Some(webhook) = &self.webhook
            && webhook.try_send(body).is_err()
        {
            tracing::warn!(
                event = event.kind.as_str(),
                "webhook backlog full; event dropped"
            );
        }
    }
}
