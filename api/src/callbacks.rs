//! Delivery reports: `POST /api/otp/callbacks/plivo` and `/twilio` (form-encoded). A report
//! counts only with a valid signature over the configured callback URL, keyed with the
//! provider's auth token (Plivo: V3, or the older V2 only with PLIVO_ACCEPT_V2; Twilio:
//! `X-Twilio-Signature`). Each signed payload is applied once: replays are recognised by a MAC
//! of everything signed (URL, parameters and nonce), not by the nonce's text, which a replay
//! could shift across a `.` in the last parameter. States only move forward.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use poem::{
    IntoResponse, Request, Response, handler,
    web::{Data, Json},
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use otp_shared::{
    crypto::JobKey,
    events::{Event, EventType},
    job::SendJob,
    phone::PhoneNumber,
    status::{DeliveryState, FIELD_REASON, FIELD_RESEND},
};

use crate::{
    error::ApiError,
    metrics::ApiMetrics,
    queue::JobQueue,
    store::{ResendRefusal, Stores},
};

type HmacSha256 = Hmac<Sha256>;

/// A provider's signing key and the callback URL as the dispatcher gives it to the provider.
pub struct Signing {
    pub auth_token: SecretString,
    pub callback_url: String,
}

pub struct Reports {
    pub plivo: Option<Signing>,
    /// PLIVO_ACCEPT_V2: take a report signed with V2 alone (which does not sign the body).
    pub plivo_accept_v2: bool,
    pub twilio: Option<Signing>,
    /// Where a resend after an undelivered report is published; `None` when
    /// RESEND_ON_UNDELIVERED is off.
    pub resend: Option<Arc<dyn JobQueue>>,
    /// Where the message ids, nonces, delivery records and kept jobs are.
    pub stores: Stores,
    /// Opens a kept job for its destination, whose budgets and limits a resend spends.
    pub job_key: JobKey,
    pub metrics: Arc<ApiMetrics>,
    /// Verification events: `delivered`, `undelivered` (or `failed`) and `resent`.
    pub events: Arc<dyn crate::events::Events>,
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

/// The HMAC-SHA256 of `payload` if any of the comma-separated base64 `signatures` is it,
/// compared in constant time.
fn signed(token: &str, payload: &str, signatures: &str) -> Option<Vec<u8>> {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC key");
    mac.update(payload.as_bytes());
    let valid = signatures
        .split(',')
        .filter_map(|s| STANDARD.decode(s.trim()).ok())
        .fold(false, |any, sig| {
            mac.clone().verify_slice(&sig).is_ok() | any
        });
    valid.then(|| mac.finalize().into_bytes().to_vec())
}

/// Which signature a Plivo report carries.
#[derive(Debug, PartialEq, Eq)]
pub enum PlivoSignature {
    /// Valid; the replay key is the hex MAC of the whole signed payload.
    Valid {
        replay_key: String,
    },
    /// Only V2, which PLIVO_ACCEPT_V2 does not allow.
    V2Refused,
    Invalid,
}

/// Checks V3 when its headers are present (then only V3), else V2 if `accept_v2`.
pub fn verify(
    token: &str,
    url: &str,
    params: &[(String, String)],
    accept_v2: bool,
    header: impl Fn(&str) -> Option<String>,
) -> PlivoSignature {
    let checked = |payload: Option<String>, sig: String| match payload
        .and_then(|p| signed(token, &p, &sig))
    {
        Some(mac) => PlivoSignature::Valid {
            replay_key: crate::code::hex(&mac),
        },
        None => PlivoSignature::Invalid,
    };
    if let Some(sig) = header("x-plivo-signature-v3") {
        let Some(nonce) = header("x-plivo-signature-v3-nonce") else {
            return PlivoSignature::Invalid;
        };
        return checked(v3_payload(url, params, &nonce), sig);
    }
    let (Some(sig), Some(nonce)) = (
        header("x-plivo-signature-v2"),
        header("x-plivo-signature-v2-nonce"),
    ) else {
        return PlivoSignature::Invalid;
    };
    if !accept_v2 {
        return PlivoSignature::V2Refused;
    }
    checked(Some(format!("{url}{nonce}")), sig)
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

/// Twilio's signature: base64(HMAC-SHA1(token, URL + each POST parameter's name and value,
/// sorted by name)), compared in constant time.
pub fn twilio_signed(token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let mut sorted = params.to_vec();
    sorted.sort();
    // HMAC takes keys of any length.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).expect("HMAC key");
    mac.update(url.as_bytes());
    for (name, value) in &sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD
        .decode(signature.trim())
        .is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
}

/// Twilio's `MessageStatus` as our delivery state; `None` for states that change nothing.
fn twilio_state_of(status: &str) -> Option<DeliveryState> {
    match status {
        "sent" => Some(DeliveryState::Sent),
        "delivered" => Some(DeliveryState::Delivered),
        "undelivered" => Some(DeliveryState::Undelivered),
        "failed" => Some(DeliveryState::Failed),
        _ => None,
    }
}

/// What a verified report says.
struct Report<'a> {
    provider: &'static str,
    /// What identifies this signed payload, for replays.
    replay_key: String,
    message: &'a str,
    status: &'a str,
    state: Option<DeliveryState>,
    error_code: Option<&'a str>,
}

fn respond(result: Result<(), ApiError>) -> Response {
    match result {
        Ok(()) => Json(json!({ "success": true })).into_response(),
        Err(e) => e.into_response().into_response(),
    }
}

fn not_configured() -> ApiError {
    ApiError::NotFound("Delivery reports are not configured.".into())
}

fn header(req: &Request, name: &str) -> Option<String> {
    Some(req.headers().get(name)?.to_str().ok()?.to_owned())
}

fn field<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A report's message id and status fields, which every report must have.
fn required<'a>(
    params: &'a [(String, String)],
    message: &str,
    status: &str,
) -> Result<(&'a str, &'a str), ApiError> {
    match (field(params, message), field(params, status)) {
        (Some(m), Some(s)) => Ok((m, s)),
        _ => Err(ApiError::InvalidRequest(format!(
            "A delivery report needs {message} and {status}."
        ))),
    }
}

