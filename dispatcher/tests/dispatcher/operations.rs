use std::{process::Stdio, time::Duration};

use tokio::time::Instant;
use wiremock::{MockServer, ResponseTemplate};

use otp_delivery::limiter::{RateLimiter, SendRate};
use otp_testkit::{Proxy, eventually};

use crate::helpers::{PHONE, World, accepted, plivo_call, spawn_dispatcher};

async fn wait_for_calls(plivo: &MockServer, n: usize, within: Duration) {
    let called = eventually(within, || async {
        plivo.received_requests().await.unwrap().len() >= n
    });
    assert!(called.await, "fewer than {n} calls within {within:?}");
}

#[tokio::test]
async fn a_dispatcher_killed_mid_send_leaves_the_job_to_another_which_sends_it_once() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&plivo)
        .await;
    plivo_call()
        .respond_with(accepted("after-crash"))
        .expect(1)
        .with_priority(2)
        .mount(&plivo)
        .await;
    let world = World::new().await;

    // Dispatcher A is a real process: it gets a 500, schedules a long retry, and is killed.
    let mut a = world
        .process(&plivo.uri())
        .env("RETRY_MIN_DELAY_MS", "60000")
        .env("RETRY_MAX_DELAY_MS", "60000")
        .env("JOB_LEASE_SECONDS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("otp-dispatcher starts");
    let job = world.job(PHONE, "777777", time::Duration::minutes(5));
    world.publish(&job).await;
    wait_for_calls(&plivo, 1, Duration::from_secs(20)).await;
    a.kill().await.expect("kill -9");

    // Dispatcher B gets the redelivered job once A's lease lapses, and sends it exactly once.
    let b = spawn_dispatcher(world.config(&plivo.uri())).await;
    let status = world
        .final_status(job.verification_id, Duration::from_secs(20))
        .await;
    assert_eq!(status.state.as_str(), "sent");
    assert_eq!(status.provider_message_id.as_deref(), Some("after-crash"));
    b.wait_handled(1).await;
    plivo.verify().await;
}

#[tokio::test]
async fn consumption_resumes_after_a_broker_restart() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("m"))
        .expect(2)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut config = world.config(&plivo.uri());
    config.amqp.amqp_url = format!("amqp://guest:guest@{}/%2f", proxy.addr)
        .parse()
        .unwrap();
    let dispatcher = spawn_dispatcher(config).await;

    let first = world.job(PHONE, "888888", time::Duration::minutes(5));
    world.publish(&first).await;
    world
        .final_status(first.verification_id, Duration::from_secs(10))
        .await;

    proxy.refuse();
    let noticed = eventually(Duration::from_secs(10), || async {
        dispatcher.readyz().await != 200
    });
    assert!(noticed.await, "outage not noticed");
    let second = world.job("+14155550100", "999999", time::Duration::minutes(5));
    world.publish(&second).await;
    // The job waits in the queue while the dispatcher is cut off from the broker.
    assert_eq!(world.ready_messages().await, 1);
    proxy.accept();

    let status = world
        .final_status(second.verification_id, Duration::from_secs(30))
        .await;
    assert_eq!(status.state.as_str(), "sent");
    dispatcher.wait_ready().await;
    plivo.verify().await;
}

