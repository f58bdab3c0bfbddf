use std::time::Duration;

use serde_json::{Value, json};
use wiremock::MockServer;

use crate::helpers::{AMQP_URL, PHONE, World, accepted, plivo_call, spawn_dispatcher};

/// The API, configured like the dispatcher (same queue, key prefix and job key).
async fn spawn_api(world: &World) -> (String, tokio::sync::oneshot::Sender<()>) {
    spawn_api_with(api_config(world)).await
}

/// The API's settings for `world` (same queue, key prefix and job key as its dispatcher).
pub fn api_config(world: &World) -> otp_api::config::Config {
    use otp_api::config::{Config, HmacKey, Limits, OtpSettings};
    use otp_shared::config::{AmqpArgs, LogFormat};
    Config {
        port: 0,
        bind_address: std::net::Ipv4Addr::LOCALHOST.into(),
        redis: otp_shared::testing::redis_args(&world.prefix, 1000),
        amqp: AmqpArgs::new(AMQP_URL.parse().unwrap(), &world.queue),
        publish_confirm_timeout_ms: 2000,
        otp: OtpSettings {
            otp_length: 6,
            otp_validity_seconds: 300,
            otp_max_attempts: 5,
            sms_template: "Your verification code is: {code}".into(),
            otp_hmac_key: HmacKey::from_base64(&base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                [1u8; 32],
            ))
            .unwrap(),
            job_encryption_key: crate::helpers::job_key(),
            allowed_countries: vec![],
            sms_origin: None,
            sms_android_app_hash: None,
            sms_max_segments: 2,
        },
        limits: Limits {
            resend_cooldown_seconds: 30,
            max_sends_per_number_per_hour: 5,
            max_requests_per_ip_per_minute: 20,
            max_verifies_per_number_per_15_minutes: 10,
            max_verifies_per_ip_per_minute: 60,
            max_sends_per_hour: 0,
            max_sends_per_country_per_hour: Default::default(),
            ipv6_prefix_length: 64,
            trusted_proxies: vec![],
        },
        http: otp_api::config::HttpLimits {
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 10,
            keep_alive_timeout_seconds: 60,
            max_connections: 10_000,
        },
        fraud: otp_api::fraud::FraudSettings {
            fraud_guard: otp_api::fraud::Mode::Monitor,
            fraud_guard_prefix_drop_digits: 4,
            fraud_guard_window_minutes: 60,
            fraud_guard_grace_seconds: 120,
            fraud_guard_min_sends: 20,
            fraud_guard_min_conversion: 0.2,
            fraud_guard_block_hours: 12,
            fraud_guard_safe_prefixes: vec![],
        },
        reports: otp_api::config::ReportSettings {
            plivo_auth_token: None,
            sms_status_callback_url: None,
            twilio_auth_token: None,
            twilio_status_callback_url: None,
            resend_on_undelivered: true,
        },
        app_env: otp_shared::config::AppEnv::Development,
        log_format: LogFormat::Pretty,
        shutdown_grace_seconds: 1,
    }
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
    let (api, _stop) = spawn_api(&world).await;
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        if http
            .get(format!("{api}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "api not ready");

    let resp = http
        .post(format!("{api}/api/otp/request"))
        .json(&json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    let vid = body["verificationId"].as_str().unwrap().to_owned();

    let started = std::time::Instant::now();
    let status = loop {
        let s: Value = http
            .get(format!("{api}/api/otp/status/{vid}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["state"] == json!("sent") {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "not sent: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    plivo.verify().await;
}
