//! Node-loss drills against local clusters: the real otp-api and two real otp-dispatchers under
//! steady request load, a fake Plivo (wiremock) counting every SMS, and nodes stopped and
//! restarted underneath them. Every accepted request's SMS must arrive exactly once.
//!
//! These need the clusters that `tools/rabbitmq-cluster.sh` and `tools/redis-cluster.sh` start,
//! so they are ignored by a plain `cargo test`; `tools/test.sh --cluster` (what CI runs) starts
//! the clusters, runs them with `--ignored`, and stops the clusters again.

mod rabbitmq;
mod redis_cluster;
mod support;
