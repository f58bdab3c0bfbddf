//! What otp-api and otp-dispatcher must agree on.
//!
//! # Layout
//! - [`agreement`]: the fingerprint of the settings both binaries must agree on.
//! - [`phone`]: `PhoneNumber` (E.164, parsed once at the edge) and `CountryCode`.
//! - [`backend`]: `Unavailable`, the backend-neutral error of the seams.
//! - [`crypto`]: base64 key decoding and the AES-256-GCM `JobKey`.
//! - [`job`]: the send-job contract (`SendJob` envelope + sealed `JobContent`).
//! - [`amqp`]: queue topology (`Topology`) and AMQP header conventions.
//! - [`events`]: verification events (the `otp.events` exchange's messages).
//! - [`ids`]: random UUIDs without a system call each.
//! - [`keyring`]: key lists for rotation (`id:base64,...`) and the weak-key check.
//! - [`keys`]: the Redis keyspace of both binaries.
//! - [`ledger`]: how a send job ended (`JobOutcome`), as the ledger stores it.
//! - [`memory`]: delivery records in process memory, with what delivery reports need (message
//!   ids, kept jobs, single-use marks), shared by the in-memory backends.
//! - [`metrics`]: Prometheus registration helpers and the text exposition.
//! - [`status`]: delivery state records (queued → sending → sent / failed / expired), their
//!   field names, and the Lua prelude of every script that touches one.
//! - [`settings`]: secrets from `<NAME>_FILE`, and `config check`.
//! - [`config`]: settings read the same way by both binaries (Redis location, log format).
//! - [`telemetry`]: tracing setup and trace-context propagation through AMQP headers.
//! - [`urls`]: AMQP and Redis URLs, checked at start-up, never shown with their password.
//! - [`probe`]: the `healthcheck` self-probe of both binaries.
//! - [`redis_conn`]: `RedisConn`, one connection type for a single Redis and Redis Cluster.
//! - [`supervise`]: the RabbitMQ reconnect loop and the `/readyz` rule of both binaries.
//! - [`shutdown`]: SIGINT / SIGTERM handling.

pub mod agreement;
pub mod amqp;
pub mod backend;
pub mod config;
pub mod crypto;
pub mod events;
pub mod ids;
pub mod job;
pub mod keyring;
pub mod keys;
pub mod ledger;
pub mod memory;
pub mod metrics;
pub mod phone;
pub mod probe;
pub mod redis_conn;
pub mod settings;
pub mod shutdown;
pub mod status;
pub mod supervise;
pub mod telemetry;
pub mod urls;
