//! The delivery settings as clap groups, which a binary flattens into its own config
//! (`otp-dispatcher --help` lists them): [`ProviderArgs`] (who sends, and how long a call may
//! take), [`RetryArgs`], [`BreakerArgs`] and [`RateArgs`]. Code that needs no environment (the
//! one-process mode, tests) builds the typed values directly: [`RetryPolicy`],
//! [`BreakerSettings`].

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Args, Parser};
use otp_shared::config::{AppEnv, ReportArgs};

use crate::{
    breaker::BreakerSettings,
    metrics::DeliveryMetrics,
    plivo::{PlivoClient, PlivoSettings},
    retry::RetryPolicy,
    sender::{SmsProvider, SmsSender},
    twilio::{TwilioClient, TwilioSettings},
};

/// SMS_PROVIDERS, each provider's account, and the limits of one provider call.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// SMS providers in order of preference: plivo, twilio, or both (`plivo,twilio`).
    #[arg(
        long,
        env = "SMS_PROVIDERS",
        value_delimiter = ',',
        default_value = "plivo"
    )]
    pub sms_providers: Vec<SmsProvider>,

    /// Plivo account id (the `auth_id` in the API path and Basic auth); required with plivo.
    #[arg(long, env = "PLIVO_AUTH_ID")]
    pub plivo_auth_id: Option<String>,
    /// Sender: an E.164 number (+14155550000) or an alphanumeric sender id (up to 11
    /// characters); required with plivo.
    #[arg(long, env = "PLIVO_SENDER_NUMBER", value_parser = parse_sender)]
    pub plivo_sender_number: Option<String>,
    /// Plivo API base URL; point it at a fake for local runs and tests.
    #[arg(long, env = "PLIVO_BASE_URL", default_value = "https://api.plivo.com", value_parser = parse_http_url)]
    pub plivo_base_url: String,
    /// Twilio account SID (the path and Basic auth user); required with twilio.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// Twilio sender (`From`): an E.164 number or an alphanumeric sender id; required with twilio.
    #[arg(long, env = "TWILIO_FROM_NUMBER", value_parser = parse_sender)]
    pub twilio_from_number: Option<String>,
    /// Twilio API base URL; point it at a fake for local runs and tests.
    #[arg(long, env = "TWILIO_BASE_URL", default_value = "https://api.twilio.com", value_parser = parse_http_url)]
    pub twilio_base_url: String,

    /// Milliseconds allowed to open a connection to a provider [default: 3000]
    // Read through `connect_timeout()`, which also honours the old name.
    #[arg(long, env = "SMS_CONNECT_TIMEOUT_MS", value_parser = parse_millis)]
    pub sms_connect_timeout_ms: Option<u64>,
    /// Milliseconds allowed for a whole provider call [default: 10000]
    // Read through `request_timeout()`, which also honours the old name.
    #[arg(long, env = "SMS_REQUEST_TIMEOUT_MS", value_parser = parse_millis)]
    pub sms_request_timeout_ms: Option<u64>,
    /// Deprecated name of SMS_CONNECT_TIMEOUT_MS.
    #[arg(long, env = "PLIVO_CONNECT_TIMEOUT_MS", hide = true, value_parser = parse_millis)]
    pub plivo_connect_timeout_ms: Option<u64>,
    /// Deprecated name of SMS_REQUEST_TIMEOUT_MS.
    #[arg(long, env = "PLIVO_REQUEST_TIMEOUT_MS", hide = true, value_parser = parse_millis)]
    pub plivo_request_timeout_ms: Option<u64>,
}

/// Retries: the backoff between a job's attempts, when it moves to the next provider, and how
/// long a dispatcher's claim on a job lasts.
#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    /// First retry delay ceiling in milliseconds; it doubles per retry (full jitter).
    #[arg(long, env = "RETRY_MIN_DELAY_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_min_delay_ms: u64,
    /// Cap on each retry delay in milliseconds.
    #[arg(long, env = "RETRY_MAX_DELAY_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_max_delay_ms: u64,
    /// Cap on a provider's Retry-After, in seconds.
    #[arg(long, env = "RETRY_AFTER_CAP_SECONDS", default_value_t = 60)]
    pub retry_after_cap_seconds: u64,
    /// Retries a job spends on one provider before its next attempt goes to the next one.
    #[arg(long, env = "FAILOVER_AFTER_RETRIES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub failover_after_retries: u32,
    /// Seconds a dispatcher's claim on a job lasts without renewal; a crashed dispatcher's
    /// jobs are picked up by others after this long.
    #[arg(long, env = "JOB_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub job_lease_seconds: u64,
}

