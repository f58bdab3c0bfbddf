//! The drills' harness: both binaries as child processes, a counting fake Plivo, a steady load,
//! and the cluster scripts.

use std::{
    collections::HashMap,
    net::TcpListener,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;
use tokio::process::{Child, Command};
use wiremock::{
    Mock, MockServer, Respond, ResponseTemplate,
    matchers::{method, path},
};

pub const AUTH_ID: &str = "MACLUSTERDRILL";

/// What every process of one drill shares: its key prefix, queue and stores.
pub struct Stack {
    pub prefix: String,
    pub queue: String,
    pub redis_url: String,
    /// Extra settings for every process (REDIS_CLUSTER, say).
    pub env: Vec<(String, String)>,
    /// The RabbitMQ node `rabbitmqctl` asks about the queue (`-n`); the local one when `None`.
    pub broker_node: Option<String>,
}

impl Stack {
    pub fn new(redis_url: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("test:{id}:"),
            queue: format!("test.drill.{id}"),
            redis_url: redis_url.into(),
            env: Vec::new(),
            broker_node: None,
        }
    }

    /// Messages of this stack's queue the broker still holds, ready or delivered and not yet
    /// acked; `None` when it cannot tell.
    pub async fn messages_left(&self) -> Option<u64> {
        let mut cmd = Command::new("rabbitmqctl");
        if let Some(node) = &self.broker_node {
            cmd.args(["-n", node]);
        }
        cmd.args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ]);
        let out = cmd.output().await.ok()?;
        let listing = String::from_utf8_lossy(&out.stdout);
        listing.lines().find_map(|line| {
            let (name, count) = line.split_once('\t')?;
            (name.trim() == self.queue).then(|| count.trim().parse().ok())?
        })
    }

    /// Waits until every copy of every job has been settled (acked after its send, or skipped
    /// by the ledger): from then on nothing more can be sent, so the provider's count is final.
    pub async fn wait_drained(&self, within: Duration) {
        let drained = eventually(within, || async { self.messages_left().await == Some(0) });
        assert!(
            drained.await,
            "{} still holds messages after {within:?}",
            self.queue
        );
    }

    fn common(&self, cmd: &mut Command, amqp_url: &str) {
        cmd.env_clear()
            .current_dir(std::env::temp_dir())
            .env("REDIS_URL", &self.redis_url)
            .env("REDIS_KEY_PREFIX", &self.prefix)
            .env("AMQP_URL", amqp_url)
            .env("SMS_QUEUE", &self.queue)
            .env("JOB_ENCRYPTION_KEY", STANDARD.encode([42u8; 32]))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            // The drills' keys are fixed bytes, which production refuses.
            .env("APP_ENV", "development")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .kill_on_drop(true);
    }

    /// otp-api on a free port with every limit off, so only the drill decides what fails.
    pub async fn api(&self, amqp_url: &str) -> (Child, String) {
        let port = free_port();
        let mut cmd = Command::new(binary("otp-api"));
        self.common(&mut cmd, amqp_url);
        cmd.env("PORT", port.to_string())
            .env("ADMIN_PORT", "0")
            .env("DRAIN_SECONDS", "0")
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("OTP_HMAC_KEY", STANDARD.encode([7u8; 32]))
            .env("RESEND_COOLDOWN_SECONDS", "0")
            .env("MAX_SENDS_PER_NUMBER_PER_HOUR", "0")
            .env("MAX_REQUESTS_PER_IP_PER_MINUTE", "0")
            .env("MAX_VERIFIES_PER_IP_PER_MINUTE", "0")
            .env("FRAUD_GUARD", "off")
            // Last, so a drill's own settings (`env`) win.
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd.spawn().expect("otp-api starts");
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base).await;
        (child, base)
    }

    /// otp-dispatcher sending to `plivo`, uncapped.
    pub async fn dispatcher(&self, amqp_url: &str, plivo: &str) -> Child {
        self.dispatcher_on(free_port(), amqp_url, plivo).await
    }

    /// otp-dispatcher with its health and metrics port on `port`.
    pub async fn dispatcher_on(&self, port: u16, amqp_url: &str, plivo: &str) -> Child {
        let mut cmd = Command::new(binary("otp-dispatcher"));
        self.common(&mut cmd, amqp_url);
        cmd.env("DISPATCHER_HTTP_PORT", port.to_string())
            .env("PLIVO_AUTH_ID", AUTH_ID)
            .env("PLIVO_AUTH_TOKEN", "drill-token")
            .env("PLIVO_SENDER_NUMBER", "+14155550000")
            .env("PLIVO_BASE_URL", plivo)
            .env("SMS_MAX_RPS", "10000")
            // Last, so a drill's own settings (`env`) win.
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd.spawn().expect("otp-dispatcher starts");
        wait_ready(&format!("http://127.0.0.1:{port}")).await;
        child
    }
}

