//! otp-dispatcher: the process that consumes send jobs from RabbitMQ and delivers them with
//! the `otp-delivery` library on Redis. No job is lost (at-least-once), and a ledger suppresses
//! duplicates (docs/design.md, "Delivery guarantees").
//!
//! # Layout
//! - [`config`]: every setting, read from the environment by clap (`otp-dispatcher --help`);
//!   the delivery groups come from `otp_delivery::settings`.
//! - [`startup`]: `Application::build` wires the parts; `run_until` handles graceful shutdown.
//! - [`agreement`]: whether this dispatcher's shared settings agree with the API's; it does
//!   not consume while they differ.
//! - [`consumer`]: the AMQP `JobSource`: connection, prefetch, one task per delivery,
//!   reconnects; acks, rejects and dead-letter copies (the only module that does).
//! - [`acks`]: the consumer's acks, sent in batches (`multiple`) over runs of finished jobs.
//! - [`events`]: the `sent` and `failed` verification events, on the consumer's channel.
//! - [`depths`]: the queue-depth gauges, exported by one dispatcher per queue (a Redis lease).
//! - [`dlq`]: reading, replaying and removing dead letters in RabbitMQ (`DeadLetters`).
//! - [`cli`]: operator subcommands: `dlq list | replay | purge`, `healthcheck`.
//! - [`webhooks`]: verification events delivered as signed POSTs (EVENTS_WEBHOOK_URL).
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.

pub mod acks;
pub mod agreement;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod depths;
pub mod dlq;
pub mod events;
pub mod health;
pub mod startup;
pub mod webhooks;
