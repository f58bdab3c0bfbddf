//! The CAPTCHA before any SMS (CAPTCHA_PROVIDER), against a siteverify mock: callers without a
//! key need a token the provider accepts, checked before any limit is spent or anything stored;
//! keyed callers are exempt; a token is sent to the provider once.

use std::time::Duration;

use otp_api::{
    callers::ApiKey,
    config::{Config, Provider},
};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::helpers::{PHONE, TestApp, assert_error, spawn_with};

const WEB: &str = "web-secret-0a1b2c";
const SECRET: &str = "captcha-secret-for-tests";

/// A siteverify mock that answers `answer` to every call.
async fn siteverify(answer: Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/siteverify"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(&server)
        .await;
    server
}

fn with_captcha(config: &mut Config, provider: Provider, server: &MockServer) {
    config.captcha.captcha_provider = provider;
    config.captcha.captcha_secret = Some(SECRET.to_owned().into());
    config.captcha.captcha_verify_url = Some(format!("{}/siteverify", server.uri()));
    config.access.public_api = true;
    config.access.api_keys = vec![ApiKey::for_secret("web", WEB)];
    config.limits.max_requests_per_ip_per_minute = 20;
    config.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

async fn app_for(server: &MockServer, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_with(|config| {
        with_captcha(config, Provider::Turnstile, server);
        tweak(config);
    })
    .await
}

async fn request(app: &TestApp, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut call = app
        .client
        .post(format!("{}/api/otp/request", app.base))
        .json(&body);
    for (name, value) in headers {
        call = call.header(*name, *value);
    }
    call.send().await.unwrap()
}

/// The form fields of every siteverify call the mock received.
async fn calls(server: &MockServer) -> Vec<Vec<(String, String)>> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            url::form_urlencoded::parse(&r.body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .collect()
}

/// Nothing of the request was stored or spent: no key but CAPTCHA token marks, no job.
async fn assert_nothing_spent(app: &TestApp) {
    let keys: Vec<String> = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| !k.contains("captcha:"))
        .collect();
    assert!(keys.is_empty(), "{keys:?}");
    assert_eq!(app.queued_jobs().await, 0);
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    otp_testkit::metric_value(&text, series)
}

