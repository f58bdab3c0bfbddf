//! The HTTP error boundary: every failure becomes `{"success": false, "code", "message"}` with a
//! stable machine-readable code. Internal causes are logged, never shown.

use poem_openapi::{ApiResponse, Object, payload::Json};

use crate::store::{RateLimit, StoreError};

/// The body of every error response.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// Stable machine-readable code, e.g. INVALID_OTP or RATE_LIMITED.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Only with RATE_LIMITED: seconds until a retry can succeed.
    #[oai(skip_serializing_if_is_none)]
    pub retry_after_seconds: Option<u64>,
}

/// Seconds a client should wait before retrying after a 503.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 5;

/// Every error the API returns. Each variant says its status and code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 INVALID_REQUEST: malformed JSON, missing field, wrong JSON type, bad header.
    #[error("{0}")]
    InvalidRequest(String),
    /// 400 INVALID_PHONE_NUMBER.
    #[error("{0}")]
    InvalidPhoneNumber(String),
    /// 401 UNAUTHORIZED: no caller key where one is required, or a wrong one.
    #[error("A valid caller key is required: Authorization: Bearer <key>.")]
    Unauthorized,
    /// 403 COUNTRY_NOT_ALLOWED.
    #[error("SMS to this country is not allowed.")]
    CountryNotAllowed,
    /// 400 INVALID_OTP: identical for every reason a code does not verify.
    #[error("Invalid or expired OTP.")]
    InvalidOtp,
    /// 403 DESTINATION_BLOCKED: the fraud guard blocked the destination's prefix.
    #[error("SMS to this destination is not possible right now.")]
    DestinationBlocked,
    /// 403 INVALID_SIGNATURE: a provider callback without a valid signature.
    #[error("The callback signature is missing or wrong.")]
    InvalidSignature,
    /// 400 CAPTCHA_REQUIRED: a caller without a key sent no CAPTCHA token.
    #[error("A CAPTCHA token is required: captchaToken, or the X-Captcha-Token header.")]
    CaptchaRequired,
    /// 403 CAPTCHA_FAILED: the CAPTCHA provider refused the token, or it was used before.
    #[error("The CAPTCHA was not solved, or its token was already used; solve it again.")]
    CaptchaFailed,
    /// 503 CAPTCHA_UNAVAILABLE: the CAPTCHA provider could not be asked.
    #[error("The CAPTCHA cannot be checked right now; please retry.")]
    CaptchaUnavailable,
    /// 404 NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// 405 METHOD_NOT_ALLOWED.
    #[error("Method not allowed.")]
    MethodNotAllowed,
    /// 409 IDEMPOTENCY_REQUEST_IN_PROGRESS: the first request with this key is still running.
    #[error("A request with this Idempotency-Key is still being processed; retry shortly.")]
    IdempotencyInProgress,
    /// 408 REQUEST_TIMEOUT: the body did not arrive within BODY_READ_TIMEOUT_SECONDS.
    #[error("The request body was not received in time.")]
    RequestTimeout,
    /// 413 PAYLOAD_TOO_LARGE.
    #[error("Request body is larger than {0} bytes.")]
    PayloadTooLarge(usize),
    /// 415 UNSUPPORTED_MEDIA_TYPE.
    #[error("Request body must be application/json.")]
    UnsupportedMediaType,
    /// 422 IDEMPOTENCY_KEY_REUSED.
    #[error("This Idempotency-Key was already used with a different request body.")]
    IdempotencyKeyReused,
    /// 429 RATE_LIMITED, with Retry-After and RateLimit-* headers.
    #[error("Too many requests; retry after {} seconds.", .0.reset_seconds)]
    RateLimited(RateLimit),
    /// 503 SERVICE_UNAVAILABLE: a dependency is down or did not answer in time.
    #[error("The service is temporarily unavailable; please retry.")]
    Unavailable(#[source] anyhow::Error),
    /// 503 SERVICE_UNAVAILABLE from /readyz, naming the dependencies that are down.
    #[error("{}", otp_shared::supervise::not_ready(.0))]
    NotReady(Vec<&'static str>),
    /// 500 INTERNAL: generic by design.
    #[error("An internal error occurred.")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::Unavailable(e.into()),
            StoreError::Corrupt(_) => Self::Internal(e.into()),
        }
    }
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "INVALID_REQUEST",
            Self::InvalidPhoneNumber(_) => "INVALID_PHONE_NUMBER",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::CountryNotAllowed => "COUNTRY_NOT_ALLOWED",
            Self::InvalidSignature => "INVALID_SIGNATURE",
            Self::DestinationBlocked => "DESTINATION_BLOCKED",
            Self::InvalidOtp => "INVALID_OTP",
            Self::CaptchaRequired => "CAPTCHA_REQUIRED",
            Self::CaptchaFailed => "CAPTCHA_FAILED",
            Self::CaptchaUnavailable => "CAPTCHA_UNAVAILABLE",
            Self::NotFound(_) => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::IdempotencyInProgress => "IDEMPOTENCY_REQUEST_IN_PROGRESS",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::RateLimited(_) => "RATE_LIMITED",
            Self::Unavailable(_) | Self::NotReady(_) => "SERVICE_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    fn body(&self, retry_after_seconds: Option<u64>) -> Json<ErrorBody> {
        Json(ErrorBody {
            success: false,
            code: self.code().to_owned(),
            message: self.to_string(),
            retry_after_seconds,
        })
    }

    /// Logs server-side causes with their whole chain; client errors are logged by the access
    /// log line only.
    fn log(&self) {
        match self {
            Self::Unavailable(cause) => tracing::warn!(error = format!("{cause:#}"), "unavailable"),
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error")
            }
            _ => {}
        }
    }

    pub fn into_response(self) -> ErrorResponse {
        self.log();
        match &self {
            Self::InvalidRequest(_)
            | Self::InvalidPhoneNumber(_)
            | Self::InvalidOtp
            | Self::CaptchaRequired => ErrorResponse::BadRequest(self.body(None)),
            Self::Unauthorized => ErrorResponse::Unauthorized(self.body(None), "Bearer".into()),
            Self::CountryNotAllowed
            | Self::InvalidSignature
            | Self::DestinationBlocked
            | Self::CaptchaFailed => ErrorResponse::Forbidden(self.body(None)),
            Self::NotFound(_) => ErrorResponse::NotFound(self.body(None)),
            Self::MethodNotAllowed => ErrorResponse::MethodNotAllowed(self.body(None)),
            Self::IdempotencyInProgress => {
                ErrorResponse::Conflict(self.body(None), UNAVAILABLE_RETRY_AFTER_SECONDS)
            }
            Self::RequestTimeout => ErrorResponse::RequestTimeout(self.body(None)),
            Self::PayloadTooLarge(_) => ErrorResponse::PayloadTooLarge(self.body(None)),
            Self::UnsupportedMediaType => ErrorResponse::UnsupportedMediaType(self.body(None)),
            Self::IdempotencyKeyReused => ErrorResponse::UnprocessableEntity(self.body(None)),
            Self::RateLimited(rate) => {
                // Never tell a client to retry in 0 seconds: it would spin.
                let after = rate.reset_seconds.max(1);
                ErrorResponse::TooManyRequests(
                    self.body(Some(after)),
                    after,
                    rate.limit,
                    rate.remaining,
                    after,
                )
            }
            Self::Unavailable(_) | Self::NotReady(_) | Self::CaptchaUnavailable => {
                ErrorResponse::ServiceUnavailable(self.body(None), UNAVAILABLE_RETRY_AFTER_SECONDS)
            }
            Self::Internal(_) => ErrorResponse::Internal(self.body(None)),
        }
    }
}

