//! Test harness: service child processes (killable with SIGKILL), HTTP helpers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use gatehouse_testkit::free_ports;
use gatehouse_testkit::send;
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse-services");
pub const TOKEN: &str = "it-internal-token";
pub const SECRET: &str = "it-jwt-secret-0123456789";
pub const MARIADB: &str = "mysql://root@127.0.0.1:3306";
pub const REDIS: &str = "redis://127.0.0.1:6379";

/// Heavy tests (many processes, many requests) run one at a time on 2 cores.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test run and call.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 1_000_000_000;
    format!(
        "{tag}{}_{nanos}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where a test's services keep their files and logs.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gatehouse-it-{}", unique(tag)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A deployment: the same env for every service process of one test.
#[derive(Clone)]
pub struct Deployment {
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
    pub ports: HashMap<&'static str, u16>,
}

impl Deployment {
    /// SQLite under a fresh dir, or MariaDB with unique database names when `mariadb`.
    pub fn new(tag: &str, mariadb: bool) -> Self {
        let dir = temp_dir(tag);
        // The four services' ports and the demo's control API (tests run demos side by side).
        let p = free_ports(5);
        let ports: HashMap<&'static str, u16> = [
            ("user", p[0]),
            ("transaction", p[1]),
            ("payment", p[2]),
            ("notification", p[3]),
        ]
        .into();
        let mut env: HashMap<String, String> = [
            ("GATEHOUSE_MODE", "test".to_string()),
            ("GATEHOUSE_INTERNAL_TOKEN", TOKEN.to_string()),
            ("GATEHOUSE_JWT_SECRET", SECRET.to_string()),
            ("GATEHOUSE_DATA_DIR", dir.join("data").display().to_string()),
            ("GATEHOUSE_DB_PREFIX", unique("it")),
            ("GATEHOUSE_USER_PORT", p[0].to_string()),
            ("GATEHOUSE_TRANSACTION_PORT", p[1].to_string()),
            ("GATEHOUSE_PAYMENT_PORT", p[2].to_string()),
            ("GATEHOUSE_NOTIFICATION_PORT", p[3].to_string()),
            ("GATEHOUSE_DEMO_CONTROL", format!("127.0.0.1:{}", p[4])),
            ("RUST_LOG", "info,sqlx=warn".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if mariadb {
            env.insert("GATEHOUSE_DATABASE_URL".into(), MARIADB.into());
        }
        Deployment { dir, env, ports }
    }

    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    /// Writes the config of the demo's built-in gateway and points `GATEHOUSE_DEMO_CONFIG`
    /// at it: a public and an admin listener on free ports, the top-level keys in `extra`
    /// (YAML lines), the upstream `service` at this deployment's port, and one `route` (a
    /// YAML flow mapping). Returns the public listener's port.
    #[cfg(feature = "demo")]
    pub fn demo_gateway(&mut self, extra: &str, service: &str, route: &str) -> u16 {
        let p = free_ports(2);
        let (listen, admin) = (p[0], p[1]);
        let config = self.dir.join("demo.yaml");
        std::fs::write(
            &config,
            format!(
                "listeners: [ {{ name: public, address: \"127.0.0.1:{listen}\" }} ]\n\
                 admin: {{ address: \"127.0.0.1:{admin}\" }}\n\
                 {extra}\
                 upstreams:\n  {service}: {{ discovery: {{ static: [ {{ address: \"127.0.0.1:{}\" }} ] }} }}\n\
                 routes:\n  - {route}\n",
                self.ports[service]
            ),
        )
        .unwrap();
        self.set("GATEHOUSE_DEMO_CONFIG", &config.display().to_string());
        listen
    }

    /// Starts `gatehouse-services <command>` and waits until each of `wait_for` answers /health.
    pub async fn start(&self, command: &str, wait_for: &[&str]) -> Proc {
        self.start_with_args(command, &[], wait_for).await
    }

    /// [`Deployment::start`] with extra arguments after the command.
    pub async fn start_with_args(&self, command: &str, args: &[&str], wait_for: &[&str]) -> Proc {
        let log = self.dir.join(format!("{command}-{}.log", unique("")));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(BIN);
        // Hermetic: nothing GATEHOUSE_* leaks in from the test's own environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("GATEHOUSE_") && !self.env.contains_key(&k) {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg(command)
            .args(args)
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        let mut proc = Proc {
            child,
            log,
            name: command.to_string(),
        };
        for s in wait_for {
            proc.wait_healthy(&self.url(s)).await;
        }
        proc
    }

    /// Drops the MariaDB databases of this deployment (best effort).
    pub fn drop_mariadb(&self) {
        let prefix = &self.env["GATEHOUSE_DB_PREFIX"];
        for s in ["user", "transaction", "payment", "notification"] {
            let _ = Command::new("mysql")
                .args([
                    "-h127.0.0.1",
                    "-uroot",
                    "-e",
                    &format!("DROP DATABASE IF EXISTS `{prefix}_{s}`"),
                ])
                .output();
        }
    }
}

/// A service process; killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn wait_healthy(&mut self, base: &str) {
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before becoming healthy:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(r) = client.get(format!("{base}/health")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy at {base} within 60s:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then wait (at most 20 s) for a graceful exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// POST with the internal token; returns (status, json body or Null).
pub async fn post(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = send(c.post(url).header("x-internal-token", TOKEN).json(body)).await;
    (r.status, r.body)
}

/// GET with the internal token.
pub async fn get(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = send(c.get(url).header("x-internal-token", TOKEN)).await;
    (r.status, r.body)
}

/// Sends `req` as user `user` (`X-User-Id`, the header the gateway sets for a verified
/// caller); returns (status, json body or Null).
pub async fn as_user(req: reqwest::RequestBuilder, user: &str) -> (u16, Value) {
    let r = send(req.header("x-user-id", user)).await;
    (r.status, r.body)
}

/// Opens an account at payment (`pay`, its base URL) for `owner` with an opening
/// `balance`; returns its id.
pub async fn account(c: &reqwest::Client, pay: &str, owner: &str, balance: i64) -> String {
    let (st, v) = post(
        c,
        &format!("{pay}/accounts"),
        &json!({ "owner_id": owner, "initial_balance": balance }),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Polls `f` every 200 ms until it returns Some, failing after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
