//! otp-api settings: read once from the environment (and `.env`), validated into domain types.
//! `otp-api --help` lists every variable with its default.

use std::{net::IpAddr, time::Duration};

use clap::{Args, Parser};
use ipnet::IpNet;

use otp_shared::{
    config::{AmqpArgs, AppEnv, ProcessArgs, RedisArgs, ReportArgs, SecretParser},
    crypto::JobKey,
    phone::CountryCode,
};

use crate::code;
pub use crate::code::HmacKey;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "otp-api",
    version,
    about = "Issues and verifies SMS one-time passwords.",
    after_help = "Operator subcommands: `otp-api healthcheck` (exit 0 when this host's API is ready) and `otp-api fraud --help` (blocked destination prefixes: list, block, unblock)."
)]
pub struct Config {
    /// TCP port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Port of the admin endpoints: /metrics, /readyz (naming what is down), /healthz, /docs
    /// and /openapi.json. Keep it off the internet; in production the public port serves none
    /// of them but /healthz and a /readyz without details.
    #[arg(long, env = "ADMIN_PORT", default_value_t = 9464)]
    pub admin_port: u16,
    /// Address of the admin port [default: 127.0.0.1 in development, 0.0.0.0 in production]
    #[arg(long, env = "ADMIN_BIND")]
    pub admin_bind: Option<IpAddr>,
    /// Browser origins allowed to call the OTP routes (CORS), comma-separated exact origins
    /// such as https://app.example.com; no wildcard. Unset: no CORS headers at all.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = crate::cors::parse_origin)]
    pub cors_allowed_origins: Vec<String>,

    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Milliseconds to wait for the broker to confirm a publish before answering 503.
    #[arg(long, env = "PUBLISH_CONFIRM_TIMEOUT_MS", default_value_t = 2000)]
    pub publish_confirm_timeout_ms: u64,
    #[command(flatten)]
    pub otp: OtpSettings,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub http: HttpLimits,
    #[command(flatten)]
    pub fraud: crate::fraud::FraudSettings,
    #[command(flatten)]
    pub access: crate::callers::AccessArgs,
    #[command(flatten)]
    pub tokens: crate::verdict::TokenArgs,
    #[command(flatten)]
    pub captcha: crate::config::CaptchaArgs,
    /// EVENTS_WEBHOOK_*: read by the one-process mode (`--embedded`) only; otherwise the
    /// dispatchers deliver the webhooks.
    #[command(flatten)]
    pub webhooks: otp_delivery::webhook::WebhookArgs,

    #[command(flatten)]
    pub reports: ReportArgs,
    /// Accept Plivo reports signed with V2 alone (it signs the URL and nonce, not the body).
    /// Off: such a report gets 403; V3 is always checked when its headers are present.
    #[arg(long, env = "PLIVO_ACCEPT_V2", default_value_t = false, action = clap::ArgAction::Set)]
    pub plivo_accept_v2: bool,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Run the API and a dispatcher in one process, everything in memory and each SMS printed
    /// to the console with its code: for trying the service with neither Redis nor RabbitMQ.
    /// Nothing is persisted; APP_ENV=production refuses it.
    #[arg(long, env = "OTP_EMBEDDED")]
    pub embedded: bool,
    /// Set by the embedded mode itself when APP_ENV is not: a trial on this machine, so it
    /// listens on loopback only and prints SMS to the console only.
    #[arg(long, hide = true)]
    pub embedded_trial: bool,
}

