//! otp-api's Prometheus metrics, served at `GET /metrics`. Names are stable: dashboards and
//! alerts depend on them. Labels are bounded sets (routes, statuses, outcomes, limits), never a
//! number, an id or an error text. Every labelled series is resolved once, here, so recording
//! is a plain atomic increment.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGaugeVec, Registry};

use otp_shared::metrics::{self as m, LATENCY_BUCKETS};

use crate::{callers::Caller, queue::PublishError, store::LimitKind};

/// Route labels: the API's paths as templates, plus `other` for anything unknown.
const ROUTES: [&str; 14] = [
    "/api/otp/request",
    "/api/otp/verify",
    "/api/otp/status/{verificationId}",
    "/api/otp/cancel",
    "/api/otp/callbacks/plivo",
    "/api/otp/callbacks/twilio",
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/.well-known/jwks.json",
    "other",
];
/// Every status the API answers with.
const STATUSES: [u16; 16] = [
    200, 202, 204, 304, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503,
];

pub struct ApiMetrics {
    registry: Registry,
    /// The `client` label's values: each caller key's id, then `public`.
    clients: Vec<String>,
    requests: IntCounterVec,
    /// `requests` resolved per (client, route, status), indexed
    /// `(client * ROUTES.len() + route) * STATUSES.len() + status`.
    request_series: Vec<IntCounter>,
    durations: Vec<Histogram>,
    /// By client, indexed like `clients`.
    codes_issued: Vec<IntCounter>,
    /// Resends published after an undelivered or failed report.
    pub resends: IntCounter,
    verify_success: IntCounter,
    verify_invalid: IntCounter,
    verify_rate_limited: IntCounter,
    rate_limited: Vec<IntCounter>,
    publish_duration: Histogram,
    publish_failures: [IntCounter; 5],
    /// By report status, indexed like `REPORT_STATUSES`.
    delivery_reports: Vec<IntCounter>,
    fraud_blocked_requests: IntCounterVec,
    fraud_blocks: IntCounterVec,
    /// Refreshed by the fraud guard's task; only countries seen in the window.
    pub conversion_ratio: prometheus::GaugeVec,
    /// Each configured send budget's limit and what is left of it this hour, by scope
    /// (`global` or a country); refreshed by [`crate::startup::watch_budgets`].
    pub budget_limit: IntGaugeVec,
    pub budget_remaining: IntGaugeVec,
    /// Consumers of the send queue (the dispatchers), by queue; refreshed by the publisher.
    pub queue_consumers: IntGaugeVec,
    /// CAPTCHA checks by result, indexed like `CheckResult::ALL`.
    captcha_checks: Vec<IntCounter>,
    /// Time of the CAPTCHA provider's siteverify call.
    pub captcha_duration: Histogram,
    /// Verification events whose publish was not confirmed.
    pub events_failed: IntCounter,
}

/// Report statuses counted by name (Plivo's and Twilio's), and `replayed` for a report seen
/// before (not applied again); any other is counted as `other`.
const REPORT_STATUSES: [&str; 8] = [
    "queued",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "rejected",
    "replayed",
    "other",
];

/// How a verify ended, for `otp_verifications_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOutcome {
    Success,
    Invalid,
    RateLimited,
}

impl ApiMetrics {
    /// Metrics where every caller is `public` (no caller keys).
    pub fn new() -> Self {
        Self::with_clients(vec!["public".to_owned()])
    }

    /// Counts one CAPTCHA check.
    pub fn captcha_check(&self, result: CheckResult) {
        let index = CheckResult::ALL.iter().position(|r| *r == result);
        if let Some(counter) = index.and_then(|i| self.captcha_checks.get(i)) {
            counter.inc();
        }
    }