#[tokio::test]
async fn no_token_is_400_and_nothing_is_spent_or_stored() {
    let server = siteverify(json!({ "success": true })).await;
    let app = app_for(&server, |_| {}).await;
    let resp = request(&app, json!({ "phoneNumber": PHONE }), &[]).await;
    assert_error(resp, 400, "CAPTCHA_REQUIRED").await;
    assert!(calls(&server).await.is_empty());
    assert!(
        app.redis_keys().await.is_empty(),
        "{:?}",
        app.redis_keys().await
    );
    assert_eq!(app.queued_jobs().await, 0);
    assert_eq!(
        metric(&app, r#"otp_captcha_checks_total{result="missing"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn a_refused_token_is_403_and_nothing_is_spent() {
    let server =
        siteverify(json!({ "success": false, "error-codes": ["invalid-input-response"] })).await;
    let app = app_for(&server, |_| {}).await;
    let body = json!({ "phoneNumber": PHONE, "captchaToken": "bad-token" });
    assert_error(request(&app, body, &[]).await, 403, "CAPTCHA_FAILED").await;
    assert_eq!(calls(&server).await.len(), 1);
    assert_nothing_spent(&app).await;
    assert_eq!(
        metric(&app, r#"otp_captcha_checks_total{result="failed"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn a_good_token_passes_once_and_the_provider_sees_the_client_address() {
    let server = siteverify(json!({ "success": true, "hostname": "app.example.com" })).await;
    let app = app_for(&server, |_| {}).await;
    let body = json!({ "phoneNumber": PHONE, "captchaToken": "good-token" });
    // Behind the trusted proxy (127.0.0.1), the client is the X-Forwarded-For address.
    let forwarded = [("x-forwarded-for", "203.0.113.7")];
    let resp = request(&app, body.clone(), &forwarded).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(app.queued_jobs().await, 1);
    let seen = calls(&server).await;
    let field = |name: &str| {
        seen[0]
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field("secret").as_deref(), Some(SECRET));
    assert_eq!(field("response").as_deref(), Some("good-token"));
    assert_eq!(field("remoteip").as_deref(), Some("203.0.113.7"));

    // The same token again: refused without a second call.
    let again = request(&app, body, &forwarded).await;
    assert_error(again, 403, "CAPTCHA_FAILED").await;
    assert_eq!(calls(&server).await.len(), 1);
    assert_eq!(app.queued_jobs().await, 1);
    assert_eq!(
        metric(&app, r#"otp_captcha_checks_total{result="passed"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn the_header_carries_a_token_too_and_hostnames_are_checked() {
    let server = siteverify(json!({ "success": true, "hostname": "evil.example" })).await;
    let app = app_for(&server, |c| {
        c.captcha.captcha_hostnames = vec!["app.example.com".into()];
    })
    .await;
    let resp = request(
        &app,
        json!({ "phoneNumber": PHONE }),
        &[("x-captcha-token", "solved-elsewhere")],
    )
    .await;
    assert_error(resp, 403, "CAPTCHA_FAILED").await;
    assert_eq!(
        calls(&server).await.len(),
        1,
        "the header's token was checked"
    );
    assert_nothing_spent(&app).await;
}

#[tokio::test]
async fn a_keyed_caller_needs_no_token() {
    let server = siteverify(json!({ "success": false })).await;
    let app = app_for(&server, |_| {}).await;
    let resp = app
        .client
        .post(format!("{}/api/otp/request", app.base))
        .bearer_auth(WEB)
        .json(&json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(calls(&server).await.is_empty());
}

#[tokio::test]
async fn an_unreachable_provider_is_503_unless_failing_open() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/siteverify"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "success": true }))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let app = app_for(&server, |c| c.captcha.captcha_timeout_ms = 200).await;
    let body = |token: &str| json!({ "phoneNumber": PHONE, "captchaToken": token });
    let resp = request(&app, body("slow-1"), &[]).await;
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_error(resp, 503, "CAPTCHA_UNAVAILABLE").await;
    assert_nothing_spent(&app).await;

    let open = app_for(&server, |c| {
        c.captcha.captcha_timeout_ms = 200;
        c.captcha.captcha_fail_open = true;
    })
    .await;
    assert_eq!(request(&open, body("slow-2"), &[]).await.status(), 202);
    assert_eq!(
        metric(&open, r#"otp_captcha_checks_total{result="fail_open"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn a_non_json_answer_is_unavailable() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/siteverify"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"))
        .mount(&server)
        .await;
    let app = app_for(&server, |_| {}).await;
    let body = json!({ "phoneNumber": PHONE, "captchaToken": "any" });
    assert_error(request(&app, body, &[]).await, 503, "CAPTCHA_UNAVAILABLE").await;
    assert_eq!(
        metric(&app, r#"otp_captcha_checks_total{result="unavailable"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn recaptcha_needs_the_minimum_score() {
    let low = siteverify(json!({ "success": true, "score": 0.3 })).await;
    let app = spawn_with(|c| with_captcha(c, Provider::Recaptcha, &low)).await;
    let body = json!({ "phoneNumber": PHONE, "captchaToken": "v3-token" });
    assert_error(request(&app, body, &[]).await, 403, "CAPTCHA_FAILED").await;
    assert_nothing_spent(&app).await;

    let high = siteverify(json!({ "success": true, "score": 0.9 })).await;
    let app = spawn_with(|c| with_captcha(c, Provider::Recaptcha, &high)).await;
    let body = json!({ "phoneNumber": PHONE, "captchaToken": "v3-token" });
    assert_eq!(request(&app, body, &[]).await.status(), 202);
}

/// The one-process mode (memory store) honours the same settings.
#[tokio::test]
async fn the_embedded_mode_checks_the_captcha_too() {
    let server = siteverify(json!({ "success": true })).await;
    let mut cmd = crate::process::embedded_api();
    cmd.arg("--embedded")
        .env("CAPTCHA_PROVIDER", "turnstile")
        .env("CAPTCHA_SECRET", SECRET)
        .env("CAPTCHA_VERIFY_URL", format!("{}/siteverify", server.uri()));
    let (child, _lines, port) = crate::process::start_logged(&mut cmd).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let call = |body: Value| {
        http.post(format!("{base}/api/otp/request"))
            .json(&body)
            .send()
    };
    let missing = call(json!({ "phoneNumber": PHONE })).await.unwrap();
    assert_error(missing, 400, "CAPTCHA_REQUIRED").await;
    let body = json!({ "phoneNumber": PHONE, "captchaToken": "embedded-token" });
    assert_eq!(call(body.clone()).await.unwrap().status(), 202);
    assert_error(call(body).await.unwrap(), 403, "CAPTCHA_FAILED").await;
    assert_eq!(calls(&server).await.len(), 1);
    drop(child);
}

/// The demo page learns the provider and the public site key (never the secret) for its widget.
#[tokio::test]
async fn the_demo_page_gets_the_widget_settings() {
    let server = siteverify(json!({ "success": true })).await;
    let app = app_for(&server, |c| {
        c.captcha.captcha_site_key = Some("1x00000000000000000000AA".into());
    })
    .await;
    let widget: Value = app.get("/demo/captcha.json").await.json().await.unwrap();
    assert_eq!(
        widget,
        json!({ "provider": "turnstile", "siteKey": "1x00000000000000000000AA" })
    );
    let page = app.get("/demo").await.text().await.unwrap();
    assert!(page.contains("captchaToken") && page.contains("/demo/captcha.json"));
    let off = spawn_with(|_| {}).await;
    let widget: Value = off.get("/demo/captcha.json").await.json().await.unwrap();
    assert_eq!(widget, json!({ "provider": "off" }));
}
