//! The settings otp-api and otp-dispatcher must agree on, as a fingerprint. The API writes it
//! to Redis at start-up (and again every [`REFRESH`]), under its own key prefix and database:
//! beside the keyspace it describes, so a dispatcher on another prefix or database finds none.
//! Every dispatcher compares its own at start and every [`REFRESH`], and stops consuming while
//! they differ (`otp_dispatcher::agreement`).
//!
//! The fingerprint holds a digest of each value, never the value, and the id of the key new
//! jobs are sealed with, never the key. A difference is reported by the setting's name alone.

use std::{collections::BTreeMap, time::Duration};

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    config::{AmqpArgs, RedisArgs, ReportArgs},
    crypto::JobKey,
};

/// The fingerprint's format; a dispatcher compares the settings both versions know.
pub const VERSION: u32 = 1;

/// How often the API rewrites the fingerprint (after a Redis restart it is back within this),
/// and how often a dispatcher compares it.
pub const REFRESH: Duration = Duration::from_secs(30);

/// The setting that names the job keys in a difference.
const JOB_KEYS: &str = "JOB_ENCRYPTION_KEY (key id)";

/// One binary's view of the shared settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Setting name → digest of its value.
    settings: BTreeMap<&'static str, String>,
    /// Every job key id this binary holds, the sealing one first.
    job_key_ids: Vec<u32>,
}

/// What the API writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Written {
    version: u32,
    settings: BTreeMap<String, String>,
    /// The id of the key the API seals new jobs with.
    job_key_id: u32,
}

impl Fingerprint {
    /// The fingerprint of the settings both binaries read.
    pub fn of(redis: &RedisArgs, amqp: &AmqpArgs, reports: &ReportArgs, keys: &JobKey) -> Self {
        let database = match redis.redis_cluster {
            true => 0,
            false => database(redis.url().expose_secret()),
        };
        let optional = |value: &Option<String>| value.clone().unwrap_or_default();
        let settings = [
            ("REDIS_KEY_PREFIX", redis.redis_key_prefix.clone()),
            ("REDIS_URL database", database.to_string()),
            ("SMS_QUEUE", amqp.sms_queue.clone()),
            (
                "DEAD_LETTER_TTL_HOURS",
                amqp.dead_letter_ttl_hours.to_string(),
            ),
            (
                "DEAD_LETTER_MAX_MESSAGES",
                amqp.dead_letter_max_messages.to_string(),
            ),
            (
                "SMS_STATUS_CALLBACK_URL",
                optional(&reports.sms_status_callback_url),
            ),
            (
                "TWILIO_STATUS_CALLBACK_URL",
                optional(&reports.twilio_status_callback_url),
            ),
            (
                "RESEND_ON_UNDELIVERED",
                reports.resend_on_undelivered.to_string(),
            ),
        ]
        .into_iter()
        .map(|(name, value)| (name, digest(name, &value)))
        .collect();
        Self {
            settings,
            job_key_ids: keys.ids(),
        }
    }

    /// The text the API writes to Redis.
    pub fn written(&self) -> String {
        let written = Written {
            version: VERSION,
            settings: self
                .settings
                .iter()
                .map(|(name, digest)| ((*name).to_owned(), digest.clone()))
                .collect(),
            job_key_id: self.job_key_ids[0],
        };
        serde_json::to_string(&written).expect("a fingerprint serializes")
    }

    /// The settings in which this binary differs from the API's `written` fingerprint, by name;
    /// empty when they agree. The job keys agree when this binary holds the API's sealing key
    /// (during a rotation it holds more).
    pub fn differences(&self, written: &str) -> Vec<&'static str> {
        let Ok(theirs) = serde_json::from_str::<Written>(written) else {
            return vec!["the fingerprint itself (unreadable)"];
        };
        let mut differ: Vec<&'static str> = self
            .settings
            .iter()
            .filter(|(name, ours)| {
                theirs
                    .settings
                    .get(**name)
                    .is_some_and(|theirs| theirs != *ours)
            })
            .map(|(name, _)| *name)
            .collect();
        if !self.job_key_ids.contains(&theirs.job_key_id) {
            differ.push(JOB_KEYS);
        }
        differ
    }
}

