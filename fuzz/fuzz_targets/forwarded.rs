//! `X-Forwarded-For` and `Forwarded` resolution on any header values: no panic; without a
//! trusted peer the client is the peer whatever the headers say; from a trusted peer the
//! client is the peer or an address the headers name, and every hop between it and the
//! peer is trusted (DESIGN.md "The client's address").
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use gatehouse::client_addr::{ClientAddr, TrustedProxies};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    peer: [u8; 4],
    peer_v6: Option<[u8; 16]>,
    /// Which of a few trust lists.
    trust: u8,
    xff: Vec<Vec<u8>>,
    forwarded: Vec<Vec<u8>>,
}

const TRUST: &[&[&str]] = &[
    &[],
    &["10.0.0.0/8"],
    &["10.0.0.0/8", "192.168.0.0/16", "::1/128"],
    &["0.0.0.0/0", "::/0"],
];

fuzz_target!(|input: Input| {
    let peer: IpAddr = match input.peer_v6 {
        Some(b) => IpAddr::from(b),
        None => IpAddr::from(input.peer),
    };
    let list = TRUST[usize::from(input.trust) % TRUST.len()];
    let Ok(trusted) = TrustedProxies::parse(list) else {
        panic!("fixed trust list refused");
    };
    let mut headers = HeaderMap::new();
    for (name, values) in [
        ("x-forwarded-for", &input.xff),
        ("forwarded", &input.forwarded),
    ] {
        for v in values.iter().take(8) {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append(HeaderName::from_static(name), v);
            }
        }
    }
    let r = ClientAddr::resolve(peer, &trusted, &headers);
    assert_eq!(r.peer, peer.to_canonical());
    if !trusted.contains(r.peer) {
        assert_eq!(r.client, r.peer, "an untrusted peer named the client");
        return;
    }
    assert_eq!(r.client, reference(peer.to_canonical(), &trusted, &headers));
});

/// The rule written plainly: walk the hops right to left (all `X-Forwarded-For` lines,
/// else all `Forwarded` `for=` nodes), the client being the first that is untrusted or
/// unreadable stops the walk at the hop before it.
fn reference(peer: IpAddr, trusted: &TrustedProxies, headers: &HeaderMap) -> IpAddr {
    let use_xff = headers.contains_key("x-forwarded-for");
    let name = if use_xff {
        "x-forwarded-for"
    } else {
        "forwarded"
    };
    let mut hops: Vec<Option<&str>> = Vec::new();
    for line in headers.get_all(name) {
        match line.to_str() {
            Ok(l) => {
                for item in l.split(',') {
                    if use_xff {
                        let t = item.trim();
                        if !t.is_empty() {
                            hops.push(Some(t));
                        }
                    } else if let Some(v) = item.split(';').find_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        k.trim()
                            .eq_ignore_ascii_case("for")
                            .then(|| v.trim().trim_matches('"'))
                    }) {
                        hops.push(Some(v));
                    }
                }
            }
            // An unreadable line: nothing left of it (or of lines before it) is believed.
            Err(_) => {
                hops.clear();
                hops.push(None);
            }
        }
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        let ip = hop.and_then(|h| {
            h.parse::<IpAddr>()
                .ok()
                .or_else(|| h.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
                .or_else(|| h.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        });
        match ip {
            Some(ip) => {
                client = ip.to_canonical();
                if !trusted.contains(client) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}
