//! The provider seam: every SMS provider sends through [`SmsSender`] and classifies its answers
//! into the same [`Attempt`] table (2xx sent; 429, 5xx and no answer retried; a 4xx about the
//! number failed for good; a 4xx about the account unusable, so another provider may try).

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::{metrics::ProviderMetrics, outcome::Attempt};

/// The most of a provider answer that is read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The HTTP client every provider uses: pooled, bounded in time (`None` only for tests on
/// tokio's paused clock), and following no redirect, since a redirect would re-POST the
/// message text, code included, to another host.
pub fn http_client(
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
) -> reqwest::Result<reqwest::Client> {
    let mut http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("otp-dispatcher/", env!("CARGO_PKG_VERSION")));
    if let Some(limit) = connect_timeout {
        http = http.connect_timeout(limit);
    }
    if let Some(limit) = request_timeout {
        http = http.timeout(limit);
    }
    http.build()
}

/// Sends a provider call, counting it (status class and duration) in `metrics` when given.
pub async fn send_counted(
    request: reqwest::RequestBuilder,
    metrics: Option<&ProviderMetrics>,
) -> reqwest::Result<reqwest::Response> {
    let started = std::time::Instant::now();
    let response = request.send().await;
    if let Some(metrics) = metrics {
        let status = response.as_ref().ok().map(|r| r.status().as_u16());
        metrics.observe(status, started.elapsed());
    }
    response
}

/// A provider's answer body, cut off at 64 KiB: answers are small, a huge one is never
/// buffered whole.
pub async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_RESPONSE_BYTES {
            break;
        }
    }
    body
}

/// The SMS providers there are clients for (`SMS_PROVIDERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsProvider {
    Plivo,
    Twilio,
}

impl SmsProvider {
    /// The name in settings, logs, metrics and the ledger.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plivo => "plivo",
            Self::Twilio => "twilio",
        }
    }
}

impl std::str::FromStr for SmsProvider {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "plivo" => Ok(Self::Plivo),
            "twilio" => Ok(Self::Twilio),
            other => Err(format!("'{other}' is not a provider (plivo or twilio)")),
        }
    }
}

pub trait SmsSender: Send + Sync {
    /// The provider's name in settings (`SMS_PROVIDERS`), logs, metrics and the ledger.
    fn name(&self) -> &'static str;

    /// One provider call. `text` holds the code: it is never logged.
    fn send<'a>(&'a self, destination: &'a str, text: &'a str) -> BoxFuture<'a, Attempt>;
}