    /// Metrics with a `client` label bounded by `clients` (the caller keys' ids and `public`,
    /// last: see [`crate::callers::Callers::labels`]).
    pub fn with_clients(clients: Vec<String>) -> Self {
        let registry = Registry::new();
        m::process(&registry);
        let requests = m::counter_vec(
            &registry,
            "otp_http_requests_total",
            "HTTP requests answered, by route template, status code and client (caller key id, or public).",
            &["route", "status", "client"],
        );
        let request_series = clients
            .iter()
            .flat_map(|client| ROUTES.iter().map(move |route| (client, route)))
            .flat_map(|(client, route)| {
                let requests = &requests;
                STATUSES.iter().map(move |s| {
                    requests.with_label_values(&[*route, s.to_string().as_str(), client])
                })
            })
            .collect();
        let issued = m::counter_vec(
            &registry,
            "otp_codes_issued_total",
            "Codes issued whose send job the broker confirmed, by client (caller key id, or public).",
            &["client"],
        );
        let codes_issued = clients
            .iter()
            .map(|c| issued.with_label_values(&[c]))
            .collect();
        let duration_vec = m::histogram_vec(
            &registry,
            "otp_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            &["route"],
            LATENCY_BUCKETS,
        );
        let durations = ROUTES
            .iter()
            .map(|r| duration_vec.with_label_values(&[r]))
            .collect();
        let verifications = m::counter_vec(
            &registry,
            "otp_verifications_total",
            "Verify requests that reached a decision, by outcome (success, invalid, rate_limited).",
            &["outcome"],
        );
        let limited = m::counter_vec(
            &registry,
            "otp_rate_limited_total",
            "Requests refused by an abuse limit, by limit.",
            &["limit"],
        );
        let failures = m::counter_vec(
            &registry,
            "otp_publish_failures_total",
            "Send-job publishes that failed (the request got 503), by reason.",
            &["reason"],
        );
        let failure = |r: &str| failures.with_label_values(&[r]);
        let fraud_blocked_requests = m::counter_vec(
            &registry,
            "otp_fraud_blocked_requests_total",
            "Code requests to a prefix the fraud guard blocked (in monitor mode: would block).",
            &["country"],
        );
        let fraud_blocks = m::counter_vec(
            &registry,
            "otp_fraud_blocks_total",
            "Prefixes the fraud guard blocked (in monitor mode: would block).",
            &["country"],
        );
        let conversion_ratio = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "otp_conversion_ratio",
                "Verified ÷ sent over the fraud guard's window, per country seen in it.",
            ),
            &["country"],
        )
        .expect("valid gauge definition");
        registry
            .register(Box::new(conversion_ratio.clone()))
            .expect("metric names are unique");
        let reports = m::counter_vec(
            &registry,
            "otp_delivery_reports_total",
            "Signed delivery reports received, by provider and status.",
            &["provider", "status"],
        );
        Self {
            clients,
            codes_issued,
            resends: m::counter(
                &registry,
                "otp_resends_total",
                "Resends the broker confirmed after an undelivered or failed report.",
            ),
            verify_success: verifications.with_label_values(&["success"]),
            verify_invalid: verifications.with_label_values(&["invalid"]),
            verify_rate_limited: verifications.with_label_values(&["rate_limited"]),
            // Indexed by position in `LimitKind::ALL`.
            rate_limited: LimitKind::ALL
                .iter()
                .map(|l| limited.with_label_values(&[l.name()]))
                .collect(),
            publish_duration: m::histogram(
                &registry,
                "otp_publish_duration_seconds",
                "Time from publishing a send job to the broker's confirm (or failure).",
                LATENCY_BUCKETS,
            ),
            publish_failures: [
                failure("not_connected"),
                failure("nacked"),
                failure("returned"),
                failure("timeout"),
                failure("broker"),
            ],
            delivery_reports: ["plivo", "twilio"]
                .iter()
                .flat_map(|provider| {
                    REPORT_STATUSES
                        .iter()
                        .map(move |status| (*provider, *status))
                })
                .map(|(provider, status)| reports.with_label_values(&[provider, status]))
                .collect(),
            fraud_blocked_requests,
            fraud_blocks,
            conversion_ratio,
            budget_limit: m::gauge_vec(
                &registry,
                "otp_send_budget_limit",
                "A configured hourly send budget, by scope (global, or a country code).",
                &["scope"],
            ),
            budget_remaining: m::gauge_vec(
                &registry,
                "otp_send_budget_remaining",
                "Sends left in the current hour under a budget, by scope (global, or a country \
                 code).",
                &["scope"],
            ),
            queue_consumers: m::gauge_vec(
                &registry,
                "otp_queue_consumers",
                "Consumers (dispatchers) of the send queue, by queue; 0 means its jobs wait.",
                &["queue"],
            ),
            captcha_checks: {
                let checks = m::counter_vec(
                    &registry,
                    "otp_captcha_checks_total",
                    "CAPTCHA checks of callers without a key, by result.",
                    &["result"],
                );
                CheckResult::ALL
                    .iter()
                    .map(|r| checks.with_label_values(&[r.as_str()]))
                    .collect()
            },
            events_failed: m::counter(
                &registry,
                "otp_events_failed_total",
                "Verification events that could not be published (the request was served).",
            ),
            captcha_duration: m::histogram(
                &registry,
                "otp_captcha_request_duration_seconds",
                "Time of the CAPTCHA provider's siteverify call.",
                LATENCY_BUCKETS,
            ),
            requests,
            request_series,
            durations,
            registry,
        }
    }

    /// The `client` label's index for `caller`.
    pub fn client(&self, caller: &Caller) -> usize {
        let public = self.clients.len() - 1;
        match caller {
            Caller::Public => public,
            Caller::Key(id) => self
                .clients
                .iter()
                .position(|c| c.as_str() == &**id)
                .unwrap_or(public),
        }
    }

    /// Counts one answered request (`client` from [`Self::client`]) and its latency.
    pub fn observe_request(&self, route: Route, status: u16, client: usize, elapsed: Duration) {
        let route = route.0;
        self.durations[route].observe(elapsed.as_secs_f64());
        match STATUSES.iter().position(|s| *s == status) {
            Some(s) => {
                let index = (client * ROUTES.len() + route) * STATUSES.len() + s;
                self.request_series[index].inc();
            }
            // A status outside the table: still counted, through the (locking) label lookup.
            None => self
                .requests
                .with_label_values(&[ROUTES[route], &status.to_string(), &self.clients[client]])
                .inc(),
        }
    }

    /// Counts a code issued (its send job confirmed) for `caller`.
    pub fn code_issued(&self, caller: &Caller) {
        self.codes_issued[self.client(caller)].inc();
    }

    pub fn verification(&self, outcome: VerifyOutcome) {
        match outcome {
            VerifyOutcome::Success => &self.verify_success,
            VerifyOutcome::Invalid => &self.verify_invalid,
            VerifyOutcome::RateLimited => &self.verify_rate_limited,
        }
        .inc();
    }

    pub fn rate_limited(&self, limit: LimitKind) {
        if let Some(index) = LimitKind::ALL.iter().position(|l| *l == limit) {
            self.rate_limited[index].inc();
        }
    }

    pub fn publish(&self, elapsed: Duration, result: Result<(), &PublishError>) {
        self.publish_duration.observe(elapsed.as_secs_f64());
        if let Err(e) = result {
            let index = match e {
                PublishError::NotConnected => 0,
                PublishError::Nacked => 1,
                PublishError::Returned(_) => 2,
                PublishError::Timeout(_) => 3,
                PublishError::Broker(_) => 4,
            };
            self.publish_failures[index].inc();
        }
    }

    /// Counts a signed delivery report of `provider` (plivo or twilio).
    pub fn delivery_report(&self, provider: &str, status: &str) {
        let status = REPORT_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(REPORT_STATUSES.len() - 1);
        let provider = usize::from(provider == "twilio");
        self.delivery_reports[provider * REPORT_STATUSES.len() + status].inc();
    }

    /// A request to a blocked prefix (rare: the label lookup's lock is fine here).
    pub fn fraud_blocked_request(&self, country: &str) {
        self.fraud_blocked_requests
            .with_label_values(&[country])
            .inc();
    }

    /// A prefix newly blocked.
    pub fn fraud_block(&self, country: &str) {
        self.fraud_blocks.with_label_values(&[country]).inc();
    }

    /// Every metric in Prometheus' text format.
    pub fn render(&self) -> String {
        m::render(&self.registry)
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A request's route, from its path: the metrics label, and what a 405 allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route(usize);

impl Route {
    pub fn of(path: &str) -> Self {
        Self(match path {
            "/api/otp/request" => 0,
            "/api/otp/verify" => 1,
            p if p.starts_with("/api/otp/status/") => 2,
            "/api/otp/cancel" => 3,
            "/api/otp/callbacks/plivo" => 4,
            "/api/otp/callbacks/twilio" => 5,
            "/" => 6,
            "/healthz" => 7,
            "/readyz" => 8,
            "/metrics" => 9,
            "/openapi.json" => 10,
            p if p == "/docs" || p.starts_with("/docs/") => 11,
            "/.well-known/jwks.json" => 12,
            _ => ROUTES.len() - 1,
        })
    }

    /// The OTP routes: a caller key is checked on these (see [`crate::callers`]).
    pub fn keyed(self) -> bool {
        matches!(self.0, 0..=3)
    }

    /// The `Allow` header of a 405 (RFC 9110 §15.5.6).
    pub fn allow(self) -> &'static str {
        match self.0 {
            0 | 1 | 3..=5 => "POST",
            _ => "GET",
        }
    }
}

