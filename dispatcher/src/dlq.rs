//! `otp-dispatcher dlq ...`: what an operator does with dead letters. Messages are read with
//! `basic.get` and held unacknowledged while the command runs, so nothing is lost if it dies: the
//! broker returns whatever it did not ack. Only envelopes are read (ids and times); the sealed
//! content, with the number and the code, is never opened.

use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use lapin::{
    BasicProperties, Channel,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use redis::Script;

use time::OffsetDateTime;
use uuid::Uuid;

use otp_shared::{
    amqp::{ATTEMPTS_HEADER, DEAD_AT_HEADER, DEAD_REASON_HEADER, Topology, header_str},
    backend::Unavailable,
    keys::Keys,
    ledger::JobOutcome,
};

use otp_delivery::source::{DeadLetter, DeadLetters};

/// How long the broker may take to confirm a replayed job.
const REPLAY_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A dead letter from RabbitMQ: our headers, or the broker's `x-death` when it dead-lettered
/// the message itself.
pub fn read_dead_letter(body: &[u8], properties: &BasicProperties) -> DeadLetter {
    let death = broker_death(properties);
    let dead_at = header_str(properties, DEAD_AT_HEADER)
        .and_then(|s| s.parse::<i64>().ok())
        .or(death.as_ref().and_then(|d| d.1))
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
    let reason = header_str(properties, DEAD_REASON_HEADER)
        .or_else(|| death.map(|d| format!("rejected by the broker ({})", d.0)))
        .unwrap_or_else(|| "unknown".into());
    let attempts = header_str(properties, ATTEMPTS_HEADER).and_then(|s| s.parse().ok());
    DeadLetter::new(body, reason, dead_at, attempts)
}

/// The reason and time (unix seconds) RabbitMQ wrote into `x-death` when it dead-lettered the
/// message itself (delivery limit, or a reject).
fn broker_death(properties: &BasicProperties) -> Option<(String, Option<i64>)> {
    let headers = properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get(&ShortString::from("x-death"))? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let reason = match first.inner().get(&ShortString::from("reason")) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => "unknown".into(),
    };
    let time = match first.inner().get(&ShortString::from("time")) {
        Some(AMQPValue::Timestamp(t)) => i64::try_from(*t).ok(),
        _ => None,
    };
    Some((reason, time))
}

/// The dead-letter queue of one topology, held open for one command.
pub struct DeadLetterQueue {
    channel: Channel,
    topology: Topology,
}

/// A dead letter taken from the queue and not yet settled.
pub struct Taken {
    pub message: BasicGetMessage,
    pub letter: DeadLetter,
}

impl DeadLetterQueue {
    /// `channel` must be in confirm mode (replays are confirmed before the original goes).
    pub fn new(channel: Channel, topology: Topology) -> Self {
        Self { channel, topology }
    }

    /// Takes up to `limit` messages, holding them unacknowledged.
    pub async fn take(&self, limit: usize) -> anyhow::Result<Vec<Taken>> {
        let mut taken = Vec::new();
        while taken.len() < limit {
            let got = self
                .channel
                .basic_get(
                    self.topology.dead_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .with_context(|| format!("reading {}", self.topology.dead_queue))?;
            let Some(message) = got else { break };
            let letter = read_dead_letter(&message.delivery.data, &message.delivery.properties);
            taken.push(Taken { message, letter });
        }
        Ok(taken)
    }

    /// Returns taken messages to the dead-letter queue, unchanged.
    pub async fn put_back(&self, taken: &[Taken]) -> anyhow::Result<()> {
        for t in taken {
            t.message
                .delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .context("returning a dead letter")?;
        }
        Ok(())
    }

    /// Removes a message from the dead-letter queue for good.
    pub async fn remove(&self, taken: &Taken) -> anyhow::Result<()> {
        taken
            .message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .context("removing a dead letter")
    }

    /// Publishes the job back to the main queue, as it was but without the dead-letter headers,
    /// waits for the broker's confirm, then removes it from the dead-letter queue.
    pub async fn replay(&self, taken: &Taken) -> anyhow::Result<()> {
        let delivery = &taken.message.delivery;
        let mut headers = FieldTable::default();
        if let Some(original) = delivery.properties.headers() {
            for (k, v) in original.inner() {
                let dead_only = [
                    DEAD_REASON_HEADER,
                    DEAD_AT_HEADER,
                    ATTEMPTS_HEADER,
                    "x-death",
                ]
                .contains(&k.as_str())
                    || k.as_str().starts_with("x-first-death")
                    || k.as_str().starts_with("x-last-death");
                if !dead_only {
                    headers.insert(k.clone(), v.clone());
                }
            }
        }
        let properties = delivery.properties.clone().with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.topology.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await
            .context("republishing")?;
        let confirm = tokio::time::timeout(REPLAY_CONFIRM_TIMEOUT, confirm)
            .await
            .context("the broker did not confirm the replay in time")?
            .context("waiting for the broker's confirm")?;
        anyhow::ensure!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "the broker refused the replay (nack or unroutable)"
        );
        self.remove(taken).await
    }
}

impl DeadLetters for DeadLetterQueue {
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, Unavailable>> {
        Box::pin(async move {
            let listed = async {
                let taken = self.take(limit).await?;
                self.put_back(&taken).await?;
                anyhow::Ok(taken.into_iter().map(|t| t.letter).collect())
            };
            listed.await.map_err(|e| Unavailable {
                backend: "rabbitmq",
                source: e.into(),
            })
        })
    }
}

/// Lets a replayed job be tried again: a job the ledger recorded as failed may be sent once
/// more, while a job recorded as sent stays sent (the dispatcher acks it without a call).
pub async fn reopen_failed(
    redis: &mut otp_shared::redis_conn::RedisConn,
    keys: &Keys,
    verification_id: Uuid,
    job_id: Uuid,
) -> redis::RedisResult<bool> {
    let script = Script::new(
        "local v = redis.call('GET', KEYS[1]) \
         if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end \
         return 0",
    );
    let deleted: i64 = script
        .key(keys.job_outcome(verification_id, job_id))
        .arg(JobOutcome::FAILED_PREFIX)
        .invoke_async(redis)
        .await?;
    Ok(deleted == 1)
}

/// Parses `90s`, `15m`, `2h` or `7d`.
pub fn parse_age(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("needs a unit: s, m, h or d (e.g. 7d)")?;
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "must start with a number (e.g. 7d)")?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err("unit must be s, m, h or d (e.g. 7d)".into()),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| "is too large".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_units() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "7", "d", "7w", "-1d", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unreadable_message_is_listed_without_ids() {
        let letter = read_dead_letter(b"not json", &BasicProperties::default());
        assert_eq!(letter.job_id, None);
        assert_eq!(letter.reason, "unknown");
        assert!(letter.line().starts_with("-  verification=-"));
    }
}
