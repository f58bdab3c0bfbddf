//! The delivery's Prometheus metrics, served at `GET /metrics`: on DISPATCHER_HTTP_PORT by
//! otp-dispatcher, beside the API's by `otp-api --embedded`.
//! Names are stable (dashboards and alerts depend on them); labels are bounded sets. Every
//! labelled series is resolved once, here, so recording is a plain atomic operation.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGauge, IntGaugeVec, Registry};

use otp_shared::metrics::{self as m, LATENCY_BUCKETS, WAIT_BUCKETS};

use crate::outcome::DeadReason;

/// How a job ended, for `otp_jobs_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    Sent,
    /// Dead-lettered: a permanent provider refusal, or an unreadable message.
    Failed,
    Expired,
    /// The API withdrew it (its publish was not confirmed); not sent.
    Withdrawn,
    /// Its outcome was already recorded (a redelivery or duplicate publish); not sent again.
    Duplicate,
}

/// The providers metrics are kept for.
const PROVIDERS: [&str; 2] = ["plivo", "twilio"];

pub struct DeliveryMetrics {
    registry: Registry,
    jobs: [IntCounter; 5],
    /// Indexed like `PROVIDERS`.
    providers: Vec<ProviderMetrics>,
    breakers: Vec<IntGauge>,
    /// Indexed like `PROVIDERS`.
    sends: Vec<IntCounter>,
    /// `[from][to]`, indexed like `PROVIDERS`.
    failovers: Vec<Vec<IntCounter>>,
    /// Indexed like `DeadReason::ALL`.
    dead_lettered: Vec<IntCounter>,
    pub send_retries: IntCounter,
    pub jobs_in_flight: IntGauge,
    pub time_to_accept: Histogram,
    /// How long a send waited for its slot under the shared rate (SMS_MAX_RPS).
    pub rate_wait: Histogram,
    /// Messages waiting in the send queue and in its dead-letter queue. Only the dispatcher
    /// holding the depth lease exports them, so each queue has one series.
    pub queue_ready: IntGaugeVec,
    pub dead_letters: IntGaugeVec,
    /// 1 while this dispatcher's shared settings disagree with the API's (registered by
    /// [`DeliveryMetrics::for_process`]: only a dispatcher process compares them).
    pub config_mismatch: IntGauge,
    /// Verification events (`sent`, `failed`) whose publish was not confirmed (a dispatcher
    /// process's; registered by [`DeliveryMetrics::for_process`]).
    pub events_failed: IntCounter,
}

/// The provider-call metrics, handed to the provider client.
#[derive(Clone)]
pub struct ProviderMetrics {
    /// 2xx, 429, 4xx (other than 429), 5xx, other (1xx/3xx) and error (no answer: connect
    /// error or timeout).
    by_class: [IntCounter; 6],
    duration: Histogram,
}

impl ProviderMetrics {
    /// Records one call: its HTTP status (`None` when no answer came) and how long it took.
    pub fn observe(&self, status: Option<u16>, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        let class = match status {
            Some(200..=299) => 0,
            Some(429) => 1,
            Some(400..=499) => 2,
            Some(500..=599) => 3,
            Some(_) => 4,
            None => 5,
        };
        self.by_class[class].inc();
    }
}