/// The documented error responses (OpenAPI lists each status with its body).
#[derive(ApiResponse)]
pub enum ErrorResponse {
    /// INVALID_REQUEST, INVALID_PHONE_NUMBER, INVALID_OTP or CAPTCHA_REQUIRED.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// UNAUTHORIZED: a caller key is required (API_KEYS) and none or a wrong one was sent.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// COUNTRY_NOT_ALLOWED (ALLOWED_COUNTRIES excludes the destination), DESTINATION_BLOCKED
    /// (the fraud guard blocked it) or CAPTCHA_FAILED (the CAPTCHA token was refused or reused).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// NOT_FOUND.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// METHOD_NOT_ALLOWED.
    #[oai(status = 405)]
    MethodNotAllowed(Json<ErrorBody>),
    /// IDEMPOTENCY_REQUEST_IN_PROGRESS: the first request with this key has not finished.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// REQUEST_TIMEOUT: the body was sent too slowly.
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// PAYLOAD_TOO_LARGE: bodies are limited to a few KiB.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// UNSUPPORTED_MEDIA_TYPE: the body must be JSON.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// IDEMPOTENCY_KEY_REUSED: same Idempotency-Key, different body.
    #[oai(status = 422)]
    UnprocessableEntity(Json<ErrorBody>),
    /// RATE_LIMITED.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorBody>,
        #[oai(header = "Retry-After")] u64,
        #[oai(header = "RateLimit-Limit")] u32,
        #[oai(header = "RateLimit-Remaining")] u32,
        #[oai(header = "RateLimit-Reset")] u64,
    ),
    /// INTERNAL: generic, details are only in the server log.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// SERVICE_UNAVAILABLE: Redis or RabbitMQ is down, or the publish was not confirmed in time;
    /// or CAPTCHA_UNAVAILABLE: the CAPTCHA provider could not be asked.
    #[oai(status = 503)]
    ServiceUnavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

impl From<ApiError> for ErrorResponse {
    fn from(e: ApiError) -> Self {
        e.into_response()
    }
}
