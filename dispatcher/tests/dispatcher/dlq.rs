//! `otp-dispatcher dlq list | replay | purge`, the real binary against the real broker.

use std::time::Duration;

use lapin::{
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use time::OffsetDateTime;
use wiremock::{MockServer, ResponseTemplate};

use otp_shared::{
    amqp::{
        ATTEMPTS_HEADER, DEAD_AT_HEADER, DEAD_REASON_HEADER, Topology, job_properties, long_string,
    },
    job::SendJob,
};
use otp_testkit::eventually;

use crate::helpers::{PHONE, World, accepted, plivo_call, start};

/// Runs `otp-dispatcher dlq <args>` for this world; returns (success, stdout, stderr).
async fn dlq(world: &World, args: &[&str]) -> (bool, String, String) {
    let out = world
        .process("http://127.0.0.1:9")
        .arg("dlq")
        .args(args)
        .output()
        .await
        .expect("otp-dispatcher dlq runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Puts `body` in the world's dead-letter queue as the dispatcher would, dead `age` ago.
async fn dead_letter(world: &World, body: &[u8], message_id: &str, age: time::Duration) {
    let mut headers = FieldTable::default();
    headers.insert(
        DEAD_REASON_HEADER.into(),
        long_string("plivo answered 400: invalid dst"),
    );
    let at = (OffsetDateTime::now_utc() - age).unix_timestamp();
    headers.insert(DEAD_AT_HEADER.into(), long_string(&at.to_string()));
    headers.insert(ATTEMPTS_HEADER.into(), long_string("1"));
    let topology = Topology::new(&world.queue);
    let confirm = world
        .channel
        .basic_publish(
            topology.dead_exchange.as_str().into(),
            topology.dead_queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            job_properties(message_id, headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

/// Messages a command left unacknowledged return to the queue when its channel closes, which
/// the broker completes a moment later: wait (bounded) for the count to settle.
async fn assert_dead_count(world: &World, expected: u32) {
    eventually(Duration::from_secs(5), || async {
        dead_count(world).await == expected
    })
    .await;
    assert_eq!(dead_count(world).await, expected, "dead letters");
}

async fn dead_count(world: &World) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let dead = Topology::new(&world.queue).dead_queue;
    world
        .channel
        .queue_declare(dead.as_str().into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

#[tokio::test]
async fn list_shows_ids_reasons_and_attempts_never_a_number_or_code_and_keeps_everything() {
    let world = World::new().await;
    let job = world.job(PHONE, "246810", time::Duration::minutes(5));
    dead_letter(
        &world,
        &job.to_bytes(),
        &job.job_id.to_string(),
        time::Duration::ZERO,
    )
    .await;
    dead_letter(&world, b"{not json", "junk", time::Duration::ZERO).await;

    let (ok, out, err) = dlq(&world, &["list"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let line = lines
        .iter()
        .find(|l| l.contains(&job.job_id.to_string()))
        .expect(&out);
    assert!(line.contains(&format!("verification={}", job.verification_id)));
    assert!(line.contains("attempts=1") && line.contains("reason=plivo answered 400"));
    assert!(lines.iter().any(|l| l.starts_with("-  ")), "{out}");
    assert!(!out.contains("246810") && !out.contains(PHONE.trim_start_matches('+')));

    let (ok, out, _) = dlq(&world, &["list", "--json", "--limit", "1"]).await;
    assert!(ok);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["reason"].is_string() && rows[0].get("deadLetteredAt").is_some());

    // Listing takes nothing away.
    assert_dead_count(&world, 2).await;
}

#[tokio::test]
async fn a_replayed_job_is_sent_once_and_a_sent_job_is_never_sent_again() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(400))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&plivo)
        .await;
    plivo_call()
        .respond_with(accepted("after-replay"))
        .expect(1)
        .with_priority(2)
        .mount(&plivo)
        .await;
    let (world, dispatcher) = start(&plivo).await;
    let (job, status) = world.send_one(PHONE, "135790").await;
    assert_eq!(status.state.as_str(), "failed");
    assert_dead_count(&world, 1).await;

    let id = job.job_id.to_string();
    let (dry, out, _) = dlq(&world, &["replay", &id, "--dry-run"]).await;
    assert!(dry && out.contains("would be replayed"), "{out}");
    assert_dead_count(&world, 1).await;

    let (ok, out, err) = dlq(&world, &["replay", &id]).await;
    assert!(ok && out.contains("replayed"), "{out} {err}");
    let status = wait_for_state(&world, &job, "sent").await;
    assert_eq!(status, "sent");
    assert_dead_count(&world, 0).await;

    // The job is gone from the dead-letter queue now.
    let (ok, _, err) = dlq(&world, &["replay", &id]).await;
    assert!(!ok && err.contains("not in the dead-letter queue"), "{err}");

    // A copy of the sent job replayed: the ledger keeps it from a second SMS.
    dead_letter(&world, &job.to_bytes(), &id, time::Duration::ZERO).await;
    let (ok, _, _) = dlq(&world, &["replay", "--all"]).await;
    assert!(ok);
    let outcome = world.outcome(&job, Duration::from_secs(5)).await;
    assert!(outcome.starts_with("sent:"), "{outcome}");
    // Failed, sent after the first replay, a duplicate after the second.
    dispatcher.wait_handled(3).await;
    plivo.verify().await;
}

#[tokio::test]
async fn expired_jobs_are_not_replayed_and_go_only_with_drop_expired() {
    let world = World::new().await;
    let job = world.job(PHONE, "112233", time::Duration::seconds(-5));
    dead_letter(
        &world,
        &job.to_bytes(),
        &job.job_id.to_string(),
        time::Duration::ZERO,
    )
    .await;

    let (ok, out, _) = dlq(&world, &["replay", "--all"]).await;
    assert!(
        ok && out.contains("code expired; not replayed; left in place"),
        "{out}"
    );
    assert_dead_count(&world, 1).await;
    assert_eq!(
        world.ready_messages().await,
        0,
        "nothing went to the send queue"
    );

    let (ok, out, _) = dlq(&world, &["replay", "--all", "--drop-expired"]).await;
    assert!(ok && out.contains("removed"), "{out}");
    assert_dead_count(&world, 0).await;
}

#[tokio::test]
async fn purge_removes_only_dead_letters_older_than_asked() {
    let world = World::new().await;
    let old = world.job(PHONE, "445566", time::Duration::minutes(5));
    let new = world.job(PHONE, "778899", time::Duration::minutes(5));
    dead_letter(&world, &old.to_bytes(), "old", time::Duration::days(2)).await;
    dead_letter(&world, &new.to_bytes(), "new", time::Duration::minutes(1)).await;

    let (ok, _, err) = dlq(&world, &["purge", "--older-than", "1d", "--dry-run"]).await;
    assert!(ok && err.contains("would purge 1 of 2"), "{err}");
    assert_dead_count(&world, 2).await;

    let (ok, _, err) = dlq(&world, &["purge", "--older-than", "1d"]).await;
    assert!(ok && err.contains("purged 1 of 2"), "{err}");
    let (_, out, _) = dlq(&world, &["list"]).await;
    assert!(out.contains(&new.job_id.to_string()) && !out.contains(&old.job_id.to_string()));

    let (ok, _, err) = dlq(&world, &["purge", "--older-than", "soon"]).await;
    assert!(!ok && err.contains("--older-than"), "{err}");
}

/// The job's delivery state once it is `state`, or after 5 s, whatever it is then.
async fn wait_for_state(world: &World, job: &SendJob, state: &str) -> String {
    let current = || async {
        let status = world.status(job.verification_id).await;
        status
            .map(|s| s.state.as_str().to_owned())
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(5), || async {
        current().await == state
    })
    .await;
    current().await
}
