//! Who the client is: the trust model that turns a connection's peer and its forwarding
//! headers (`X-Forwarded-For`, RFC 7239 `Forwarded`) into one client address, after nginx's
//! `set_real_ip_from` + `real_ip_recursive on` and Envoy's trusted-hop walk.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// A `trusted_proxies` entry that is neither a CIDR block nor an IP address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR block (10.0.0.0/8, fd00::/8) or an IP address")]
pub struct BadCidr(pub String);

/// The addresses whose forwarding headers and PROXY protocol headers are believed: load
/// balancers and TLS terminators in front of the gateway. Empty by default: then the
/// client is always the connection's peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDR blocks (`10.0.0.0/8`, `fd00::/8`) and bare addresses (one host).
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, BadCidr> {
        list.iter()
            .map(|s| {
                let s = s.as_ref().trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| BadCidr(s.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// True when nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is inside a trusted block. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// what a dual-stack socket reports for an IPv4 peer) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether some block covers every address of its family (`0.0.0.0/0`, `::/0`): then any
    /// client can name its own address.
    pub fn trusts_everyone(&self) -> bool {
        self.0.iter().any(|n| n.prefix_len() == 0)
    }
}

/// One listener's per-connection settings (trust, PROXY protocol, https redirect), found
/// again from a connection's local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTrust {
    /// The bound address (`0.0.0.0:8080` takes every local address on port 8080).
    pub address: SocketAddr,
    /// Whose forwarding and PROXY headers are believed.
    pub trusted: TrustedProxies,
    /// Whether connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// `redirect_https`: clear-text requests get a 308 to https, with this port in the
    /// Location (`None`: 443, left out).
    pub redirect_https: Option<Option<u16>>,
}

impl ListenerTrust {
    /// Whether a connection accepted on `local` came through this listener.
    pub fn serves(&self, local: SocketAddr) -> bool {
        self.address.port() == local.port()
            && (self.address.ip().is_unspecified()
                || self.address.ip().to_canonical() == local.ip().to_canonical())
    }

    /// The listener among `all` that accepted a connection on `local`.
    pub fn find(all: &[ListenerTrust], local: SocketAddr) -> Option<&ListenerTrust> {
        all.iter().find(|l| l.serves(local))
    }
}

/// The connection as the gateway sees it, and the client it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client: the rightmost untrusted forwarded address when the peer is trusted,
    /// else the peer. This one address feeds `client_ip` rate limits and the access log.
    pub client: IpAddr,
    /// The connection's peer: the TCP peer, or the source a trusted PROXY protocol header
    /// named.
    pub peer: IpAddr,
    /// Whether `peer` is a trusted proxy (its forwarding headers are kept and extended).
    pub peer_trusted: bool,
}

impl ClientAddr {
    /// Resolves the client behind `peer`. From an untrusted peer the client is the peer and
    /// the headers are ignored. From a trusted one, the forwarded addresses are walked from
    /// the right (the hop nearest to us) and the first that is not trusted is the client;
    /// `X-Forwarded-For` is read when present, else the `for=` parameters of `Forwarded`
    /// (RFC 7239 section 5.2). When every forwarded address is trusted, the leftmost is the
    /// client (nginx `real_ip_recursive`); an entry that is not an address (`unknown`, an
    /// obfuscated name, garbage) stops the walk at the trusted hop to its right, so nobody
    /// beyond an unreadable hop is believed.
    pub fn resolve(peer: IpAddr, trusted: &TrustedProxies, headers: &HeaderMap) -> Self {
        let peer = peer.to_canonical();
        if trusted.is_empty() || !trusted.contains(peer) {
            return Self {
                client: peer,
                peer,
                peer_trusted: false,
            };
        }
        let mut client = peer;
        let mut walk = |hop: Option<IpAddr>| match hop {
            Some(ip) => {
                client = ip.to_canonical();
                trusted.contains(client)
            }
            None => false,
        };
        if headers.contains_key(X_FORWARDED_FOR) {
            'xff: for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
                let Ok(line) = line.to_str() else { break };
                for entry in line.rsplit(',') {
                    let entry = entry.trim();
                    if entry.is_empty() {
                        continue;
                    }
                    if !walk(parse_node(entry)) {
                        break 'xff;
                    }
                }
            }
        } else {
            'fwd: for line in headers.get_all(FORWARDED).iter().rev() {
                let Ok(line) = line.to_str() else { break };
                for element in line.rsplit(',') {
                    let Some(node) = forwarded_for(element) else {
                        // An element without `for=` names no hop (RFC 7239 allows it).
                        continue;
                    };
                    if !walk(parse_node(node)) {
                        break 'fwd;
                    }
                }
            }
        }
        Self {
            client,
            peer,
            peer_trusted: true,
        }
    }
}

