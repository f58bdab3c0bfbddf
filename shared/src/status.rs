//! Delivery state of a verification's SMS: written by api (queued) and dispatcher (the rest),
//! read by api's status endpoint.

use std::{fmt, str::FromStr};

use uuid::Uuid;

use crate::keys::Keys;

/// How long a delivery record is kept after its last change.
pub const STATUS_TTL_SECONDS: u64 = 24 * 60 * 60;

/// Field names of the status hash; the API's Lua script writes the same ones.
pub const FIELD_STATE: &str = "state";
pub const FIELD_ATTEMPTS: &str = "attempts";
pub const FIELD_UPDATED_AT: &str = "updatedAt";
pub const FIELD_PROVIDER_ID: &str = "providerMessageId";
pub const FIELD_REASON: &str = "reason";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Queued,
    Sending,
    Sent,
    Failed,
    Expired,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Expired => "expired",
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
        [
            Self::Queued,
            Self::Sending,
            Self::Sent,
            Self::Failed,
            Self::Expired,
        ]
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
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut fields: Vec<(&str, String)> = vec![
        (FIELD_STATE, state.as_str().to_owned()),
        (FIELD_ATTEMPTS, attempts.to_string()),
        (FIELD_UPDATED_AT, now.to_string()),
    ];
    fields.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    redis::pipe()
        .atomic()
        .hset_multiple(&key, &fields)
        .ignore()
        .expire(&key, STATUS_TTL_SECONDS as i64)
        .ignore()
        .query_async(conn)
        .await
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
    let Some(state) = map.get(FIELD_STATE).and_then(|s| s.parse().ok()) else {
        return Ok(None);
    };
    let number = |field: &str| map.get(field).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Some(DeliveryStatus {
        state,
        attempts: number(FIELD_ATTEMPTS) as u32,
        updated_at: number(FIELD_UPDATED_AT),
        provider_message_id: map.get(FIELD_PROVIDER_ID).cloned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in ["queued", "sending", "sent", "failed", "expired"] {
            assert_eq!(s.parse::<DeliveryState>().unwrap().as_str(), s);
        }
        assert!("delivered".parse::<DeliveryState>().is_err());
    }
}
