//! otp-testkit: what the test suites share (a dev-dependency only, never in a release build):
//! the tests' Redis and RabbitMQ, a TCP proxy that stalls, severs or refuses, cleanup of a
//! test's keys and queues, bounded waits (`eventually`, `wait_for`), and metric readers.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use tokio::{net::TcpListener, task::AbortHandle};

use base64::{Engine, engine::general_purpose::STANDARD};
use otp_shared::{amqp::Topology, config::RedisArgs, crypto::JobKey, redis_conn::RedisConn};

/// The tests' RabbitMQ.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The job key every suite seals and opens jobs with.
pub fn job_key() -> JobKey {
    JobKey::from_base64(&STANDARD.encode([42u8; 32])).expect("test key")
}

/// The local single Redis server, for the tests that need that one (a proxy in front of it).
pub const SINGLE_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Names the nodes of a Redis Cluster (comma-separated URLs) to run the integration tests
/// against instead of the single server; `tools/test.sh --cluster` sets it to the local cluster.
pub const CLUSTER_ENV: &str = "OTP_TEST_REDIS_CLUSTER";

/// The Redis the integration tests use (see [`CLUSTER_ENV`]).
pub fn redis_url() -> String {
    std::env::var(CLUSTER_ENV).unwrap_or_else(|_| SINGLE_REDIS_URL.to_owned())
}

/// Whether the integration tests run against Redis Cluster (the REDIS_CLUSTER setting).
pub fn redis_cluster() -> bool {
    std::env::var_os(CLUSTER_ENV).is_some()
}

/// Settings for the tests' Redis, with `prefix`.
pub fn redis_args(prefix: &str, timeout_ms: u64) -> RedisArgs {
    redis_args_for(&redis_url(), prefix, timeout_ms)
}

fn redis_args_for(url: &str, prefix: &str, timeout_ms: u64) -> RedisArgs {
    RedisArgs {
        redis_url: Some(url.to_owned().into()),
        redis_cluster: std::env::var(CLUSTER_ENV).is_ok_and(|c| c == url),
        redis_key_prefix: prefix.to_owned(),
        redis_timeout_ms: timeout_ms,
        ..RedisArgs::default()
    }
}

/// A connection to the tests' Redis, for looking at and arranging its keys.
pub fn redis_conn() -> RedisConn {
    redis_conn_to(&redis_url())
}

/// A connection to `url`: the tests' cluster if it is that, else one server.
pub fn redis_conn_to(url: &str) -> RedisConn {
    redis_args_for(url, "", 2000)
        .connect()
        .expect("test Redis connection")
}

/// A TCP proxy in front of Redis or RabbitMQ, so a test can simulate a restart of the real
/// server for its own connections only: `sever` drops every live connection, `refuse` makes new
/// ones fail until `accept` is called again, and `stall` holds every byte in flight (a server
/// that stopped answering) until `resume`.
#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    live: Arc<Mutex<Vec<AbortHandle>>>,
    refusing: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let live: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let (live2, refusing2, stalled2) = (live.clone(), refusing.clone(), stalled.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if refusing2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let stalled = stalled2.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::select! {
                            _ = pump(in_read, out_write, stalled.clone()) => {}
                            _ = pump(out_read, in_write, stalled) => {}
                        }
                    }
                });
                live2.lock().expect("proxy lock").push(task.abort_handle());
            }
        });
        Self {
            addr,
            live,
            refusing,
            stalled,
        }
    }

    /// Holds all traffic: connections stay open but nothing gets through.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Lets held traffic through again.
    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Drops every proxied connection, as a server restart would.
    pub fn sever(&self) {
        for task in self.live.lock().expect("proxy lock").drain(..) {
            task.abort();
        }
    }

    /// Severs and refuses new connections: the server is "down".
    pub fn refuse(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.sever();
    }

    /// The server is "back".
    pub fn accept(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

/// Copies bytes one way, holding them while `stalled`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Removes a test's Redis keys and AMQP topology when dropped, so even a test that panicked
/// leaves nothing behind.
pub struct Cleanup {
    pub redis_url: String,
    pub key_prefix: String,
    pub amqp_url: String,
    pub queue: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup_blocking(
            self.redis_url.clone(),
            self.key_prefix.clone(),
            self.amqp_url.clone(),
            self.queue.clone(),
        );
    }
}

