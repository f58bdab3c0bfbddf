use std::time::Duration;

use lapin::types::FieldTable;
use wiremock::{MockServer, ResponseTemplate};

use otp_shared::{amqp::job_properties, crypto::JobKey, job::SendJob};

use crate::helpers::{PHONE, plivo_call, start};

#[tokio::test]
async fn a_400_is_not_retried_and_the_job_is_dead_lettered_with_a_reason() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(serde_json::json!({"error": "invalid dst +1 (415) 555-2671"})),
        )
        .expect(1)
        .mount(&plivo)
        .await;
    let (world, dispatcher) = start(&plivo).await;
    let events = world.bind_events().await;

    let (job, status) = world.send_one(PHONE, "444444").await;
    assert_eq!((status.state.as_str(), status.attempts), ("failed", 1));
    // A `failed` event says why, in the dead-letter reasons' words.
    let failed = world
        .events_of(&events, job.verification_id, "failed")
        .await;
    let failed = failed.last().expect("a failed event");
    assert_eq!(failed["type"], "failed");
    assert_eq!(failed["reason"], "rejected");
    assert_eq!(failed["provider"], "plivo");
    let (body, reason) = world.dead_letter(Duration::from_secs(5)).await;
    assert_eq!(body, job.to_bytes());
    // A fixed text: the provider's words (which quote the number) stay out of it.
    assert_eq!(reason.as_deref(), Some("plivo answered 400"));
    dispatcher.wait_handled(1).await;
    plivo.verify().await;
}

#[tokio::test]
async fn a_redirect_is_not_followed_so_the_text_never_goes_elsewhere() {
    let elsewhere = MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&elsewhere)
        .await;
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/steal", elsewhere.uri())),
        )
        .expect(1)
        .mount(&plivo)
        .await;
    let (world, _dispatcher) = start(&plivo).await;
    let (_, status) = world.send_one(PHONE, "909090").await;
    assert_eq!(status.state.as_str(), "failed");
    let (_, reason) = world.dead_letter(Duration::from_secs(5)).await;
    assert_eq!(reason.as_deref(), Some("plivo answered 307"));
    elsewhere.verify().await;
}

#[tokio::test]
async fn a_huge_provider_answer_is_cut_off_and_still_classified() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(400).set_body_bytes(vec![b'x'; 8 * 1024 * 1024]))
        .expect(1)
        .mount(&plivo)
        .await;
    let (world, _dispatcher) = start(&plivo).await;
    let (_, status) = world.send_one(PHONE, "818181").await;
    assert_eq!(status.state.as_str(), "failed");
    let (_, reason) = world.dead_letter(Duration::from_secs(5)).await;
    assert_eq!(reason.as_deref(), Some("plivo answered 400"));
}

#[tokio::test]
async fn a_401_fails_permanently() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&plivo)
        .await;
    let (world, _dispatcher) = start(&plivo).await;
    let (_, status) = world.send_one(PHONE, "444444").await;
    assert_eq!(status.state.as_str(), "failed");
    let (_, reason) = world.dead_letter(Duration::from_secs(5)).await;
    assert!(reason.unwrap().contains("401"));
}

#[tokio::test]
async fn a_job_past_its_expiry_makes_no_call() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&plivo)
        .await;
    let (world, _dispatcher) = start(&plivo).await;

    let job = world.job(PHONE, "555555", time::Duration::seconds(-1));
    world.publish(&job).await;
    let status = world
        .final_status(job.verification_id, Duration::from_secs(10))
        .await;
    assert_eq!((status.state.as_str(), status.attempts), ("expired", 0));
    plivo.verify().await;
}

#[tokio::test]
async fn retrying_stops_when_the_code_expires() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(503))
        .mount(&plivo)
        .await;
    let (world, dispatcher) = start(&plivo).await;

    let job = world.job(PHONE, "555555", time::Duration::seconds(2));
    world.publish(&job).await;
    let status = world
        .final_status(job.verification_id, Duration::from_secs(10))
        .await;
    assert_eq!(status.state.as_str(), "expired");
    let calls = plivo.received_requests().await.unwrap().len();
    assert!(calls >= 2, "retried {calls} times");
    dispatcher.wait_handled(1).await;
    assert_eq!(
        plivo.received_requests().await.unwrap().len(),
        calls,
        "no call after expiry"
    );
    assert_eq!(world.ready_messages().await, 0);
}

#[tokio::test]
async fn malformed_and_undecryptable_messages_are_dead_lettered() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&plivo)
        .await;
    let (world, dispatcher) = start(&plivo).await;

    world
        .publish_raw(b"{not json", job_properties("bad-1", FieldTable::default()))
        .await;
    let (body, reason) = world.dead_letter(Duration::from_secs(5)).await;
    assert_eq!(body, b"{not json");
    assert!(reason.unwrap().contains("malformed"));

    let other_key = JobKey::from_base64("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let foreign = SendJob::seal(
        &other_key,
        uuid::Uuid::new_v4(),
        &otp_shared::phone::PhoneNumber::parse(PHONE).unwrap(),
        "666666",
        "{code}",
        now,
        now + time::Duration::minutes(5),
    );
    world.publish(&foreign).await;
    let (_, reason) = world.dead_letter(Duration::from_secs(5)).await;
    assert!(reason.unwrap().contains("decrypted"));
    dispatcher.wait_handled(2).await;
    assert_eq!(world.ready_messages().await, 0);
    plivo.verify().await;
}

#[tokio::test]
async fn a_job_the_api_withdrew_makes_no_call() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&plivo)
        .await;
    let (world, dispatcher) = start(&plivo).await;

    let job = world.job(PHONE, "676767", time::Duration::minutes(5));
    world.publish_unannounced(&job).await;
    assert_eq!(
        world.outcome(&job, Duration::from_secs(10)).await,
        "withdrawn"
    );
    assert!(world.status(job.verification_id).await.is_none());
    dispatcher.wait_handled(1).await;
    assert_eq!(world.ready_messages().await, 0);
    plivo.verify().await;
}
