//! Plivo delivery reports: signed ones move the delivery state forward, nothing else changes it.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use otp_shared::{
    keys::Keys,
    status::{self, DeliveryState},
};

use crate::helpers::{PHONE, TestApp, assert_error, spawn_with};

const TOKEN: &str = "report-test-token";
const URL: &str = "https://otp.example.com/api/otp/callbacks/plivo?tenant=a";

fn hmac_b64(payload: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Plivo's V3 construction, written out for this URL: base + `?` + sorted query + `.`, then
/// the sorted POST parameters as name+value, then `.` + nonce.
fn v3(params: &[(&str, &str)], nonce: &str) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let body: String = sorted.iter().map(|(k, v)| format!("{k}{v}")).collect();
    hmac_b64(&format!(
        "https://otp.example.com/api/otp/callbacks/plivo?tenant=a.{body}.{nonce}"
    ))
}

const TWILIO_URL: &str = "https://otp.example.com/api/otp/callbacks/twilio";

async fn reporting_app() -> TestApp {
    reporting_app_with(false).await
}

/// Reports configured for both providers; `accept_v2` is PLIVO_ACCEPT_V2.
async fn reporting_app_with(accept_v2: bool) -> TestApp {
    spawn_with(|c| {
        c.reports.plivo_auth_token = Some(TOKEN.to_owned().into());
        c.reports.sms_status_callback_url = Some(URL.into());
        c.reports.twilio_auth_token = Some(TOKEN.to_owned().into());
        c.reports.twilio_status_callback_url = Some(TWILIO_URL.into());
        c.plivo_accept_v2 = accept_v2;
    })
    .await
}

/// A code request whose SMS Plivo accepted as `message`: what the dispatcher leaves behind.
async fn sent(app: &TestApp, phone: &str, message: &str) -> Uuid {
    sent_via(app, "plivo", phone, message).await
}

