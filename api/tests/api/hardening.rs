//! Limits that hold against real attackers: IPv6 networks, every X-Forwarded-For line, verify
//! floods per client, verifies bound to their request, send budgets, and the per-IP limit
//! applied before an Idempotency-Key is claimed.

use reqwest::Response;
use serde_json::{Value, json};

use otp_api::config::SendCeiling;

use crate::helpers::{PHONE, TestApp, assert_error, spawn_with};

const PROXY: &str = "127.0.0.1/32";

/// A code request through the (trusted) local proxy, with these X-Forwarded-For lines.
async fn request_via(
    app: &TestApp,
    forwarded: &[&str],
    phone: &str,
    key: Option<&str>,
) -> Response {
    let mut req = app
        .client
        .post(format!("{}/api/otp/request", app.base))
        .json(&json!({ "phoneNumber": phone }));
    for line in forwarded {
        req = req.header("x-forwarded-for", *line);
    }
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.send().await.unwrap()
}

async fn verify_via(app: &TestApp, forwarded: &str, body: Value) -> Response {
    app.client
        .post(format!("{}/api/otp/verify", app.base))
        .header("x-forwarded-for", forwarded)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn addresses_from_one_ipv6_network_share_one_limit() {
    let app = spawn_with(|c| {
        c.limits.max_requests_per_ip_per_minute = 2;
        c.limits.trusted_proxies = vec![PROXY.parse().unwrap()];
    })
    .await;
    let send = |ip: &'static str, phone: &'static str| {
        let app = &app;
        async move { request_via(app, &[ip], phone, None).await }
    };
    assert_eq!(send("2001:db8:1:2::1", "+14155550100").await.status(), 202);
    assert_eq!(
        send("2001:db8:1:2:ffff::9", "+14155550101").await.status(),
        202
    );
    assert_error(
        send("2001:db8:1:2::abcd", "+14155550102").await,
        429,
        "RATE_LIMITED",
    )
    .await;
    // The next /64 is another client; IPv4-mapped IPv6 is its IPv4 address.
    assert_eq!(send("2001:db8:1:3::1", "+14155550103").await.status(), 202);
    assert_eq!(send("198.51.100.7", "+14155550104").await.status(), 202);
    assert_eq!(
        send("::ffff:198.51.100.7", "+14155550105").await.status(),
        202
    );
    assert_error(
        send("198.51.100.7", "+14155550106").await,
        429,
        "RATE_LIMITED",
    )
    .await;
}

#[tokio::test]
async fn every_forwarded_for_line_counts_and_garbage_is_refused() {
    let app = spawn_with(|c| {
        c.limits.max_requests_per_ip_per_minute = 1;
        c.limits.trusted_proxies = vec![PROXY.parse().unwrap()];
    })
    .await;
    // The client forges a first line each time; the proxy adds the real address as a second.
    let r = request_via(&app, &["203.0.113.1", "198.51.100.7"], "+14155550100", None).await;
    assert_eq!(r.status(), 202);
    let r = request_via(&app, &["203.0.113.2", "198.51.100.7"], "+14155550101", None).await;
    assert_error(r, 429, "RATE_LIMITED").await;

    // An unreadable address where the client's should be is refused, not pooled with the proxy.
    for garbage in ["unknown", "not-an-ip", "198.51.100.7:notaport"] {
        let r = request_via(&app, &[garbage], "+14155550102", None).await;
        let body = assert_error(r, 400, "INVALID_REQUEST").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("X-Forwarded-For")
        );
    }
    assert_eq!(app.queued_jobs().await, 1);
}

#[tokio::test]
async fn one_client_cannot_spray_guesses_across_numbers() {
    let app = spawn_with(|c| {
        c.limits.max_verifies_per_ip_per_minute = 3;
        c.limits.max_verifies_per_number_per_15_minutes = 10;
        c.limits.trusted_proxies = vec![PROXY.parse().unwrap()];
    })
    .await;
    for n in 0..3 {
        let body = json!({ "phoneNumber": format!("+1415555010{n}"), "otp": "123456" });
        assert_eq!(verify_via(&app, "198.51.100.7", body).await.status(), 400);
    }
    let body = json!({ "phoneNumber": "+14155550109", "otp": "123456" });
    let limited = verify_via(&app, "198.51.100.7", body.clone()).await;
    assert_error(limited, 429, "RATE_LIMITED").await;
    // Another client is not affected, and the refused call did not count against the number.
    assert_eq!(verify_via(&app, "198.51.100.8", body).await.status(), 400);
}

