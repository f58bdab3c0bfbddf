//! The operator subcommands of the API binary: `healthcheck`, `config check`, and
//! `fraud list | block | unblock`. Running without a subcommand starts the API ([`crate::config`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use otp_shared::{
    config::RedisArgs,
    settings::{self, ConfigAction},
};

use crate::{
    config::Config,
    fraud::parse_prefix,
    store::{BlockedPrefix, FraudStore, RedisStore, StorePolicy},
};

/// The subcommand names; anything else on the command line runs the API.
pub const TOOLS: [&str; 3] = ["healthcheck", "fraud", "config"];

#[derive(Debug, Parser)]
#[command(name = "otp-api", version, about = "otp-api operator tools.")]
pub enum Tool {
    /// Ask this host's API for /readyz on its admin port (for container healthchecks): exit 0
    /// when ready.
    Healthcheck {
        /// The API's admin port.
        #[arg(long, env = "ADMIN_PORT", default_value_t = 9464)]
        port: u16,
    },
    /// The settings, as the API would run with them (`config check`).
    Config {
        #[command(subcommand)]
        action: otp_shared::settings::ConfigAction,
    },
    /// The fraud guard's blocked destination prefixes.
    Fraud {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(subcommand)]
        action: FraudAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum FraudAction {
    /// Blocked prefixes, with their counts, conversion and remaining time.
    List,
    /// Lift a block at once.
    Unblock {
        #[arg(value_parser = parse_prefix)]
        prefix: String,
    },
    /// Block a prefix by hand: `+` and 1 to 15 digits; every number under it, in every
    /// FRAUD_GUARD mode (off included).
    Block {
        #[arg(value_parser = parse_prefix)]
        prefix: String,
        /// How long, in hours.
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=720))]
        hours: u32,
    },
}

/// The tool named on the command line, if the first argument names one.
pub fn requested() -> Option<Tool> {
    let first = std::env::args_os().nth(1)?;
    TOOLS
        .iter()
        .any(|t| first == *t)
        .then(otp_shared::settings::parse_tool::<Tool>)
}

pub async fn run(tool: Tool) -> ExitCode {
    match tool {
        Tool::Healthcheck { port } => {
            tokio::task::spawn_blocking(move || otp_shared::probe::healthcheck(port))
                .await
                .unwrap_or(ExitCode::FAILURE)
        }
        Tool::Config {
            action: ConfigAction::Check,
        } => {
            // With the one-process mode's defaults, as when it runs.
            let args = crate::embedded::with_defaults(vec!["otp-api".into()]);
            let env = |name: &str| std::env::var_os(name);
            let report = settings::check::<Config>(args, &env, crate::startup::problems);
            settings::print(&report)
        }
        Tool::Fraud { redis, action } => match fraud(redis, action).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn fraud(args: RedisArgs, action: FraudAction) -> anyhow::Result<()> {
    let store = RedisStore::new(args.connect()?, args.keys(), StorePolicy::operator_tools());
    match action {
        FraudAction::List => {
            let blocks = store.blocks().await?;
            for block in &blocks {
                println!("{}", listing(block));
            }
            eprintln!("{} blocked prefix(es)", blocks.len());
        }
        FraudAction::Unblock { prefix } => {
            anyhow::ensure!(store.unblock(&prefix).await?, "{prefix} is not blocked");
            tracing::warn!(event = "fraud_unblock", %prefix, "fraud guard block lifted by an operator");
            println!("{prefix} unblocked");
        }
        FraudAction::Block { prefix, hours } => {
            let lasting = std::time::Duration::from_secs(u64::from(hours) * 3600);
            store.block(&prefix, lasting).await?;
            tracing::warn!(event = "fraud_block", %prefix, hours, manual = true, "fraud guard block set by an operator");
            println!("{prefix} blocked for {hours} h (every number under it, in every mode)");
        }
    }
    Ok(())
}

/// One line of `fraud list`.
fn listing(block: &BlockedPrefix) -> String {
    let (prefix, left) = (&block.prefix, block.expires_in_seconds);
    let Some(guard) = &block.guard else {
        return format!("{prefix}  manual  expires_in={left}s");
    };
    let conversion = match guard.sends {
        0 => "-".to_owned(),
        sends => format!("{:.2}", guard.verified as f64 / sends as f64),
    };
    format!(
        "{prefix}  rule={}  country={}  sends={}  verified={}  conversion={conversion}  \
         young={}  clients={}  expires_in={left}s",
        guard.rule.name(),
        guard.country,
        guard.sends,
        guard.verified,
        guard.young,
        guard.clients,
    )
}
