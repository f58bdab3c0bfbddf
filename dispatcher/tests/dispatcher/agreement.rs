//! Settings that must agree: a dispatcher whose REDIS_KEY_PREFIX or SMS_QUEUE differs from the
//! API's does not consume, says why on /readyz and `otp_config_mismatch`, and sends nothing;
//! its jobs wait in the queue until a dispatcher with the right settings takes them.

use std::time::Duration;

use otp_testkit::eventually;
use serde_json::json;
use wiremock::MockServer;

use crate::{
    end_to_end::{api_config, spawn_api_with},
    helpers::{
        PHONE, World, accepted, launch_dispatcher, plivo_call, spawn_dispatcher, wait_api_ready,
    },
};

/// Waits until the dispatcher's /readyz is 503 and names `setting`.
async fn wait_not_ready_naming(dispatcher: &crate::helpers::Running, setting: &str) {
    let named = eventually(Duration::from_secs(15), || async {
        let (status, body) = dispatcher.readiness().await;
        status == 503 && body.contains(setting)
    });
    assert!(
        named.await,
        "/readyz does not name {setting}: {:?}",
        dispatcher.readiness().await
    );
}

#[tokio::test]
async fn a_dispatcher_on_another_key_prefix_sends_nothing_until_it_is_set_right() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("agreed"))
        .expect(1)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let mut wrong = world.config(&plivo.uri());
    // Under the world's prefix, so the test's cleanup removes what it writes.
    wrong.redis.redis_key_prefix = format!("{}elsewhere:", world.prefix);
    let dispatcher = spawn_dispatcher(wrong).await;

    let job = world.job(PHONE, "424242", time::Duration::minutes(5));
    world.publish(&job).await;
    wait_not_ready_naming(&dispatcher, "REDIS_KEY_PREFIX").await;
    assert_eq!(dispatcher.metric("otp_config_mismatch").await, 1.0);
    // Put back, not acked as withdrawn: the job waits and nothing was sent.
    let back = eventually(Duration::from_secs(10), || async {
        world.ready_messages().await == 1
    });
    assert!(back.await, "the job is not back in the queue");
    assert_eq!(dispatcher.jobs_handled().await, 0);
    assert!(plivo.received_requests().await.unwrap().is_empty());
    dispatcher.stop().await;

    let dispatcher = spawn_dispatcher(world.config(&plivo.uri())).await;
    let status = world
        .final_status(job.verification_id, Duration::from_secs(15))
        .await;
    assert_eq!(status.state.as_str(), "sent");
    assert_eq!(dispatcher.metric("otp_config_mismatch").await, 0.0);
    dispatcher.wait_handled(1).await;
    plivo.verify().await;
}

#[tokio::test]
async fn a_dispatcher_on_another_queue_is_not_ready_and_the_api_shows_no_consumer() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("agreed"))
        .expect(1)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let http = reqwest::Client::new();
    let (base, _api) = spawn_api_with(api_config(&world)).await;
    wait_api_ready(&http, &base).await;
    let consumers = || async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = format!("otp_queue_consumers{{queue=\"{}\"}}", world.queue);
        otp_testkit::metric_value(&text, &series)
    };

    let mut wrong = world.config(&plivo.uri());
    let other_queue = format!("{}.other", world.queue);
    wrong.amqp.sms_queue = other_queue.clone();
    let dispatcher = launch_dispatcher(wrong).await;
    wait_not_ready_naming(&dispatcher, "SMS_QUEUE").await;
    assert_eq!(dispatcher.metric("otp_config_mismatch").await, 1.0);
    let resp = http
        .post(format!("{base}/api/otp/request"))
        .json(&json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // The API sees that nobody takes its jobs (refreshed every 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(consumers().await, 0.0);
    assert_eq!(world.ready_messages().await, 1);
    dispatcher.stop().await;
    for queue in [other_queue.clone(), format!("{other_queue}.dead")] {
        let _ = world
            .channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }

    // The right dispatcher takes the waiting job, and the API counts it.
    let dispatcher = spawn_dispatcher(world.config(&plivo.uri())).await;
    dispatcher.wait_handled(1).await;
    let counted = eventually(Duration::from_secs(10), || async {
        consumers().await == 1.0
    });
    assert!(counted.await, "the API does not count the consumer");
    plivo.verify().await;
}
