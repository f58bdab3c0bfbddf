//! Rules both code stores apply alike (the Lua scripts beside [`super::RedisStore`] and
//! [`super::MemoryStore`]): lifetimes, and how a limit's state is reported.

use otp_shared::phone::PhoneNumber;

use super::RateLimit;

/// Replayable responses are kept this long (the Idempotency-Key promise).
pub(super) const IDEMPOTENCY_TTL_SECONDS: u64 = 24 * 60 * 60;
/// A claim whose request never finished (process killed) frees itself after this long.
pub(super) const IDEMPOTENCY_PENDING_TTL_SECONDS: u64 = 30;
/// The window of MAX_VERIFIES_PER_NUMBER_PER_15_MINUTES.
pub(super) const VERIFY_WINDOW_SECONDS: u64 = 15 * 60;

/// The budget counter's name for a number's country (`ZZ`: no single country).
pub(super) fn country_of(phone: &PhoneNumber) -> String {
    phone
        .country()
        .map_or_else(|| "ZZ".to_owned(), |c| c.as_str().to_owned())
}

/// A limit's state from the counts a script returns, clamped into range.
pub(super) fn rate(limit: i64, remaining: i64, reset: i64) -> RateLimit {
    RateLimit {
        limit: limit.clamp(0, u32::MAX.into()) as u32,
        remaining: remaining.clamp(0, u32::MAX.into()) as u32,
        reset_seconds: reset.max(0) as u64,
    }
}

/// The tighter of two limits' states (fewer remaining); a disabled one (limit 0) never wins.
pub(super) fn tighter(a: Option<RateLimit>, b: RateLimit) -> Option<RateLimit> {
    match a {
        _ if b.limit == 0 => a,
        Some(a) if a.remaining <= b.remaining => Some(a),
        _ => Some(b),
    }
}
