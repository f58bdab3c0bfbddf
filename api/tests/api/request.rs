use serde_json::{Value, json};

use otp_shared::amqp::header_str;

use crate::helpers::{PHONE, assert_error, spawn_app, spawn_with};

#[tokio::test]
async fn a_request_stores_only_a_digest_and_queues_an_encrypted_job() {
    let app = spawn_app().await;
    let resp = app.request_otp("+1 (415) 555-2671").await;
    assert_eq!(resp.status().as_u16(), 202);
    assert!(resp.headers().contains_key("x-request-id"));
    // Every limit is off in this test: no RateLimit-* headers pretend otherwise.
    assert!(!resp.headers().contains_key("ratelimit-limit"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], json!(true));
    assert!(body["message"].as_str().is_some());
    assert_eq!(body["expiresInSeconds"], json!(300));
    assert_eq!(body["resendAfterSeconds"], json!(0));
    assert!(body.get("otp").is_none() && body.get("code").is_none());
    let vid = body["verificationId"].as_str().unwrap().to_owned();

    let (job, content) = app.next_job().await;
    assert_eq!(job.verification_id.to_string(), vid);
    assert_eq!(content.destination, PHONE);
    assert_eq!(content.code.len(), 6);
    assert!(content.code.bytes().all(|b| b.is_ascii_digit()));
    assert!(job.expires_at > job.created_at);
    assert!(!job.sealed.contains(&content.code));

    // Redis holds a digest of the code, never the code itself.
    let mut redis = app.redis.clone();
    for key in app.redis_keys().await {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let values: Vec<String> = match kind.as_str() {
            "hash" => redis::cmd("HVALS")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap(),
            "string" => vec![
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .unwrap(),
            ],
            _ => vec![],
        };
        assert!(
            values.iter().all(|v| !v.contains(&content.code)),
            "{key} holds the code"
        );
    }

    let status: Value = app
        .get(&format!("/api/otp/status/{vid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], json!("queued"));
    assert_eq!(status["attempts"], json!(0));
    assert!(!status.to_string().contains("4155552671"));
}

#[tokio::test]
async fn the_request_id_and_trace_context_travel_with_the_job() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(format!("{}/api/otp/request", app.base))
        .header("x-request-id", "req-abc-123")
        .json(&json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.headers()["x-request-id"], "req-abc-123");
    let (props, job, _) = app.next_delivery().await;
    assert_eq!(
        header_str(&props, "x-request-id").as_deref(),
        Some("req-abc-123")
    );
    let traceparent = header_str(&props, "traceparent").expect("traceparent header");
    assert_eq!(traceparent.split('-').count(), 4, "{traceparent}");
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        props.message_id().as_ref().map(|m| m.to_string()),
        Some(job.job_id.to_string())
    );
}

