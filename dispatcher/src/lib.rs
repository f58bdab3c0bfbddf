//! otp-dispatcher: consumes send jobs and delivers them through Plivo. No job is lost
//! (at-least-once), and a ledger suppresses duplicates (docs/design.md, "Delivery guarantees").
//!
//! # Layout
//! - [`breaker`]: the per-provider circuit breaker; its state behind `BreakerStore`: in Redis,
//!   shared by every dispatcher, or in memory.
//! - [`router`]: which provider a job's next attempt goes to (preference, breakers, failover).
//! - [`cli`]: operator subcommands: `dlq list | replay | purge`, `healthcheck`.
//! - [`dlq`]: reading, replaying and removing dead letters in RabbitMQ (`DeadLetters`).
//! - [`config`]: every setting, read from the environment by clap (`otp-dispatcher --help`).
//! - [`startup`]: `Application::build` wires the parts; `run_until` handles graceful shutdown.
//! - [`source`]: the queue's consuming side as a seam: `JobSource` (deliver jobs to the worker,
//!   settle them), `DeadLetters` (list what was given up on) with the `DeadLetter` they list,
//!   and `serve` (run one with a shutdown grace period).
//! - [`consumer`]: the AMQP `JobSource`: connection, prefetch, one task per delivery,
//!   reconnects; acks, rejects and dead-letter copies (the only module that does).
//! - [`worker`]: one job end to end, whatever brought it: decode, claim, send with retries,
//!   record; returns what to do with the message (`Settle`).
//! - [`outcome`]: `Attempt` (one provider call) and `Final` (a job), and how they map to acks.
//! - [`retry`]: `RetryPolicy` (capped exponential backoff, full jitter) and the retry loop.
//! - [`sender`]: the `SmsSender` trait every provider implements.
//! - [`twilio`]: the Twilio Messages API client, the second provider.
//! - [`plivo`]: the Plivo Message API client, its `SmsSender`, and status-code classification.
//! - [`ledger`]: the idempotency ledger (job leases and outcomes) behind `SendLedger`: in Redis,
//!   shared by every dispatcher, or in memory.
//! - [`records`]: the delivery record and the code's liveness, as the worker sees them
//!   (`JobRecords`): in Redis or in memory.
//! - [`memory_queue`]: send jobs through process memory: the in-memory `JobSource` and
//!   `DeadLetters`.
//! - [`console`]: an SMS sink printing to standard output, for trying the service by hand.
//! - [`limiter`]: the PLIVO_MAX_RPS rate (GCRA reservations) behind `SendRate`: in Redis,
//!   shared by every dispatcher, or in memory.
//! - [`metrics`]: the Prometheus metrics served at `/metrics`.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.

pub mod breaker;
pub mod cli;
pub mod config;
pub mod console;
pub mod consumer;
pub mod dlq;
pub mod health;
pub mod ledger;
pub mod limiter;
pub mod memory_queue;
pub mod metrics;
pub mod outcome;
pub mod plivo;
pub mod records;
pub mod retry;
pub mod router;
pub mod sender;
pub mod source;
pub mod startup;
pub mod twilio;
pub mod worker;
