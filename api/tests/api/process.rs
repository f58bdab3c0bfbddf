//! The real `otp-api` binary: start-up validation and signal handling.

use std::{process::Stdio, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};

use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{ChildStdout, Command},
};

use otp_shared::job::SendJob;
use otp_testkit::Cleanup;

use crate::helpers::{AMQP_URL, PHONE, job_key, redis_cluster, redis_url};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The binary in a clean environment and a directory without `.env`, with its own queue and key
/// prefix; the returned guard removes them when the test ends.
pub fn otp_api() -> (Command, Cleanup) {
    let queue = format!("test.sms.{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("test:{queue}:");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-api"));
    cmd.env_clear()
        .current_dir(std::env::temp_dir())
        .env("REDIS_URL", redis_url())
        .env("REDIS_CLUSTER", redis_cluster().to_string())
        .env("REDIS_KEY_PREFIX", &prefix)
        .env("AMQP_URL", AMQP_URL)
        .env("SMS_QUEUE", &queue)
        .env("PORT", "0")
        .env("ADMIN_PORT", "0")
        .env("DRAIN_SECONDS", "0")
        .env("OTP_HMAC_KEY", KEY)
        .env("JOB_ENCRYPTION_KEY", STANDARD.encode([42u8; 32]))
        // The tests' keys are fixed bytes, which production refuses.
        .env("APP_ENV", "development")
        .kill_on_drop(true);
    let cleanup = Cleanup {
        redis_url: redis_url(),
        key_prefix: prefix,
        amqp_url: AMQP_URL.into(),
        queue,
    };
    (cmd, cleanup)
}

#[tokio::test]
async fn missing_or_bad_settings_stop_the_process_naming_the_variable() {
    for (var, value) in [
        ("OTP_HMAC_KEY", None),
        ("OTP_HMAC_KEY", Some("c2hvcnQ=")),
        ("JOB_ENCRYPTION_KEY", Some("not base64!")),
        ("OTP_LENGTH", Some("4")),
        ("OTP_VALIDITY_SECONDS", Some("900")),
        ("ALLOWED_COUNTRIES", Some("US,ZZ")),
        ("PORT", Some("http")),
        ("LOG_FORMAT", Some("xml")),
        (
            "AMQP_URL",
            Some("amqp://otp:hunter2-secret@mq:notaport/%2f"),
        ),
        ("AMQP_URL", Some("http://otp:hunter2-secret@mq/")),
        (
            "REDIS_URL",
            Some("redis://:hunter2-secret@cache:notaport/0"),
        ),
        ("REDIS_URL", Some("memcached://:hunter2-secret@cache")),
    ] {
        let (mut cmd, _cleanup) = otp_api();
        match value {
            Some(v) => cmd.env(var, v),
            None => cmd.env_remove(var),
        };
        let out = cmd.output().await.expect("otp-api runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value:?} was accepted");
        assert!(stderr.contains(var), "{var}: {stderr}");
        if let Some(secret) = value.filter(|_| var.ends_with("KEY")) {
            assert!(!stderr.contains(secret), "a secret was echoed: {stderr}");
        }
        assert!(
            !stderr.contains("hunter2"),
            "a password was echoed: {stderr}"
        );
    }
}

/// Starts the binary with JSON logs and waits for its "listening" line; returns the child, the
/// rest of its log, and its port.
pub async fn start_logged(
    cmd: &mut Command,
) -> (tokio::process::Child, Lines<BufReader<ChildStdout>>, u16) {
    let (child, lines, port, _) = start_with_admin(cmd).await;
    (child, lines, port)
}

/// [`start_logged`], with the admin port too.
pub async fn start_with_admin(
    cmd: &mut Command,
) -> (
    tokio::process::Child,
    Lines<BufReader<ChildStdout>>,
    u16,
    u16,
) {
    let (child, lines, started) = start_listening(cmd).await;
    let port = |field: &str| {
        let addr = started[field].as_str().unwrap();
        addr.parse::<std::net::SocketAddr>().unwrap().port()
    };
    (child, lines, port("addr"), port("admin"))
}

/// Starts `cmd` logging JSON, and waits for its `otp-api listening` line, which it returns.
async fn start_listening(
    cmd: &mut Command,
) -> (
    tokio::process::Child,
    Lines<BufReader<ChildStdout>>,
    serde_json::Value,
) {
    let mut child = cmd
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .spawn()
        .expect("otp-api starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("otp-api listening") {
                return serde_json::from_str(&line).unwrap();
            }
        }
        panic!("otp-api exited before listening");
    })
    .await
    .expect("otp-api did not start");
    (child, lines, started)
}

