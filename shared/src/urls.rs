//! Connection URLs, checked when the process starts. They usually carry a password, so neither
//! their `Debug` output nor any parse error ever repeats them.

use std::{fmt, str::FromStr};

use lapin::uri::{AMQPScheme, AMQPUri};

/// A parsed `amqp://` or `amqps://` URL (TLS with rustls and the platform's trust store).
#[derive(Clone)]
pub struct AmqpUrl(AMQPUri);

impl AmqpUrl {
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let scheme_ok = ["amqp://", "amqps://"]
            .iter()
            .any(|s| value.len() > s.len() && value[..s.len()].eq_ignore_ascii_case(s));
        if !scheme_ok {
            return Err("must start with amqp:// or amqps://".into());
        }
        AMQPUri::from_str(value).map(Self).map_err(|e| {
            // lapin's messages sometimes quote the whole URL; only quote-free ones are kept.
            let detail = if e.contains('\'') || e.contains('@') || e.contains("://") {
                String::new()
            } else {
                format!(" ({e})")
            };
            format!(
                "is not a valid AMQP URL{detail}; expected amqp[s]://user:password@host:port/vhost"
            )
        })
    }

    pub fn uri(&self) -> &AMQPUri {
        &self.0
    }

    /// Where it points, without credentials: for logs.
    pub fn redacted(&self) -> String {
        let scheme = match self.0.scheme {
            AMQPScheme::AMQP => "amqp",
            AMQPScheme::AMQPS => "amqps",
        };
        let auth = &self.0.authority;
        format!("{scheme}://{}:{}/{}", auth.host, auth.port, self.0.vhost)
    }
}

impl FromStr for AmqpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.redacted())
    }
}

/// Checks a Redis URL (`redis://`, `rediss://` for TLS, or `unix://`); the error never repeats
/// the value.
pub fn check_redis_url(value: &str) -> Result<(), String> {
    let value = value.trim();
    let lower = value.to_ascii_lowercase();
    if !["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        return Err("must start with redis://, rediss:// (TLS) or unix://".into());
    }
    redis::Client::open(value).map(drop).map_err(|_| {
        "is not a valid Redis URL; expected redis[s]://[[user]:password@]host:port/db".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-pa55";

    #[test]
    fn good_urls_parse_and_never_show_their_password() {
        let url =
            AmqpUrl::parse(&format!("amqps://otp:{SECRET}@mq.example.com:5671/prod")).unwrap();
        assert_eq!(url.redacted(), "amqps://mq.example.com:5671/prod");
        assert!(!format!("{url:?}").contains(SECRET));
        assert!(AmqpUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(check_redis_url(&format!("rediss://:{SECRET}@cache:6380/0")).is_ok());
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for bad in [
            format!("amqp://user:{SECRET}@host:notaport/%2f"),
            format!("http://user:{SECRET}@host/"),
            format!("amqp://user:{SECRET}@"),
            SECRET.to_string(),
            format!("amqp:/user:{SECRET}@host"),
        ] {
            let err = AmqpUrl::parse(&bad).unwrap_err();
            assert!(!err.contains(SECRET), "{bad} -> {err}");
        }
        for bad in [
            format!("redis://user:{SECRET}@host:notaport/0"),
            format!("http://:{SECRET}@host"),
            format!("redis://:{SECRET}@[::1/0"),
        ] {
            let err = check_redis_url(&bad).unwrap_err();
            assert!(!err.contains(SECRET), "{bad} -> {err}");
        }
    }
}
