use reqwest::Response;
use serde_json::json;

use crate::helpers::{PHONE, assert_error, spawn_with};

fn header(resp: &Response, name: &str) -> u64 {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} header"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn assert_limited(resp: Response) {
    let retry_after = header(&resp, "retry-after");
    assert!(retry_after >= 1);
    assert_eq!(header(&resp, "ratelimit-remaining"), 0);
    assert!(header(&resp, "ratelimit-limit") >= 1);
    assert!(header(&resp, "ratelimit-reset") >= 1);
    let body = assert_error(resp, 429, "RATE_LIMITED").await;
    assert_eq!(body["retryAfterSeconds"], json!(retry_after));
}

#[tokio::test]
async fn a_number_must_wait_out_the_resend_cooldown() {
    let app = spawn_with(|c| c.limits.resend_cooldown_seconds = 30).await;
    let resp = app.request_otp(PHONE).await;
    assert_eq!(resp.status().as_u16(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["resendAfterSeconds"], json!(30));
    let resp = app.request_otp(PHONE).await;
    assert!(header(&resp, "retry-after") <= 30);
    assert_limited(resp).await;
    // Another number is not affected.
    assert_eq!(app.request_otp("+14155550100").await.status().as_u16(), 202);
    assert_eq!(app.queued_jobs().await, 2);
}

#[tokio::test]
async fn a_number_gets_at_most_n_sends_per_hour() {
    let app = spawn_with(|c| c.limits.max_sends_per_number_per_hour = 2).await;
    let first = app.request_otp(PHONE).await;
    assert_eq!(header(&first, "ratelimit-limit"), 2);
    assert_eq!(header(&first, "ratelimit-remaining"), 1);
    assert_eq!(app.request_otp(PHONE).await.status().as_u16(), 202);
    let third = app.request_otp(PHONE).await;
    assert!(header(&third, "retry-after") > 3000);
    assert_limited(third).await;
    assert_eq!(app.queued_jobs().await, 2);
}

#[tokio::test]
async fn an_ip_gets_at_most_n_requests_per_minute() {
    let app = spawn_with(|c| c.limits.max_requests_per_ip_per_minute = 2).await;
    assert_eq!(app.request_otp("+14155550100").await.status().as_u16(), 202);
    assert_eq!(app.request_otp("+14155550101").await.status().as_u16(), 202);
    assert_limited(app.request_otp("+14155550102").await).await;
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let send = |app: &crate::helpers::TestApp, ip: &str, phone: &str| {
        app.client
            .post(format!("{}/api/otp/request", app.base))
            .header("x-forwarded-for", ip.to_owned())
            .json(&json!({ "phoneNumber": phone }))
            .send()
    };
    let trusted = spawn_with(|c| {
        c.limits.max_requests_per_ip_per_minute = 1;
        c.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    assert_eq!(
        send(&trusted, "198.51.100.1", "+14155550100")
            .await
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        send(&trusted, "198.51.100.2", "+14155550101")
            .await
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    assert_limited(
        send(&trusted, "198.51.100.1", "+14155550102")
            .await
            .unwrap(),
    )
    .await;

    let untrusted = spawn_with(|c| c.limits.max_requests_per_ip_per_minute = 1).await;
    assert_eq!(
        send(&untrusted, "198.51.100.1", "+14155550100")
            .await
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    assert_limited(
        send(&untrusted, "198.51.100.2", "+14155550101")
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn verifies_are_limited_per_number_whether_or_not_it_has_a_code() {
    let app = spawn_with(|c| c.limits.max_verifies_per_number_per_15_minutes = 2).await;
    for phone in ["+14155550100", PHONE] {
        if phone == PHONE {
            app.issue_code(PHONE).await;
        }
        let first = app.verify(phone, "123456").await;
        assert_eq!(first.status().as_u16(), 400);
        assert_eq!(app.verify(phone, "123456").await.status().as_u16(), 400);
        assert_limited(app.verify(phone, "123456").await).await;
    }
}

#[tokio::test]
async fn a_successful_verify_reports_its_rate_limit() {
    let app = spawn_with(|c| c.limits.max_verifies_per_number_per_15_minutes = 10).await;
    let code = app.issue_code(PHONE).await;
    let resp = app.verify(PHONE, &code).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(header(&resp, "ratelimit-limit"), 10);
    assert_eq!(header(&resp, "ratelimit-remaining"), 9);
}
