//! otp-dispatcher settings: read once from the environment (and `.env`), validated at start.
//! `otp-dispatcher --help` lists every variable with its default.

use std::time::Duration;

use clap::Parser;

use otp_shared::{
    config::{AmqpArgs, AppEnv, ProcessArgs, RedisArgs, ReportArgs, SecretParser},
    crypto::JobKey,
};

use crate::{retry::RetryPolicy, sender::SmsProvider};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "otp-dispatcher",
    version,
    about = "Consumes OTP send jobs from RabbitMQ and sends them through Plivo.",
    after_help = "Operator subcommands: `otp-dispatcher dlq --help` (dead letters: list, replay, purge) and `otp-dispatcher healthcheck --help`."
)]
pub struct Config {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,

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
    /// Retries a job spends on one provider before its next attempt goes to the next one.
    #[arg(long, env = "FAILOVER_AFTER_RETRIES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub failover_after_retries: u32,
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

    /// Base64 AES-256 key (32 bytes) that opens send jobs; the same as otp-api's.
    #[arg(long, env = "JOB_ENCRYPTION_KEY", hide_env_values = true, value_parser = SecretParser(JobKey::from_base64))]
    pub job_encryption_key: JobKey,

    /// Jobs in flight at once per dispatcher (also the AMQP prefetch).
    #[arg(long, env = "DISPATCHER_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub dispatcher_concurrency: u16,
    /// Provider calls per second across all dispatchers together (GCRA in Redis: a call
    /// reserves a slot and sleeps until it; bursts up to one second's worth).
    #[arg(long, env = "PLIVO_MAX_RPS", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub plivo_max_rps: u32,
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
    /// Milliseconds allowed to open a connection to Plivo.
    #[arg(long, env = "PLIVO_CONNECT_TIMEOUT_MS", default_value_t = 3_000)]
    pub plivo_connect_timeout_ms: u64,
    /// Milliseconds allowed for a whole Plivo call.
    #[arg(long, env = "PLIVO_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub plivo_request_timeout_ms: u64,
    /// Seconds a dispatcher's claim on a job lasts without renewal; a crashed dispatcher's
    /// jobs are picked up by others after this long.
    #[arg(long, env = "JOB_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub job_lease_seconds: u64,

    /// Port of /healthz and /readyz.
    #[arg(long, env = "DISPATCHER_HTTP_PORT", default_value_t = 3001)]
    pub dispatcher_http_port: u16,
    #[command(flatten)]
    pub reports: ReportArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
}

