//! A process-wide port registry (sozu's `e2e/src/port_registry.rs` idea): each call hands
//! out a loopback port that binds now, from a range the kernel never picks for outgoing
//! connections, and never the same port to two callers of one test process, so tests
//! running in parallel never collide.

use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// The ports handed out: `[FIRST, FIRST + SPAN)`. Linux picks the local port of an outgoing
/// connection from `net.ipv4.ip_local_port_range` (32768-60999 by default); a port from
/// that range, free when it was chosen, can be taken a moment later by any connect() on
/// the machine, and the gateway started on it then fails with "address in use" (seen in
/// CI). Below 22000 a port is out of that range, and so is a Redis Cluster node's bus port
/// (the node's port + 10000, Redis' default), which keeps the bus ports out of this range too.
const FIRST: u16 = 12000;
/// How many ports the range holds.
const SPAN: u16 = 10000;

/// A loopback port that binds now, that no other caller in this process got, and that the
/// kernel does not hand to outgoing connections.
///
/// Panics when the range is used up: every port of it handed out or found taken.
pub fn free_port() -> u16 {
    // (the next offset into the range, how many ports of it were looked at so far). The
    // offset only moves forward, so a port is looked at, and handed out, at most once per
    // process; after the whole range the process has none left.
    static NEXT: OnceLock<Mutex<(u16, u16)>> = OnceLock::new();
    let state = NEXT.get_or_init(|| {
        // Start where another test process (a parallel `cargo test` of another crate) is
        // unlikely to be: the process id and the clock pick the offset.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let offset = (std::process::id().wrapping_mul(7919) ^ nanos) % u32::from(SPAN);
        Mutex::new((offset as u16, 0))
    });
    let mut state = state.lock().unwrap();
    while state.1 < SPAN {
        let port = FIRST + state.0;
        state.0 = (state.0 + 1) % SPAN;
        state.1 += 1;
        // Something else on the machine may hold it: only a port that binds is handed out.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no loopback port of {FIRST}..{} is left to hand out",
        FIRST + SPAN
    );
}

/// `n` distinct ports from [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` right now.
pub fn is_listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
/// A name no other test (in this run or in a parallel one) uses, for keys in the shared
/// Redis and the like: `tag`, the process id, the wall clock in nanoseconds and a
/// process-wide sequence number.
pub fn unique(tag: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}-{}-{nanos}-{seq}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The ports handed out are distinct and outside the range the kernel picks local ports
    /// of outgoing connections from, as this machine configures it.
    #[test]
    fn ports_are_distinct_and_never_ephemeral() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("read ip_local_port_range");
        let bounds: Vec<u16> = range
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        let ports = free_ports(50);
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!(
                p < bounds[0] || p > bounds[1],
                "{p} is in the ephemeral range {bounds:?}"
            );
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok(), "{p} binds");
        }
    }
}