/// Removes a test's Redis keys and AMQP topology. Runs on its own thread and runtime, so it can
/// be called from `Drop` even when the test panicked.
pub fn cleanup_blocking(redis_url: String, key_prefix: String, amqp_url: String, queue: String) {
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        runtime.block_on(async move {
            if let Ok(mut conn) = redis_args_for(&redis_url, "", 2000).connect() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{key_prefix}*"))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: redis::RedisResult<i64> =
                        redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
            }
            if let Ok(conn) = otp_shared::amqp::connect(&amqp_url, "otp-test-cleanup").await
                && let Ok(channel) = conn.create_channel().await
            {
                let topology = Topology::new(&queue);
                for q in [&topology.queue, &topology.dead_queue] {
                    let _ = channel
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = channel
                    .exchange_delete(
                        topology.dead_exchange.as_str().into(),
                        ExchangeDeleteOptions::default(),
                    )
                    .await;
                let _ = conn.close(200, "done".into()).await;
            }
        });
    });
    let _ = worker.join();
}

/// Polls `check` every 25 ms until it holds or `within` has passed; returns whether it held.
/// Tests wait with this, never with a fixed sleep.
pub async fn eventually<F, Fut>(within: std::time::Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(within, std::time::Duration::from_millis(25), check).await
}

/// [`eventually`], polling every `every` (for checks that cost more).
pub async fn poll_until<F, Fut>(
    within: std::time::Duration,
    every: std::time::Duration,
    mut check: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let found = poll_for(within, every, || {
        let checked = check();
        async move { checked.await.then_some(()) }
    });
    found.await.is_some()
}

/// Polls `attempt` every 25 ms until it gives a value or `within` has passed.
pub async fn wait_for<T, F, Fut>(within: std::time::Duration, attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_for(within, std::time::Duration::from_millis(25), attempt).await
}

async fn poll_for<T, F, Fut>(
    within: std::time::Duration,
    every: std::time::Duration,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        tokio::time::sleep(every).await;
    }
    attempt().await
}

/// The value of one series (its name with labels, as exposed) in Prometheus text; panics when
/// the series is absent.
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a numeric sample"))
        })
        // A missing series is a renamed metric or label, never a zero.
        .unwrap_or_else(|| panic!("no series {series} in the exposition:\n{exposition}"))
}

/// The sum of every series of the metric `name`, whatever their labels; panics when there is
/// none.
pub fn metric_sum(exposition: &str, name: &str) -> f64 {
    let values: Vec<f64> = exposition
        .lines()
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| *series == name || series.starts_with(&format!("{name}{{")))
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .collect();
    assert!(!values.is_empty(), "no series of {name} in the exposition");
    values.iter().sum()
}

/// What of a Prometheus exposition `doc` does not name: each family (without the histogram
/// suffixes), each label name and each label value, as `name`, `name{label}` and
/// `name{label="value"}`. A value counts as named when it appears in backquotes, alone or
/// within a list; so a doc that lists every value passes, and a renamed or new one fails.
/// The values of `version` and `revision` name a build, and are not checked.
pub fn undocumented_metrics(exposition: &str, doc: &str) -> Vec<String> {
    let named =
        |text: &str| doc.contains(&format!("`{text}`")) || doc.contains(&format!("`{text}{{"));
    let mut missing = std::collections::BTreeSet::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, _)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| exposition.contains(&format!("# TYPE {f} histogram")))
            .unwrap_or(name);
        if !named(family) {
            missing.insert(family.to_owned());
        }
        for pair in labels
            .trim_end_matches('}')
            .split("\",")
            .filter(|p| !p.is_empty())
        {
            let Some((label, value)) = pair.split_once("=\"") else {
                continue;
            };
            let value = value.trim_end_matches('"');
            if label == "le" {
                continue;
            }
            if !doc.contains(&format!("{family}{{")) || !doc.contains(label) {
                missing.insert(format!("{family}{{{label}}}"));
            }
            // A build's `version` and `revision` (otp_build_info) are not a fixed set.
            let open = ["version", "revision"].contains(&label);
            if !open && !doc.contains(&format!("`{value}`")) {
                missing.insert(format!("{family}{{{label}=\"{value}\"}}"));
            }
        }
    }
    missing.into_iter().collect()
}

/// Runs each check against both backends of a seam, the one way every conformance suite does:
/// `shared::check` with the backend `$shared()` builds (Redis or RabbitMQ: what every process
/// shares), and `in_memory::check` with `$memory()`'s on tokio's paused clock (waiting out a
/// TTL takes no time). Each check is `async fn check(backend)`, taking the backend by value;
/// the two constructors are async functions of the test module.
///
/// ```ignore
/// otp_testkit::conformance!(shared: on_redis, in_memory: in_memory; a_rule, another_rule);
/// ```
#[macro_export]
macro_rules! conformance {
    (shared: $shared:ident, in_memory: $memory:ident; $($check:ident),* $(,)?) => {
        mod shared {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::$shared().await).await;
                }
            )*
        }
        mod in_memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $check() {
                    super::$check(super::$memory().await).await;
                }
            )*
        }
    };
}
