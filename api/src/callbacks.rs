//! Plivo's delivery reports: `POST /api/otp/callbacks/plivo` (form-encoded). A report counts
//! only with a valid signature (V3, or the older V2) over the configured callback URL, keyed
//! with the auth token; a nonce is used once; states only move forward.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use poem::{
    IntoResponse, Request, Response, handler,
    web::{Data, Json},
};
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use otp_shared::{
    keys::Keys,
    status::{self, DeliveryState, FIELD_REASON},
};

use crate::{error::ApiError, metrics::ApiMetrics};

type HmacSha256 = Hmac<Sha256>;

/// A nonce is remembered this long; a report replayed within it changes nothing.
const NONCE_TTL_SECONDS: u64 = 24 * 60 * 60;

pub struct PlivoReports {
    pub auth_token: SecretString,
    /// SMS_STATUS_CALLBACK_URL, as the dispatcher gives it to Plivo.
    pub callback_url: String,
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub metrics: Arc<ApiMetrics>,
}

/// The string Plivo signs for a V3 signature of a form POST (see `shared/reference/plivo.md`).
pub fn v3_payload(url: &str, params: &[(String, String)], nonce: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let mut out = format!("{}://{}", url.scheme(), url.host_str()?);
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    let mut query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push('?');
    out.push_str(&query.join("&"));
    if !query.is_empty() {
        out.push('.');
    }
    let mut sorted = params.to_vec();
    sorted.sort();
    for (name, value) in sorted {
        out.push_str(&name);
        out.push_str(&value);
    }
    out.push('.');
    out.push_str(nonce);
    Some(out)
}

/// Whether any of the comma-separated base64 `signatures` is the HMAC-SHA256 of `payload`,
/// compared in constant time.
fn signed(token: &str, payload: &str, signatures: &str) -> bool {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC key");
    mac.update(payload.as_bytes());
    signatures
        .split(',')
        .filter_map(|s| STANDARD.decode(s.trim()).ok())
        .fold(false, |any, sig| {
            mac.clone().verify_slice(&sig).is_ok() | any
        })
}

/// Checks V3 if present, else V2; returns the nonce of a valid signature.
pub fn verify(
    token: &str,
    url: &str,
    params: &[(String, String)],
    header: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    if let (Some(sig), Some(nonce)) = (
        header("x-plivo-signature-v3"),
        header("x-plivo-signature-v3-nonce"),
    ) {
        let payload = v3_payload(url, params, &nonce)?;
        return signed(token, &payload, &sig).then_some(nonce);
    }
    let (sig, nonce) = (
        header("x-plivo-signature-v2")?,
        header("x-plivo-signature-v2-nonce")?,
    );
    signed(token, &format!("{url}{nonce}"), &sig).then_some(nonce)
}

/// Plivo's `Status` as our delivery state; `None` for states that change nothing (`queued`).
fn state_of(status: &str) -> Option<DeliveryState> {
    match status {
        "sent" => Some(DeliveryState::Sent),
        "delivered" => Some(DeliveryState::Delivered),
        "undelivered" => Some(DeliveryState::Undelivered),
        "failed" | "rejected" => Some(DeliveryState::Failed),
        _ => None,
    }
}

#[handler]
pub async fn plivo(
    req: &Request,
    body: Vec<u8>,
    reports: Data<&Option<Arc<PlivoReports>>>,
) -> Response {
    let Some(reports) = reports.0 else {
        return ApiError::NotFound("Delivery reports are not configured.".into())
            .into_response()
            .into_response();
    };
    match handle(req, &body, reports).await {
        Ok(()) => Json(json!({ "success": true })).into_response(),
        Err(e) => e.into_response().into_response(),
    }
}

async fn handle(req: &Request, body: &[u8], reports: &PlivoReports) -> Result<(), ApiError> {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let header = |name: &str| {
        let value = req.headers().get(name)?.to_str().ok()?;
        Some(value.to_owned())
    };
    let Some(nonce) = verify(
        reports.auth_token.expose_secret(),
        &reports.callback_url,
        &params,
        header,
    ) else {
        tracing::warn!("delivery report with a missing or wrong signature refused");
        return Err(ApiError::InvalidSignature);
    };
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(message), Some(plivo_status)) = (field("MessageUUID"), field("Status")) else {
        return Err(ApiError::InvalidRequest(
            "A delivery report needs MessageUUID and Status.".into(),
        ));
    };
    reports.metrics.delivery_report("plivo", plivo_status);
    let Some(state) = state_of(plivo_status) else {
        return Ok(());
    };
    let mut redis = reports.redis.clone();
    let unavailable = |e: redis::RedisError| ApiError::Unavailable(e.into());
    let verification: Option<String> = redis::cmd("GET")
        .arg(reports.keys.provider_message("plivo", message))
        .query_async(&mut redis)
        .await
        .map_err(unavailable)?;
    // Unknown (not mapped yet, or long expired): 404 makes Plivo try again later.
    let verification = verification
        .and_then(|v| Uuid::parse_str(&v).ok())
        .ok_or_else(|| ApiError::NotFound("Unknown message.".into()))?;
    let fresh: Option<String> = redis::cmd("SET")
        .arg(reports.keys.report_nonce("plivo", &nonce))
        .arg(1)
        .arg("NX")
        .arg("EX")
        .arg(NONCE_TTL_SECONDS)
        .query_async(&mut redis)
        .await
        .map_err(unavailable)?;
    if fresh.is_none() {
        tracing::warn!(%verification, "delivery report replayed (nonce seen before); ignored");
        return Ok(());
    }
    let reason = field("ErrorCode")
        .filter(|c| !c.is_empty() && *c != "000" && c.bytes().all(|b| b.is_ascii_digit()))
        .map(|code| format!("plivo error {code}"));
    let extra: Vec<(&str, &str)> = reason
        .as_deref()
        .map(|r| vec![(FIELD_REASON, r)])
        .unwrap_or_default();
    let moved = status::advance(&mut redis, &reports.keys, verification, state, &extra).await;
    match moved {
        Ok(moved) => {
            tracing::info!(%verification, %state, moved, "delivery report");
            Ok(())
        }
        Err(e) => {
            // Forget the nonce, so Plivo's retry of this report is not taken for a replay.
            let _: redis::RedisResult<i64> = redis::cmd("DEL")
                .arg(reports.keys.report_nonce("plivo", &nonce))
                .query_async(&mut redis)
                .await;
            Err(unavailable(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, String)> {
        vec![
            ("Status".into(), "delivered".into()),
            ("MessageUUID".into(), "abc".into()),
            ("To".into(), "+14155552671".into()),
        ]
    }

    #[test]
    fn the_v3_payload_is_built_as_plivo_builds_it() {
        assert_eq!(
            v3_payload("https://x.example/cb", &params(), "n1").unwrap(),
            "https://x.example/cb?MessageUUIDabcStatusdeliveredTo+14155552671.n1"
        );
        assert_eq!(
            v3_payload("https://x.example:8443/cb?b=2&a=1", &params(), "n1").unwrap(),
            "https://x.example:8443/cb?a=1&b=2.MessageUUIDabcStatusdeliveredTo+14155552671.n1"
        );
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let mut mac = HmacSha256::new_from_slice(b"token").unwrap();
        mac.update(b"payload");
        let good = STANDARD.encode(mac.finalize().into_bytes());
        assert!(signed("token", "payload", &good));
        assert!(signed("token", "payload", &format!("AAAA,{good}")));
        assert!(!signed("token", "payload", "AAAA"));
        assert!(!signed("other", "payload", &good));
        assert!(!signed("token", "payload!", &good));
    }
}
