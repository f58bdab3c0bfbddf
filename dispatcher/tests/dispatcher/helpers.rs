//! Test harness: a dispatcher on its own queue and key prefix, a wiremock Plivo, and helpers to
//! publish jobs and watch their outcome.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{basic_auth, method, path},
};

use futures_util::future::BoxFuture;
use otp_delivery::{
    outcome::Attempt,
    sender::{SmsProvider, SmsSender},
    settings::{BreakerArgs, DeliveryArgs, ProviderArgs, RateArgs, RetryArgs},
};
use otp_dispatcher::{config::Config, startup::Application};
use otp_shared::{
    amqp::{DEAD_REASON_HEADER, Topology, header_str, job_properties},
    config::{AmqpArgs, LogFormat},
    job::SendJob,
    keys::Keys,
    phone::PhoneNumber,
    status::{self, DeliveryState, DeliveryStatus},
};
use otp_testkit::{Cleanup, eventually, wait_for};

pub use otp_testkit::{AMQP_URL, job_key};
pub use otp_testkit::{redis_cluster, redis_url};
pub const AUTH_ID: &str = "MATESTAUTHID";
pub const AUTH_TOKEN: &str = "test-auth-token";
pub const SENDER: &str = "+14155550000";
pub const TWILIO_SID: &str = "ACtest";
pub const TWILIO_TOKEN: &str = "twilio-test-token";
pub const PHONE: &str = "+14155552671";

pub fn message_path() -> String {
    format!("/v1/Account/{AUTH_ID}/Message/")
}

/// A Plivo success answer.
pub fn accepted(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(202).set_body_json(json!({
        "api_id": "test", "message": "message(s) queued", "message_uuid": [id]
    }))
}

/// Matches a well-formed, authenticated send request.
pub fn plivo_call() -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path(message_path()))
        .and(basic_auth(AUTH_ID, AUTH_TOKEN))
}

/// A Twilio message request with the test account's credentials.
pub fn twilio_call() -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path(format!(
            "/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
        )))
        .and(basic_auth(TWILIO_SID, TWILIO_TOKEN))
}

/// Twilio's answer to an accepted message.
pub fn twilio_created(sid: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({ "sid": sid, "status": "queued" }))
}

/// One test's isolated world: queue, key prefix, AMQP channel, Redis connection.
pub struct World {
    pub queue: String,
    pub prefix: String,
    pub channel: Channel,
    pub redis: otp_shared::redis_conn::RedisConn,
    _amqp: Connection,
    /// Removes this world's keys and queues when it is dropped, even after a panic.
    _cleanup: Cleanup,
}

impl World {
    /// A world on the tests' Redis (the single server, or the cluster: see
    /// `otp_testkit::CLUSTER_ENV`).
    pub async fn new() -> Self {
        Self::on(redis_url()).await
    }

    /// A world on the single local Redis server, for tests that put a proxy in front of it.
    pub async fn on_single_redis() -> Self {
        Self::on(otp_testkit::SINGLE_REDIS_URL.to_owned()).await
    }

    async fn on(redis_url: String) -> Self {
        otp_shared::telemetry::init_for_tests("otp-dispatcher-test");
        let id = Uuid::new_v4().simple().to_string();
        let amqp = otp_shared::amqp::connect(AMQP_URL, "otp-dispatcher-test")
            .await
            .expect("test RabbitMQ connection");
        let channel = amqp.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let queue = format!("test.sms.{id}");
        Topology::new(&queue)
            .declare(&amqp, &channel)
            .await
            .expect("topology");
        let redis = otp_testkit::redis_conn_to(&redis_url);
        let prefix = format!("test:{id}:");
        let world = Self {
            _cleanup: Cleanup {
                redis_url,
                key_prefix: prefix.clone(),
                amqp_url: AMQP_URL.into(),
                queue: queue.clone(),
            },
            queue,
            prefix,
            channel,
            redis,
            _amqp: amqp,
        };
        world
            .write_fingerprint(&world.config("http://127.0.0.1:9"))
            .await;
        world
    }

