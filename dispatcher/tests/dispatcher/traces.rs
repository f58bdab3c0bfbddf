//! One trace across both real binaries: a caller's `traceparent` is continued by otp-api's
//! request span, travels with the send job, and is continued by otp-dispatcher's send span. Both
//! processes export over OTLP/HTTP to a receiver inside this test, with RUST_LOG=warn: the log
//! filter must not decide what is traced.

use std::{
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use poem::{EndpointExt, Route, Server, handler, listener::TcpListener as PoemListener, post};
use prost::Message;
use tokio::process::Command;

use otp_testkit::{eventually, wait_for};

use crate::helpers::{PHONE, World, accepted, plivo_call, wait_api_ready};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Every OTLP export body received, raw.
type Exports = Arc<Mutex<Vec<Vec<u8>>>>;

#[handler]
fn collect(body: poem::web::Data<&Exports>, bytes: Vec<u8>) -> &'static str {
    body.lock().unwrap().push(bytes);
    ""
}

/// An OTLP/HTTP receiver (protobuf, `/v1/traces`) on a free port.
async fn receiver() -> (String, Exports, tokio::task::JoinHandle<()>) {
    let exports = Exports::default();
    let port = free_port();
    let app = Route::new()
        .at("/v1/traces", post(collect))
        .data(exports.clone());
    let server = Server::new(PoemListener::bind(format!("127.0.0.1:{port}")));
    let task = tokio::spawn(async move {
        let _ = server.run(app).await;
    });
    (format!("http://127.0.0.1:{port}"), exports, task)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// otp-api is built beside otp-dispatcher by `cargo test --workspace` (tools/test.sh).
fn otp_api_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join("otp-api");
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (tools/test.sh) so it is built",
        path.display()
    );
    path
}

fn spans(exports: &Exports) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for body in exports.lock().unwrap().iter() {
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    out.push((service.clone(), span.name, span.trace_id));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn one_trace_covers_the_callers_request_the_api_and_the_dispatcher() {
    let world = World::new().await;
    let plivo = wiremock::MockServer::start().await;
    plivo_call()
        .respond_with(accepted("trace-msg"))
        .expect(1)
        .mount(&plivo)
        .await;
    let (endpoint, exports, _receiver) = receiver().await;

    let mut dispatcher = world.process(&plivo.uri());
    dispatcher
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "warn");
    let mut dispatcher = dispatcher.spawn().expect("otp-dispatcher starts");

    let port = free_port();
    let mut api = Command::new(otp_api_binary())
        .env_clear()
        .current_dir(std::env::temp_dir())
        .env("PORT", port.to_string())
        .env("ADMIN_PORT", "0")
        .env("DRAIN_SECONDS", "0")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("REDIS_URL", crate::helpers::redis_url())
        .env("REDIS_CLUSTER", crate::helpers::redis_cluster().to_string())
        .env("REDIS_KEY_PREFIX", &world.prefix)
        .env("AMQP_URL", crate::helpers::AMQP_URL)
        .env("SMS_QUEUE", &world.queue)
        .env("OTP_HMAC_KEY", STANDARD.encode([7u8; 32]))
        .env("JOB_ENCRYPTION_KEY", STANDARD.encode([42u8; 32]))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "warn")
        .env("APP_ENV", "development")
        // A caller key (the secret is `test`): its id goes on the request's span.
        .env(
            "API_KEYS",
            "web:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        )
        .kill_on_drop(true)
        .spawn()
        .expect("otp-api starts");

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_api_ready(&http, &base).await;

    let response = http
        .post(format!("{base}/api/otp/request"))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .bearer_auth("test")
        .json(&serde_json::json!({ "phoneNumber": PHONE }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // The SMS went out: its code is what no span may contain.
    let code = wait_for(Duration::from_secs(10), || async {
        let received = plivo.received_requests().await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&received.first()?.body).unwrap();
        let text = body["text"].as_str().unwrap();
        Some(
            text.chars()
                .filter(char::is_ascii_digit)
                .collect::<String>(),
        )
    });
    let code = code.await.expect("the dispatcher sent the SMS");
    assert_eq!(code.len(), 6);

    // Wait until both services' spans of this trace have arrived.
    let wanted = hex_bytes(TRACE_ID);
    let found = || {
        let spans = spans(&exports);
        (
            spans.iter().any(|(service, name, trace)| {
                service.contains("otp-api") && name == "http_request" && *trace == wanted
            }),
            spans.iter().any(|(service, name, trace)| {
                service.contains("otp-dispatcher") && name == "send_job" && *trace == wanted
            }),
        )
    };
    eventually(Duration::from_secs(10), || async {
        found() == (true, true)
    })
    .await;
    assert_eq!(
        found(),
        (true, true),
        "(api request span, dispatcher send span) in the caller's trace; got {:?}",
        spans(&exports)
    );

    assert_eq!(
        span_attribute(&exports, "http_request", "client.id").as_deref(),
        Some("web"),
        "the request span names the caller key"
    );

    // Nothing exported holds the code or the unmasked number.
    let digits = PHONE.trim_start_matches('+');
    for body in exports.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains(&code), "a span holds the code");
        assert!(!text.contains(digits), "a span holds the unmasked number");
    }
    let _ = api.start_kill();
    let _ = dispatcher.start_kill();
}

/// A string attribute of the first exported span called `name`.
fn span_attribute(exports: &Exports, name: &str, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    for body in exports.lock().unwrap().iter() {
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        let spans = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        for span in spans.filter(|s| s.name == name) {
            let value = span.attributes.into_iter().find(|a| a.key == key);
            if let Some(Value::StringValue(v)) = value.and_then(|a| a.value?.value) {
                return Some(v);
            }
        }
    }
    None
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}
