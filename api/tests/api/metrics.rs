//! `GET /metrics`: each counter moves for the outcome it counts, and no label holds a number.

use crate::helpers::{PHONE, TestApp, spawn_unready, spawn_with};

/// The value of one series in the app's /metrics, 0 when absent.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    otp_testkit::metric_value(&text, series)
}

#[tokio::test]
async fn issuing_verifying_and_limits_move_their_counters() {
    let app = spawn_with(|c| {
        c.limits.resend_cooldown_seconds = 30;
        c.limits.max_verifies_per_number_per_15_minutes = 3;
    })
    .await;
    let code = app.issue_code(PHONE).await;
    assert_eq!(
        metric(&app, r#"otp_codes_issued_total{client="public"}"#).await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            r#"otp_http_requests_total{client="public",route="/api/otp/request",status="202"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&app, "otp_publish_duration_seconds_count").await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            r#"otp_http_request_duration_seconds_count{route="/api/otp/request"}"#
        )
        .await,
        1.0
    );

    // The cooldown refuses a second request.
    assert_eq!(app.request_otp(PHONE).await.status(), 429);
    assert_eq!(
        metric(&app, r#"otp_rate_limited_total{limit="resend_cooldown"}"#).await,
        1.0
    );
    assert_eq!(
        metric(&app, r#"otp_codes_issued_total{client="public"}"#).await,
        1.0
    );

    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(app.verify(PHONE, wrong).await.status(), 400);
    assert_eq!(
        metric(&app, r#"otp_verifications_total{outcome="invalid"}"#).await,
        1.0
    );
    assert_eq!(app.verify(PHONE, &code).await.status(), 200);
    assert_eq!(
        metric(&app, r#"otp_verifications_total{outcome="success"}"#).await,
        1.0
    );
    // The third verify used the last allowance; the fourth is limited.
    assert_eq!(app.verify(PHONE, wrong).await.status(), 400);
    assert_eq!(app.verify(PHONE, wrong).await.status(), 429);
    assert_eq!(
        metric(&app, r#"otp_verifications_total{outcome="rate_limited"}"#).await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            r#"otp_rate_limited_total{limit="verifies_per_number"}"#
        )
        .await,
        1.0
    );

    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(!text.contains(PHONE.trim_start_matches('+')));
}

#[tokio::test]
async fn a_failed_publish_is_counted_by_reason() {
    let app = spawn_unready(|c| {
        c.amqp.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".parse().unwrap();
    })
    .await;
    assert_eq!(app.request_otp(PHONE).await.status(), 503);
    assert_eq!(
        metric(
            &app,
            r#"otp_publish_failures_total{reason="not_connected"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            r#"otp_http_requests_total{client="public",route="/api/otp/request",status="503"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&app, r#"otp_codes_issued_total{client="public"}"#).await,
        0.0
    );
}