#[tokio::test]
async fn a_verification_id_binds_the_code_to_its_request() {
    let app = spawn_with(|c| c.otp.otp_max_attempts = 5).await;
    let resp = app.request_otp(PHONE).await;
    let vid = resp.json::<Value>().await.unwrap()["verificationId"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = app.next_job().await.1.code;

    let other = uuid::Uuid::new_v4().to_string();
    let wrong_request = json!({ "phoneNumber": PHONE, "otp": code, "verificationId": other });
    let r = app.post_json("/api/otp/verify", &wrong_request).await;
    assert_error(r, 400, "INVALID_OTP").await;
    let malformed = json!({ "phoneNumber": PHONE, "otp": code, "verificationId": "nope" });
    let r = app.post_json("/api/otp/verify", &malformed).await;
    assert_error(r, 400, "INVALID_REQUEST").await;

    let right = json!({ "phoneNumber": PHONE, "otp": code, "verificationId": vid });
    assert_eq!(app.post_json("/api/otp/verify", &right).await.status(), 200);

    // Without it, as old clients send, a code still verifies.
    let code = app.issue_code(PHONE).await;
    assert_eq!(app.verify(PHONE, &code).await.status(), 200);
}

#[tokio::test]
async fn the_global_send_budget_caps_all_numbers_together() {
    let app = spawn_with(|c| c.limits.max_sends_per_hour = Some(SendCeiling::PerHour(2))).await;
    assert_eq!(app.request_otp("+14155550100").await.status(), 202);
    assert_eq!(app.request_otp("+447400123456").await.status(), 202);
    let over = app.request_otp("+14155550101").await;
    assert!(over.headers().contains_key("retry-after"));
    assert_error(over, 429, "RATE_LIMITED").await;
    assert_eq!(app.queued_jobs().await, 2);
}

#[tokio::test]
async fn country_budgets_cap_each_destination_country() {
    let app = spawn_with(|c| {
        c.limits.max_sends_per_country_per_hour =
            otp_api::config::CountryBudgets::parse("GB=1,*=2").unwrap();
    })
    .await;
    assert_eq!(app.request_otp("+447400123456").await.status(), 202);
    assert_error(app.request_otp("+447400123457").await, 429, "RATE_LIMITED").await;
    // Other countries fall under `*`, each with its own count.
    assert_eq!(app.request_otp("+14155550100").await.status(), 202);
    assert_eq!(app.request_otp("+14155550101").await.status(), 202);
    assert_error(app.request_otp("+14155550102").await, 429, "RATE_LIMITED").await;
    assert_eq!(app.request_otp("+33612345678").await.status(), 202);
    // A refused request spent nothing: GB is still at its one send.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"otp_rate_limited_total{limit="sends_per_country_per_hour"} 2"#));
}

#[tokio::test]
async fn the_ip_limit_applies_before_the_idempotency_key_is_claimed() {
    let app = spawn_with(|c| {
        c.limits.max_requests_per_ip_per_minute = 2;
        c.limits.trusted_proxies = vec![PROXY.parse().unwrap()];
    })
    .await;
    let ip = ["198.51.100.7"];
    assert_eq!(
        request_via(&app, &ip, PHONE, Some("k-1")).await.status(),
        202
    );
    // Probing keys costs like any request.
    assert_eq!(
        request_via(&app, &ip, PHONE, Some("k-probe"))
            .await
            .status(),
        202
    );
    let probe = request_via(&app, &ip, PHONE, Some("k-2")).await;
    assert_error(probe, 429, "RATE_LIMITED").await;
    // The refused request did not claim its key: from another address it is fresh.
    let other = ["198.51.100.8"];
    let resp = request_via(&app, &other, "+14155550100", Some("k-2")).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(app.queued_jobs().await, 3);
}
