//! The Plivo Message API client. It only classifies answers into [`Attempt`]s; retrying is the
//! retry loop's business.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use otp_shared::phone::mask_e164;

use crate::{metrics::ProviderMetrics, outcome::Attempt};

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
        let mut http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .user_agent(concat!("otp-dispatcher/", env!("CARGO_PKG_VERSION")));
        if let Some(limit) = settings.connect_timeout {
            http = http.connect_timeout(limit);
        }
        if let Some(limit) = settings.request_timeout {
            http = http.timeout(limit);
        }
        let http = http.build()?;
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
        let started = Instant::now();
        let response = self
            .http
            .post(&self.message_url)
            .basic_auth(&self.auth_id, Some(self.auth_token.expose_secret()))
            .json(&body)
            .send()
            .await;
        if let Some(metrics) = &self.metrics {
            let status = response.as_ref().ok().map(|r| r.status().as_u16());
            metrics.observe(status, started.elapsed());
        }
        match response {
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
                let body = resp.bytes().await.unwrap_or_default();
                classify(status, retry_after, &body)
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
    let detail = serde_json::from_slice::<Rejected>(body)
        .ok()
        .and_then(|r| r.error)
        .map(|e| match e {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .map(|e| {
            format!(
                ": {}",
                redact_numbers(&e.chars().take(200).collect::<String>())
            )
        })
        .unwrap_or_default();
    let reason = format!("plivo answered {}{detail}", status.as_u16());
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Attempt::Retry {
            reason,
            after: retry_after,
        };
    }
    if status == StatusCode::UNAUTHORIZED {
        tracing::error!(
            operator_action = "check PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN",
            "Plivo rejected the credentials (401)"
        );
    }
    Attempt::Fail { reason }
}

/// Provider error texts can quote the destination; they end up in logs and dead-letter headers,
/// so runs of six or more digits are masked like any logged number.
fn redact_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let digits = run.bytes().filter(u8::is_ascii_digit).count();
        out.push_str(&if digits >= 6 {
            mask_e164(run)
        } else {
            run.clone()
        });
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || (c == '+' && run.is_empty()) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a status should classify as; `Fail` holds text the reason must contain.
    enum Want {
        Sent(Option<&'static str>),
        Retry(Option<u64>),
        Fail(&'static str),
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
                br#"{"error":"invalid dst"}"#,
                Want::Fail("400: invalid dst"),
            ),
            (401, None, b"", Want::Fail("401")),
            (404, None, b"", Want::Fail("404")),
            (405, None, b"", Want::Fail("405")),
            (422, None, b"", Want::Fail("422")),
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
                (Want::Fail(text), Attempt::Fail { reason }) => reason.contains(text),
                _ => false,
            };
            assert!(fine, "{status}: {got:?}");
        }
    }

    #[test]
    fn numbers_in_provider_errors_are_masked() {
        assert_eq!(
            redact_numbers("invalid dst +14155552671, code 400"),
            "invalid dst +1415*****71, code 400"
        );
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
