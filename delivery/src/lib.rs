//! otp-delivery: the SMS delivery pipeline as a library. A [`worker::Worker`] takes one send
//! job from any [`source::JobSource`] to the provider: decode, claim in the ledger, wait for a
//! send slot, send with retries and failover, record the outcome, and say how to settle the
//! message. No job is lost (at-least-once) and the ledger suppresses duplicates
//! (docs/design.md, "Delivery guarantees"). `otp-dispatcher` runs it on Redis and RabbitMQ;
//! `otp-api --embedded` runs it in process memory.
//!
//! # Layout
//! - [`settings`]: the delivery settings as clap groups a binary flattens (providers, retry,
//!   breaker, rate), and what they build (senders, retry policy, breaker settings).
//! - [`worker`]: one job end to end, whatever brought it; returns what to do with the message
//!   (`Settle`). `Worker::on_redis` and `Worker::in_memory` wire its backends.
//! - [`source`]: the queue's consuming side as a seam: `JobSource` (deliver jobs to the worker,
//!   settle them), `DeadLetters` (list what was given up on) with the `DeadLetter` they list,
//!   and `serve` (run one with a shutdown grace period).
//! - [`memory_queue`]: send jobs through process memory: the in-memory `JobSource` and
//!   `DeadLetters`.
//! - [`outcome`]: `Attempt` (one provider call) and `Final` (a job), and how they settle.
//! - [`retry`]: `RetryPolicy` (capped exponential backoff, full jitter) and the retry loop.
//! - [`router`]: which provider a job's next attempt goes to (preference, breakers, failover).
//! - [`breaker`]: the per-provider circuit breaker; its state behind `BreakerStore`: in Redis,
//!   shared by every dispatcher, or in memory.
//! - [`ledger`]: the idempotency ledger (job leases and outcomes) behind `SendLedger`: in Redis,
//!   shared by every dispatcher, or in memory.
//! - [`limiter`]: the SMS_MAX_RPS rate (GCRA reservations) behind `SendRate`: in Redis,
//!   shared by every dispatcher, or in memory.
//! - [`records`]: the delivery record and the code's liveness, as the worker sees them
//!   (`JobRecords`): in Redis or in memory.
//! - [`sender`]: the `SmsSender` trait every provider implements, and `SmsProvider`.
//! - [`plivo`]: the Plivo Message API client, its `SmsSender`, and status-code classification.
//! - [`twilio`]: the Twilio Messages API client, the second provider.
//! - [`console`]: an SMS sink printing to standard output, for trying the service by hand.
//! - [`metrics`]: the delivery's Prometheus metrics (`DeliveryMetrics`).
//! - [`webhook`]: verification events as signed POSTs (`WebhookSender`), with retries.

pub mod breaker;
pub mod console;
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
pub mod settings;
pub mod source;
pub mod twilio;
pub mod webhook;
pub mod worker;
