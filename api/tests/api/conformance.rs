//! One behavioural suite for both code stores (`otp_testkit::conformance!`, like every seam's):
//! every rule is checked once, through the store's role traits, against `RedisStore` (the Lua scripts, on the real Redis, or Redis Cluster
//! with OTP_TEST_REDIS_CLUSTER) and `MemoryStore` (on tokio's paused clock, so waiting out a
//! TTL takes no time). The suite is what keeps the two in step.

use std::{sync::Arc, time::Duration};

use otp_api::{
    config::CountryBudgets,
    fraud::{FraudSettings, Mode},
    store::{
        BlockRule, CodeStore, FraudSignal, FraudStore, GuardBlock, IdempotencyClaim,
        IdempotencyStore, IssueOutcome, KeyBudget, LimitKind, MemoryStore, RateLimit, RedisStore,
        ReportStore, Requester, ResendRefusal, ResendStore, StorePolicy, VerifyLookup,
    },
};
use otp_delivery::ledger::{Claim, Entry, Ledger, MemoryLedger, SendLedger, SentRecord};
use otp_shared::{
    keys::Keys,
    ledger::JobOutcome,
    memory::DeliveryRecords,
    phone::PhoneNumber,
    status::{DeliveryState, FIELD_PROVIDER_ID},
};
use otp_testkit::Cleanup;
use uuid::Uuid;

use crate::helpers::{AMQP_URL, test_config};

/// Every role of a code store, as the checks use them.
trait OtpStore:
    CodeStore + IdempotencyStore + ReportStore + ResendStore + FraudStore + Clone + 'static
{
}
impl<S> OtpStore for S where
    S: CodeStore + IdempotencyStore + ReportStore + ResendStore + FraudStore + Clone + 'static
{
}

/// Makes a store with a policy; a Redis one isolates itself under a key prefix of its own. The
/// dispatcher's ledger beside it is what records accepted sends (for delivery reports).
trait Backend {
    type Store: OtpStore + Clone;
    fn store(&mut self, policy: StorePolicy) -> Self::Store;
    fn ledger(&mut self) -> Arc<dyn SendLedger>;
}

struct OnRedis {
    prefix: String,
    _cleanup: Cleanup,
}

impl OnRedis {
    fn new() -> Self {
        let prefix = format!("test:{}:", Uuid::new_v4().simple());
        let cleanup = Cleanup {
            redis_url: otp_testkit::redis_url(),
            key_prefix: prefix.clone(),
            amqp_url: AMQP_URL.into(),
            queue: format!("test.conformance.{}", Uuid::new_v4().simple()),
        };
        Self {
            prefix,
            _cleanup: cleanup,
        }
    }
}

impl Backend for OnRedis {
    type Store = RedisStore;
    fn store(&mut self, policy: StorePolicy) -> RedisStore {
        RedisStore::new(
            otp_testkit::redis_conn(),
            Keys::new(self.prefix.clone()),
            policy,
        )
    }

    fn ledger(&mut self) -> Arc<dyn SendLedger> {
        let keys = Keys::new(self.prefix.clone());
        Arc::new(Ledger::new(otp_testkit::redis_conn(), keys, LEASE))
    }
}

/// The in-memory store and ledger share their delivery records, as in the one-process mode.
#[derive(Default)]
struct InMemory(DeliveryRecords);

impl Backend for InMemory {
    type Store = MemoryStore;
    fn store(&mut self, policy: StorePolicy) -> MemoryStore {
        MemoryStore::new(policy, self.0.clone())
    }

    fn ledger(&mut self) -> Arc<dyn SendLedger> {
        Arc::new(MemoryLedger::new(self.0.clone(), LEASE))
    }
}

const LEASE: Duration = Duration::from_secs(30);

async fn on_redis() -> OnRedis {
    OnRedis::new()
}

async fn in_memory() -> InMemory {
    InMemory::default()
}

otp_testkit::conformance!(
    shared: on_redis, in_memory: in_memory;
    a_code_expires_with_its_ttl,
    the_attempt_cap_voids_the_code,
    a_replacement_keeps_the_failure_count,
    a_code_is_used_once_under_50_concurrent_verifies,
    a_wrong_verification_id_never_consumes,
    request_and_verify_limits_say_when_to_retry,
    send_limits_say_when_to_retry,
    the_per_ip_limit_counts_attempts_and_spends_no_budget,
    the_cooldown_ends_with_its_window,
    revoke_gives_back_what_issue_took,
    idempotency_claims_replays_and_conflicts,
    the_fraud_guard_blocks_a_prefix_that_does_not_convert,
    a_guard_block_ends_after_its_time,
    a_key_budget_is_spent_with_the_others_and_given_back_on_revoke,
    a_used_code_shows_verified_in_its_status,
    an_operator_block_holds_in_every_mode_until_it_ends,
    monitor_mode_safe_prefixes_and_the_grace,
    a_burst_from_several_networks_is_blocked_with_a_trickle_left_open,
    a_resend_spends_like_a_send,
    delivery_reports_find_their_verification_once,
    a_resend_is_taken_once_and_only_for_a_live_code,
    conversion_is_verified_over_counted_sends_per_country,
    a_captcha_token_is_taken_once,
    a_canceled_code_is_void_and_its_job_withdrawn,
);

