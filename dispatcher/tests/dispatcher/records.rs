//! The worker's view of the delivery record and the code's liveness, on both backends.

use std::sync::Arc;

use otp_delivery::records::{JobRecords, MemoryJobRecords, RedisJobRecords};
use otp_shared::{memory::DeliveryRecords, status::DeliveryState};
use uuid::Uuid;

use crate::helpers::{PHONE, World};

#[tokio::test]
async fn redis_records_write_the_state_and_read_the_live_code() {
    let world = World::new().await;
    let records = RedisJobRecords {
        conn: world.redis.clone(),
        keys: world.keys(),
    };
    let vid = Uuid::new_v4();
    records
        .record(vid, DeliveryState::Sending, 2, &[("reason", "x")])
        .await
        .unwrap();
    let status = world.status(vid).await.unwrap();
    assert_eq!((status.state, status.attempts), (DeliveryState::Sending, 2));

    assert!(!records.code_is_live(PHONE, vid).await.unwrap(), "no code");
    let _: () = redis::cmd("HSET")
        .arg(world.keys().code(PHONE))
        .arg("vid")
        .arg(vid.to_string())
        .query_async(&mut world.redis.clone())
        .await
        .unwrap();
    assert!(records.code_is_live(PHONE, vid).await.unwrap());
    assert!(!records.code_is_live(PHONE, Uuid::new_v4()).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn memory_records_write_the_state_and_ask_the_code_store() {
    let live = Uuid::new_v4();
    let records = MemoryJobRecords {
        records: DeliveryRecords::default(),
        live: Arc::new(move |number: &str, vid| number == PHONE && vid == live),
    };
    let vid = Uuid::new_v4();
    records
        .record(vid, DeliveryState::Failed, 3, &[])
        .await
        .unwrap();
    let status = records.records.load(vid).unwrap();
    assert_eq!((status.state, status.attempts), (DeliveryState::Failed, 3));
    assert!(records.code_is_live(PHONE, live).await.unwrap());
    assert!(!records.code_is_live(PHONE, vid).await.unwrap());
}
