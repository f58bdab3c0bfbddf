//! `POST /api/otp/cancel`: the code is void at once, its status says canceled, and every case
//! with nothing to cancel answers the same 404.

use std::time::Duration;

use otp_api::callers::ApiKey;
use serde_json::{Value, json};

use crate::helpers::{PHONE, TestApp, assert_error, spawn_with};

const WEB: &str = "web-secret-0a1b2c";

/// Requests a code; returns its verification id and the code the SMS carries.
async fn issued(app: &TestApp, phone: &str) -> (String, String) {
    let resp = app.request_otp(phone).await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let (_, content) = app.next_job().await;
    (
        body["verificationId"].as_str().unwrap().to_owned(),
        content.code.clone(),
    )
}

async fn cancel(app: &TestApp, vid: &str) -> reqwest::Response {
    app.post_json("/api/otp/cancel", &json!({ "verificationId": vid }))
        .await
}

#[tokio::test]
async fn a_canceled_code_no_longer_verifies_and_its_status_says_so() {
    let app = spawn_with(|_| {}).await;
    let (vid, code) = issued(&app, PHONE).await;
    let resp = cancel(&app, &vid).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], json!(true));
    let verify = app
        .post_json(
            "/api/otp/verify",
            &json!({ "phoneNumber": PHONE, "otp": code, "verificationId": vid }),
        )
        .await;
    assert_error(verify, 400, "INVALID_OTP").await;
    let status: Value = app
        .get(&format!("/api/otp/status/{vid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], json!("canceled"), "{status}");
}

#[tokio::test]
async fn used_expired_canceled_and_unknown_answer_the_same_404() {
    let app = spawn_with(|c| c.otp.otp_validity_seconds = 1).await;
    let (canceled, _) = issued(&app, PHONE).await;
    assert_eq!(cancel(&app, &canceled).await.status(), 200);
    let (used, code) = issued(&app, "+14155552672").await;
    let verify = json!({ "phoneNumber": "+14155552672", "otp": code, "verificationId": used });
    assert_eq!(
        app.post_json("/api/otp/verify", &verify).await.status(),
        200
    );
    let (expired, _) = issued(&app, "+14155552673").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let mut bodies = Vec::new();
    for vid in [&canceled, &used, &expired, &unknown] {
        bodies.push(assert_error(cancel(&app, vid).await, 404, "NOT_FOUND").await);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let malformed = cancel(&app, "not-a-uuid").await;
    assert_error(malformed, 400, "INVALID_REQUEST").await;
}

#[tokio::test]
async fn with_caller_keys_a_cancel_needs_one_even_for_a_public_api() {
    let app = spawn_with(|c| {
        c.access.api_keys = vec![ApiKey::for_secret("web", WEB)];
        c.access.public_api = true;
    })
    .await;
    let (vid, _) = issued(&app, PHONE).await;
    assert_error(cancel(&app, &vid).await, 401, "UNAUTHORIZED").await;
    let keyed = app
        .client
        .post(format!("{}/api/otp/cancel", app.base))
        .bearer_auth(WEB)
        .json(&json!({ "verificationId": vid }))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
}
