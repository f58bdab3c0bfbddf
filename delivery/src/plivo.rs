//! The Plivo Message API client. It only classifies answers into [`Attempt`]s; retrying is the
//! retry loop's business.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::{StatusCode, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::{
    metrics::ProviderMetrics,
    outcome::Attempt,
    sender::{SmsSender, http_client, read_capped, send_counted},
};

pub struct PlivoClient {
    http: reqwest::Client,
    message_url: String,
    auth_id: String,
    auth_token: SecretString,
    sender: String,
    status_callback_url: Option<String>,
    metrics: Option<ProviderMetrics>,
}

#[derive(Debug, Clone)]
pub struct PlivoSettings {
    pub base_url: String,
    pub auth_id: String,
    pub auth_token: SecretString,
    pub sender: String,
    pub status_callback_url: Option<String>,
    /// Limits on opening a connection and on a whole call. `None` means no limit, which only
    /// tests on tokio's paused clock want (a pending timer would fire while I/O is awaited).
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

#[derive(Deserialize)]
struct Accepted {
    #[serde(default)]
    message_uuid: Vec<String>,
}

#[derive(Deserialize)]
struct Rejected {
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl PlivoClient {
    pub fn new(settings: PlivoSettings) -> anyhow::Result<Self> {
        let http = http_client(settings.connect_timeout, settings.request_timeout)?;
        let base = settings.base_url.trim_end_matches('/');
        Ok(Self {
            http,
            message_url: format!("{base}/v1/Account/{}/Message/", settings.auth_id),
            auth_id: settings.auth_id,
            auth_token: settings.auth_token,
            sender: settings.sender,
            status_callback_url: settings.status_callback_url,
            metrics: None,
        })
    }

    /// Counts every call in `metrics` (by status class, with its duration).
    pub fn with_metrics(mut self, metrics: ProviderMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// One provider call. `text` holds the code: it is sent with `log: false` and never logged.
    pub async fn send(&self, destination: &str, text: &str) -> Attempt {
        let mut body = json!({
            "src": self.sender,
            "dst": destination,
            "text": text,
            "type": "sms",
            "log": false,
        });
        if let Some(url) = &self.status_callback_url {
            body["url"] = json!(url);
            body["method"] = json!("POST");
        }
        let request = self
            .http
            .post(&self.message_url)
            .basic_auth(&self.auth_id, Some(self.auth_token.expose_secret()))
            .json(&body);
        match send_counted(request, self.metrics.as_ref()).await {
            Err(e) if e.is_timeout() => Attempt::Retry {
                reason: "plivo request timed out".into(),
                after: None,
            },
            Err(e) => Attempt::Retry {
                reason: format!("plivo unreachable: {}", error_chain(&e)),
                after: None,
            },
            Ok(resp) => {
                let status = resp.status();
                let retry_after = retry_after(resp.headers());
                classify(status, retry_after, &read_capped(resp).await)
            }
        }
    }
}

/// Maps a provider answer to an [`Attempt`], per Plivo's documented status codes.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Attempt {
    if status.is_success() {
        let provider_id = serde_json::from_slice::<Accepted>(body)
            .ok()
            .and_then(|a| a.message_uuid.into_iter().next());
        return Attempt::Sent { provider_id };
    }
    // The reason (logs, ledger, delivery record, dead-letter header) is a fixed text; Plivo's
    // own words may quote the number, so they are logged only, with every number masked.
    let reason = format!("plivo answered {}", status.as_u16());
    if let Some(detail) = serde_json::from_slice::<Rejected>(body)
        .ok()
        .and_then(|r| r.error)
    {
        let detail = match detail {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        let detail = redact_numbers(&detail.chars().take(200).collect::<String>());
        tracing::warn!(status = status.as_u16(), %detail, "Plivo refused the message");
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Attempt::Retry {
            reason,
            after: retry_after,
        };
    }
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            tracing::error!(
                operator_action = "check PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN",
                "Plivo rejected the credentials ({})",
                status.as_u16()
            );
            Attempt::Unusable { reason }
        }
        // The account path does not exist or the API moved: no message will go through Plivo.
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Attempt::Unusable { reason },
        // 400 and the like: the parameters, and of those only the number varies.
        _ => Attempt::Fail { reason },
    }
}

/// Provider error texts can quote the destination, plain (`+14155552671`) or formatted
/// (`+1 (415) 555-2671`): every digit of a run of six or more, separators allowed between them,
/// is masked.
fn redact_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let starts = |j: usize| chars.get(j).is_some_and(char::is_ascii_digit);
        if !(starts(i) || (matches!(chars[i], '+' | '(') && starts(i + 1))) {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // The run ends after its last digit; separators after it are not part of it.
        let mut end = i;
        let mut j = i;
        while j < chars.len() && (chars[j].is_ascii_digit() || "+-. ()".contains(chars[j])) {
            if chars[j].is_ascii_digit() {
                end = j + 1;
            }
            j += 1;
        }
        let run = &chars[i..end];
        let digits = run.iter().filter(|c| c.is_ascii_digit()).count();
        for c in run {
            out.push(if digits >= 6 && c.is_ascii_digit() {
                '*'
            } else {
                *c
            });
        }
        i = end;
    }
    out
}

