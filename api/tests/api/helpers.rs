//! `spawn_app()` and the typed helpers every API test uses.

use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use otp_api::{config::Config, startup::Application};
use otp_shared::job::{JobContent, SendJob};
use otp_testkit::{Cleanup, eventually, wait_for};

pub use otp_api::testing::api_config;
pub use otp_testkit::{AMQP_URL, job_key};
pub use otp_testkit::{redis_cluster, redis_url};
pub const PHONE: &str = "+14155552671";

/// A config isolated to one test: its own key prefix and queue, limits off unless a test
/// turns them on.
pub fn test_config() -> Config {
    let id = Uuid::new_v4().simple().to_string();
    api_config(&format!("test:{id}:"), &format!("test.sms.{id}"))
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub config: Config,
    pub redis: otp_shared::redis_conn::RedisConn,
    pub channel: lapin::Channel,
    _amqp: lapin::Connection,
    _cleanup: Cleanup,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

/// Starts the app with a tweaked config and waits until it is ready.
pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let app = spawn_unready(tweak).await;
    app.wait_ready().await;
    app
}

/// Starts the app without waiting for its dependencies (for tests where they are down).
pub async fn spawn_unready(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    tweak(&mut config);
    start(config).await
}

/// Starts an app with exactly `config` (several apps may share one key prefix and queue, like
/// API replicas) and waits until it is ready.
pub async fn spawn_config(config: Config) -> TestApp {
    let app = start(config).await;
    app.wait_ready().await;
    app
}

async fn start(config: Config) -> TestApp {
    otp_shared::telemetry::init_for_tests("otp-api-test");
    let app = Application::build(config.clone())
        .await
        .expect("app builds");
    let base = format!("http://{}", app.addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    // A test that pins the app to the single server (a proxy in front of it) looks and cleans
    // up there too.
    let redis_url = match config.redis.redis_cluster {
        true => redis_url(),
        false => otp_testkit::SINGLE_REDIS_URL.to_owned(),
    };
    let redis = otp_testkit::redis_conn_to(&redis_url);
    let amqp = otp_shared::amqp::connect(AMQP_URL, "otp-api-test")
        .await
        .expect("test RabbitMQ connection");
    let channel = amqp.create_channel().await.expect("test channel");
    let cleanup = Cleanup {
        redis_url,
        key_prefix: config.redis.redis_key_prefix.clone(),
        amqp_url: AMQP_URL.into(),
        queue: config.amqp.sms_queue.clone(),
    };
    TestApp {
        base,
        client: reqwest::Client::new(),
        config,
        redis,
        channel,
        _amqp: amqp,
        _cleanup: cleanup,
        shutdown: Some(tx),
    }
}

impl TestApp {
    pub async fn wait_ready(&self) {
        let ready = eventually(Duration::from_secs(10), || async {
            let response = self.client.get(format!("{}/readyz", self.base)).send();
            response.await.is_ok_and(|r| r.status() == StatusCode::OK)
        });
        assert!(ready.await, "the app did not become ready");
    }

    pub fn prefix(&self) -> &str {
        &self.config.redis.redis_key_prefix
    }

    pub fn queue(&self) -> &str {
        &self.config.amqp.sms_queue
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn request_otp(&self, phone: &str) -> Response {
        self.post_json("/api/otp/request", &json!({ "phoneNumber": phone }))
            .await
    }

    pub async fn verify(&self, phone: &str, otp: &str) -> Response {
        self.post_json(
            "/api/otp/verify",
            &json!({ "phoneNumber": phone, "otp": otp }),
        )
        .await
    }

    /// Takes the next send job off the test queue and opens it, as the dispatcher would.
    pub async fn next_job(&self) -> (SendJob, JobContent) {
        let (_, job, content) = self.next_delivery().await;
        (job, content)
    }

    /// Like `next_job`, with the message's AMQP properties (headers).
    pub async fn next_delivery(&self) -> (lapin::BasicProperties, SendJob, JobContent) {
        let message = wait_for(Duration::from_secs(3), || async {
            let get = BasicGetOptions { no_ack: true };
            let got = self.channel.basic_get(self.queue().into(), get).await;
            got.expect("basic.get")
        });
        let message = message.await.expect("a send job was queued");
        let (job, content) =
            SendJob::decode(&message.delivery.data, &job_key()).expect("job decodes");
        (message.delivery.properties, job, content)
    }

    /// Requests a code for `phone` and returns it (read from the queued job).
    pub async fn issue_code(&self, phone: &str) -> String {
        let resp = self.request_otp(phone).await;
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "{:?}",
            resp.text().await
        );
        self.next_job().await.1.code
    }

    pub async fn queued_jobs(&self) -> u32 {
        let declare = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(self.queue().into(), declare, Default::default())
            .await
            .expect("queue exists")
            .message_count()
    }

    /// The keys requests have written under the test's prefix (the settings fingerprint, which
    /// the API writes at start, left out).
    pub async fn redis_keys(&self) -> Vec<String> {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix()))
            .query_async(&mut self.redis.clone())
            .await
            .expect("KEYS");
        let fingerprint = self.config.redis.keys().settings_fingerprint();
        keys.into_iter().filter(|k| *k != fingerprint).collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // `_cleanup` then removes the test's keys and queues as the fields drop.
    }
}

/// Asserts status and the stable error code, returns the body.
pub async fn assert_error(resp: Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["code"], json!(code), "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}
