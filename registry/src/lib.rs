//! The Redis service-discovery registry: sorted set `gatehouse:registry:{<service>}`.
//!
//! Each live instance is a member `host:port` of the sorted set whose score is the
//! instance's expiry time in unix milliseconds; a heartbeat pushes the expiry forward.
//! Weights live beside it in the hash `gatehouse:registry:{<service>}:weights`.
//! Readers ignore (and prune) members whose expiry has passed, so a crashed instance
//! disappears after one TTL without anyone deregistering it.

pub mod topology;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use topology::{Connector, RedisConn, Topology};

/// The default key prefix: `gatehouse:registry`.
pub const DEFAULT_PREFIX: &str = "gatehouse:registry";

/// Prunes expired members and returns the live ones as a flat `[addr, weight, ...]` list.
const LIST_LIVE: &str = r"
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, m in ipairs(expired) do redis.call('HDEL', KEYS[2], m) end
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local out = {}
for _, m in ipairs(live) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', KEYS[2], m) or ''
end
return out
";

/// Errors from the registry client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The Redis URL could not be parsed.
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// Redis could not be reached or answered with an error.
    #[error("redis {op} failed: {source}")]
    Redis {
        /// The operation that failed (register, list, ...).
        op: &'static str,
        /// The underlying Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("redis {op} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// A service name or address that cannot be used as a key or member.
    #[error("invalid {what}: {value:?}")]
    Invalid {
        /// What was invalid (service name, address).
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

/// Result alias for registry operations.
pub type Result<T> = std::result::Result<T, RegistryError>;

/// A client for the Redis registry, cheap to clone.
#[derive(Clone)]
pub struct Registry {
    conn: RedisConn,
    prefix: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The error of a Redis command `op` (which operation failed, and Redis's own error).
fn redis_error(op: &'static str) -> impl FnOnce(redis::RedisError) -> RegistryError {
    move |source| RegistryError::Redis { op, source }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn check(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 256 || value.chars().any(|c| c.is_whitespace()) {
        return Err(RegistryError::Invalid {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

impl Registry {
    /// Connects to Redis at `url` with bounded connect and response timeouts.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Connects with a custom key prefix (tests use a unique one each).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self> {
        Self::connect_topology(&Topology::Standalone(url.to_string()), prefix).await
    }

    /// Connects to any topology (standalone, Cluster, Sentinel) with bounded connect
    /// and response timeouts (2 s each, 5 s for the whole connect).
    pub async fn connect_topology(topology: &Topology, prefix: &str) -> Result<Self> {
        Self::connect_topology_tls(topology, None, prefix).await
    }

    /// Like [`Registry::connect_topology`], with TLS material for `rediss://` URLs.
    pub async fn connect_topology_tls(
        topology: &Topology,
        tls: Option<&topology::RedisTls>,
        prefix: &str,
    ) -> Result<Self> {
        let connector = Connector::with_tls(topology, Duration::from_secs(2), tls)
            .map_err(RegistryError::InvalidUrl)?;
        let limit = Duration::from_secs(5);
        let conn = tokio::time::timeout(limit, connector.connect_managed())
            .await
            .map_err(|_| RegistryError::Timeout {
                op: "connect",
                after: limit,
            })?
            .map_err(redis_error("connect"))?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
        })
    }

    /// The sorted-set key of a service: `<prefix>:{<service>}`. The hash tag puts it in
    /// the weights hash's Redis Cluster slot, so one script touches one slot.
    pub fn members_key(&self, service: &str) -> String {
        format!("{}:{{{}}}", self.prefix, service)
    }

    /// The weights hash key of a service: `<prefix>:{<service>}:weights`.
    pub fn weights_key(&self, service: &str) -> String {
        format!("{}:{{{}}}:weights", self.prefix, service)
    }

    /// Registers (or refreshes) `addr` for `service` with `weight`, live for `ttl`.
    pub async fn register(
        &self,
        service: &str,
        addr: &str,
        weight: u32,
        ttl: Duration,
    ) -> Result<()> {
        check("service name", service)?;
        check("address", addr)?;
        let expiry = now_ms() + ttl.as_millis() as i64;
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .zadd(self.members_key(service), addr, expiry)
            .ignore()
            .hset(self.weights_key(service), addr, weight)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error("register"))
    }

    /// Pushes the expiry of an already registered `addr` forward by `ttl`.
    pub async fn heartbeat(&self, service: &str, addr: &str, ttl: Duration) -> Result<()> {
        check("service name", service)?;
        check("address", addr)?;
        let expiry = now_ms() + ttl.as_millis() as i64;
        let mut conn = self.conn.clone();
        conn.zadd::<_, _, _, ()>(self.members_key(service), addr, expiry)
            .await
            .map_err(redis_error("heartbeat"))
    }

    /// Removes `addr` from `service` (member and weight).
    pub async fn deregister(&self, service: &str, addr: &str) -> Result<()> {
        check("service name", service)?;
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .zrem(self.members_key(service), addr)
            .ignore()
            .hdel(self.weights_key(service), addr)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error("deregister"))
    }

    /// Lists the live instances of `service` as `(address, weight)`, sorted by address.
    ///
    /// Expired members are pruned (with their weights) in the same atomic script, so a
    /// heartbeat racing the prune never loses its weight; a missing or unparsable weight is 1.
    pub async fn list_live(&self, service: &str) -> Result<Vec<(String, u32)>> {
        check("service name", service)?;
        let mut conn = self.conn.clone();
        let flat: Vec<String> = redis::Script::new(LIST_LIVE)
            .key(self.members_key(service))
            .key(self.weights_key(service))
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("list"))?;
        let mut out: Vec<(String, u32)> = flat
            .chunks(2)
            .filter_map(|pair| match pair {
                [addr, w] => Some((addr.clone(), w.parse::<u32>().unwrap_or(1))),
                _ => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Registers now and keeps the registration alive from a background task.
    ///
    /// The task re-registers every `interval` (so a pruned or flushed entry comes back),
    /// logs failures without stopping, and deregisters when [`Heartbeat::stop`] is called.
    pub async fn spawn_heartbeat(
        &self,
        service: &str,
        addr: &str,
        weight: u32,
        ttl: Duration,
        interval: Duration,
    ) -> Result<Heartbeat> {
        self.register(service, addr, weight, ttl).await?;
        let (tx, mut rx) = watch::channel(false);
        let reg = self.clone();
        let service = service.to_string();
        let addr = addr.to_string();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = rx.changed() => break,
                }
                if *rx.borrow() {
                    break;
                }
                if let Err(e) = reg.register(&service, &addr, weight, ttl).await {
                    tracing::warn!(%service, %addr, error = %e, "registry heartbeat failed");
                }
            }
            // One more try after a failure: after a Redis failover the first command on
            // the old primary's connection fails and the next one reconnects, and nothing
            // retries once the instance is gone.
            let first = reg.deregister(&service, &addr).await;
            let result = match first {
                Err(_) => reg.deregister(&service, &addr).await,
                ok => ok,
            };
            if let Err(e) = result {
                tracing::warn!(%service, %addr, error = %e, "registry deregister failed");
            }
        });
        Ok(Heartbeat { stop: tx, task })
    }
}

/// A running heartbeat task; [`Heartbeat::stop`] deregisters the instance.
#[derive(Debug)]
pub struct Heartbeat {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Stops the heartbeat and waits (at most 3 s) for the deregistration.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
    }
}
