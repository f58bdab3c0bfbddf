//! Configuration pieces both binaries read the same way.

use std::{fmt, str::FromStr, time::Duration};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};

use crate::{
    amqp::{
        DEFAULT_DEAD_LETTER_MAX_MESSAGES, DEFAULT_DEAD_LETTER_TTL_HOURS, DEFAULT_QUEUE_REPLICAS,
        Topology,
    },
    redis_conn::RedisConn,
    urls::AmqpUrl,
};

/// Where the process runs. `production` (the default) refuses known-bad keys and plain-http
/// provider URLs to other hosts; `development` allows them, for local stacks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Production,
    Development,
}

impl FromStr for AppEnv {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "production" => Ok(Self::Production),
            "development" => Ok(Self::Development),
            _ => Err(format!(
                "'{s}' is not an environment (expected production or development)"
            )),
        }
    }
}

/// Log output: JSON lines for machines (default) or human-readable text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err(format!(
                "'{s}' is not a log format (expected json or pretty)"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Pretty => "pretty",
        })
    }
}

/// What every process of the service reads alike: how strict to be, how to log, and how long
/// work in flight gets at a stop. Each binary flattens it into its config.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessArgs {
    /// production (default): known-bad keys, example provider tokens and plain-http URLs to
    /// other hosts stop the process; development: they are allowed.
    #[arg(long, env = "APP_ENV", default_value = "production")]
    pub app_env: AppEnv,
    /// Log output format: json or pretty. Verbosity comes from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
    /// Seconds that work in flight (the API's requests, a dispatcher's sends) gets to finish
    /// after SIGINT/SIGTERM; a dispatcher leaves unfinished jobs for redelivery.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// Threads that run the service. 1: everything on one thread, the least CPU per request
    /// (BENCHMARKS.md); run more processes (replicas) to use more cores. More: a multi-threaded
    /// runtime with that many workers, for one process on several cores.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
}

impl ProcessArgs {
    /// Runs a binary's `main` on the runtime WORKER_THREADS asks for.
    pub fn block_on(
        self,
        main: impl std::future::Future<Output = std::process::ExitCode>,
    ) -> std::process::ExitCode {
        match self.runtime() {
            Ok(runtime) => runtime.block_on(main),
            Err(e) => {
                eprintln!("Error: starting the runtime: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    }

    /// The Tokio runtime the process runs on: a current-thread runtime for one worker thread
    /// (no hand-offs between threads), else a multi-threaded one.
    fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.worker_threads {
            0 | 1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(n.into());
                builder
            }
        };
        builder.enable_all().build()
    }

    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_grace_seconds)
    }
}

/// The runtime of the operator tools (`dlq`, `fraud`, `config check`, `healthcheck`): one
/// thread.
pub fn tool_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts")
}

/// Delivery reports, which both binaries read: the dispatcher gives the providers the callback
/// URLs (and signs in with the tokens); the API checks each report's signature with the same
/// token over the same URL (exactly as passed: behind a proxy the API sees another one). The
/// report endpoint of a provider answers 404 unless its token and URL are both set.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Plivo auth token: the dispatcher's credential and the key of Plivo's report signatures;
    /// required when SMS_PROVIDERS lists plivo.
    #[arg(long, env = "PLIVO_AUTH_TOKEN", hide_env_values = true)]
    pub plivo_auth_token: Option<secrecy::SecretString>,
    /// The URL Plivo posts delivery reports to (passed as `url`): the API's
    /// `POST /api/otp/callbacks/plivo` as the outside world reaches it.
    #[arg(long, env = "SMS_STATUS_CALLBACK_URL", value_parser = parse_callback_url)]
    pub sms_status_callback_url: Option<String>,
    /// Twilio auth token: the dispatcher's credential and the key of Twilio's report
    /// signatures; required when SMS_PROVIDERS lists twilio.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<secrecy::SecretString>,
    /// The URL Twilio posts delivery reports to (passed as `StatusCallback`): the API's
    /// `POST /api/otp/callbacks/twilio` as the outside world reaches it.
    #[arg(long, env = "TWILIO_STATUS_CALLBACK_URL", value_parser = parse_callback_url)]
    pub twilio_status_callback_url: Option<String>,
    /// Send once more (through the next provider) when a report says undelivered or failed and
    /// the code is still valid, at most once per verification; the dispatcher keeps each sent
    /// job, still sealed, until its code expires, for that.
    #[arg(long, env = "RESEND_ON_UNDELIVERED", default_value_t = true, action = clap::ArgAction::Set)]
    pub resend_on_undelivered: bool,
}