#[tokio::test]
async fn json_with_a_charset_is_json() {
    let app = spawn_app().await;
    let body = format!(r#"{{"phoneNumber":"{PHONE}"}}"#);
    let resp = app
        .post_raw("/api/otp/request", "application/json; charset=utf-8", body)
        .await;
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test]
async fn codes_have_the_configured_length() {
    let app = spawn_with(|c| c.otp.otp_length = 8).await;
    let code = app.issue_code(PHONE).await;
    assert_eq!(code.len(), 8);
    let resp = app.verify(PHONE, &code).await;
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn hostile_phone_numbers_are_rejected_with_400() {
    let app = spawn_app().await;
    for phone in [
        "+14155552671abc",
        "4155552671",
        "+١٤١٥٥٥٥٢٦٧١",
        "+1234567890123456789",
        "+10005552671",
        "",
        "+",
        "+1 415 555 2671; DROP TABLE",
        "<script>alert(1)</script>",
    ] {
        assert_error(app.request_otp(phone).await, 400, "INVALID_PHONE_NUMBER").await;
    }
    assert_eq!(app.queued_jobs().await, 0);
}

#[tokio::test]
async fn malformed_bodies_are_invalid_requests_never_5xx() {
    let app = spawn_app().await;
    let path = "/api/otp/request";
    for body in [
        "{",
        "null",
        "[]",
        "\"+14155552671\"",
        "{}",
        r#"{"phone":"+14155552671"}"#,
        r#"{"phoneNumber":14155552671}"#,
        r#"{"phoneNumber":true}"#,
        r#"{"phoneNumber":null}"#,
        r#"{"phoneNumber":["+14155552671"]}"#,
    ] {
        let resp = app.post_raw(path, "application/json", body).await;
        assert_error(resp, 400, "INVALID_REQUEST").await;
    }
    let resp = app
        .post_raw(
            "/api/otp/verify",
            "application/json",
            r#"{"phoneNumber":"+14155552671","otp":123456}"#,
        )
        .await;
    assert_error(resp, 400, "INVALID_REQUEST").await;
}

#[tokio::test]
async fn non_json_and_oversized_bodies_are_refused() {
    let app = spawn_app().await;
    let resp = app
        .post_raw("/api/otp/request", "text/plain", "phoneNumber=+14155552671")
        .await;
    assert_error(resp, 415, "UNSUPPORTED_MEDIA_TYPE").await;
    let big = format!(r#"{{"phoneNumber":"{}"}}"#, "1".repeat(10_000));
    let resp = app
        .post_raw("/api/otp/request", "application/json", big.clone())
        .await;
    assert_error(resp, 413, "PAYLOAD_TOO_LARGE").await;
    // Without Content-Length (chunked), the cap still holds.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let resp = app
        .post_raw(
            "/api/otp/request",
            "application/json",
            reqwest::Body::wrap_stream(stream),
        )
        .await;
    assert_error(resp, 413, "PAYLOAD_TOO_LARGE").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    assert_error(app.get("/nope").await, 404, "NOT_FOUND").await;
    assert_error(app.get("/api/otp/request").await, 405, "METHOD_NOT_ALLOWED").await;
    assert_error(
        app.get("/api/otp/status/not-a-uuid").await,
        404,
        "NOT_FOUND",
    )
    .await;
    let unknown = uuid::Uuid::new_v4();
    assert_error(
        app.get(&format!("/api/otp/status/{unknown}")).await,
        404,
        "NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn destinations_outside_allowed_countries_are_forbidden() {
    let app = spawn_with(|c| {
        c.otp.allowed_countries = vec!["US".parse().unwrap(), "CA".parse().unwrap()]
    })
    .await;
    assert_error(
        app.request_otp("+442071838750").await,
        403,
        "COUNTRY_NOT_ALLOWED",
    )
    .await;
    assert_eq!(app.request_otp(PHONE).await.status().as_u16(), 202);
    assert_eq!(app.queued_jobs().await, 1);
}

#[tokio::test]
async fn health_endpoints_answer() {
    let app = spawn_app().await;
    let index: Value = app.get("/").await.json().await.unwrap();
    assert_eq!(index["status"], json!("ok"));
    let ts = index["timestamp"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok()
    );
    assert_eq!(app.get("/healthz").await.status().as_u16(), 200);
    assert_eq!(app.get("/readyz").await.status().as_u16(), 200);
}

#[tokio::test]
async fn random_bodies_never_yield_a_5xx() {
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    let app = spawn_app().await;
    let mut rng = StdRng::seed_from_u64(7);
    let pieces = [
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "phoneNumber",
        "otp",
        "+1415",
        "5552671",
        "null",
        "true",
        "1e999",
        "\\u0000",
        "\u{202e}",
        "\u{0661}",
        "-",
        " ",
        "\n",
        "9".repeat(40).leak(),
    ];
    for i in 0..300 {
        let body: String = (0..rng.random_range(0..12))
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect();
        let path = if i % 2 == 0 {
            "/api/otp/request"
        } else {
            "/api/otp/verify"
        };
        let resp = app.post_raw(path, "application/json", body.clone()).await;
        assert!(
            resp.status().as_u16() < 500,
            "{path} {body:?} gave {}",
            resp.status()
        );
    }
    for bytes in [
        vec![0xff, 0xfe, 0x00],
        vec![b'{'; 3000],
        b"{\"phoneNumber\":\"\xff\"}".to_vec(),
    ] {
        let resp = app
            .post_raw("/api/otp/request", "application/json", bytes)
            .await;
        assert!(resp.status().as_u16() < 500);
    }
}

#[tokio::test]
async fn the_sms_carries_the_autofill_lines_byte_for_byte() {
    let app = crate::helpers::spawn_with(|c| {
        c.otp.sms_origin = Some("example.com".into());
        c.otp.sms_android_app_hash = Some("FA+9qCX9VSu".into());
    })
    .await;
    let resp = app.request_otp(crate::helpers::PHONE).await;
    assert_eq!(resp.status(), 202);
    let (_, content) = app.next_job().await;
    let code = content.code.clone();
    assert_eq!(
        content.message_text(),
        format!("Your verification code is: {code}\n\nFA+9qCX9VSu\n@example.com #{code}")
    );
}

#[tokio::test]
async fn a_template_longer_than_the_segment_limit_stops_the_api() {
    let mut config = crate::helpers::test_config();
    config.otp.sms_template = Some(format!("{} {{code}}", "x".repeat(160)));
    config.otp.sms_max_segments = 1;
    let err = otp_api::startup::Application::build(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("SMS_MAX_SEGMENTS") && err.contains("2 SMS"),
        "{err}"
    );
}
