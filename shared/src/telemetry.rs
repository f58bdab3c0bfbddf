//! The one place that sets up tracing, and trace-context propagation through AMQP headers.

use std::collections::HashMap;

use lapin::types::FieldTable;
use opentelemetry::{
    Context, global,
    trace::{SpanContext, TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{LevelFilter, Targets},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::config::LogFormat;

/// Flushes spans still buffered for export, and log lines still waiting for the writer thread:
/// call [`TelemetryGuard::shutdown`] at the end of `main`; dropping the guard flushes too, as a
/// fallback.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// Dropping it writes out the lines still queued.
    logs: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl TelemetryGuard {
    /// The end of a binary's `main`: flushes spans, prints the error (with its causes) if the
    /// service failed, and gives the exit code.
    pub async fn finish(self, result: anyhow::Result<()>) -> std::process::ExitCode {
        self.shutdown().await;
        match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    }

    /// Exports what is still buffered. The exporter blocks its own thread, so the wait happens
    /// on a blocking thread, never on a runtime worker.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
        drop(self.logs.take());
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: logs to stdout in `format`, filtered by RUST_LOG (default
/// `info`), and OpenTelemetry spans exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is
/// set. Spans always carry W3C trace context, so it can travel with send jobs.
///
/// Each layer has its own filter: RUST_LOG decides what is logged, never what is traced, so
/// `RUST_LOG=warn` still exports the service's info-level spans and still propagates their
/// trace context into send jobs.
pub fn init(service_name: &'static str, format: LogFormat) -> TelemetryGuard {
    init_with(service_name, format, false)
}

/// The same setup for integration tests: log lines go through the test harness's capture (shown
/// only for failing tests), everything else (trace context, propagation) is as in production.
/// Safe to call from every test; the first call wins.
pub fn init_for_tests(service_name: &'static str) {
    static GUARD: std::sync::OnceLock<TelemetryGuard> = std::sync::OnceLock::new();
    GUARD.get_or_init(|| init_with(service_name, LogFormat::Pretty, true));
}

/// What the tracing layer sees: the service's own spans and events at info and above, whatever
/// RUST_LOG says. Library internals (hyper, lapin, redis) stay out of traces.
fn traced_targets() -> Targets {
    Targets::new()
        .with_target("otp_api", LevelFilter::INFO)
        .with_target("otp_delivery", LevelFilter::INFO)
        .with_target("otp_dispatcher", LevelFilter::INFO)
        .with_target("otp_shared", LevelFilter::INFO)
}

fn init_with(service_name: &'static str, format: LogFormat, test_writer: bool) -> TelemetryGuard {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build());
    let mut export_error = None;
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        // The batch processor runs its own thread, outside Tokio; the blocking reqwest client
        // (the `reqwest-blocking-client` feature) is the one built to run there.
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => export_error = Some(e.to_string()),
        }
    }
    let provider = builder.build();
    global::set_text_map_propagator(TraceContextPropagator::new());
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service_name))
        .with_filter(traced_targets());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Lines go to stdout from a thread of their own: a request formats its line and queues it,
    // never waiting on the write. Should stdout stall until 128,000 lines wait, further lines
    // are dropped rather than stalling requests.
    let (stdout, logs) = tracing_appender::non_blocking(std::io::stdout());
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(stdout)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty if test_writer => {
            tracing_subscriber::fmt::layer().with_test_writer().boxed()
        }
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(stdout).boxed(),
    };
    // A second init (tests building several apps) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    if let Some(e) = export_error {
        tracing::warn!(error = %e, "OTLP exporter could not be built; spans are not exported");
    }
    TelemetryGuard {
        provider: Some(provider),
        logs: Some(logs),
    }
}

/// Makes `span` continue a caller's W3C trace (`traceparent`, `tracestate`), read through `get`
/// from whatever carries it: HTTP request headers or AMQP message headers. Without a valid
/// `traceparent` the span stays a root.
pub fn adopt_remote_context(span: &tracing::Span, get: impl Fn(&str) -> Option<String>) {
    let mut carrier = HashMap::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = get(name) {
            carrier.insert(name.to_owned(), v);
        }
    }
    if carrier.is_empty() {
        return;
    }
    let parent = global::get_text_map_propagator(|p| p.extract(&carrier));
    // The caller's trace id is kept for correlation, but not its sampling decision: a client
    // sending `sampled=0` must not switch tracing off for the whole chain.
    let remote = parent.span().span_context().clone();
    if !remote.is_valid() {
        return;
    }
    let sampled = SpanContext::new(
        remote.trace_id(),
        remote.span_id(),
        remote.trace_flags().with_sampled(true),
        true,
        remote.trace_state().clone(),
    );
    let _ = span.set_parent(Context::new().with_remote_span_context(sampled));
}

/// Adds the current span's W3C trace context (`traceparent`) to outgoing AMQP headers.
pub fn inject_trace_context(headers: &mut FieldTable) {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    for (k, v) in carrier {
        headers.insert(k.into(), crate::amqp::long_string(&v));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    #[test]
    fn trace_context_travels_through_amqp_headers() {
        init_for_tests("otp-shared-test");
        let publish = tracing::info_span!("publish");
        let mut headers = FieldTable::default();
        publish.in_scope(|| inject_trace_context(&mut headers));
        let properties = lapin::BasicProperties::default().with_headers(headers);
        assert!(crate::amqp::header_str(&properties, "traceparent").is_some());

        let consume = tracing::info_span!("consume");
        adopt_remote_context(&consume, |name| crate::amqp::header_str(&properties, name));
        let sent = publish.context().span().span_context().trace_id();
        let received = consume.context().span().span_context().trace_id();
        assert_ne!(sent, opentelemetry::trace::TraceId::INVALID);
        assert_eq!(sent, received);
    }

    #[test]
    fn a_callers_unsampled_flag_keeps_its_trace_id_but_not_its_sampling() {
        init_for_tests("otp-shared-test");
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let request = tracing::info_span!("http_request");
        adopt_remote_context(&request, |name| {
            (name == "traceparent").then(|| format!("00-{trace}-00f067aa0ba902b7-00"))
        });
        let context = request.context();
        let span = context.span();
        let own = span.span_context();
        assert_eq!(own.trace_id().to_string(), trace);
        assert!(own.is_sampled(), "sampled=0 switched tracing off");
    }
}