/// otp-api and two otp-dispatchers, as every drill runs them; killed when dropped.
pub struct Running {
    /// The API's base URL.
    pub base: String,
    pub dispatchers: [Child; 2],
    _api: Child,
}

impl Stack {
    /// Starts otp-api on `api_amqp` and two dispatchers on `dispatcher_amqp`, sending to
    /// `plivo`, and waits until all three are ready.
    pub async fn start(&self, api_amqp: &str, dispatcher_amqp: &str, plivo: &Plivo) -> Running {
        let (api, base) = self.api(api_amqp).await;
        let dispatchers = [
            self.dispatcher(dispatcher_amqp, &plivo.uri()).await,
            self.dispatcher(dispatcher_amqp, &plivo.uri()).await,
        ];
        Running {
            base,
            dispatchers,
            _api: api,
        }
    }
}

/// A workspace binary, built beside this test by `cargo test --workspace` (tools/test.sh).
fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run tools/test.sh --cluster so it is built",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(base: &str) {
    let http = reqwest::Client::new();
    let ready = otp_testkit::poll_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let response = http.get(format!("{base}/readyz")).send().await;
            response.is_ok_and(|r| r.status() == 200)
        },
    );
    assert!(ready.await, "{base} did not become ready within 30 s");
}

/// A fake Plivo that accepts everything at once (or answers 503 to everything while `down`),
/// and keeps every SMS it accepted.
pub struct Plivo {
    server: MockServer,
    state: Arc<PlivoState>,
}

#[derive(Default)]
struct PlivoState {
    down: AtomicBool,
    /// (destination without the `+`, the code it carries), in order of acceptance.
    accepted: Mutex<Vec<(String, String)>>,
}

struct Answer(Arc<PlivoState>);

impl Respond for Answer {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        if self.0.down.load(Ordering::SeqCst) {
            return ResponseTemplate::new(503);
        }
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let dst = body["dst"].as_str().unwrap().trim_start_matches('+');
        let code = body["text"].as_str().unwrap().chars();
        let code = code.filter(char::is_ascii_digit).collect();
        self.0.accepted.lock().unwrap().push((dst.to_owned(), code));
        ResponseTemplate::new(202).set_body_json(json!({
            "api_id": "drill", "message": "message(s) queued",
            "message_uuid": [uuid::Uuid::new_v4().to_string()]
        }))
    }
}

impl Plivo {
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        let state = Arc::new(PlivoState::default());
        Mock::given(method("POST"))
            .and(path(format!("/v1/Account/{AUTH_ID}/Message/")))
            .respond_with(Answer(state.clone()))
            .mount(&server)
            .await;
        Self { server, state }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// While down, every call gets a 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Every SMS accepted: (destination number without the `+`, the code it carries).
    pub async fn messages(&self) -> Vec<(String, String)> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// SMS accepted, by destination number (without the `+`).
    pub async fn sends(&self) -> HashMap<String, usize> {
        let mut sends = HashMap::new();
        for (dst, _) in self.messages().await {
            *sends.entry(dst).or_default() += 1;
        }
        sends
    }
}

/// One request of the load: its number (digits only), and what the client saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub number: String,
    /// The HTTP status, or `None` when the request got no answer.
    pub status: Option<u16>,
    /// The `verificationId` of an accepted request.
    pub verification_id: Option<String>,
    /// When the request was sent.
    pub sent: Instant,
    /// When its answer came.
    pub at: Instant,
}