#[handler]
pub async fn plivo(req: &Request, body: Vec<u8>, reports: Data<&Arc<Reports>>) -> Response {
    let reports = reports.0;
    let result = async {
        let signing = reports.plivo.as_ref().ok_or_else(not_configured)?;
        let params: Vec<(String, String)> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let nonce = match verify(
            signing.auth_token.expose_secret(),
            &signing.callback_url,
            &params,
            reports.plivo_accept_v2,
            |name| header(req, name),
        ) {
            PlivoSignature::Valid { replay_key } => replay_key,
            PlivoSignature::V2Refused => {
                tracing::warn!(
                    "Plivo delivery report signed with V2 only (it does not sign the body) \
                     refused; PLIVO_ACCEPT_V2=true allows it"
                );
                return Err(ApiError::InvalidSignature);
            }
            PlivoSignature::Invalid => {
                tracing::warn!("Plivo delivery report with a missing or wrong signature refused");
                return Err(ApiError::InvalidSignature);
            }
        };
        let (message, status) = required(&params, "MessageUUID", "Status")?;
        let report = Report {
            provider: "plivo",
            replay_key: nonce,
            message,
            status,
            state: state_of(status),
            error_code: field(&params, "ErrorCode"),
        };
        apply(reports, report).await
    };
    respond(result.await)
}

#[handler]
pub async fn twilio(req: &Request, body: Vec<u8>, reports: Data<&Arc<Reports>>) -> Response {
    let reports = reports.0;
    let result = async {
        let signing = reports.twilio.as_ref().ok_or_else(not_configured)?;
        let params: Vec<(String, String)> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let signature = header(req, "x-twilio-signature").unwrap_or_default();
        let token = signing.auth_token.expose_secret();
        if signature.is_empty() || !twilio_signed(token, &signing.callback_url, &params, &signature)
        {
            tracing::warn!("Twilio delivery report with a missing or wrong signature refused");
            return Err(ApiError::InvalidSignature);
        }
        let (message, status) = required(&params, "MessageSid", "MessageStatus")?;
        let report = Report {
            provider: "twilio",
            // Twilio signs no nonce; its signature is the MAC of the whole signed payload.
            replay_key: signature.trim().to_owned(),
            message,
            status,
            state: twilio_state_of(status),
            error_code: field(&params, "ErrorCode"),
        };
        apply(reports, report).await
    };
    respond(result.await)
}

