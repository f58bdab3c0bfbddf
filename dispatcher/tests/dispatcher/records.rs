//! The worker's view of the delivery record and the code's liveness, checked once against both
//! backends (`otp_testkit::conformance!`): `RedisJobRecords` and `MemoryJobRecords` (whose
//! liveness question goes to the in-process code store).

use std::sync::{Arc, Mutex};

use otp_delivery::records::{JobRecords, MemoryJobRecords, RedisJobRecords};
use otp_shared::{
    memory::DeliveryRecords,
    status::{DeliveryState, DeliveryStatus, FIELD_PROVIDER_ID},
};
use uuid::Uuid;

use crate::helpers::{PHONE, World};

/// The records, and how a test gives a number a live code.
enum Backend {
    Redis(Box<World>),
    /// The live codes the in-process code store answers from.
    Memory(DeliveryRecords, Arc<Mutex<Vec<(String, Uuid)>>>),
}

impl Backend {
    fn records(&self) -> Box<dyn JobRecords> {
        match self {
            Self::Redis(world) => Box::new(RedisJobRecords {
                conn: world.redis.clone(),
                keys: world.keys(),
            }),
            Self::Memory(records, live) => {
                let live = live.clone();
                Box::new(MemoryJobRecords {
                    records: records.clone(),
                    live: Arc::new(move |number: &str, vid| {
                        live.lock().unwrap().contains(&(number.to_owned(), vid))
                    }),
                })
            }
        }
    }

    async fn issue(&self, number: &str, vid: Uuid) {
        match self {
            Self::Redis(world) => {
                let _: () = redis::cmd("HSET")
                    .arg(world.keys().code(number))
                    .arg("vid")
                    .arg(vid.to_string())
                    .query_async(&mut world.redis.clone())
                    .await
                    .unwrap();
            }
            Self::Memory(_, live) => live.lock().unwrap().push((number.to_owned(), vid)),
        }
    }

    async fn status(&self, vid: Uuid) -> Option<DeliveryStatus> {
        match self {
            Self::Redis(world) => world.status(vid).await,
            Self::Memory(records, _) => records.load(vid),
        }
    }
}

async fn on_redis() -> Backend {
    Backend::Redis(Box::new(World::new().await))
}

async fn in_memory() -> Backend {
    Backend::Memory(DeliveryRecords::default(), Default::default())
}

otp_testkit::conformance!(
    shared: on_redis, in_memory: in_memory;
    records_write_the_state_and_read_the_live_code,
);

async fn records_write_the_state_and_read_the_live_code(backend: Backend) {
    let records = backend.records();
    let vid = Uuid::new_v4();
    records
        .record(
            vid,
            DeliveryState::Sending,
            2,
            &[(FIELD_PROVIDER_ID, "m-1")],
        )
        .await
        .unwrap();
    let status = backend.status(vid).await.unwrap();
    assert_eq!((status.state, status.attempts), (DeliveryState::Sending, 2));
    assert_eq!(status.provider_message_id.as_deref(), Some("m-1"));

    assert!(!records.code_is_live(PHONE, vid).await.unwrap(), "no code");
    backend.issue(PHONE, vid).await;
    assert!(records.code_is_live(PHONE, vid).await.unwrap());
    assert!(!records.code_is_live(PHONE, Uuid::new_v4()).await.unwrap());
}
