//! `/healthz`, `/readyz` and `/metrics` on DISPATCHER_HTTP_PORT, for orchestrators and
//! Prometheus.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use otp_shared::{redis_conn::RedisConn, supervise};
use poem::{
    EndpointExt, IntoResponse, Response, Route, get, handler,
    http::StatusCode,
    web::{Data, Json},
};
use serde_json::json;

use otp_delivery::metrics::DeliveryMetrics;

use crate::agreement::Agreement;

#[derive(Clone)]
pub struct Readiness {
    pub redis: RedisConn,
    pub amqp_connected: Arc<AtomicBool>,
    /// Set at SIGTERM: from then on /readyz answers 503 while in-flight jobs finish.
    pub stopping: Arc<AtomicBool>,
    /// Whether the shared settings agree with the API's.
    pub agreement: Agreement,
    pub metrics: Arc<DeliveryMetrics>,
}

#[handler]
fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[handler]
async fn readyz(state: Data<&Readiness>) -> Response {
    let mut down = supervise::unavailable(
        supervise::redis_answers(&state.redis).await,
        state.amqp_connected.load(Ordering::SeqCst),
    );
    if state.stopping.load(Ordering::SeqCst) {
        down = vec!["this dispatcher (stopping)"];
    }
    let mut message = (!down.is_empty()).then(|| supervise::not_ready(&down));
    if let (None, Some(problem)) = (&message, state.agreement.state().problem()) {
        message = Some(format!("Not ready: {problem}."));
    }
    let Some(message) = message else {
        return Json(json!({ "status": "ok" })).into_response();
    };
    let body = json!({
        "success": false,
        "code": "SERVICE_UNAVAILABLE",
        "message": message,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

#[handler]
fn metrics(state: Data<&Readiness>) -> Response {
    Response::builder()
        .content_type(otp_shared::metrics::CONTENT_TYPE)
        .body(state.metrics.render())
}

pub fn routes(readiness: Readiness) -> impl poem::Endpoint {
    Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics))
        .data(readiness)
}