async fn apply(reports: &Reports, report: Report<'_>) -> Result<(), ApiError> {
    let provider = report.provider;
    let Some(state) = report.state else {
        reports.metrics.delivery_report(provider, report.status);
        return Ok(());
    };
    let store = &reports.stores.reports;
    // Unknown (not mapped yet, or long expired): 404 makes the provider try again later.
    let verification = store
        .reported_verification(provider, report.message)
        .await?
        .ok_or_else(|| ApiError::NotFound("Unknown message.".into()))?;
    if !store.first_report(provider, &report.replay_key).await? {
        reports.metrics.delivery_report(provider, "replayed");
        tracing::warn!(provider, %verification, "delivery report replayed (this signed payload was seen before); ignored");
        return Ok(());
    }
    reports.metrics.delivery_report(provider, report.status);
    let reason = report
        .error_code
        .filter(|c| {
            !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && c.bytes().any(|b| b != b'0')
        })
        .map(|code| format!("{provider} error {code}"));
    let extra: Vec<(&str, &str)> = reason
        .as_deref()
        .map(|r| vec![(FIELD_REASON, r)])
        .unwrap_or_default();
    let applied = async {
        let moved = store.advance_delivery(verification, state, &extra).await?;
        tracing::info!(provider, %verification, %state, moved, "delivery report");
        let kind = match state {
            DeliveryState::Delivered => Some(EventType::Delivered),
            DeliveryState::Undelivered => Some(EventType::Undelivered),
            DeliveryState::Failed => Some(EventType::Failed),
            _ => None,
        };
        if let Some(kind) = kind.filter(|_| moved) {
            let mut event = Event::new(kind, verification, None);
            event.provider = Some(provider.to_owned());
            event.reason = reason.clone();
            reports.events.emit(event);
        }
        if matches!(state, DeliveryState::Undelivered | DeliveryState::Failed) {
            resend(reports, verification, provider).await?;
        }
        Ok(())
    };
    let result = applied.await;
    if result.is_err() {
        // Forget the nonce, so the provider's retry of this report (and the resend with it) is
        // not taken for a replay.
        let _ = store.forget_report(provider, &report.replay_key).await;
    }
    result
}

/// Publishes the verification's kept job once more, asking for another provider: at most once
/// per verification, and only while its code is unused, unreplaced and unexpired (the kept job
/// is deleted when the code is used or replaced; the dispatcher checks again before sending).
async fn resend(reports: &Reports, verification: Uuid, failed: &str) -> Result<(), ApiError> {
    let Some(queue) = &reports.resend else {
        return Ok(());
    };
    let (resends, records) = (&reports.stores.resends, &reports.stores.reports);
    let kept = resends.take_resend(verification, failed).await?;
    let now = time::OffsetDateTime::now_utc();
    let opened = kept.and_then(|bytes| SendJob::decode(&bytes, &reports.job_key).ok());
    let Some((job, content)) = opened.filter(|(job, _)| !job.is_expired(now)) else {
        tracing::info!(%verification, "undelivered, but resent before, or its code was used, replaced or expired: no resend");
        return Ok(());
    };
    // A resend costs what a new request would: budgets, fraud guard, the number's hourly limit.
    let spent = match PhoneNumber::parse(&content.destination) {
        Ok(phone) => resends.spend_resend(&phone, verification).await,
        Err(_) => Ok(Some(ResendRefusal::Blocked)),
    };
    drop(content);
    let refused = match spent {
        Ok(refused) => refused,
        Err(e) => {
            let _ = resends.release_resend(verification).await;
            return Err(e.into());
        }
    };
    if let Some(refusal) = refused {
        records
            .annotate_delivery(verification, FIELD_RESEND, refusal.text())
            .await?;
        tracing::info!(%verification, why = refusal.text(), "undelivered: no resend");
        return Ok(());
    }
    if let Err(e) = queue.republish(&job, failed).await {
        let _ = resends.release_resend(verification).await;
        return Err(ApiError::Unavailable(
            anyhow::Error::new(e).context("publishing a resend"),
        ));
    }
    reports.metrics.resends.inc();
    let mut event = Event::new(EventType::Resent, verification, None);
    event.reason = Some(format!("undelivered by {failed}"));
    reports.events.emit(event);
    if let Err(e) = records
        .annotate_delivery(verification, FIELD_RESEND, "resent")
        .await
    {
        tracing::warn!(error = %e, "could not note the resend on the delivery record");
    }
    tracing::info!(%verification, failed_provider = failed, "undelivered: resending once");
    Ok(())
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
    fn twilio_signatures_cover_the_url_and_the_sorted_parameters() {
        let params = vec![
            ("MessageStatus".to_owned(), "delivered".to_owned()),
            ("MessageSid".to_owned(), "SM1".to_owned()),
        ];
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"tok").unwrap();
        mac.update(b"https://x.example/cbMessageSidSM1MessageStatusdelivered");
        let sig = STANDARD.encode(mac.finalize().into_bytes());
        assert!(twilio_signed("tok", "https://x.example/cb", &params, &sig));
        assert!(!twilio_signed(
            "tok",
            "https://x.example/other",
            &params,
            &sig
        ));
        assert!(!twilio_signed(
            "nope",
            "https://x.example/cb",
            &params,
            &sig
        ));
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let mut mac = HmacSha256::new_from_slice(b"token").unwrap();
        mac.update(b"payload");
        let good = STANDARD.encode(mac.finalize().into_bytes());
        assert!(signed("token", "payload", &good).is_some());
        assert!(signed("token", "payload", &format!("AAAA,{good}")).is_some());
        assert!(signed("token", "payload", "AAAA").is_none());
        assert!(signed("other", "payload", &good).is_none());
        assert!(signed("token", "payload!", &good).is_none());
    }
}
