//! Connection URLs, checked when the process starts. They usually carry a password, so neither
//! their `Debug` output nor any parse error ever repeats them.

use std::{
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use lapin::uri::{AMQPScheme, AMQPUri};

/// One or more `amqp://` or `amqps://` URLs (TLS with rustls and the platform's trust store),
/// separated by commas: the nodes of one RabbitMQ cluster. A process connects to the first node
/// that answers and stays on it; when that node is lost it tries the others in turn (see
/// [`crate::amqp::open_confirmed_channel`]). Clones share which node was last reached.
#[derive(Clone)]
pub struct AmqpUrl {
    nodes: Arc<[AMQPUri]>,
    /// Index of the node last connected to, where the next attempt starts.
    current: Arc<AtomicUsize>,
}

impl AmqpUrl {
    pub fn parse(value: &str) -> Result<Self, String> {
        let nodes = value
            .split(',')
            .enumerate()
            .map(|(i, node)| {
                parse_node(node).map_err(|e| match value.contains(',') {
                    true => format!("node {} {e}", i + 1),
                    false => e,
                })
            })
            .collect::<Result<Arc<[_]>, _>>()?;
        Ok(Self {
            nodes,
            current: Arc::default(),
        })
    }

    /// The nodes, each with its index, starting at the one last connected to.
    pub fn nodes(&self) -> impl Iterator<Item = (usize, &AMQPUri)> {
        let start = self.current.load(Ordering::Relaxed);
        (0..self.nodes.len())
            .map(move |i| (start + i) % self.nodes.len())
            .map(|i| (i, &self.nodes[i]))
    }

    /// Records that node `index` answered: later attempts start there.
    pub fn connected_to(&self, index: usize) {
        self.current.store(index, Ordering::Relaxed);
    }

    /// Where node `index` is, without credentials: for logs.
    pub fn redacted_node(&self, index: usize) -> String {
        redact(&self.nodes[index])
    }

    /// Where every node is, without credentials: for logs.
    pub fn redacted(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(redact).collect();
        nodes.join(",")
    }
}

fn parse_node(value: &str) -> Result<AMQPUri, String> {
    let value = value.trim();
    let scheme_ok = ["amqp://", "amqps://"]
        .iter()
        .any(|s| value.len() > s.len() && value[..s.len()].eq_ignore_ascii_case(s));
    if !scheme_ok {
        return Err("must start with amqp:// or amqps://".into());
    }
    AMQPUri::from_str(value).map_err(|e| {
        // lapin's messages sometimes quote the whole URL; only quote-free ones are kept.
        let detail = if e.contains('\'') || e.contains('@') || e.contains("://") {
            String::new()
        } else {
            format!(" ({e})")
        };
        format!("is not a valid AMQP URL{detail}; expected amqp[s]://user:password@host:port/vhost")
    })
}

fn redact(uri: &AMQPUri) -> String {
    let scheme = match uri.scheme {
        AMQPScheme::AMQP => "amqp",
        AMQPScheme::AMQPS => "amqps",
    };
    let auth = &uri.authority;
    format!("{scheme}://{}:{}/{}", auth.host, auth.port, uri.vhost)
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

/// https, or plain http to this host (localhost or a loopback address).
pub fn secure_or_local(value: &str) -> bool {
    let Ok(url) = url::Url::parse(value.trim()) else {
        return false;
    };
    url.scheme() == "https"
        || match url.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

/// Each URL that is set must be https unless it points at this host (a callback or provider
/// URL over plain http would carry tokens and reports in the clear): production's rule. The
/// error names the variable and the host, never the whole URL.
pub fn check_secure_urls(urls: &[(&str, Option<&str>)]) -> Result<(), String> {
    for (var, url) in urls {
        if let Some(url) = url.filter(|u| !secure_or_local(u)) {
            let host = url::Url::parse(url.trim())
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(format!(
                "{var} must use https:// (plain http only to this host, or with \
                 APP_ENV=development); got a plain-http URL to {host}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_this_host_passes_in_production() {
        for ok in [
            "https://otp.example.com/cb",
            "http://127.0.0.1:3000/cb",
            "http://[::1]/cb",
            "http://localhost/cb",
        ] {
            assert!(secure_or_local(ok), "{ok}");
        }
        for bad in [
            "http://otp.example.com/cb",
            "http://10.0.0.1/cb",
            "ftp://x",
            "nonsense",
        ] {
            assert!(!secure_or_local(bad), "{bad}");
        }
        let err = check_secure_urls(&[
            ("A_URL", None),
            (
                "TWILIO_STATUS_CALLBACK_URL",
                Some("http://otp.example.com/x"),
            ),
        ])
        .unwrap_err();
        assert!(err.contains("TWILIO_STATUS_CALLBACK_URL") && err.contains("otp.example.com"));
        assert!(check_secure_urls(&[("A_URL", Some("https://otp.example.com/x"))]).is_ok());
    }

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
    fn a_node_list_is_tried_from_the_node_last_reached() {
        let url = AmqpUrl::parse(&format!(
            "amqp://otp:{SECRET}@mq1:5672/%2f, amqp://otp:{SECRET}@mq2:5672/%2f,amqp://otp:{SECRET}@mq3:5672/%2f"
        ))
        .unwrap();
        let hosts = |url: &AmqpUrl| -> Vec<String> {
            url.nodes().map(|(_, n)| n.authority.host.clone()).collect()
        };
        assert_eq!(hosts(&url), ["mq1", "mq2", "mq3"]);
        let clone = url.clone();
        clone.connected_to(2);
        assert_eq!(
            hosts(&url),
            ["mq3", "mq1", "mq2"],
            "clones share the node reached"
        );
        assert_eq!(
            url.redacted(),
            "amqp://mq1:5672//,amqp://mq2:5672//,amqp://mq3:5672//"
        );
        assert_eq!(url.redacted_node(1), "amqp://mq2:5672//");
        assert!(!format!("{url:?}").contains(SECRET));

        let err = AmqpUrl::parse(&format!("amqp://mq1/%2f,http://u:{SECRET}@mq2/")).unwrap_err();
        assert!(err.starts_with("node 2 must start with amqp://"), "{err}");
        assert!(
            AmqpUrl::parse("amqp://mq1/%2f,").is_err(),
            "an empty node is refused"
        );
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