/// `X-Forwarded-For` (de-facto standard; MDN).
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// `Forwarded` (RFC 7239).
pub const FORWARDED: &str = "forwarded";

/// The `for=` value of one `Forwarded` element (`for=192.0.2.60;proto=http;by=...`),
/// quotes removed.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An address as forwarding headers write it: `192.0.2.1`, `2001:db8::1`, with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`) or bracketed (`[2001:db8::1]`).
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// `ip` as a `Forwarded` node (RFC 7239 section 6: an IPv6 address is bracketed and quoted).
pub fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn client(peer: &str, trusted: &[&str], h: &[(&str, &str)]) -> String {
        let t = TrustedProxies::parse(trusted).unwrap();
        ClientAddr::resolve(peer.parse().unwrap(), &t, &headers(h))
            .client
            .to_string()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let xff = [("x-forwarded-for", "1.1.1.1")];
        assert_eq!(client("203.0.113.9", &[], &xff), "203.0.113.9");
        assert_eq!(client("203.0.113.9", &["10.0.0.0/8"], &xff), "203.0.113.9");
    }

    #[test]
    fn trusted_peer_gives_the_rightmost_untrusted_hop() {
        let t = ["10.0.0.0/8", "192.168.1.1"];
        // spoofed first entry, the client, then two trusted hops
        let h = [(
            "x-forwarded-for",
            "6.6.6.6, 198.51.100.7, 10.1.1.1, 192.168.1.1",
        )];
        assert_eq!(client("10.0.0.5", &t, &h), "198.51.100.7");
        // several header lines are one list, in order
        let h = [
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ];
        assert_eq!(client("10.0.0.5", &t, &h), "198.51.100.7");
        // every hop trusted: the leftmost
        let h = [("x-forwarded-for", "10.9.9.9, 10.1.1.1")];
        assert_eq!(client("10.0.0.5", &t, &h), "10.9.9.9");
        // no header: the peer
        assert_eq!(client("10.0.0.5", &t, &[]), "10.0.0.5");
        // garbage stops the walk at the trusted hop to its right
        let h = [("x-forwarded-for", "198.51.100.7, nonsense, 10.1.1.1")];
        assert_eq!(client("10.0.0.5", &t, &h), "10.1.1.1");
        // ports and brackets
        let h = [("x-forwarded-for", "[2001:db8::7]:443, 10.1.1.1:80")];
        assert_eq!(client("10.0.0.5", &t, &h), "2001:db8::7");
    }

    #[test]
    fn forwarded_header_when_there_is_no_x_forwarded_for() {
        let t = ["10.0.0.0/8"];
        let h = [(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.2.2.2;by=10.0.0.5",
        )];
        assert_eq!(client("10.0.0.5", &t, &h), "2001:db8:cafe::17");
        let h = [("forwarded", "for=unknown, for=10.2.2.2")];
        assert_eq!(client("10.0.0.5", &t, &h), "10.2.2.2");
        // X-Forwarded-For wins when both are present
        let h = [
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
        ];
        assert_eq!(client("10.0.0.5", &t, &h), "198.51.100.2");
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_blocks() {
        let t = TrustedProxies::parse(&["127.0.0.0/8"]).unwrap();
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!t.contains("::1".parse().unwrap()));
        assert!(!t.trusts_everyone());
        assert!(TrustedProxies::parse(&["::/0"]).unwrap().trusts_everyone());
        assert_eq!(
            TrustedProxies::parse(&["10.0.0.0/33"]),
            Err(BadCidr("10.0.0.0/33".into()))
        );
    }

    #[test]
    fn forwarded_nodes_quote_ipv6() {
        assert_eq!(forwarded_node("192.0.2.1".parse().unwrap()), "192.0.2.1");
        assert_eq!(
            forwarded_node("2001:db8::1".parse().unwrap()),
            "\"[2001:db8::1]\""
        );
    }
}
