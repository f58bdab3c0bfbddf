//! Integration tests of otp-dispatcher against the real RabbitMQ and Redis, with an in-process
//! fake Plivo (wiremock) whose exact expectations catch any duplicate send.

mod helpers;

mod agreement;
mod compose;
mod delivery;
mod dlq;
mod end_to_end;
mod failover;
mod failures;
mod in_memory;
mod kubernetes;
mod layout;
mod ledger;
mod limiter;
mod metrics;
mod operations;
mod process;
mod queues;
mod records;
mod resend;
mod rotation;
mod traces;
mod webhooks;