impl ReportArgs {
    /// What production refuses in these settings: empty or example tokens, and callback URLs
    /// over plain http to another host. Development accepts both. The error names the variable.
    pub fn check_production(&self, env: AppEnv) -> Result<(), String> {
        if env == AppEnv::Development {
            return Ok(());
        }
        crate::keyring::check_tokens(&[
            ("PLIVO_AUTH_TOKEN", self.plivo_auth_token.as_ref()),
            ("TWILIO_AUTH_TOKEN", self.twilio_auth_token.as_ref()),
        ])?;
        crate::urls::check_secure_urls(&[
            (
                "SMS_STATUS_CALLBACK_URL",
                self.sms_status_callback_url.as_deref(),
            ),
            (
                "TWILIO_STATUS_CALLBACK_URL",
                self.twilio_status_callback_url.as_deref(),
            ),
        ])
    }
}

/// An absolute http(s) URL with a host, kept exactly as given (signatures cover its text).
fn parse_callback_url(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value.trim()).map_err(|_| "must be an absolute URL".to_owned())?;
    match url.scheme() {
        "https" | "http" if url.host_str().is_some() => Ok(value.trim().to_owned()),
        _ => Err("must be an http(s) URL with a host".into()),
    }
}

/// Where Redis is: REDIS_URL, or the Node tutorial's REDIS_HOST / REDIS_PORT / REDIS_PASSWORD /
/// REDIS_DB when REDIS_URL is unset.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisArgs {
    /// Redis URL: redis://, or rediss:// for TLS (verified against the platform's roots, or
    /// REDIS_TLS_CA_FILE). When unset, REDIS_HOST/REDIS_PORT/REDIS_PASSWORD/REDIS_DB are used
    /// (default redis://127.0.0.1:6379/0). With REDIS_CLUSTER, one or more of the cluster's
    /// nodes, separated by commas.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = SecretParser(parse_redis_url))]
    pub redis_url: Option<SecretString>,
    /// PEM file of the CA that signed a rediss:// server's certificate, for private CAs; unset,
    /// the platform's trust store is used.
    #[arg(long, env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<std::path::PathBuf>,
    /// Legacy: Redis host, used only when REDIS_URL is unset.
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Legacy: Redis port, used only when REDIS_URL is unset.
    #[arg(long, env = "REDIS_PORT")]
    pub redis_port: Option<u16>,
    /// Legacy: Redis password, used only when REDIS_URL is unset.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<SecretString>,
    /// Legacy: Redis database number, used only when REDIS_URL is unset.
    #[arg(long, env = "REDIS_DB")]
    pub redis_db: Option<u32>,
    /// Redis is a Redis Cluster: REDIS_URL names seed nodes, and the cluster's slot map is
    /// followed (through failovers too).
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,
    /// Prefix of every Redis key the service writes (api and dispatcher must agree). Without
    /// braces: the keys' hash tags come after it.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "otp:", value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,
    /// Milliseconds a Redis command may take before it counts as failed.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
}

impl RedisArgs {
    /// The connection URL. It may hold a password, so it stays secret.
    pub fn url(&self) -> SecretString {
        if let Some(url) = &self.redis_url {
            return url.clone();
        }
        let host = self.redis_host.as_deref().unwrap_or("127.0.0.1");
        let port = self.redis_port.unwrap_or(6379);
        let db = self.redis_db.unwrap_or(0);
        let auth = match &self.redis_password {
            Some(p) if !p.expose_secret().is_empty() => {
                format!(":{}@", percent_encode(p.expose_secret()))
            }
            _ => String::new(),
        };
        format!("redis://{auth}{host}:{port}/{db}").into()
    }

