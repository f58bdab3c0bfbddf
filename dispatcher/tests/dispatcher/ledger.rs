//! The idempotency ledger's rules, checked once against both ledgers
//! (`otp_testkit::conformance!`): `Ledger` (Redis, shared by
//! every dispatcher) and `MemoryLedger` (this process, on tokio's paused clock): claim, lease,
//! lapse, outcome, the withdrawn check and the `sending` / `sent` marks.

use std::time::Duration;

use otp_delivery::ledger::{Claim, Entry, Ledger, MemoryLedger, SendLedger, SentRecord};
use otp_shared::{
    ledger::JobOutcome,
    memory::DeliveryRecords,
    status::{self, DeliveryState, DeliveryStatus, FIELD_PROVIDER_ID},
};
use uuid::Uuid;

use crate::helpers::World;

/// A ledger and the delivery records beside it.
enum Backend {
    Redis(Box<World>),
    Memory(DeliveryRecords),
}

impl Backend {
    fn ledger(&self, lease: Duration) -> Box<dyn SendLedger> {
        match self {
            Self::Redis(world) => Box::new(Ledger::new(world.redis.clone(), world.keys(), lease)),
            Self::Memory(records) => Box::new(MemoryLedger::new(records.clone(), lease)),
        }
    }

    async fn queued(&self, verification_id: Uuid) {
        match self {
            Self::Redis(world) => status::record(
                &mut world.redis.clone(),
                &world.keys(),
                verification_id,
                DeliveryState::Queued,
                0,
                &[],
            )
            .await
            .unwrap(),
            Self::Memory(records) => records.record(verification_id, DeliveryState::Queued, 0, &[]),
        }
    }

    async fn status(&self, verification_id: Uuid) -> Option<DeliveryStatus> {
        match self {
            Self::Redis(world) => world.status(verification_id).await,
            Self::Memory(records) => records.load(verification_id),
        }
    }
}

async fn on_redis() -> Backend {
    Backend::Redis(Box::new(World::new().await))
}

async fn in_memory() -> Backend {
    Backend::Memory(DeliveryRecords::default())
}

otp_testkit::conformance!(
    shared: on_redis, in_memory: in_memory;
    one_owner_at_a_time_until_the_lease_lapses_then_the_outcome_stands,
    a_first_send_whose_record_is_gone_is_withdrawn,
    a_first_send_is_marked_sending_then_sent,
);

fn entry() -> Entry {
    Entry {
        verification_id: Uuid::new_v4(),
        job_id: Uuid::new_v4(),
    }
}

async fn one_owner_at_a_time_until_the_lease_lapses_then_the_outcome_stands(backend: Backend) {
    let lease = Duration::from_millis(500);
    let ledger = backend.ledger(lease);
    let (job, first, second) = (entry(), Uuid::new_v4(), Uuid::new_v4());

    assert_eq!(ledger.claim(job, first).await.unwrap(), Claim::Claimed);
    // The owner renews; anyone else is told how long to wait.
    let renewed = tokio::time::Instant::now();
    assert_eq!(ledger.claim(job, first).await.unwrap(), Claim::Claimed);
    let claim = ledger.claim(job, second).await.unwrap();
    // (Unless the machine took the whole lease to get here: then the lease lapsed.)
    if renewed.elapsed() < lease {
        match claim {
            Claim::Busy(left) => assert!(left <= lease, "{left:?}"),
            other => panic!("{other:?}"),
        }
        // The first owner dies: its lease lapses and the second may claim.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(ledger.claim(job, second).await.unwrap(), Claim::Claimed);
    }
    // A release frees it at once.
    ledger.release(job, second).await.unwrap();
    assert_eq!(ledger.claim(job, first).await.unwrap(), Claim::Claimed);

    let sent = JobOutcome::Sent {
        provider: "plivo".into(),
        message_id: "m-1".into(),
    };
    ledger.finish(job, first, &sent).await.unwrap();
    for owner in [first, second, Uuid::new_v4()] {
        assert_eq!(
            ledger.claim(job, owner).await.unwrap(),
            Claim::Done(sent.clone())
        );
    }
    drop(backend);
}

async fn a_first_send_whose_record_is_gone_is_withdrawn(backend: Backend) {
    let ledger = backend.ledger(Duration::from_secs(5));
    let job = entry();
    assert_eq!(
        ledger.claim_send(job, Uuid::new_v4()).await.unwrap(),
        Claim::Withdrawn
    );
    assert_eq!(backend.status(job.verification_id).await, None);
}

async fn a_first_send_is_marked_sending_then_sent(backend: Backend) {
    let ledger = backend.ledger(Duration::from_secs(5));
    let (job, owner) = (entry(), Uuid::new_v4());
    backend.queued(job.verification_id).await;
    assert_eq!(ledger.claim_send(job, owner).await.unwrap(), Claim::Claimed);
    let status = backend.status(job.verification_id).await.unwrap();
    assert_eq!((status.state, status.attempts), (DeliveryState::Sending, 1));

    let sent = SentRecord {
        provider: "plivo",
        provider_message_id: Uuid::new_v4().to_string(),
        mapping_ttl_seconds: 60,
        sealed: None,
        sealed_ttl_seconds: 60,
        status: Some(vec![
            ("attempts", "2".into()),
            (FIELD_PROVIDER_ID, "m-2".into()),
        ]),
    };
    let outcome = JobOutcome::Sent {
        provider: "plivo".into(),
        message_id: "m-2".into(),
    };
    ledger
        .finish_sent(job, owner, &outcome, &sent)
        .await
        .unwrap();
    let status = backend.status(job.verification_id).await.unwrap();
    assert_eq!((status.state, status.attempts), (DeliveryState::Sent, 2));
    assert_eq!(status.provider_message_id.as_deref(), Some("m-2"));
    assert_eq!(
        ledger.claim(job, Uuid::new_v4()).await.unwrap(),
        Claim::Done(outcome)
    );
}

#[tokio::test]
async fn an_outcome_the_redis_ledger_cannot_read_is_an_error_not_a_guess() {
    let world = World::new().await;
    let ledger = Ledger::new(world.redis.clone(), world.keys(), Duration::from_secs(5));
    let job = entry();
    let _: () = redis::cmd("SET")
        .arg(world.keys().job_outcome(job.verification_id, job.job_id))
        .arg("delivered-maybe")
        .query_async(&mut world.redis.clone())
        .await
        .unwrap();
    let err = ledger.claim(job, Uuid::new_v4()).await.unwrap_err();
    assert!(err.to_string().contains("delivered-maybe"), "{err}");
}
