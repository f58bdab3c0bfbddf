use std::{net::IpAddr, sync::Arc};

use ipnet::IpNet;
use poem::{
    http::HeaderMap,
    web::{Data, RemoteAddr},
};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Header, Path},
    payload::Json,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use crate::{
    callers::Caller,
    captcha::Captcha,
    client_ip::{client_ip, limit_key},
    error::{ApiError, ErrorResponse},
    middleware::RequestId,
    service::{AppService, parse_number},
    verdict::Verdicts,
};

use super::{ApiTags, strict::JsonString};

/// A keyed caller's end user address.
const END_USER_IP: &str = "x-end-user-ip";

/// Idempotency-Key values are opaque client tokens of printable ASCII.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub struct OtpApi {
    pub service: Arc<AppService>,
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// IPV6_PREFIX_LENGTH: IPv6 clients are counted by their network.
    pub ipv6_prefix: u8,
    pub verdicts: Arc<Verdicts>,
    /// CAPTCHA_PROVIDER's check of callers without a key, when one is set.
    pub captcha: Option<Arc<Captcha>>,
    /// Caller keys exist (API_KEYS): cancel then needs one, even with PUBLIC_API.
    pub keys_exist: bool,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct OtpRequest {
    /// Destination in international form, e.g. +14155552671.
    phone_number: JsonString,
    /// With CAPTCHA_PROVIDER set, a caller without a key sends the widget's token here (or in
    /// the X-Captcha-Token header). Each token is good for one request.
    captcha_token: Option<JsonString>,
    /// The language of the SMS, a BCP 47 tag (`fr`, `pt-BR`, `zh-Hant`). Without it, the
    /// number's country picks its main language (SMS_LOCALE_BY_COUNTRY), else
    /// SMS_DEFAULT_LOCALE. A tag with no template, or a malformed one, falls back the same way;
    /// the answer's `locale` says which was used.
    locale: Option<JsonString>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct VerifyRequest {
    /// The number the code was sent to.
    phone_number: String,
    /// The code, exactly OTP_LENGTH digits.
    otp: JsonString,
    /// The `verificationId` returned when the code was requested. Optional, but clients should
    /// send it: the code then verifies only for the request it was issued for.
    verification_id: Option<JsonString>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct CancelRequest {
    /// The `verificationId` returned when the code was requested.
    verification_id: JsonString,
}

#[derive(Debug, Object)]
struct Canceled {
    success: bool,
    message: String,
}

#[derive(ApiResponse)]
enum CancelResponse {
    /// The code is void: a verify with it fails, its status says `canceled`, and a send job
    /// still queued for it is not sent.
    #[oai(status = 200)]
    Canceled(Json<Canceled>),
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct RequestAccepted {
    success: bool,
    message: String,
    /// Identifies this verification, e.g. for `GET /api/otp/status/{verificationId}`.
    verification_id: Uuid,
    /// Seconds the code stays valid.
    expires_in_seconds: u64,
    /// Seconds before this number may request another code.
    resend_after_seconds: u64,
    /// The language the SMS is written in (a BCP 47 tag with a template).
    locale: String,
}

#[derive(Debug, Object)]
struct Verified {
    success: bool,
    message: String,
    /// A JWT (EdDSA) saying this number was verified: claims `iss`, `aud`, `sub` (the number,
    /// E.164), `vid` (the verification id), `iat`, `exp`, `jti`. Check it against
    /// `/.well-known/jwks.json`.
    token: String,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct DeliveryStatusBody {
    verification_id: Uuid,
    /// queued, sending, sent (accepted by the provider), delivered or undelivered (the
    /// carrier's report), failed or expired; canceled after `POST /api/otp/cancel`.
    state: String,
    /// Provider calls made so far.
    attempts: u32,
    /// RFC 3339 time of the last change.
    updated_at: String,
    /// After an undelivered report: `resent`, or why not, in a fixed text (`not resent:
    /// destination blocked`, `not resent: hourly send budget spent`, `not resent: country's
    /// hourly send budget spent`, `not resent: number's hourly limit reached`).
    #[oai(skip_serializing_if_is_none)]
    resend: Option<String>,
    /// True once the code was used (verified).
    verified: bool,
}

#[derive(ApiResponse)]
enum RequestResponse {
    /// The code is stored and its SMS is queued (confirmed by the broker).
    #[oai(status = 202)]
    Accepted(
        Json<RequestAccepted>,
        #[oai(header = "RateLimit-Limit")] Option<u32>,
        #[oai(header = "RateLimit-Remaining")] Option<u32>,
        #[oai(header = "RateLimit-Reset")] Option<u64>,
    ),
}

#[derive(ApiResponse)]
enum VerifyResponse {
    /// The code was right; it is now used up.
    #[oai(status = 200)]
    Verified(
        Json<Verified>,
        #[oai(header = "RateLimit-Limit")] Option<u32>,
        #[oai(header = "RateLimit-Remaining")] Option<u32>,
        #[oai(header = "RateLimit-Reset")] Option<u64>,
    ),
}

#[derive(ApiResponse)]
enum StatusResponse {
    /// The SMS delivery state of a verification.
    #[oai(status = 200)]
    Ok(Json<DeliveryStatusBody>),
}

impl OtpApi {
    /// The end user's per-IP bucket: a keyed caller's X-End-User-IP (a trusted backend calling
    /// for its user), else the client address (behind trusted proxies, from every
    /// X-Forwarded-For line), IPv6 counted by its network. The public's X-End-User-IP is
    /// ignored.
    fn client(
        &self,
        remote: &RemoteAddr,
        headers: &HeaderMap,
        caller: &Caller,
    ) -> Result<String, ApiError> {
        Ok(limit_key(
            self.end_user_ip(remote, headers, caller)?,
            self.ipv6_prefix,
        ))
    }

    /// The end user's address: a keyed caller's X-End-User-IP, else the client address behind
    /// the trusted proxies.
    fn end_user_ip(
        &self,
        remote: &RemoteAddr,
        headers: &HeaderMap,
        caller: &Caller,
    ) -> Result<IpAddr, ApiError> {
        if caller.is_keyed()
            && let Some(value) = headers.get(END_USER_IP)
        {
            let ip = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
                .ok_or_else(|| {
                    ApiError::InvalidRequest("X-End-User-IP must be an IP address.".into())
                })?;
            return Ok(ip);
        }
        let peer = remote
            .as_socket_addr()
            .map(|a| a.ip())
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let lines = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{0}"))
            .collect::<Vec<_>>();
        client_ip(peer, lines.into_iter(), &self.trusted_proxies)
            .map_err(|e| ApiError::InvalidRequest(format!("{e}.")))
    }
}

#[OpenApi(tag = "ApiTags::Otp")]
impl OtpApi {
    /// Send a one-time password by SMS.
    ///
    /// Answers 202 once the code's digest is stored and the send job is confirmed by the broker;
    /// the SMS itself is sent asynchronously. A retry with the same `Idempotency-Key` (within
    /// 24 h, same body) replays the first response without sending another SMS.
    #[oai(path = "/api/otp/request", method = "post")]
    // Each parameter is an extractor the OpenAPI document describes.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        body: Json<OtpRequest>,
        /// Optional client token that makes retries safe.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// With a caller key: the end user's address, counted by the per-IP limits and the
        /// fraud guard instead of the caller's. Ignored without a key.
        #[oai(name = "X-End-User-IP")]
        end_user_ip: Header<Option<String>>,
        /// With CAPTCHA_PROVIDER set, a caller without a key's CAPTCHA token (or the body's
        /// `captchaToken`).
        #[oai(name = "X-Captcha-Token")]
        captcha_token: Header<Option<String>>,
        remote: &RemoteAddr,
        headers: &HeaderMap,
        request_id: Data<&RequestId>,
        caller: Data<&Caller>,
    ) -> Result<RequestResponse, ErrorResponse> {
        let _ = end_user_ip; // read from the raw headers, with the caller's key in mind
        // Read from the raw header: the typed parameter reads a value that is not visible ASCII
        // as absent, which would silently drop the client's retry protection.
        let _ = idempotency_key;
        let key = match headers.get("idempotency-key") {
            None => None,
            Some(raw) => {
                let bytes = raw.as_bytes();
                let printable = bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
                if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY_LEN || !printable {
                    return Err(ApiError::InvalidRequest(
                        "Idempotency-Key must be 1 to 255 printable ASCII characters.".into(),
                    )
                    .into());
                }
                raw.to_str().ok()
            }
        };
        let phone = self.service.destination(&body.phone_number)?;
        let ip = self.end_user_ip(remote, headers, &caller)?;
        // Before any limit is spent or anything stored; keyed callers' backends did the check.
        if let Some(captcha) = self.captcha.as_ref().filter(|_| !caller.is_keyed()) {
            let token = body.captcha_token.as_deref().or(captcha_token.0.as_deref());
            captcha.check(token, ip).await?;
        }
        let client = limit_key(ip, self.ipv6_prefix);
        let issued = self
            .service
            .request(
                &phone,
                &client,
                &caller,
                key,
                &request_id.0.0,
                body.locale.as_deref(),
            )
            .await?;
        let a = issued.accepted;
        Ok(RequestResponse::Accepted(
            Json(RequestAccepted {
                success: true,
                message: "OTP sent successfully.".into(),
                verification_id: a.verification_id,
                expires_in_seconds: a.expires_in_seconds,
                resend_after_seconds: a.resend_after_seconds,
                locale: a.locale,
            }),
            issued.rate.map(|r| r.limit),
            issued.rate.map(|r| r.remaining),
            issued.rate.map(|r| r.reset_seconds),
        ))
    }

    /// Check a one-time password.
    ///
    /// A code verifies at most once. Every failure (no code, expired, wrong, already used, or
    /// voided after too many wrong tries) gives the same 400 INVALID_OTP.
    #[oai(path = "/api/otp/verify", method = "post")]
    async fn verify(
        &self,
        body: Json<VerifyRequest>,
        /// With a caller key: the end user's address (see the request operation).
        #[oai(name = "X-End-User-IP")]
        end_user_ip: Header<Option<String>>,
        remote: &RemoteAddr,
        headers: &HeaderMap,
        caller: Data<&Caller>,
    ) -> Result<VerifyResponse, ErrorResponse> {
        let _ = end_user_ip;
        let phone = parse_number(&body.phone_number)?;
        let verification_id =
            match &body.verification_id {
                Some(id) => Some(Uuid::parse_str(id).map_err(|_| {
                    ApiError::InvalidRequest("verificationId must be a UUID.".into())
                })?),
                None => None,
            };
        let client = self.client(remote, headers, &caller)?;
        let (rate, verified) = self
            .service
            .verify(&phone, &body.otp, verification_id, &client)
            .await?;
        Ok(VerifyResponse::Verified(
            Json(Verified {
                success: true,
                message: "OTP verified successfully.".into(),
                token: self.verdicts.token(&phone, verified),
            }),
            rate.map(|r| r.limit),
            rate.map(|r| r.remaining),
            rate.map(|r| r.reset_seconds),
        ))
    }

    /// Cancel a verification: its code is void at once.
    ///
    /// A later verify with it fails with INVALID_OTP, its status says `canceled`, and a send
    /// job still queued for it is withdrawn, not sent. A used, expired, already canceled or
    /// unknown verification answers the same 404. When caller keys exist (API_KEYS), it
    /// requires one, even with PUBLIC_API=true.
    #[oai(path = "/api/otp/cancel", method = "post")]
    async fn cancel(
        &self,
        body: Json<CancelRequest>,
        caller: Data<&Caller>,
    ) -> Result<CancelResponse, ErrorResponse> {
        if self.keys_exist && !caller.is_keyed() {
            return Err(ApiError::Unauthorized.into());
        }
        let id = Uuid::parse_str(&body.verification_id)
            .map_err(|_| ApiError::InvalidRequest("verificationId must be a UUID.".into()))?;
        self.service.cancel(id).await?;
        Ok(CancelResponse::Canceled(Json(Canceled {
            success: true,
            message: "Verification canceled.".into(),
        })))
    }

    /// SMS delivery state of a verification. Never includes the number or the code.
    #[oai(path = "/api/otp/status/:verificationId", method = "get")]
    async fn status(
        &self,
        /// The `verificationId` returned by `POST /api/otp/request`.
        #[oai(name = "verificationId")]
        verification_id: Path<String>,
    ) -> Result<StatusResponse, ErrorResponse> {
        let unknown = || ApiError::NotFound("Unknown verification id.".into());
        let id = Uuid::parse_str(&verification_id.0).map_err(|_| unknown())?;
        let status = self.service.status(id).await?;
        let updated_at = OffsetDateTime::from_unix_timestamp(status.updated_at)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        Ok(StatusResponse::Ok(Json(DeliveryStatusBody {
            verification_id: id,
            state: status.state.as_str().to_owned(),
            attempts: status.attempts,
            updated_at,
            resend: status.resend,
            verified: status.verified,
        })))
    }
}
