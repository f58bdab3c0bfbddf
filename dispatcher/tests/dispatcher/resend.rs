//! An SMS the carrier could not deliver is sent once more through the next provider, while its
//! code is still valid: once, and never after the code was used.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use wiremock::MockServer;

use otp_testkit::eventually;

use crate::{
    end_to_end::{api_config, spawn_api_with},
    helpers::{
        PHONE, World, accepted, plivo_call, spawn_dispatcher, twilio_call, twilio_created,
        wait_api_ready,
    },
};

const TOKEN: &str = "resend-test-token";
const CALLBACK: &str = "https://otp.example.com/api/otp/callbacks/plivo";

struct Stack {
    world: World,
    plivo: MockServer,
    twilio: MockServer,
    base: String,
    http: reqwest::Client,
    _api: tokio::sync::oneshot::Sender<()>,
    _dispatcher: crate::helpers::Running,
}

async fn stack(twilio_calls: u64) -> Stack {
    stack_with(twilio_calls, |_| {}).await
}

async fn stack_with(twilio_calls: u64, tweak: impl FnOnce(&mut otp_api::config::Config)) -> Stack {
    let (plivo, twilio) = (MockServer::start().await, MockServer::start().await);
    plivo_call()
        .respond_with(accepted("m-plivo"))
        .expect(1)
        .mount(&plivo)
        .await;
    twilio_call()
        .respond_with(twilio_created("SM-resend"))
        .expect(twilio_calls)
        .mount(&twilio)
        .await;
    let world = World::new().await;
    let mut dispatcher = world.config(&plivo.uri());
    dispatcher.delivery.providers.sms_providers = vec![
        otp_delivery::sender::SmsProvider::Plivo,
        otp_delivery::sender::SmsProvider::Twilio,
    ];
    dispatcher.delivery.providers.twilio_base_url = twilio.uri();
    let dispatcher = spawn_dispatcher(dispatcher).await;
    let mut api = api_config(&world);
    api.reports.plivo_auth_token = Some(TOKEN.to_owned().into());
    api.reports.sms_status_callback_url = Some(CALLBACK.into());
    tweak(&mut api);
    let (base, stop) = spawn_api_with(api).await;
    let http = reqwest::Client::new();
    wait_api_ready(&http, &base).await;
    Stack {
        world,
        plivo,
        twilio,
        base,
        http,
        _api: stop,
        _dispatcher: dispatcher,
    }
}

impl Stack {
    /// Requests a code and waits until Plivo accepted its SMS; returns the code.
    async fn code_sent_by_plivo(&self) -> String {
        self.sent_by_plivo().await.0
    }

