//! An IP address as text without `fmt`: the forwarding headers and `client_ip` rate-limit
//! keys write one or two per request.

use std::net::IpAddr;

/// `ip` in its standard text form (RFC 4001 dotted quad; IPv6 in RFC 5952 form through
/// `Display`), the same string `ip.to_string()` gives. IPv4, the common case, is written
/// digit by digit: `Ipv4Addr`'s `Display` goes through the formatter's padding support
/// and costs about ten times as much.
pub fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn matches_display_for_every_octet_and_for_ipv6() {
        for o in 0..=255u8 {
            for ip in [Ipv4Addr::new(o, 0, 255, o), Ipv4Addr::new(10, o, o, 9)] {
                assert_eq!(ip_text(IpAddr::V4(ip)), ip.to_string());
            }
        }
        for ip in ["::1", "2001:db8::7", "::ffff:10.0.0.1", "fe80::1:2:3:4"] {
            let ip: Ipv6Addr = ip.parse().unwrap();
            assert_eq!(ip_text(IpAddr::V6(ip)), ip.to_string());
        }
    }
}