/// How a check ended, as `otp_captcha_checks_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Passed,
    Failed,
    Missing,
    Unavailable,
    FailOpen,
}

impl CheckResult {
    pub const ALL: [Self; 5] = [
        Self::Passed,
        Self::Failed,
        Self::Missing,
        Self::Unavailable,
        Self::FailOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Missing => "missing",
            Self::Unavailable => "unavailable",
            Self::FailOpen => "fail_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family, label and label value this binary exports is named in the metrics doc.
    #[test]
    fn the_operations_doc_names_every_series() {
        let metrics = ApiMetrics::new();
        metrics.fraud_blocked_request("US");
        metrics.fraud_block("US");
        metrics.conversion_ratio.with_label_values(&["US"]).set(0.5);
        for scope in ["global", "US"] {
            metrics.budget_limit.with_label_values(&[scope]).set(10);
            metrics.budget_remaining.with_label_values(&[scope]).set(9);
        }
        metrics
            .queue_consumers
            .with_label_values(&["otp.sms"])
            .set(2);
        let doc = include_str!("../../docs/operations.md");
        let missing = otp_testkit::undocumented_metrics(&metrics.render(), doc);
        assert!(
            missing.is_empty(),
            "docs/operations.md does not name: {missing:#?}"
        );
    }

    #[test]
    fn unknown_paths_and_statuses_stay_in_bounded_labels() {
        let metrics = ApiMetrics::with_clients(vec!["web".into(), "public".into()]);
        let (web, public) = (
            metrics.client(&Caller::Key("web".into())),
            metrics.client(&Caller::Public),
        );
        assert_eq!(metrics.client(&Caller::Key("gone".into())), public);
        let ms = Duration::from_millis(1);
        metrics.observe_request(Route::of("/api/otp/status/1234"), 404, web, ms);
        metrics.observe_request(Route::of("/wp-admin/+14155552671"), 404, public, ms);
        metrics.observe_request(Route::of("/api/otp/request"), 418, web, ms);
        metrics.code_issued(&Caller::Key("web".into()));
        assert_eq!(Route::of("/api/otp/callbacks/twilio").allow(), "POST");
        assert_eq!(Route::of("/readyz").allow(), "GET");
        let text = metrics.render();
        let series = |s: &str| otp_testkit::metric_value(&text, s);
        let status = r#"otp_http_requests_total{client="web",route="/api/otp/status/{verificationId}",status="404"}"#;
        assert_eq!(series(status), 1.0);
        let other = r#"otp_http_requests_total{client="public",route="other",status="404"}"#;
        assert_eq!(series(other), 1.0);
        let teapot =
            r#"otp_http_requests_total{client="web",route="/api/otp/request",status="418"}"#;
        assert_eq!(series(teapot), 1.0);
        assert_eq!(series(r#"otp_codes_issued_total{client="web"}"#), 1.0);
        assert_eq!(series(r#"otp_codes_issued_total{client="public"}"#), 0.0);
        assert!(!text.contains("14155552671"));
    }
}
