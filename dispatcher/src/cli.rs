//! The operator subcommands of the dispatcher binary: `dlq list | replay | purge`,
//! `config check` and `healthcheck`. Running without a subcommand starts the dispatcher ([`crate::config`]).

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use time::OffsetDateTime;
use uuid::Uuid;

use otp_shared::{
    amqp::open_confirmed_channel,
    config::{AmqpArgs, RedisArgs},
};

use otp_delivery::source::DeadLetters;

use crate::dlq::{DeadLetterQueue, Taken, parse_age, reopen_failed};

/// The subcommand names; anything else on the command line runs the dispatcher.
pub const TOOLS: [&str; 3] = ["dlq", "healthcheck", "config"];

#[derive(Debug, Parser)]
#[command(
    name = "otp-dispatcher",
    version,
    about = "otp-dispatcher operator tools."
)]
pub enum Tool {
    /// Inspect, replay or purge dead-lettered send jobs (never shows a number or a code).
    Dlq(Box<DlqArgs>),
    /// The settings, as the dispatcher would run with them (`config check`).
    Config {
        #[command(subcommand)]
        action: otp_shared::settings::ConfigAction,
    },
    /// Ask this host's dispatcher for /readyz (for container healthchecks): exit 0 when ready.
    Healthcheck {
        /// Port of the dispatcher's /readyz.
        #[arg(long, env = "DISPATCHER_HTTP_PORT", default_value_t = 3001)]
        dispatcher_http_port: u16,
    },
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(subcommand)]
    pub action: DlqAction,
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// One line per dead letter: job id, verification id, when, attempts, reason.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Publish dead letters back to the send queue (confirmed), then remove them. A job whose
    /// code has expired is not replayed: it is reported and left (or removed, --drop-expired).
    Replay {
        /// The job to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        job_id: Option<Uuid>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
        /// Say what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove dead letters whose code has expired instead of leaving them.
        #[arg(long)]
        drop_expired: bool,
    },
    /// Remove dead letters older than a duration (e.g. 90s, 15m, 2h, 7d).
    Purge {
        #[arg(long, value_parser = parse_age)]
        older_than: Duration,
        /// Say what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
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
        Tool::Healthcheck {
            dispatcher_http_port,
        } => tokio::task::spawn_blocking(move || {
            otp_shared::probe::healthcheck(dispatcher_http_port)
        })
        .await
        .unwrap_or(ExitCode::FAILURE),
        Tool::Config {
            action: otp_shared::settings::ConfigAction::Check,
        } => {
            let env = |name: &str| std::env::var_os(name);
            let args = vec!["otp-dispatcher".into()];
            let report = otp_shared::settings::check::<crate::config::Config>(args, &env, |c| {
                (c.validate().err().into_iter().collect(), Vec::new())
            });
            otp_shared::settings::print(&report)
        }
        Tool::Dlq(args) => match dlq(args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn dlq(args: Box<DlqArgs>) -> anyhow::Result<ExitCode> {
    let topology = args.amqp.topology();
    let (connection, channel) =
        open_confirmed_channel(&args.amqp.amqp_url, "otp-dispatcher-dlq", &topology).await?;
    let queue = DeadLetterQueue::new(channel.clone(), topology);
    let result = match &args.action {
        DlqAction::List { limit, json } => list(&queue, *limit, *json).await,
        DlqAction::Replay {
            job_id,
            dry_run,
            drop_expired,
            ..
        } => replay(&args, &queue, *job_id, *dry_run, *drop_expired).await,
        DlqAction::Purge {
            older_than,
            dry_run,
        } => purge(&args, &queue, *older_than, *dry_run).await,
    };
    // Whatever was not settled goes back to the dead-letter queue when the channel closes.
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    result
}

async fn list(queue: &impl DeadLetters, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let letters = queue.list(limit).await?;
    for letter in &letters {
        if json {
            println!("{}", serde_json::to_string(letter)?);
        } else {
            println!("{}", letter.line());
        }
    }
    eprintln!("{} dead letter(s) shown", letters.len());
    Ok(ExitCode::SUCCESS)
}

/// Publishes the selected dead letters back (all, or `job_id`), confirmed, after letting the
/// ledger try a failed job again; expired ones are left, or removed with `drop_expired`.
async fn replay(
    args: &DlqArgs,
    queue: &DeadLetterQueue,
    job_id: Option<Uuid>,
    dry_run: bool,
    drop_expired: bool,
) -> anyhow::Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    let taken = queue
        .take(args.amqp.dead_letter_max_messages as usize)
        .await?;
    let mut redis = args.redis.connect()?;
    let keys = args.redis.keys();
    let selected: Vec<&Taken> = taken
        .iter()
        .filter(|t| job_id.is_none() || t.letter.job_id == job_id)
        .collect();
    if let (Some(id), true) = (job_id, selected.is_empty()) {
        eprintln!("job {id} is not in the dead-letter queue");
        return Ok(ExitCode::FAILURE);
    }
    let (mut replayed, mut expired, mut unreadable) = (0, 0, 0);
    for t in selected {
        let (Some(id), Some(vid)) = (t.letter.job_id, t.letter.verification_id) else {
            unreadable += 1;
            println!("-  not a readable send job; left in place");
            continue;
        };
        if t.letter.expires_at.is_none_or(|e| e <= now) {
            expired += 1;
            let what = if drop_expired {
                "removed"
            } else {
                "left in place"
            };
            println!("{id}  code expired; not replayed; {what}");
            if drop_expired && !dry_run {
                queue.remove(t).await?;
            }
            continue;
        }
        replayed += 1;
        if dry_run {
            println!("{id}  would be replayed");
            continue;
        }
        reopen_failed(&mut redis, &keys, vid, id)
            .await
            .context("resetting the job's failed outcome in Redis")?;
        queue.replay(t).await?;
        println!("{id}  replayed");
    }
    let verb = if dry_run { "would replay" } else { "replayed" };
    eprintln!("{verb} {replayed}; expired {expired}; unreadable {unreadable}");
    Ok(ExitCode::SUCCESS)
}

/// Removes dead letters older than `older_than`.
async fn purge(
    args: &DlqArgs,
    queue: &DeadLetterQueue,
    older_than: Duration,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let cutoff = OffsetDateTime::now_utc() - older_than;
    let taken = queue
        .take(args.amqp.dead_letter_max_messages as usize)
        .await?;
    let mut purged = 0;
    for t in &taken {
        if t.letter.dead_at.is_some_and(|at| at <= cutoff) {
            purged += 1;
            if !dry_run {
                queue.remove(t).await?;
            }
        }
    }
    let verb = if dry_run { "would purge" } else { "purged" };
    eprintln!("{verb} {purged} of {} dead letter(s)", taken.len());
    Ok(ExitCode::SUCCESS)
}
