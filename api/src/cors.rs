//! CORS for the OTP routes: browsers on the origins of CORS_ALLOWED_ORIGINS (exact matches, no
//! wildcard) may call them. A preflight from such an origin is answered 204 before anything
//! else (a preflight carries no caller key); other origins get no CORS header at all, so the
//! browser keeps the answer from the page. poem's `Cors` middleware refuses off-list origins
//! with an error and answers preflights 200 with every method when no list is set; this is the
//! narrower rule the service documents.

use poem::{
    Request, Response,
    http::{HeaderValue, Method, StatusCode, header},
};

/// The request headers a page may send to the OTP routes.
const ALLOW_HEADERS: &str =
    "authorization, content-type, idempotency-key, x-captcha-token, x-request-id";
/// The response headers a page may read.
const EXPOSE_HEADERS: &str =
    "ratelimit-limit, ratelimit-remaining, ratelimit-reset, retry-after, x-request-id";
/// How long a browser may reuse a preflight answer.
const MAX_AGE_SECONDS: &str = "600";

/// An origin as browsers send it: `https://host[:port]`, no path.
pub fn parse_origin(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.contains('*') {
        return Err("wildcards are not allowed: list each origin".into());
    }
    let url = url::Url::parse(value).map_err(|_| format!("'{value}' is not an origin"))?;
    let exact = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.path() == "/"
        && !value.ends_with('/')
        && url.query().is_none()
        && url.username().is_empty();
    if !exact {
        return Err(format!(
            "'{value}' is not an origin like https://app.example.com (scheme, host, optional port)"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// The allowed origins.
#[derive(Debug, Default)]
pub struct Cors {
    origins: Vec<HeaderValue>,
}

impl Cors {
    pub fn new(origins: &[String]) -> Self {
        Self {
            origins: origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        }
    }

    /// The request's Origin, when it is on the list.
    fn allowed(&self, req: &Request) -> Option<HeaderValue> {
        let origin = req.headers().get(header::ORIGIN)?;
        self.origins.contains(origin).then(|| origin.clone())
    }

    /// The answer to a preflight from an allowed origin for an OTP route's method; `None` lets
    /// the request go on (not a preflight, or not one this service answers).
    pub fn preflight(&self, req: &Request) -> Option<Response> {
        if req.method() != Method::OPTIONS {
            return None;
        }
        let origin = self.allowed(req)?;
        let method = req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        if !matches!(method.as_bytes(), b"GET" | b"POST") {
            return None;
        }
        Some(
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)
                .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST")
                .header(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS)
                .header(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE_SECONDS)
                .header(header::VARY, "Origin")
                .finish(),
        )
    }

    /// Adds the CORS headers to an answer for an allowed origin; `origin` is what
    /// [`Cors::origin_of`] found before the request was handled.
    pub fn decorate(resp: &mut Response, origin: Option<HeaderValue>) {
        let headers = resp.headers_mut();
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }

    /// The allowed Origin of `req`, kept before the request is handed on.
    pub fn origin_of(&self, req: &Request) -> Option<HeaderValue> {
        self.allowed(req)
    }

    pub fn is_enabled(&self) -> bool {
        !self.origins.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact() {
        assert_eq!(
            parse_origin("https://app.example.com").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            parse_origin("http://localhost:5173").unwrap(),
            "http://localhost:5173"
        );
        for bad in [
            "*",
            "https://*.example.com",
            "https://app.example.com/",
            "https://app.example.com/signup",
            "app.example.com",
            "ftp://app.example.com",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_listed_origins_get_a_preflight_answer() {
        let cors = Cors::new(&["https://app.example.com".to_owned()]);
        let preflight = |origin: &str, method: &str| {
            Request::builder()
                .method(Method::OPTIONS)
                .header("origin", origin)
                .header("access-control-request-method", method)
                .finish()
        };
        let answer = cors
            .preflight(&preflight("https://app.example.com", "POST"))
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let allow = answer.headers().get("access-control-allow-origin").unwrap();
        assert_eq!(allow, "https://app.example.com");
        assert!(
            cors.preflight(&preflight("https://evil.example", "POST"))
                .is_none()
        );
        assert!(
            cors.preflight(&preflight("https://app.example.com", "DELETE"))
                .is_none()
        );
    }
}