/// Requests for new numbers at a steady rate, one number per request, until stopped.
pub struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(base: &str, per_second: u32) -> Self {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("{base}/api/otp/request");
        let (outcomes2, stop2) = (outcomes.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
            let mut requests = tokio::task::JoinSet::new();
            for i in 0u32.. {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let number = format!("1415555{:04}", i % 10_000);
                let (http, url, outcomes) = (http.clone(), url.clone(), outcomes2.clone());
                requests.spawn(async move {
                    let sent = Instant::now();
                    let response = http
                        .post(url)
                        .json(&json!({ "phoneNumber": format!("+{number}") }))
                        .send()
                        .await;
                    let at = Instant::now();
                    let (status, verification_id) = match response {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            let vid = body["verificationId"].as_str().map(str::to_owned);
                            (Some(status), vid)
                        }
                        Err(_) => (None, None),
                    };
                    outcomes.lock().unwrap().push(Outcome {
                        number,
                        status,
                        verification_id,
                        sent,
                        at,
                    });
                });
            }
            while requests.join_next().await.is_some() {}
        });
        Self {
            outcomes,
            stop,
            task,
        }
    }

    /// Waits until a request sent after `from` is accepted, or `within` has passed.
    pub async fn wait_accepted_after(&self, from: Instant, within: Duration) {
        eventually(within, || async {
            let outcomes = self.outcomes.lock().unwrap();
            outcomes
                .iter()
                .any(|o| o.status == Some(202) && o.at > from)
        })
        .await;
    }

    /// Stops sending and returns every request's outcome once all have answered.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.cancel();
        self.task.await.unwrap();
        Arc::try_unwrap(self.outcomes)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// Runs a cluster script (`tools/<script>`) with `args`, failing the test if it fails.
pub async fn cluster(script: &str, args: &[&str]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools")
        .join(script);
    let status = Command::new("bash")
        .arg(path)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .await
        .expect("cluster script runs");
    assert!(status.success(), "{script} {args:?} failed");
}

/// Polls `check` every 200 ms (drill checks read every request the fake provider saw) until it
/// holds or `within` has passed; returns whether it held.
pub async fn eventually<F, Fut>(within: Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    otp_testkit::poll_until(within, Duration::from_millis(200), check).await
}

/// Checks a drill's outcome: only 202 and (for requests sent inside `windows`) 503 answers; every accepted
/// number's SMS sent exactly once; no number's SMS sent twice. Returns (accepted, 503s).
pub async fn assert_exactly_once(
    stack: &Stack,
    outcomes: &[Outcome],
    plivo: &Plivo,
    windows: &[(Instant, Instant)],
) -> (usize, usize) {
    let accepted: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == Some(202)).collect();
    let unavailable: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == Some(503)).collect();
    let other: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !matches!(o.status, Some(202 | 503)))
        .collect();
    assert!(
        other.is_empty(),
        "answers other than 202 and 503: {other:?}"
    );
    // A request sent inside a window may be answered after it (its confirm timed out).
    for o in &unavailable {
        assert!(
            windows
                .iter()
                .any(|(from, to)| o.sent <= *to && o.at >= *from),
            "a 503 outside the node-loss windows: {o:?}"
        );
    }
    let all_sent = eventually(Duration::from_secs(60), || async {
        let sends = plivo.sends().await;
        accepted.iter().all(|o| sends.contains_key(&o.number))
    })
    .await;
    stack.wait_drained(Duration::from_secs(30)).await;
    let sends = plivo.sends().await;
    let missing: Vec<&str> = accepted
        .iter()
        .filter(|o| !sends.contains_key(&o.number))
        .map(|o| o.number.as_str())
        .collect();
    assert!(
        all_sent && missing.is_empty(),
        "{} accepted requests never got their SMS: {missing:?}",
        missing.len()
    );
    let twice: Vec<(&String, &usize)> = sends.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "SMS sent more than once: {twice:?}");
    (accepted.len(), unavailable.len())
}
