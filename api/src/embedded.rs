//! The one-process mode (`--embedded`, OTP_EMBEDDED): the API and the dispatcher's worker in one
//! process, every backend in memory (codes, limits, delivery records and reports, queue, ledger,
//! rate, breaker), and each SMS printed to the console with its code. It is for trying the service on
//! a machine with neither Redis nor RabbitMQ: nothing is persisted, so APP_ENV=production
//! refuses it. The rules are the production ones (the conformance suites keep the in-memory
//! backends in step with Redis).

use std::{ffi::OsString, sync::Arc, time::Duration};

use otp_delivery::{
    console::ConsoleSink, memory_queue::memory_queue, metrics::DeliveryMetrics, sender::SmsSender,
    settings::ProviderArgs, source::serve, worker::Worker,
};
use otp_shared::{config::AppEnv, memory::DeliveryRecords};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    queue::MemoryJobQueue,
    store::{MemoryStore, StorePolicy},
};

/// The development keys of `.env.example`, used when none is set (a test keeps them equal).
pub const EXAMPLE_OTP_HMAC_KEY: &str = "ZGV2LW9ubHktaG1hYy1rZXktbm90LWZvci1wcm9kMzI=";
pub const EXAMPLE_JOB_ENCRYPTION_KEY: &str = "ZGV2LW9ubHktam9iLWtleS1ub3QtZm9yLXByb2QtMzI=";

/// Jobs the in-process dispatcher works on at once, and its send rate.
const CONCURRENCY: usize = 16;
const SENDS_PER_SECOND: u32 = 50;
/// How long jobs in flight at a stop get to finish (nothing survives the process: this only
/// lets a send under way complete).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Whether the command line or the environment asks for the one-process mode.
pub fn requested(args: &[OsString]) -> bool {
    requested_in(args, |var| std::env::var_os(var))
}

