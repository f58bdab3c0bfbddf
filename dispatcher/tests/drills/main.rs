//! Drills: the real otp-api and two real otp-dispatchers under steady request load, a fake
//! Plivo (wiremock) counting every SMS, and something breaking underneath them: a node of a
//! RabbitMQ cluster or of a Redis Cluster, a dispatcher killed, RabbitMQ or Redis restarted.
//! Every accepted request's SMS must arrive exactly once. One more drill watches the stack
//! from a real Prometheus: an alert fires and resolves, and the dashboard's queries run
//! (`tools/test.sh` runs that one with or without `--cluster`: it needs no cluster).
//!
//! They need the local clusters (`tools/rabbitmq-cluster.sh`, `tools/redis-cluster.sh`) or
//! restart the local RabbitMQ, so they are ignored by a plain `cargo test`; `tools/test.sh
//! --cluster` (what CI runs) starts the clusters, runs them one at a time with `--ignored`,
//! and stops the clusters again. `tools/bench.sh faults` runs the fault drills longer.

mod faults;
mod prometheus;
mod rabbitmq_cluster;
mod redis_cluster;
mod support;