const NUMBER: &str = "+14155552671";
const OTHER: &str = "+14155552672";
const THIRD: &str = "+14155552673";

fn phone(raw: &str) -> PhoneNumber {
    PhoneNumber::parse(raw).expect("valid number")
}

/// The test config's policy: every limit off, codes live 300 s and allow 5 attempts; the fraud
/// guard off, and when a check turns it on, quick to judge (3 sends, no grace, 50%, one client
/// enough, no trickle through a block).
fn policy() -> StorePolicy {
    let policy = StorePolicy::from_config(&test_config());
    StorePolicy {
        fraud: FraudSettings {
            fraud_guard: Mode::Off,
            fraud_guard_grace_seconds: 0,
            fraud_guard_min_sends: 3,
            fraud_guard_min_conversion: 0.5,
            fraud_guard_min_clients: 1,
            fraud_guard_blocked_sends_per_hour: 0,
            ..policy.fraud
        },
        ..policy
    }
}

/// Issues a code for `number` (digest "d-<vid>"); panics unless it was issued.
async fn issue(store: &impl OtpStore, number: &str) -> Uuid {
    let vid = Uuid::new_v4();
    match store
        .issue(
            &phone(number),
            Requester::network("ip-a", false),
            vid,
            &format!("d-{vid}"),
        )
        .await
        .unwrap()
    {
        IssueOutcome::Issued(..) => vid,
        other => panic!("not issued: {other:?}"),
    }
}

/// The number's live code: (verification id, digest).
async fn live_code(store: &impl OtpStore, number: &str) -> Option<(Uuid, String)> {
    match store.begin_verify(&phone(number), "client").await.unwrap() {
        VerifyLookup::Found { record, .. } => record,
        VerifyLookup::Limited(kind, _) => panic!("limited by {kind:?}"),
    }
}

async fn verify(store: &impl OtpStore, number: &str, vid: Uuid, matched: bool) -> bool {
    store
        .finish_verify(&phone(number), Some(vid), matched)
        .await
        .unwrap()
        .consumed()
}

fn assert_retry(rate: RateLimit, limit: u32, within: u64) {
    assert_eq!((rate.limit, rate.remaining), (limit, 0), "{rate:?}");
    assert!(
        (1..=within).contains(&rate.reset_seconds),
        "Retry-After {} not within 1..={within}",
        rate.reset_seconds
    );
}

async fn a_code_expires_with_its_ttl(mut backend: impl Backend) {
    let store = backend.store(StorePolicy {
        code_ttl_seconds: 1,
        ..policy()
    });
    let vid = issue(&store, NUMBER).await;
    assert_eq!(
        live_code(&store, NUMBER).await,
        Some((vid, format!("d-{vid}")))
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(live_code(&store, NUMBER).await, None);
    assert!(
        !verify(&store, NUMBER, vid, true).await,
        "expired code used"
    );
}

async fn the_attempt_cap_voids_the_code(mut backend: impl Backend) {
    let store = backend.store(StorePolicy {
        max_attempts: 3,
        ..policy()
    });
    let vid = issue(&store, NUMBER).await;
    for _ in 0..2 {
        assert!(!verify(&store, NUMBER, vid, false).await);
    }
    assert!(live_code(&store, NUMBER).await.is_some(), "voided too soon");
    // The guess that uses the last attempt says so (the `attempts_exhausted` event), once.
    let last = store.finish_verify(&phone(NUMBER), Some(vid), false).await;
    assert_eq!(last.unwrap(), otp_api::store::Finished::Exhausted);
    assert_eq!(
        live_code(&store, NUMBER).await,
        None,
        "not voided at the cap"
    );
    let after = store.finish_verify(&phone(NUMBER), Some(vid), true).await;
    assert_eq!(
        after.unwrap(),
        otp_api::store::Finished::Failed,
        "voided code used"
    );
}

async fn a_replacement_keeps_the_failure_count(mut backend: impl Backend) {
    let store = backend.store(StorePolicy {
        max_attempts: 3,
        ..policy()
    });
    let first = issue(&store, NUMBER).await;
    assert!(!verify(&store, NUMBER, first, false).await);
    assert!(!verify(&store, NUMBER, first, false).await);
    let second = issue(&store, NUMBER).await;
    assert_eq!(
        live_code(&store, NUMBER).await.map(|(vid, _)| vid),
        Some(second)
    );
    assert!(
        !verify(&store, NUMBER, first, true).await,
        "replaced code used"
    );
    // Two failures carried over: one more voids the new code.
    assert!(!verify(&store, NUMBER, second, false).await);
    assert_eq!(live_code(&store, NUMBER).await, None);
}

async fn a_code_is_used_once_under_50_concurrent_verifies(mut backend: impl Backend) {
    let store = backend.store(policy());
    let vid = issue(&store, NUMBER).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.spawn(async move { verify(&store, NUMBER, vid, true).await });
    }
    let wins = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
    assert_eq!(live_code(&store, NUMBER).await, None);
}

