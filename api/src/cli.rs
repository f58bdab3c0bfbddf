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
            let (index, manual) = (keys.fraud_blocked(), keys.fraud_manual());
            let now = unix_ms();
            let (_, mut found, manual_ends): (i64, Vec<String>, Vec<(String, u64)>) = redis::pipe()
                .atomic()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(now)
                .cmd("ZRANGE")
                .arg(&index)
                .arg(0)
                .arg(-1)
                .cmd("HGETALL")
                .arg(&manual)
                .query_async(&mut redis)
                .await?;
            found.sort();
            let mut listed = 0;
            for prefix in &found {
                if let Some((_, until)) = manual_ends.iter().find(|(p, _)| p == prefix) {
                    if *until > now {
                        listed += 1;
                        let left = (until - now) / 1000;
                        println!("{prefix}  manual  expires_in={left}s");
                    }
                    continue;
                }
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
                    "{prefix}  rule={}  country={}  sends={}  verified={}  conversion={}  \
                     young={}  clients={}  expires_in={ttl}s",
                    get("rule"),
                    get("country"),
                    get("sends"),
                    get("verified"),
                    conversion,
                    get("young"),
                    get("clients"),
                );
            }
            // Manual blocks past their end are tidied away here (the guard ignores them).
            let stale: Vec<&String> = manual_ends
                .iter()
                .filter(|(_, until)| *until <= now)
                .map(|(p, _)| p)
                .collect();
            if !stale.is_empty() {
                let _: i64 = redis::cmd("HDEL")
                    .arg(&manual)
                    .arg(stale)
                    .query_async(&mut redis)
                    .await?;
            }
            eprintln!("{listed} blocked prefix(es)");
        }
        FraudAction::Unblock { prefix } => {
            // The prefix's counts go too: else its next request would block it again at once.
            let (auto, manual, _, _): (i64, i64, i64, i64) = redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(keys.fraud_block(&prefix))
                .cmd("HDEL")
                .arg(keys.fraud_manual())
                .arg(&prefix)
                .cmd("DEL")
                .arg(keys.fraud_sends(&prefix))
                .arg(keys.fraud_verified(&prefix))
                .arg(keys.fraud_clients(&prefix))
                .arg(keys.fraud_trickle(&prefix))
                .cmd("ZREM")
                .arg(keys.fraud_blocked())
                .arg(&prefix)
                .query_async(&mut redis)
                .await?;
            anyhow::ensure!(auto + manual > 0, "{prefix} is not blocked");
            tracing::warn!(event = "fraud_unblock", %prefix, "fraud guard block lifted by an operator");
            println!("{prefix} unblocked");
        }
        FraudAction::Block { prefix, hours } => {
            // Every number under the prefix, in every FRAUD_GUARD mode (the guard looks up each
            // prefix of a number in this one hash).
            let until = unix_ms() + u64::from(hours) * 3_600_000;
            let _: () = redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(keys.fraud_manual())
                .arg(&prefix)
                .arg(until)
                .ignore()
                .cmd("ZADD")
                .arg(keys.fraud_blocked())
                .arg(until)
                .arg(&prefix)
                .ignore()
                .query_async(&mut redis)
                .await?;
            tracing::warn!(event = "fraud_block", %prefix, hours, manual = true, "fraud guard block set by an operator");
            println!("{prefix} blocked for {hours} h (every number under it, in every mode)");
        }
    }
    Ok(())
}

fn unix_ms() -> u64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}
