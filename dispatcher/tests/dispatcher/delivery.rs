use std::time::Duration;

use serde_json::json;
use wiremock::{MockServer, ResponseTemplate, matchers::body_partial_json};

use otp_testkit::{eventually, wait_for};

use crate::helpers::{
    PHONE, SENDER, World, accepted, destinations, plivo_call, spawn_dispatcher, start,
};

#[tokio::test]
async fn one_job_gives_exactly_one_call_with_the_right_fields_and_auth() {
    let plivo = MockServer::start().await;
    plivo_call()
        .and(body_partial_json(json!({
            "src": SENDER, "dst": PHONE, "text": "Your code is 012345", "log": false,
        })))
        .respond_with(accepted("msg-1"))
        .expect(1)
        .mount(&plivo)
        .await;
    let (world, _dispatcher) = start(&plivo).await;

    let (job, status) = world.send_one(PHONE, "012345").await;
    assert_eq!(status.state.as_str(), "sent");
    assert_eq!(status.attempts, 1);
    assert_eq!(status.provider_message_id.as_deref(), Some("msg-1"));
    // Delivery reports find the verification through Plivo's message id, for a while longer
    // than the code lives.
    let key = world.keys().provider_message("plivo", "msg-1");
    let mapped: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut world.redis.clone())
        .await
        .unwrap();
    assert_eq!(mapped, Some(job.verification_id.to_string()));
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut world.redis.clone())
        .await
        .unwrap();
    assert!(ttl > 300 && ttl <= 300 + 3600, "{ttl}");
    plivo.verify().await;
}

/// The claim marks the record `sending` (attempt 1) in the same step: it says so while the
/// provider call is in flight, and `sent` after.
#[tokio::test]
async fn the_record_says_sending_while_the_provider_call_is_in_flight() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("msg-slow").set_delay(Duration::from_millis(1500)))
        .expect(1)
        .mount(&plivo)
        .await;
    let (world, _dispatcher) = start(&plivo).await;
    let job = world.job(PHONE, "012345", time::Duration::minutes(5));
    world.publish(&job).await;

    let during = wait_for(Duration::from_secs(5), || async {
        let status = world.status(job.verification_id).await.expect("record");
        (status.state.as_str() != "queued").then_some(status)
    });
    let during = during.await.expect("claimed within 5 s");
    assert_eq!((during.state.as_str(), during.attempts), ("sending", 1));
    let status = world
        .final_status(job.verification_id, Duration::from_secs(10))
        .await;
    assert_eq!(status.state.as_str(), "sent");
    assert_eq!(status.provider_message_id.as_deref(), Some("msg-slow"));
    plivo.verify().await;
}

#[tokio::test]
async fn the_status_callback_url_is_passed_to_plivo() {
    let plivo = MockServer::start().await;
    plivo_call()
        .and(body_partial_json(
            json!({ "url": "https://example.com/dlr", "method": "POST" }),
        ))
        .respond_with(accepted("msg-cb"))
        .expect(1)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let mut config = world.config(&plivo.uri());
    config.reports.sms_status_callback_url = Some("https://example.com/dlr".into());
    world.write_fingerprint(&config).await;
    let _dispatcher = spawn_dispatcher(config).await;
    let (_, status) = world.send_one(PHONE, "012345").await;
    assert_eq!(status.state.as_str(), "sent");
    plivo.verify().await;
}

#[tokio::test]
async fn a_500_and_a_429_are_retried_until_success() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&plivo)
        .await;
    plivo_call()
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(2)
        .mount(&plivo)
        .await;
    plivo_call()
        .respond_with(accepted("msg-2"))
        .expect(1)
        .with_priority(3)
        .mount(&plivo)
        .await;
    let (world, _dispatcher) = start(&plivo).await;

    let (_, status) = world.send_one(PHONE, "111111").await;
    assert_eq!(status.state.as_str(), "sent");
    assert_eq!(status.attempts, 3);
    plivo.verify().await;
}

