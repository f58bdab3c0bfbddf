//! Verification events: every step of a verification, published to the topic exchange
//! [`EXCHANGE`] with the routing key `verification.<type>`, for the app's own systems. An event
//! never holds the code or the full number: the number is masked.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::phone::PhoneNumber;

/// The durable topic exchange events are published to.
pub const EXCHANGE: &str = "otp.events";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Requested,
    Sent,
    Delivered,
    Undelivered,
    Failed,
    Verified,
    AttemptsExhausted,
    Blocked,
    Canceled,
    Resent,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Failed => "failed",
            Self::Verified => "verified",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::Blocked => "blocked",
            Self::Canceled => "canceled",
            Self::Resent => "resent",
        }
    }
}

/// One event, as published (JSON, camelCase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Unique: consumers deduplicate by it (delivery is at least once).
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// RFC 3339.
    pub occurred_at: String,
    pub verification_id: Uuid,
    /// ISO 3166 code of the number's country, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The number as logs show it (`+1415*****71`), never in full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masked_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The caller key's id, when a keyed caller made the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_key_id: Option<String>,
}

impl Event {
    /// An event of `kind` for a verification of `phone`, now.
    pub fn new(kind: EventType, verification_id: Uuid, phone: Option<&PhoneNumber>) -> Self {
        let occurred_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            id: crate::ids::random_uuid(),
            kind,
            occurred_at,
            verification_id,
            country: phone
                .and_then(|p| p.country())
                .map(|c| c.as_str().to_owned()),
            masked_number: phone.map(PhoneNumber::masked),
            provider: None,
            reason: None,
            caller_key_id: None,
        }
    }

    /// `verification.<type>`.
    pub fn routing_key(&self) -> String {
        format!("verification.{}", self.kind.as_str())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event serializes")
    }
}

/// Publishes `event` to [`EXCHANGE`] on `channel` (a confirm-mode channel; `None` while
/// reconnecting) in a task of its own, waiting up to `timeout` for the broker's confirm. One
/// that is not confirmed is counted in `failed` (`otp_events_failed_total`) and logged.
pub fn publish_in_background(
    channel: Option<lapin::Channel>,
    event: Event,
    timeout: std::time::Duration,
    failed: prometheus::IntCounter,
) {
    tokio::spawn(async move {
        let published = async {
            let channel = channel?;
            let properties = lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(event.id.to_string().into());
            let confirm = channel
                .basic_publish(
                    EXCHANGE.into(),
                    event.routing_key().as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    &event.to_json(),
                    properties,
                )
                .await
                .ok()?
                .await
                .ok()?;
            confirm.is_ack().then_some(())
        };
        if !matches!(tokio::time::timeout(timeout, published).await, Ok(Some(()))) {
            failed.inc();
            tracing::warn!(
                event = event.kind.as_str(),
                "a verification event was not published"
            );
        }
    });
}

/// Where events go. Emitting never waits and never fails the work it reports on: a publish that
/// is not confirmed is counted (`otp_events_failed_total`) and logged by the implementation.
pub trait Events: Send + Sync {
    /// Publishes `event` in the background.
    fn emit(&self, event: Event);
}

/// Drops every event: for parts run without a place to publish (tests of other concerns).
pub struct NoEvents;

impl Events for NoEvents {
    fn emit(&self, _event: Event) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_masks_the_number_and_names_its_route() {
        let phone = PhoneNumber::parse("+14155552671").unwrap();
        let mut event = Event::new(EventType::AttemptsExhausted, Uuid::new_v4(), Some(&phone));
        event.caller_key_id = Some("web".into());
        let json = String::from_utf8(event.to_json()).unwrap();
        assert!(!json.contains("4155552671"), "{json}");
        assert!(json.contains("\"type\":\"attempts_exhausted\""), "{json}");
        assert!(
            json.contains("\"country\":\"US\"") && json.contains("callerKeyId"),
            "{json}"
        );
        assert_eq!(event.routing_key(), "verification.attempts_exhausted");
        let back: Event = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(back, event);
    }
}
