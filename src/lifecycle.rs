//! What the process tells the world about itself: every listener bound before anything
//! reports started, which listeners accept (for `/readyz`), and systemd's `sd_notify`
//! states.
//!
//! pingora binds a listener inside its service's own runtime and, when the address is
//! taken, retries for a while and then panics that thread while the rest of the process
//! runs on (nginx instead refuses to start). So the gateway binds every listener itself,
//! in one service that all listening services depend on, and exits with one line naming
//! the listener, the address and the cause when a bind fails. The bound sockets go into
//! pingora's table of listening fds, which is also what a binary upgrade hands over: an
//! address inherited from the old process is taken from the table, never bound again.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::{ListenFds, RuntimeOpts, ShutdownWatch};
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};

/// pingora's own listen backlog (`LISTENER_BACKLOG` in pingora-core's `listeners/l4.rs`),
/// so an inherited socket and a freshly bound one behave alike.
const LISTEN_BACKLOG: i32 = 65535;

/// One socket the gateway listens on: a proxy listener, the admin or the probe listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// The name in errors and `/readyz` (a proxy listener's configured name, `admin`, `probe`).
    pub name: String,
    /// `ip:port` exactly as configured: pingora keys its fd table, and so the upgrade
    /// hand-over, by this string.
    pub address: String,
}

/// A listener that could not be bound; its `Display` is the one line printed at exit.
#[derive(Debug, thiserror::Error)]
#[error("listener \"{name}\" cannot bind {address}: {cause}")]
pub struct BindError {
    /// The listener's name.
    pub name: String,
    /// The configured address.
    pub address: String,
    /// What the OS said, in words (`address in use`, `permission denied ...`).
    pub cause: String,
}

/// Why `/readyz` says no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// These listeners (by name) are not accepting: before start, or after they stopped.
    NotAccepting(Vec<String>),
}

/// Which listeners accept connections right now. A listener counts as accepting from
/// when its service starts its accept loop on the bound socket until that loop ends.
#[derive(Debug)]
pub struct Readiness {
    listeners: Vec<(ListenerSpec, AtomicBool)>,
    announced: AtomicBool,
}

impl Readiness {
    /// Readiness over these listeners, none accepting yet.
    pub fn new(listeners: &[ListenerSpec]) -> Arc<Self> {
        Arc::new(Self {
            listeners: listeners
                .iter()
                .map(|l| (l.clone(), AtomicBool::new(false)))
                .collect(),
            announced: AtomicBool::new(false),
        })
    }

    /// Marks the listeners at these addresses as accepting or not.
    fn set_accepting(&self, addresses: &[String], on: bool) {
        for (spec, flag) in &self.listeners {
            if addresses.contains(&spec.address) {
                flag.store(on, Ordering::Release);
            }
        }
    }

    /// `Ok` when every listener accepts; otherwise the names of those that do not.
    pub fn check(&self) -> Result<(), NotReady> {
        let idle: Vec<String> = self
            .listeners
            .iter()
            .filter(|(_, on)| !on.load(Ordering::Acquire))
            .map(|(spec, _)| spec.name.clone())
            .collect();
        if idle.is_empty() {
            Ok(())
        } else {
            Err(NotReady::NotAccepting(idle))
        }
    }

    /// Once every listener accepts for the first time: logs "gatehouse started" and tells
    /// systemd READY (with MAINPID, so that after a binary upgrade the new process becomes
    /// the unit's main process; the unit needs `NotifyAccess=all` for that).
    fn announce_when_all_accept(&self) {
        if self.check().is_ok() && !self.announced.swap(true, Ordering::AcqRel) {
            let addresses: Vec<String> = self
                .listeners
                .iter()
                .map(|(s, _)| format!("{}={}", s.name, s.address))
                .collect();
            tracing::info!(listeners = ?addresses, "gatehouse started");
            notify(&[
                sd_notify::NotifyState::MainPid(std::process::id()),
                sd_notify::NotifyState::Ready,
            ]);
        }
    }
}

/// Sends states to systemd's notify socket; does nothing without `NOTIFY_SOCKET` (not
/// run by systemd, or a unit type other than `notify`). Failures are logged, never fatal:
/// systemd then times the start out, which says more than a gateway refusing to run.
pub fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// systemd `RELOADING=1` with the timestamp `Type=notify-reload` asks for; follow it
/// with [`notify_reloaded`].
pub fn notify_reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
    }
}

/// systemd `READY=1` after a reload, whatever its outcome: a refused config leaves the
/// last good one serving.
pub fn notify_reloaded() {
    notify(&[sd_notify::NotifyState::Ready]);
}

