//! Real Redis topologies on loopback ports for failover tests: a 6-node Redis Cluster
//! (3 primaries, 3 replicas) and a Sentinel set (1 primary, 1 replica, 3 sentinels).
//! Every process is a child of the test, killed by PID on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::{free_ports, is_listening};

/// How long the whole topology may take to come up.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// One redis-server (or sentinel) child process.
struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, dir: &Path, extra: &[&str]) -> Self {
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
            // A replica syncs at once (Redis 7 waits 5 s for more replicas by default);
            // a replica that never synced is never promoted.
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the tests need a real Redis)");
        Self {
            port,
            child: Some(child),
        }
    }

    fn kill(&mut self) {
        crate::redis::kill_and_reap(&mut self.child);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli -p port args...` and returns its stdout ("" when it fails).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn wait_listening(nodes: &[Node]) {
    let deadline = Instant::now() + READY_WITHIN;
    while !nodes.iter().all(|n| is_listening(n.port)) {
        assert!(Instant::now() < deadline, "redis nodes did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A 6-node Redis Cluster: 3 primaries with one replica each, node timeout 1 s (so a
/// killed primary's replica is promoted within about 2 s).
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts the nodes on fresh ports, creates the cluster and waits until every node
    /// reports `cluster_state:ok`. Panics when it does not come up within 20 s.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(6);
        let nodes: Vec<Node> = ports
            .iter()
            .map(|p| {
                let conf = format!("nodes-{p}.conf");
                Node::spawn(
                    *p,
                    dir.path(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "1000",
                    ],
                )
            })
            .collect();
        wait_listening(&nodes);
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let me = Self { nodes, _dir: dir };
        me.wait_ok(READY_WITHIN);
        me
    }

    /// Waits until every running node says `cluster_state:ok` and knows 3 primaries.
    /// Panics after `within`.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.running_ports().iter().all(|p| {
                redis_cli(*p, &["cluster", "info"]).contains("cluster_state:ok")
                    && (redis_cli(*p, &["role"]).starts_with("master")
                        || redis_cli(*p, &["info", "replication"])
                            .contains("master_link_status:up"))
            }) && self.primaries().len() == 3;
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis cluster not ok within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The seed URLs of all six nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Ports of the running nodes whose role is master.
    pub fn primaries(&self) -> Vec<u16> {
        self.running_ports()
            .into_iter()
            .filter(|p| redis_cli(*p, &["role"]).starts_with("master"))
            .collect()
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }

    /// The port of the primary serving `slot`, as the first running primary's
    /// `CLUSTER NODES` says. Panics when none is named.
    pub fn owner_of(&self, slot: u16) -> u16 {
        self.primaries()
            .first()
            .and_then(|p| slot_owner_port(*p, slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// Moves `slot` from the primary on `from` to the primary on `to` the way
    /// `redis-cli --cluster reshard` does, in three phases with `pause` after each of
    /// the first two so that clients meet every state under load: (1) `SETSLOT
    /// IMPORTING` on the target and `MIGRATING` on the source (existing keys still
    /// served by the source; a missing key answers `ASK`); (2) `MIGRATE` of every key
    /// (each now answers `ASK`, served by the target after `ASKING`); (3) `SETSLOT
    /// NODE` on every primary (the source answers `MOVED`). Panics when a step fails.
    pub fn move_slot(&self, slot: u16, from: u16, to: u16, pause: Duration) -> SlotMove {
        let s = slot.to_string();
        let id = |port: u16| redis_cli(port, &["cluster", "myid"]).trim().to_string();
        let (from_id, to_id) = (id(from), id(to));
        let ok = |port: u16, args: &[&str]| {
            let out = redis_cli(port, args);
            assert!(out.trim() == "OK", "redis {port} {args:?}: {out:?}");
        };
        ok(to, &["cluster", "setslot", &s, "importing", &from_id]);
        ok(from, &["cluster", "setslot", &s, "migrating", &to_id]);
        std::thread::sleep(pause);
        let mut keys = 0;
        for _ in 0..1000 {
            let batch = redis_cli(from, &["cluster", "getkeysinslot", &s, "100"]);
            let batch: Vec<&str> = batch.lines().filter(|l| !l.is_empty()).collect();
            if batch.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &to_port, "", "0", "5000", "keys"];
            args.extend(batch.iter().copied());
            let out = redis_cli(from, &args);
            // NOKEY: every key of the batch expired between listing and migrating.
            assert!(
                ["OK", "NOKEY"].contains(&out.trim()),
                "MIGRATE {batch:?}: {out:?}"
            );
            keys += batch.len();
        }
        std::thread::sleep(pause);
        ok(to, &["cluster", "setslot", &s, "node", &to_id]);
        ok(from, &["cluster", "setslot", &s, "node", &to_id]);
        for p in self.primaries() {
            if p != from && p != to {
                ok(p, &["cluster", "setslot", &s, "node", &to_id]);
            }
        }
        SlotMove { keys }
    }

    /// Waits until every running node maps `slot` to the primary on `port`. Panics after
    /// `within`.
    pub fn wait_slot_owner(&self, slot: u16, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while !self
            .running_ports()
            .iter()
            .all(|p| slot_owner_port(*p, slot) == Some(port))
        {
            assert!(
                Instant::now() < deadline,
                "slot {slot} not owned by {port} everywhere within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What [`RedisCluster::move_slot`] did.
#[derive(Debug, Clone, Copy)]
pub struct SlotMove {
    /// Keys migrated (as listed by `CLUSTER GETKEYSINSLOT`).
    pub keys: usize,
}

/// The port of the primary that the node on `asked` maps `slot` to.
fn slot_owner_port(asked: u16, slot: u16) -> Option<u16> {
    redis_cli(asked, &["cluster", "nodes"])
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Fields: id addr flags primary ping pong epoch link slot-ranges...; a range is
            // `lo-hi` or one slot (`[slot->-id]` entries of a move in progress never parse).
            let serves = f.get(2)?.contains("master")
                && f.iter().skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    matches!((lo.parse::<u16>(), hi.parse::<u16>()),
                    (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
                });
            if !serves {
                return None;
            }
            let addr = f.get(1)?.split('@').next()?;
            addr.rsplit(':').next()?.parse().ok()
        })
}

/// A Sentinel set: one primary, one replica and three sentinels (quorum 2, down after
/// 1 s, failover timeout 3 s) monitoring the primary as `mymaster`.
pub struct RedisSentinels {
    primary: Node,
    replica: Node,
    sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisSentinels {
    /// The name the sentinels monitor.
    pub const MASTER: &'static str = "mymaster";

    /// Starts everything on fresh ports and waits until the replica is in sync and each
    /// sentinel knows the replica and the other sentinels. Panics after 20 s.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(5);
        let primary = Node::spawn(ports[0], dir.path(), &[]);
        let of = ports[0].to_string();
        let replica = Node::spawn(ports[1], dir.path(), &["--replicaof", "127.0.0.1", &of]);
        let mut sentinels = Vec::new();
        for p in &ports[2..] {
            let conf = dir.path().join(format!("sentinel-{p}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {p}\nbind 127.0.0.1\ndir {}\nsentinel monitor {} 127.0.0.1 {of} 2\n\
                     sentinel down-after-milliseconds {m} 1000\nsentinel failover-timeout {m} 3000\n\
                     sentinel parallel-syncs {m} 1\n",
                    dir.path().display(),
                    Self::MASTER,
                    m = Self::MASTER,
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            sentinels.push(Node {
                port: *p,
                child: Some(child),
            });
        }
        wait_listening(std::slice::from_ref(&primary));
        wait_listening(std::slice::from_ref(&replica));
        wait_listening(&sentinels);
        let me = Self {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let synced = redis_cli(me.replica.port, &["info", "replication"])
                .contains("master_link_status:up");
            let known = me.sentinels.iter().all(|s| {
                let info = redis_cli(s.port, &["sentinel", "master", Self::MASTER]);
                let lines: Vec<&str> = info.lines().collect();
                let field = |name: &str| {
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .and_then(|v| v.parse::<u32>().ok())
                        .unwrap_or(0)
                };
                field("num-slaves") >= 1 && field("num-other-sentinels") >= 2
            });
            if synced && known {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel set not ready within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sentinels' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The primary's port (as started).
    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    /// The replica's port (as started).
    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    /// Kills (SIGKILL) the primary as started.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// True when the started replica now says it is master.
    pub fn replica_promoted(&self) -> bool {
        redis_cli(self.replica.port, &["role"]).starts_with("master")
    }

    /// The primary's port when every sentinel names the same one
    /// (`SENTINEL get-master-addr-by-name`); clients ask any of them.
    pub fn primary_named_by_every_sentinel(&self) -> Option<u16> {
        let named: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .map(|s| {
                let out = redis_cli(
                    s.port,
                    &["sentinel", "get-master-addr-by-name", Self::MASTER],
                );
                out.lines().nth(1).and_then(|p| p.trim().parse().ok())
            })
            .collect();
        let first = *named.first()?;
        named.iter().all(|p| *p == first).then_some(first).flatten()
    }
}
