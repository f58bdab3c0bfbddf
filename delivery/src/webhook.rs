//! Verification events as signed webhooks (EVENTS_WEBHOOK_URL): each event's JSON POSTed with
//! `OTP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (the key is
//! EVENTS_WEBHOOK_SECRET), retried with exponential backoff (0.5 s doubling, at most 5 min apart)
//! until a 2xx or until the event is EVENTS_WEBHOOK_MAX_AGE_HOURS old. `otp-dispatcher` feeds it
//! from a RabbitMQ queue bound to `otp.events`; `otp-api --embedded` from its own events.

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long one POST may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Publish verification events to the `otp.events` exchange. Off saves RabbitMQ the work
    /// of two messages per code when nothing consumes them; EVENTS_WEBHOOK_URL needs it on
    #[arg(long, env = "EVENTS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub events_enabled: bool,
    /// Deliver every verification event as a signed POST to this URL (https outside
    /// development, plain http to this host excepted). Unset: no webhooks
    #[arg(long, env = "EVENTS_WEBHOOK_URL")]
    pub events_webhook_url: Option<String>,
    /// The key of the webhooks' `OTP-Signature` (HMAC-SHA256); required with EVENTS_WEBHOOK_URL
    #[arg(long, env = "EVENTS_WEBHOOK_SECRET", hide_env_values = true)]
    pub events_webhook_secret: Option<SecretString>,
    /// Hours an event is retried before it goes to the webhook's dead-letter queue
    #[arg(long, env = "EVENTS_WEBHOOK_MAX_AGE_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(1..=720))]
    pub events_webhook_max_age_hours: u32,
}

impl WebhookArgs {
    /// A URL needs a secret, and https outside development. Errors name the variable.
    pub fn check(&self, env: otp_shared::config::AppEnv) -> Result<(), String> {
        let Some(url) = &self.events_webhook_url else {
            return Ok(());
        };
        if !self.events_enabled {
            return Err("EVENTS_WEBHOOK_URL needs EVENTS_ENABLED=true".into());
        }
        url::Url::parse(url).map_err(|_| "EVENTS_WEBHOOK_URL is not a URL".to_owned())?;
        let secret = self.events_webhook_secret.as_ref();
        if secret.is_none_or(|s| s.expose_secret().trim().is_empty()) {
            return Err("EVENTS_WEBHOOK_SECRET is required with EVENTS_WEBHOOK_URL".into());
        }
        if env == otp_shared::config::AppEnv::Production {
            otp_shared::urls::check_secure_urls(&[("EVENTS_WEBHOOK_URL", Some(url))])?;
        }
        Ok(())
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &str, unix: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{unix}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={unix},v1={hex}")
}

/// Delivers event bodies to the webhook, one call at a time.
pub struct WebhookSender {
    url: String,
    secret: SecretString,
    max_age: Duration,
    http: reqwest::Client,
}

impl WebhookSender {
    /// The sender EVENTS_WEBHOOK_URL asks for; `None` without it.
    pub fn from_args(args: &WebhookArgs) -> anyhow::Result<Option<Self>> {
        let (Some(url), Some(secret)) = (&args.events_webhook_url, &args.events_webhook_secret)
        else {
            return Ok(None);
        };
        let http = crate::sender::http_client(Some(REQUEST_TIMEOUT), Some(REQUEST_TIMEOUT))?;
        Ok(Some(Self {
            url: url.clone(),
            secret: secret.clone(),
            max_age: Duration::from_secs(u64::from(args.events_webhook_max_age_hours) * 3600),
            http,
        }))
    }

    /// POSTs `body` until a 2xx (true), the event is too old (false), or `stop`.
    pub async fn deliver(&self, body: &[u8], stop: &CancellationToken) -> bool {
        let occurred = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|e| e["occurredAt"].as_str().map(str::to_owned))
            .and_then(|t| {
                OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
            })
            .unwrap_or_else(OffsetDateTime::now_utc);
        let mut wait = FIRST_BACKOFF;
        loop {
            match self.post(body).await {
                Ok(()) => return true,
                Err(e) => tracing::info!(error = %e, "webhook not accepted; retrying"),
            }
            let age = OffsetDateTime::now_utc() - occurred;
            if age.unsigned_abs() >= self.max_age {
                tracing::warn!(
                    "a webhook event is older than EVENTS_WEBHOOK_MAX_AGE_HOURS; dead-lettered"
                );
                return false;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    async fn post(&self, body: &[u8]) -> anyhow::Result<()> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let signed = signature(self.secret.expose_secret(), now, body);
        let response = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("OTP-Signature", signed)
            .body(body.to_vec())
            .send()
            .await?;
        let status = response.status();
        // Read (at most 64 KiB) so the connection can be reused; the body says nothing we use.
        let _ = crate::sender::read_capped(response).await;
        anyhow::ensure!(status.is_success(), "the webhook answered {status}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_an_hmac_of_the_time_and_the_body() {
        let signed = signature("s3cret", 1_700_000_000, b"{\"id\":1}");
        let (t, v1) = signed.split_once(",v1=").unwrap();
        assert_eq!(t, "t=1700000000");
        assert_eq!(v1.len(), 64);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"1700000000.{\"id\":1}");
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v1, expected);
    }

    #[test]
    fn a_webhook_needs_the_events() {
        let mut args = WebhookArgs {
            events_enabled: true,
            events_webhook_url: Some("http://127.0.0.1:9/hook".into()),
            events_webhook_secret: Some("s3cret".to_owned().into()),
            events_webhook_max_age_hours: 24,
        };
        let dev = otp_shared::config::AppEnv::Development;
        assert_eq!(args.check(dev), Ok(()));
        args.events_enabled = false;
        let refused = args.check(dev).unwrap_err();
        assert!(refused.contains("EVENTS_ENABLED"), "{refused}");
    }
}