    /// The connection: to one server, or to Redis Cluster with REDIS_CLUSTER; either reconnects
    /// by itself and connects lazily ([`crate::redis_conn`]).
    pub fn connect(&self) -> anyhow::Result<RedisConn> {
        let timeout = Duration::from_millis(self.redis_timeout_ms);
        let url = self.url();
        let nodes: Vec<&str> = url.expose_secret().split(',').map(str::trim).collect();
        let certificates = self.certificates()?;
        if self.redis_cluster {
            let nodes = nodes
                .iter()
                .map(|node| redis::IntoConnectionInfo::into_connection_info(*node))
                .collect::<redis::RedisResult<Vec<_>>>()
                .map_err(|_| anyhow::anyhow!("REDIS_URL is not a list of valid Redis URLs"))?;
            return crate::redis_conn::cluster(nodes, certificates, timeout)
                .map_err(|e| anyhow::anyhow!("REDIS_URL: cannot set up Redis Cluster ({e})"));
        }
        let [node] = nodes.as_slice() else {
            anyhow::bail!(
                "REDIS_URL lists several nodes; set REDIS_CLUSTER=true for Redis Cluster"
            );
        };
        let client = match certificates {
            None => redis::Client::open(*node)
                .map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid Redis URL"))?,
            Some(certificates) => {
                redis::Client::build_with_tls(*node, certificates).map_err(|e| {
                    anyhow::anyhow!("REDIS_TLS_CA_FILE is not a usable PEM CA certificate: {e}")
                })?
            }
        };
        redis_manager(&client, timeout)
    }

    /// REDIS_TLS_CA_FILE as a trust root, when set.
    fn certificates(&self) -> anyhow::Result<Option<redis::TlsCertificates>> {
        let Some(ca_file) = &self.redis_tls_ca_file else {
            return Ok(None);
        };
        let root_cert = std::fs::read(ca_file)
            .with_context(|| format!("REDIS_TLS_CA_FILE: reading {}", ca_file.display()))?;
        Ok(Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        }))
    }

    pub fn keys(&self) -> crate::keys::Keys {
        crate::keys::Keys::new(self.redis_key_prefix.clone())
    }
}

/// Where RabbitMQ is and the send-job topology (api and dispatcher must agree on all of it: the
/// broker refuses a queue redeclared with other arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL: amqp://, or amqps:// for TLS (verified against the platform's roots)
    /// (default amqp://guest:guest@127.0.0.1:5672/%2f). For a cluster, the nodes' URLs separated
    /// by commas: the first that answers is used, the others when it is lost.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true,
        value_parser = SecretParser(AmqpUrl::parse)
    )]
    pub amqp_url: AmqpUrl,
    /// Queue that carries send jobs; its dead letters go to `<SMS_QUEUE>.dead`.
    #[arg(long, env = "SMS_QUEUE", default_value = "otp.sms")]
    pub sms_queue: String,
    /// Hours a dead letter is kept before the broker drops it.
    #[arg(long, env = "DEAD_LETTER_TTL_HOURS", default_value_t = DEFAULT_DEAD_LETTER_TTL_HOURS,
          value_parser = clap::value_parser!(u32).range(1..=8760))]
    pub dead_letter_ttl_hours: u32,
    /// Most dead letters kept; beyond it the oldest are dropped.
    #[arg(long, env = "DEAD_LETTER_MAX_MESSAGES", default_value_t = DEFAULT_DEAD_LETTER_MAX_MESSAGES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub dead_letter_max_messages: u32,
    /// Nodes that hold a copy of each queue, set when the queue is created (capped by RabbitMQ at
    /// the cluster's size). A publish is confirmed once a majority of them have it.
    #[arg(long, env = "QUEUE_REPLICAS", default_value_t = DEFAULT_QUEUE_REPLICAS,
          value_parser = clap::value_parser!(u16).range(1..=9))]
    pub queue_replicas: u16,
}

impl AmqpArgs {
    /// Settings for a queue with the default dead-letter bounds.
    pub fn new(amqp_url: AmqpUrl, sms_queue: &str) -> Self {
        Self {
            amqp_url,
            sms_queue: sms_queue.to_owned(),
            dead_letter_ttl_hours: DEFAULT_DEAD_LETTER_TTL_HOURS,
            dead_letter_max_messages: DEFAULT_DEAD_LETTER_MAX_MESSAGES,
            queue_replicas: DEFAULT_QUEUE_REPLICAS,
        }
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.sms_queue)
            .with_dead_letter_bounds(self.dead_letter_ttl_hours, self.dead_letter_max_messages)
            .with_replicas(self.queue_replicas)
    }
}

