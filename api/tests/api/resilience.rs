use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use serde_json::Value;

use otp_testkit::{Proxy, eventually, poll_until};

use crate::helpers::{PHONE, TestApp, assert_error, spawn_unready, spawn_with};

async fn assert_unavailable(resp: reqwest::Response) {
    assert!(resp.headers().contains_key("retry-after"));
    assert_error(resp, 503, "SERVICE_UNAVAILABLE").await;
}

async fn readiness(app: &TestApp) -> (u16, String) {
    let resp = app.get("/readyz").await;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (status, body.to_string())
}

/// Polls until a code request succeeds again, proving recovery needed no restart.
async fn wait_until_requests_succeed(app: &TestApp, within: Duration) {
    let recovered = poll_until(within, Duration::from_millis(200), || async {
        app.request_otp(PHONE).await.status().as_u16() == 202
    });
    assert!(
        recovered.await,
        "requests did not recover within {within:?}"
    );
}

fn code_keys(keys: &[String]) -> Vec<&String> {
    keys.iter()
        .filter(|k| k.contains(":code:") || k.contains(":status:") || k.contains(":cool:"))
        .collect()
}

#[tokio::test]
async fn redis_down_gives_503_and_not_ready() {
    let app = spawn_unready(|c| {
        c.redis.redis_url = Some("redis://127.0.0.1:1/0".to_owned().into());
        c.redis.redis_cluster = false;
    })
    .await;
    assert_unavailable(app.request_otp(PHONE).await).await;
    assert_unavailable(app.verify(PHONE, "123456").await).await;
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503);
    assert!(body.contains("redis"), "{body}");
}

#[tokio::test]
async fn broker_down_gives_503_and_leaves_no_code_behind() {
    let app = spawn_unready(|c| {
        c.amqp.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".parse().unwrap();
        c.limits.resend_cooldown_seconds = 30;
    })
    .await;
    assert_unavailable(app.request_otp(PHONE).await).await;
    assert!(code_keys(&app.redis_keys().await).is_empty());
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("rabbitmq") && !body.contains("redis"),
        "{body}"
    );
}

#[tokio::test]
async fn an_unroutable_publish_gives_503_and_undoes_the_cooldown() {
    let app = spawn_with(|c| c.limits.resend_cooldown_seconds = 30).await;
    app.channel
        .queue_delete(app.queue().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_unavailable(app.request_otp(PHONE).await).await;
    assert!(
        code_keys(&app.redis_keys().await).is_empty(),
        "{:?}",
        app.redis_keys().await
    );
}

#[tokio::test]
async fn a_publish_not_confirmed_in_time_gives_503_and_undoes_the_request() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let app = spawn_with(|c| {
        c.amqp.amqp_url = url.parse().unwrap();
        c.publish_confirm_timeout_ms = 300;
        c.limits.resend_cooldown_seconds = 30;
    })
    .await;
    // The broker stops answering: the publish is sent but its confirm never comes back.
    proxy.stall();
    let started = Instant::now();
    assert_unavailable(app.request_otp(PHONE).await).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the confirm timeout"
    );
    assert!(
        code_keys(&app.redis_keys().await).is_empty(),
        "{:?}",
        app.redis_keys().await
    );
    proxy.resume();
}

#[tokio::test]
async fn the_api_reconnects_after_a_broker_restart() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let app = spawn_with(|c| c.amqp.amqp_url = url.parse().unwrap()).await;
    assert_eq!(app.request_otp(PHONE).await.status().as_u16(), 202);

    proxy.refuse();
    let noticed = eventually(Duration::from_secs(5), || async {
        readiness(&app).await.0 == 503
    })
    .await;
    assert!(noticed, "the broken connection was not noticed");
    assert_unavailable(app.request_otp(PHONE).await).await;

    proxy.accept();
    wait_until_requests_succeed(&app, Duration::from_secs(20)).await;
    assert_eq!(readiness(&app).await.0, 200);
}

#[tokio::test]
async fn the_api_reconnects_after_a_redis_restart() {
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let url = format!("redis://{}/0", proxy.addr);
    // A single server behind a proxy, whichever Redis the other tests use.
    let app = spawn_with(|c| {
        c.redis.redis_url = Some(url.into());
        c.redis.redis_cluster = false;
    })
    .await;
    assert_eq!(app.request_otp(PHONE).await.status().as_u16(), 202);

    proxy.refuse();
    assert_unavailable(app.request_otp(PHONE).await).await;

    proxy.accept();
    wait_until_requests_succeed(&app, Duration::from_secs(20)).await;
}
