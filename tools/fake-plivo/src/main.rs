//! fake-plivo: answers `POST /v1/Account/{auth_id}/Message/` like Plivo does (202 with a
//! `message_uuid`), and Twilio's `POST /2010-04-01/Accounts/{sid}/Messages.json` (201 with a
//! `sid`), with optional latency and failures (or one provider down, to show failover), and keeps the last messages so a
//! developer can read the code that "was sent to the phone".
//!
//! It also answers a CAPTCHA provider's `POST /siteverify` (Turnstile, hCaptcha and reCAPTCHA
//! share its shape) for local runs with `CAPTCHA_VERIFY_URL=http://<fake>/siteverify`: the token
//! `pass` passes, anything else fails.
//!
//! It prints and stores message texts, which hold codes: it is a development tool only.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use poem::{
    EndpointExt, IntoResponse, Response, Route, Server, get, handler,
    http::StatusCode,
    listener::TcpListener,
    post,
    web::{Data, Json, Path, Query},
};
use rand::{RngExt, rng};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "fake-plivo",
    version,
    about = "Fake Plivo Message API for local runs and benchmarks."
)]
struct Config {
    /// Port to listen on.
    #[arg(long, env = "FAKE_PLIVO_PORT", default_value_t = 8080)]
    port: u16,
    /// Milliseconds each answer is delayed, to mimic the real API.
    #[arg(long, env = "FAKE_PLIVO_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Share of calls (0.0 to 1.0) answered with a 500, to exercise retries.
    #[arg(long, env = "FAKE_PLIVO_FAILURE_RATE", default_value_t = 0.0)]
    failure_rate: f64,
    /// Answer every call of this provider's API with a 503 (plivo or twilio; empty: none), to
    /// show failover.
    #[arg(long, env = "FAKE_PLIVO_DOWN", default_value = "")]
    down: String,
    /// Print every message (codes included) to stdout.
    #[arg(long, env = "FAKE_PLIVO_PRINT", default_value_t = true, action = clap::ArgAction::Set)]
    print: bool,
}

/// Messages kept for `GET /messages`.
const KEEP: usize = 1000;

struct State {
    config: Config,
    accepted: AtomicU64,
    failed: AtomicU64,
    messages: Mutex<VecDeque<Value>>,
}

#[handler]
async fn send(
    Path(auth_id): Path<String>,
    Json(body): Json<Value>,
    state: Data<&Arc<State>>,
) -> Response {
    if state.config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(state.config.latency_ms)).await;
    }
    let (Some(dst), Some(text)) = (body["dst"].as_str(), body["text"].as_str()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "dst and text are required"})),
        )
            .into_response();
    };
    if state.config.down == "plivo" || injected_failure(&state) {
        state.failed.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "injected failure"})),
        )
            .into_response();
    }
    let id = uuid::Uuid::new_v4().to_string();
    let src = body["src"].as_str().map(str::to_owned);
    keep(&state, &auth_id, "plivo", &id, dst, text, src);
    (StatusCode::ACCEPTED, Json(json!({ "api_id": uuid::Uuid::new_v4(), "message": "message(s) queued", "message_uuid": [id] })))
        .into_response()
}

/// Twilio's Messages API: form-encoded To, From, Body; 201 with a `sid`.
#[handler]
async fn twilio_send(
    Path(account): Path<String>,
    body: Vec<u8>,
    state: Data<&Arc<State>>,
) -> Response {
    if state.config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(state.config.latency_ms)).await;
    }
    if state.config.down == "twilio" || injected_failure(&state) {
        state.failed.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"code": 20500})),
        )
            .into_response();
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (Some(dst), Some(text)) = (field("To"), field("Body")) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": 21604, "message": "To and Body are required"})),
        )
            .into_response();
    };
    let id = format!("SM{}", uuid::Uuid::new_v4().simple());
    keep(&state, &account, "twilio", &id, &dst, &text, field("From"));
    (
        StatusCode::CREATED,
        Json(json!({ "sid": id, "status": "queued" })),
    )
        .into_response()
}

fn injected_failure(state: &State) -> bool {
    state.config.failure_rate > 0.0 && rng().random_bool(state.config.failure_rate.min(1.0))
}

/// Counts, prints (if asked) and keeps an accepted message.
fn keep(
    state: &State,
    account: &str,
    provider: &str,
    id: &str,
    dst: &str,
    text: &str,
    src: Option<String>,
) {
    state.accepted.fetch_add(1, Ordering::Relaxed);
    if state.config.print {
        println!("[fake-plivo] {provider} account {account} → {dst}: {text}");
    }
    let mut messages = state.messages.lock().unwrap_or_else(|e| e.into_inner());
    if messages.len() == KEEP {
        messages.pop_front();
    }
    messages.push_back(
        json!({ "provider": provider, "message_uuid": id, "dst": dst, "text": text, "src": src }),
    );
}

#[derive(serde::Deserialize)]
struct Filter {
    dst: Option<String>,
}

/// Last messages, newest first, optionally for one destination.
#[handler]
fn list_messages(Query(filter): Query<Filter>, state: Data<&Arc<State>>) -> Json<Value> {
    let messages = state.messages.lock().unwrap_or_else(|e| e.into_inner());
    let list: Vec<&Value> = messages
        .iter()
        .rev()
        .filter(|m| filter.dst.as_deref().is_none_or(|d| m["dst"] == d))
        .collect();
    Json(json!(list))
}

#[handler]
fn stats(state: Data<&Arc<State>>) -> Json<Value> {
    Json(json!({
        "accepted": state.accepted.load(Ordering::Relaxed),
        "failed": state.failed.load(Ordering::Relaxed),
    }))
}

/// A CAPTCHA provider's siteverify: form-encoded `secret`, `response` (the token) and
/// `remoteip`; the token `pass` passes.
#[handler]
fn siteverify(poem::web::Form(form): poem::web::Form<Vec<(String, String)>>) -> Json<Value> {
    let token = form
        .iter()
        .find(|(k, _)| k == "response")
        .map(|(_, v)| v.as_str());
    match token {
        Some("pass") => Json(json!({ "success": true, "hostname": "localhost", "score": 0.9 })),
        _ => Json(json!({ "success": false, "error-codes": ["invalid-input-response"] })),
    }
}

#[handler]
fn readyz() -> &'static str {
    "ok"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `fake-plivo healthcheck`: the compose healthcheck (the image carries no curl).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "healthcheck")
    {
        let port = std::env::var("FAKE_PLIVO_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(8080);
        let code =
            tokio::task::spawn_blocking(move || otp_shared::probe::healthcheck(port)).await?;
        std::process::exit(if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        });
    }
    let config = Config::parse();
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let state = Arc::new(State {
        config,
        accepted: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        messages: Mutex::new(VecDeque::with_capacity(KEEP)),
    });
    let app = Route::new()
        .at("/v1/Account/:auth_id/Message/", post(send))
        .at("/2010-04-01/Accounts/:sid/Messages.json", post(twilio_send))
        .at("/messages", get(list_messages))
        .at("/stats", get(stats))
        .at("/siteverify", post(siteverify))
        .at("/readyz", get(readyz))
        .data(state);
    println!("[fake-plivo] listening on {addr}");
    Server::new(TcpListener::bind(addr)).run(app).await?;
    Ok(())
}