    /// Writes the settings fingerprint of `config` as the API would (this world's API runs
    /// with the dispatcher's shared settings).
    pub async fn write_fingerprint(&self, config: &Config) {
        let fingerprint = otp_shared::agreement::Fingerprint::of(
            &config.redis,
            &config.amqp,
            &config.reports,
            &config.job_encryption_key,
        );
        let _: () = redis::cmd("SET")
            .arg(self.keys().settings_fingerprint())
            .arg(fingerprint.written())
            .query_async(&mut self.redis.clone())
            .await
            .expect("SET the fingerprint");
    }

    pub fn keys(&self) -> Keys {
        Keys::new(self.prefix.clone())
    }

    pub fn config(&self, plivo: &str) -> Config {
        Config {
            redis: otp_testkit::redis_args(&self.prefix, 1000),
            amqp: AmqpArgs::new(AMQP_URL.parse().unwrap(), &self.queue),
            delivery: DeliveryArgs {
                providers: ProviderArgs {
                    sms_providers: vec![SmsProvider::Plivo],
                    plivo_auth_id: Some(AUTH_ID.into()),
                    plivo_sender_number: Some(SENDER.into()),
                    plivo_base_url: plivo.to_owned(),
                    twilio_account_sid: Some(TWILIO_SID.into()),
                    twilio_from_number: Some(SENDER.into()),
                    twilio_base_url: "http://127.0.0.1:9".into(),
                    sms_connect_timeout_ms: Some(1000),
                    sms_request_timeout_ms: Some(3000),
                    plivo_connect_timeout_ms: None,
                    plivo_request_timeout_ms: None,
                },
                retry: RetryArgs {
                    retry_min_delay_ms: 20,
                    retry_max_delay_ms: 200,
                    retry_after_cap_seconds: 1,
                    failover_after_retries: 2,
                    job_lease_seconds: 2,
                },
                breaker: BreakerArgs {
                    breaker_failures: 5,
                    breaker_failure_ratio: 0.5,
                    breaker_min_calls: 20,
                    breaker_window_seconds: 60,
                    breaker_cooldown_seconds: 30,
                },
                rate: RateArgs::new(1000),
            },
            job_encryption_key: job_key(),
            dispatcher_concurrency: 16,
            dispatcher_http_port: 0,
            reports: otp_shared::config::ReportArgs {
                plivo_auth_token: Some(AUTH_TOKEN.to_owned().into()),
                sms_status_callback_url: None,
                twilio_auth_token: Some(TWILIO_TOKEN.to_owned().into()),
                twilio_status_callback_url: None,
                resend_on_undelivered: true,
            },
            webhooks: otp_delivery::webhook::WebhookArgs {
                events_webhook_url: None,
                events_webhook_secret: None,
                events_webhook_max_age_hours: 24,
                events_enabled: true,
            },
            process: otp_shared::config::ProcessArgs {
                app_env: otp_shared::config::AppEnv::Development,
                log_format: LogFormat::Pretty,
                shutdown_grace_seconds: 5,
                worker_threads: 1,
            },
        }
    }

    /// A sealed job for `phone`, valid for `valid_for`.
    pub fn job(&self, phone: &str, code: &str, valid_for: time::Duration) -> SendJob {
        let now = OffsetDateTime::now_utc();
        SendJob::seal(
            &job_key(),
            Uuid::new_v4(),
            &PhoneNumber::parse(phone).unwrap(),
            code,
            "Your code is {code}",
            now,
            now + valid_for,
        )
    }

    /// Publishes a job the way the API does: delivery record `queued` first, then the message.
    pub async fn publish(&self, job: &SendJob) {
        status::record(
            &mut self.redis.clone(),
            &self.keys(),
            job.verification_id,
            DeliveryState::Queued,
            0,
            &[],
        )
        .await
        .expect("queued record");
        self.publish_unannounced(job).await;
    }

