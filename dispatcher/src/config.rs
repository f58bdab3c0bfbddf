//! otp-dispatcher settings: read once from the environment (and `.env`), validated at start.
//! `otp-dispatcher --help` lists every variable with its default.

use clap::Parser;

use otp_shared::{
    config::{AmqpArgs, ProcessArgs, RedisArgs, ReportArgs, SecretParser},
    crypto::JobKey,
};

use otp_delivery::settings::DeliveryArgs;

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

    #[command(flatten)]
    pub delivery: DeliveryArgs,

    /// Base64 AES-256 key (32 bytes) that opens send jobs; the same as otp-api's.
    #[arg(long, env = "JOB_ENCRYPTION_KEY", hide_env_values = true, value_parser = SecretParser(JobKey::from_base64))]
    pub job_encryption_key: JobKey,

    /// Jobs in flight at once per dispatcher (also the AMQP prefetch).
    #[arg(long, env = "DISPATCHER_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub dispatcher_concurrency: u16,
    /// Port of /healthz and /readyz.
    #[arg(long, env = "DISPATCHER_HTTP_PORT", default_value_t = 3001)]
    pub dispatcher_http_port: u16,
    #[command(flatten)]
    pub reports: ReportArgs,
    #[command(flatten)]
    pub webhooks: otp_delivery::webhook::WebhookArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
}

impl Config {
    /// Checks what needs more than one setting: outside development, no known-bad key, and
    /// provider URLs over https unless they point at this host. The error names the variable.
    pub fn validate(&self) -> Result<(), String> {
        let env = self.process.app_env;
        self.delivery.providers.validate(&self.reports, env)?;
        if env != otp_shared::config::AppEnv::Development {
            let key = self.job_encryption_key.key_bytes();
            otp_shared::keyring::check_keys(&[("JOB_ENCRYPTION_KEY", key)])?;
        }
        self.webhooks.check(env)?;
        self.reports.check_production(env)
    }
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
        assert!(ok.delivery.retry.policy().is_ok());
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
                .delivery
                .retry
                .policy()
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
        dev.process.app_env = otp_shared::config::AppEnv::Development;
        assert!(dev.validate().is_ok());
        let weak = with(&["--plivo-base-url", "https://api.plivo.com"]);
        assert!(weak.validate().unwrap_err().contains("JOB_ENCRYPTION_KEY"));
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
