//! Delivery records in process memory, for the in-memory backends of both binaries (one process
//! holds the API and the dispatcher then, and both see the same records). The same rules as the
//! Redis hash: a record expires [`STATUS_TTL_SECONDS`] after its last change, `record` writes
//! unconditionally, `advance` moves forward only and only while the record exists. Time is
//! tokio's clock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use uuid::Uuid;

use crate::status::{
    DeliveryState, DeliveryStatus, FIELD_ATTEMPTS, FIELD_STATE, FIELD_UPDATED_AT,
    STATUS_TTL_SECONDS,
};

/// Every verification's delivery record, shared by its clones.
#[derive(Clone, Default)]
pub struct DeliveryRecords(Arc<Mutex<HashMap<Uuid, Record>>>);

struct Record {
    fields: HashMap<String, String>,
    until: Instant,
}

const TTL: Duration = Duration::from_secs(STATUS_TTL_SECONDS);

impl DeliveryRecords {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Uuid, Record>) -> T) -> T {
        let mut records = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        records.retain(|_, r| r.until > now);
        f(&mut records)
    }

    /// Writes `state` with the attempt count and extra fields, whatever was there.
    pub fn record(
        &self,
        verification_id: Uuid,
        state: DeliveryState,
        attempts: u32,
        extra: &[(&str, &str)],
    ) {
        self.with(|records| {
            let record = records.entry(verification_id).or_insert_with(|| Record {
                fields: HashMap::new(),
                until: Instant::now(),
            });
            record
                .fields
                .insert(FIELD_ATTEMPTS.into(), attempts.to_string());
            set(record, state, extra);
        });
    }

    /// Moves an existing record forward to `state` (by [`DeliveryState::rank`]); returns
    /// whether it moved.
    pub fn advance(
        &self,
        verification_id: Uuid,
        state: DeliveryState,
        extra: &[(&str, &str)],
    ) -> bool {
        self.with(|records| {
            let Some(record) = records.get_mut(&verification_id) else {
                return false;
            };
            let current = record
                .fields
                .get(FIELD_STATE)
                .and_then(|s| s.parse::<DeliveryState>().ok());
            if current.is_some_and(|c| state.rank() <= c.rank()) {
                return false;
            }
            set(record, state, extra);
            true
        })
    }

    pub fn exists(&self, verification_id: Uuid) -> bool {
        self.with(|records| records.contains_key(&verification_id))
    }

    pub fn remove(&self, verification_id: Uuid) {
        self.with(|records| records.remove(&verification_id));
    }

    pub fn load(&self, verification_id: Uuid) -> Option<DeliveryStatus> {
        self.with(|records| {
            records
                .get(&verification_id)
                .and_then(|r| DeliveryStatus::from_fields(&r.fields))
        })
    }
}

fn set(record: &mut Record, state: DeliveryState, extra: &[(&str, &str)]) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    record
        .fields
        .insert(FIELD_STATE.into(), state.as_str().into());
    record
        .fields
        .insert(FIELD_UPDATED_AT.into(), now.to_string());
    for (k, v) in extra {
        record.fields.insert((*k).into(), (*v).into());
    }
    record.until = Instant::now() + TTL;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::FIELD_PROVIDER_ID;

    #[tokio::test(start_paused = true)]
    async fn records_move_forward_only_and_expire() {
        let records = DeliveryRecords::default();
        let vid = Uuid::new_v4();
        assert!(
            !records.advance(vid, DeliveryState::Sent, &[]),
            "no record yet"
        );
        records.record(vid, DeliveryState::Queued, 0, &[]);
        assert!(records.advance(vid, DeliveryState::Sent, &[(FIELD_PROVIDER_ID, "m-1")]));
        assert!(records.advance(vid, DeliveryState::Delivered, &[]));
        assert!(
            !records.advance(vid, DeliveryState::Sent, &[]),
            "never backwards"
        );
        let status = records.load(vid).unwrap();
        assert_eq!(status.state, DeliveryState::Delivered);
        assert_eq!(status.provider_message_id.as_deref(), Some("m-1"));
        tokio::time::sleep(TTL + Duration::from_secs(1)).await;
        assert!(!records.exists(vid));
    }
}
