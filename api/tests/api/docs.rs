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

/// Production's public port answers the API, /healthz and a /readyz that names nothing; the
/// documents there only with DOCS_ENABLED=true. The admin port serves the operators' view:
/// /metrics, a /readyz naming what is down, /docs and /openapi.json.
#[tokio::test]
async fn production_keeps_the_operators_view_on_the_admin_port() {
    for enabled in [None, Some("true")] {
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
            )
            .env("ADMIN_BIND", "127.0.0.1")
            // Nothing answers there: the API is up but not ready.
            .env("REDIS_URL", "redis://127.0.0.1:1/0");
        if let Some(enabled) = enabled {
            cmd.env("DOCS_ENABLED", enabled);
        }
        let (_child, mut lines, port, admin) = crate::process::start_with_admin(&mut cmd).await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::new();
        let get = |port: u16, path: &'static str| {
            http.get(format!("http://127.0.0.1:{port}{path}")).send()
        };
        let public_docs = if enabled.is_some() { 200 } else { 404 };
        for (path, status) in [
            ("/docs", public_docs),
            ("/openapi.json", public_docs),
            ("/metrics", 404),
            ("/healthz", 200),
            ("/.well-known/jwks.json", 200),
            ("/demo", 404),
        ] {
            let resp = get(port, path).await.unwrap();
            assert_eq!(
                resp.status(),
                status,
                "public {path}, DOCS_ENABLED={enabled:?}"
            );
        }
        let ready = get(port, "/readyz").await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        assert!(
            !body.contains("redis"),
            "the public /readyz names what is down: {body}"
        );

        for path in ["/docs", "/openapi.json", "/metrics", "/healthz"] {
            let resp = get(admin, path).await.unwrap();
            assert_eq!(resp.status(), 200, "admin {path}");
        }
        let ready = get(admin, "/readyz").await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        assert!(
            body.contains("redis"),
            "the admin /readyz names what is down: {body}"
        );
    }
}
