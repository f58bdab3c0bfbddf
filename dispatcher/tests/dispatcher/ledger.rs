//! The idempotency ledger on its own: claim, lease, lapse, outcome, and a reply it cannot read.

use std::time::Duration;

use otp_dispatcher::ledger::{Claim, Entry, Ledger};
use otp_shared::ledger::JobOutcome;
use uuid::Uuid;

use crate::helpers::World;

fn entry() -> Entry {
    Entry {
        verification_id: Uuid::new_v4(),
        job_id: Uuid::new_v4(),
    }
}

#[tokio::test]
async fn one_owner_at_a_time_until_the_lease_lapses_then_the_outcome_stands() {
    let world = World::new().await;
    let ledger = Ledger::new(
        world.redis.clone(),
        world.keys(),
        Duration::from_millis(500),
    );
    let (job, first, second) = (entry(), Uuid::new_v4(), Uuid::new_v4());

    assert_eq!(ledger.claim(job, first).await.unwrap(), Claim::Claimed);
    // The owner renews; anyone else is told how long to wait.
    assert_eq!(ledger.claim(job, first).await.unwrap(), Claim::Claimed);
    match ledger.claim(job, second).await.unwrap() {
        Claim::Busy(left) => assert!(left <= Duration::from_millis(500), "{left:?}"),
        other => panic!("{other:?}"),
    }
    // The first owner dies: its lease lapses and the second may claim.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(ledger.claim(job, second).await.unwrap(), Claim::Claimed);

    let sent = JobOutcome::Sent {
        provider: "plivo".into(),
        message_id: "m-1".into(),
    };
    ledger.finish(job, second, &sent).await.unwrap();
    for owner in [first, second, Uuid::new_v4()] {
        assert_eq!(
            ledger.claim(job, owner).await.unwrap(),
            Claim::Done(sent.clone())
        );
    }
}

#[tokio::test]
async fn a_first_send_whose_record_is_gone_is_withdrawn() {
    let world = World::new().await;
    let ledger = Ledger::new(world.redis.clone(), world.keys(), Duration::from_secs(5));
    assert_eq!(
        ledger.claim_send(entry(), Uuid::new_v4()).await.unwrap(),
        Claim::Withdrawn
    );
}

#[tokio::test]
async fn an_outcome_it_cannot_read_is_an_error_not_a_guess() {
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