impl Config {
    /// Checks what needs more than one setting: outside development, no known-bad key, and
    /// provider URLs over https unless they point at this host. The error names the variable.
    pub fn validate(&self) -> Result<(), String> {
        let missing = |var: &str, provider: &str| {
            format!("{var} is required when SMS_PROVIDERS includes {provider}")
        };
        if self.sms_providers.contains(&SmsProvider::Plivo) {
            if self.plivo_auth_id.is_none() {
                return Err(missing("PLIVO_AUTH_ID", "plivo"));
            }
            if self.reports.plivo_auth_token.is_none() {
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
            if self.reports.twilio_auth_token.is_none() {
                return Err(missing("TWILIO_AUTH_TOKEN", "twilio"));
            }
            if self.twilio_from_number.is_none() {
                return Err(missing("TWILIO_FROM_NUMBER", "twilio"));
            }
        }
        otp_shared::keyring::check_keys(
            self.process.app_env,
            &[("JOB_ENCRYPTION_KEY", self.job_encryption_key.key_bytes())],
        )?;
        otp_shared::keyring::check_tokens(
            self.process.app_env,
            &[
                ("PLIVO_AUTH_TOKEN", self.reports.plivo_auth_token.as_ref()),
                ("TWILIO_AUTH_TOKEN", self.reports.twilio_auth_token.as_ref()),
            ],
        )?;
        if self.process.app_env == AppEnv::Development {
            return Ok(());
        }
        otp_shared::urls::check_secure_urls(&[
            ("PLIVO_BASE_URL", Some(self.plivo_base_url.as_str())),
            ("TWILIO_BASE_URL", Some(self.twilio_base_url.as_str())),
            (
                "SMS_STATUS_CALLBACK_URL",
                self.reports.sms_status_callback_url.as_deref(),
            ),
            (
                "TWILIO_STATUS_CALLBACK_URL",
                self.reports.twilio_status_callback_url.as_deref(),
            ),
        ])
    }

    pub fn retry_policy(&self) -> anyhow::Result<RetryPolicy> {
        RetryPolicy::new(
            Duration::from_millis(self.retry_min_delay_ms),
            Duration::from_millis(self.retry_max_delay_ms),
            Duration::from_secs(self.retry_after_cap_seconds),
        )
        .map_err(|e| anyhow::anyhow!("RETRY_MIN_DELAY_MS / RETRY_MAX_DELAY_MS: {e}"))
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
    use clap::CommandFactory;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn base() -> Vec<&'static str> {
        vec![
            "otp-dispatcher",
            "--plivo-auth-id",
            "MA123",
            "--plivo-auth-token",
            "secret-token",
            "--plivo-sender-number",
            "+14155550000",
            "--job-encryption-key",
            KEY,
        ]
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn bad_values_are_rejected_with_the_variable_named() {
        let ok = Config::try_parse_from(base()).unwrap();
        assert!(!format!("{ok:?}").contains("secret-token"));
        assert!(ok.retry_policy().is_ok());
        for (flag, value) in [
            ("--plivo-sender-number", "not a sender!"),
            ("--plivo-sender-number", "+12"),
            ("--plivo-base-url", "ftp://x"),
            ("--sms-providers", "plivo,sinch"),
            ("--dispatcher-concurrency", "0"),
            ("--plivo-max-rps", "0"),
            ("--job-encryption-key", "c2hvcnQ="),
        ] {
            let mut args = base();
            args.extend([flag, value]);
            let err = Config::try_parse_from(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
        let mut args = base();
        args.extend(["--retry-min-delay-ms", "5000", "--retry-max-delay-ms", "10"]);
        assert!(
            Config::try_parse_from(args)
                .unwrap()
                .retry_policy()
                .is_err()
        );
    }

    #[test]
    fn plain_http_is_refused_outside_development_unless_local() {
        let with = |extra: &[&'static str]| {
            let mut args = base();
            args.extend(extra);
            Config::try_parse_from(args).unwrap()
        };
        // The base key is a sequence of hex digits: too weak for production.
        let strong = "ZMRZ8+3uYnNyHVnVirnb0ZrbiLjoLe3uOZqreeRILZ4=";
        let prod = |url: &'static str| {
            let mut c = with(&["--plivo-base-url", url]);
            c.job_encryption_key = JobKey::from_base64(strong).unwrap();
            c
        };
        assert!(prod("https://api.plivo.com").validate().is_ok());
        assert!(prod("http://127.0.0.1:8080").validate().is_ok());
        assert!(prod("http://localhost:8080").validate().is_ok());
        let err = prod("http://fake-plivo:8080").validate().unwrap_err();
        assert!(
            err.contains("PLIVO_BASE_URL") && err.contains("fake-plivo"),
            "{err}"
        );
        let mut callback = prod("https://api.plivo.com");
        callback.reports.sms_status_callback_url = Some("http://example.com/cb".into());
        assert!(
            callback
                .validate()
                .unwrap_err()
                .contains("SMS_STATUS_CALLBACK_URL")
        );
        let mut twilio = prod("https://api.plivo.com");
        twilio.reports.twilio_status_callback_url = Some("http://example.com/cb".into());
        let err = twilio.validate().unwrap_err();
        assert!(err.contains("TWILIO_STATUS_CALLBACK_URL"), "{err}");
        let mut example = prod("https://api.plivo.com");
        example.reports.plivo_auth_token = Some("development-token".to_owned().into());
        let err = example.validate().unwrap_err();
        assert!(err.contains("PLIVO_AUTH_TOKEN"), "{err}");
        let mut dev = prod("http://fake-plivo:8080");
        dev.process.app_env = AppEnv::Development;
        assert!(dev.validate().is_ok());
        let weak = with(&["--plivo-base-url", "https://api.plivo.com"]);
        assert!(weak.validate().unwrap_err().contains("JOB_ENCRYPTION_KEY"));
    }

    #[test]
    fn alphanumeric_sender_ids_are_accepted() {
        assert_eq!(parse_sender("MyBrand").unwrap(), "MyBrand");
        assert!(parse_sender("123456789012").is_err());
    }

    /// Every variable this binary reads is documented in .env.example, and the example's values
    /// are accepted as they stand.
    #[test]
    fn parse_errors_name_the_environment_variable() {
        otp_shared::config::assert_errors_name_the_variable::<Config>();
    }

    #[test]
    fn env_example_documents_every_variable_with_valid_values() {
        otp_shared::config::assert_env_example_matches::<Config>(include_str!(
            "../../.env.example"
        ));
    }
}