/// Waits until the API at `base` answers /readyz with 200 (its Redis and broker connections up).
async fn wait_ready(http: &reqwest::Client, base: &str) {
    let ready = otp_testkit::eventually(Duration::from_secs(5), || async {
        let ready = http.get(format!("{base}/readyz")).send().await;
        ready.is_ok_and(|r| r.status() == 200)
    });
    assert!(ready.await, "otp-api did not become ready");
}

/// SIGTERM, then [`stopped`].
async fn terminate(child: tokio::process::Child, lines: Lines<BufReader<ChildStdout>>) -> String {
    sigterm(&child).await;
    stopped(child, lines).await
}

async fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
}

/// Waits for a clean exit (within 15 s) and returns the rest of its log.
async fn stopped(
    mut child: tokio::process::Child,
    mut lines: Lines<BufReader<ChildStdout>>,
) -> String {
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within the drain and grace periods")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    rest
}

#[tokio::test]
async fn sigterm_stops_the_server_gracefully() {
    let (mut cmd, _cleanup) = otp_api();
    let (child, lines, _) = start_logged(&mut cmd).await;
    let log = terminate(child, lines).await;
    assert!(log.contains("otp-api stopped"), "{log}");
}

/// A rollout without errors: after SIGTERM, /readyz answers 503 at once while requests are
/// still served for DRAIN_SECONDS; then the process stops by itself.
#[tokio::test]
async fn sigterm_drains_not_ready_but_still_serving() {
    let (mut cmd, _cleanup) = otp_api();
    cmd.env("DRAIN_SECONDS", "2");
    let (child, lines, port) = start_logged(&mut cmd).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    sigterm(&child).await;
    let draining = otp_testkit::eventually(Duration::from_secs(1), || async {
        let ready = http.get(format!("{base}/readyz")).send().await;
        ready.is_ok_and(|r| r.status() == 503)
    });
    assert!(draining.await, "/readyz did not turn 503 at SIGTERM");
    let started = std::time::Instant::now();
    let resp = http
        .post(format!("{base}/api/otp/request"))
        .json(&serde_json::json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "a request during the drain");
    assert!(started.elapsed() < Duration::from_secs(2));
    let log = stopped(child, lines).await;
    assert!(
        log.contains("draining") && log.contains("otp-api stopped"),
        "{log}"
    );
}

