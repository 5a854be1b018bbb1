//! A private `redis-server` on a loopback port of its own, for tests that stop Redis or
//! start it again (the shared one on 127.0.0.1:6379 is never stopped by a test).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::{free_port, is_listening};

/// How long a fresh redis-server may take to accept connections.
const START_WITHIN: Duration = Duration::from_secs(10);

/// A `redis-server` child process without persistence, killed on drop.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one on a fresh port, trying another port when the chosen one was taken
    /// meanwhile (the server then exits at once). Panics when redis-server is missing.
    pub fn start() -> Self {
        for _ in 0..3 {
            if let Some(redis) = Self::try_start_on(free_port()) {
                return redis;
            }
        }
        panic!("private redis-server did not start on three fresh ports");
    }

    /// Starts one on `port` (to bring a stopped one back where clients expect it) and
    /// waits until it accepts connections. Panics when it does not start.
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port)
            .unwrap_or_else(|| panic!("private redis-server did not start on port {port}"))
    }

    /// Starts one that speaks only TLS on a fresh port (`--port 0 --tls-port N`), with
    /// these PEM files; `auth_clients`: it requires a client certificate signed by `ca`.
    /// Panics when it does not start (redis-server without TLS support, bad files).
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path, auth_clients: bool) -> Self {
        let files = [
            "--tls-cert-file".to_string(),
            cert.display().to_string(),
            "--tls-key-file".to_string(),
            key.display().to_string(),
            "--tls-ca-cert-file".to_string(),
            ca.display().to_string(),
            "--tls-auth-clients".to_string(),
            if auth_clients { "yes" } else { "no" }.to_string(),
        ];
        for _ in 0..3 {
            let port = free_port();
            let mut args = vec![
                "--port".to_string(),
                "0".to_string(),
                "--tls-port".to_string(),
                port.to_string(),
            ];
            args.extend(files.iter().cloned());
            if let Some(redis) = Self::spawn(port, &args) {
                return redis;
            }
        }
        panic!("private TLS redis-server did not start on three fresh ports");
    }

    /// Its `rediss://` URL (for one started with [`PrivateRedis::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    fn try_start_on(port: u16) -> Option<Self> {
        Self::spawn(port, &["--port".to_string(), port.to_string()])
    }

    fn spawn(port: u16, listen: &[String]) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the tests need a real Redis)");
        let mut me = Self {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + START_WITHIN;
        while !is_listening(port) {
            let exited = me
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                me.stop();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(me)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes it (SIGSTOP): its sockets stay open and connections are still accepted by
    /// the kernel, but nothing is answered until [`PrivateRedis::thaw`]. Panics when it is
    /// stopped or the signal cannot be sent.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen one go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// Sends `sig` through the `kill` command, so that no test crate needs unsafe code.
    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("redis-server is running");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// Kills it (SIGKILL, no goodbye) and waits for the exit; a no-op when stopped.
    pub fn stop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Kills the child (SIGKILL) if there is one and waits for its exit.
pub(crate) fn kill_and_reap(child: &mut Option<std::process::Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
