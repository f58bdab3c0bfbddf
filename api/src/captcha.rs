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

use crate::{error::ApiError, metrics::ApiMetrics, store::CodeStore};

/// How long a token is remembered, so a reuse is refused without a provider call (the
/// providers' tokens expire sooner: Turnstile and reCAPTCHA after 300 s, hCaptcha 120 s).
pub const TOKEN_MEMORY: Duration = Duration::from_secs(300);
/// The longest token taken (Turnstile's are up to 2,048 characters).
const MAX_TOKEN_LEN: usize = 4096;

/// CAPTCHA_PROVIDER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Off,
    Turnstile,
    Hcaptcha,
    Recaptcha,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Turnstile => "turnstile",
            Self::Hcaptcha => "hcaptcha",
            Self::Recaptcha => "recaptcha",
        }
    }

    /// The provider's siteverify endpoint.
    fn verify_url(self) -> &'static str {
        match self {
            Self::Off => "",
            Self::Turnstile => "https://challenges.cloudflare.com/turnstile/v0/siteverify",
            Self::Hcaptcha => "https://api.hcaptcha.com/siteverify",
            Self::Recaptcha => "https://www.google.com/recaptcha/api/siteverify",
        }
    }

    /// The secrets each provider publishes for tests (they pass every token): never in
    /// production.
    fn test_secrets(self) -> &'static [&'static str] {
        match self {
            Self::Off => &[],
            Self::Turnstile => &[
                "1x0000000000000000000000000000000AA",
                "2x0000000000000000000000000000000AA",
                "3x0000000000000000000000000000000AA",
            ],
            Self::Hcaptcha => &["0x0000000000000000000000000000000000000000"],
            Self::Recaptcha => &["6LeIxAcTAAAAAGG-vFI1TnRWxMZNFuojJ4WifJWe"],
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "turnstile" => Ok(Self::Turnstile),
            "hcaptcha" => Ok(Self::Hcaptcha),
            "recaptcha" => Ok(Self::Recaptcha),
            _ => Err(format!(
                "'{s}' is not a provider (off, turnstile, hcaptcha or recaptcha)"
            )),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct CaptchaArgs {
    /// CAPTCHA before any SMS for callers without a key: off, turnstile, hcaptcha or recaptcha.
    /// Keyed callers are exempt (their backend checks)
    #[arg(long, env = "CAPTCHA_PROVIDER", default_value = "off")]
    pub captcha_provider: Provider,
    /// The provider's secret key for its siteverify call; required with a provider (production
    /// refuses an empty one or a provider's published test secret)
    #[arg(long, env = "CAPTCHA_SECRET", hide_env_values = true)]
    pub captcha_secret: Option<SecretString>,
    /// The widget's public site key, for the demo page (/demo)
    #[arg(long, env = "CAPTCHA_SITE_KEY")]
    pub captcha_site_key: Option<String>,
    /// The siteverify URL, https only outside development (plain http to this host excepted)
    /// [default: the provider's]
    #[arg(long, env = "CAPTCHA_VERIFY_URL")]
    pub captcha_verify_url: Option<String>,
    /// Milliseconds the siteverify call may take; then the check counts as unavailable
    #[arg(long, env = "CAPTCHA_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..=30_000))]
    pub captcha_timeout_ms: u64,
    /// Let requests through (and count them) when the provider is unreachable, times out or
    /// answers nonsense, instead of 503 CAPTCHA_UNAVAILABLE
    #[arg(long, env = "CAPTCHA_FAIL_OPEN", default_value_t = false, action = clap::ArgAction::Set)]
    pub captcha_fail_open: bool,
    /// reCAPTCHA v3: the lowest score that passes (0 to 1)
    #[arg(long, env = "CAPTCHA_MIN_SCORE", default_value_t = 0.5, value_parser = parse_score)]
    pub captcha_min_score: f64,
    /// Host names a token must have been solved on (the provider's `hostname`), comma-separated;
    /// empty: any
    #[arg(long, env = "CAPTCHA_HOSTNAMES", value_delimiter = ',')]
    pub captcha_hostnames: Vec<String>,
}

fn parse_score(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(score) if (0.0..=1.0).contains(&score) => Ok(score),
        _ => Err("must be a number from 0 to 1".into()),
    }
}

impl CaptchaArgs {
    /// The settings' own rules: a provider needs a secret (not a published test one outside
    /// development) and a secure siteverify URL outside development. Errors name the variable.
    pub fn check(&self, env: AppEnv) -> Result<(), String> {
        let provider = self.captcha_provider;
        if provider == Provider::Off {
            return Ok(());
        }
        let secret = self
            .captcha_secret
            .as_ref()
            .map(|s| s.expose_secret().trim())
            .unwrap_or_default();
        if secret.is_empty() {
            return Err(format!(
                "CAPTCHA_SECRET is required with CAPTCHA_PROVIDER={}",
                provider.name()
            ));
        }
        if env == AppEnv::Production {
            if provider.test_secrets().contains(&secret) {
                return Err(format!(
                    "CAPTCHA_SECRET is {}'s published test secret, which passes every token \
                     (APP_ENV=development allows it)",
                    provider.name()
                ));
            }
            otp_shared::urls::check_secure_urls(&[(
                "CAPTCHA_VERIFY_URL",
                self.captcha_verify_url.as_deref(),
            )])?;
        }
        if let Some(url) = &self.captcha_verify_url
            && url::Url::parse(url).is_err()
        {
            return Err("CAPTCHA_VERIFY_URL is not a URL".into());
        }
        Ok(())
    }

    /// What the demo page needs to show the widget: the provider and the public site key.
    pub fn widget(&self) -> Option<(Provider, String)> {
        match (self.captcha_provider, &self.captcha_site_key) {
            (Provider::Off, _) | (_, None) => None,
            (provider, Some(key)) => Some((provider, key.clone())),
        }
    }
}

/// How a check ended, as `otp_captcha_checks_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Passed,
    Failed,
    Missing,
    Unavailable,
    FailOpen,
}