/// Each provider's circuit breaker.
#[derive(Debug, Clone, Args)]
pub struct BreakerArgs {
    /// Consecutive failed calls that open a provider's circuit breaker.
    #[arg(long, env = "BREAKER_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub breaker_failures: u32,
    /// Share of failed calls (0 to 1) in a window that opens the breaker...
    #[arg(long, env = "BREAKER_FAILURE_RATIO", default_value_t = 0.5, value_parser = parse_ratio)]
    pub breaker_failure_ratio: f64,
    /// ...once the window holds at least this many calls.
    #[arg(long, env = "BREAKER_MIN_CALLS", default_value_t = 20)]
    pub breaker_min_calls: u32,
    /// Seconds of the breaker's failure-share window.
    #[arg(long, env = "BREAKER_WINDOW_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub breaker_window_seconds: u64,
    /// Seconds an open breaker waits before letting one probe through.
    #[arg(long, env = "BREAKER_COOLDOWN_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub breaker_cooldown_seconds: u64,
}

/// The one send rate every dispatcher shares.
#[derive(Debug, Clone, Args)]
pub struct RateArgs {
    /// Provider calls per second across all dispatchers together (GCRA in Redis: a call
    /// reserves a slot and sleeps until it; bursts up to one second's worth) [default: 50]
    // Read through `max_rps()`, which also honours the old name.
    #[arg(long, env = "SMS_MAX_RPS", value_parser = parse_rps)]
    pub sms_max_rps: Option<u32>,
    /// Deprecated name of SMS_MAX_RPS.
    #[arg(long, env = "PLIVO_MAX_RPS", hide = true, value_parser = parse_rps)]
    pub plivo_max_rps: Option<u32>,
}

/// The delivery settings a dispatcher reads, in their groups.
#[derive(Debug, Clone, Args)]
pub struct DeliveryArgs {
    #[command(flatten)]
    pub providers: ProviderArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub breaker: BreakerArgs,
    #[command(flatten)]
    pub rate: RateArgs,
}

/// An old setting name still read, and the name that replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deprecated {
    pub old: &'static str,
    pub new: &'static str,
}

impl DeliveryArgs {
    /// The deprecated names these settings were given under (the new name wins when both are
    /// set). A binary logs each once at start.
    pub fn deprecated(&self) -> Vec<Deprecated> {
        let p = &self.providers;
        [
            (
                self.rate.plivo_max_rps.is_some(),
                "PLIVO_MAX_RPS",
                "SMS_MAX_RPS",
            ),
            (
                p.plivo_connect_timeout_ms.is_some(),
                "PLIVO_CONNECT_TIMEOUT_MS",
                "SMS_CONNECT_TIMEOUT_MS",
            ),
            (
                p.plivo_request_timeout_ms.is_some(),
                "PLIVO_REQUEST_TIMEOUT_MS",
                "SMS_REQUEST_TIMEOUT_MS",
            ),
        ]
        .into_iter()
        .filter(|(used, ..)| *used)
        .map(|(_, old, new)| Deprecated { old, new })
        .collect()
    }

    /// Logs one warning per deprecated name in use.
    pub fn warn_deprecated(&self) {
        for Deprecated { old, new } in self.deprecated() {
            tracing::warn!("{old} is deprecated and will be removed: rename it to {new}");
        }
    }
}

impl ProviderArgs {
    /// The provider settings from the environment alone (no command line): for a process
    /// whose own command line has no provider flags, the one-process mode.
    pub fn from_env() -> anyhow::Result<Self> {
        #[derive(Parser)]
        struct FromEnv {
            #[command(flatten)]
            providers: ProviderArgs,
        }
        FromEnv::try_parse_from(["otp"])
            .map(|parsed| parsed.providers)
            .map_err(|e| anyhow::anyhow!("the SMS provider settings: {e}"))
    }

    /// Whether any provider account is configured at all.
    pub fn any_account(&self) -> bool {
        self.plivo_auth_id.is_some() || self.twilio_account_sid.is_some()
    }

    pub fn connect_timeout(&self) -> Duration {
        let ms = self
            .sms_connect_timeout_ms
            .or(self.plivo_connect_timeout_ms);
        Duration::from_millis(ms.unwrap_or(3_000))
    }

    pub fn request_timeout(&self) -> Duration {
        let ms = self
            .sms_request_timeout_ms
            .or(self.plivo_request_timeout_ms);
        Duration::from_millis(ms.unwrap_or(10_000))
    }

