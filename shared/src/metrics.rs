//! Prometheus metrics plumbing both binaries share: registration helpers and the text format.
//!
//! The `prometheus` crate is used because recording is lock-free: counters and gauges are
//! atomics, and histograms record into atomic shards (prometheus-client's histograms take a
//! mutex per observation). Labelled series are resolved to handles once, at start-up, so the hot
//! path never looks a label set up in the vector's map (which takes a read lock).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets in seconds, from 0.5 ms to 10 s: request handling, publishes and provider
/// calls all fall inside.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for how long a job waits before the provider accepts it, 10 ms to 10 minutes (a
/// code's longest life).
pub const WAIT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

// Registration fails only for a malformed or duplicate definition, which is a programming
// error caught by every test that builds an application; hence the `expect`s.

pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

pub fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = Histogram::with_opts(opts).expect("valid histogram definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid histogram definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

/// The revision the binaries were built from: `OTP_REVISION` at build time (the Dockerfile
/// passes it), or `unknown`.
pub const REVISION: &str = match option_env!("OTP_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// Registers what every process exports once: the process collector (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_open_fds`, ...) and `otp_build_info{version,
/// revision}` 1. Call it once per process, on the registry its `/metrics` serves.
pub fn process(registry: &Registry) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    registry
        .register(Box::new(collector))
        .expect("the process collector is registered once");
    gauge_vec(
        registry,
        "otp_build_info",
        "The running build: its version and revision; always 1.",
        &["version", "revision"],
    )
    .with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION])
    .set(1);
}

/// The registry in Prometheus' text exposition format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# metrics could not be encoded: {e}\n"))
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_carry_names_labels_and_values() {
        let registry = Registry::new();
        counter(&registry, "otp_things_total", "Things.").inc_by(3);
        counter_vec(&registry, "otp_kinds_total", "Kinds.", &["kind"])
            .with_label_values(&["a"])
            .inc();
        histogram(&registry, "otp_wait_seconds", "Waits.", LATENCY_BUCKETS).observe(0.002);
        let text = render(&registry);
        assert!(text.contains("otp_things_total 3"), "{text}");
        assert!(text.contains("otp_kinds_total{kind=\"a\"} 1"), "{text}");
        assert!(
            text.contains("otp_wait_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(text.contains("otp_wait_seconds_count 1"), "{text}");
    }

    #[test]
    fn a_process_exports_its_build_and_resources() {
        let registry = Registry::new();
        process(&registry);
        let text = render(&registry);
        let build = format!(
            "otp_build_info{{revision=\"{REVISION}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{family} ")))
                .unwrap_or_else(|| panic!("{family} missing in {text}"));
            let value: f64 = value.parse().expect("a number");
            assert!(value >= 0.0, "{family} {value}");
        }
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(
            rss.is_some_and(|b| b > 1e6),
            "a live process has resident memory: {text}"
        );
    }
}