    /// Publishes a job without its delivery record, as after the API withdrew it.
    pub async fn publish_unannounced(&self, job: &SendJob) {
        self.publish_raw(
            &job.to_bytes(),
            job_properties(&job.job_id.to_string(), FieldTable::default()),
        )
        .await;
    }

    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "job not queued"
        );
    }

    pub async fn status(&self, verification_id: Uuid) -> Option<DeliveryStatus> {
        status::load(&mut self.redis.clone(), &self.keys(), verification_id)
            .await
            .expect("status")
    }

    /// Publishes a job for `phone` valid for five minutes and waits for its final state.
    pub async fn send_one(&self, phone: &str, code: &str) -> (SendJob, DeliveryStatus) {
        let job = self.job(phone, code, time::Duration::minutes(5));
        self.publish(&job).await;
        let status = self
            .final_status(job.verification_id, Duration::from_secs(10))
            .await;
        (job, status)
    }

    /// Waits until a verification reaches a final delivery state.
    pub async fn final_status(&self, verification_id: Uuid, within: Duration) -> DeliveryStatus {
        let status = wait_for(within, || async {
            let status = self.status(verification_id).await;
            status.filter(|s| matches!(s.state.as_str(), "sent" | "failed" | "expired"))
        });
        let status = status.await;
        status.unwrap_or_else(|| panic!("no final state within {within:?}"))
    }

    /// Takes one dead letter: (body, reason header).
    pub async fn dead_letter(&self, within: Duration) -> (Vec<u8>, Option<String>) {
        let dead = Topology::new(&self.queue).dead_queue;
        let taken = wait_for(within, || async {
            let get = BasicGetOptions { no_ack: true };
            let got = self.channel.basic_get(dead.as_str().into(), get).await;
            let msg = got.expect("basic.get")?;
            let reason = header_str(&msg.delivery.properties, DEAD_REASON_HEADER);
            Some((msg.delivery.data, reason))
        });
        let taken = taken.await;
        taken.unwrap_or_else(|| panic!("nothing was dead-lettered within {within:?}"))
    }

    /// The dispatcher's ledger entry for a job, once it has one.
    pub async fn outcome(&self, job: &SendJob, within: Duration) -> String {
        let key = self.keys().job_outcome(job.verification_id, job.job_id);
        let value = wait_for(within, || async {
            let get = redis::cmd("GET").arg(&key).to_owned();
            get.query_async(&mut self.redis.clone()).await.expect("GET")
        });
        let value: Option<String> = value.await;
        value.unwrap_or_else(|| panic!("no outcome within {within:?}"))
    }

    /// The real `otp-dispatcher` binary configured for this world, in a clean environment and a
    /// directory without `.env`, so only what the test sets counts.
    pub fn process(&self, plivo: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_otp-dispatcher"));
        cmd.env_clear()
            .current_dir(std::env::temp_dir())
            .env("REDIS_URL", redis_url())
            .env("REDIS_CLUSTER", redis_cluster().to_string())
            .env("REDIS_KEY_PREFIX", &self.prefix)
            .env("AMQP_URL", AMQP_URL)
            .env("SMS_QUEUE", &self.queue)
            .env("PLIVO_AUTH_ID", AUTH_ID)
            .env("PLIVO_AUTH_TOKEN", AUTH_TOKEN)
            .env("PLIVO_SENDER_NUMBER", SENDER)
            .env("PLIVO_BASE_URL", plivo)
            .env("JOB_ENCRYPTION_KEY", STANDARD.encode([42u8; 32]))
            .env("DISPATCHER_HTTP_PORT", "0")
            .env("LOG_FORMAT", "json")
            // The tests' keys are fixed bytes, which production refuses.
            .env("APP_ENV", "development")
            .kill_on_drop(true);
        cmd
    }

    /// A queue of this test's own bound to every verification event; returns its name.
    pub async fn bind_events(&self) -> String {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        let queue = format!("test.events.{}", Uuid::new_v4().simple());
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.as_str().into(), exclusive, FieldTable::default())
            .await
            .expect("events queue");
        self.channel
            .queue_bind(
                queue.as_str().into(),
                otp_shared::events::EXCHANGE.into(),
                "verification.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("events binding");
        queue
    }

    /// The events of `verification_id` on `queue` (bound by [`World::bind_events`]), in order,
    /// once one of type `last` has come or 5 s have passed.
    pub async fn events_of(
        &self,
        queue: &str,
        verification_id: Uuid,
        last: &str,
    ) -> Vec<serde_json::Value> {
        use lapin::options::BasicGetOptions;
        let mut events: Vec<serde_json::Value> = Vec::new();
        for _ in 0..50 {
            while let Ok(Some(message)) = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
            {
                let event: serde_json::Value =
                    serde_json::from_slice(&message.delivery.data).expect("an event is JSON");
                if event["verificationId"] == verification_id.to_string().as_str() {
                    events.push(event);
                }
            }
            if events.iter().any(|e| e["type"] == last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        events
    }

    /// Messages ready in the queue (not counting unacked ones).
    pub async fn ready_messages(&self) -> u32 {
        let declare = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(self.queue.as_str().into(), declare, FieldTable::default())
            .await
            .expect("queue")
            .message_count()
    }
}

/// A dispatcher running in this process.
pub struct Running {
    pub health: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A fresh world with one dispatcher sending to `plivo`.
pub async fn start(plivo: &MockServer) -> (World, Running) {
    let world = World::new().await;
    let dispatcher = spawn_dispatcher(world.config(&plivo.uri())).await;
    (world, dispatcher)
}

pub async fn spawn_dispatcher(config: Config) -> Running {
    let running = launch_dispatcher(config).await;
    running.wait_ready().await;
    running
}

/// A dispatcher started without waiting for it to be ready.
pub async fn launch_dispatcher(config: Config) -> Running {
    let app = Application::build(config).await.expect("dispatcher builds");
    let health = app.health_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    Running {
        health,
        stop: Some(tx),
        task: Some(task),
    }
}

impl Running {
    /// Jobs this dispatcher has decided (`otp_jobs_total`, every result): once a job is counted,
    /// it makes no further provider call.
    pub async fn jobs_handled(&self) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.health))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        otp_testkit::metric_sum(&text, "otp_jobs_total") as u64
    }

    /// Waits until this dispatcher has decided `jobs` jobs in all; fails on more or on a timeout.
    /// What tests wait on before checking that nothing else happened.
    pub async fn wait_handled(&self, jobs: u64) {
        let reached = eventually(Duration::from_secs(10), || async {
            self.jobs_handled().await >= jobs
        })
        .await;
        let handled = self.jobs_handled().await;
        assert!(
            reached && handled == jobs,
            "{handled} jobs handled, not {jobs}"
        );
    }

    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("http://{}/readyz", self.health))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// `/readyz`'s status and body.
    pub async fn readiness(&self) -> (u16, String) {
        let answer = reqwest::get(format!("http://{}/readyz", self.health))
            .await
            .expect("the health port answers");
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    /// The value of one series of this dispatcher's /metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.health))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        otp_testkit::metric_value(&text, series)
    }

    pub async fn wait_ready(&self) {
        let ready = eventually(Duration::from_secs(10), || async {
            self.readyz().await == 200
        });
        assert!(ready.await, "dispatcher did not become ready");
    }

    /// Graceful stop, as on SIGTERM; returns once the dispatcher has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("dispatcher task")
                .expect("dispatcher run");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The `dst` of every request the fake Plivo received.