#[tokio::test]
async fn logs_never_contain_a_code_or_a_whole_number() {
    let (mut cmd, cleanup) = otp_api();
    let queue = cleanup.queue.clone();
    let (child, lines, port) = start_logged(cmd.env("RUST_LOG", "debug")).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    let resp = http
        .post(format!("{base}/api/otp/request"))
        .json(&serde_json::json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    // Read the code the way the dispatcher would.
    let amqp = otp_shared::amqp::connect(AMQP_URL, "otp-api-test")
        .await
        .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    let msg = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("a queued job");
    let (_, content) = SendJob::decode(&msg.delivery.data, &job_key()).unwrap();
    for otp in [content.code.clone(), "000000".to_owned()] {
        let verify = serde_json::json!({ "phoneNumber": PHONE, "otp": otp });
        http.post(format!("{base}/api/otp/verify"))
            .json(&verify)
            .send()
            .await
            .unwrap();
    }
    let log = terminate(child, lines).await;
    assert!(log.contains("code issued"), "the log was captured: {log}");
    assert!(!log.contains(&content.code), "a code was logged");
    assert!(!log.contains(&PHONE[1..]), "a whole number was logged");
    assert!(log.contains("+1415*****71"), "numbers are logged masked");
}

/// A fraud guard block is logged with its rule and country, never with the prefix, which
/// shows more of a number (9 of 11 US digits) than the masked number does.
#[tokio::test]
async fn fraud_lines_never_reveal_more_of_a_number_than_the_mask() {
    let (mut cmd, _cleanup) = otp_api();
    cmd.env("FRAUD_GUARD", "enforce")
        .env("FRAUD_GUARD_BURST", "2")
        .env("FRAUD_GUARD_MIN_CLIENTS", "1")
        .env("FRAUD_GUARD_BLOCKED_SENDS_PER_HOUR", "0");
    let (child, lines, port) = start_logged(&mut cmd).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    let mut statuses = Vec::new();
    for n in 0..3 {
        let resp = http
            .post(format!("{base}/api/otp/request"))
            .json(&serde_json::json!({ "phoneNumber": format!("+1415555010{n}") }))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [202, 202, 403]);
    let log = terminate(child, lines).await;
    let block = log
        .lines()
        .find(|l| l.contains("\"event\":\"fraud_block\""))
        .unwrap_or_else(|| panic!("no fraud_block event: {log}"));
    assert!(block.contains("\"rule\":\"burst\""), "{block}");
    assert!(!log.contains("1415555"), "a prefix was logged: {log}");
}

#[tokio::test]
async fn production_refuses_example_weak_and_shared_keys() {
    let strong_a = "ZMRZ8+3uYnNyHVnVirnb0ZrbiLjoLe3uOZqreeRILZ4=";
    let strong_b = "fRsogpcZSVwUMCQmCeFgXxcPS2dXX4Dq1J1T7wLg4DY=";
    let example_hmac = otp_shared::keyring::EXAMPLE_KEYS[0];
    for (hmac, job, var) in [
        (example_hmac, strong_b, "OTP_HMAC_KEY"),
        (strong_a, KEY_ALL_ONE_BYTE, "JOB_ENCRYPTION_KEY"),
        (strong_a, strong_a, "must be different"),
    ] {
        let (mut cmd, _cleanup) = otp_api();
        cmd.env_remove("APP_ENV")
            .env("OTP_HMAC_KEY", hmac)
            .env("JOB_ENCRYPTION_KEY", job);
        let out = cmd.output().await.expect("otp-api runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: started");
        assert!(stderr.contains(var), "{var}: {stderr}");
        assert!(!stderr.contains(strong_a) && !stderr.contains(example_hmac));
    }
}

/// `[42; 32]`, base64.
const KEY_ALL_ONE_BYTE: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// Production starts only with real provider tokens, https callbacks and a spending ceiling.
#[tokio::test]
async fn production_refuses_example_tokens_plain_callbacks_and_no_ceiling() {
    let strong = [
        (
            "OTP_HMAC_KEY",
            "ZMRZ8+3uYnNyHVnVirnb0ZrbiLjoLe3uOZqreeRILZ4=",
        ),
        (
            "JOB_ENCRYPTION_KEY",
            "fRsogpcZSVwUMCQmCeFgXxcPS2dXX4Dq1J1T7wLg4DY=",
        ),
        ("APP_ENV", "production"),
    ];
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("MAX_SENDS_PER_HOUR", &[]),
        (
            "PLIVO_AUTH_TOKEN",
            &[
                ("MAX_SENDS_PER_HOUR", "unlimited"),
                ("PLIVO_AUTH_TOKEN", "development-token"),
            ],
        ),
        (
            "TWILIO_AUTH_TOKEN",
            &[("MAX_SENDS_PER_HOUR", "5000"), ("TWILIO_AUTH_TOKEN", "")],
        ),
        (
            "TWILIO_STATUS_CALLBACK_URL",
            &[
                ("MAX_SENDS_PER_HOUR", "5000"),
                (
                    "TWILIO_STATUS_CALLBACK_URL",
                    "http://otp.example.com/api/otp/callbacks/twilio",
                ),
            ],
        ),
    ];
    for (var, settings) in cases {
        let (mut cmd, _cleanup) = otp_api();
        cmd.envs(strong).envs(settings.iter().copied());
        let out = cmd.output().await.expect("otp-api runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: started");
        assert!(stderr.contains(var), "{var}: {stderr}");
    }
    // `0` is not a ceiling: it must be said as `unlimited`.
    let (mut cmd, _cleanup) = otp_api();
    let out = cmd.env("MAX_SENDS_PER_HOUR", "0").output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unlimited"));
}

