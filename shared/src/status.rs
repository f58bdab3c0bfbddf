//! Delivery state of a verification's SMS: written by api (queued) and dispatcher (the rest),
//! read by api's status endpoint.

use std::{fmt, str::FromStr};

use uuid::Uuid;

use crate::keys::Keys;

/// How long a delivery record is kept after its last change.
pub const STATUS_TTL_SECONDS: u64 = 24 * 60 * 60;

/// Field names of the status hash. Lua scripts get them from [`lua_with_record`] (never
/// spelled in a script).
pub const FIELD_STATE: &str = "state";
pub const FIELD_ATTEMPTS: &str = "attempts";
pub const FIELD_UPDATED_AT: &str = "updatedAt";
pub const FIELD_PROVIDER_ID: &str = "providerMessageId";
pub const FIELD_REASON: &str = "reason";
/// What became of the one resend after an undelivered report: `resent`, or `not resent: …`
/// in a fixed text.
pub const FIELD_RESEND: &str = "resend";
/// The provider that accepted the message (`plivo`, `twilio`).
pub const FIELD_PROVIDER: &str = "provider";
/// `1` once the verification's code was used (verified).
pub const FIELD_VERIFIED: &str = "verified";
/// The number (E.164) the code was issued for, so a cancel by verification id finds the code
/// (the number is already in the code's key name); never shown by the status route.
pub const FIELD_NUMBER: &str = "number";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Queued,
    Sending,
    /// Accepted by the provider.
    Sent,
    /// The provider's delivery report: the phone has it.
    Delivered,
    /// The provider's delivery report: the carrier could not deliver it.
    Undelivered,
    /// Refused by the provider (permanently), or reported failed by it.
    Failed,
    Expired,
    /// The app canceled the verification (`POST /api/otp/cancel`): a job still queued is
    /// withdrawn.
    Canceled,
}

const ALL_STATES: [DeliveryState; 8] = [
    DeliveryState::Queued,
    DeliveryState::Sending,
    DeliveryState::Sent,
    DeliveryState::Delivered,
    DeliveryState::Undelivered,
    DeliveryState::Failed,
    DeliveryState::Expired,
    DeliveryState::Canceled,
];

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Canceled => "canceled",
        }
    }

    /// States only move forward: a late `sent` report never replaces `delivered`. Final states
    /// share the top rank, so the first one recorded stays.
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Sending => 1,
            Self::Sent => 2,
            Self::Delivered | Self::Undelivered | Self::Failed | Self::Expired | Self::Canceled => {
                3
            }
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_STATES
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown delivery state '{s}'"))
    }
}

/// One verification's delivery record, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryStatus {
    pub state: DeliveryState,
    pub attempts: u32,
    /// Unix seconds.
    pub updated_at: i64,
    pub provider_message_id: Option<String>,
    /// [`FIELD_RESEND`], once a resend was decided.
    pub resend: Option<String>,
    /// [`FIELD_VERIFIED`]: the code was used.
    pub verified: bool,
}

/// Records a new state (with the attempt count so far, and extras such as the provider id).
pub async fn record<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    verification_id: Uuid,
    state: DeliveryState,
    attempts: u32,
    extra: &[(&str, &str)],
) -> redis::RedisResult<()> {
    let key = keys.status(verification_id);
    let fields = record_fields(state, attempts, extra);
    redis::pipe()
        .atomic()
        .hset_multiple(&key, &fields)
        .ignore()
        .expire(&key, STATUS_TTL_SECONDS as i64)
        .ignore()
        .query_async(conn)
        .await
}

/// The fields [`record`] writes: state, attempts, the time now, then `extra` (for a script that
/// writes a record as one of its steps, with [`STATUS_TTL_SECONDS`]).
pub fn record_fields<'a>(
    state: DeliveryState,
    attempts: u32,
    extra: &[(&'a str, &str)],
) -> Vec<(&'a str, String)> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut fields: Vec<(&str, String)> = vec![
        (FIELD_STATE, state.as_str().to_owned()),
        (FIELD_ATTEMPTS, attempts.to_string()),
        (FIELD_UPDATED_AT, now.to_string()),
    ];
    fields.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    fields
}

