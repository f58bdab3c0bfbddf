//! Which client a request comes from, for the per-IP limits.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// A trusted proxy's X-Forwarded-For names, where the client should be, something that is not
/// an address. Answered 400 INVALID_REQUEST: falling back to the proxy's own address would put
/// every such request in one shared bucket, and believing the text would let a client pick its
/// own bucket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("X-Forwarded-For from a trusted proxy holds an entry that is not an IP address")]
pub struct UnreadableForwardedFor;

/// The socket peer, unless the peer is a trusted proxy: then the right-most address in
/// X-Forwarded-For that is not itself a trusted proxy. `forwarded_for` is every X-Forwarded-For
/// header line in order; they are one list (RFC 9110 §5.3), so a proxy that adds its own line
/// instead of appending to the client's cannot make a forged line the one believed. Addresses a
/// client put further left are never believed, so a client cannot pick its own identity.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> Result<IpAddr, UnreadableForwardedFor> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let mut last = peer;
    for line in forwarded_for.rev() {
        for hop in line.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
            let ip = parse_hop(hop).ok_or(UnreadableForwardedFor)?;
            if !is_trusted(&ip) {
                return Ok(ip);
            }
            last = ip;
        }
    }
    // Every hop is a trusted proxy: the left-most one is the closest we know to the client.
    Ok(last)
}

/// An X-Forwarded-For entry: `198.51.100.7`, `198.51.100.7:4711`, `2001:db8::1`, or
/// `[2001:db8::1]:4711`, optionally quoted.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (v6, port) = rest.split_once(']')?;
        if !(port.is_empty() || port.strip_prefix(':')?.parse::<u16>().is_ok()) {
            return None;
        }
        return v6.parse::<Ipv6Addr>().ok().map(|ip| canonical(ip.into()));
    }
    let (v4, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is the IPv4 address, for limits and CIDR checks.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The bucket a client's requests count in: an IPv4 address alone, an IPv6 address by its
/// network of `ipv6_prefix` bits (a /64 is what one subscriber or one cloud VM gets whole).
pub fn limit_key(ip: IpAddr, ipv6_prefix: u8) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix.min(128)))
                .unwrap_or(0);
            format!("{}/{ipv6_prefix}", Ipv6Addr::from(bits & mask))
        }
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

    fn from(peer: &str, lines: &[&str]) -> Result<IpAddr, UnreadableForwardedFor> {
        client_ip(ip(peer), lines.iter().copied(), &trusted())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(from("203.0.113.9", &["1.2.3.4"]), Ok(ip("203.0.113.9")));
        assert_eq!(from("203.0.113.9", &["garbage"]), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn a_trusted_proxy_hands_over_the_right_most_untrusted_hop() {
        assert_eq!(
            from("10.1.1.1", &["6.6.6.6, 198.51.100.7, 192.168.1.1"]),
            Ok(ip("198.51.100.7"))
        );
        assert_eq!(from("10.1.1.1", &[]), Ok(ip("10.1.1.1")));
        assert_eq!(
            from("::ffff:10.1.1.1", &["198.51.100.7"]),
            Ok(ip("198.51.100.7"))
        );
        assert_eq!(
            from("10.1.1.1", &["198.51.100.7:4711"]),
            Ok(ip("198.51.100.7"))
        );
        assert_eq!(
            from("10.1.1.1", &["\"[2001:db8::1]:443\""]),
            Ok(ip("2001:db8::1"))
        );
    }

    #[test]
    fn every_header_line_counts_so_a_forged_first_line_is_not_believed() {
        // HAProxy's `option forwardfor` adds its own line after the client's.
        assert_eq!(
            from("10.1.1.1", &["6.6.6.6", "198.51.100.7"]),
            Ok(ip("198.51.100.7"))
        );
    }

    #[test]
    fn an_unreadable_client_entry_is_refused_not_pooled_with_the_proxy() {
        assert_eq!(from("10.1.1.1", &["garbage"]), Err(UnreadableForwardedFor));
        assert_eq!(
            from("10.1.1.1", &["unknown, 10.2.2.2"]),
            Err(UnreadableForwardedFor)
        );
        // Left of the client's real address, garbage is never read.
        assert_eq!(
            from("10.1.1.1", &["garbage, 198.51.100.7"]),
            Ok(ip("198.51.100.7"))
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_network() {
        let a = limit_key(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = limit_key(ip("2001:db8:1:2:ffff:1:2:3"), 64);
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_ne!(a, limit_key(ip("2001:db8:1:3::1"), 64));
        assert_eq!(limit_key(ip("2001:db8:1:2::1"), 48), "2001:db8:1::/48");
        assert_eq!(limit_key(ip("2001:db8::1"), 128), "2001:db8::1/128");
        assert_eq!(limit_key(ip("::ffff:198.51.100.7"), 64), "198.51.100.7");
        assert_eq!(limit_key(ip("198.51.100.7"), 64), "198.51.100.7");
    }
}
