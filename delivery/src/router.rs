//! Which provider each attempt of a job goes to: the first in SMS_PROVIDERS order whose circuit
//! breaker lets it through and on which the job has not used up FAILOVER_AFTER_RETRIES retries.
//! A provider that cannot send at all (bad credentials) is skipped for the rest of the job; a
//! refusal about the number ends the job, since another provider would refuse it too.

use std::sync::{Arc, Mutex};

use crate::{breaker::Breaker, metrics::DeliveryMetrics, outcome::Attempt, sender::SmsSender};

pub struct Provider {
    pub sender: Arc<dyn SmsSender>,
    pub breaker: Breaker,
}

pub struct Router {
    providers: Vec<Provider>,
    failover_after: u32,
    /// Counts failovers (`otp_failovers_total`).
    metrics: Arc<DeliveryMetrics>,
}

/// One job's way through the providers.
pub struct JobRoute {
    state: Mutex<RouteState>,
}

struct RouteState {
    /// Provider indexes in the order this job tries them.
    order: Vec<usize>,
    retries: Vec<u32>,
    unusable: Vec<bool>,
    last: Option<&'static str>,
}

impl JobRoute {
    /// The provider of the latest attempt (the one that accepted, once the job is sent).
    pub fn last_provider(&self) -> Option<&'static str> {
        self.lock().last
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Router {
    /// `providers` in order of preference; there is at least one (the config guarantees it).
    pub fn new(
        providers: Vec<Provider>,
        failover_after: u32,
        metrics: Arc<DeliveryMetrics>,
    ) -> Self {
        Self {
            providers,
            failover_after,
            metrics,
        }
    }

    pub fn route(&self) -> JobRoute {
        self.route_avoiding(None)
    }

    /// A route that tries `avoid` last: a resend goes to the next provider when there is one.
    pub fn route_avoiding(&self, avoid: Option<&str>) -> JobRoute {
        let n = self.providers.len();
        let (mut order, last): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|i| Some(self.providers[*i].sender.name()) != avoid);
        order.extend(last);
        JobRoute {
            state: Mutex::new(RouteState {
                order,
                retries: vec![0; n],
                unusable: vec![false; n],
                last: None,
            }),
        }
    }

    /// One attempt of the job through the best provider available now.
    pub async fn attempt(&self, route: &JobRoute, destination: &str, text: &str) -> Attempt {
        let candidates = {
            let state = route.lock();
            let usable: Vec<usize> = state
                .order
                .iter()
                .copied()
                .filter(|i| !state.unusable[*i])
                .collect();
            let within_budget: Vec<usize> = usable
                .iter()
                .copied()
                .filter(|i| state.retries[*i] < self.failover_after)
                .collect();
            // Every provider past its budget: keep trying them, in order, until the job expires.
            if within_budget.is_empty() {
                usable
            } else {
                within_budget
            }
        };
        let mut chosen = None;
        for i in candidates {
            if self.providers[i].breaker.allows().await {
                chosen = Some(i);
                break;
            }
        }
        let Some(i) = chosen else {
            return Attempt::Retry {
                reason: "every provider's circuit breaker is open".into(),
                after: None,
            };
        };
        let provider = &self.providers[i];
        let name = provider.sender.name();
        if let Some(from) = route.lock().last.replace(name).filter(|from| *from != name) {
            self.metrics.failover(from, name);
        }
        let attempt = provider.sender.send(destination, text).await;
        let works = matches!(attempt, Attempt::Sent { .. } | Attempt::Fail { .. });
        provider.breaker.record(works).await;
        let mut state = route.lock();
        match attempt {
            Attempt::Retry { reason, after } => {
                state.retries[i] += 1;
                if state.retries[i] == self.failover_after && self.providers.len() > 1 {
                    tracing::warn!(
                        provider = name,
                        "retry budget spent on this provider; failing over"
                    );
                }
                Attempt::Retry { reason, after }
            }
            Attempt::Unusable { reason } => {
                state.unusable[i] = true;
                if state.unusable.iter().all(|u| *u) {
                    return Attempt::Unusable { reason };
                }
                tracing::warn!(provider = name, %reason, "provider unusable for this job; failing over");
                // Straight to the next provider, no backoff.
                Attempt::Retry {
                    reason,
                    after: Some(std::time::Duration::ZERO),
                }
            }
            other => other,
        }
    }
}
