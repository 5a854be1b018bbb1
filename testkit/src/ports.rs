//! A process-wide port registry (sozu's `e2e/src/port_registry.rs` idea): each call binds
//! 127.0.0.1:0, reads the port the kernel chose, releases it, and never hands the same
//! port to two callers of one test process, so tests running in parallel never collide.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// Attempts before giving up: the kernel's ephemeral range holds thousands of ports, so
/// running out of fresh ones means something else is wrong.
const ATTEMPTS: usize = 200;

/// A loopback port that was free a moment ago and that no other caller in this process got.
///
/// Panics when no fresh port is found in [`ATTEMPTS`] binds.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..ATTEMPTS {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // A port handed out before is a collision: try again.
        if given.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no fresh loopback port in {ATTEMPTS} attempts");
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
