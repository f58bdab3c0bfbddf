//! otp-api: issues SMS one-time passwords and verifies them.
//!
//! # Layout
//! - [`config`]: every setting, read from the environment by clap (`otp-api --help`).
//! - [`startup`]: `Application::build` wires config into the service (Redis and RabbitMQ, or
//!   memory with `--embedded`) and the HTTP server, and starts the background tasks (the
//!   conversion gauge, the manual-block watch).
//! - [`routes`]: HTTP handlers (poem-openapi), thin translations to [`service`].
//! - [`server`]: the HTTP server (hyper) with header, write, idle, age and connection bounds.
//! - [`templates`]: the SMS texts by language, and how a request's locale is chosen.
//! - [`sms_text`]: the SMS text with autofill lines, and its segment count.
//! - [`service`]: the use cases: request a code, verify it, read delivery state.
//! - [`code`]: code generation, HMAC digests and constant-time checks.
//! - [`store`]: the store's role traits (`CodeStore`, `IdempotencyStore`, `ReportStore`,
//!   `ResendStore`, `FraudStore`; `Stores` holds one backend's), its Redis implementation (Lua
//!   scripts beside it) and the same rules in memory (`MemoryStore`), kept in step by one
//!   conformance suite; `rules` holds what both apply alike.
//! - [`embedded`]: the one-process mode (`--embedded`): every backend in memory, a
//!   dispatcher in the same process, SMS printed to the console.
//! - [`openapi`]: the published OpenAPI document, completed with the live constraints.
//! - [`queue`]: the `JobQueue` trait, the RabbitMQ publisher with confirms and reconnects, and
//!   the in-memory queue of the embedded mode.
//! - [`events`]: where verification events go (RabbitMQ's `otp.events`, or the console).
//! - [`error`]: `ApiError`, the stable error codes and their HTTP statuses.
//! - [`fraud`]: the fraud guard's settings and destination prefixes (accounting is in Lua).
//! - [`metrics`]: the Prometheus metrics served at `/metrics`.
//! - [`middleware`]: request ids, body limit, access log, framework-error mapping.
//! - [`callbacks`]: Plivo and Twilio delivery reports (signatures, replays, forward-only
//!   states, the one resend), over the code store.
//! - [`cli`]: operator subcommands: `healthcheck`, `config check`, `fraud list | block | unblock`.
//! - [`captcha`]: the CAPTCHA check before any SMS for callers without a key.
//! - [`callers`]: caller keys (API_KEYS, PUBLIC_API): who may call the OTP routes.
//! - [`client_ip`]: the client address behind trusted proxies.
//! - [`cors`]: CORS for the OTP routes (CORS_ALLOWED_ORIGINS).
//! - [`verdict`]: the signed verify token (JWT, EdDSA) and the JWKS that checks it.
//! - `testing` (feature `test-support`, dev-dependencies only): the API's settings for tests.

pub mod callbacks;
pub mod callers;
pub mod captcha;
pub mod cli;
pub mod client_ip;
pub mod code;
pub mod config;
pub mod cors;
pub mod embedded;
pub mod error;
pub mod events;
pub mod fraud;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod queue;
pub mod routes;
pub mod server;
pub mod service;
pub mod sms_text;
pub mod startup;
pub mod store;
pub mod templates;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod verdict;
