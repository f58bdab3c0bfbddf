//! `GET /metrics` on the dispatcher's HTTP port: each counter moves for the outcome it counts.

use std::time::Duration;

use wiremock::{MockServer, ResponseTemplate, matchers::body_partial_json};

use otp_testkit::eventually;

use crate::helpers::{PHONE, Running, accepted, plivo_call, spawn_dispatcher, start};

const OTHER_PHONE: &str = "+442071838750";

async fn metric(dispatcher: &Running, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", dispatcher.health))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    otp_testkit::metric_value(&text, series)
}

/// Waits (bounded) until `series` reaches `value`, then asserts it.
async fn expect_metric(dispatcher: &Running, series: &str, value: f64, within: Duration) {
    eventually(within, || async {
        metric(dispatcher, series).await == value
    })
    .await;
    assert_eq!(metric(dispatcher, series).await, value, "{series}");
}

#[tokio::test]
async fn every_job_result_and_provider_answer_is_counted() {
    let plivo = MockServer::start().await;
    plivo_call()
        .and(body_partial_json(serde_json::json!({ "dst": PHONE })))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&plivo)
        .await;
    plivo_call()
        .and(body_partial_json(serde_json::json!({ "dst": OTHER_PHONE })))
        .respond_with(ResponseTemplate::new(400))
        .with_priority(2)
        .mount(&plivo)
        .await;
    plivo_call()
        .respond_with(accepted("m-1"))
        .with_priority(3)
        .mount(&plivo)
        .await;
    let (world, dispatcher) = start(&plivo).await;
    let soon = Duration::from_secs(5);

    // Sent after one retry.
    let (job, status) = world.send_one(PHONE, "123123").await;
    assert_eq!(status.state.as_str(), "sent");
    expect_metric(&dispatcher, r#"otp_jobs_total{result="sent"}"#, 1.0, soon).await;
    assert_eq!(metric(&dispatcher, "otp_send_retries_total").await, 1.0);
    let class =
        |c: &str| format!(r#"otp_provider_requests_total{{provider="plivo",status_class="{c}"}}"#);
    assert_eq!(metric(&dispatcher, &class("5xx")).await, 1.0);
    assert_eq!(metric(&dispatcher, &class("2xx")).await, 1.0);
    assert_eq!(
        metric(
            &dispatcher,
            r#"otp_provider_request_duration_seconds_count{provider="plivo"}"#
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(&dispatcher, "otp_job_time_to_accept_seconds_count").await,
        1.0
    );
    // Each call waited for its slot under the shared rate.
    assert_eq!(
        metric(&dispatcher, "otp_rate_wait_seconds_count").await,
        2.0
    );

    // The same job again is a duplicate.
    world.publish_unannounced(&job).await;
    expect_metric(
        &dispatcher,
        r#"otp_jobs_total{result="duplicate"}"#,
        1.0,
        soon,
    )
    .await;

    // A permanent refusal fails and is dead-lettered.
    let (_, status) = world.send_one(OTHER_PHONE, "456456").await;
    assert_eq!(status.state.as_str(), "failed");
    expect_metric(&dispatcher, r#"otp_jobs_total{result="failed"}"#, 1.0, soon).await;
    assert_eq!(metric(&dispatcher, &class("4xx")).await, 1.0);
    let dead = |reason: &str| format!(r#"otp_dead_letters_total{{reason="{reason}"}}"#);
    assert_eq!(metric(&dispatcher, &dead("rejected")).await, 1.0);
    assert_eq!(metric(&dispatcher, &dead("unreadable")).await, 0.0);
    assert_eq!(
        metric(&dispatcher, r#"otp_sends_total{provider="plivo"}"#).await,
        1.0
    );
    assert_eq!(
        metric(
            &dispatcher,
            r#"otp_failovers_total{from="plivo",to="twilio"}"#
        )
        .await,
        0.0,
        "one provider: no failover"
    );

    // Expired, and withdrawn by the API: no call.
    let expired = world.job(PHONE, "789789", time::Duration::seconds(-1));
    world.publish(&expired).await;
    expect_metric(
        &dispatcher,
        r#"otp_jobs_total{result="expired"}"#,
        1.0,
        soon,
    )
    .await;
    let withdrawn = world.job(PHONE, "321321", time::Duration::minutes(5));
    world.publish_unannounced(&withdrawn).await;
    expect_metric(
        &dispatcher,
        r#"otp_jobs_total{result="withdrawn"}"#,
        1.0,
        soon,
    )
    .await;

    // The depth gauges are refreshed every few seconds, by one dispatcher per queue: a second
    // one on the same queue exports none while the first holds the lease.
    let second = spawn_dispatcher(world.config(&plivo.uri())).await;
    let queue = &world.queue;
    expect_metric(
        &dispatcher,
        &format!(r#"otp_dead_letter_messages{{queue="{queue}.dead"}}"#),
        1.0,
        Duration::from_secs(12),
    )
    .await;
    assert_eq!(
        metric(
            &dispatcher,
            &format!(r#"otp_queue_ready_messages{{queue="{queue}"}}"#)
        )
        .await,
        0.0
    );
    let text = reqwest::get(format!("http://{}/metrics", second.health))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in ["otp_queue_ready_messages{", "otp_dead_letter_messages{"] {
        assert!(
            !text.contains(family),
            "a second dispatcher exports no depth: {text}"
        );
    }
    // What every process exports.
    assert!(text.contains("otp_build_info{"), "{text}");
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    second.stop().await;
    assert_eq!(metric(&dispatcher, "otp_jobs_in_flight").await, 0.0);
    assert_eq!(
        metric(&dispatcher, &class("2xx")).await,
        1.0,
        "no second send"
    );
}
