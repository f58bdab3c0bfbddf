//! The operator subcommands of the API binary: `healthcheck`, and `fraud list | block |
//! unblock`. Running without a subcommand starts the API ([`crate::config`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use otp_shared::config::RedisArgs;

use crate::fraud::parse_prefix;

/// The subcommand names; anything else on the command line runs the API.
pub const TOOLS: [&str; 2] = ["healthcheck", "fraud"];

#[derive(Debug, Parser)]
#[command(name = "otp-api", version, about = "otp-api operator tools.")]
pub enum Tool {
    /// Ask this host's API for /readyz (for container healthchecks): exit 0 when ready.
    Healthcheck {
        /// Port of the API.
        #[arg(long, env = "PORT", default_value_t = 3000)]
        port: u16,
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
    /// Block a prefix by hand.
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
    TOOLS.iter().any(|t| first == *t).then(Tool::parse)
}

pub async fn run(tool: Tool) -> ExitCode {
    match tool {
        Tool::Healthcheck { port } => {
            tokio::task::spawn_blocking(move || otp_shared::probe::healthcheck(port))
                .await
                .unwrap_or(ExitCode::FAILURE)
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
    let keys = args.keys();
    let mut redis = args.connect()?;
    match action {
        FraudAction::List => {
            // The index of blocks (one sorted set, by when each ends), not a scan: a scan would
            // have to visit every node of a cluster.
            let index = keys.fraud_blocked();
            let (_, mut found): (i64, Vec<String>) = redis::pipe()
                .atomic()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(unix_ms())
                .cmd("ZRANGE")
                .arg(&index)
                .arg(0)
                .arg(-1)
                .query_async(&mut redis)
                .await?;
            found.sort();
            let mut listed = 0;
            for prefix in &found {
                let key = keys.fraud_block(prefix);
                let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await?;
                if fields.is_empty() {
                    continue; // unblocked meanwhile
                }
                listed += 1;
                let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await?;
                let get = |f: &str| fields.get(f).cloned().unwrap_or_else(|| "-".into());
                let conversion = match (get("sends").parse::<f64>(), get("verified").parse::<f64>())
                {
                    (Ok(s), Ok(v)) if s > 0.0 => format!("{:.2}", v / s),
                    _ => "-".into(),
                };
                println!(
                    "{prefix}  country={}  sends={}  verified={}  conversion={}  expires_in={}s{}",
                    get("country"),
                    get("sends"),
                    get("verified"),
                    conversion,
                    ttl,
                    if fields.contains_key("manual") {
                        "  manual"
                    } else {
                        ""
                    }
                );
            }
            eprintln!("{listed} blocked prefix(es)");
        }
        FraudAction::Unblock { prefix } => {
            // The prefix's counts go too: else its next request would block it again at once.
            let (removed, _, _): (i64, i64, i64) = redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(keys.fraud_block(&prefix))
                .cmd("DEL")
                .arg(keys.fraud_sends(&prefix))
                .arg(keys.fraud_verified(&prefix))
                .cmd("ZREM")
                .arg(keys.fraud_blocked())
                .arg(&prefix)
                .query_async(&mut redis)
                .await?;
            anyhow::ensure!(removed == 1, "{prefix} is not blocked");
            tracing::warn!(event = "fraud_unblock", %prefix, "fraud guard block lifted by an operator");
            println!("{prefix} unblocked");
        }
        FraudAction::Block { prefix, hours } => {
            let key = keys.fraud_block(&prefix);
            let _: () = redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(&key)
                .arg("prefix")
                .arg(&prefix)
                .arg("manual")
                .arg(1)
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(u64::from(hours) * 3600)
                .ignore()
                .cmd("ZADD")
                .arg(keys.fraud_blocked())
                .arg(unix_ms() + u64::from(hours) * 3_600_000)
                .arg(&prefix)
                .ignore()
                .query_async(&mut redis)
                .await?;
            tracing::warn!(event = "fraud_block", %prefix, hours, manual = true, "fraud guard block set by an operator");
            println!("{prefix} blocked for {hours} h");
        }
    }
    Ok(())
}

fn unix_ms() -> u64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}
