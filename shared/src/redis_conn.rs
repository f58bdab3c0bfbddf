//! One connection type for both ways of running Redis: a single server (with replicas or not)
//! or Redis Cluster (`REDIS_CLUSTER=true`). Both reconnect by themselves and connect lazily, so a
//! process can start, and report not-ready, while Redis is down.
//!
//! The keyspace ([`crate::keys`]) is the same for both: every script's keys share one hash tag,
//! so whatever runs on one server runs unchanged on a cluster.

use std::time::Duration;

use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
};

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The longest wait between a single server connection's reconnect attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// A single server's connection that reconnects by itself after Redis restarts; a call made while
/// Redis is unreachable fails within `timeout` instead of hanging.
pub fn single(client: &redis::Client, timeout: Duration) -> redis::RedisResult<RedisConn> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(RECONNECT_MAX_DELAY);
    ConnectionManager::new_lazy_with_config(client.clone(), config).map(RedisConn::Single)
}

/// A Redis Cluster connection from its seed nodes. It follows the cluster's slot map, refreshes
/// it on MOVED (after a failover, say), and retries a command a few times within `timeout` per
/// attempt.
pub fn cluster(
    nodes: Vec<redis::ConnectionInfo>,
    certificates: Option<redis::TlsCertificates>,
    timeout: Duration,
) -> redis::RedisResult<RedisConn> {
    let mut builder = redis::cluster::ClusterClient::builder(nodes)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(3)
        .min_retry_wait(100)
        .max_retry_wait(1_000);
    if let Some(certificates) = certificates {
        builder = builder.certs(certificates);
    }
    let config = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout);
    let client = builder.build()?;
    Ok(RedisConn::Cluster(
        client.get_pending_async_connection_with_config(config),
    ))
}
