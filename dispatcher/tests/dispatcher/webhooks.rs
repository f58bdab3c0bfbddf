//! Verification events delivered to the app's webhook (EVENTS_WEBHOOK_URL): each one signed,
//! every one delivered even when the receiver fails at first, none with the code or number.

use std::{collections::BTreeMap, time::Duration};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::{
    end_to_end::{api_config, spawn_api_with},
    helpers::{PHONE, World, accepted, plivo_call, spawn_dispatcher, wait_api_ready},
};

const SECRET: &str = "whsec-test";

/// Matches the webhook calls of one verification, once its id is known.
#[derive(Clone, Default)]
struct Mine(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl wiremock::Match for Mine {
    fn matches(&self, request: &wiremock::Request) -> bool {
        let vid = self.0.lock().unwrap().clone();
        vid.is_some_and(|vid| String::from_utf8_lossy(&request.body).contains(&vid))
    }
}

/// Whether `header` (`t=<unix>,v1=<hex>`) signs `body` with SECRET.
fn signed(header: &str, body: &[u8]) -> bool {
    let Some((t, v1)) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex == v1
}

#[tokio::test]
async fn every_event_reaches_the_webhook_signed_even_after_failures() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("hook"))
        .mount(&plivo)
        .await;
    let hook = MockServer::start().await;
    // The receiver fails this verification's first three deliveries, then accepts.
    let mine = Mine::default();
    Mock::given(method("POST"))
        .and(path("/hook"))
        .and(mine.clone())
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&hook)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&hook)
        .await;
    let world = World::new().await;
    let mut config = world.config(&plivo.uri());
    config.webhooks.events_webhook_url = Some(format!("{}/hook", hook.uri()));
    config.webhooks.events_webhook_secret = Some(SECRET.to_owned().into());
    // A first dispatcher declares the webhook's queue, so events wait in it while none runs.
    spawn_dispatcher(config.clone()).await.stop().await;
    let (api, _stop) = spawn_api_with(api_config(&world)).await;
    let http = reqwest::Client::new();
    wait_api_ready(&http, &api).await;

    let resp = http
        .post(format!("{api}/api/otp/request"))
        .json(&json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    let vid = resp.json::<Value>().await.unwrap()["verificationId"]
        .as_str()
        .unwrap()
        .to_owned();
    *mine.0.lock().unwrap() = Some(vid.clone());
    let dispatcher = spawn_dispatcher(config).await;
    let sms = otp_testkit::eventually(Duration::from_secs(10), || async {
        !plivo.received_requests().await.unwrap().is_empty()
    });
    assert!(sms.await, "no SMS");
    let sms: Value =
        serde_json::from_slice(&plivo.received_requests().await.unwrap()[0].body).unwrap();
    let code: String = sms["text"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let verify = json!({ "phoneNumber": PHONE, "otp": code, "verificationId": vid });
    let verified = http
        .post(format!("{api}/api/otp/verify"))
        .json(&verify)
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);

    // This verification's events, deduplicated by id (other tests publish too).
    let mine = || async {
        let mut events: BTreeMap<String, (String, bool)> = BTreeMap::new();
        for request in hook.received_requests().await.unwrap() {
            let event: Value = serde_json::from_slice(&request.body).unwrap();
            if event["verificationId"] != json!(vid) {
                continue;
            }
            let text = String::from_utf8_lossy(&request.body).into_owned();
            assert!(
                !text.contains(&code) && !text.contains("4155552671"),
                "{text}"
            );
            let header = request
                .headers
                .get("otp-signature")
                .unwrap()
                .to_str()
                .unwrap();
            let kind = event["type"].as_str().unwrap().to_owned();
            events.insert(
                event["id"].as_str().unwrap().to_owned(),
                (kind, signed(header, &request.body)),
            );
        }
        events
    };
    let all = otp_testkit::eventually(Duration::from_secs(30), || async {
        mine().await.len() >= 3
    });
    assert!(all.await, "events so far: {:?}", mine().await);
    let events = mine().await;
    let mut kinds: Vec<&str> = events.values().map(|(k, _)| k.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["requested", "sent", "verified"]);
    assert!(
        events.values().all(|(_, ok)| *ok),
        "a bad signature: {events:?}"
    );
    let deliveries = hook
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(&vid))
        .count();
    assert_eq!(deliveries, events.len() + 3, "three failures, each retried");
    dispatcher.stop().await;
    // The webhook's queues are this test's own.
    let queue = otp_dispatcher::webhooks::queue_name(&world.queue);
    for name in [queue.clone(), format!("{queue}.dead")] {
        let _ = world
            .channel
            .queue_delete(name.as_str().into(), Default::default())
            .await;
    }
}