async fn a_wrong_verification_id_never_consumes(mut backend: impl Backend) {
    let store = backend.store(policy());
    let vid = issue(&store, NUMBER).await;
    assert!(!verify(&store, NUMBER, Uuid::new_v4(), true).await);
    assert!(
        !store
            .finish_verify(&phone(NUMBER), None, true)
            .await
            .unwrap()
            .consumed()
    );
    assert!(verify(&store, NUMBER, vid, true).await);
}

async fn request_and_verify_limits_say_when_to_retry(mut backend: impl Backend) {
    let store = backend.store(StorePolicy {
        max_requests_per_ip_per_minute: 2,
        max_verifies_per_ip_per_minute: 3,
        max_verifies_per_number_per_15_minutes: 2,
        ..policy()
    });
    // Requests per IP, on their own and as part of an issue.
    assert_eq!(store.hit_request_ip("ip-a").await.unwrap(), None);
    let (number, vid) = (phone(NUMBER), Uuid::new_v4());
    let Ok(IssueOutcome::Issued(rate, _)) = store
        .issue(&number, Requester::network("ip-a", true), vid, "d")
        .await
    else {
        panic!("the second request of the minute was refused");
    };
    assert_eq!((rate.limit, rate.remaining), (2, 0));
    let refused = store
        .hit_request_ip("ip-a")
        .await
        .unwrap()
        .expect("limited");
    assert_retry(refused, 2, 60);
    match store
        .issue(&number, Requester::network("ip-a", true), vid, "d")
        .await
        .unwrap()
    {
        IssueOutcome::Limited(LimitKind::RequestsPerIp, rate) => assert_retry(rate, 2, 60),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.hit_request_ip("ip-b").await.unwrap(), None);

    // Verifies per number, counted whether or not it has a code.
    for _ in 0..2 {
        let found = store.begin_verify(&phone(OTHER), "ip-c").await.unwrap();
        assert!(matches!(found, VerifyLookup::Found { record: None, .. }));
    }
    match store.begin_verify(&phone(OTHER), "ip-c").await.unwrap() {
        VerifyLookup::Limited(LimitKind::VerifiesPerNumber, rate) => {
            assert_retry(rate, 2, 15 * 60);
        }
        other => panic!("{other:?}"),
    }
    // Verifies per IP: that third call counted for ip-c; one more is over.
    match store.begin_verify(&phone(NUMBER), "ip-c").await.unwrap() {
        VerifyLookup::Limited(LimitKind::VerifiesPerIp, rate) => assert_retry(rate, 3, 60),
        other => panic!("{other:?}"),
    }
}

async fn send_limits_say_when_to_retry(mut backend: impl Backend) {
    let store = backend.store(StorePolicy {
        max_sends_per_number_per_hour: 2,
        max_sends_per_hour: 3,
        max_sends_per_country_per_hour: CountryBudgets::parse("GB=1").unwrap(),
        ..policy()
    });
    issue(&store, NUMBER).await;
    issue(&store, NUMBER).await;
    let (number, vid) = (phone(NUMBER), Uuid::new_v4());
    match store
        .issue(&number, Requester::network("ip-a", false), vid, "d")
        .await
        .unwrap()
    {
        IssueOutcome::Limited(LimitKind::SendsPerHour, rate) => assert_retry(rate, 2, 3600),
        other => panic!("{other:?}"),
    }
    // The country budget: one send to GB an hour.
    issue(&store, "+447400123456").await;
    let gb = phone("+447400123457");
    match store
        .issue(&gb, Requester::network("ip-a", false), vid, "d")
        .await
        .unwrap()
    {
        IssueOutcome::Limited(LimitKind::CountrySendsPerHour, rate) => {
            assert_retry(rate, 1, 3600);
        }
        other => panic!("{other:?}"),
    }
    // The global budget: three sends in all (the refused ones spent nothing).
    match store
        .issue(&phone(OTHER), Requester::network("ip-a", false), vid, "d")
        .await
        .unwrap()
    {
        IssueOutcome::Limited(LimitKind::TotalSendsPerHour, rate) => {
            assert_retry(rate, 3, 3600);
        }
        other => panic!("{other:?}"),
    }
}