/// A Lua script that reads or writes delivery records, preceded by what they share: the field
/// names as the locals `FIELD_STATE`, `FIELD_ATTEMPTS` and `FIELD_UPDATED_AT`, and the
/// function `advance(key, first)` (`advance.lua`), the forward-only rule of [`advance`], for
/// scripts that advance a record as one of their steps (its arguments are appended by
/// [`advance_args`]).
pub fn lua_with_record(script: &str) -> redis::Script {
    redis::Script::new(&format!(
        "local FIELD_STATE, FIELD_ATTEMPTS, FIELD_UPDATED_AT = '{FIELD_STATE}', \
         '{FIELD_ATTEMPTS}', '{FIELD_UPDATED_AT}'\n{}\n{script}",
        include_str!("advance.lua")
    ))
}

/// Appends the arguments of `advance(key, first)` to a script call (they must come last).
pub fn advance_args(
    invocation: &mut redis::ScriptInvocation<'_>,
    state: DeliveryState,
    extra: &[(&str, &str)],
) {
    static RANKS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let ranks: Vec<String> = ALL_STATES
            .iter()
            .map(|s| format!("{}={}", s.as_str(), s.rank()))
            .collect();
        ranks.join(",")
    });
    invocation
        .arg(state.as_str())
        .arg(state.rank())
        .arg(RANKS.as_str())
        .arg(time::OffsetDateTime::now_utc().unix_timestamp())
        .arg(STATUS_TTL_SECONDS);
    for (k, v) in extra {
        invocation.arg(*k).arg(*v);
    }
}

/// Moves a record to `state` only if that is forward (by [`DeliveryState::rank`]) and the record
/// still exists; returns whether it moved. Used for provider reports and the final `sent`, which
/// may race each other.
pub async fn advance<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    verification_id: Uuid,
    state: DeliveryState,
    extra: &[(&str, &str)],
) -> redis::RedisResult<bool> {
    static ADVANCE: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| lua_with_record("return advance(KEYS[1], 1)"));
    let mut invocation = ADVANCE.key(keys.status(verification_id));
    advance_args(&mut invocation, state, extra);
    let moved: i64 = invocation.invoke_async(conn).await?;
    Ok(moved == 1)
}

/// Reads a delivery record; `None` when the id is unknown (or its record has expired).
pub async fn load<C: redis::aio::ConnectionLike + Send + Sync>(
    conn: &mut C,
    keys: &Keys,
    verification_id: Uuid,
) -> redis::RedisResult<Option<DeliveryStatus>> {
    let map: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.status(verification_id))
        .query_async(conn)
        .await?;
    Ok(DeliveryStatus::from_fields(&map))
}

impl DeliveryStatus {
    /// Reads a record from its fields; `None` without a known state.
    pub fn from_fields(fields: &std::collections::HashMap<String, String>) -> Option<Self> {
        let state = fields.get(FIELD_STATE)?.parse().ok()?;
        let number = |field: &str| fields.get(field).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(DeliveryStatus {
            state,
            attempts: number(FIELD_ATTEMPTS) as u32,
            updated_at: number(FIELD_UPDATED_AT),
            provider_message_id: fields.get(FIELD_PROVIDER_ID).cloned(),
            resend: fields.get(FIELD_RESEND).cloned(),
            verified: fields.get(FIELD_VERIFIED).is_some_and(|v| v == "1"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in [
            "queued",
            "sending",
            "sent",
            "delivered",
            "undelivered",
            "failed",
            "expired",
        ] {
            assert_eq!(s.parse::<DeliveryState>().unwrap().as_str(), s);
        }
        assert!("read".parse::<DeliveryState>().is_err());
        assert!(DeliveryState::Delivered.rank() > DeliveryState::Sent.rank());
    }
}
