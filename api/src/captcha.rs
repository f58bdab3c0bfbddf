//! A CAPTCHA before any SMS for callers without a key (CAPTCHA_PROVIDER): Cloudflare Turnstile,
//! hCaptcha or reCAPTCHA. The token (JSON `captchaToken` or header `X-Captcha-Token`) is checked
//! with the provider's siteverify call before any limit is spent or anything else is stored.
//! A token is sent to the provider once: its digest is kept for [`TOKEN_MEMORY`] in the code
//! store, and a token seen again is refused without a call. Keyed callers are exempt: their
//! backend did the check.

use std::{net::IpAddr, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use otp_shared::config::AppEnv;

use crate::{
    config::{CaptchaArgs, Provider},
    error::ApiError,
    metrics::{ApiMetrics, CheckResult},
    store::CodeStore,
};

/// How long a token is remembered, so a reuse is refused without a provider call (the
/// providers' tokens expire sooner: Turnstile and reCAPTCHA after 300 s, hCaptcha 120 s).
pub const TOKEN_MEMORY: Duration = Duration::from_secs(300);
/// The longest token taken (Turnstile's are up to 2,048 characters).
const MAX_TOKEN_LEN: usize = 4096;

/// The provider's answer, as far as it is read.
#[derive(Debug, serde::Deserialize)]
struct Answer {
    success: bool,
    /// reCAPTCHA v3 only.
    score: Option<f64>,
    hostname: Option<String>,
}

/// The check, shared by every request.
pub struct Captcha {
    provider: Provider,
    secret: SecretString,
    url: String,
    http: reqwest::Client,
    fail_open: bool,
    min_score: f64,
    hostnames: Vec<String>,
    store: Arc<dyn CodeStore>,
    metrics: Arc<ApiMetrics>,
}

impl Captcha {
    /// The check CAPTCHA_PROVIDER asks for; `None` when off.
    pub fn from_args(
        args: &CaptchaArgs,
        env: AppEnv,
        store: Arc<dyn CodeStore>,
        metrics: Arc<ApiMetrics>,
    ) -> anyhow::Result<Option<Self>> {
        args.check(env).map_err(anyhow::Error::msg)?;
        let provider = args.captcha_provider;
        let Some(secret) = args
            .captcha_secret
            .clone()
            .filter(|_| provider != Provider::Off)
        else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(args.captcha_timeout_ms);
        let http = otp_delivery::sender::http_client(Some(timeout), Some(timeout))?;
        Ok(Some(Self {
            provider,
            secret,
            url: args
                .captcha_verify_url
                .clone()
                .unwrap_or_else(|| provider.verify_url().to_owned()),
            http,
            fail_open: args.captcha_fail_open,
            min_score: args.captcha_min_score,
            hostnames: args.captcha_hostnames.clone(),
            store,
            metrics,
        }))
    }

    /// Passes a request whose `token` the provider accepts (or, with CAPTCHA_FAIL_OPEN, one
    /// the provider could not judge); `remote_ip` is the client's address after the proxy
    /// rules.
    pub async fn check(&self, token: Option<&str>, remote_ip: IpAddr) -> Result<(), ApiError> {
        let result = self.judge(token, remote_ip).await;
        let counted = match &result {
            Ok(counted) => *counted,
            Err(ApiError::CaptchaRequired) => CheckResult::Missing,
            Err(ApiError::CaptchaFailed) => CheckResult::Failed,
            Err(ApiError::CaptchaUnavailable) => CheckResult::Unavailable,
            // The store failed: counted by the request's 503, not as a check.
            Err(_) => return result.map(drop),
        };
        self.metrics.captcha_check(counted);
        result.map(drop)
    }

    async fn judge(&self, token: Option<&str>, remote_ip: IpAddr) -> Result<CheckResult, ApiError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(ApiError::CaptchaRequired);
        };
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::CaptchaFailed);
        }
        let digest = hex(&Sha256::digest(token.as_bytes()));
        if !self.store.first_captcha(&digest).await? {
            return Err(ApiError::CaptchaFailed);
        }
        let started = std::time::Instant::now();
        let answer = self.siteverify(token, remote_ip).await;
        self.metrics
            .captcha_duration
            .observe(started.elapsed().as_secs_f64());
        let answer = match answer {
            Ok(answer) => answer,
            Err(cause) if self.fail_open => {
                tracing::warn!(provider = self.provider.name(), error = %cause,
                    "CAPTCHA provider unavailable; letting the request through (CAPTCHA_FAIL_OPEN)");
                return Ok(CheckResult::FailOpen);
            }
            Err(cause) => {
                tracing::warn!(provider = self.provider.name(), error = %cause,
                    "CAPTCHA provider unavailable");
                return Err(ApiError::CaptchaUnavailable);
            }
        };
        let scored = self.provider != Provider::Recaptcha
            || answer.score.is_none_or(|score| score >= self.min_score);
        let on_our_host = self.hostnames.is_empty()
            || answer
                .hostname
                .as_ref()
                .is_none_or(|h| self.hostnames.iter().any(|ok| ok.eq_ignore_ascii_case(h)));
        match answer.success && scored && on_our_host {
            true => Ok(CheckResult::Passed),
            false => Err(ApiError::CaptchaFailed),
        }
    }

    /// One siteverify call: form-encoded `secret`, `response` and `remoteip`.
    async fn siteverify(&self, token: &str, remote_ip: IpAddr) -> anyhow::Result<Answer> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("secret", self.secret.expose_secret())
            .append_pair("response", token)
            .append_pair("remoteip", &remote_ip.to_string())
            .finish();
        let response = self
            .http
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await?;
        let status = response.status();
        let body = otp_delivery::sender::read_capped(response).await;
        anyhow::ensure!(status.is_success(), "siteverify answered {status}");
        serde_json::from_slice(&body).map_err(|_| anyhow::anyhow!("siteverify answered non-JSON"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