/// The per-IP limit with the guard's budgets on (one script on a single Redis): every attempt
/// counts against the client, one refused later gives back its budget, and one the client's
/// limit refuses never reaches the budgets.
async fn the_per_ip_limit_counts_attempts_and_spends_no_budget(mut backend: impl Backend) {
    let store = backend.store(StorePolicy {
        max_requests_per_ip_per_minute: 3,
        max_sends_per_hour: 3,
        resend_cooldown_seconds: 60,
        ..policy()
    });
    let request = |number: &'static str, client: &'static str| {
        let store = store.clone();
        async move {
            store
                .issue(
                    &phone(number),
                    Requester::network(client, true),
                    Uuid::new_v4(),
                    "d",
                )
                .await
                .unwrap()
        }
    };
    match request(NUMBER, "ip-a").await {
        // The tighter of the client's limit (2 left) and the number's (off).
        IssueOutcome::Issued(rate, _) => assert_eq!((rate.limit, rate.remaining), (3, 2)),
        other => panic!("{other:?}"),
    }
    // Refused by the number's cooldown: counted for ip-a, the send budget given back.
    assert!(matches!(
        request(NUMBER, "ip-a").await,
        IssueOutcome::Limited(LimitKind::ResendCooldown, _)
    ));
    assert!(matches!(
        request(OTHER, "ip-a").await,
        IssueOutcome::Issued(..)
    ));
    // ip-a's fourth attempt of the minute: refused before any budget is spent.
    match request(THIRD, "ip-a").await {
        IssueOutcome::Limited(LimitKind::RequestsPerIp, rate) => assert_retry(rate, 3, 60),
        other => panic!("{other:?}"),
    }
    // Two of the three sends are spent, so another client gets exactly one.
    assert!(matches!(
        request(THIRD, "ip-b").await,
        IssueOutcome::Issued(..)
    ));
    match request("+14155552674", "ip-b").await {
        IssueOutcome::Limited(LimitKind::TotalSendsPerHour, rate) => assert_retry(rate, 3, 3600),
        other => panic!("{other:?}"),
    }
}

async fn the_cooldown_ends_with_its_window(mut backend: impl Backend) {
    let store = backend.store(StorePolicy {
        resend_cooldown_seconds: 2,
        ..policy()
    });
    issue(&store, NUMBER).await;
    // From the answer: a first script call on a fresh connection can take 0.5 s to arrive.
    let started = tokio::time::Instant::now();
    let again = || async {
        store
            .issue(
                &phone(NUMBER),
                Requester::network("ip-a", false),
                Uuid::new_v4(),
                "d",
            )
            .await
            .unwrap()
    };
    match again().await {
        IssueOutcome::Limited(LimitKind::ResendCooldown, rate) => assert_retry(rate, 1, 2),
        other => panic!("{other:?}"),
    }
    issue(&store, OTHER).await;
    // 0.3 s before the end it still holds (Redis must not round it away), saying 1 s.
    tokio::time::sleep_until(started + Duration::from_millis(1700)).await;
    match again().await {
        IssueOutcome::Limited(LimitKind::ResendCooldown, rate) => assert_retry(rate, 1, 1),
        other => panic!("0.3 s before the end: {other:?}"),
    }
    tokio::time::sleep_until(started + Duration::from_millis(2500)).await;
    issue(&store, NUMBER).await;
}

async fn revoke_gives_back_what_issue_took(mut backend: impl Backend) {
    let store = backend.store(StorePolicy {
        resend_cooldown_seconds: 60,
        max_sends_per_number_per_hour: 1,
        max_sends_per_hour: 1,
        max_sends_per_country_per_hour: CountryBudgets::parse("US=1").unwrap(),
        ..policy()
    });
    let vid = issue(&store, NUMBER).await;
    assert!(store.delivery_status(vid).await.unwrap().is_some());
    store.revoke(&phone(NUMBER), None, vid).await.unwrap();
    assert_eq!(live_code(&store, NUMBER).await, None);
    assert_eq!(store.delivery_status(vid).await.unwrap(), None);
    // Cooldown, hourly send, global and country budgets were all given back.
    let again = issue(&store, NUMBER).await;
    let status = store.delivery_status(again).await.unwrap().expect("record");
    assert_eq!((status.state.as_str(), status.attempts), ("queued", 0));
}

async fn idempotency_claims_replays_and_conflicts(mut backend: impl Backend) {
    let store = backend.store(policy());
    let claim = |body: &'static str| {
        let store = store.clone();
        async move { store.claim_idempotency("key", body).await.unwrap() }
    };
    assert_eq!(claim("body").await, IdempotencyClaim::Claimed);
    assert_eq!(claim("body").await, IdempotencyClaim::InProgress);
    assert_eq!(claim("other").await, IdempotencyClaim::Conflict);
    store
        .complete_idempotency("key", "body", "{\"ok\":1}")
        .await
        .unwrap();
    assert_eq!(
        claim("body").await,
        IdempotencyClaim::Replay("{\"ok\":1}".into())
    );
    assert_eq!(claim("other").await, IdempotencyClaim::Conflict);
    // A key whose request failed is freed for a retry.
    assert_eq!(
        store.claim_idempotency("failed", "b").await.unwrap(),
        IdempotencyClaim::Claimed
    );
    store.release_idempotency("failed").await.unwrap();
    assert_eq!(
        store.claim_idempotency("failed", "b").await.unwrap(),
        IdempotencyClaim::Claimed
    );
}

