//! The real `gatehouse` binary (or a program built on its command line, such as the
//! `custom_filter` example) started from a YAML string on fresh loopback ports, with its
//! log kept for the failure message, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::{client, get_json};
use crate::ports::free_port;

/// How long the gateway may take to answer `/readyz` (debug build on busy cores).
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The gateway binary built beside the running test: `target/<profile>/gatehouse`, found
/// from the test executable in `target/<profile>/deps/` (cargo builds a package's binaries
/// before its integration tests; assert_cmd's `cargo_bin` finds them the same way).
pub fn gatehouse_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable under target/<profile>/deps");
    let bin = profile_dir.join("gatehouse");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p gatehouse`)",
        bin.display()
    );
    bin
}

/// A program built from one of the gateway package's examples (e.g. `custom_filter`, a
/// gateway with its own filter kind): `target/<profile>/examples/<name>`, built first by
/// `cargo build --example <name>` into the test's own target directory, once per test
/// process. `cargo test` builds examples only as test harnesses (`--all-targets`) or not
/// at all (`--test it`), and a stale binary would test old code; the gateway library is
/// already built for the test, so this compiles and links the example only.
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    /// A debug build of the example on 2 busy cores; beyond it, something is stuck.
    const BUILD_WITHIN: Duration = Duration::from_secs(20 * 60);
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable under target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let bin = profile_dir.join("examples").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if built.iter().any(|b| b == name) {
        return bin;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "gatehouse", "--example", name])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    match profile_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let what = format!("cargo build --example {name}");
    let (status, stderr) = crate::process::run_bounded(&mut cmd, &what, BUILD_WITHIN);
    assert!(
        status.success() && bin.exists(),
        "cargo build --example {name} failed ({status}):\n{stderr}"
    );
    built.push(name.to_string());
    bin
}

/// Fills the `{listen}` and `{admin}` placeholders of a YAML template with loopback
/// addresses on these ports.
pub fn fill(template: &str, port: u16, admin_port: u16) -> String {
    template
        .replace("{listen}", &format!("127.0.0.1:{port}"))
        .replace("{admin}", &format!("127.0.0.1:{admin_port}"))
}

/// The real gateway binary, started from YAML.
pub struct TestGateway {
    /// Proxy port.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// The config file it watches; files given to [`TestGateway::start_program`] are
    /// beside it.
    pub config_path: PathBuf,
    /// Its stdout/stderr log file.
    pub log_path: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestGateway {
    /// Starts the gateway with `yaml` (with `{listen}` and `{admin}` placeholders) and
    /// waits until /readyz answers. Panics with the log when it does not start.
    pub async fn start(yaml: &str) -> Self {
        Self::start_with_env(yaml, &[]).await
    }

    /// Same, with extra environment variables.
    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_program(&gatehouse_bin(), yaml, &[], env).await
    }

    /// Starts `program` (the `gatehouse` binary, or a program with the same command line
    /// such as [`example_bin`]`("custom_filter")`) with `yaml` and waits until /readyz
    /// answers. `files` are written beside the config first (name, content), for configs
    /// that name files relative to themselves. Panics with the log when it does not start.
    pub async fn start_program(
        program: &std::path::Path,
        yaml: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_on(program, free_port(), yaml, files, env).await
    }

    /// [`TestGateway::start_program`] with `{listen}` on `port`, chosen before (for a
    /// peer that must know the gateway's port before it starts, such as an ACME server
    /// validating against it, or a restart on the same port).
    pub async fn start_on(
        program: &std::path::Path,
        port: u16,
        yaml: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let admin_port = free_port();
        let config_path = dir.path().join("gatehouse.yaml");
        std::fs::write(&config_path, fill(yaml, port, admin_port)).unwrap();
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(["run", "-c"])
            .arg(&config_path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .env("GATEHOUSE_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut gw = TestGateway {
            port,
            admin_port,
            config_path,
            log_path,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(r) = client().get(gw.admin_url("/readyz")).send().await {
                if r.status() == 200 {
                    // The proxy listener starts beside the admin one; wait for it too.
                    if tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
                        .await
                        .is_ok()
                    {
                        return gw;
                    }
                }
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("gateway exited with {status}:\n{}", gw.logs());
            }
            if Instant::now() > deadline {
                panic!("gateway did not become ready:\n{}", gw.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// URL on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Writes a new config (placeholders filled with this gateway's ports).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, fill(yaml, self.port, self.admin_port)).unwrap();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal number `sig` to the gateway through the `kill` command, so that no
    /// test crate needs unsafe code. Panics when it cannot be delivered.
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {} failed", self.child.id());
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The current config hash the gateway reports.
    pub async fn config_hash(&self) -> String {
        let v = get_json(&self.admin_url("/readyz")).await;
        v["config_hash"].as_str().unwrap_or_default().to_string()
    }

    /// Scrapes /metrics until `ready(text)` holds (requests are counted in the logging
    /// phase, just after the client got its answer), at most 3 s; returns the last scrape.
    pub async fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let text = self.metrics().await;
            if ready(&text) || Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Scrapes /metrics until the series `name{labels}` reads `value` (at most 3 s), and
    /// returns the last scrape: an assertion on it shows what was there if it never did.
    pub async fn metrics_at(&self, name: &str, labels: &[(&str, &str)], value: f64) -> String {
        self.metrics_when(|m| crate::metric_value(m, name, labels) == Some(value))
            .await
    }

    /// Scrapes /metrics.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}