/// Production chooses who may call: without caller keys and without PUBLIC_API=true it does not
/// start, naming both; with PUBLIC_API=true, or with a key, it does.
#[tokio::test]
async fn production_needs_caller_keys_or_public_api() {
    let production = [
        (
            "OTP_HMAC_KEY",
            "ZMRZ8+3uYnNyHVnVirnb0ZrbiLjoLe3uOZqreeRILZ4=",
        ),
        (
            "JOB_ENCRYPTION_KEY",
            "fRsogpcZSVwUMCQmCeFgXxcPS2dXX4Dq1J1T7wLg4DY=",
        ),
        ("APP_ENV", "production"),
        ("MAX_SENDS_PER_HOUR", "unlimited"),
        ("BIND_ADDRESS", "127.0.0.1"),
        (
            "TOKEN_SIGNING_KEYS",
            "k1:3q2+7wB0M6X1c9Z8aY4bT5vR2nL6pK0jH8gF1dE3cS4=",
        ),
    ];
    let (mut cmd, _cleanup) = otp_api();
    let out = cmd.envs(production).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without keys");
    assert!(
        stderr.contains("API_KEYS") && stderr.contains("PUBLIC_API"),
        "{stderr}"
    );
    let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    for (var, value) in [
        ("PUBLIC_API", "true"),
        ("API_KEYS", &*format!("web:{digest}")),
    ] {
        let (mut cmd, _cleanup) = otp_api();
        cmd.envs(production)
            .env(var, value)
            .env("ACCESS_LOG", "all");
        let (child, mut lines, port) = start_logged(&mut cmd).await;
        let healthz = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .unwrap();
        assert_eq!(healthz.status(), 200, "{var}");
        if var == "API_KEYS" {
            // The key's id is on the request's log line (the secret is `test`).
            let resp = reqwest::Client::new()
                .post(format!("http://127.0.0.1:{port}/api/otp/request"))
                .bearer_auth("test")
                .json(&serde_json::json!({ "phoneNumber": PHONE }))
                .send()
                .await
                .unwrap();
            assert_ne!(resp.status(), 401);
            let logged = tokio::time::timeout(Duration::from_secs(5), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("request finished") && line.contains("/api/otp/request") {
                        return line;
                    }
                }
                String::new()
            });
            let line = logged.await.unwrap_or_default();
            assert!(line.contains(r#""client.id":"web""#), "{line}");
        }
        drop(child);
    }
}

/// ACCESS_LOG=errors logs a 400 and not a 202; off logs neither. The lines come from the
/// writer thread, in the order the requests finished.
#[tokio::test]
async fn access_log_lines_follow_the_setting() {
    for setting in ["errors", "off"] {
        let (mut cmd, _cleanup) = otp_api();
        cmd.env("ACCESS_LOG", setting);
        let (child, mut lines, port) = start_logged(&mut cmd).await;
        let client = reqwest::Client::new();
        wait_ready(&client, &format!("http://127.0.0.1:{port}")).await;
        let url = format!("http://127.0.0.1:{port}/api/otp/request");
        for phone in [PHONE, "not a number"] {
            client
                .post(&url)
                .json(&serde_json::json!({ "phoneNumber": phone }))
                .send()
                .await
                .unwrap();
        }
        let mut logged = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("request finished") && line.contains("/api/otp/request") {
                    logged.push(line);
                }
            }
        })
        .await;
        let statuses: Vec<bool> = logged
            .iter()
            .map(|l| l.contains(r#""status":400"#))
            .collect();
        match setting {
            "errors" => assert_eq!(statuses, [true], "{logged:?}"),
            _ => assert!(logged.is_empty(), "{logged:?}"),
        }
        drop(child);
    }
}

#[tokio::test]
async fn wrong_passwords_are_never_logged_while_reconnecting() {
    let (mut cmd, _cleanup) = otp_api();
    cmd.env("RUST_LOG", "debug")
        .env("AMQP_URL", "amqp://guest:hunter2-secret@127.0.0.1:5672/%2f")
        .env("REDIS_URL", "redis://:hunter2-secret@127.0.0.1:6379/0");
    let (child, mut lines, port) = start_logged(&mut cmd).await;
    // Let it fail to connect a few times, and answer a request meanwhile.
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/otp/request"))
        .json(&serde_json::json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let mut log = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
    })
    .await;
    assert!(
        log.contains("cannot reach RabbitMQ"),
        "the broker refused the login: {log}"
    );
    assert!(!log.contains("hunter2"), "a password was logged: {log}");
    drop(child);
}

/// The binary with no settings at all, in a directory without `.env`; nothing listens at the
/// Redis and RabbitMQ addresses it is given, so a mode that needs them cannot start.
pub fn embedded_api() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-api"));
    cmd.env_clear()
        .current_dir(std::env::temp_dir())
        .env("PORT", "0")
        .env("ADMIN_PORT", "0")
        .env("DRAIN_SECONDS", "0")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .kill_on_drop(true);
    cmd
}