/// What a dispatcher finds when it compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The API's fingerprint matches this binary's settings.
    Agreed,
    /// No fingerprint under this prefix and database: no API runs on this keyspace (yet), or
    /// this binary's REDIS_KEY_PREFIX or database differs from the API's.
    None,
    /// These settings differ (by name).
    Differ(Vec<&'static str>),
}

/// The API's side: writes `fingerprint` at `key` now and every [`REFRESH`] until `stop` (so
/// it is back soon after Redis lost it). A failed write is logged and retried.
pub async fn keep_written(
    redis: crate::redis_conn::RedisConn,
    key: String,
    fingerprint: Fingerprint,
    stop: tokio_util::sync::CancellationToken,
) {
    let text = fingerprint.written();
    loop {
        let written: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&key)
            .arg(&text)
            .query_async(&mut redis.clone())
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not write the settings fingerprint; retrying");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

/// The dispatcher's side: reads the API's fingerprint at `key` and compares.
pub async fn compare(
    redis: &crate::redis_conn::RedisConn,
    key: &str,
    ours: &Fingerprint,
) -> redis::RedisResult<Found> {
    let written: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut redis.clone())
        .await?;
    Ok(match written {
        None => Found::None,
        Some(written) => match ours.differences(&written) {
            differ if differ.is_empty() => Found::Agreed,
            differ => Found::Differ(differ),
        },
    })
}

/// Which database a Redis URL selects (its path, `/2`; 0 without one).
fn database(url: &str) -> u32 {
    let first = url.split(',').next().unwrap_or_default();
    url::Url::parse(first.trim())
        .ok()
        .and_then(|u| u.path().trim_start_matches('/').parse().ok())
        .unwrap_or(0)
}

/// A digest of one setting's value, bound to its name; short, since it only tells equal from
/// different.
fn digest(name: &str, value: &str) -> String {
    let hash = Sha256::new()
        .chain_update(name)
        .chain_update([0])
        .chain_update(value)
        .finalize();
    hash[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(prefix: &str, url: &str, queue: &str, key: &str) -> Fingerprint {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Both {
            #[command(flatten)]
            redis: RedisArgs,
            #[command(flatten)]
            amqp: AmqpArgs,
            #[command(flatten)]
            reports: ReportArgs,
        }
        let both = Both::try_parse_from([
            "test",
            "--redis-key-prefix",
            prefix,
            "--redis-url",
            url,
            "--sms-queue",
            queue,
        ])
        .unwrap();
        let keys = JobKey::from_base64(key).unwrap();
        Fingerprint::of(&both.redis, &both.amqp, &both.reports, &keys)
    }

    const KEY_1: &str = "1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const KEY_2: &str = "2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    #[test]
    fn the_same_settings_agree_and_each_difference_is_named_without_its_value() {
        let api = settings("otp:", "redis://127.0.0.1:6379/0", "otp.sms", KEY_1);
        let written = api.written();
        assert!(api.differences(&written).is_empty());
        assert!(!written.contains("otp.sms") && !written.contains("otp:"));

        let other = settings("other:", "redis://127.0.0.1:6379/3", "otp.sms", KEY_1);
        assert_eq!(
            other.differences(&written),
            ["REDIS_KEY_PREFIX", "REDIS_URL database"]
        );
        let queue = settings("otp:", "redis://127.0.0.1:6379", "otp.other", KEY_1);
        assert_eq!(queue.differences(&written), ["SMS_QUEUE"]);
        assert_eq!(
            settings("otp:", "redis://127.0.0.1:6379", "otp.sms", KEY_2).differences(&written),
            [JOB_KEYS]
        );
        assert_eq!(
            queue.differences("{"),
            ["the fingerprint itself (unreadable)"]
        );
    }

    #[test]
    fn a_dispatcher_holding_the_sealing_key_among_others_agrees() {
        let api = settings("otp:", "redis://127.0.0.1:6379", "otp.sms", KEY_2);
        let rotating = settings(
            "otp:",
            "redis://127.0.0.1:6379",
            "otp.sms",
            &format!("{KEY_1},{KEY_2}"),
        );
        assert!(rotating.differences(&api.written()).is_empty());
    }
}