async fn sent_via(app: &TestApp, provider: &str, phone: &str, message: &str) -> Uuid {
    let resp = app.request_otp(phone).await;
    let body: Value = resp.json().await.unwrap();
    let vid = Uuid::parse_str(body["verificationId"].as_str().unwrap()).unwrap();
    let keys = Keys::new(app.prefix());
    let mut redis = app.redis.clone();
    let _: () = redis::cmd("SET")
        .arg(keys.provider_message(provider, message))
        .arg(vid.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    status::advance(&mut redis, &keys, vid, DeliveryState::Sent, &[])
        .await
        .unwrap();
    vid
}

async fn state(app: &TestApp, vid: Uuid) -> String {
    let body: Value = app
        .get(&format!("/api/otp/status/{vid}"))
        .await
        .json()
        .await
        .unwrap();
    body["state"].as_str().unwrap().to_owned()
}

async fn report(
    app: &TestApp,
    params: &[(&str, &str)],
    headers: &[(&str, String)],
) -> reqwest::Response {
    report_to(app, "plivo", params, headers).await
}

async fn report_to(
    app: &TestApp,
    provider: &str,
    params: &[(&str, &str)],
    headers: &[(&str, String)],
) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let mut req = app
        .client
        .post(format!("{}/api/otp/callbacks/{provider}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.send().await.unwrap()
}

fn v3_headers(params: &[(&str, &str)], nonce: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-plivo-signature-v3", v3(params, nonce)),
        ("x-plivo-signature-v3-nonce", nonce.to_owned()),
    ]
}

#[tokio::test]
async fn a_signed_report_moves_the_state_forward_and_never_back() {
    let app = reporting_app().await;
    let vid = sent(&app, PHONE, "m-1").await;
    let delivered = [
        ("MessageUUID", "m-1"),
        ("Status", "delivered"),
        ("ErrorCode", "000"),
        ("To", PHONE),
    ];
    let resp = report(&app, &delivered, &v3_headers(&delivered, "n-1")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(state(&app, vid).await, "delivered");

    // A late `sent` (reports arrive out of order) does not undo it.
    let late = [("MessageUUID", "m-1"), ("Status", "sent")];
    assert_eq!(
        report(&app, &late, &v3_headers(&late, "n-2"))
            .await
            .status(),
        200
    );
    assert_eq!(state(&app, vid).await, "delivered");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"otp_delivery_reports_total{provider="plivo",status="delivered"} 1"#)
    );
}

#[tokio::test]
async fn unsigned_tampered_and_replayed_reports_change_nothing() {
    let app = reporting_app().await;
    let vid = sent(&app, PHONE, "m-2").await;
    let failed = [
        ("MessageUUID", "m-2"),
        ("Status", "undelivered"),
        ("ErrorCode", "30"),
    ];

    let unsigned = report(&app, &failed, &[]).await;
    assert_error(unsigned, 403, "INVALID_SIGNATURE").await;
    // Signed for `delivered`, sent as `undelivered`.
    let signed_other = [
        ("MessageUUID", "m-2"),
        ("Status", "delivered"),
        ("ErrorCode", "30"),
    ];
    let tampered = report(&app, &failed, &v3_headers(&signed_other, "n-3")).await;
    assert_error(tampered, 403, "INVALID_SIGNATURE").await;
    assert_eq!(state(&app, vid).await, "sent");

    // Several signatures: any valid one is enough.
    let mut headers = v3_headers(&failed, "n-4");
    headers[0].1 = format!("bm9wZQ==,{}", headers[0].1);
    assert_eq!(report(&app, &failed, &headers).await.status(), 200);
    assert_eq!(state(&app, vid).await, "undelivered");

    // The same signed report again: a replay, ignored (and counted as one).
    assert_eq!(report(&app, &failed, &headers).await.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"otp_delivery_reports_total{provider="plivo",status="replayed"} 1"#),
        "{metrics}"
    );
}

/// V3 signs `…<last name><last value>.<nonce>`: a captured report whose last value holds a `.`
/// can be re-split into another value and another nonce under the same signature. Replays are
/// recognised by what was signed, so the re-split copy is one too.
#[tokio::test]
async fn a_replay_re_split_at_a_dot_is_still_a_replay() {
    let app = reporting_app().await;
    sent(&app, PHONE, "m-9").await;
    let captured = [("MessageUUID", "m-9"), ("Status", "sent"), ("Zone", "eu.1")];
    let headers = v3_headers(&captured, "n-9");
    assert_eq!(report(&app, &captured, &headers).await.status(), 200);
    // The same signature; the value loses `.1`, the nonce gains it.
    let re_split = [("MessageUUID", "m-9"), ("Status", "sent"), ("Zone", "eu")];
    let moved = vec![
        headers[0].clone(),
        ("x-plivo-signature-v3-nonce", "1.n-9".to_owned()),
    ];
    assert_eq!(report(&app, &re_split, &moved).await.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"otp_delivery_reports_total{provider="plivo",status="replayed"} 1"#),
        "the re-split copy was applied: {metrics}"
    );
    assert!(metrics.contains(r#"otp_delivery_reports_total{provider="plivo",status="sent"} 1"#));
}

#[tokio::test]
async fn v2_alone_is_refused_unless_allowed_and_unknown_messages_are_retried_later() {
    let delivered = [("MessageUUID", "m-4"), ("Status", "delivered")];
    let v2 = vec![
        ("x-plivo-signature-v2", hmac_b64(&format!("{URL}n-5"))),
        ("x-plivo-signature-v2-nonce", "n-5".to_owned()),
    ];
    // V2 does not sign the body: by default a report signed with it alone is refused.
    let app = reporting_app().await;
    let vid = sent(&app, PHONE, "m-4").await;
    assert_error(
        report(&app, &delivered, &v2).await,
        403,
        "INVALID_SIGNATURE",
    )
    .await;
    assert_eq!(state(&app, vid).await, "sent");
    // With V3 headers present, only V3 counts: a valid V2 beside a wrong V3 is refused.
    let mut both = v2.clone();
    both.extend([
        ("x-plivo-signature-v3", hmac_b64("something else")),
        ("x-plivo-signature-v3-nonce", "n-5".to_owned()),
    ]);
    let app = reporting_app_with(true).await;
    let vid = sent(&app, PHONE, "m-4").await;
    assert_error(
        report(&app, &delivered, &both).await,
        403,
        "INVALID_SIGNATURE",
    )
    .await;
    // PLIVO_ACCEPT_V2=true takes V2 alone.
    assert_eq!(report(&app, &delivered, &v2).await.status(), 200);
    assert_eq!(state(&app, vid).await, "delivered");

    let unknown = [("MessageUUID", "m-unknown"), ("Status", "delivered")];
    let resp = report(&app, &unknown, &v3_headers(&unknown, "n-6")).await;
    assert_error(resp, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn without_a_token_and_url_the_endpoint_does_not_exist() {
    let app = spawn_with(|_| {}).await;
    let params = [("MessageUUID", "m"), ("Status", "delivered")];
    let resp = report(&app, &params, &v3_headers(&params, "n")).await;
    assert_error(resp, 404, "NOT_FOUND").await;
}

/// Twilio's signature, written out: HMAC-SHA1 over the URL and the sorted name+value pairs.
fn twilio_signature(params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(TWILIO_URL.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn twilio_reports_follow_the_same_rules() {
    let app = reporting_app().await;
    let vid = sent_via(&app, "twilio", PHONE, "SM-1").await;
    let undelivered = [
        ("MessageSid", "SM-1"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
    ];
    let unsigned = report_to(&app, "twilio", &undelivered, &[]).await;
    assert_error(unsigned, 403, "INVALID_SIGNATURE").await;
    let forged = vec![(
        "x-twilio-signature",
        twilio_signature(&[("MessageSid", "SM-1")]),
    )];
    let tampered = report_to(&app, "twilio", &undelivered, &forged).await;
    assert_error(tampered, 403, "INVALID_SIGNATURE").await;
    assert_eq!(state(&app, vid).await, "sent");

    let signed = vec![("x-twilio-signature", twilio_signature(&undelivered))];
    assert_eq!(
        report_to(&app, "twilio", &undelivered, &signed)
            .await
            .status(),
        200
    );
    assert_eq!(state(&app, vid).await, "undelivered");
    // The same report again (Twilio's retry, or a replay) is one change, not two.
    assert_eq!(
        report_to(&app, "twilio", &undelivered, &signed)
            .await
            .status(),
        200
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"otp_delivery_reports_total{provider="twilio",status="undelivered"} 1"#)
    );
    assert!(
        metrics.contains(r#"otp_delivery_reports_total{provider="twilio",status="replayed"} 1"#)
    );
}

/// A report that moves the state publishes its event (`delivered`, with the provider, or
/// `undelivered`); the resend that follows is dispatcher/tests/dispatcher/resend.rs's.
#[tokio::test]
async fn reports_publish_delivered_and_undelivered_events() {
    let app = reporting_app().await;
    let queue = crate::events::bind_events(&app).await;
    let delivered_vid = sent(&app, PHONE, "ev-1").await;
    let undelivered_vid = sent(&app, "+14155552672", "ev-2").await;
    let delivered = [("MessageUUID", "ev-1"), ("Status", "delivered")];
    let resp = report(&app, &delivered, &v3_headers(&delivered, "ev-n1")).await;
    assert_eq!(resp.status(), 200);
    let undelivered = [
        ("MessageUUID", "ev-2"),
        ("Status", "undelivered"),
        ("ErrorCode", "30"),
    ];
    let resp = report(&app, &undelivered, &v3_headers(&undelivered, "ev-n2")).await;
    assert_eq!(resp.status(), 200);
    let (d, u) = (delivered_vid.to_string(), undelivered_vid.to_string());
    let seen = crate::events::events_for(&app, &queue, &[&d, &u], 4, &["4155552671"]).await;
    let of = |vid: &str| -> Vec<String> {
        seen.iter()
            .filter(|(_, e)| e["verificationId"] == serde_json::json!(vid))
            .map(|(key, _)| key.clone())
            .collect()
    };
    assert_eq!(of(&d), ["verification.requested", "verification.delivered"]);
    assert_eq!(
        of(&u),
        ["verification.requested", "verification.undelivered"]
    );
    let delivered_event = &seen
        .iter()
        .find(|(key, _)| key == "verification.delivered")
        .unwrap()
        .1;
    assert_eq!(delivered_event["provider"], serde_json::json!("plivo"));
}
