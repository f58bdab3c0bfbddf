//! The retry loop: capped exponential backoff with full jitter, Retry-After honoured (capped),
//! and never past the job's expiry.

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::{RngExt, rng};
use tokio::time::Instant;

use crate::outcome::{Attempt, DeadReason, Final};

/// Backoff settings, validated at construction.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    min_delay: Duration,
    max_delay: Duration,
    retry_after_cap: Duration,
    full_jitter: bool,
}

impl Default for RetryPolicy {
    /// The settings' defaults: RETRY_MIN_DELAY_MS 500, RETRY_MAX_DELAY_MS 30000,
    /// RETRY_AFTER_CAP_SECONDS 60, with full jitter.
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            retry_after_cap: Duration::from_secs(60),
            full_jitter: true,
        }
    }
}

impl RetryPolicy {
    /// `min_delay` is the first delay's ceiling, doubling per retry up to `max_delay`; a
    /// provider's Retry-After is honoured up to `retry_after_cap`.
    pub fn new(
        min_delay: Duration,
        max_delay: Duration,
        retry_after_cap: Duration,
    ) -> Result<Self, String> {
        if min_delay.is_zero() {
            return Err("the minimum retry delay must be above zero".into());
        }
        if min_delay > max_delay {
            return Err(format!(
                "the minimum retry delay ({min_delay:?}) exceeds the maximum ({max_delay:?})"
            ));
        }
        Ok(Self {
            min_delay,
            max_delay,
            retry_after_cap,
            full_jitter: true,
        })
    }

    /// The same schedule without jitter: every delay is its ceiling. For tests.
    pub fn without_jitter(mut self) -> Self {
        self.full_jitter = false;
        self
    }

    /// Delay ceilings: min, 2·min, 4·min, … capped at max, forever.
    fn ceilings(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// Full jitter: uniformly random in [0, ceiling] (AWS architecture blog's "full jitter"),
    /// so many dispatchers retrying at once spread out instead of stampeding.
    fn jitter(&self, ceiling: Duration) -> Duration {
        if !self.full_jitter {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng().random_range(0..=nanos))
    }
}

/// Calls `attempt` (with its 1-based number) until it sends, fails for good, or the next try
/// would start at or after `deadline`.
pub async fn run_attempts<F, Fut>(policy: &RetryPolicy, deadline: Instant, mut attempt: F) -> Final
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut ceilings = policy.ceilings();
    let mut attempts = 0;
    loop {
        if Instant::now() >= deadline {
            return Final::Expired { attempts };
        }
        attempts += 1;
        let delay = match attempt(attempts).await {
            Attempt::Sent { provider_id } => {
                return Final::Sent {
                    provider_id,
                    attempts,
                };
            }
            Attempt::Fail { reason } => {
                let cause = DeadReason::Rejected;
                return Final::Failed {
                    reason,
                    cause,
                    attempts,
                };
            }
            Attempt::Unusable { reason } => {
                let cause = DeadReason::NoProvider;
                return Final::Failed {
                    reason,
                    cause,
                    attempts,
                };
            }
            Attempt::Retry { reason, after } => {
                // `without_max_times` makes the iterator endless; the fallback only satisfies
                // the type.
                let backoff = policy.jitter(ceilings.next().unwrap_or(policy.max_delay));
                let delay = after.map_or(backoff, |a| a.min(policy.retry_after_cap));
                tracing::warn!(attempt = attempts, %reason, delay_ms = delay.as_millis() as u64, "send failed; will retry");
                delay
            }
        };
        if Instant::now() + delay >= deadline {
            return Final::Expired { attempts };
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_millis(100),
            Duration::from_millis(800),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn retry(after: Option<u64>) -> Attempt {
        Attempt::Retry {
            reason: "plivo answered 500".into(),
            after: after.map(Duration::from_secs),
        }
    }

    /// Plays `script` as provider answers, recording when each attempt started.
    async fn play(
        policy: &RetryPolicy,
        deadline: Duration,
        script: Vec<Attempt>,
    ) -> (Final, Vec<Duration>) {
        let start = Instant::now();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let result = run_attempts(policy, start + deadline, |_| {
            calls.lock().unwrap().push(start.elapsed());
            let next = script.lock().unwrap().next().expect("scripted answer");
            async move { next }
        })
        .await;
        let calls = calls.lock().unwrap().clone();
        (result, calls)
    }

    #[test]
    fn policies_are_validated() {
        let s = Duration::from_secs(1);
        assert!(RetryPolicy::new(Duration::ZERO, s, s).is_err());
        assert!(RetryPolicy::new(s * 2, s, s).is_err());
        assert!(RetryPolicy::new(s, s, s).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_exponentially_growing_delays_up_to_the_cap() {
        let script = vec![
            retry(None),
            retry(None),
            retry(None),
            retry(None),
            retry(None),
            Attempt::Sent {
                provider_id: Some("m".into()),
            },
        ];
        let (result, calls) =
            play(&policy().without_jitter(), Duration::from_secs(60), script).await;
        assert_eq!(
            result,
            Final::Sent {
                provider_id: Some("m".into()),
                attempts: 6
            }
        );
        let gaps: Vec<u64> = calls
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        // Tokio timers tick in whole milliseconds, so a sleep may end a tick late.
        for (gap, want) in gaps.iter().zip([100, 200, 400, 800, 800]) {
            assert!(gap.abs_diff(want) <= 1, "{gaps:?}");
        }
        assert_eq!(gaps.len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn full_jitter_stays_within_each_ceiling() {
        let script = (0..8)
            .map(|_| retry(None))
            .chain([Attempt::Sent { provider_id: None }])
            .collect();
        let (_, calls) = play(&policy(), Duration::from_secs(60), script).await;
        assert_eq!(calls.len(), 9, "eight retries, then the send");
        let ceilings = [100, 200, 400, 800, 800, 800, 800, 800];
        for (gap, ceiling) in calls.windows(2).map(|w| w[1] - w[0]).zip(ceilings) {
            assert!(
                gap <= Duration::from_millis(ceiling + 1),
                "{gap:?} > {ceiling}ms"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_but_capped() {
        let script = vec![
            retry(Some(2)),
            retry(Some(3600)),
            Attempt::Sent { provider_id: None },
        ];
        let (_, calls) = play(&policy(), Duration::from_secs(60), script).await;
        let ms = |d: Duration| d.as_millis() as u64;
        assert!(ms(calls[1] - calls[0]).abs_diff(2000) <= 1);
        assert!(ms(calls[2] - calls[1]).abs_diff(5000) <= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let script = vec![Attempt::Fail {
            reason: "plivo answered 400".into(),
        }];
        let (result, calls) = play(&policy(), Duration::from_secs(60), script).await;
        assert_eq!(
            result,
            Final::Failed {
                reason: "plivo answered 400".into(),
                cause: DeadReason::Rejected,
                attempts: 1
            }
        );
        assert_eq!(calls.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_stops_at_the_deadline() {
        let script = (0..100).map(|_| retry(None)).collect();
        let (result, calls) = play(
            &policy().without_jitter(),
            Duration::from_millis(1000),
            script,
        )
        .await;
        // Attempts at 0, 100, 300, 700 ms; the next would start at 1500 ms, past the deadline.
        assert_eq!(result, Final::Expired { attempts: 4 });
        assert_eq!(calls.len(), 4);
        let (result, calls) = play(&policy(), Duration::ZERO, vec![]).await;
        assert_eq!((result, calls.len()), (Final::Expired { attempts: 0 }, 0));
    }
}
