//! The fraud guard against SMS pumping, on the real Redis, with small thresholds and a short
//! grace: a prefix whose sends are not verified is blocked, verified traffic never is.

use std::time::Duration;

use otp_api::fraud::{FraudSettings, Mode};
use otp_shared::keys::Keys;

use crate::helpers::{TestApp, assert_error, spawn_with, test_config};

/// Small thresholds; one client may block a prefix, and a blocked prefix takes no trickle (the
/// rules that need several clients and let a trickle through have tests of their own).
fn guard(mode: Mode) -> FraudSettings {
    FraudSettings {
        fraud_guard: mode,
        fraud_guard_prefix_drop_digits: 4,
        fraud_guard_window_minutes: 60,
        fraud_guard_grace_seconds: 1,
        fraud_guard_min_sends: 3,
        fraud_guard_min_conversion: 0.5,
        fraud_guard_block_hours: 1,
        fraud_guard_burst: 1000,
        fraud_guard_min_clients: 1,
        fraud_guard_blocked_sends_per_hour: 0,
        fraud_guard_safe_prefixes: vec![],
    }
}

async fn app_with(fraud: FraudSettings) -> TestApp {
    spawn_with(|c| c.fraud = fraud).await
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    otp_testkit::metric_value(&text, series)
}

/// Three unverified sends to +1415555xxxx, then past the grace.
async fn pump(app: &TestApp) {
    for n in 0..3 {
        let resp = app.request_otp(&format!("+1415555010{n}")).await;
        assert_eq!(resp.status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

#[tokio::test]
async fn pumping_a_prefix_gets_it_blocked_and_no_sms_is_sent() {
    let app = app_with(guard(Mode::Enforce)).await;
    let events = crate::events::bind_events(&app).await;
    pump(&app).await;
    // Numbers of the pumped prefix that no other test uses, so their events are this test's.
    for n in 7..9 {
        let resp = app.request_otp(&format!("+1415555018{n}")).await;
        let body = assert_error(resp, 403, "DESTINATION_BLOCKED").await;
        assert!(
            !body["message"].as_str().unwrap().contains("1415"),
            "generic message"
        );
    }
    assert_eq!(app.queued_jobs().await, 3, "no SMS for blocked requests");
    // Each refusal is a `blocked` event, with the number masked.
    let ours = |event: &serde_json::Value| {
        event["type"] == "blocked"
            && ["+1415*****87", "+1415*****88"]
                .contains(&event["maskedNumber"].as_str().unwrap_or(""))
    };
    let blocked = crate::events::events_where(&app, &events, 2, ours).await;
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    // Another prefix is unaffected.
    assert_eq!(app.request_otp("+12125550100").await.status(), 202);
    assert_eq!(
        metric(&app, r#"otp_fraud_blocks_total{country="US"}"#).await,
        1.0
    );
    assert_eq!(
        metric(&app, r#"otp_fraud_blocked_requests_total{country="US"}"#).await,
        2.0
    );
}

#[tokio::test]
async fn verified_traffic_is_never_blocked() {
    let app = app_with(guard(Mode::Enforce)).await;
    for n in 0..8 {
        let phone = format!("+1212555010{n}");
        let code = app.issue_code(&phone).await;
        assert_eq!(app.verify(&phone, &code).await.status(), 200);
        if n == 4 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
    }
    use otp_api::store::FraudStore;
    let policy = otp_api::store::StorePolicy::from_config(&app.config);
    let store = otp_api::store::RedisStore::new(app.redis.clone(), Keys::new(app.prefix()), policy);
    let ratios = store.conversion_by_country().await.unwrap();
    assert_eq!(
        ratios,
        vec![("US".to_owned(), 1.0)],
        "5 counted sends, all verified"
    );
}

#[tokio::test]
async fn monitor_mode_never_blocks_but_reports_the_same() {
    let app = app_with(guard(Mode::Monitor)).await;
    pump(&app).await;
    for n in 3..5 {
        assert_eq!(
            app.request_otp(&format!("+1415555010{n}")).await.status(),
            202
        );
    }
    assert_eq!(app.queued_jobs().await, 5);
    assert_eq!(
        metric(&app, r#"otp_fraud_blocks_total{country="US"}"#).await,
        1.0
    );
    assert_eq!(
        metric(&app, r#"otp_fraud_blocked_requests_total{country="US"}"#).await,
        2.0
    );
}

#[tokio::test]
async fn a_safe_listed_prefix_is_never_blocked() {
    let mut fraud = guard(Mode::Enforce);
    fraud.fraud_guard_safe_prefixes = vec!["+1415555".into()];
    let app = app_with(fraud).await;
    pump(&app).await;
    assert_eq!(app.request_otp("+14155550103").await.status(), 202);
}

#[tokio::test]
async fn the_fraud_path_failing_blocks_nothing() {
    let app = app_with(guard(Mode::Enforce)).await;
    // The prefix's counter is of the wrong type: every fraud-guard call on it fails.
    let keys = Keys::new(app.prefix());
    let _: () = redis::cmd("SET")
        .arg(keys.fraud_sends("+1415555"))
        .arg("not a sorted set")
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    for n in 0..5 {
        assert_eq!(
            app.request_otp(&format!("+1415555010{n}")).await.status(),
            202
        );
        if n == 2 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
    }
}

/// Runs `otp-api fraud <args>` against this app's Redis keys.
pub async fn fraud_cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_otp-api"))
        .env_clear()
        .current_dir(std::env::temp_dir())
        .env("REDIS_URL", crate::helpers::redis_url())
        .env("REDIS_CLUSTER", crate::helpers::redis_cluster().to_string())
        .env("REDIS_KEY_PREFIX", app.prefix())
        .arg("fraud")
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn operators_list_lift_and_set_blocks_and_blocks_expire() {
    let app = app_with(guard(Mode::Enforce)).await;
    pump(&app).await;
    assert_error(
        app.request_otp("+14155550103").await,
        403,
        "DESTINATION_BLOCKED",
    )
    .await;

    let (ok, out) = fraud_cli(&app, &["list"]).await;
    assert!(
        ok && out.contains("+1415555")
            && out.contains("sends=3")
            && out.contains("conversion=0.00"),
        "{out}"
    );
    let (ok, out) = fraud_cli(&app, &["unblock", "+1415555"]).await;
    assert!(
        ok && out.contains("fraud_unblock"),
        "a structured event: {out}"
    );
    // Lifted at once, with its counts reset (else the next request would block it again).
    assert_eq!(app.request_otp("+14155550104").await.status(), 202);

    let (ok, out) = fraud_cli(&app, &["block", "+1212555", "--hours", "1"]).await;
    assert!(ok && out.contains("fraud_block"), "{out}");
    assert_error(
        app.request_otp("+12125550100").await,
        403,
        "DESTINATION_BLOCKED",
    )
    .await;
    // A manual block has an end: when it passes, the prefix is free again.
    let keys = Keys::new(app.prefix());
    let soon = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64 + 200;
    let _: () = redis::cmd("HSET")
        .arg(keys.fraud_manual())
        .arg("+1212555")
        .arg(soon)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.request_otp("+12125550101").await.status(), 202);
}

#[tokio::test]
async fn counts_are_exact_under_concurrent_requests_from_two_api_processes() {
    let mut config = test_config();
    config.fraud = guard(Mode::Monitor);
    config.fraud.fraud_guard_min_sends = 1000;
    let first = crate::helpers::spawn_config(config.clone()).await;
    let second = crate::helpers::spawn_config(config).await;
    let requests = (0..40).map(|n| {
        let app = if n % 2 == 0 { &first } else { &second };
        async move { app.request_otp(&format!("+1415555{n:04}")).await.status() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let keys = Keys::new(first.prefix());
    let counted: u64 = redis::cmd("ZCARD")
        .arg(keys.fraud_sends("+1415555"))
        .query_async(&mut first.redis.clone())
        .await
        .unwrap();
    assert_eq!(counted, 40);
    let buckets: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(keys.fraud_country("US"))
        .query_async(&mut first.redis.clone())
        .await
        .unwrap();
    let country: u64 = buckets
        .iter()
        .filter(|(k, _)| k.starts_with("s:"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(country, 40);
}

/// `otp_conversion_ratio{country}` follows the store, Redis or memory (the embedded mode):
/// verified ÷ counted sends, once the sends are past the grace.
async fn the_conversion_gauge_follows<S>(store: S)
where
    S: otp_api::store::CodeStore + otp_api::store::FraudStore + Clone + 'static,
{
    use otp_shared::phone::PhoneNumber;
    let opts = prometheus::Opts::new("otp_conversion_ratio", "test");
    let gauge = prometheus::GaugeVec::new(opts, &["country"]).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let every = Duration::from_millis(100);
    let watch = otp_api::startup::watch_conversion(
        std::sync::Arc::new(store.clone()),
        gauge.clone(),
        every,
        stop.clone(),
    );
    tokio::spawn(watch);
    for (n, verified) in [(0, true), (1, false)] {
        let phone = PhoneNumber::parse(&format!("+1212555010{n}")).unwrap();
        let vid = uuid::Uuid::new_v4();
        let issued = store
            .issue(
                &phone,
                otp_api::store::Requester::network("ip-a", true),
                vid,
                "digest",
            )
            .await
            .unwrap();
        assert!(matches!(issued, otp_api::store::IssueOutcome::Issued(..)));
        if verified {
            let finished = store.finish_verify(&phone, Some(vid), true).await.unwrap();
            assert!(finished.consumed());
        }
    }
    let ratio = || gauge.with_label_values(&["US"]).get();
    let moved = otp_testkit::eventually(Duration::from_secs(15), || async { ratio() == 0.5 });
    let moved = moved.await;
    stop.cancel();
    assert!(
        moved,
        "otp_conversion_ratio{{country=\"US\"}} is {}",
        ratio()
    );
}

fn monitored() -> otp_api::store::StorePolicy {
    let mut config = test_config();
    config.fraud = guard(Mode::Monitor);
    otp_api::store::StorePolicy::from_config(&config)
}

#[tokio::test]
async fn the_conversion_gauge_follows_redis() {
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let _cleanup = otp_testkit::Cleanup {
        redis_url: otp_testkit::redis_url(),
        key_prefix: prefix.clone(),
        amqp_url: crate::helpers::AMQP_URL.into(),
        queue: format!("test.gauge.{}", uuid::Uuid::new_v4().simple()),
    };
    let conn = otp_testkit::redis_conn();
    let store = otp_api::store::RedisStore::new(conn, Keys::new(prefix), monitored());
    the_conversion_gauge_follows(store).await;
}

#[tokio::test]
async fn the_conversion_gauge_follows_memory() {
    let store = otp_api::store::MemoryStore::new(monitored(), Default::default());
    the_conversion_gauge_follows(store).await;
}