impl CheckResult {
    pub const ALL: [Self; 5] = [
        Self::Passed,
        Self::Failed,
        Self::Missing,
        Self::Unavailable,
        Self::FailOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Missing => "missing",
            Self::Unavailable => "unavailable",
            Self::FailOpen => "fail_open",
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(provider: Provider, secret: Option<&str>, url: Option<&str>) -> CaptchaArgs {
        CaptchaArgs {
            captcha_provider: provider,
            captcha_secret: secret.map(|s| s.to_owned().into()),
            captcha_site_key: None,
            captcha_verify_url: url.map(str::to_owned),
            captcha_timeout_ms: 2000,
            captcha_fail_open: false,
            captcha_min_score: 0.5,
            captcha_hostnames: vec![],
        }
    }

    #[test]
    fn production_refuses_a_missing_or_test_secret_and_plain_http() {
        let production = AppEnv::Production;
        assert!(args(Provider::Off, None, None).check(production).is_ok());
        for secret in [None, Some(""), Some("  ")] {
            let error = args(Provider::Turnstile, secret, None).check(production);
            assert!(error.unwrap_err().contains("CAPTCHA_SECRET"));
        }
        let test = args(
            Provider::Hcaptcha,
            Some(Provider::Hcaptcha.test_secrets()[0]),
            None,
        );
        let error = test.check(production).unwrap_err();
        assert!(
            error.contains("CAPTCHA_SECRET") && error.contains("test secret"),
            "{error}"
        );
        assert!(test.check(AppEnv::Development).is_ok());
        let plain = args(
            Provider::Recaptcha,
            Some("real"),
            Some("http://verify.example.com/"),
        );
        assert!(
            plain
                .check(production)
                .unwrap_err()
                .contains("CAPTCHA_VERIFY_URL")
        );
        let local = args(
            Provider::Recaptcha,
            Some("real"),
            Some("http://127.0.0.1:8080/siteverify"),
        );
        assert!(local.check(production).is_ok());
        let error = args(Provider::Turnstile, Some("real"), None).check(production);
        assert!(error.is_ok());
        assert!(!format!("{:?}", args(Provider::Turnstile, Some("real"), None)).contains("real"));
    }

    #[test]
    fn providers_parse_by_name() {
        for provider in [
            Provider::Off,
            Provider::Turnstile,
            Provider::Hcaptcha,
            Provider::Recaptcha,
        ] {
            assert_eq!(provider.name().parse::<Provider>(), Ok(provider));
        }
        assert!(
            "friendly"
                .parse::<Provider>()
                .unwrap_err()
                .contains("turnstile")
        );
    }
}