pub async fn destinations(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["dst"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// An in-process provider: accepts every number but `refused` (a permanent failure, as for a
/// 400 about the number) and remembers what it accepted.
#[derive(Default)]
pub struct Recorder {
    pub sent: Mutex<Vec<(String, String)>>,
    pub refused: Option<&'static str>,
}

/// The reason [`Recorder`] gives for a refused number.
pub const REFUSED_REASON: &str = "the test provider refuses this number";

impl Recorder {
    pub fn refusing(number: &'static str) -> Arc<Self> {
        Arc::new(Self {
            refused: Some(number),
            ..Self::default()
        })
    }

    /// The (destination, text) pairs accepted so far.
    pub fn sent(&self) -> Vec<(String, String)> {
        self.sent.lock().unwrap().clone()
    }
}

impl SmsSender for Recorder {
    fn name(&self) -> &'static str {
        "plivo"
    }

    fn send<'a>(&'a self, destination: &'a str, text: &'a str) -> BoxFuture<'a, Attempt> {
        let attempt = if self.refused == Some(destination) {
            Attempt::Fail {
                reason: REFUSED_REASON.into(),
            }
        } else {
            let mut sent = self.sent.lock().unwrap();
            sent.push((destination.to_owned(), text.to_owned()));
            Attempt::Sent {
                provider_id: Some(format!("mem-{}", sent.len())),
            }
        };
        Box::pin(async move { attempt })
    }
}

/// Waits until the API at `base` answers /readyz with 200 (within 10 s).
pub async fn wait_api_ready(http: &reqwest::Client, base: &str) {
    let ready = eventually(Duration::from_secs(10), || async {
        let response = http.get(format!("{base}/readyz")).send().await;
        response.is_ok_and(|r| r.status() == 200)
    });
    assert!(ready.await, "the API at {base} did not become ready");
}