/// Retry-After in delay-seconds form (Plivo documents none; honoured if one arrives).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl SmsSender for PlivoClient {
    fn name(&self) -> &'static str {
        "plivo"
    }

    fn send<'a>(&'a self, destination: &'a str, text: &'a str) -> BoxFuture<'a, Attempt> {
        Box::pin(PlivoClient::send(self, destination, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a status should classify as; `Fail` holds text the reason must contain.
    enum Want {
        Sent(Option<&'static str>),
        Retry(Option<u64>),
        Fail(&'static str),
        Unusable(&'static str),
    }

    #[test]
    fn every_documented_status_is_classified() {
        let ok: &[u8] = br#"{"api_id":"a","message":"message(s) queued","message_uuid":["m-1"]}"#;
        let cases: [(u16, Option<u64>, &[u8], Want); 12] = [
            (202, None, ok, Want::Sent(Some("m-1"))),
            (200, None, b"not json", Want::Sent(None)),
            (429, Some(7), b"", Want::Retry(Some(7))),
            (429, None, b"", Want::Retry(None)),
            (500, None, b"", Want::Retry(None)),
            (502, None, b"", Want::Retry(None)),
            (503, Some(2), b"", Want::Retry(Some(2))),
            (
                400,
                None,
                br#"{"error":"invalid dst +14155552671"}"#,
                Want::Fail("plivo answered 400"),
            ),
            (401, None, b"", Want::Unusable("plivo answered 401")),
            (404, None, b"", Want::Unusable("plivo answered 404")),
            (307, None, b"", Want::Fail("plivo answered 307")),
            (422, None, b"", Want::Fail("plivo answered 422")),
        ];
        for (status, after, body, want) in cases {
            let got = classify(
                StatusCode::from_u16(status).unwrap(),
                after.map(Duration::from_secs),
                body,
            );
            let fine = match (&want, &got) {
                (Want::Sent(id), Attempt::Sent { provider_id }) => provider_id.as_deref() == *id,
                (Want::Retry(s), Attempt::Retry { after, .. }) => {
                    *after == s.map(Duration::from_secs)
                }
                (Want::Fail(text), Attempt::Fail { reason }) => reason == text,
                (Want::Unusable(text), Attempt::Unusable { reason }) => reason == text,
                _ => false,
            };
            assert!(fine, "{status}: {got:?}");
        }
    }

    #[test]
    fn numbers_in_provider_errors_are_masked() {
        assert_eq!(
            redact_numbers("invalid dst +14155552671, code 400"),
            "invalid dst +***********, code 400"
        );
        assert_eq!(
            redact_numbers("number +1 (415) 555-2671 is invalid."),
            "number +* (***) ***-**** is invalid."
        );
        assert_eq!(redact_numbers("dst 415.555.2671"), "dst ***.***.****");
        assert_eq!(redact_numbers("no digits here"), "no digits here");
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "12".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