/// The Plivo client and the retry loop together, on tokio's paused clock: the backoff sleeps take
/// no real time, and the recorded instants show the delays the dispatcher waited.
#[tokio::test(start_paused = true)]
async fn plivo_500_and_429_are_retried_with_growing_delays() {
    use otp_delivery::{
        outcome::Final,
        plivo::{PlivoClient, PlivoSettings},
        retry::{RetryPolicy, run_attempts},
    };
    use tokio::time::Instant;

    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&plivo)
        .await;
    plivo_call()
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(2)
        .mount(&plivo)
        .await;
    plivo_call()
        .respond_with(accepted("late"))
        .expect(1)
        .with_priority(3)
        .mount(&plivo)
        .await;
    let client = PlivoClient::new(PlivoSettings {
        base_url: plivo.uri(),
        auth_id: crate::helpers::AUTH_ID.into(),
        auth_token: crate::helpers::AUTH_TOKEN.to_owned().into(),
        sender: SENDER.into(),
        status_callback_url: None,
        connect_timeout: None,
        request_timeout: None,
    })
    .unwrap();
    let policy = RetryPolicy::new(
        Duration::from_secs(2),
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .unwrap()
    .without_jitter();

    let start = Instant::now();
    let mut attempts_at = Vec::new();
    let outcome = run_attempts(&policy, start + Duration::from_secs(300), |_| {
        attempts_at.push(start.elapsed());
        client.send(PHONE, "Your code is 123456")
    })
    .await;
    assert_eq!(
        outcome,
        Final::Sent {
            provider_id: Some("late".into()),
            attempts: 3
        }
    );
    let gaps: Vec<Duration> = attempts_at.windows(2).map(|w| w[1] - w[0]).collect();
    // Lower bounds only: while real I/O is awaited, the paused clock may also jump to the HTTP
    // pool's idle-reaper timer, which adds virtual time to a gap (never removes it).
    assert!(gaps[0] >= Duration::from_secs(2), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_secs(4), "{gaps:?}");
    assert!(gaps[1] > gaps[0], "delays grow: {gaps:?}");
    plivo.verify().await;
}

#[tokio::test]
async fn the_same_job_delivered_twice_gives_one_call() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("msg-3").set_delay(Duration::from_millis(300)))
        .expect(1)
        .mount(&plivo)
        .await;
    let (world, dispatcher) = start(&plivo).await;

    let job = world.job(PHONE, "222222", time::Duration::minutes(5));
    world.publish(&job).await;
    world.publish(&job).await;
    world
        .final_status(job.verification_id, Duration::from_secs(10))
        .await;
    // A third copy after the job ended is skipped too.
    world.publish(&job).await;
    dispatcher.wait_handled(3).await;
    assert_eq!(world.ready_messages().await, 0);
    plivo.verify().await;
}

#[tokio::test]
async fn two_dispatchers_on_one_queue_send_each_job_once() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("m").set_delay(Duration::from_millis(20)))
        .expect(30)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let a = spawn_dispatcher(world.config(&plivo.uri())).await;
    let b = spawn_dispatcher(world.config(&plivo.uri())).await;

    let mut jobs = Vec::new();
    for i in 0..30 {
        let job = world.job(
            &format!("+1415555{:04}", 2600 + i),
            "333333",
            time::Duration::minutes(5),
        );
        // Every job is published twice, so both dispatchers see duplicates.
        world.publish(&job).await;
        world.publish(&job).await;
        jobs.push(job);
    }
    for job in &jobs {
        world
            .final_status(job.verification_id, Duration::from_secs(20))
            .await;
    }
    // Each of the 60 copies decided by one dispatcher or the other.
    let decided = eventually(Duration::from_secs(10), || async {
        a.jobs_handled().await + b.jobs_handled().await == 60
    })
    .await;
    assert!(decided, "not every copy was handled");
    let mut dsts = destinations(&plivo).await;
    dsts.sort();
    let before = dsts.len();
    dsts.dedup();
    assert_eq!((before, dsts.len()), (30, 30));
    plivo.verify().await;
}

/// Acks go in batches (`multiple`) over runs of finished jobs: after a graceful stop every job
/// was acked, so nothing comes back to the queue when the connection closes.
#[tokio::test]
async fn jobs_finishing_out_of_order_are_all_acked_by_the_batches() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("m").set_delay(Duration::from_millis(30)))
        .expect(40)
        .mount(&plivo)
        .await;
    let (world, dispatcher) = start(&plivo).await;
    for i in 0..40 {
        let phone = format!("+1415555{:04}", 2700 + i);
        world
            .publish(&world.job(&phone, "444444", time::Duration::minutes(5)))
            .await;
    }
    dispatcher.wait_handled(40).await;
    dispatcher.stop().await;
    // Unacked messages would be ready again once the connection is closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.ready_messages().await, 0);
    plivo.verify().await;
}