fn parse_redis_url(value: &str) -> Result<SecretString, String> {
    for node in value.split(',') {
        crate::urls::check_redis_url(node)?;
    }
    Ok(value.trim().to_owned().into())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A single server's connection that reconnects by itself ([`crate::redis_conn::single`]).
pub fn redis_manager(client: &redis::Client, timeout: Duration) -> anyhow::Result<RedisConn> {
    crate::redis_conn::single(client, timeout).context("creating the Redis connection manager")
}

fn parse_key_prefix(value: &str) -> Result<String, String> {
    if value.contains(['{', '}']) {
        return Err("must not contain braces: the keys' hash tags follow it".into());
    }
    Ok(value.to_owned())
}

/// A clap value parser for secrets. clap's own errors quote the rejected value; this one names
/// the setting and says what is wrong, never what was given.
#[derive(Clone)]
pub struct SecretParser<T>(pub fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for SecretParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg
            .map(ToString::to_string)
            .unwrap_or_else(|| "a secret".into());
        let fail = |msg: String| {
            let message = format!("invalid value for '{name}': {msg}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| fail("must be UTF-8".into()))?;
        (self.0)(text).map_err(fail)
    }
}

/// Test helper: every setting of `C` that takes a value shows its environment variable as its
/// value name, so a parse error (`invalid value 'x' for '--otp-length <OTP_LENGTH>'`) names the
/// variable an operator set, not only the flag.
#[doc(hidden)]
pub fn assert_errors_name_the_variable<C: clap::Parser>() {
    for arg in C::command().get_arguments() {
        let Some(var) = arg.get_env().and_then(|v| v.to_str()) else {
            continue;
        };
        if !arg.get_action().takes_values() {
            continue;
        }
        let names: Vec<&str> = arg
            .get_value_names()
            .map(|names| names.iter().map(|n| n.as_str()).collect())
            .unwrap_or_default();
        let shown = if names.is_empty() {
            arg.get_id().as_str().to_uppercase()
        } else {
            names.join(" ")
        };
        assert_eq!(shown, var, "the value name of --{:?}", arg.get_long());
    }
}

/// Test helper: every variable `C` reads is documented in `.env.example` (given as `text`), and
/// the example's uncommented values are accepted as they stand. Panics with what is wrong.
/// Hidden settings (deprecated names) are left out: the example shows the current names.
#[doc(hidden)]
pub fn assert_env_example_matches<C: clap::Parser>(text: &str) {
    let entries = env_example_entries(text);
    let command = C::command();
    let mut args = vec![command.get_name().to_owned()];
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(var) = arg.get_env().and_then(|v| v.to_str()) else {
            continue;
        };
        let Some((_, value, commented)) = entries.iter().find(|(k, _, _)| k == var) else {
            panic!("{var} is not in .env.example");
        };
        if !commented {
            let flag = arg.get_long().expect("every setting has a flag");
            args.push(format!("--{flag}={value}"));
        }
    }
    if let Err(e) = C::try_parse_from(&args) {
        panic!(".env.example values are rejected: {e}");
    }
}

/// `.env.example` lines as (variable, value, commented out).
fn env_example_entries(text: &str) -> Vec<(String, String, bool)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (commented, body) = match line.strip_prefix('#') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let (key, value) = body.split_once('=')?;
            let is_var = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            is_var.then(|| {
                (
                    key.to_owned(),
                    value.trim_matches('"').to_owned(),
                    commented,
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_redis_settings_build_a_url() {
        let loc = RedisArgs {
            redis_host: Some("cache".into()),
            redis_port: Some(6380),
            redis_password: Some("p@ss word".to_owned().into()),
            redis_db: Some(2),
            ..Default::default()
        };
        assert_eq!(
            loc.url().expose_secret(),
            "redis://:p%40ss%20word@cache:6380/2"
        );
        let explicit = RedisArgs {
            redis_url: Some("redis://x:1/0".to_owned().into()),
            ..loc
        };
        assert_eq!(explicit.url().expose_secret(), "redis://x:1/0");
        assert_eq!(
            RedisArgs::default().url().expose_secret(),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("JSON".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
