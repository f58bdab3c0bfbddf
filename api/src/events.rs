//! Where verification events go ([`otp_shared::events`]): RabbitMQ's `otp.events` exchange
//! (the [`crate::queue::AmqpPublisher`]), or the console in the one-process mode. Emitting never
//! waits and never fails the request: a publish that is not confirmed is counted
//! (`otp_events_failed_total`) and logged.

pub use otp_shared::events::{ConsoleEvents, Events};
