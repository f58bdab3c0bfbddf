//! Caller keys on the real stack: who may call, what a refusal spends (nothing), per-key
//! budgets, Idempotency-Keys scoped to the key, the end user's address from a trusted backend,
//! and the `client` label.

use otp_api::callers::{ApiKey, KeyBudgets};
use serde_json::{Value, json};

use crate::helpers::{PHONE, TestApp, assert_error, spawn_with};

const WEB: &str = "web-secret-0a1b2c";
const EU: &str = "eu-secret-3d4e5f";

/// An app that requires one of two keys (`web`, `backend-eu`), with `tweak` on top.
async fn keyed(tweak: impl FnOnce(&mut otp_api::config::Config)) -> TestApp {
    spawn_with(|config| {
        config.access.api_keys = vec![
            ApiKey::for_secret("web", WEB),
            ApiKey::for_secret("backend-eu", EU),
        ];
        tweak(config);
    })
    .await
}

async fn request(app: &TestApp, secret: Option<&str>, phone: &str) -> reqwest::Response {
    request_with(app, secret, phone, &[]).await
}

async fn request_with(
    app: &TestApp,
    secret: Option<&str>,
    phone: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut call = app
        .client
        .post(format!("{}/api/otp/request", app.base))
        .json(&json!({ "phoneNumber": phone }));
    if let Some(secret) = secret {
        call = call.bearer_auth(secret);
    }
    for (name, value) in headers {
        call = call.header(*name, *value);
    }
    call.send().await.unwrap()
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_and_spends_nothing() {
    let app = keyed(|c| c.limits.max_requests_per_ip_per_minute = 1).await;
    for secret in [None, Some("wrong"), Some("")] {
        let resp = request(&app, secret, PHONE).await;
        assert_eq!(
            resp.headers().get("www-authenticate").unwrap(),
            "Bearer",
            "{secret:?}"
        );
        assert_error(resp, 401, "UNAUTHORIZED").await;
    }
    let verify = app
        .post_json(
            "/api/otp/verify",
            &json!({"phoneNumber": PHONE, "otp": "123456"}),
        )
        .await;
    assert_error(verify, 401, "UNAUTHORIZED").await;
    let status = app
        .get("/api/otp/status/6f1c2b7e-0d2a-4a57-9d8e-6f1c2b7e0d2a")
        .await;
    assert_error(status, 401, "UNAUTHORIZED").await;
    // Nothing was written or spent: the one request a minute is still there, and works.
    assert!(
        app.redis_keys().await.is_empty(),
        "{:?}",
        app.redis_keys().await
    );
    assert_eq!(app.queued_jobs().await, 0);
    let resp = request(&app, Some(WEB), PHONE).await;
    assert_eq!(resp.status().as_u16(), 202);
    // Health and the provider callbacks take no key.
    assert_eq!(app.get("/healthz").await.status().as_u16(), 200);
    // The OpenAPI document says so.
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let bearer = &doc["components"]["securitySchemes"]["callerKey"];
    assert_eq!(
        (&bearer["type"], &bearer["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    for (path, method) in [
        ("/api/otp/request", "post"),
        ("/api/otp/status/{verificationId}", "get"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["security"],
            json!([{"callerKey": []}])
        );
    }
    assert!(doc["paths"]["/healthz"]["get"]["security"].is_null());

    let metrics = app.get("/metrics").await.text().await.unwrap();
    let series = |s: &str| otp_testkit::metric_value(&metrics, s);
    let refused =
        r#"otp_http_requests_total{client="public",route="/api/otp/request",status="401"}"#;
    assert_eq!(series(refused), 3.0);
    let accepted = r#"otp_http_requests_total{client="web",route="/api/otp/request",status="202"}"#;
    assert_eq!(series(accepted), 1.0);
    assert_eq!(series(r#"otp_codes_issued_total{client="web"}"#), 1.0);
    assert_eq!(
        series(r#"otp_codes_issued_total{client="backend-eu"}"#),
        0.0
    );
}

#[tokio::test]
async fn public_api_lets_callers_without_a_key_in_but_never_with_a_wrong_one() {
    let app = keyed(|c| c.access.public_api = true).await;
    assert_eq!(request(&app, None, PHONE).await.status().as_u16(), 202);
    assert_eq!(
        request(&app, Some(EU), "+14155550100")
            .await
            .status()
            .as_u16(),
        202
    );
    assert_error(
        request(&app, Some("wrong"), PHONE).await,
        401,
        "UNAUTHORIZED",
    )
    .await;
}

/// Two keys' Idempotency-Keys never meet: each gets its own verification and SMS, and each one's
/// retry replays its own answer.
#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_caller_key() {
    let app = keyed(|_| {}).await;
    let app = &app;
    let with = |secret| async move {
        let headers = [("idempotency-key", "signup-1")];
        let resp = request_with(app, Some(secret), PHONE, &headers).await;
        assert_eq!(resp.status().as_u16(), 202);
        resp.json::<Value>().await.unwrap()["verificationId"].clone()
    };
    let web = with(WEB).await;
    let eu = with(EU).await;
    assert_ne!(web, eu);
    assert_eq!(with(WEB).await, web, "web's retry replays web's answer");
    assert_eq!(app.queued_jobs().await, 2);
}

#[tokio::test]
async fn each_key_spends_its_own_hourly_budget() {
    let app = keyed(|c| {
        c.access.api_key_max_sends_per_hour = KeyBudgets::parse("web=2,*=1").unwrap();
    })
    .await;
    for n in 0..2 {
        let resp = request(&app, Some(WEB), &format!("+1415555010{n}")).await;
        assert_eq!(resp.status().as_u16(), 202, "web send {n}");
    }
    let over = request(&app, Some(WEB), "+14155550109").await;
    assert!(over.headers().get("retry-after").is_some());
    assert_error(over, 429, "RATE_LIMITED").await;
    // Another key has its own budget (`*`: 1).
    assert_eq!(
        request(&app, Some(EU), "+14155550120")
            .await
            .status()
            .as_u16(),
        202
    );
    assert_error(
        request(&app, Some(EU), "+14155550121").await,
        429,
        "RATE_LIMITED",
    )
    .await;
    assert_eq!(app.queued_jobs().await, 3);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let limited = r#"otp_rate_limited_total{limit="sends_per_key_per_hour"}"#;
    assert_eq!(otp_testkit::metric_value(&metrics, limited), 2.0);
}

/// A keyed backend calls for its users: the per-IP limit counts each user's X-End-User-IP, not
/// the backend's address. Without a key the header is ignored.
#[tokio::test]
async fn the_end_users_address_counts_per_user_with_a_key_and_is_ignored_without() {
    let app = keyed(|c| {
        c.access.public_api = true;
        c.limits.max_requests_per_ip_per_minute = 1;
    })
    .await;
    let app = &app;
    let from = |secret, user: &'static str, phone: &'static str| async move {
        request_with(app, secret, phone, &[("x-end-user-ip", user)]).await
    };
    assert_eq!(from(Some(WEB), "203.0.113.1", PHONE).await.status(), 202);
    // Another user of the same backend: their own per-IP budget.
    assert_eq!(
        from(Some(WEB), "203.0.113.2", "+14155550100")
            .await
            .status(),
        202
    );
    let again = from(Some(WEB), "203.0.113.1", "+14155550101").await;
    assert_error(again, 429, "RATE_LIMITED").await;
    // The public's header is ignored: both public calls come from this test's address.
    assert_eq!(
        from(None, "198.51.100.1", "+14155550102").await.status(),
        202
    );
    let public = from(None, "198.51.100.2", "+14155550103").await;
    assert_error(public, 429, "RATE_LIMITED").await;
    let bad = from(Some(EU), "not-an-address", "+14155550104").await;
    assert_error(bad, 400, "INVALID_REQUEST").await;
}
