//! The provider rate's rule, checked once against both limiters (`otp_testkit::conformance!`):
//! `RateLimiter` (Redis, shared by every dispatcher, on Redis's clock) and `MemoryRateLimiter`
//! (this process, on tokio's paused clock). The checks read the reserved slots, not how long a
//! run took, so a loaded machine cannot fail them.

use std::time::Duration;

use otp_delivery::limiter::{MemoryRateLimiter, RateLimiter, SendRate};
use tokio::time::Instant;

use crate::helpers::World;

/// One reservation, with when it was asked for and answered.
struct Reserved {
    start: Instant,
    end: Instant,
    wait: Option<Duration>,
}

async fn reserve(limiter: &dyn SendRate, max_wait: Duration) -> Reserved {
    let start = Instant::now();
    let wait = limiter.reserve(max_wait).await.unwrap();
    Reserved {
        start,
        end: Instant::now(),
        wait,
    }
}

/// Whether a slot answered `r.wait` after the limiter's clock read it (somewhere between
/// `r.start` and `r.end`) can be `offset` after the first reservation's reading (somewhere in
/// `first`). This holds or fails the same however slow the machine is: no bound on elapsed time.
fn at_offset(r: &Reserved, first: &Reserved, offset: Duration) -> bool {
    let wait = r.wait.expect("reserved");
    let slack = Duration::from_millis(1); // Redis rounds waits up to whole milliseconds
    r.start + wait <= first.end + offset + slack && r.end + wait + slack >= first.start + offset
}

/// 15 reservations at 5 per second: a burst of 5 (one second's worth) at once, then one every
/// 200 ms, so the 15th slot is 2 s after the first.
async fn holds_the_cap(backend: Backend) {
    let limiter = backend.limiter(5);
    let far = Duration::from_secs(60);
    let first = reserve(&*limiter, far).await;
    assert_eq!(first.wait, Some(Duration::ZERO));
    for k in 1..15u32 {
        let r = reserve(&*limiter, far).await;
        let offset = Duration::from_millis(200) * k.saturating_sub(4);
        if offset > r.end - first.start {
            assert!(at_offset(&r, &first, offset), "slot {k}: {:?}", r.wait);
        } else {
            // The machine was slower than the schedule: the slot is now.
            assert_eq!(r.wait, Some(Duration::ZERO), "slot {k}");
        }
    }
}

/// At 1 per second, a slot past the caller's limit is refused and not reserved: the next
/// caller gets it, 1 s after the first (not 2 s).
async fn refuses_past_the_deadline_reserving_nothing(backend: Backend) {
    let limiter = backend.limiter(1);
    let far = Duration::from_secs(60);
    let first = reserve(&*limiter, far).await;
    assert_eq!(first.wait, Some(Duration::ZERO));
    let refused = reserve(&*limiter, Duration::from_millis(100)).await;
    if refused.end - first.start < Duration::from_millis(900) {
        assert_eq!(refused.wait, None, "the next slot is about 1 s away");
    }
    let next = reserve(&*limiter, far).await;
    let second = Duration::from_secs(1);
    assert!(
        at_offset(&next, &first, second),
        "the refused slot was reserved: {:?}",
        next.wait
    );
}

/// `acquire` sleeps until its slot: on tokio's paused clock, exactly.
#[tokio::test(start_paused = true)]
async fn acquire_sleeps_until_the_reserved_slot() {
    let limiter = MemoryRateLimiter::new(2);
    let started = Instant::now();
    let far = started + Duration::from_secs(60);
    for _ in 0..4 {
        assert!(limiter.acquire(far).await.unwrap());
    }
    // Two at once, then one every 500 ms.
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(!limiter.acquire(Instant::now()).await.unwrap());
}

/// Where the rate lives.
enum Backend {
    Redis(Box<World>),
    Memory,
}

impl Backend {
    fn limiter(&self, per_second: u32) -> Box<dyn SendRate> {
        match self {
            Self::Redis(world) => Box::new(RateLimiter::new(
                world.redis.clone(),
                &world.keys(),
                per_second,
            )),
            Self::Memory => Box::new(MemoryRateLimiter::new(per_second)),
        }
    }
}

async fn on_redis() -> Backend {
    Backend::Redis(Box::new(World::new().await))
}

async fn in_memory() -> Backend {
    Backend::Memory
}

otp_testkit::conformance!(
    shared: on_redis, in_memory: in_memory;
    holds_the_cap,
    refuses_past_the_deadline_reserving_nothing,
);
