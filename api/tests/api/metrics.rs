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

/// `otp_send_budget_limit{scope}` and `otp_send_budget_remaining{scope}` follow the store,
/// Redis or memory (the embedded mode): a code sent to a GB number spends the global budget
/// and GB's, and a country with no budget of its own gets no series.
async fn the_budget_gauges_follow<S>(store: S)
where
    S: otp_api::store::CodeStore + Clone + 'static,
{
    use otp_shared::phone::PhoneNumber;
    let metrics = std::sync::Arc::new(otp_api::metrics::ApiMetrics::new());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(otp_api::startup::watch_budgets(
        std::sync::Arc::new(store.clone()),
        metrics.clone(),
        std::time::Duration::from_millis(50),
        stop.clone(),
    ));
    let series = |family: &prometheus::IntGaugeVec, scope: &str| {
        family.get_metric_with_label_values(&[scope]).unwrap().get()
    };
    let shown = otp_testkit::eventually(std::time::Duration::from_secs(10), || async {
        series(&metrics.budget_remaining, "global") == 10
    });
    assert!(shown.await, "the budgets never showed");
    assert_eq!(series(&metrics.budget_limit, "global"), 10);
    assert_eq!(series(&metrics.budget_limit, "GB"), 5);
    assert_eq!(series(&metrics.budget_remaining, "GB"), 5);

    let phone = PhoneNumber::parse("+447400123456").unwrap();
    let issued = store
        .issue(
            &phone,
            otp_api::store::Requester::network("ip-a", true),
            uuid::Uuid::new_v4(),
            "digest",
        )
        .await
        .unwrap();
    assert!(matches!(issued, otp_api::store::IssueOutcome::Issued(..)));
    let spent = otp_testkit::eventually(std::time::Duration::from_secs(10), || async {
        series(&metrics.budget_remaining, "global") == 9
    });
    let spent = spent.await;
    stop.cancel();
    assert!(spent, "the global budget's gauge did not drop");
    assert_eq!(series(&metrics.budget_remaining, "GB"), 4);
    let text = metrics.render();
    assert!(!text.contains(r#"scope="US""#), "{text}");
}

fn budgeted() -> otp_api::store::StorePolicy {
    let mut config = crate::helpers::test_config();
    config.limits.max_sends_per_hour = Some(otp_api::config::SendCeiling::PerHour(10));
    config.limits.max_sends_per_country_per_hour =
        otp_api::config::CountryBudgets::parse("GB=5").unwrap();
    otp_api::store::StorePolicy::from_config(&config)
}

#[tokio::test]
async fn the_budget_gauges_follow_redis() {
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let _cleanup = otp_testkit::Cleanup {
        redis_url: otp_testkit::redis_url(),
        key_prefix: prefix.clone(),
        amqp_url: crate::helpers::AMQP_URL.into(),
        queue: format!("test.budget.{}", uuid::Uuid::new_v4().simple()),
    };
    let conn = otp_testkit::redis_conn();
    let keys = otp_shared::keys::Keys::new(prefix);
    the_budget_gauges_follow(otp_api::store::RedisStore::new(conn, keys, budgeted())).await;
}

#[tokio::test]
async fn the_budget_gauges_follow_memory() {
    let store = otp_api::store::MemoryStore::new(budgeted(), Default::default());
    the_budget_gauges_follow(store).await;
}