#[derive(Debug, Clone, Args)]
pub struct OtpSettings {
    /// Digits per code (6 to 10).
    #[arg(long, env = "OTP_LENGTH", default_value_t = 6,
          value_parser = clap::value_parser!(u8).range(code::MIN_LENGTH as i64..=code::MAX_LENGTH as i64))]
    pub otp_length: u8,
    /// Seconds a code stays valid (1 to 600).
    #[arg(long, env = "OTP_VALIDITY_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=600))]
    pub otp_validity_seconds: u32,
    /// Wrong guesses allowed per number before its code is void (at least 1).
    #[arg(long, env = "OTP_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub otp_max_attempts: u32,
    /// The SMS text of the default locale (SMS_DEFAULT_LOCALE), over its built-in one; `{code}`
    /// is replaced by the code. Other languages: SMS_TEMPLATES_DIR
    #[arg(long, env = "SMS_TEMPLATE", value_parser = parse_template)]
    pub sms_template: Option<String>,
    /// The language of an SMS when neither the request's `locale` nor the number's country
    /// picks one with a template (a BCP 47 tag)
    #[arg(long, env = "SMS_DEFAULT_LOCALE", default_value = "en")]
    pub sms_default_locale: String,
    /// Without a `locale` in the request, write in the main language of the number's country
    #[arg(long, env = "SMS_LOCALE_BY_COUNTRY", default_value_t = true, action = clap::ArgAction::Set)]
    pub sms_locale_by_country: bool,
    /// A directory of `<locale>.txt` templates (`fr.txt`, `pt-BR.txt`) that override the
    /// built-in ones or add languages
    #[arg(long, env = "SMS_TEMPLATES_DIR")]
    pub sms_templates_dir: Option<std::path::PathBuf>,
    /// Host name for the WebOTP origin-bound last line `@example.com #123456` (Safari, Chrome).
    #[arg(long, env = "SMS_ORIGIN", value_parser = crate::sms_text::parse_origin)]
    pub sms_origin: Option<String>,
    /// Android SMS Retriever app hash (11 characters), added to the text.
    #[arg(long, env = "SMS_ANDROID_APP_HASH", value_parser = crate::sms_text::parse_app_hash)]
    pub sms_android_app_hash: Option<String>,
    /// Most SMS segments a message may take (GSM-7: 160 characters in one, 153 each when
    /// split; UCS-2: 70, then 67); a longer template stops the process.
    #[arg(long, env = "SMS_MAX_SEGMENTS", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(1..=10))]
    pub sms_max_segments: u8,
    /// Base64 key (at least 32 bytes) for the HMAC-SHA256 digests of codes; while rotating,
    /// `id:base64,id:base64` with the new key first.
    #[arg(long, env = "OTP_HMAC_KEY", hide_env_values = true, value_parser = SecretParser(HmacKey::from_base64))]
    pub otp_hmac_key: HmacKey,
    /// Base64 AES-256 key (exactly 32 bytes) sealing send jobs; the dispatcher needs the same.
    /// While rotating, `id:base64,id:base64` with the new key first.
    #[arg(long, env = "JOB_ENCRYPTION_KEY", hide_env_values = true, value_parser = SecretParser(JobKey::from_base64))]
    pub job_encryption_key: JobKey,
    /// Comma-separated ISO 3166 codes (e.g. US,CA,GB). When set, other destinations get 403.
    #[arg(long, env = "ALLOWED_COUNTRIES", value_delimiter = ',')]
    pub allowed_countries: Vec<CountryCode>,
}

impl OtpSettings {
    pub fn validity(&self) -> Duration {
        Duration::from_secs(self.otp_validity_seconds.into())
    }
}

impl Config {
    /// Where the admin endpoints listen (ADMIN_BIND, ADMIN_PORT).
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        let local = self.process.app_env == AppEnv::Development;
        let default = if local {
            IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
        };
        std::net::SocketAddr::new(self.admin_bind.unwrap_or(default), self.admin_port)
    }

    /// What start-up warns about: settings that work but are likely wrong in production.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.process.app_env == AppEnv::Production && self.limits.trusted_proxies.is_empty() {
            warnings.push(
                "TRUSTED_PROXIES is empty: behind a proxy or load balancer, every client \
                 behind your proxy shares one per-IP bucket (set it to the proxies' addresses)"
                    .into(),
            );
        }
        warnings
    }

    /// What production refuses to start with, beyond single bad values: known-bad keys and
    /// tokens, plain-http callback URLs, and no spending ceiling. The error names the variable.
    pub fn check_production(&self) -> Result<(), String> {
        self.check_keys()?;
        self.reports.check_production(self.process.app_env)?;
        self.check_ceiling()
    }

    /// Production needs a spending ceiling (MAX_SENDS_PER_HOUR), if only `unlimited`.
    pub fn check_ceiling(&self) -> Result<(), String> {
        if self.process.app_env == AppEnv::Development {
            return Ok(());
        }
        if self.limits.max_sends_per_hour.is_none() {
            return Err(
                "MAX_SENDS_PER_HOUR is required in production: the most codes sent per \
                        hour across all numbers (a number above 0), or `unlimited`"
                    .into(),
            );
        }
        Ok(())
    }

    /// Refuses known-bad keys outside development: an example value, obviously low entropy, or
    /// one key under both settings. The error names the variable.
    pub fn check_keys(&self) -> Result<(), String> {
        if self.process.app_env == AppEnv::Development {
            return Ok(());
        }
        let mut keys = vec![
            ("OTP_HMAC_KEY", self.otp.otp_hmac_key.key_bytes()),
            (
                "JOB_ENCRYPTION_KEY",
                self.otp.job_encryption_key.key_bytes(),
            ),
        ];
        if let Some(signing) = &self.tokens.token_signing_keys {
            keys.push(("TOKEN_SIGNING_KEYS", signing.seeds()));
        }
        otp_shared::keyring::check_keys(&keys)
    }
}