    /// Checks each listed provider has its account, sender and token, and (outside
    /// development) that the provider URLs use https unless they point at this host. The error
    /// names the variable.
    pub fn validate(&self, reports: &ReportArgs, env: AppEnv) -> Result<(), String> {
        let missing = |var: &str, provider: &str| {
            format!("{var} is required when SMS_PROVIDERS includes {provider}")
        };
        if self.sms_providers.contains(&SmsProvider::Plivo) {
            if self.plivo_auth_id.is_none() {
                return Err(missing("PLIVO_AUTH_ID", "plivo"));
            }
            if reports.plivo_auth_token.is_none() {
                return Err(missing("PLIVO_AUTH_TOKEN", "plivo"));
            }
            if self.plivo_sender_number.is_none() {
                return Err(missing("PLIVO_SENDER_NUMBER", "plivo"));
            }
        }
        if self.sms_providers.contains(&SmsProvider::Twilio) {
            if self.twilio_account_sid.is_none() {
                return Err(missing("TWILIO_ACCOUNT_SID", "twilio"));
            }
            if reports.twilio_auth_token.is_none() {
                return Err(missing("TWILIO_AUTH_TOKEN", "twilio"));
            }
            if self.twilio_from_number.is_none() {
                return Err(missing("TWILIO_FROM_NUMBER", "twilio"));
            }
        }
        if env == AppEnv::Development {
            return Ok(());
        }
        otp_shared::urls::check_secure_urls(&[
            ("PLIVO_BASE_URL", Some(self.plivo_base_url.as_str())),
            ("TWILIO_BASE_URL", Some(self.twilio_base_url.as_str())),
        ])
    }

    /// The senders of SMS_PROVIDERS, in order, each counting its calls in `metrics`.
    /// [`ProviderArgs::validate`] has checked their settings are present.
    pub fn senders(
        &self,
        reports: &ReportArgs,
        metrics: &DeliveryMetrics,
    ) -> anyhow::Result<Vec<Arc<dyn SmsSender>>> {
        let connect_timeout = Some(self.connect_timeout());
        let request_timeout = Some(self.request_timeout());
        let mut list = Vec::new();
        for provider in &self.sms_providers {
            let missing = || anyhow::anyhow!("settings of {} are missing", provider.name());
            let sender: Arc<dyn SmsSender> = match provider {
                SmsProvider::Twilio => Arc::new(
                    TwilioClient::new(TwilioSettings {
                        base_url: self.twilio_base_url.clone(),
                        account_sid: self.twilio_account_sid.clone().ok_or_else(missing)?,
                        auth_token: reports.twilio_auth_token.clone().ok_or_else(missing)?,
                        from: self.twilio_from_number.clone().ok_or_else(missing)?,
                        status_callback_url: reports.twilio_status_callback_url.clone(),
                        connect_timeout,
                        request_timeout,
                    })
                    .context("building the Twilio HTTP client")?
                    .with_metrics(metrics.provider(provider.name())),
                ),
                SmsProvider::Plivo => Arc::new(
                    PlivoClient::new(PlivoSettings {
                        base_url: self.plivo_base_url.clone(),
                        auth_id: self.plivo_auth_id.clone().ok_or_else(missing)?,
                        auth_token: reports.plivo_auth_token.clone().ok_or_else(missing)?,
                        sender: self.plivo_sender_number.clone().ok_or_else(missing)?,
                        status_callback_url: reports.sms_status_callback_url.clone(),
                        connect_timeout,
                        request_timeout,
                    })
                    .context("building the Plivo HTTP client")?
                    .with_metrics(metrics.provider(provider.name())),
                ),
            };
            list.push(sender);
        }
        Ok(list)
    }
}

impl RetryArgs {
    pub fn policy(&self) -> anyhow::Result<RetryPolicy> {
        RetryPolicy::new(
            Duration::from_millis(self.retry_min_delay_ms),
            Duration::from_millis(self.retry_max_delay_ms),
            Duration::from_secs(self.retry_after_cap_seconds),
        )
        .map_err(|e| anyhow::anyhow!("RETRY_MIN_DELAY_MS / RETRY_MAX_DELAY_MS: {e}"))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.job_lease_seconds)
    }
}

impl BreakerArgs {
    pub fn settings(&self) -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: self.breaker_failures,
            failure_ratio: self.breaker_failure_ratio,
            min_calls: self.breaker_min_calls,
            window: Duration::from_secs(self.breaker_window_seconds),
            cooldown: Duration::from_secs(self.breaker_cooldown_seconds),
        }
    }
}

impl RateArgs {
    /// A rate of `max_rps` calls per second under the new name.
    pub fn new(max_rps: u32) -> Self {
        Self {
            sms_max_rps: Some(max_rps),
            plivo_max_rps: None,
        }
    }