fn requested_in(args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> bool {
    args.iter().any(|a| a == "--embedded")
        || env("OTP_EMBEDDED").is_some_and(|v| {
            let v = v.to_string_lossy().to_ascii_lowercase();
            matches!(v.as_str(), "1" | "true" | "yes" | "on")
        })
}

/// The command line for the one-process mode: what neither the command line nor the
/// environment sets is filled in with `APP_ENV=development` and the `.env.example` keys. When
/// APP_ENV itself was unset the run is a trial on this machine (`--embedded-trial`): it binds
/// 127.0.0.1 unless told otherwise, and [`check_trial`] keeps it local. Other modes get `args`
/// back unchanged.
pub fn with_defaults(args: Vec<OsString>) -> Vec<OsString> {
    defaults_from(args, |var| std::env::var_os(var))
}

/// [`with_defaults`] with the environment read through `env`.
fn defaults_from(mut args: Vec<OsString>, env: impl Fn(&str) -> Option<OsString>) -> Vec<OsString> {
    if !requested_in(&args, &env) {
        return args;
    }
    let unset = |args: &[OsString], flag: &str, var: &str| {
        let given = args
            .iter()
            .any(|a| a.to_str().is_some_and(|a| a.starts_with(flag)));
        !given && env(var).is_none()
    };
    if unset(&args, "--app-env", "APP_ENV") {
        args.extend([
            "--app-env".into(),
            "development".into(),
            "--embedded-trial".into(),
        ]);
        if unset(&args, "--bind-address", "BIND_ADDRESS") {
            args.extend(["--bind-address".into(), "127.0.0.1".into()]);
        }
    }
    for (flag, var, value) in [
        ("--otp-hmac-key", "OTP_HMAC_KEY", EXAMPLE_OTP_HMAC_KEY),
        (
            "--job-encryption-key",
            "JOB_ENCRYPTION_KEY",
            EXAMPLE_JOB_ENCRYPTION_KEY,
        ),
    ] {
        if unset(&args, flag, var) {
            args.extend([flag.into(), value.into()]);
        }
    }
    args
}

/// A trial (APP_ENV unset) stays on this machine: loopback only, and SMS to the console only,
/// so `OTP_EMBEDDED=true` on a production host neither faces the network with per-process
/// limits nor sends real SMS. An explicit APP_ENV=development lifts both.
pub fn check_trial(config: &Config) -> anyhow::Result<()> {
    if !config.embedded_trial {
        return Ok(());
    }
    if !config.bind_address.is_loopback() {
        anyhow::bail!(
            "the embedded mode with APP_ENV unset listens on loopback only, not BIND_ADDRESS={}; \
             set APP_ENV=development to listen there",
            config.bind_address
        );
    }
    let providers = [
        "PLIVO_AUTH_ID",
        "PLIVO_AUTH_TOKEN",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
    ];
    if let Some(var) = providers.iter().find(|v| std::env::var_os(v).is_some()) {
        anyhow::bail!(
            "the embedded mode with APP_ENV unset prints SMS to the console only, yet {var} is \
             set; set APP_ENV=development to send through the providers"
        );
    }
    Ok(())
}

/// Where SMS go: to the providers of SMS_PROVIDERS when PLIVO_AUTH_ID or TWILIO_ACCOUNT_SID
/// is set (read from the environment as otp-dispatcher reads them), else to the console.
fn senders(config: &Config, metrics: &DeliveryMetrics) -> anyhow::Result<Vec<Arc<dyn SmsSender>>> {
    let providers = ProviderArgs::from_env()?;
    if !providers.any_account() {
        tracing::warn!(
            "no PLIVO_* or TWILIO_* settings: every SMS, code included, is printed to the console"
        );
        return Ok(vec![Arc::new(ConsoleSink)]);
    }
    // This mode refuses production, so the provider settings are checked as in development.
    providers
        .validate(&config.reports, AppEnv::Development)
        .map_err(anyhow::Error::msg)?;
    tracing::warn!(providers = ?providers.sms_providers, "SMS go to the real providers");
    providers.senders(&config.reports, metrics)
}

/// The one-process mode is never production: it loses everything on exit and prints codes.
pub fn refuse_production(config: &Config) -> anyhow::Result<()> {
    if config.embedded && config.process.app_env == AppEnv::Production {
        anyhow::bail!(
            "OTP_EMBEDDED keeps everything in memory and prints codes to the console: it is for \
             trying the service, and APP_ENV=production refuses it"
        );
    }
    Ok(())
}

/// What the one-process mode runs beside the API.
pub struct Embedded {
    pub store: MemoryStore,
    pub queue: MemoryJobQueue,
    /// The delivery worker's metrics, served on the API's `/metrics`.
    pub metrics: Arc<DeliveryMetrics>,
    /// The worker, consuming the queue until `stop` fires.
    pub task: tokio::task::JoinHandle<()>,
}

/// The in-memory store and queue, with the delivery worker consuming the queue until `stop`
/// fires (then finishing the jobs in flight).
pub fn start(
    config: &Config,
    stop: CancellationToken,
    events: std::sync::Arc<dyn otp_shared::events::Events>,
) -> anyhow::Result<Embedded> {
    refuse_production(config)?;
    check_trial(config)?;
    tracing::warn!(
        "EMBEDDED MODE: nothing is persisted (codes, limits and jobs live in this process only). \
         For trying the service, never for real users."
    );
    let records = DeliveryRecords::default();
    let store = MemoryStore::new(StorePolicy::from_config(config), records.clone());
    let live = store.clone();
    let metrics = Arc::new(DeliveryMetrics::new());
    let mut worker = Worker::in_memory(
        senders(config, &metrics)?,
        config.otp.job_encryption_key.clone(),
        records,
        Arc::new(move |e164, vid| live.is_live(e164, vid)),
        SENDS_PER_SECOND,
        metrics.clone(),
    );
    worker.resend_on_undelivered = config.reports.resend_on_undelivered;
    let worker = worker.with_events(events);
    let (queue, consumer) = memory_queue(CONCURRENCY);
    let task = tokio::spawn(async move {
        serve(consumer, Arc::new(worker), stop, SHUTDOWN_GRACE).await;
    });
    Ok(Embedded {
        store,
        queue: MemoryJobQueue(queue),
        metrics,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keys_are_the_example_ones() {
        let example = include_str!("../../.env.example");
        assert!(example.contains(&format!("OTP_HMAC_KEY={EXAMPLE_OTP_HMAC_KEY}\n")));
        assert!(example.contains(&format!(
            "JOB_ENCRYPTION_KEY={EXAMPLE_JOB_ENCRYPTION_KEY}\n"
        )));
    }

    #[test]
    fn only_the_embedded_mode_gets_defaults_and_given_values_win() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        let no_env = |_: &str| None;
        let plain = args(&["otp-api", "--port", "1"]);
        assert_eq!(defaults_from(plain.clone(), no_env), plain);
        let by_env = defaults_from(plain.clone(), |var| {
            (var == "OTP_EMBEDDED").then(|| OsString::from("true"))
        });
        assert!(by_env.iter().any(|a| a == "--embedded-trial"), "{by_env:?}");
        let given = args(&["otp-api", "--embedded", "--app-env=production"]);
        let filled = defaults_from(given, no_env);
        let app_env = filled
            .iter()
            .filter(|a| a.to_str().unwrap().starts_with("--app-env"))
            .count();
        assert_eq!(app_env, 1, "{filled:?}");
    }
}