#[tokio::test]
async fn sending_resumes_after_a_redis_restart() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("m"))
        .expect(2)
        .mount(&plivo)
        .await;
    let world = World::on_single_redis().await;
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let mut config = world.config(&plivo.uri());
    config.redis.redis_url = Some(format!("redis://{}/0", proxy.addr).into());
    config.redis.redis_cluster = false;
    let dispatcher = spawn_dispatcher(config).await;

    let first = world.job(PHONE, "131313", time::Duration::minutes(5));
    world.publish(&first).await;
    world
        .final_status(first.verification_id, Duration::from_secs(10))
        .await;

    proxy.refuse();
    let second = world.job("+14155550100", "141414", time::Duration::minutes(5));
    world.publish(&second).await;
    let noticed = eventually(Duration::from_secs(10), || async {
        dispatcher.readyz().await != 200
    })
    .await;
    assert!(noticed, "the Redis outage was not noticed");
    proxy.accept();

    let status = world
        .final_status(second.verification_id, Duration::from_secs(30))
        .await;
    assert_eq!(status.state.as_str(), "sent");
    plivo.verify().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_sends_finish_and_stops_consuming() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("slow").set_delay(Duration::from_millis(800)))
        .expect(1)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let dispatcher = spawn_dispatcher(world.config(&plivo.uri())).await;
    let job = world.job(PHONE, "121212", time::Duration::minutes(5));
    world.publish(&job).await;
    wait_for_calls(&plivo, 1, Duration::from_secs(10)).await;

    dispatcher.stop().await;
    let status = world.status(job.verification_id).await.unwrap();
    assert_eq!(status.state.as_str(), "sent");
    let later = world.job(PHONE, "343434", time::Duration::minutes(5));
    world.publish(&later).await;
    let queued = eventually(Duration::from_secs(5), || async {
        world.ready_messages().await == 1
    })
    .await;
    assert!(queued, "a stopped dispatcher consumes nothing");
    plivo.verify().await;
}

#[tokio::test]
async fn jobs_unfinished_after_the_grace_period_go_back_to_the_queue() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(503))
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let mut config = world.config(&plivo.uri());
    config.process.shutdown_grace_seconds = 1;
    config.delivery.retry.retry_min_delay_ms = 5_000;
    config.delivery.retry.retry_max_delay_ms = 5_000;
    let dispatcher = spawn_dispatcher(config).await;
    let job = world.job(PHONE, "565656", time::Duration::minutes(5));
    world.publish(&job).await;
    wait_for_calls(&plivo, 1, Duration::from_secs(10)).await;

    let started = Instant::now();
    let readyz = format!("http://{}/readyz", dispatcher.health);
    let stopping = tokio::spawn(dispatcher.stop());
    // Not ready at once, while the job in flight has its grace period.
    let not_ready = eventually(Duration::from_millis(500), || async {
        let answer = reqwest::get(&readyz)
            .await
            .expect("the health port still answers");
        answer.status().as_u16() == 503 && answer.text().await.unwrap().contains("stopping")
    });
    assert!(
        not_ready.await,
        "/readyz is 503 (stopping) during the grace period"
    );
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(6));
    let back = eventually(Duration::from_secs(5), || async {
        world.ready_messages().await == 1
    })
    .await;
    assert!(back, "the job was not lost");
}

#[tokio::test]
async fn the_provider_rate_is_shared_by_every_dispatcher() {
    let world = World::new().await;
    let conn = otp_testkit::redis_conn;
    let one = RateLimiter::new(conn(), &world.keys(), 2);
    let other = RateLimiter::new(conn(), &world.keys(), 2);
    let now = Instant::now() + Duration::from_millis(100);
    // Two tokens (one second's worth) between both, then nothing until the bucket refills.
    assert!(one.acquire(now).await.unwrap());
    assert!(other.acquire(now).await.unwrap());
    assert!(!one.acquire(now).await.unwrap());
    assert!(!other.acquire(now).await.unwrap());
    // Waiting is allowed when the deadline leaves room: the next token comes within ~500 ms.
    let before = Instant::now();
    assert!(
        one.acquire(Instant::now() + Duration::from_secs(2))
            .await
            .unwrap()
    );
    assert!(before.elapsed() >= Duration::from_millis(300));
}