async fn the_fraud_guard_blocks_a_prefix_that_does_not_convert(mut backend: impl Backend) {
    let mut base = policy();
    base.fraud.fraud_guard = Mode::Enforce;
    let store = backend.store(base);
    // Three sends to one prefix (min sends 3, no grace), one verified: 33% < 50%.
    let first = issue(&store, "+14155550001").await;
    assert!(verify(&store, "+14155550001", first, true).await);
    issue(&store, "+14155550002").await;
    issue(&store, "+14155550003").await;
    let (pumped, vid) = (phone("+14155550004"), Uuid::new_v4());
    let outcome = store
        .issue(&pumped, Requester::network("ip-a", false), vid, "d")
        .await
        .unwrap();
    assert_eq!(
        outcome,
        IssueOutcome::Blocked(FraudSignal::NewBlock(BlockRule::Conversion))
    );
    let outcome = store
        .issue(&pumped, Requester::network("ip-a", false), vid, "d")
        .await
        .unwrap();
    assert_eq!(outcome, IssueOutcome::Blocked(FraudSignal::Blocked));
    // Another prefix is not affected.
    issue(&store, "+14155560001").await;

    // Operators see the block with what the guard saw, and can lift it with its counts.
    let blocks = store.blocks().await.unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].prefix, "+1415555");
    let hours_12 = 12 * 3600;
    assert!(
        (hours_12 - 5..=hours_12).contains(&blocks[0].expires_in_seconds),
        "{blocks:?}"
    );
    let seen = GuardBlock {
        rule: BlockRule::Conversion,
        country: "US".into(),
        sends: 3,
        verified: 1,
        young: 0,
        clients: 1,
    };
    assert_eq!(blocks[0].guard, Some(seen));
    assert!(store.unblock("+1415555").await.unwrap());
    assert!(!store.unblock("+1415555").await.unwrap(), "lifted once");
    assert_eq!(store.blocks().await.unwrap(), vec![]);
    issue(&store, "+14155550005").await;
}

/// The status of a verification says `verified` once its code was used, and not before.
async fn a_used_code_shows_verified_in_its_status(mut backend: impl Backend) {
    let store = backend.store(policy());
    let vid = issue(&store, NUMBER).await;
    let status = |vid| store.delivery_status(vid);
    assert!(!status(vid).await.unwrap().unwrap().verified);
    assert!(!verify(&store, NUMBER, vid, false).await);
    assert!(
        !status(vid).await.unwrap().unwrap().verified,
        "a wrong guess"
    );
    assert!(verify(&store, NUMBER, vid, true).await);
    let after = status(vid).await.unwrap().unwrap();
    assert!(after.verified);
    assert_eq!(
        after.state,
        DeliveryState::Queued,
        "the delivery state is its own"
    );
}

async fn a_key_budget_is_spent_with_the_others_and_given_back_on_revoke(mut backend: impl Backend) {
    let store = backend.store(policy());
    let key = |key, per_hour| Requester {
        client: "ip-a",
        count_ip: false,
        budget: Some(KeyBudget { key, per_hour }),
    };
    let web = key("web", 2);
    let issued = |outcome: IssueOutcome| matches!(outcome, IssueOutcome::Issued(..));
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(issued(
        store.issue(&phone(NUMBER), web, first, "d").await.unwrap()
    ));
    assert!(issued(
        store.issue(&phone(OTHER), web, second, "d").await.unwrap()
    ));
    match store
        .issue(&phone(THIRD), web, Uuid::new_v4(), "d")
        .await
        .unwrap()
    {
        IssueOutcome::Limited(LimitKind::KeySendsPerHour, rate) => {
            assert_eq!((rate.limit, rate.remaining), (2, 0));
            assert!(rate.reset_seconds > 3590, "{rate:?}");
        }
        other => panic!("{other:?}"),
    }
    // Another key's budget is its own; a caller without one has none.
    let eu = key("backend-eu", 1);
    assert!(issued(
        store
            .issue(&phone(THIRD), eu, Uuid::new_v4(), "d")
            .await
            .unwrap()
    ));
    let public = Requester::network("ip-b", false);
    assert!(issued(
        store
            .issue(&phone(THIRD), public, Uuid::new_v4(), "d")
            .await
            .unwrap()
    ));
    // A revoked code gives its send back to the key that spent it.
    store
        .revoke(
            &phone(OTHER),
            Some(KeyBudget {
                key: "web",
                per_hour: 2,
            }),
            second,
        )
        .await
        .unwrap();
    assert!(issued(
        store
            .issue(&phone(OTHER), web, Uuid::new_v4(), "d")
            .await
            .unwrap()
    ));
}

async fn a_guard_block_ends_after_its_time(mut backend: impl Backend) {
    let mut base = policy();
    base.fraud.fraud_guard = Mode::Enforce;
    base.fraud_block = Duration::from_millis(1500);
    let store = backend.store(base);
    let first = issue(&store, "+14155550001").await;
    assert!(verify(&store, "+14155550001", first, true).await);
    issue(&store, "+14155550002").await;
    issue(&store, "+14155550003").await;
    let (_, outcome) = guarded(&store, "+14155550004", "ip-a").await;
    assert_eq!(
        outcome,
        IssueOutcome::Blocked(FraudSignal::NewBlock(BlockRule::Conversion))
    );
    let (_, outcome) = guarded(&store, "+14155550004", "ip-a").await;
    assert_eq!(outcome, IssueOutcome::Blocked(FraudSignal::Blocked));
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(store.blocks().await.unwrap(), vec![], "the block ended");
    // The counts still say "does not convert": the next request blocks the prefix anew.
    let (_, outcome) = guarded(&store, "+14155550004", "ip-a").await;
    assert_eq!(
        outcome,
        IssueOutcome::Blocked(FraudSignal::NewBlock(BlockRule::Conversion))
    );
}

