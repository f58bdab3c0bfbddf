//! CORS on the real API: an allowed origin's preflight is answered (204, no caller key needed)
//! and its answers carry the CORS headers; any other origin gets none.

use otp_api::callers::ApiKey;
use serde_json::json;

use crate::helpers::{PHONE, spawn_with};

const APP: &str = "https://app.example.com";

#[tokio::test]
async fn only_an_allowed_origin_gets_cors_headers() {
    let app = spawn_with(|c| {
        c.cors_allowed_origins = vec![APP.to_owned()];
        c.access.api_keys = vec![ApiKey::for_secret("web", "web-secret")];
    })
    .await;
    let preflight = |origin: &str| {
        app.client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/otp/request", app.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight(APP).await.unwrap();
    assert_eq!(allowed.status(), 204);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    let methods = header(&allowed, "access-control-allow-methods").unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let headers = header(&allowed, "access-control-allow-headers").unwrap();
    assert!(headers.contains("authorization") && headers.contains("content-type"));
    assert!(headers.contains("x-captcha-token"), "{headers}");
    assert!(header(&allowed, "access-control-max-age").is_some());

    let other = preflight("https://evil.example").await.unwrap();
    assert_ne!(other.status(), 204);
    assert!(header(&other, "access-control-allow-origin").is_none());

    let call = |origin: &'static str| {
        app.client
            .post(format!("{}/api/otp/request", app.base))
            .header("origin", origin)
            .bearer_auth("web-secret")
            .json(&json!({ "phoneNumber": PHONE }))
            .send()
    };
    let resp = call(APP).await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    let exposed = header(&resp, "access-control-expose-headers").unwrap();
    assert!(exposed.contains("ratelimit-remaining") && exposed.contains("retry-after"));
    // Another origin's request is answered as any other, without CORS headers (the browser
    // keeps the answer from the page).
    let resp = call("https://evil.example").await.unwrap();
    assert!(header(&resp, "access-control-allow-origin").is_none());
    assert!(header(&resp, "access-control-expose-headers").is_none());
    // Routes other than the OTP API send none either.
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert!(header(&health, "access-control-allow-origin").is_none());
}
