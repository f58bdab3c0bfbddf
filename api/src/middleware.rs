//! What wraps every request: a request id and span, a body-size cap, an access log line, and
//! the translation of framework errors (bad JSON, wrong content type, unknown route, panic) into
//! the service's JSON error bodies.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use poem::{
    Body, Endpoint, IntoResponse, Request, Response,
    http::{
        HeaderValue, StatusCode,
        header::{ALLOW, CACHE_CONTROL, X_CONTENT_TYPE_OPTIONS},
    },
};
use tokio::io::AsyncReadExt;
use tracing::Instrument;

use otp_shared::telemetry::adopt_remote_context;

use crate::{
    callers::{Caller, Callers},
    config::AccessLog,
    cors::Cors,
    error::ApiError,
    metrics::{ApiMetrics, Route},
};

/// Bodies are tiny JSON objects; anything bigger is refused before parsing.
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// A too-large body is read and discarded up to this much before the 413 is sent, so a client
/// that writes it all before reading (no `Expect: 100-continue`) gets the answer, not a reset.
const DRAIN_BYTES: u64 = 1024 * 1024;
const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request's id: the caller's X-Request-Id when it is sane, else a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What every request is wrapped with.
pub struct Around {
    pub metrics: Arc<ApiMetrics>,
    pub callers: Arc<Callers>,
    pub cors: Cors,
    pub body_timeout: Duration,
    pub access_log: AccessLog,
}

/// Wraps every request: request id, span (continuing a caller's trace), the caller's key on
/// the OTP routes (refused before anything is read, spent or written), body cap, error mapping,
/// access log and the request metrics.
pub async fn around<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    around: Arc<Around>,
) -> poem::Result<Response> {
    let Around {
        metrics,
        callers,
        cors,
        body_timeout,
        access_log,
    } = &*around;
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| otp_shared::ids::random_uuid().to_string(), str::to_owned);
    let span = tracing::info_span!(
        "http_request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
        "client.id" = tracing::field::Empty,
    );
    // A caller's W3C trace context makes this request part of the caller's trace.
    adopt_remote_context(&span, |name| {
        let value = req.headers().get(name)?.to_str().ok()?;
        Some(value.to_owned())
    });
    let route = Route::of(req.uri().path());
    // A browser's preflight carries no caller key: it is answered first (allowed origins only).
    let cors_on = route.keyed() && cors.is_enabled();
    let preflight = cors_on.then(|| cors.preflight(&req)).flatten();
    let origin = cors_on.then(|| cors.origin_of(&req)).flatten();
    let caller = callers.identify(req.headers());
    if let Some(caller) = &caller {
        span.record("client.id", caller.id());
    }
    async move {
        let started = Instant::now();
        req.extensions_mut().insert(RequestId(request_id.clone()));
        let (mut resp, client) = match (preflight, caller) {
            (Some(answer), _) => (answer, metrics.client(&Caller::Public)),
            (None, None) if route.keyed() => {
                let resp = ApiError::Unauthorized.into_response().into_response();
                (resp, metrics.client(&Caller::Public))
            }
            (None, caller) => {
                let caller = caller.unwrap_or(Caller::Public);
                let client = metrics.client(&caller);
                req.extensions_mut().insert(caller);
                let resp = match read_body(req, *body_timeout).await {
                    Ok(req) => match ep.call(req).await {
                        Ok(resp) => resp.into_response(),
                        Err(err) => error_response(err),
                    },
                    Err(err) => err.into_response().into_response(),
                };
                (resp, client)
            }
        };
        if cors_on {
            Cors::decorate(&mut resp, origin);
        }
        let headers = resp.headers_mut();
        if let Ok(value) = request_id.parse() {
            headers.insert(REQUEST_ID_HEADER, value);
        }
        // Answers hold codes' fates and verification ids: never cached, never sniffed.
        // (The public keys set their own caching.)
        if !headers.contains_key(CACHE_CONTROL) {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(route.allow()));
        }
        let elapsed = started.elapsed();
        metrics.observe_request(route, resp.status().as_u16(), client, elapsed);
        if access_log.logs(resp.status().as_u16()) {
            tracing::info!(
                status = resp.status().as_u16(),
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "request finished"
            );
        }
        Ok(resp)
    }
    .instrument(span)
    .await
}

/// Buffers the body up to [`MAX_BODY_BYTES`], whether or not Content-Length was sent, within
/// `timeout` (a client trickling its body gets 408).
async fn read_body(req: Request, timeout: Duration) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    let read = async {
        let mut reader = body.into_async_read();
        let mut bytes = Vec::new();
        (&mut reader)
            .take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await?;
        if bytes.len() > MAX_BODY_BYTES {
            tokio::io::copy(&mut reader.take(DRAIN_BYTES), &mut tokio::io::sink()).await?;
            return Ok(None);
        }
        Ok::<_, std::io::Error>(Some(bytes))
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ApiError::RequestTimeout),
        Ok(Ok(Some(bytes))) => Ok(Request::from_parts(parts, Body::from_vec(bytes))),
        Ok(Ok(None)) => Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES)),
        Ok(Err(_)) => Err(ApiError::InvalidRequest(
            "The request body could not be read.".into(),
        )),
    }
}

/// Errors the handlers returned already carry their response; the rest came from the framework
/// (parsing, routing) and are mapped by status.
fn error_response(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let api_error = match err.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(MAX_BODY_BYTES),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::NOT_FOUND => ApiError::NotFound("Not found.".into()),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        s if s.is_client_error() => ApiError::InvalidRequest(format!("Malformed request: {err}.")),
        _ => ApiError::Internal(anyhow::anyhow!("{err}")),
    };
    api_error.into_response().into_response()
}

/// A panicking handler yields the generic INTERNAL body; the panic itself is logged.
pub fn panic_response(_: Box<dyn std::any::Any + Send>) -> Response {
    ApiError::Internal(anyhow::anyhow!("handler panicked"))
        .into_response()
        .into_response()
}