/// `otp-api fraud block`: every number under the prefix, in every mode (the guard is off
/// here), resends included, listed with its time left, until it ends or is lifted.
async fn an_operator_block_holds_in_every_mode_until_it_ends(mut backend: impl Backend) {
    let store = backend.store(policy());
    let vid = issue(&store, NUMBER).await;
    store
        .block("+1415555", Duration::from_millis(1500))
        .await
        .unwrap();
    for number in [NUMBER, OTHER] {
        let (_, outcome) = guarded(&store, number, "ip-a").await;
        assert_eq!(
            outcome,
            IssueOutcome::Blocked(FraudSignal::Manual),
            "{number}"
        );
    }
    assert_eq!(
        store.spend_resend(&phone(NUMBER), vid).await.unwrap(),
        Some(ResendRefusal::Blocked)
    );
    issue(&store, "+442079460000").await;
    let blocks = store.blocks().await.unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(
        (blocks[0].prefix.as_str(), blocks[0].guard.as_ref()),
        ("+1415555", None)
    );
    assert!(blocks[0].expires_in_seconds <= 1, "{blocks:?}");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(store.blocks().await.unwrap(), vec![], "the block ended");
    issue(&store, NUMBER).await;

    store.block("+1", Duration::from_secs(3600)).await.unwrap();
    let (_, outcome) = guarded(&store, NUMBER, "ip-a").await;
    assert_eq!(outcome, IssueOutcome::Blocked(FraudSignal::Manual));
    assert!(store.unblock("+1").await.unwrap());
    assert!(!store.unblock("+1").await.unwrap(), "lifted once");
    issue(&store, OTHER).await;
}

/// What the fraud guard says about a request for `number` from the client network `client`.
async fn guarded(store: &impl OtpStore, number: &str, client: &str) -> (Uuid, IssueOutcome) {
    let vid = Uuid::new_v4();
    let outcome = store
        .issue(&phone(number), Requester::network(client, true), vid, "d")
        .await;
    (vid, outcome.unwrap())
}

fn signal(outcome: IssueOutcome) -> FraudSignal {
    match outcome {
        IssueOutcome::Issued(_, signal) => signal,
        other => panic!("not issued: {other:?}"),
    }
}

async fn a_burst_from_several_networks_is_blocked_with_a_trickle_left_open(
    mut backend: impl Backend,
) {
    let mut base = policy();
    base.fraud.fraud_guard = Mode::Enforce;
    base.fraud.fraud_guard_grace_seconds = 120; // every send is young
    base.fraud.fraud_guard_burst = 3;
    base.fraud.fraud_guard_min_clients = 2;
    base.fraud.fraud_guard_blocked_sends_per_hour = 1;
    let store = backend.store(base);
    // One network alone never blocks a prefix, however many it pumps.
    for n in 0..5 {
        let (_, outcome) = guarded(&store, &format!("+1415555000{n}"), "net-a").await;
        assert_eq!(signal(outcome), FraudSignal::Clear, "send {n}");
    }
    // A second network: 5 young unverified sends pass the burst of 3. This request blocks the
    // prefix and is let through on the hourly allowance of 1; the next is refused.
    let (trickled, outcome) = guarded(&store, "+14155550005", "net-b").await;
    assert_eq!(
        signal(outcome),
        FraudSignal::Trickle {
            new: Some(BlockRule::Burst)
        }
    );
    let (_, outcome) = guarded(&store, "+14155550006", "net-b").await;
    assert_eq!(outcome, IssueOutcome::Blocked(FraudSignal::Blocked));
    // Another prefix is unaffected.
    let (_, outcome) = guarded(&store, "+14155560001", "net-b").await;
    assert_eq!(signal(outcome), FraudSignal::Clear);
    // A real user verifying the trickled code lifts the block, and the counts start afresh.
    assert!(verify(&store, "+14155550005", trickled, true).await);
    let (_, outcome) = guarded(&store, "+14155550007", "net-b").await;
    assert_eq!(signal(outcome), FraudSignal::Clear);
}