    /// Like `code_sent_by_plivo`, with the verification id.
    async fn sent_by_plivo(&self) -> (String, uuid::Uuid) {
        let resp = self
            .http
            .post(format!("{}/api/otp/request", self.base))
            .json(&json!({ "phoneNumber": PHONE }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let vid = resp.json::<Value>().await.unwrap()["verificationId"]
            .as_str()
            .unwrap()
            .to_owned();
        let sent = eventually(Duration::from_secs(5), || async {
            let status = self.world.status(vid.parse().unwrap()).await;
            status.is_some_and(|s| s.state.as_str() == "sent")
        });
        assert!(sent.await, "Plivo never accepted the SMS");
        let sms = &self.plivo.received_requests().await.unwrap()[0];
        let body: Value = serde_json::from_slice(&sms.body).unwrap();
        let text = body["text"].as_str().unwrap();
        (
            text.chars().filter(char::is_ascii_digit).collect(),
            vid.parse().unwrap(),
        )
    }

    /// A signed (V3) Plivo report for the message.
    async fn report(&self, status: &str, nonce: &str) -> u16 {
        let params: Vec<(String, String)> = [
            ("MessageUUID", "m-plivo"),
            ("Status", status),
            ("ErrorCode", "30"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        let payload = otp_api::callbacks::v3_payload(CALLBACK, &params, nonce).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(TOKEN.as_bytes()).unwrap();
        mac.update(payload.as_bytes());
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        self.http
            .post(format!("{}/api/otp/callbacks/plivo", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-plivo-signature-v3", signature)
            .header("x-plivo-signature-v3-nonce", nonce)
            .body(format!("MessageUUID=m-plivo&Status={status}&ErrorCode=30"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn verify(&self, code: &str) -> u16 {
        self.http
            .post(format!("{}/api/otp/verify", self.base))
            .json(&json!({ "phoneNumber": PHONE, "otp": code }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The API's `otp_resends_total`: resends it published. A report's answer comes after its
    /// resend is confirmed, so this is exact as soon as the report is answered.
    async fn resends(&self) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("\notp_resends_total "),
            "otp_resends_total is exposed"
        );
        otp_testkit::metric_value(&text, "otp_resends_total") as u64
    }

    async fn twilio_texts(&self) -> Vec<String> {
        self.twilio
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect()
    }
}

#[tokio::test]
async fn an_undelivered_sms_is_resent_once_through_the_next_provider() {
    let stack = stack(1).await;
    let events = stack.world.bind_events().await;
    let (code, vid) = stack.sent_by_plivo().await;
    assert_eq!(stack.report("undelivered", "n-1").await, 200);
    assert_eq!(stack.resends().await, 1);
    // The report and the resend are events too.
    let seen = stack.world.events_of(&events, vid, "resent").await;
    let mut kinds: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // The API's `requested` and the dispatcher's first `sent` may come in either order.
    kinds[..2].sort_unstable();
    // The resend's own `sent` may follow.
    assert_eq!(kinds[..4], ["requested", "sent", "undelivered", "resent"]);
    eventually(Duration::from_secs(5), || async {
        !stack.twilio_texts().await.is_empty()
    })
    .await;
    let texts = stack.twilio_texts().await;
    assert_eq!(texts.len(), 1, "resent through Twilio");
    assert!(texts[0].contains(&code), "the same code");
    // Another bad report: no second resend.
    assert_eq!(stack.report("failed", "n-2").await, 200);
    assert_eq!(stack.resends().await, 1, "no second resend published");
    assert_eq!(stack.twilio_texts().await.len(), 1);
    assert_eq!(stack.verify(&code).await, 200);
    stack.plivo.verify().await;
    stack.twilio.verify().await;
}

#[tokio::test]
async fn a_used_code_is_never_resent() {
    let stack = stack(0).await;
    let code = stack.code_sent_by_plivo().await;
    assert_eq!(stack.verify(&code).await, 200);
    assert_eq!(stack.report("undelivered", "n-3").await, 200);
    assert_eq!(stack.resends().await, 0, "no resend published");
    assert!(stack.twilio_texts().await.is_empty());
    stack.twilio.verify().await;
}

/// A resend spends the send budgets like a new request: with room for one send an hour, the
/// code's own SMS takes it and the undelivered report gets no resend, and the status says why;
/// with room for two, exactly one resend.
#[tokio::test]
async fn a_resend_spends_the_hourly_send_budget() {
    use otp_api::config::SendCeiling;
    let stack = stack_with(0, |api| {
        api.limits.max_sends_per_hour = Some(SendCeiling::PerHour(1));
    })
    .await;
    let (_, vid) = stack.sent_by_plivo().await;
    assert_eq!(stack.report("undelivered", "n-4").await, 200);
    assert_eq!(stack.resends().await, 0, "no resend past the budget");
    let status = stack.world.status(vid).await.unwrap();
    assert_eq!(
        status.resend.as_deref(),
        Some("not resent: hourly send budget spent")
    );
    stack.twilio.verify().await;

    let stack = stack_with(1, |api| {
        api.limits.max_sends_per_hour = Some(SendCeiling::PerHour(2));
    })
    .await;
    let (_, vid) = stack.sent_by_plivo().await;
    assert_eq!(stack.report("undelivered", "n-5").await, 200);
    assert_eq!(stack.resends().await, 1);
    eventually(Duration::from_secs(5), || async {
        !stack.twilio_texts().await.is_empty()
    })
    .await;
    assert_eq!(stack.twilio_texts().await.len(), 1, "exactly one resend");
    let status = stack.world.status(vid).await.unwrap();
    assert_eq!(status.resend.as_deref(), Some("resent"));
    stack.twilio.verify().await;
}