/// Abuse limits, enforced in Redis so they hold across replicas. 0 disables a limit.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Seconds before the same number may request another code (0 disables).
    #[arg(long, env = "RESEND_COOLDOWN_SECONDS", default_value_t = 30)]
    pub resend_cooldown_seconds: u32,
    /// Codes sent to one number per hour (0 disables).
    #[arg(long, env = "MAX_SENDS_PER_NUMBER_PER_HOUR", default_value_t = 5)]
    pub max_sends_per_number_per_hour: u32,
    /// Code requests from one client IP per minute (0 disables).
    #[arg(long, env = "MAX_REQUESTS_PER_IP_PER_MINUTE", default_value_t = 20)]
    pub max_requests_per_ip_per_minute: u32,
    /// Verify calls for one number per 15 minutes, counted whether or not it has a code
    /// (0 disables).
    #[arg(
        long,
        env = "MAX_VERIFIES_PER_NUMBER_PER_15_MINUTES",
        default_value_t = 10
    )]
    pub max_verifies_per_number_per_15_minutes: u32,
    /// Verify calls from one client (IPv4 address or IPv6 network) per minute (0 disables).
    #[arg(long, env = "MAX_VERIFIES_PER_IP_PER_MINUTE", default_value_t = 60)]
    pub max_verifies_per_ip_per_minute: u32,
    /// Codes sent per hour across all numbers: the spending ceiling, a number above 0 or
    /// `unlimited`. Production refuses to start without it; development defaults to unlimited.
    #[arg(long, env = "MAX_SENDS_PER_HOUR", value_parser = SendCeiling::parse)]
    pub max_sends_per_hour: Option<SendCeiling>,
    /// Codes sent per hour per destination country, e.g. `US=20000,GB=500,*=100`, where `*`
    /// applies to every country not named (empty or 0 disables).
    #[arg(long, env = "MAX_SENDS_PER_COUNTRY_PER_HOUR", default_value = "",
          value_parser = CountryBudgets::parse)]
    pub max_sends_per_country_per_hour: CountryBudgets,
    /// Prefix length an IPv6 client is counted by in the per-IP limits (48 to 128); IPv4
    /// clients count by their address.
    #[arg(long, env = "IPV6_PREFIX_LENGTH", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(48..=128))]
    pub ipv6_prefix_length: u8,
    /// Comma-separated IPs or CIDRs of reverse proxies whose X-Forwarded-For is believed.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_ip_net)]
    pub trusted_proxies: Vec<IpNet>,
}