async fn monitor_mode_safe_prefixes_and_the_grace(mut backend: impl Backend) {
    // Monitor: the same judgement as enforce (3 unverified sends, 0% < 50%), never a refusal.
    let mut base = policy();
    base.fraud.fraud_guard = Mode::Monitor;
    let store = backend.store(base.clone());
    for n in 1..=3 {
        let (_, outcome) = guarded(&store, &format!("+1415558000{n}"), "net-a").await;
        assert_eq!(signal(outcome), FraudSignal::Clear, "send {n}");
    }
    let (_, outcome) = guarded(&store, "+14155580004", "net-a").await;
    assert_eq!(
        signal(outcome),
        FraudSignal::NewBlock(BlockRule::Conversion)
    );
    let (_, outcome) = guarded(&store, "+14155580005", "net-a").await;
    assert_eq!(signal(outcome), FraudSignal::Blocked);

    // A safe-listed prefix is never judged, however it converts.
    base.fraud.fraud_guard = Mode::Enforce;
    base.fraud.fraud_guard_safe_prefixes = vec!["+1415559".into()];
    let store = backend.store(base.clone());
    for n in 1..=6 {
        let (_, outcome) = guarded(&store, &format!("+1415559000{n}"), "net-a").await;
        assert_eq!(signal(outcome), FraudSignal::Clear, "safe send {n}");
    }

    // Sends younger than the grace are not counted for the conversion rule.
    base.fraud.fraud_guard_safe_prefixes = vec![];
    base.fraud.fraud_guard_grace_seconds = 120;
    let store = backend.store(base);
    for n in 1..=6 {
        let (_, outcome) = guarded(&store, &format!("+1415557000{n}"), "net-a").await;
        assert_eq!(signal(outcome), FraudSignal::Clear, "young send {n}");
    }
}

async fn a_resend_spends_like_a_send(mut backend: impl Backend) {
    // The number's hourly limit: the code's send and one resend fit in 2.
    let mut base = policy();
    base.max_sends_per_number_per_hour = 2;
    let store = backend.store(base);
    let vid = issue(&store, NUMBER).await;
    assert_eq!(store.spend_resend(&phone(NUMBER), vid).await.unwrap(), None);
    assert_eq!(
        store.spend_resend(&phone(NUMBER), vid).await.unwrap(),
        Some(ResendRefusal::NumberLimit)
    );
    // The global budget.
    let mut base = policy();
    base.max_sends_per_hour = 1;
    let store = backend.store(base);
    let vid = issue(&store, OTHER).await;
    assert_eq!(
        store.spend_resend(&phone(OTHER), vid).await.unwrap(),
        Some(ResendRefusal::TotalBudget)
    );
    // A blocked prefix: requests may trickle through, resends do not.
    let mut base = policy();
    base.fraud.fraud_guard = Mode::Enforce;
    base.fraud.fraud_guard_grace_seconds = 120;
    base.fraud.fraud_guard_burst = 1;
    base.fraud.fraud_guard_blocked_sends_per_hour = 1;
    let store = backend.store(base);
    let (first, _) = guarded(&store, "+14155570001", "net-a").await;
    let (_, outcome) = guarded(&store, "+14155570002", "net-a").await;
    assert!(matches!(signal(outcome), FraudSignal::Trickle { .. }));
    assert_eq!(
        store
            .spend_resend(&phone("+14155570001"), first)
            .await
            .unwrap(),
        Some(ResendRefusal::Blocked)
    );
}

/// What the dispatcher records when `provider` accepts the verification's SMS as `message`,
/// keeping `sealed` for one resend.
async fn accepted(
    ledger: &dyn SendLedger,
    vid: Uuid,
    provider: &'static str,
    message: &str,
    sealed: &[u8],
) {
    let (job, owner) = (
        Entry {
            verification_id: vid,
            job_id: Uuid::new_v4(),
        },
        Uuid::new_v4(),
    );
    assert_eq!(ledger.claim_send(job, owner).await.unwrap(), Claim::Claimed);
    let sent = SentRecord {
        provider,
        provider_message_id: message.to_owned(),
        mapping_ttl_seconds: 600,
        sealed: Some(sealed.to_vec()),
        sealed_ttl_seconds: 300,
        status: Some(vec![(FIELD_PROVIDER_ID, message.to_owned())]),
    };
    let outcome = JobOutcome::Sent {
        provider: provider.into(),
        message_id: message.into(),
    };
    ledger
        .finish_sent(job, owner, &outcome, &sent)
        .await
        .unwrap();
}

async fn state(store: &impl OtpStore, vid: Uuid) -> Option<DeliveryState> {
    store.delivery_status(vid).await.unwrap().map(|s| s.state)
}

async fn delivery_reports_find_their_verification_once(mut backend: impl Backend) {
    let (store, ledger) = (backend.store(policy()), backend.ledger());
    let vid = issue(&store, NUMBER).await;
    accepted(&*ledger, vid, "plivo", "m-1", b"job").await;

    // A report finds its verification by provider and message id.
    let found = |provider: &'static str, message: &'static str| {
        let store = store.clone();
        async move {
            store
                .reported_verification(provider, message)
                .await
                .unwrap()
        }
    };
    assert_eq!(found("plivo", "m-1").await, Some(vid));
    assert_eq!(found("twilio", "m-1").await, None);
    assert_eq!(found("plivo", "m-2").await, None);

    // A nonce counts once per provider, until it is forgotten.
    assert!(store.first_report("plivo", "n-1").await.unwrap());
    assert!(
        !store.first_report("plivo", "n-1").await.unwrap(),
        "a replay"
    );
    assert!(store.first_report("twilio", "n-1").await.unwrap());
    store.forget_report("plivo", "n-1").await.unwrap();
    assert!(store.first_report("plivo", "n-1").await.unwrap());

    // The record moves forward only.
    assert_eq!(state(&store, vid).await, Some(DeliveryState::Sent));
    let reason = [("reason", "none")];
    assert!(
        store
            .advance_delivery(vid, DeliveryState::Delivered, &reason)
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_delivery(vid, DeliveryState::Sent, &[])
            .await
            .unwrap()
    );
    assert_eq!(state(&store, vid).await, Some(DeliveryState::Delivered));
    let unknown = Uuid::new_v4();
    assert!(
        !store
            .advance_delivery(unknown, DeliveryState::Delivered, &[])
            .await
            .unwrap()
    );
    assert_eq!(
        state(&store, unknown).await,
        None,
        "never created by a report"
    );
}

