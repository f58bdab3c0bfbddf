use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_openapi_document_lists_every_route_status_and_error_code() {
    let app = spawn_app().await;
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    for path in [
        "/api/otp/request",
        "/api/otp/verify",
        "/api/otp/status/{verificationId}",
        "/readyz",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} missing");
    }
    let request = &spec["paths"]["/api/otp/request"]["post"]["responses"];
    for status in [
        "202", "400", "403", "413", "415", "422", "429", "500", "503",
    ] {
        assert!(request[status].is_object(), "request: {status} missing");
    }
    let text = spec.to_string();
    for code in [
        "INVALID_REQUEST",
        "INVALID_PHONE_NUMBER",
        "COUNTRY_NOT_ALLOWED",
        "INVALID_OTP",
        "RATE_LIMITED",
        "IDEMPOTENCY_KEY_REUSED",
        "PAYLOAD_TOO_LARGE",
        "UNSUPPORTED_MEDIA_TYPE",
        "SERVICE_UNAVAILABLE",
        "INTERNAL",
    ] {
        assert!(text.contains(code), "{code} undocumented");
    }
    // The document states what the server enforces, with the configured code length.
    let verify = &spec["components"]["schemas"]["VerifyRequest"];
    assert_eq!(verify["properties"]["otp"]["pattern"], "^[0-9]{6}$");
    assert_eq!(verify["properties"]["otp"]["maxLength"], 6);
    assert_eq!(verify["additionalProperties"], true);
    let phone = &spec["components"]["schemas"]["OtpRequest"]["properties"]["phoneNumber"];
    assert_eq!(phone["maxLength"], otp_shared::phone::MAX_INPUT_LEN);
    assert_eq!(phone["format"], "phone");
    let key = &spec["paths"]["/api/otp/request"]["post"]["parameters"][0];
    assert_eq!(key["name"], "Idempotency-Key");
    assert_eq!(key["schema"]["maxLength"], 255);
    assert!(key["schema"]["pattern"].is_string());

    let docs = app.get("/docs").await;
    assert_eq!(docs.status().as_u16(), 200);
    assert!(
        docs.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("swagger")
    );
}

/// Production serves the OpenAPI document but not Swagger UI, unless DOCS_ENABLED=true.
#[tokio::test]
async fn production_serves_docs_only_when_enabled() {
    for (enabled, expected) in [(None, 404), (Some("true"), 200)] {
        let (mut cmd, _cleanup) = crate::process::otp_api();
        cmd.env("APP_ENV", "production")
            .env(
                "OTP_HMAC_KEY",
                "ZMRZ8+3uYnNyHVnVirnb0ZrbiLjoLe3uOZqreeRILZ4=",
            )
            .env(
                "JOB_ENCRYPTION_KEY",
                "fRsogpcZSVwUMCQmCeFgXxcPS2dXX4Dq1J1T7wLg4DY=",
            )
            .env("MAX_SENDS_PER_HOUR", "1000")
            .env("PUBLIC_API", "true")
            .env(
                "TOKEN_SIGNING_KEYS",
                "k1:3q2+7wB0M6X1c9Z8aY4bT5vR2nL6pK0jH8gF1dE3cS4=",
            );
        if let Some(enabled) = enabled {
            cmd.env("DOCS_ENABLED", enabled);
        }
        let (_child, mut lines, port) = crate::process::start_logged(&mut cmd).await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let docs = http.get(format!("{base}/docs")).send().await.unwrap();
        assert_eq!(docs.status().as_u16(), expected, "DOCS_ENABLED={enabled:?}");
        let spec = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(spec.status().as_u16(), 200);
    }
}