/// Queue arguments apply when a queue is created: a queue made with others (by an older version,
/// or before QUEUE_REPLICAS changed) is used as it is, jobs and all, not refused.
#[tokio::test]
async fn a_queue_made_with_other_arguments_is_used_as_it_is() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("m"))
        .expect(1)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let job = world.job(PHONE, "151515", time::Duration::minutes(5));
    world.publish(&job).await;
    let mut config = world.config(&plivo.uri());
    config.amqp.queue_replicas = 1;
    let dispatcher = spawn_dispatcher(config).await;
    let status = world
        .final_status(job.verification_id, Duration::from_secs(10))
        .await;
    assert_eq!(status.state.as_str(), "sent");
    assert_eq!(dispatcher.readyz().await, 200);
    plivo.verify().await;
}

/// The dead-letter queue's delivery limit is explicit: RabbitMQ 4.x's default (20) would drop
/// dead letters after 20 `dlq list`s, each of which returns every message it shows.
#[tokio::test]
async fn the_dead_letter_queue_survives_listing() {
    let world = World::new().await;
    let listing = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "arguments",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let dead = format!("{}.dead", world.queue);
    let arguments = listing
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{dead}\t")))
        .unwrap_or_else(|| panic!("{dead} is not listed: {listing}"));
    let limit = format!(
        "{{\"x-delivery-limit\",{}}}",
        otp_shared::amqp::DEAD_DELIVERY_LIMIT
    );
    assert!(arguments.contains(&limit), "{arguments}");
}

#[tokio::test]
async fn health_endpoints_answer() {
    let plivo = MockServer::start().await;
    let world = World::new().await;
    let dispatcher = spawn_dispatcher(world.config(&plivo.uri())).await;
    let healthz = reqwest::get(format!("http://{}/healthz", dispatcher.health))
        .await
        .unwrap();
    assert_eq!(healthz.status().as_u16(), 200);
    assert_eq!(dispatcher.readyz().await, 200);
}

/// Three dispatchers reserve 60 slots at 20/s between them: one second's burst (20) at once,
/// the other 40 every 50 ms, so the last slot is 2 s after the first. The check reads the slots
/// Redis hands out (each bounded by when its call started and returned), not how long a run
/// took, so a loaded machine cannot fail it.
#[tokio::test]
async fn three_dispatchers_share_the_cap() {
    let world = World::new().await;
    let limiters: Vec<RateLimiter> = (0..3)
        .map(|_| RateLimiter::new(otp_testkit::redis_conn(), &world.keys(), 20))
        .collect();
    let reservations = limiters.iter().map(|limiter| async move {
        let mut slots = Vec::new();
        for _ in 0..20 {
            let start = Instant::now();
            let wait = limiter.reserve(Duration::from_secs(10)).await.unwrap();
            let wait = wait.expect("every slot is within 10 s");
            slots.push((start, Instant::now(), wait));
        }
        slots
    });
    let slots: Vec<_> = futures_util::future::join_all(reservations)
        .await
        .into_iter()
        .flatten()
        .collect();
    // The first slot was read between the earliest start and the earliest return.
    let first_start = slots.iter().map(|s| s.0).min().unwrap();
    let first_end = slots.iter().map(|s| s.1).min().unwrap();
    let last_call = slots.iter().map(|s| s.1).max().unwrap();
    let latest_from = slots
        .iter()
        .map(|(start, _, wait)| *start + *wait)
        .max()
        .unwrap();
    let latest_to = slots
        .iter()
        .map(|(_, end, wait)| *end + *wait)
        .max()
        .unwrap();
    let (two_seconds, slack) = (Duration::from_secs(2), Duration::from_millis(1));
    // The cap held: 60 slots cannot end sooner than 2 s after the first.
    assert!(
        latest_to + slack >= first_start + two_seconds,
        "the last slot came {:?} after the first",
        latest_to - first_start
    );
    // And no slot was lost between the three: when all 60 calls fit in the burst's second,
    // the schedule is exact, so the last slot is 2 s after the first, not later.
    if last_call - first_start < Duration::from_secs(1) {
        assert!(
            latest_from <= first_end + two_seconds + slack,
            "the last slot came {:?} after the first",
            latest_from - first_start
        );
    }
}
