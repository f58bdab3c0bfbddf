//! Where verification events go ([`otp_shared::events`]): RabbitMQ's `otp.events` exchange
//! (the [`crate::queue::AmqpPublisher`]), or the console in the one-process mode. Emitting never
//! waits and never fails the request: a publish that is not confirmed is counted
//! (`otp_events_failed_total`) and logged.

use otp_shared::events::Event;

/// The event seam.
pub trait Events: Send + Sync {
    /// Publishes `event` in the background.
    fn emit(&self, event: Event);
}

/// The one-process mode: each event as a JSON line on standard output.
pub struct ConsoleEvents;

impl Events for ConsoleEvents {
    fn emit(&self, event: Event) {
        println!("[event] {}", String::from_utf8_lossy(&event.to_json()));
    }
}
