//! The provider rate's rule, checked once against both limiters: `RateLimiter` (Redis, shared by
//! every dispatcher) and `MemoryRateLimiter` (this process, on tokio's paused clock).

use std::time::Duration;

use otp_delivery::limiter::{MemoryRateLimiter, RateLimiter, SendRate};
use tokio::time::Instant;

use crate::helpers::World;

/// 15 sends at 5 per second: a burst of 5 (one second's worth), then one every 200 ms, so the
/// 15th is reserved 2 s after the first.
async fn holds_the_cap(limiter: &dyn SendRate) {
    let started = Instant::now();
    let far = started + Duration::from_secs(60);
    for _ in 0..15 {
        assert!(limiter.acquire(far).await.unwrap());
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(2600),
        "{took:?}"
    );
}

/// A slot past the deadline is refused and not reserved: the next caller gets it.
async fn refuses_past_the_deadline_reserving_nothing(limiter: &dyn SendRate) {
    let started = Instant::now();
    let far = started + Duration::from_secs(60);
    // 2 per second: two at once, then the next slot is 500 ms away.
    assert!(limiter.acquire(far).await.unwrap());
    assert!(limiter.acquire(far).await.unwrap());
    let soon = Instant::now() + Duration::from_millis(100);
    assert!(!limiter.acquire(soon).await.unwrap());
    assert!(limiter.acquire(far).await.unwrap());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(800),
        "the refused slot was reserved: {took:?}"
    );
}

#[tokio::test]
async fn the_redis_limiter_holds_the_cap() {
    let world = World::new().await;
    holds_the_cap(&RateLimiter::new(world.redis.clone(), &world.keys(), 5)).await;
}

#[tokio::test(start_paused = true)]
async fn the_memory_limiter_holds_the_cap() {
    holds_the_cap(&MemoryRateLimiter::new(5)).await;
}

#[tokio::test]
async fn the_redis_limiter_refuses_past_the_deadline() {
    let world = World::new().await;
    refuses_past_the_deadline_reserving_nothing(&RateLimiter::new(
        world.redis.clone(),
        &world.keys(),
        2,
    ))
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_memory_limiter_refuses_past_the_deadline() {
    refuses_past_the_deadline_reserving_nothing(&MemoryRateLimiter::new(2)).await;
}
