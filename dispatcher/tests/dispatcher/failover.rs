//! A second provider behind circuit breakers: failover when Plivo fails, never when the number
//! is the problem, and still exactly one accepted send per job.

use std::{sync::Arc, time::Duration};

use wiremock::{MockServer, ResponseTemplate};

use std::sync::atomic::{AtomicU64, Ordering};

use otp_delivery::breaker::{
    Breaker, BreakerSettings, BreakerStore, Clock, MemoryBreakerStore, RedisBreakerStore, State,
};

use crate::helpers::{PHONE, World, plivo_call, spawn_dispatcher, twilio_call, twilio_created};

async fn both(
    world: &World,
    plivo: &MockServer,
    twilio: &MockServer,
) -> otp_dispatcher::config::Config {
    let mut config = world.config(&plivo.uri());
    config.delivery.providers.sms_providers = vec![
        otp_delivery::sender::SmsProvider::Plivo,
        otp_delivery::sender::SmsProvider::Twilio,
    ];
    config.delivery.providers.twilio_base_url = twilio.uri();
    config
}

#[tokio::test]
async fn when_plivo_keeps_failing_the_job_moves_to_twilio_and_is_sent_once() {
    let (plivo, twilio) = (MockServer::start().await, MockServer::start().await);
    plivo_call()
        .respond_with(ResponseTemplate::new(500))
        .expect(2)
        .mount(&plivo)
        .await;
    twilio_call()
        .respond_with(twilio_created("SM-failover"))
        .expect(1)
        .mount(&twilio)
        .await;
    let world = World::new().await;
    let mut config = both(&world, &plivo, &twilio).await;
    config.reports.twilio_status_callback_url = Some("https://otp.example.com/cb/twilio".into());
    world.write_fingerprint(&config).await;
    let dispatcher = spawn_dispatcher(config).await;

    let (job, status) = world.send_one(PHONE, "271828").await;
    assert_eq!(status.state.as_str(), "sent");
    assert_eq!(status.provider_message_id.as_deref(), Some("SM-failover"));
    let outcome = world.outcome(&job, Duration::from_secs(5)).await;
    assert_eq!(outcome, "sent:twilio:SM-failover");
    // Counted: one failover, one send by Twilio, none by Plivo.
    let metrics = reqwest::get(format!("http://{}/metrics", dispatcher.health))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (series, value) in [
        (r#"otp_failovers_total{from="plivo",to="twilio"}"#, 1.0),
        (r#"otp_failovers_total{from="twilio",to="plivo"}"#, 0.0),
        (r#"otp_sends_total{provider="twilio"}"#, 1.0),
        (r#"otp_sends_total{provider="plivo"}"#, 0.0),
    ] {
        assert_eq!(
            otp_testkit::metric_value(&metrics, series),
            value,
            "{series}"
        );
    }
    // Twilio's form carried the number and the text.
    let sent = &twilio.received_requests().await.unwrap()[0];
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&sent.body)
        .into_owned()
        .collect();
    assert!(form.contains(&("To".into(), PHONE.into())));
    assert!(
        form.iter()
            .any(|(k, v)| k == "Body" && v.contains("271828"))
    );
    plivo.verify().await;
    twilio.verify().await;
}

#[tokio::test]
async fn rejected_credentials_fail_over_at_once_but_a_bad_number_does_not() {
    let (plivo, twilio) = (MockServer::start().await, MockServer::start().await);
    plivo_call()
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&plivo)
        .await;
    twilio_call()
        .respond_with(twilio_created("SM-failover"))
        .expect(1)
        .mount(&twilio)
        .await;
    let world = World::new().await;
    let _dispatcher = spawn_dispatcher(both(&world, &plivo, &twilio).await).await;
    let (_, status) = world.send_one(PHONE, "314159").await;
    assert_eq!(status.state.as_str(), "sent");
    plivo.verify().await;
    twilio.verify().await;

    let (plivo, twilio) = (MockServer::start().await, MockServer::start().await);
    plivo_call()
        .respond_with(ResponseTemplate::new(400))
        .expect(1)
        .mount(&plivo)
        .await;
    twilio_call()
        .respond_with(twilio_created("SM-failover"))
        .expect(0)
        .mount(&twilio)
        .await;
    let world = World::new().await;
    let _dispatcher = spawn_dispatcher(both(&world, &plivo, &twilio).await).await;
    let (_, status) = world.send_one(PHONE, "161803").await;
    assert_eq!(status.state.as_str(), "failed");
    plivo.verify().await;
    twilio.verify().await;
}

#[tokio::test]
async fn an_open_breaker_sends_jobs_straight_to_the_next_provider() {
    let (plivo, twilio) = (MockServer::start().await, MockServer::start().await);
    // Two failures open Plivo's breaker; after that no job calls Plivo until the cool-down.
    plivo_call()
        .respond_with(ResponseTemplate::new(503))
        .expect(2)
        .mount(&plivo)
        .await;
    twilio_call()
        .respond_with(twilio_created("SM-failover"))
        .expect(3)
        .mount(&twilio)
        .await;
    let world = World::new().await;
    let mut config = both(&world, &plivo, &twilio).await;
    config.delivery.breaker.breaker_failures = 2;
    config.delivery.retry.failover_after_retries = 10;
    let _dispatcher = spawn_dispatcher(config).await;
    for code in ["111111", "222222", "333333"] {
        let (_, status) = world.send_one(PHONE, code).await;
        assert_eq!(status.state.as_str(), "sent");
    }
    let metrics = reqwest::get(format!("http://{}/metrics", _dispatcher.health))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"otp_provider_breaker_state{provider="plivo"} 1"#),
        "{metrics}"
    );
    plivo.verify().await;
    twilio.verify().await;
}

/// A clock the test moves by hand. (tokio's paused clock jumps ahead by itself whenever the
/// runtime idles on Redis I/O with a timer pending, which made this test flaky.)
struct TestClock(AtomicU64);

impl TestClock {
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where a breaker's state lives (the World keeps the Redis keys until the check ends).
struct Breakers(Option<World>);

impl Breakers {
    fn store(&self) -> Arc<dyn BreakerStore> {
        match &self.0 {
            Some(world) => Arc::new(RedisBreakerStore::new(
                otp_testkit::redis_conn(),
                &world.keys(),
                "plivo",
            )),
            None => Arc::new(MemoryBreakerStore::default()),
        }
    }
}

async fn on_redis() -> Breakers {
    Breakers(Some(World::new().await))
}

async fn in_memory() -> Breakers {
    Breakers(None)
}

otp_testkit::conformance!(
    shared: on_redis, in_memory: in_memory;
    the_breaker_opens_cools_down_probes_and_closes_on_a_controlled_clock,
    a_success_while_closed_costs_no_step_and_still_breaks_a_run_of_failures,
);

/// Counts the steps a breaker runs in its store.
struct Counting(Arc<dyn BreakerStore>, AtomicU64);

impl BreakerStore for Counting {
    fn step(
        &self,
        op: otp_delivery::breaker::Op,
        earlier_oks: u64,
        now_ms: u64,
        settings: &BreakerSettings,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<otp_delivery::breaker::Step, otp_shared::backend::Unavailable>,
    > {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.step(op, earlier_oks, now_ms, settings)
    }

    fn state(
        &self,
    ) -> futures_util::future::BoxFuture<'_, Result<State, otp_shared::backend::Unavailable>> {
        self.0.state()
    }
}

/// While a dispatcher trusts `closed`, a success is only counted in the process and goes to the
/// store with the next step: it still resets the run of consecutive failures.
async fn a_success_while_closed_costs_no_step_and_still_breaks_a_run_of_failures(
    backend: Breakers,
) {
    let store = Arc::new(Counting(backend.store(), AtomicU64::new(0)));
    let clock = Arc::new(TestClock(AtomicU64::new(1_000_000)));
    let settings = BreakerSettings {
        consecutive_failures: 3,
        failure_ratio: 1.0,
        min_calls: 1000,
        window: Duration::from_secs(60),
        cooldown: Duration::from_secs(30),
    };
    let gauge = prometheus::IntGauge::new("g", "g").unwrap();
    let breaker = Breaker::with_store(store.clone(), "plivo", settings, clock, gauge);
    breaker.record(false).await;
    breaker.record(false).await;
    let steps = store.1.load(Ordering::SeqCst);
    assert!(breaker.allows().await);
    breaker.record(true).await;
    assert_eq!(
        store.1.load(Ordering::SeqCst),
        steps,
        "no step for a success while closed"
    );
    // Without the success, this would be the third failure in a row.
    breaker.record(false).await;
    breaker.record(false).await;
    assert_eq!(breaker.state().await.unwrap(), State::Closed);
    breaker.record(false).await;
    assert_eq!(breaker.state().await.unwrap(), State::Open);
}

/// The breaker's rules, on a clock the test moves, whatever store keeps its state.
async fn the_breaker_opens_cools_down_probes_and_closes_on_a_controlled_clock(backend: Breakers) {
    let store = backend.store();
    let clock = Arc::new(TestClock(AtomicU64::new(1_000_000)));
    let settings = BreakerSettings {
        consecutive_failures: 3,
        failure_ratio: 0.5,
        min_calls: 4,
        window: Duration::from_secs(60),
        cooldown: Duration::from_secs(30),
    };
    let gauge = prometheus::IntGauge::new("g", "g").unwrap();
    let breaker = Breaker::with_store(store, "plivo", settings, clock.clone(), gauge.clone());

    for _ in 0..2 {
        breaker.record(false).await;
    }
    assert_eq!(breaker.state().await.unwrap(), State::Closed);
    breaker.record(false).await;
    assert_eq!(breaker.state().await.unwrap(), State::Open);
    assert_eq!(gauge.get(), 1);
    assert!(!breaker.allows().await);

    clock.advance(Duration::from_secs(29));
    assert!(!breaker.allows().await, "still cooling down");
    clock.advance(Duration::from_secs(2));
    assert!(breaker.allows().await, "one probe after the cool-down");
    assert!(!breaker.allows().await, "only one probe at a time");
    assert_eq!(breaker.state().await.unwrap(), State::HalfOpen);
    // A failed probe opens it again; a successful one closes it.
    breaker.record(false).await;
    assert_eq!(breaker.state().await.unwrap(), State::Open);
    clock.advance(Duration::from_secs(31));
    assert!(breaker.allows().await);
    breaker.record(true).await;
    assert_eq!(breaker.state().await.unwrap(), State::Closed);
    assert_eq!(gauge.get(), 0);
    assert!(breaker.allows().await);

    // A failure share over the window opens it too, without consecutive failures.
    clock.advance(Duration::from_secs(61));
    for ok in [true, false, true, false] {
        breaker.record(ok).await;
    }
    assert_eq!(breaker.state().await.unwrap(), State::Open);
}

/// A dispatcher trusts a `closed` it read for one second (no breaker round trip per send); a
/// breaker another dispatcher opened is seen once that second is over.
#[tokio::test]
async fn a_breaker_opened_elsewhere_is_seen_within_a_second() {
    let world = World::new().await;
    let clock = Arc::new(TestClock(AtomicU64::new(1_000_000)));
    let settings = BreakerSettings {
        consecutive_failures: 2,
        failure_ratio: 0.5,
        min_calls: 100,
        window: Duration::from_secs(60),
        cooldown: Duration::from_secs(30),
    };
    let breaker = || {
        Breaker::new(
            otp_testkit::redis_conn(),
            &world.keys(),
            "plivo",
            settings.clone(),
            clock.clone(),
            prometheus::IntGauge::new("g", "g").unwrap(),
        )
    };
    let (here, elsewhere) = (breaker(), breaker());
    here.record(true).await;
    elsewhere.record(false).await;
    elsewhere.record(false).await;
    assert_eq!(here.state().await.unwrap(), State::Open);
    assert!(!elsewhere.allows().await);
    assert!(here.allows().await, "trusted closed for a second");
    clock.advance(Duration::from_millis(1001));
    assert!(!here.allows().await, "the open breaker seen");
}
