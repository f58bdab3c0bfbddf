//! Pumping rings as they work: bursts from a proxy pool, blocks aimed at real users, keys reused
//! by strangers. Through the HTTP API on the real Redis and RabbitMQ, with the fraud guard's
//! default thresholds; client networks are told apart by X-Forwarded-For from a trusted proxy.

use reqwest::Response;
use serde_json::{Value, json};

use otp_api::fraud::Mode;

use crate::helpers::{TestApp, assert_error, spawn_with};

/// The defaults, enforced, behind a trusted local proxy.
async fn guarded_app() -> TestApp {
    spawn_with(|c| {
        c.fraud.fraud_guard = Mode::Enforce;
        c.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await
}

async fn request_from(app: &TestApp, client: &str, phone: &str, key: Option<&str>) -> Response {
    let mut req = app
        .client
        .post(format!("{}/api/otp/request", app.base))
        .header("x-forwarded-for", client)
        .json(&json!({ "phoneNumber": phone }));
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.send().await.unwrap()
}

/// A number of the pumped prefix +1415555.
fn pumped(n: usize) -> String {
    format!("+1415555{:04}", 1000 + n)
}

#[tokio::test]
async fn a_burst_from_a_proxy_pool_is_cut_short() {
    let app = guarded_app().await;
    let networks = [
        "198.51.100.1",
        "198.51.100.2",
        "203.0.113.7",
        "192.0.2.9",
        "192.0.2.77",
    ];
    let mut accepted = 0;
    for n in 0..100 {
        let resp = request_from(&app, networks[n % networks.len()], &pumped(n), None).await;
        match resp.status().as_u16() {
            202 => accepted += 1,
            403 => {
                assert_error(resp, 403, "DESTINATION_BLOCKED").await;
            }
            other => panic!("request {n}: {other}"),
        }
    }
    // The burst of 30, the blocked trickle of 6, and nothing more.
    assert!(accepted <= 40, "{accepted} of 100 accepted");
    assert!(
        accepted >= 30,
        "the burst allowance itself was refused: {accepted}"
    );
    assert_eq!(
        app.queued_jobs().await,
        accepted,
        "an SMS only for each accepted request"
    );
    // Another prefix is unaffected.
    let resp = request_from(&app, networks[0], "+12125550100", None).await;
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn one_or_two_networks_cannot_aim_a_block_and_a_block_leaves_a_trickle() {
    let app = guarded_app().await;
    // 40 unverified sends from two networks: past the burst, yet never blocked.
    for n in 0..40 {
        let client = ["198.51.100.1", "198.51.100.2"][n % 2];
        let resp = request_from(&app, client, &pumped(n), None).await;
        assert_eq!(resp.status(), 202, "send {n} from {client}");
    }
    // A third network: now the prefix is blocked, but 6 sends an hour still go through.
    let mut trickled = Vec::new();
    for n in 40..50 {
        let resp = request_from(&app, "203.0.113.7", &pumped(n), None).await;
        if resp.status() == 202 {
            trickled.push(pumped(n));
        } else {
            assert_error(resp, 403, "DESTINATION_BLOCKED").await;
        }
    }
    assert_eq!(
        trickled.len(),
        6,
        "the hourly allowance of a blocked prefix"
    );
    // A real user among them verifies: the block is lifted at once.
    let mut codes = std::collections::HashMap::new();
    while codes.len() < 46 {
        let (_, content) = app.next_job().await;
        codes.insert(content.destination, content.code);
    }
    let user = &trickled[0];
    let resp = app
        .post_json(
            "/api/otp/verify",
            &json!({ "phoneNumber": user, "otp": codes[user] }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let resp = request_from(&app, "203.0.113.7", &pumped(50), None).await;
    assert_eq!(resp.status(), 202, "the block was lifted");
}

#[tokio::test]
async fn an_operator_block_covers_every_number_under_it_in_monitor_mode() {
    let app = spawn_with(|c| c.fraud.fraud_guard = Mode::Monitor).await;
    let (ok, out) = crate::fraud::fraud_cli(&app, &["block", "+4479", "--hours", "1"]).await;
    assert!(ok, "{out}");
    assert_error(
        app.request_otp("+447946000000").await,
        403,
        "DESTINATION_BLOCKED",
    )
    .await;
    assert_eq!(app.queued_jobs().await, 0);
    let (ok, out) = crate::fraud::fraud_cli(&app, &["list"]).await;
    assert!(ok && out.contains("+4479  manual"), "{out}");
    // Other numbers are not under it.
    assert_eq!(app.request_otp("+447400123456").await.status(), 202);
    let (ok, out) = crate::fraud::fraud_cli(&app, &["unblock", "+4479"]).await;
    assert!(ok, "{out}");
    assert_eq!(app.request_otp("+447946000001").await.status(), 202);
}

#[tokio::test]
async fn an_operator_block_holds_with_the_fraud_guard_off() {
    let app = spawn_with(|c| c.fraud.fraud_guard = Mode::Off).await;
    assert_eq!(app.request_otp("+447946000000").await.status(), 202);
    let (ok, out) = crate::fraud::fraud_cli(&app, &["block", "+44794", "--hours", "1"]).await;
    assert!(ok, "{out}");
    // With the guard off and no budget, the API learns of a new block within 2 s.
    let blocked = otp_testkit::eventually(std::time::Duration::from_secs(5), || async {
        app.request_otp("+447946000001").await.status() == 403
    });
    assert!(blocked.await, "the manual block was not applied");
    assert_eq!(app.request_otp("+447400123456").await.status(), 202);
}

#[tokio::test]
async fn an_idempotency_key_is_the_callers_own() {
    let app =
        spawn_with(|c| c.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let key = Some("signup-42");
    let first = request_from(&app, "198.51.100.1", "+14155550100", key).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // Another client with the same key and its own number: its own code and SMS, not A's
    // verification, and not a 422.
    let other = request_from(&app, "203.0.113.7", "+12125550100", key).await;
    assert_eq!(other.status(), 202);
    let other: Value = other.json().await.unwrap();
    assert_ne!(other["verificationId"], first["verificationId"]);
    assert_eq!(app.queued_jobs().await, 2);
    // The owner's retry still replays its own answer.
    let again = request_from(&app, "198.51.100.1", "+14155550100", key).await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["verificationId"], first["verificationId"]);
    assert_eq!(app.queued_jobs().await, 2);
}
