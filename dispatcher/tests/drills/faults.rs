//! Fault drills (the benchmark suite's scenario 5): under steady load, with two dispatchers, a
//! dispatcher is killed with SIGKILL, RabbitMQ is restarted, and Redis is restarted. Each drill
//! reports requests accepted, SMS delivered, lost and duplicated, 5xx seen by clients, and the
//! seconds to recover with nobody acting, and fails if anything was lost or sent twice.
//!
//! `DRILL_ROUNDS` (default 1) repeats each drill; `DRILL_LOAD_SECONDS` (default 4) is the load
//! before and after the fault. `tools/bench.sh faults` runs 3 rounds on release builds; CI runs
//! the one-round smoke version (tools/test.sh --cluster).

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use otp_testkit::{Cleanup, SINGLE_REDIS_URL};

use crate::support::{Load, Outcome, Plivo, Stack, eventually};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn rounds() -> u32 {
    env_number("DRILL_ROUNDS", 1)
}

fn load_time() -> Duration {
    Duration::from_secs(env_number("DRILL_LOAD_SECONDS", 4).into())
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When each number's first SMS arrived, polled from the fake provider.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<HashMap<String, Instant>>>);

impl Arrivals {
    fn watch(plivo: Arc<Plivo>) -> (Self, tokio::task::JoinHandle<()>) {
        let arrivals = Self::default();
        let seen = arrivals.clone();
        let task = tokio::spawn(async move {
            loop {
                let sends = plivo.sends().await;
                let now = Instant::now();
                {
                    let mut seen = seen.0.lock().unwrap();
                    for number in sends.into_keys() {
                        seen.entry(number).or_insert(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        (arrivals, task)
    }

    fn at(&self, number: &str) -> Option<Instant> {
        self.0.lock().unwrap().get(number).copied()
    }
}

/// What one drill saw.
struct Report {
    accepted: usize,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    server_errors: usize,
    /// Answers other than 202 and 503 (a 500, a timeout, no answer).
    unexpected: usize,
    recovery: Duration,
}

impl Report {
    fn print(&self, drill: &str, round: u32) {
        println!(
            "DRILL {drill} round {round}: {} accepted, {} SMS delivered, {} lost, {} duplicated, {} 5xx, recovered in {:.1} s",
            self.accepted,
            self.delivered,
            self.lost,
            self.duplicated,
            self.server_errors,
            self.recovery.as_secs_f64()
        );
    }
}

/// Counts what happened to `outcomes`, waiting up to `settle` for the SMS still due, then
/// until the queue is drained (so a late duplicate would be counted).
async fn tally(stack: &Stack, outcomes: &[Outcome], plivo: &Plivo, settle: Duration) -> Report {
    let accepted: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == Some(202)).collect();
    eventually(settle, || async {
        let sends = plivo.sends().await;
        accepted.iter().all(|o| sends.contains_key(&o.number))
    })
    .await;
    stack.wait_drained(settle).await;
    let sends = plivo.sends().await;
    Report {
        accepted: accepted.len(),
        delivered: sends.values().sum(),
        lost: accepted
            .iter()
            .filter(|o| !sends.contains_key(&o.number))
            .count(),
        duplicated: sends.values().filter(|n| **n > 1).map(|n| n - 1).sum(),
        server_errors: outcomes
            .iter()
            .filter(|o| o.status.is_none_or(|s| s >= 500))
            .count(),
        unexpected: outcomes
            .iter()
            .filter(|o| !matches!(o.status, Some(202 | 503)))
            .count(),
        recovery: Duration::ZERO,
    }
}

/// The time from `from` to the first request accepted after it.
fn first_accepted_after(outcomes: &[Outcome], from: Instant) -> Duration {
    outcomes
        .iter()
        .filter(|o| o.status == Some(202) && o.at > from)
        .map(|o| o.at - from)
        .min()
        .unwrap_or(Duration::MAX)
}

fn assert_clean(report: &Report, allow_5xx: bool) {
    assert_eq!(report.lost, 0, "accepted requests whose SMS never came");
    assert_eq!(report.duplicated, 0, "SMS sent more than once");
    assert!(
        allow_5xx || report.server_errors == 0,
        "5xx seen by clients"
    );
    assert_eq!(report.unexpected, 0, "answers other than 202 and 503");
    assert!(report.accepted > 0, "the load was accepted at all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts RabbitMQ and kills processes: tools/test.sh --cluster runs it alone"]
async fn faults_lose_and_duplicate_no_sms() {
    for round in 1..=rounds() {
        killed_dispatcher(round).await;
        rabbitmq_restart(round).await;
        redis_restart(round).await;
    }
}

/// The benchmark suite's scenario 4: the provider answers 503 to everything for
/// `DRILL_OUTAGE_SECONDS` (default 10) under steady load (20 requests/s), then recovers. Codes
/// live 300 s, far longer than the outage, so none expires: every accepted request's SMS must
/// arrive exactly once. The backlog drains at the `SMS_MAX_RPS` cap (50 here) after the
/// limiter's one-second burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a long drill: tools/test.sh --cluster runs it alone"]
async fn a_provider_outage_drains_at_the_cap_and_loses_nothing() {
    const CAP: f64 = 50.0;
    let outage = Duration::from_secs(env_number("DRILL_OUTAGE_SECONDS", 10).into());
    let mut stack = Stack::new(SINGLE_REDIS_URL);
    // Short breaker cooldown and retry ceiling, so the drain starts soon after the provider is
    // back and what is measured is the drain itself.
    stack.env = vec![
        ("SMS_MAX_RPS".into(), CAP.to_string()),
        ("BREAKER_COOLDOWN_SECONDS".into(), "5".into()),
        ("RETRY_MAX_DELAY_MS".into(), "5000".into()),
    ];
    let _cleanup = cleanup(&stack, SINGLE_REDIS_URL);
    let plivo = Arc::new(Plivo::start().await);
    let (arrivals, watcher) = Arrivals::watch(plivo.clone());
    let running = stack.start(AMQP_URL, AMQP_URL, &plivo).await;
    let load = Load::start(&running.base, 20);
    tokio::time::sleep(load_time()).await;
    plivo.set_down(true);
    tokio::time::sleep(outage).await;
    plivo.set_down(false);
    let back_at = Instant::now();
    tokio::time::sleep(load_time()).await;
    let outcomes = load.stop().await;

    let report = tally(&stack, &outcomes, &plivo, Duration::from_secs(120)).await;
    watcher.abort();
    // The backlog: requests accepted before the provider came back and not sent by then. Its
    // drain rate is taken after the limiter's first second of burst.
    let mut backlog: Vec<Instant> = outcomes
        .iter()
        .filter(|o| o.status == Some(202) && o.at <= back_at)
        .filter_map(|o| arrivals.at(&o.number))
        .filter(|at| *at > back_at)
        .collect();
    backlog.sort();
    let first = backlog.first().copied();
    let steady: Vec<Instant> = backlog
        .iter()
        .copied()
        .filter(|at| first.is_some_and(|f| *at > f + Duration::from_secs(1)))
        .collect();
    let drain = match (steady.first(), steady.last()) {
        (Some(a), Some(b)) if *b - *a >= Duration::from_secs(2) => {
            (steady.len() - 1) as f64 / (*b - *a).as_secs_f64()
        }
        _ => 0.0,
    };
    println!(
        "DRILL provider outage of {} s: {} accepted, {} SMS delivered, {} lost, {} duplicated, {} 5xx; backlog of {} drained at {drain:.1}/s (cap {CAP}/s), starting {:.1} s after the provider came back",
        outage.as_secs(),
        report.accepted,
        report.delivered,
        report.lost,
        report.duplicated,
        report.server_errors,
        backlog.len(),
        first.map_or(0.0, |f| (f - back_at).as_secs_f64()),
    );
    assert_clean(&report, false);
    assert!(
        drain <= CAP * 1.1,
        "the drain kept to the cap: {drain:.1}/s against {CAP}/s"
    );
}

/// SIGKILL of one of two dispatchers: its unacknowledged jobs go back to the queue at once; the
/// ones it had claimed wait for their lease (JOB_LEASE_SECONDS) before the other sends them.
async fn killed_dispatcher(round: u32) {
    let stack = Stack::new(SINGLE_REDIS_URL);
    let _cleanup = cleanup(&stack, SINGLE_REDIS_URL);
    let plivo = Arc::new(Plivo::start().await);
    let (arrivals, watcher) = Arrivals::watch(plivo.clone());
    let mut running = stack.start(AMQP_URL, AMQP_URL, &plivo).await;
    let load = Load::start(&running.base, 40);
    tokio::time::sleep(load_time()).await;
    let killed_at = Instant::now();
    running.dispatchers[0].start_kill().expect("SIGKILL");
    tokio::time::sleep(load_time()).await;
    let outcomes = load.stop().await;

    let mut report = tally(&stack, &outcomes, &plivo, Duration::from_secs(40)).await;
    watcher.abort();
    // Recovered once every request accepted before the kill had its SMS.
    report.recovery = outcomes
        .iter()
        .filter(|o| o.status == Some(202) && o.at <= killed_at)
        .filter_map(|o| arrivals.at(&o.number))
        .map(|at| at.saturating_duration_since(killed_at))
        .max()
        .unwrap_or_default();
    report.print("kill -9 dispatcher", round);
    assert_clean(&report, false);
}

/// RabbitMQ stops (`rabbitmqctl stop_app`) for 3 s and starts again; the API answers 503 while
/// it cannot publish, and every process reconnects by itself.
async fn rabbitmq_restart(round: u32) {
    let stack = Stack::new(SINGLE_REDIS_URL);
    let _cleanup = cleanup(&stack, SINGLE_REDIS_URL);
    let plivo = Plivo::start().await;
    let running = stack.start(AMQP_URL, AMQP_URL, &plivo).await;
    let load = Load::start(&running.base, 40);
    tokio::time::sleep(load_time()).await;
    let broker = BrokerStopped::now().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back_at = broker.start().await;
    load.wait_accepted_after(back_at, Duration::from_secs(20))
        .await;
    tokio::time::sleep(load_time()).await;
    let outcomes = load.stop().await;

    recovered(
        &stack,
        "RabbitMQ restart",
        round,
        &outcomes,
        &plivo,
        back_at,
    )
    .await;
}

/// Stops the local broker's application, and starts it again when dropped (even after a panic),
/// so a failed drill never leaves RabbitMQ down for what runs next.
struct BrokerStopped(bool);

impl BrokerStopped {
    async fn now() -> Self {
        rabbitmqctl("stop_app").await;
        Self(true)
    }

    async fn start(mut self) -> Instant {
        rabbitmqctl("start_app").await;
        self.0 = false;
        Instant::now()
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "start_app"])
                .status();
        }
    }
}

async fn rabbitmqctl(action: &str) {
    let status = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", action])
        .stdout(Stdio::null())
        .status()
        .await
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {action}");
}

/// Redis (a server of the drill's own, with an fsync'd append-only file, as production runs it)
/// is killed with SIGKILL and started again 2 s later on the same files.
async fn redis_restart(round: u32) {
    let redis = OwnRedis::start().await;
    let stack = Stack::new(&redis.url());
    let _cleanup = cleanup(&stack, &redis.url());
    let plivo = Plivo::start().await;
    let running = stack.start(AMQP_URL, AMQP_URL, &plivo).await;
    let load = Load::start(&running.base, 40);
    tokio::time::sleep(load_time()).await;
    let mut redis = redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back_at = redis.restart().await;
    load.wait_accepted_after(back_at, Duration::from_secs(20))
        .await;
    tokio::time::sleep(load_time()).await;
    let outcomes = load.stop().await;

    recovered(&stack, "Redis restart", round, &outcomes, &plivo, back_at).await;
}

/// The end of a drill in which a dependency went away and was back at `back_at`: nothing lost
/// or sent twice, 503s only, and requests accepted again within 15 s with nobody acting.
async fn recovered(
    stack: &Stack,
    drill: &str,
    round: u32,
    outcomes: &[Outcome],
    plivo: &Plivo,
    back_at: Instant,
) {
    let mut report = tally(stack, outcomes, plivo, Duration::from_secs(40)).await;
    report.recovery = first_accepted_after(outcomes, back_at);
    report.print(drill, round);
    assert_clean(&report, true);
    assert!(
        report.recovery < Duration::from_secs(15),
        "recovered by itself"
    );
}

fn cleanup(stack: &Stack, redis_url: &str) -> Cleanup {
    Cleanup {
        redis_url: redis_url.into(),
        key_prefix: stack.prefix.clone(),
        amqp_url: AMQP_URL.into(),
        queue: stack.queue.clone(),
    }
}

/// A redis-server of the drill's own on a free port, with `appendfsync always`.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("otp-drill-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port,
            dir,
            child: None,
        };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL, as a crash would.
    fn kill(mut self) -> Self {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        self
    }

    /// Starts the server on its files; returns once it answers.
    async fn restart(&mut self) -> Instant {
        if let Some(mut old) = self.child.take() {
            let _ = old.wait().await;
        }
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        let up = eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(&address).await.is_ok()
        })
        .await;
        assert!(up, "redis-server came back");
        Instant::now()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
