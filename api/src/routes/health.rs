use std::sync::Arc;

use poem_openapi::{
    ApiResponse, Object, OpenApi,
    payload::{Json, PlainText},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    error::{ApiError, ErrorResponse},
    metrics::ApiMetrics,
    service::AppService,
};

use super::ApiTags;

pub struct HealthApi {
    pub service: Arc<AppService>,
    pub metrics: Arc<ApiMetrics>,
    /// The in-process delivery worker's metrics, in the one-process mode.
    pub delivery_metrics: Option<Arc<otp_delivery::metrics::DeliveryMetrics>>,
    /// Serves the operators' view: /metrics, and a /readyz naming what is down (the admin
    /// port; and the public one in development). Otherwise /metrics is 404 and /readyz says
    /// only yes or no.
    pub detailed: bool,
}

#[derive(Debug, Object)]
struct Status {
    status: String,
    /// RFC 3339 server time.
    #[oai(skip_serializing_if_is_none)]
    timestamp: Option<String>,
}

#[derive(ApiResponse)]
enum HealthResponse {
    #[oai(status = 200)]
    Ok(Json<Status>),
}

fn ok(timestamp: bool) -> HealthResponse {
    let timestamp = timestamp.then(|| {
        OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default()
    });
    HealthResponse::Ok(Json(Status {
        status: "ok".into(),
        timestamp,
    }))
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Service banner with the server time.
    #[oai(path = "/", method = "get")]
    async fn index(&self) -> HealthResponse {
        ok(true)
    }

    /// Liveness: the process is up and serving HTTP.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> HealthResponse {
        ok(false)
    }

    /// Readiness: 200 only when Redis and RabbitMQ are reachable; otherwise 503 naming what is
    /// down.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> Result<HealthResponse, ErrorResponse> {
        let down = self.service.unavailable_dependencies().await;
        if down.is_empty() {
            return Ok(ok(false));
        }
        // The public port in production says no more than "not ready".
        let named = if self.detailed { down } else { Vec::new() };
        Err(ApiError::NotReady(named).into())
    }

    /// Prometheus metrics in the text exposition format (see docs/operations.md, "Metrics").
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> Result<PlainText<String>, ErrorResponse> {
        if !self.detailed {
            return Err(ApiError::NotFound("Not found.".into()).into());
        }
        let mut text = self.metrics.render();
        if let Some(delivery) = &self.delivery_metrics {
            text.push_str(&delivery.render());
        }
        Ok(PlainText(text))
    }
}