async fn a_resend_is_taken_once_and_only_for_a_live_code(mut backend: impl Backend) {
    let (store, ledger) = (backend.store(policy()), backend.ledger());
    let vid = issue(&store, NUMBER).await;
    accepted(&*ledger, vid, "plivo", "m-1", b"job-1").await;
    let take = |vid: Uuid| {
        let store = store.clone();
        async move { store.take_resend(vid, "plivo").await.unwrap() }
    };
    assert_eq!(take(vid).await.as_deref(), Some(&b"job-1"[..]));
    assert_eq!(take(vid).await, None, "one resend per verification");
    store.release_resend(vid).await.unwrap();
    assert_eq!(
        take(vid).await.as_deref(),
        Some(&b"job-1"[..]),
        "given back"
    );

    // A used code's job is not resent, nor a replaced one's.
    let used = issue(&store, OTHER).await;
    accepted(&*ledger, used, "plivo", "m-2", b"job-2").await;
    assert!(verify(&store, OTHER, used, true).await);
    assert_eq!(take(used).await, None);
    let replaced = issue(&store, THIRD).await;
    accepted(&*ledger, replaced, "plivo", "m-3", b"job-3").await;
    issue(&store, THIRD).await;
    assert_eq!(take(replaced).await, None);
}

async fn conversion_is_verified_over_counted_sends_per_country(mut backend: impl Backend) {
    let base = policy();
    let store = backend.store(StorePolicy {
        fraud: FraudSettings {
            fraud_guard: Mode::Monitor,
            fraud_guard_min_sends: 100,
            ..base.fraud.clone()
        },
        ..base
    });
    assert!(store.conversion_by_country().await.unwrap().is_empty());
    // US: 4 sends, 1 verified. GB: 2 sends, both verified.
    for n in 0..4 {
        let number = format!("+1415555267{n}");
        let vid = issue(&store, &number).await;
        if n == 0 {
            assert!(verify(&store, &number, vid, true).await);
        }
    }
    for number in ["+442071838750", "+442071838751"] {
        let vid = issue(&store, number).await;
        assert!(verify(&store, number, vid, true).await);
    }
    let mut ratios = store.conversion_by_country().await.unwrap();
    ratios.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(ratios, [("GB".to_owned(), 1.0), ("US".to_owned(), 0.25)]);
}

/// A CAPTCHA token (its digest) is seen once within its memory; another token is its own.
async fn a_captcha_token_is_taken_once(mut backend: impl Backend) {
    let store = backend.store(policy());
    assert!(store.first_captcha("digest-a").await.unwrap());
    assert!(!store.first_captcha("digest-a").await.unwrap(), "a reuse");
    assert!(store.first_captcha("digest-b").await.unwrap());
}

/// A cancel voids the live code once: verify fails, the record says canceled, a queued job is
/// withdrawn; a used, canceled or unknown verification has nothing to cancel.
async fn a_canceled_code_is_void_and_its_job_withdrawn(mut backend: impl Backend) {
    let store = backend.store(policy());
    let ledger = backend.ledger();
    let vid = issue(&store, NUMBER).await;
    assert!(store.cancel(vid).await.unwrap());
    assert_eq!(live_code(&store, NUMBER).await, None);
    assert!(
        !verify(&store, NUMBER, vid, true).await,
        "a canceled code verified"
    );
    assert_eq!(state(&store, vid).await, Some(DeliveryState::Canceled));
    let job = Entry {
        verification_id: vid,
        job_id: Uuid::new_v4(),
    };
    let claim = ledger.claim_send(job, Uuid::new_v4()).await.unwrap();
    assert_eq!(claim, Claim::Withdrawn);
    assert!(!store.cancel(vid).await.unwrap(), "canceled twice");
    assert!(!store.cancel(Uuid::new_v4()).await.unwrap(), "unknown");

    let used = issue(&store, OTHER).await;
    assert!(verify(&store, OTHER, used, true).await);
    assert!(!store.cancel(used).await.unwrap(), "a used code");
    // A newer code for the number is not the canceled verification's to void.
    let first = issue(&store, THIRD).await;
    let second = issue(&store, THIRD).await;
    assert!(!store.cancel(first).await.unwrap(), "a replaced code");
    assert_eq!(live_code(&store, THIRD).await.map(|(v, _)| v), Some(second));
}
