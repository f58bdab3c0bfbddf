use std::time::Duration;

use serde_json::{Value, json};
use wiremock::MockServer;

use otp_testkit::wait_for;

use crate::helpers::{PHONE, World, accepted, plivo_call, spawn_dispatcher, wait_api_ready};

/// The API, configured like the dispatcher (same queue, key prefix and job key).
async fn spawn_api(world: &World) -> (String, tokio::sync::oneshot::Sender<()>) {
    spawn_api_with(api_config(world)).await
}

/// The API's settings for `world` (same queue, key prefix and job key as its dispatcher).
pub fn api_config(world: &World) -> otp_api::config::Config {
    let mut config = otp_api::testing::api_config(&world.prefix, &world.queue);
    // Beside dispatchers (and on Redis Cluster in CI) the machine is busier than in the API's
    // own suite: a freshly declared quorum queue may take over 2 s to confirm a first publish.
    config.publish_confirm_timeout_ms = 5000;
    config.redis = otp_testkit::redis_args(&world.prefix, 1000);
    config
}

/// Runs the API until the returned sender is dropped or fired; returns its base URL.
pub async fn spawn_api_with(
    config: otp_api::config::Config,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let app = otp_api::startup::Application::build(config)
        .await
        .expect("api builds");
    let base = format!("http://{}", app.addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    (base, tx)
}

#[tokio::test]
async fn an_api_request_reaches_the_provider_and_its_code_then_verifies() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("e2e"))
        .expect(1)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let _dispatcher = spawn_dispatcher(world.config(&plivo.uri())).await;
    let events = world.bind_events().await;
    let (api, _stop) = spawn_api(&world).await;
    let http = reqwest::Client::new();
    wait_api_ready(&http, &api).await;

    let resp = http
        .post(format!("{api}/api/otp/request"))
        .json(&json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    let vid = body["verificationId"].as_str().unwrap().to_owned();

    let status = wait_for(Duration::from_secs(10), || async {
        let response = http.get(format!("{api}/api/otp/status/{vid}")).send();
        let s: Value = response.await.unwrap().json().await.unwrap();
        (s["state"] == json!("sent")).then_some(s)
    });
    let status = status.await.expect("sent within 10 s");
    assert_eq!(status["attempts"], json!(1));
    assert!(!status.to_string().contains("4155552671"));

    let requests = plivo.received_requests().await.unwrap();
    let sms: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(sms["dst"], json!(PHONE));
    let text = sms["text"].as_str().unwrap();
    let code = text
        .strip_prefix("Your verification code is: ")
        .expect("template applied");
    assert!(!status.to_string().contains(code));

    let verify = |otp: String| {
        http.post(format!("{api}/api/otp/verify"))
            .json(&json!({ "phoneNumber": PHONE, "otp": otp }))
            .send()
    };
    assert_eq!(
        verify(code.to_owned()).await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(
        verify(code.to_owned()).await.unwrap().status().as_u16(),
        400
    );
    // Each step was an event, from the API and the dispatcher, none with the code or number.
    let vid: uuid::Uuid = vid.parse().unwrap();
    let seen = world.events_of(&events, vid, "verified").await;
    // The API and the dispatcher publish independently: `requested` and `sent` in either order.
    let mut kinds: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.last(), Some(&"verified"));
    kinds.sort_unstable();
    assert_eq!(kinds, ["requested", "sent", "verified"]);
    let sent = seen.iter().find(|e| e["type"] == "sent").unwrap();
    assert_eq!(sent["provider"], json!("plivo"));
    for event in &seen {
        let text = event.to_string();
        assert!(
            !text.contains(code) && !text.contains("4155552671"),
            "{text}"
        );
    }
    plivo.verify().await;
}

/// A verification canceled while its job waits in the queue: the job is withdrawn, not sent.
#[tokio::test]
async fn a_canceled_verification_s_queued_job_is_not_sent() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("never"))
        .expect(0)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let (api, _stop) = spawn_api(&world).await;
    let http = reqwest::Client::new();
    wait_api_ready(&http, &api).await;
    let resp = http
        .post(format!("{api}/api/otp/request"))
        .json(&json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    let vid = body["verificationId"].as_str().unwrap().to_owned();
    let canceled = http
        .post(format!("{api}/api/otp/cancel"))
        .json(&json!({ "verificationId": vid }))
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status().as_u16(), 200);

    // The dispatcher starts with the job waiting: it withdraws it.
    let dispatcher = spawn_dispatcher(world.config(&plivo.uri())).await;
    dispatcher.wait_handled(1).await;
    assert_eq!(
        dispatcher
            .metric(r#"otp_jobs_total{result="withdrawn"}"#)
            .await,
        1.0
    );
    let status: serde_json::Value = http
        .get(format!("{api}/api/otp/status/{vid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], json!("canceled"));
    plivo.verify().await;
}
