//! Verification events on RabbitMQ: a consumer that binds its own queue to `otp.events` sees
//! each step of a verification, and no event holds the code or the full number.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};

use crate::helpers::{PHONE, TestApp, spawn_with};

/// A queue of the test's own, bound to every verification event; returns its name.
pub async fn bind_events(app: &TestApp) -> String {
    let queue = format!("test.events.{}", uuid::Uuid::new_v4().simple());
    let declare = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    app.channel
        .queue_declare(queue.as_str().into(), declare, FieldTable::default())
        .await
        .unwrap();
    app.channel
        .queue_bind(
            queue.as_str().into(),
            otp_shared::events::EXCHANGE.into(),
            "verification.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue
}

/// The first `wanted` events of the verifications `vids` on `queue` (other tests publish too),
/// as (routing key, body); each checked to hold neither `secrets` nor a full number.
pub async fn events_for(
    app: &TestApp,
    queue: &str,
    vids: &[&str],
    wanted: usize,
    secrets: &[&str],
) -> Vec<(String, Value)> {
    let mut consumer = app
        .channel
        .basic_consume(
            queue.into(),
            format!("events-{}", uuid::Uuid::new_v4().simple())
                .as_str()
                .into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let collect = async {
        while let Some(Ok(delivery)) = consumer.next().await {
            let text = String::from_utf8(delivery.data.clone()).unwrap();
            let event: Value = serde_json::from_str(&text).unwrap();
            let vid = event["verificationId"].as_str().unwrap_or_default();
            if vids.contains(&vid) {
                for secret in secrets {
                    assert!(!text.contains(secret), "an event holds {secret}: {text}");
                }
                seen.push((delivery.routing_key.to_string(), event));
                if seen.len() == wanted {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), collect).await;
    seen
}

/// Up to `wanted` events on `queue` that `wanted_event` accepts, from whichever verification
/// (5 s at most); other tests publish too, so the predicate picks this test's.
pub async fn events_where(
    app: &TestApp,
    queue: &str,
    wanted: usize,
    wanted_event: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut found = Vec::new();
    for _ in 0..50 {
        while let Ok(Some(message)) = app
            .channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
        {
            let event: Value = serde_json::from_slice(&message.delivery.data).unwrap();
            if wanted_event(&event) {
                found.push(event);
            }
        }
        if found.len() >= wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    found
}

#[tokio::test]
async fn a_bound_queue_sees_requested_verified_and_canceled() {
    let app = spawn_with(|_| {}).await;
    let queue = bind_events(&app).await;

    let resp = app.request_otp(PHONE).await;
    let verified: Value = resp.json().await.unwrap();
    let verified_id = verified["verificationId"].as_str().unwrap().to_owned();
    let (_, content) = app.next_job().await;
    let code = content.code.clone();
    let verify = json!({ "phoneNumber": PHONE, "otp": code, "verificationId": verified_id });
    assert_eq!(
        app.post_json("/api/otp/verify", &verify).await.status(),
        200
    );
    let other = "+14155552672";
    let resp = app.request_otp(other).await;
    let canceled: Value = resp.json().await.unwrap();
    let canceled_id = canceled["verificationId"].as_str().unwrap().to_owned();
    let cancel = json!({ "verificationId": canceled_id });
    assert_eq!(
        app.post_json("/api/otp/cancel", &cancel).await.status(),
        200
    );

    let secrets = [code.as_str(), "4155552671", "4155552672"];
    let vids = [verified_id.as_str(), canceled_id.as_str()];
    let seen = events_for(&app, &queue, &vids, 4, &secrets).await;
    let kinds = |vid: &str| -> Vec<String> {
        seen.iter()
            .filter(|(_, e)| e["verificationId"] == json!(vid))
            .map(|(key, _)| key.clone())
            .collect()
    };
    assert_eq!(
        kinds(&verified_id),
        ["verification.requested", "verification.verified"],
        "{seen:?}"
    );
    assert_eq!(
        kinds(&canceled_id),
        ["verification.requested", "verification.canceled"],
        "{seen:?}"
    );
    let (_, requested) = &seen[0];
    assert_eq!(requested["type"], json!("requested"));
    assert_eq!(requested["country"], json!("US"));
    assert!(requested["maskedNumber"].as_str().unwrap().contains('*'));
    assert!(requested["id"].as_str().is_some() && requested["occurredAt"].as_str().is_some());
    let ids: std::collections::HashSet<&str> = seen
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), seen.len(), "event ids are unique");
}

/// The wrong guess that uses up the last attempt publishes `attempts_exhausted`, once.
#[tokio::test]
async fn the_last_wrong_guess_publishes_attempts_exhausted() {
    let app = spawn_with(|c| c.otp.otp_max_attempts = 2).await;
    let queue = bind_events(&app).await;
    let resp = app.request_otp(PHONE).await;
    let body: Value = resp.json().await.unwrap();
    let vid = body["verificationId"].as_str().unwrap().to_owned();
    let (_, content) = app.next_job().await;
    let wrong = if content.code == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..3 {
        let guess = json!({ "phoneNumber": PHONE, "otp": wrong, "verificationId": vid });
        assert_eq!(app.post_json("/api/otp/verify", &guess).await.status(), 400);
    }
    let seen = events_for(&app, &queue, &[&vid], 3, &[content.code.as_str()]).await;
    let kinds: Vec<&str> = seen.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(
        kinds,
        ["verification.requested", "verification.attempts_exhausted"]
    );
}

/// The one-process mode prints its events and, with EVENTS_WEBHOOK_URL, POSTs them signed:
/// the API's `requested` and its worker's `sent`.
#[tokio::test]
async fn the_embedded_mode_delivers_events_to_the_webhook() {
    use wiremock::{
        Mock, MockServer, ResponseTemplate,
        matchers::{method, path},
    };
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let mut cmd = crate::process::embedded_api();
    cmd.arg("--embedded")
        .env("EVENTS_WEBHOOK_URL", format!("{}/hook", hook.uri()))
        .env("EVENTS_WEBHOOK_SECRET", "embedded-secret");
    let (child, _lines, port) = crate::process::start_logged(&mut cmd).await;
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/otp/request"))
        .json(&json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let arrived = otp_testkit::eventually(Duration::from_secs(10), || async {
        hook.received_requests().await.unwrap().len() >= 2
    });
    assert!(
        arrived.await,
        "the webhook got {:?}",
        hook.received_requests().await
    );
    let mut kinds = Vec::new();
    for request in hook.received_requests().await.unwrap() {
        let event: Value = serde_json::from_slice(&request.body).unwrap();
        kinds.push(event["type"].as_str().unwrap().to_owned());
        let signature = request
            .headers
            .get("otp-signature")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            signature.starts_with("t=") && signature.contains(",v1="),
            "{signature}"
        );
    }
    // The API's `requested` and the worker's `sent` are published by two tasks: either first.
    kinds.sort();
    assert_eq!(kinds, ["requested", "sent"]);
    drop(child);
}

/// EVENTS_ENABLED=false: nothing is published, for any step.
#[tokio::test]
async fn events_off_publishes_nothing() {
    let app = spawn_with(|c| c.webhooks.events_enabled = false).await;
    let queue = bind_events(&app).await;
    let resp = app.request_otp(PHONE).await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let vid = body["verificationId"].as_str().unwrap().to_owned();
    let (_, content) = app.next_job().await;
    let verify = json!({ "phoneNumber": PHONE, "otp": content.code, "verificationId": vid });
    assert_eq!(
        app.post_json("/api/otp/verify", &verify).await.status(),
        200
    );
    // Other tests publish to the exchange too: only this verification's events count.
    let mine = async {
        loop {
            let got = app
                .channel
                .basic_get(
                    queue.as_str().into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            match got {
                Some(message) if String::from_utf8_lossy(&message.delivery.data).contains(&vid) => {
                    return message.delivery.routing_key.to_string();
                }
                Some(_) => {}
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    let published = tokio::time::timeout(Duration::from_secs(2), mine).await;
    assert!(published.is_err(), "published {published:?}");
}