/// Bounds on slow and idle clients (slowloris), and on connections.
#[derive(Debug, Clone, Args)]
pub struct HttpLimits {
    /// Seconds a client may take to send a request's headers; then the connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_read_timeout_seconds: u64,
    /// Seconds a client may take to send a request's body; then it gets 408.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub body_read_timeout_seconds: u64,
    /// Seconds a keep-alive connection may sit idle between requests.
    #[arg(long, env = "KEEP_ALIVE_TIMEOUT_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keep_alive_timeout_seconds: u64,
    /// Most connections served at once; further clients wait in the accept backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Seconds an answer may take to be written once the client stops reading it; then the
    /// connection is closed.
    #[arg(long, env = "RESPONSE_WRITE_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub response_write_timeout_seconds: u64,
    /// Seconds a connection may live; then it finishes the request in flight and closes.
    #[arg(long, env = "CONNECTION_MAX_AGE_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub connection_max_age_seconds: u64,
    /// Serve HTTP/2 in clear text (h2c, prior knowledge) beside HTTP/1.1. Off: an HTTP/2
    /// preface closes the connection.
    #[arg(long, env = "HTTP2_CLEARTEXT", default_value_t = false, action = clap::ArgAction::Set)]
    pub http2_cleartext: bool,
    /// Concurrent streams per HTTP/2 connection (with HTTP2_CLEARTEXT=true).
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub http2_max_concurrent_streams: u32,
    /// Serve /docs and /openapi.json on the public port (the admin port always does).
    /// Default: on in development, off in production.
    #[arg(long, env = "DOCS_ENABLED", action = clap::ArgAction::Set)]
    pub docs_enabled: Option<bool>,
    /// Which requests get an access log line: all, errors (answers of 400 and above) or off.
    /// Metrics and traces count every request whatever this says. Default: all in
    /// development, errors in production.
    #[arg(long, env = "ACCESS_LOG")]
    pub access_log: Option<AccessLog>,
    /// Seconds between SIGTERM and closing the listener: /readyz answers 503 at once while
    /// requests are still served, so load balancers take the instance out before it stops
    /// accepting. Then in-flight requests get SHUTDOWN_GRACE_SECONDS.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub drain_seconds: u64,
}

impl HttpLimits {
    /// The bounds the HTTP server applies to each connection.
    pub fn connection_limits(&self) -> crate::server::ConnectionLimits {
        let secs = Duration::from_secs;
        crate::server::ConnectionLimits {
            header_read_timeout: secs(self.header_read_timeout_seconds),
            keep_alive_timeout: secs(self.keep_alive_timeout_seconds),
            response_write_timeout: secs(self.response_write_timeout_seconds),
            max_age: secs(self.connection_max_age_seconds),
            // The request in flight may still be sending its body, then gets its answer.
            drain_timeout: secs(
                self.body_read_timeout_seconds + self.response_write_timeout_seconds,
            ),
            max_connections: self.max_connections as usize,
            http2_cleartext: self
                .http2_cleartext
                .then_some(self.http2_max_concurrent_streams),
        }
    }
}

/// MAX_SENDS_PER_HOUR: a ceiling on what all sends together may cost, or none, said out loud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendCeiling {
    Unlimited,
    PerHour(u32),
}

impl SendCeiling {
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("unlimited") {
            return Ok(Self::Unlimited);
        }
        match value.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Self::PerHour(n)),
            _ => Err("must be a number above 0, or `unlimited` for no ceiling".into()),
        }
    }
}

impl Limits {
    /// The global hourly budget as the store applies it (0: none).
    pub fn sends_per_hour(&self) -> u32 {
        match self.max_sends_per_hour {
            Some(SendCeiling::PerHour(n)) => n,
            Some(SendCeiling::Unlimited) | None => 0,
        }
    }
}

/// Hourly send budgets per destination country.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountryBudgets {
    named: Vec<(CountryCode, u32)>,
    /// For every country not named; 0 means none.
    others: u32,
}

impl CountryBudgets {
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut budgets = Self::default();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (country, limit) = entry
                .split_once('=')
                .ok_or_else(|| format!("'{entry}' is not COUNTRY=LIMIT (e.g. US=20000, *=100)"))?;
            let limit: u32 = limit
                .trim()
                .parse()
                .map_err(|_| format!("'{entry}': the limit must be a whole number"))?;
            match country.trim() {
                "*" => budgets.others = limit,
                code => budgets.named.push((code.parse()?, limit)),
            }
        }
        Ok(budgets)
    }

    /// The countries named, with their budgets.
    pub fn named(&self) -> impl Iterator<Item = (CountryCode, u32)> + '_ {
        self.named.iter().copied()
    }

    /// The hourly budget of `country` (`None`: a number of no single country); 0 means none.
    pub fn limit_for(&self, country: Option<CountryCode>) -> u32 {
        country
            .and_then(|c| self.named.iter().find(|(n, _)| *n == c))
            .map_or(self.others, |(_, limit)| *limit)
    }
}