/// The one command of the README's quick start: with neither Redis nor RabbitMQ reachable and
/// no settings at all, a code is requested, printed by the console sink, and verifies once.
#[tokio::test]
async fn the_embedded_mode_needs_neither_redis_nor_rabbitmq_nor_settings() {
    let mut cmd = embedded_api();
    cmd.arg("--embedded");
    let (child, mut lines, port) = start_logged(&mut cmd).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let resp = http
        .post(format!("{base}/api/otp/request"))
        .json(&serde_json::json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let printed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("[console SMS") {
                return line;
            }
        }
        panic!("otp-api exited before printing the SMS");
    })
    .await
    .expect("the SMS was printed");
    assert!(!printed.contains(PHONE), "the number is masked: {printed}");
    let code: String = printed.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(code.len(), 6, "{printed}");

    let verify = |otp: String| {
        http.post(format!("{base}/api/otp/verify"))
            .json(&serde_json::json!({ "phoneNumber": PHONE, "otp": otp }))
            .send()
    };
    assert_eq!(verify(code.clone()).await.unwrap().status(), 200);
    assert_eq!(verify(code).await.unwrap().status(), 400, "used once");
    // One /metrics serves the API's families and the in-process delivery worker's.
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert_eq!(
        otp_testkit::metric_value(&metrics, r#"otp_codes_issued_total{client="public"}"#),
        1.0
    );
    assert_eq!(
        otp_testkit::metric_value(&metrics, r#"otp_jobs_total{result="sent"}"#),
        1.0
    );
    let rest = terminate(child, lines).await;
    assert!(rest.contains("otp-api stopped"), "{rest}");
}

/// `OTP_EMBEDDED=true` on a host where APP_ENV is unset stays a local trial: loopback only,
/// and no real SMS; an explicit APP_ENV=development lifts both.
#[tokio::test]
async fn an_embedded_trial_without_app_env_stays_on_this_machine() {
    let listening = |cmd: &mut Command| {
        let mut child = cmd
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        async move {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("otp-api listening") {
                    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let addr: std::net::SocketAddr =
                        event["addr"].as_str().unwrap().parse().unwrap();
                    drop(child);
                    return addr.ip();
                }
            }
            panic!("otp-api exited before listening");
        }
    };
    let mut cmd = embedded_api();
    cmd.env("OTP_EMBEDDED", "true");
    assert!(listening(&mut cmd).await.is_loopback());
    let mut cmd = embedded_api();
    cmd.env("OTP_EMBEDDED", "true")
        .env("APP_ENV", "development");
    assert!(listening(&mut cmd).await.is_unspecified());

    for (var, value) in [("BIND_ADDRESS", "0.0.0.0"), ("PLIVO_AUTH_ID", "MAEMBEDDED")] {
        let out = embedded_api()
            .env("OTP_EMBEDDED", "true")
            .env(var, value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: started");
        assert!(
            stderr.contains("APP_ENV") && stderr.contains(var),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn the_embedded_mode_refuses_production() {
    let output = Command::new(env!("CARGO_BIN_EXE_otp-api"))
        .env_clear()
        .current_dir(std::env::temp_dir())
        .env("APP_ENV", "production")
        .env("OTP_EMBEDDED", "true")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OTP_EMBEDDED"), "{stderr}");
}

/// With PLIVO_* set, the one-process mode sends through Plivo (here a mock) instead of the
/// console, still with no Redis or RabbitMQ; Plivo's signed delivery report reaches the
/// delivery record.
#[tokio::test]
async fn the_embedded_mode_sends_through_plivo_when_it_is_set() {
    use hmac::{Hmac, Mac};
    use wiremock::{
        Mock, MockServer, ResponseTemplate,
        matchers::{method, path},
    };
    const TOKEN: &str = "embedded-token";
    const CALLBACK: &str = "https://otp.example.com/api/otp/callbacks/plivo";
    let plivo = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/Account/MAEMBEDDED/Message/"))
        .respond_with(ResponseTemplate::new(202).set_body_json(serde_json::json!({
            "api_id": "t", "message": "message(s) queued", "message_uuid": ["m-embedded"]
        })))
        .expect(1)
        .mount(&plivo)
        .await;
    let mut cmd = embedded_api();
    cmd.env("OTP_EMBEDDED", "true")
        .env("APP_ENV", "development")
        .env("PLIVO_AUTH_ID", "MAEMBEDDED")
        .env("PLIVO_AUTH_TOKEN", TOKEN)
        .env("PLIVO_SENDER_NUMBER", "+14155550000")
        .env("PLIVO_BASE_URL", plivo.uri())
        .env("SMS_STATUS_CALLBACK_URL", CALLBACK);
    let (child, lines, port) = start_logged(&mut cmd).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/api/otp/request"))
        .json(&serde_json::json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let accepted: serde_json::Value = resp.json().await.unwrap();
    let status_url = format!(
        "{base}/api/otp/status/{}",
        accepted["verificationId"].as_str().unwrap()
    );
    let state = || async {
        let response = http.get(&status_url).send().await.unwrap();
        let status: serde_json::Value = response.json().await.unwrap();
        status["state"].as_str().unwrap().to_owned()
    };
    let sent = otp_testkit::eventually(Duration::from_secs(10), || async {
        state().await == "sent"
    })
    .await;
    assert!(sent, "not sent: {}", state().await);
    let request = &plivo.received_requests().await.unwrap()[0];
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["dst"], PHONE);
    assert_eq!(body["url"], CALLBACK, "Plivo is told where to report");
    let code: String = body["text"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();

    // Plivo's report, signed as Plivo signs it (V3: the URL, the parameters and the nonce).
    let params = vec![
        ("MessageUUID".to_owned(), "m-embedded".to_owned()),
        ("Status".to_owned(), "delivered".to_owned()),
    ];
    let payload = otp_api::callbacks::v3_payload(CALLBACK, &params, "n-embedded").unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    let report = http
        .post(format!("{base}/api/otp/callbacks/plivo"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "x-plivo-signature-v3",
            STANDARD.encode(mac.finalize().into_bytes()),
        )
        .header("x-plivo-signature-v3-nonce", "n-embedded")
        .body("MessageUUID=m-embedded&Status=delivered")
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200);
    assert_eq!(state().await, "delivered");

    let verified = http
        .post(format!("{base}/api/otp/verify"))
        .json(&serde_json::json!({ "phoneNumber": PHONE, "otp": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    terminate(child, lines).await;
    plivo.verify().await;
}

/// `otp-api config check` prints the effective settings with secrets redacted and lists every
/// error, not only the first; production warns when TRUSTED_PROXIES is empty.
#[tokio::test]
async fn config_check_lists_every_error_and_shows_no_secret() {
    let (mut good, _cleanup) = otp_api();
    let out = good.args(["config", "check"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OTP_HMAC_KEY=<redacted>"), "{stdout}");
    assert!(stdout.contains("OTP_LENGTH=6 (default)"), "{stdout}");
    assert!(!stdout.contains(KEY), "{stdout}");

    let (mut production, _cleanup) = otp_api();
    let out = production
        .args(["config", "check"])
        .env_remove("APP_ENV")
        .env("REDIS_URL", "redis://:hunter2-secret@127.0.0.1:6379/0")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    for named in ["MAX_SENDS_PER_HOUR", "API_KEYS", "TOKEN_SIGNING_KEYS"] {
        assert!(stderr.contains(named), "{named} is not listed: {stderr}");
    }
    let count: usize = stderr
        .lines()
        .find_map(|l| l.strip_suffix(" error(s):"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no error count: {stderr}"));
    assert!(count >= 3, "{stderr}");
    assert!(
        stderr.contains("warning: TRUSTED_PROXIES is empty"),
        "{stderr}"
    );
    assert!(stdout.contains("REDIS_URL=<redacted>"), "{stdout}");
    assert!(!format!("{stdout}{stderr}").contains("hunter2-secret"));
}

/// WORKER_THREADS: one thread runs everything by default; more start a multi-threaded
/// runtime with that many workers (the start line says which). Both serve.
#[tokio::test]
async fn worker_threads_pick_the_runtime() {
    for (threads, flavor, workers) in [(None, "CurrentThread", 1), (Some("3"), "MultiThread", 3)] {
        let (mut cmd, _cleanup) = otp_api();
        if let Some(threads) = threads {
            cmd.env("WORKER_THREADS", threads);
        }
        let (child, _lines, started) = start_listening(&mut cmd).await;
        assert_eq!(started["runtime"], flavor, "{started}");
        assert_eq!(started["worker_threads"], workers, "{started}");
        let addr: std::net::SocketAddr = started["addr"].as_str().unwrap().parse().unwrap();
        let healthz = reqwest::get(format!("http://127.0.0.1:{}/healthz", addr.port()))
            .await
            .unwrap();
        assert_eq!(healthz.status(), 200);
        drop(child);
    }
    let (mut cmd, _cleanup) = otp_api();
    let out = cmd.env("WORKER_THREADS", "0").output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WORKER_THREADS"));
}