impl DeliveryMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let jobs = m::counter_vec(
            &registry,
            "otp_jobs_total",
            "Send jobs finished, by result (sent, failed, expired, withdrawn, duplicate).",
            &["result"],
        );
        let job = |r: &str| jobs.with_label_values(&[r]);
        let provider_requests = m::counter_vec(
            &registry,
            "otp_provider_requests_total",
            "SMS provider calls, by provider and status class (2xx, 429, 4xx, 5xx, other, error).",
            &["provider", "status_class"],
        );
        let duration = m::histogram_vec(
            &registry,
            "otp_provider_request_duration_seconds",
            "Time an SMS provider call took, answered or not.",
            &["provider"],
            LATENCY_BUCKETS,
        );
        let breaker_state = m::gauge_vec(
            &registry,
            "otp_provider_breaker_state",
            "Each provider's circuit breaker: 0 closed, 1 open, 2 half-open.",
            &["provider"],
        );
        let providers = PROVIDERS
            .iter()
            .map(|p| {
                let class = |c: &str| provider_requests.with_label_values(&[p, c]);
                ProviderMetrics {
                    by_class: [
                        class("2xx"),
                        class("429"),
                        class("4xx"),
                        class("5xx"),
                        class("other"),
                        class("error"),
                    ],
                    duration: duration.with_label_values(&[p]),
                }
            })
            .collect();
        let sends = m::counter_vec(
            &registry,
            "otp_sends_total",
            "SMS accepted by a provider, by provider.",
            &["provider"],
        );
        let failovers = m::counter_vec(
            &registry,
            "otp_failovers_total",
            "Attempts of a job that moved to another provider than its previous attempt's.",
            &["from", "to"],
        );
        let dead_lettered = m::counter_vec(
            &registry,
            "otp_dead_letters_total",
            "Send jobs dead-lettered, by reason (rejected, no_provider, unreadable).",
            &["reason"],
        );
        Self {
            providers,
            sends: PROVIDERS
                .iter()
                .map(|p| sends.with_label_values(&[p]))
                .collect(),
            failovers: PROVIDERS
                .iter()
                .map(|from| {
                    PROVIDERS
                        .iter()
                        .map(|to| failovers.with_label_values(&[from, to]))
                        .collect()
                })
                .collect(),
            dead_lettered: DeadReason::ALL
                .iter()
                .map(|r| dead_lettered.with_label_values(&[r.as_str()]))
                .collect(),
            breakers: PROVIDERS
                .iter()
                .map(|p| breaker_state.with_label_values(&[p]))
                .collect(),
            jobs: [
                job("sent"),
                job("failed"),
                job("expired"),
                job("withdrawn"),
                job("duplicate"),
            ],
            send_retries: m::counter(
                &registry,
                "otp_send_retries_total",
                "Provider calls that were retries of an earlier failed call.",
            ),
            jobs_in_flight: m::gauge(
                &registry,
                "otp_jobs_in_flight",
                "Send jobs this dispatcher is working on now.",
            ),
            time_to_accept: m::histogram(
                &registry,
                "otp_job_time_to_accept_seconds",
                "Time from a job's createdAt to the provider's 2xx.",
                WAIT_BUCKETS,
            ),
            rate_wait: m::histogram(
                &registry,
                "otp_rate_wait_seconds",
                "Time a send waited for its slot under the shared rate (SMS_MAX_RPS).",
                WAIT_BUCKETS,
            ),
            queue_ready: m::gauge_vec(
                &registry,
                "otp_queue_ready_messages",
                "Send jobs waiting in the queue, by queue (refreshed every few seconds by one \
                 dispatcher).",
                &["queue"],
            ),
            dead_letters: m::gauge_vec(
                &registry,
                "otp_dead_letter_messages",
                "Messages in the dead-letter queue, by queue (refreshed every few seconds by one \
                 dispatcher).",
                &["queue"],
            ),
            config_mismatch: IntGauge::new(
                "otp_config_mismatch",
                "1 while this dispatcher's shared settings differ from the API's fingerprint \
                 (or it finds none while jobs arrive): it does not consume.",
            )
            .expect("a valid gauge"),
            events_failed: IntCounter::new(
                "otp_events_failed_total",
                "Verification events that could not be published (the job was handled).",
            )
            .expect("a valid counter"),
            registry,
        }
    }

    /// The metrics of a dispatcher process: these, `otp_config_mismatch`, the process
    /// collector and `otp_build_info`.
    pub fn for_process() -> Self {
        let metrics = Self::new();
        m::process(&metrics.registry);
        metrics
            .registry
            .register(Box::new(metrics.config_mismatch.clone()))
            .expect("registered once");
        metrics
            .registry
            .register(Box::new(metrics.events_failed.clone()))
            .expect("registered once");
        metrics
    }

    /// The call metrics of a provider (`plivo` or `twilio`).
    pub fn provider(&self, name: &str) -> ProviderMetrics {
        let index = index_of(name).unwrap_or(0);
        self.providers[index].clone()
    }

    /// The breaker-state gauge of a provider.
    pub fn breaker(&self, name: &str) -> IntGauge {
        let index = index_of(name).unwrap_or(0);
        self.breakers[index].clone()
    }

    /// An SMS `provider` accepted.
    pub fn sent_by(&self, provider: &str) {
        if let Some(i) = index_of(provider) {
            self.sends[i].inc();
        }
    }

    /// A job's attempt went to `to` after its previous one went to `from`.
    pub fn failover(&self, from: &str, to: &str) {
        if let (Some(f), Some(t)) = (index_of(from), index_of(to)) {
            self.failovers[f][t].inc();
        }
    }

    pub fn dead_lettered(&self, reason: DeadReason) {
        let index = DeadReason::ALL.iter().position(|r| *r == reason);
        self.dead_lettered[index.unwrap_or(0)].inc();
    }

    pub fn job(&self, result: JobResult) {
        let index = match result {
            JobResult::Sent => 0,
            JobResult::Failed => 1,
            JobResult::Expired => 2,
            JobResult::Withdrawn => 3,
            JobResult::Duplicate => 4,
        };
        self.jobs[index].inc();
    }

    /// Every metric in Prometheus' text format.
    pub fn render(&self) -> String {
        m::render(&self.registry)
    }
}

fn index_of(provider: &str) -> Option<usize> {
    PROVIDERS.iter().position(|p| *p == provider)
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a job as in flight for as long as the guard lives.
pub struct InFlight<'a>(&'a IntGauge);

impl<'a> InFlight<'a> {
    pub fn start(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family, label and label value this binary exports is named in the metrics doc.
    #[test]
    fn the_operations_doc_names_every_series() {
        let metrics = DeliveryMetrics::for_process();
        metrics.provider("plivo");
        metrics.provider("twilio");
        metrics.queue_ready.with_label_values(&["otp.sms"]).set(0);
        metrics
            .dead_letters
            .with_label_values(&["otp.sms.dead"])
            .set(0);
        let doc = include_str!("../../docs/operations.md");
        let missing = otp_testkit::undocumented_metrics(&metrics.render(), doc);
        assert!(
            missing.is_empty(),
            "docs/operations.md does not name: {missing:#?}"
        );
    }

    #[test]
    fn provider_calls_are_counted_by_status_class() {
        let metrics = DeliveryMetrics::new();
        for status in [Some(202), Some(429), Some(400), Some(503), None] {
            metrics
                .provider("plivo")
                .observe(status, Duration::from_millis(5));
        }
        {
            let _a = InFlight::start(&metrics.jobs_in_flight);
            assert_eq!(metrics.jobs_in_flight.get(), 1);
        }
        let text = metrics.render();
        for class in ["2xx", "429", "4xx", "5xx", "error"] {
            let line = format!(
                "otp_provider_requests_total{{provider=\"plivo\",status_class=\"{class}\"}} 1"
            );
            assert!(text.contains(&line), "{line} missing in {text}");
        }
        assert!(text.contains("otp_jobs_in_flight 0"));
        assert!(text.contains("otp_provider_request_duration_seconds_count{provider=\"plivo\"} 5"));
    }
}
