//! The Twilio Messages API, the second provider: `POST {base}/2010-04-01/Accounts/{sid}/
//! Messages.json`, form-encoded `To`, `From`, `Body` (and `StatusCallback`), Basic auth.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::{
    metrics::ProviderMetrics,
    outcome::Attempt,
    sender::{SmsSender, http_client, read_capped, send_counted},
};

/// Twilio error codes that are about the destination: no other provider will do better.
/// 21211 invalid To, 21214 To not reachable, 21610 recipient unsubscribed, 21612 cannot route
/// to this number, 21614 To is not a mobile number.
const DESTINATION_ERRORS: [u64; 5] = [21211, 21214, 21610, 21612, 21614];

#[derive(Debug, Clone)]
pub struct TwilioSettings {
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: SecretString,
    pub from: String,
    pub status_callback_url: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

pub struct TwilioClient {
    http: reqwest::Client,
    url: String,
    settings: TwilioSettings,
    metrics: Option<ProviderMetrics>,
}

#[derive(Deserialize)]
struct Created {
    sid: Option<String>,
}

#[derive(Deserialize)]
struct Rejected {
    code: Option<u64>,
}

impl TwilioClient {
    pub fn new(settings: TwilioSettings) -> anyhow::Result<Self> {
        let base = settings.base_url.trim_end_matches('/');
        Ok(Self {
            http: http_client(settings.connect_timeout, settings.request_timeout)?,
            url: format!(
                "{base}/2010-04-01/Accounts/{}/Messages.json",
                settings.account_sid
            ),
            settings,
            metrics: None,
        })
    }

    pub fn with_metrics(mut self, metrics: ProviderMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn call(&self, destination: &str, text: &str) -> Attempt {
        let mut form = vec![
            ("To", destination),
            ("From", &self.settings.from),
            ("Body", text),
        ];
        if let Some(url) = &self.settings.status_callback_url {
            form.push(("StatusCallback", url));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = self
            .http
            .post(&self.url)
            .basic_auth(
                &self.settings.account_sid,
                Some(self.settings.auth_token.expose_secret()),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        match send_counted(request, self.metrics.as_ref()).await {
            Err(e) if e.is_timeout() => Attempt::Retry {
                reason: "twilio request timed out".into(),
                after: None,
            },
            Err(_) => Attempt::Retry {
                reason: "twilio unreachable".into(),
                after: None,
            },
            Ok(resp) => {
                let status = resp.status();
                classify(status, &read_capped(resp).await)
            }
        }
    }
}

impl SmsSender for TwilioClient {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn send<'a>(&'a self, destination: &'a str, text: &'a str) -> BoxFuture<'a, Attempt> {
        Box::pin(self.call(destination, text))
    }
}

/// Maps a Twilio answer to an [`Attempt`], with the same table as Plivo's.
pub fn classify(status: StatusCode, body: &[u8]) -> Attempt {
    if status.is_success() {
        let provider_id = serde_json::from_slice::<Created>(body)
            .ok()
            .and_then(|c| c.sid);
        return Attempt::Sent { provider_id };
    }
    let code = serde_json::from_slice::<Rejected>(body)
        .ok()
        .and_then(|r| r.code);
    let reason = match code {
        Some(code) => format!("twilio answered {} (error {code})", status.as_u16()),
        None => format!("twilio answered {}", status.as_u16()),
    };
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Attempt::Retry {
            reason,
            after: None,
        };
    }
    if code.is_some_and(|c| DESTINATION_ERRORS.contains(&c)) {
        return Attempt::Fail { reason };
    }
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        tracing::error!(
            operator_action = "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
            "Twilio rejected the credentials ({})",
            status.as_u16()
        );
    }
    Attempt::Unusable { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_answers_follow_the_same_table() {
        let created = br#"{"sid":"SM123","status":"queued"}"#;
        let cases: [(u16, &[u8], &str); 8] = [
            (201, created, "sent SM123"),
            (429, b"", "retry"),
            (500, b"", "retry"),
            (503, b"{}", "retry"),
            (400, br#"{"code":21211,"message":"invalid To"}"#, "fail"),
            (
                400,
                br#"{"code":21408,"message":"region not enabled"}"#,
                "unusable",
            ),
            (401, br#"{"code":20003}"#, "unusable"),
            (404, b"", "unusable"),
        ];
        for (status, body, want) in cases {
            let got = classify(StatusCode::from_u16(status).unwrap(), body);
            let kind = match &got {
                Attempt::Sent { provider_id } => {
                    format!("sent {}", provider_id.clone().unwrap_or_default())
                }
                Attempt::Retry { .. } => "retry".into(),
                Attempt::Fail { .. } => "fail".into(),
                Attempt::Unusable { .. } => "unusable".into(),
            };
            assert_eq!(kind, want, "{status}: {got:?}");
        }
    }
}