    /// SMS_MAX_RPS, else its old name PLIVO_MAX_RPS, else 50.
    pub fn max_rps(&self) -> u32 {
        self.sms_max_rps.or(self.plivo_max_rps).unwrap_or(50)
    }
}

fn parse_rps(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
        _ => Err("must be a whole number of calls per second from 1 to 100000".into()),
    }
}

fn parse_millis(value: &str) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a whole number of milliseconds above 0".into()),
    }
}

fn parse_sender(value: &str) -> Result<String, String> {
    let value = value.trim();
    let number = value
        .strip_prefix('+')
        .is_some_and(|d| (6..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
    let alphanumeric = (1..=11).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && value.bytes().any(|b| b.is_ascii_alphabetic());
    if number || alphanumeric {
        Ok(value.to_owned())
    } else {
        Err("must be an E.164 number (+14155550000) or an alphanumeric sender id of at most 11 characters".into())
    }
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err("must be a share above 0 and at most 1, e.g. 0.5".into()),
    }
}

fn parse_http_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err("must name a host".into());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        delivery: DeliveryArgs,
    }

    fn parse(args: &[&str]) -> DeliveryArgs {
        let mut argv = vec!["otp"];
        argv.extend(args);
        Cli::try_parse_from(argv).unwrap().delivery
    }

    #[test]
    fn the_new_names_win_and_the_old_ones_still_work_with_a_warning() {
        let defaults = parse(&[]);
        assert_eq!(defaults.rate.max_rps(), 50);
        assert_eq!(defaults.providers.connect_timeout(), Duration::from_secs(3));
        assert_eq!(
            defaults.providers.request_timeout(),
            Duration::from_secs(10)
        );
        assert!(defaults.deprecated().is_empty());

        let old = parse(&[
            "--plivo-max-rps=7",
            "--plivo-connect-timeout-ms=100",
            "--plivo-request-timeout-ms=200",
        ]);
        assert_eq!(old.rate.max_rps(), 7);
        assert_eq!(old.providers.connect_timeout(), Duration::from_millis(100));
        assert_eq!(old.providers.request_timeout(), Duration::from_millis(200));
        let names: Vec<_> = old.deprecated().iter().map(|d| d.old).collect();
        assert_eq!(
            names,
            [
                "PLIVO_MAX_RPS",
                "PLIVO_CONNECT_TIMEOUT_MS",
                "PLIVO_REQUEST_TIMEOUT_MS"
            ]
        );

        let both = parse(&["--plivo-max-rps=7", "--sms-max-rps=9"]);
        assert_eq!(both.rate.max_rps(), 9);
        assert_eq!(both.deprecated().len(), 1);
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            ["--sms-max-rps", "0"],
            ["--plivo-max-rps", "0"],
            ["--sms-request-timeout-ms", "0"],
            ["--plivo-sender-number", "+12"],
            ["--plivo-base-url", "ftp://x"],
            ["--sms-providers", "plivo,sinch"],
            ["--breaker-failure-ratio", "1.5"],
        ] {
            let mut argv = vec!["otp"];
            argv.extend(args);
            let err = Cli::try_parse_from(argv).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains(args[0])), "{args:?}");
        }
    }

    #[test]
    fn alphanumeric_sender_ids_are_accepted() {
        assert_eq!(parse_sender("MyBrand").unwrap(), "MyBrand");
        assert!(parse_sender("123456789012").is_err());
    }

    #[test]
    fn a_listed_provider_needs_its_account() {
        let reports = ReportArgs {
            plivo_auth_token: Some("token".to_owned().into()),
            sms_status_callback_url: None,
            twilio_auth_token: None,
            twilio_status_callback_url: None,
            resend_on_undelivered: false,
        };
        let plivo = parse(&["--plivo-auth-id=MA1", "--plivo-sender-number=+14155550000"]);
        assert!(
            plivo
                .providers
                .validate(&reports, AppEnv::Development)
                .is_ok()
        );
        let twilio = parse(&["--sms-providers=plivo,twilio", "--plivo-auth-id=MA1"]);
        let err = twilio
            .providers
            .validate(&reports, AppEnv::Development)
            .unwrap_err();
        assert!(err.contains("PLIVO_SENDER_NUMBER"), "{err}");
        let err = parse(&[
            "--plivo-auth-id=MA1",
            "--plivo-sender-number=+14155550000",
            "--plivo-base-url=http://fake-plivo:8080",
        ])
        .providers
        .validate(&reports, AppEnv::Production)
        .unwrap_err();
        assert!(err.contains("PLIVO_BASE_URL"), "{err}");
    }
}
