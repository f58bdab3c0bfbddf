//! What the worker reads and writes besides the ledger: the verification's delivery record, and
//! whether its code is still live (the condition of a resend). [`RedisJobRecords`] uses the
//! keys the API writes; [`MemoryJobRecords`] the in-memory records, with the code store's
//! answer passed in (the code store is the API's).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use otp_shared::{
    backend::Unavailable,
    keys::Keys,
    memory::DeliveryRecords,
    redis_conn::RedisConn,
    status::{self, DeliveryState},
};
use uuid::Uuid;

pub trait JobRecords: Send + Sync {
    /// Writes the delivery record's state, whatever it was, with the attempts so far and extra
    /// fields (a resend moves it back from `undelivered` this way).
    fn record<'a>(
        &'a self,
        verification_id: Uuid,
        state: DeliveryState,
        attempts: u32,
        extra: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<(), Unavailable>>;

    /// Whether `verification_id` is still the live code of `destination` (E.164): not used,
    /// replaced or expired.
    fn code_is_live<'a>(
        &'a self,
        destination: &'a str,
        verification_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, Unavailable>>;
}

pub struct RedisJobRecords {
    pub conn: RedisConn,
    pub keys: Keys,
}

impl JobRecords for RedisJobRecords {
    fn record<'a>(
        &'a self,
        verification_id: Uuid,
        state: DeliveryState,
        attempts: u32,
        extra: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            status::record(
                &mut conn,
                &self.keys,
                verification_id,
                state,
                attempts,
                extra,
            )
            .await?;
            Ok(())
        })
    }

    fn code_is_live<'a>(
        &'a self,
        destination: &'a str,
        verification_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        Box::pin(async move {
            let vid: Option<String> = redis::cmd("HGET")
                .arg(self.keys.code(destination))
                .arg("vid")
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(vid.is_some_and(|v| v == verification_id.to_string()))
        })
    }
}

/// Answers whether a verification is still a number's live code.
pub type LiveCode = Arc<dyn Fn(&str, Uuid) -> bool + Send + Sync>;

pub struct MemoryJobRecords {
    pub records: DeliveryRecords,
    pub live: LiveCode,
}

impl JobRecords for MemoryJobRecords {
    fn record<'a>(
        &'a self,
        verification_id: Uuid,
        state: DeliveryState,
        attempts: u32,
        extra: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        self.records.record(verification_id, state, attempts, extra);
        Box::pin(async { Ok(()) })
    }

    fn code_is_live<'a>(
        &'a self,
        destination: &'a str,
        verification_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        let live = (self.live)(destination, verification_id);
        Box::pin(async move { Ok(live) })
    }
}