/// The OS error in the words an operator expects after "cannot bind ADDRESS: ".
fn cause(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address in use".into(),
        io::ErrorKind::AddrNotAvailable => "address not available on this host".into(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".into()
        }
        _ => e.to_string(),
    }
}

/// Binds one TCP listener the way pingora does (`SO_REUSEADDR`, its backlog), without
/// pingora's retries: a taken address is an error at once.
pub fn bind_tcp(spec: &ListenerSpec) -> Result<socket2::Socket, BindError> {
    let fail = |cause: String| BindError {
        name: spec.name.clone(),
        address: spec.address.clone(),
        cause,
    };
    let addr: SocketAddr = spec
        .address
        .to_socket_addrs()
        .map_err(|e| fail(format!("invalid address ({e})")))?
        .next()
        .ok_or_else(|| fail("the name resolves to no address".into()))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(|e| fail(cause(&e)))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| fail(cause(&e)))?;
    // pingora wraps the fd in a tokio listener as it is: a blocking one would stall the
    // runtime thread in accept(2).
    socket.set_nonblocking(true).map_err(|e| fail(cause(&e)))?;
    socket.bind(&addr.into()).map_err(|e| fail(cause(&e)))?;
    socket.listen(LISTEN_BACKLOG).map_err(|e| fail(cause(&e)))?;
    Ok(socket)
}

/// The service that binds every listener before any listening service starts (they
/// depend on it). An address already in pingora's fd table was handed over by the old
/// process of a binary upgrade and is kept as it is. A bind failure ends the process
/// with exit status 1 and one line on stderr.
pub struct Binder {
    listeners: Vec<ListenerSpec>,
}

impl Binder {
    /// A binder for these listeners.
    pub fn new(listeners: Vec<ListenerSpec>) -> Self {
        Self { listeners }
    }

    fn bind_all(&self, fds: &ListenFds) -> Result<(), BindError> {
        let mut table = fds.lock();
        for spec in &self.listeners {
            if table.get(&spec.address).is_some() {
                tracing::info!(listener = %spec.name, address = %spec.address, "listener inherited from the old process");
                continue;
            }
            let socket = bind_tcp(spec)?;
            // The table owns the fd from here on; pingora's listener takes it over.
            table.add(spec.address.clone(), socket.into_raw_fd());
        }
        Ok(())
    }
}

#[async_trait]
impl ServiceWithDependents for Binder {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        _shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        let Some(fds) = fds else {
            return;
        };
        if let Err(e) = self.bind_all(&fds) {
            tracing::error!(listener = %e.name, address = %e.address, cause = %e.cause, "cannot bind");
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        ready_notifier.notify_ready();
    }

    fn name(&self) -> &str {
        "gatehouse bind"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        // The listening services declare the addresses they consume.
        Some(Vec::new())
    }
}

/// A listening service whose accept state feeds [`Readiness`]: accepting from the start
/// of its accept loops until they end.
pub struct Tracked<S> {
    inner: S,
    addresses: Vec<String>,
    readiness: Arc<Readiness>,
}

impl<S: ServiceWithDependents> Tracked<S> {
    /// Tracks `inner`, whose listeners are at `addresses`.
    pub fn new(inner: S, addresses: Vec<String>, readiness: Arc<Readiness>) -> Self {
        Self {
            inner,
            addresses,
            readiness,
        }
    }
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Tracked<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        // The sockets are bound and listening (the Binder ran first): from here the
        // service only wraps them and starts accepting.
        self.readiness.set_accepting(&self.addresses, true);
        self.readiness.announce_when_all_accept();
        self.inner
            .start_service(fds, shutdown, listeners_per_fd, ready_notifier)
            .await;
        self.readiness.set_accepting(&self.addresses, false);
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, address: &str) -> ListenerSpec {
        ListenerSpec {
            name: name.into(),
            address: address.into(),
        }
    }

    #[test]
    fn a_taken_address_is_named_with_its_listener_and_cause() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = bind_tcp(&spec("public", &addr)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("listener \"public\" cannot bind {addr}: address in use")
        );
    }

    #[test]
    fn ready_only_when_every_listener_accepts() {
        let r = Readiness::new(&[spec("public", "a:1"), spec("admin", "b:2")]);
        assert_eq!(
            r.check(),
            Err(NotReady::NotAccepting(vec![
                "public".into(),
                "admin".into()
            ]))
        );
        r.set_accepting(&["a:1".into()], true);
        assert_eq!(r.check(), Err(NotReady::NotAccepting(vec!["admin".into()])));
        r.set_accepting(&["b:2".into()], true);
        assert_eq!(r.check(), Ok(()));
        r.set_accepting(&["a:1".into()], false);
        assert_eq!(
            r.check(),
            Err(NotReady::NotAccepting(vec!["public".into()]))
        );
    }
}