fn parse_template(value: &str) -> Result<String, String> {
    if !value.contains("{code}") {
        return Err("must contain the {code} placeholder".into());
    }
    if value.len() > 480 {
        return Err("must be at most 480 bytes (three SMS segments)".into());
    }
    Ok(value.to_owned())
}

fn parse_ip_net(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{value}' is neither an IP address nor a CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_setting_picks_which_answers_are_logged() {
        let (ok, refused, failed) = (202, 429, 503);
        let all: AccessLog = "ALL".parse().unwrap();
        assert!(all.logs(ok) && all.logs(refused) && all.logs(failed));
        let errors: AccessLog = "errors".parse().unwrap();
        assert!(!errors.logs(ok) && errors.logs(refused) && errors.logs(failed));
        let off: AccessLog = " off ".parse().unwrap();
        assert!(!off.logs(ok) && !off.logs(failed));
        assert!("some".parse::<AccessLog>().is_err());
        let production = otp_shared::config::AppEnv::Production;
        assert_eq!(AccessLog::default_for(production), AccessLog::Errors);
        let development = otp_shared::config::AppEnv::Development;
        assert_eq!(AccessLog::default_for(development), AccessLog::All);
    }
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn bad_values_are_rejected_with_the_variable_named() {
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let base = [
            "otp-api",
            "--otp-hmac-key",
            key,
            "--job-encryption-key",
            key,
        ];
        let ok = Config::try_parse_from(base).expect("valid settings");
        let debug = format!("{ok:?}");
        assert!(
            !debug.contains(key) && !debug.contains("guest:guest"),
            "{debug}"
        );
        for (flag, value) in [
            ("--otp-length", "5"),
            ("--otp-length", "11"),
            ("--otp-validity-seconds", "601"),
            ("--sms-template", "no placeholder"),
            ("--allowed-countries", "US,XX"),
            ("--trusted-proxies", "10.0.0.0/8,nonsense"),
            ("--otp-hmac-key", "c2hvcnQ="),
            ("--ipv6-prefix-length", "32"),
            ("--max-sends-per-country-per-hour", "US=10,ZZ=5"),
            ("--max-sends-per-country-per-hour", "US"),
            ("--max-sends-per-country-per-hour", "US=lots"),
        ] {
            let err = Config::try_parse_from(base.iter().copied().chain([flag, value]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn country_budgets_name_countries_and_a_default() {
        let b = CountryBudgets::parse("US=20000, GB=500,*=100").unwrap();
        assert_eq!(b.limit_for(Some("US".parse().unwrap())), 20000);
        assert_eq!(b.limit_for(Some("GB".parse().unwrap())), 500);
        assert_eq!(b.limit_for(Some("FR".parse().unwrap())), 100);
        assert_eq!(b.limit_for(None), 100);
        assert_eq!(CountryBudgets::parse("").unwrap().limit_for(None), 0);
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

/// ACCESS_LOG: which requests get a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    All,
    /// Answers of 400 and above.
    Errors,
    Off,
}

impl AccessLog {
    /// Without ACCESS_LOG: every request in development, errors in production.
    pub fn default_for(env: otp_shared::config::AppEnv) -> Self {
        match env {
            otp_shared::config::AppEnv::Development => Self::All,
            otp_shared::config::AppEnv::Production => Self::Errors,
        }
    }

    /// Whether an answer with `status` gets a line.
    pub fn logs(self, status: u16) -> bool {
        match self {
            Self::All => true,
            Self::Errors => status >= 400,
            Self::Off => false,
        }
    }
}

impl std::str::FromStr for AccessLog {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(Self::All),
            "errors" => Ok(Self::Errors),
            "off" => Ok(Self::Off),
            _ => Err(format!("'{s}' is not one of all, errors or off")),
        }
    }
}

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
    pub(crate) fn verify_url(self) -> &'static str {
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
    pub captcha_secret: Option<secrecy::SecretString>,
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
            .map(|s| secrecy::ExposeSecret::expose_secret(s).trim())
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

#[cfg(test)]
mod captcha_tests {
    use super::*;
    use otp_shared::config::AppEnv;

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
