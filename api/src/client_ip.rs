//! Which IP a request comes from, for the per-IP limit.

use std::net::IpAddr;

use ipnet::IpNet;

/// The socket peer, unless the peer is a trusted proxy: then the right-most address in
/// X-Forwarded-For that is not itself a trusted proxy. Addresses a client put further left are
/// never believed, so a client cannot pick its own identity.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut hops = header.rsplit(',').map(str::trim);
    let mut last = peer;
    for hop in hops.by_ref() {
        let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
            // A garbled entry: stop at the last address we could trust.
            return last;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        last = ip;
    }
    last
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is the IPv4 address, for limits and CIDR checks.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> Vec<IpNet> {
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.1.1/32".parse().unwrap(),
        ]
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_hands_over_the_right_most_untrusted_hop() {
        assert_eq!(
            client_ip(
                ip("10.1.1.1"),
                Some("6.6.6.6, 198.51.100.7, 192.168.1.1"),
                &trusted()
            ),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("10.1.1.1"), None, &trusted()), ip("10.1.1.1"));
        assert_eq!(
            client_ip(ip("10.1.1.1"), Some("garbage"), &trusted()),
            ip("10.1.1.1")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.1.1.1"), Some("198.51.100.7"), &trusted()),
            ip("198.51.100.7")
        );
    }
}
