//! Integration tests of otp-api against the real Redis and RabbitMQ on this machine.

mod helpers;

mod callers;
mod cancel;
mod captcha;
mod conformance;
mod connections;
mod cors;
mod demo;
mod docs;
mod events;
mod fraud;
mod hardening;
mod http;
mod idempotency;
mod limits;
mod locales;
mod metrics;
mod process;
mod pumping;
mod reports;
mod request;
mod resilience;
mod tls;
mod verdict;
mod verify;
