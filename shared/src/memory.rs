//! Delivery records in process memory, for the in-memory backends of both binaries (one process
//! holds the API and the dispatcher then, and both see the same records). The same rules as the
//! Redis hash: a record expires [`STATUS_TTL_SECONDS`] after its last change, `record` writes
//! unconditionally, `advance` moves forward only and only while the record exists. Beside them,
//! what delivery reports need: which verification a provider's message id belongs to, the
//! sealed job kept for one resend, and single-use marks (report nonces, resends), each with its
//! own lifetime, as the Redis keys have. Time is tokio's clock.

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

/// Every verification's delivery record, and what reports need, shared by its clones.
#[derive(Clone, Default)]
pub struct DeliveryRecords(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    records: HashMap<Uuid, Record>,
    /// (provider, message id) → verification.
    messages: HashMap<(String, String), (Uuid, Instant)>,
    sealed: HashMap<Uuid, (Vec<u8>, Instant)>,
    marks: HashMap<String, Instant>,
}

struct Record {
    fields: HashMap<String, String>,
    until: Instant,
}

const TTL: Duration = Duration::from_secs(STATUS_TTL_SECONDS);

impl DeliveryRecords {
    fn all<T>(&self, f: impl FnOnce(&mut Inner, Instant) -> T) -> T {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        inner.records.retain(|_, r| r.until > now);
        inner.messages.retain(|_, (_, until)| *until > now);
        inner.sealed.retain(|_, (_, until)| *until > now);
        inner.marks.retain(|_, until| *until > now);
        f(&mut inner, now)
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Uuid, Record>) -> T) -> T {
        self.all(|inner, _| f(&mut inner.records))
    }

    /// Notes that `provider` accepted the verification's SMS as `message_id`, for `ttl`.
    pub fn map_message(
        &self,
        provider: &str,
        message_id: &str,
        verification_id: Uuid,
        ttl: Duration,
    ) {
        let key = (provider.to_owned(), message_id.to_owned());
        self.all(|inner, now| inner.messages.insert(key, (verification_id, now + ttl)));
    }

    /// The verification `provider`'s `message_id` belongs to.
    pub fn message(&self, provider: &str, message_id: &str) -> Option<Uuid> {
        let key = (provider.to_owned(), message_id.to_owned());
        self.all(|inner, _| inner.messages.get(&key).map(|(vid, _)| *vid))
    }

    /// Keeps a verification's sealed job for `ttl` (for one resend).
    pub fn keep_sealed(&self, verification_id: Uuid, sealed: Vec<u8>, ttl: Duration) {
        self.all(|inner, now| inner.sealed.insert(verification_id, (sealed, now + ttl)));
    }

    pub fn sealed(&self, verification_id: Uuid) -> Option<Vec<u8>> {
        self.all(|inner, _| inner.sealed.get(&verification_id).map(|(s, _)| s.clone()))
    }

    /// Forgets a kept sealed job (its code was used or replaced).
    pub fn drop_sealed(&self, verification_id: Uuid) {
        self.all(|inner, _| inner.sealed.remove(&verification_id));
    }

    /// Sets the single-use mark `key` for `ttl`; false when it was already set.
    pub fn mark(&self, key: &str, ttl: Duration) -> bool {
        self.all(|inner, now| {
            if inner.marks.contains_key(key) {
                return false;
            }
            inner.marks.insert(key.to_owned(), now + ttl);
            true
        })
    }

    pub fn unmark(&self, key: &str) {
        self.all(|inner, _| inner.marks.remove(key));
    }

    /// Sets one field of an existing record (its state unchanged); false without a record.
    pub fn annotate(&self, verification_id: Uuid, field: &str, value: &str) -> bool {
        self.with(|records| match records.get_mut(&verification_id) {
            Some(record) => {
                record.fields.insert(field.into(), value.into());
                true
            }
            None => false,
        })
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

    /// One field of a record, if both exist.
    pub fn field(&self, verification_id: Uuid, field: &str) -> Option<String> {
        self.with(|records| {
            records
                .get(&verification_id)
                .and_then(|r| r.fields.get(field).cloned())
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

    #[tokio::test(start_paused = true)]
    async fn report_entries_last_their_own_ttl_and_marks_are_single_use() {
        let records = DeliveryRecords::default();
        let vid = Uuid::new_v4();
        let minute = Duration::from_secs(60);
        records.map_message("plivo", "m-1", vid, minute);
        records.keep_sealed(vid, b"sealed".to_vec(), 2 * minute);
        assert_eq!(records.message("plivo", "m-1"), Some(vid));
        assert_eq!(records.message("twilio", "m-1"), None);
        assert!(records.mark("nonce", minute));
        assert!(!records.mark("nonce", minute), "single use");
        records.unmark("nonce");
        assert!(records.mark("nonce", minute));
        tokio::time::sleep(minute + Duration::from_secs(1)).await;
        assert_eq!(records.message("plivo", "m-1"), None);
        assert_eq!(records.sealed(vid).as_deref(), Some(&b"sealed"[..]));
        assert!(records.mark("nonce", minute), "expired");
        records.drop_sealed(vid);
        assert_eq!(records.sealed(vid), None);
    }
}
