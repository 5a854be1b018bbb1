//! The shared limiter in Redis: one Lua script per algorithm (check and count a batch
//! of one key's requests in one atomic step, called by SHA), a per-call timeout, and a
//! breaker so that a dead or black-holed Redis costs at most one timeout per window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use gatehouse_registry::topology::{Connector, RedisConn, RedisTls, Topology};
use redis::Script;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Algorithm, Decision, Policy};
use crate::{BuildError, FilterMetrics};

/// Exact sliding log in a sorted set; Redis's clock is the only clock, so gateways
/// with skewed clocks still agree. Checks and counts a batch of ARGV[3] requests of one
/// key in arrival order: the first `allowed` of them are admitted.
/// ARGV: limit, window ms, batch size, nonce. Returns {allowed, remaining, retry_after_ms, reset_ms}
/// where `remaining` is after the whole batch and `retry_after_ms` is for the refused.
const SLIDING_WINDOW_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = math.max(0, math.min(n, limit - count))
if allowed > 0 then
  local args = {}
  for i = 1, allowed do
    args[2 * i - 1] = now
    args[2 * i] = now .. ':' .. ARGV[4] .. ':' .. i
  end
  redis.call('ZADD', KEYS[1], unpack(args))
  count = count + allowed
end
redis.call('PEXPIRE', KEYS[1], window)
local reset = window
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
local retry = 0
if allowed < n then retry = reset end
return {allowed, limit - count, retry, reset}
";

/// GCRA: one key holding the theoretical arrival time (ms, with fractions). Checks a
/// batch of ARGV[3] requests: each admitted one moves the arrival time by one interval.
/// ARGV: emission interval ms, burst, batch size. Returns {allowed, remaining,
/// retry_after_ms, reset_ms} after the whole batch.
const GCRA_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tau = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allowed = math.floor((tau - (tat - now)) / interval + 1e-9)
allowed = math.max(0, math.min(n, allowed))
if allowed > 0 then
  tat = tat + allowed * interval
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.max(1, math.ceil(tat - now)))
end
local remaining = math.max(0, math.floor((tau - (tat - now)) / interval + 1e-9))
local retry = 0
if allowed < n then retry = math.max(1, math.ceil(tat + interval - now - tau)) end
return {allowed, remaining, retry, math.ceil(tat - now)}
";

/// The most requests of one key checked by one script call.
const MAX_BATCH: usize = 256;

/// How the gateway talks to Redis. Build it from the gateway's `redis:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    /// Standalone, Cluster or Sentinel, with the URLs of each.
    pub topology: Topology,
    /// CA and client certificate for `rediss://` URLs; `None`: system roots, no client cert.
    pub tls: Option<RedisTls>,
    /// Timeout of one call on the request path (connect included). Default 50ms.
    pub timeout: Duration,
    /// After a failure, Redis is not called again for this long (requests follow each
    /// limit's failure policy); then one request probes it. Default 1s.
    pub breaker_open_for: Duration,
    /// Prefix of every key. Default `gatehouse:rl`.
    pub key_prefix: String,
}

impl RedisSettings {
    /// Settings with the defaults for a standalone Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_topology(Topology::Standalone(url.into()))
    }

    /// Settings with the defaults for any topology.
    pub fn with_topology(topology: Topology) -> Self {
        Self {
            topology,
            tls: None,
            timeout: Duration::from_millis(50),
            breaker_open_for: Duration::from_secs(1),
            key_prefix: "gatehouse:rl".into(),
        }
    }

    /// With another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With another breaker window.
    pub fn with_breaker_open_for(mut self, d: Duration) -> Self {
        self.breaker_open_for = d;
        self
    }

    /// With another key prefix.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }
}

/// Why the shared limiter could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The breaker is open: Redis failed recently and is not called.
    #[error("redis breaker open")]
    BreakerOpen,
    /// The call did not finish within the timeout.
    #[error("redis timeout after {0:?}")]
    Timeout(Duration),
    /// Connecting failed.
    #[error("redis connect: {0}")]
    Connect(redis::RedisError),
    /// Redis answered with an error, or the connection broke.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script returned something unexpected.
    #[error("unexpected script reply: {0}")]
    Reply(String),
    /// The batch this request waited in failed with this error.
    #[error(transparent)]
    Shared(Arc<StoreError>),
    /// The batch this request waited in was dropped (the runtime is shutting down).
    #[error("redis batch abandoned")]
    Abandoned,
}

enum Admit {
    Yes,
    Probe,
    No,
}

/// The connection, the scripts and the breaker.
pub struct RedisStore {
    settings: RedisSettings,
    connector: Connector,
    /// One connection per calling thread. A connection's driver task runs on the runtime
    /// that made it, so a proxy thread calling through another thread's connection pays
    /// two cross-thread wake-ups per call (measured at 64 connections when the background
    /// ping thread had made the one shared connection: 0.44 context switches per request,
    /// 0.02 with a connection per thread; CPU per request 61.7 vs 48.5 us).
    conns: Mutex<HashMap<ThreadId, RedisConn>>,
    connect_lock: tokio::sync::Mutex<()>,
    sliding: Script,
    gcra: Script,
    base: Instant,
    /// 0: closed; otherwise ms since `base` until which the breaker is open.
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    /// Keys with a call in flight, each with the requests queued for its next batch.
    inflight: Mutex<HashMap<String, Vec<Waiter>>>,
    metrics: FilterMetrics,
}

/// A request waiting for its batch's decision.
type Waiter = oneshot::Sender<Result<Decision, Arc<StoreError>>>;

/// What one script call decided for a batch of `n` requests.
struct BatchReply {
    /// The first `allowed` requests of the batch are admitted.
    allowed: u64,
    limit: u64,
    /// Left after the whole batch.
    remaining: u64,
    retry_after: Duration,
    reset: Duration,
}

impl BatchReply {
    /// The decision for the `i`-th request of the batch (arrival order).
    fn decision(&self, i: usize) -> Decision {
        let i = i as u64;
        if i < self.allowed {
            Decision {
                allowed: true,
                limit: self.limit,
                // What was left right after this request was counted.
                remaining: self.remaining + (self.allowed - 1 - i),
                retry_after: Duration::ZERO,
                reset: self.reset,
            }
        } else {
            Decision {
                allowed: false,
                limit: self.limit,
                remaining: self.remaining,
                retry_after: self.retry_after,
                reset: self.reset,
            }
        }
    }
}

/// Held by the request that leads a key's call: when it ends (or is cancelled), the
/// requests queued behind it go on in a flusher task, or the key is released.
struct Handoff {
    store: Arc<RedisStore>,
    key: String,
    policy: Policy,
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let batch = self.store.next_batch(&self.key);
        if batch.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let key = std::mem::take(&mut self.key);
                rt.spawn(Arc::clone(&self.store).flush(key, self.policy, batch));
            }
            // No runtime (only at shutdown): the waiters see their batch abandoned.
            Err(_) => {
                if let Ok(mut inflight) = self.store.inflight.lock() {
                    inflight.remove(&self.key);
                }
            }
        }
    }
}

impl RedisStore {
    /// Validates the URL; connects lazily.
    pub fn new(settings: RedisSettings, metrics: FilterMetrics) -> Result<Self, BuildError> {
        if settings.timeout.is_zero() {
            return Err(BuildError::new("redis timeout must be positive"));
        }
        let connector =
            Connector::with_tls(&settings.topology, settings.timeout, settings.tls.as_ref())
                .map_err(|e| {
                    BuildError::new(format!("redis {:?}: {e}", settings.topology.urls()))
                })?;
        metrics.redis_up(false);
        Ok(Self {
            settings,
            connector,
            conns: Mutex::new(HashMap::new()),
            connect_lock: tokio::sync::Mutex::new(()),
            sliding: Script::new(SLIDING_WINDOW_LUA),
            gcra: Script::new(GCRA_LUA),
            base: Instant::now(),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            inflight: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.settings.key_prefix
    }

    fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.base)
            .as_millis() as u64
            + 1
    }

    fn admit(&self) -> Admit {
        let open_until = self.open_until_ms.load(Ordering::Acquire);
        if open_until == 0 {
            return Admit::Yes;
        }
        if self.now_ms() < open_until {
            return Admit::No;
        }
        // Cool-down over: exactly one caller probes; the others keep failing fast.
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Admit::Probe
        } else {
            Admit::No
        }
    }

    fn on_success(&self) {
        if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("redis is reachable again; shared rate limits resume");
        }
        self.probing.store(false, Ordering::Release);
        self.metrics.redis_up(true);
    }

    fn on_failure(&self, op: &'static str, e: &StoreError) {
        let until = self.now_ms() + self.settings.breaker_open_for.as_millis() as u64;
        let was = self.open_until_ms.swap(until, Ordering::AcqRel);
        self.probing.store(false, Ordering::Release);
        // Every thread's connection goes: a failure is seldom one thread's own.
        if let Ok(mut c) = self.conns.lock() {
            c.clear();
        }
        self.metrics.redis_up(false);
        self.metrics.redis_error(op);
        if was == 0 {
            tracing::warn!(error = %e, op, "redis call failed; breaker open");
        } else {
            tracing::debug!(error = %e, op, "redis probe failed; breaker stays open");
        }
    }

    /// The calling thread's connection, made on first use (on the calling thread's
    /// runtime, where its driver task then runs).
    async fn connection(&self) -> Result<RedisConn, StoreError> {
        let thread = std::thread::current().id();
        let mine = |s: &Self| s.conns.lock().ok().and_then(|c| c.get(&thread).cloned());
        if let Some(c) = mine(self) {
            return Ok(c);
        }
        let _g = self.connect_lock.lock().await;
        if let Some(c) = mine(self) {
            return Ok(c);
        }
        let c = self
            .connector
            .connect()
            .await
            .map_err(StoreError::Connect)?;
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(thread, c.clone());
        }
        Ok(c)
    }

    /// Open connections (one per thread that has called Redis since the last failure).
    pub fn connections(&self) -> usize {
        self.conns.lock().map_or(0, |c| c.len())
    }

    /// Runs `f` on a connection within the timeout, through the breaker.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        if matches!(self.admit(), Admit::No) {
            return Err(StoreError::BreakerOpen);
        }
        let timeout = self.settings.timeout;
        let result = tokio::time::timeout(timeout, async {
            let conn = self.connection().await?;
            f(conn).await
        })
        .await
        .unwrap_or(Err(StoreError::Timeout(timeout)));
        match &result {
            Ok(_) => self.on_success(),
            Err(e @ StoreError::Connect(_)) => self.on_failure("connect", e),
            Err(e) => self.on_failure(op, e),
        }
        result
    }

    /// Checks and counts one request for `key` (already namespaced).
    ///
    /// While a call for the same key is in flight, later requests of that key wait and
    /// then go to Redis together: one script run counts up to 256 of them in arrival
    /// order. A hot key then costs one round trip per batch instead of one per
    /// request, and the count stays exact. A waiting request gives up after twice the
    /// timeout (its own batch may only start when the call before it ends).
    pub async fn check(
        self: &Arc<Self>,
        key: &str,
        policy: &Policy,
    ) -> Result<Decision, StoreError> {
        let waiting = {
            let Ok(mut inflight) = self.inflight.lock() else {
                // A panic while holding the lock: fall back to one call per request.
                return Ok(self.check_batch(key, policy, 1).await?.decision(0));
            };
            match inflight.get_mut(key) {
                Some(queue) => {
                    let (tx, rx) = oneshot::channel();
                    queue.push(tx);
                    Some(rx)
                }
                None => {
                    inflight.insert(key.to_owned(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = waiting {
            let bound = self.settings.timeout * 2;
            return match tokio::time::timeout(bound, rx).await {
                Ok(Ok(Ok(d))) => Ok(d),
                Ok(Ok(Err(e))) => Err(StoreError::Shared(e)),
                Ok(Err(_)) => Err(StoreError::Abandoned),
                Err(_) => Err(StoreError::Timeout(bound)),
            };
        }
        // This request leads: it calls for itself, and whatever queued behind it is
        // handed to a flusher task when it finishes, or when it is cancelled.
        let _handoff = Handoff {
            store: Arc::clone(self),
            key: key.to_owned(),
            policy: *policy,
        };
        Ok(self.check_batch(key, policy, 1).await?.decision(0))
    }

    /// The requests queued behind `key`'s call (at most one batch), or none, in which
    /// case `key` no longer has a call in flight.
    fn next_batch(&self, key: &str) -> Vec<Waiter> {
        let Ok(mut inflight) = self.inflight.lock() else {
            return Vec::new();
        };
        if let Some(queue) = inflight.get_mut(key) {
            queue.retain(|w| !w.is_closed());
            if !queue.is_empty() {
                let n = queue.len().min(MAX_BATCH);
                return queue.drain(..n).collect();
            }
        }
        inflight.remove(key);
        Vec::new()
    }

    /// Runs batches for `key` until nobody waits.
    async fn flush(self: Arc<Self>, key: String, policy: Policy, mut batch: Vec<Waiter>) {
        while !batch.is_empty() {
            match self.check_batch(&key, &policy, batch.len()).await {
                Ok(reply) => {
                    for (i, w) in batch.drain(..).enumerate() {
                        let _ = w.send(Ok(reply.decision(i)));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for w in batch.drain(..) {
                        let _ = w.send(Err(Arc::clone(&e)));
                    }
                }
            }
            batch = self.next_batch(&key);
        }
    }

    /// One script call counting `n` requests of `key`.
    async fn check_batch(
        &self,
        key: &str,
        policy: &Policy,
        n: usize,
    ) -> Result<BatchReply, StoreError> {
        let reply: Vec<i64> = self
            .call("ratelimit", |mut conn| async move {
                let r = match policy.algorithm {
                    Algorithm::SlidingWindow => {
                        let nonce: u64 = rand::random();
                        self.sliding
                            .key(key)
                            .arg(policy.limit)
                            .arg(policy.window.as_millis() as u64)
                            .arg(n)
                            .arg(nonce)
                            .invoke_async(&mut conn)
                            .await?
                    }
                    Algorithm::Gcra => {
                        let interval = policy.emission_interval().as_secs_f64() * 1000.0;
                        self.gcra
                            .key(key)
                            .arg(format!("{interval:.6}"))
                            .arg(policy.burst)
                            .arg(n)
                            .invoke_async(&mut conn)
                            .await?
                    }
                };
                Ok(r)
            })
            .await?;
        let [allowed, remaining, retry_ms, reset_ms] = reply[..] else {
            return Err(StoreError::Reply(format!("{reply:?}")));
        };
        let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
        Ok(BatchReply {
            allowed: allowed.max(0) as u64,
            limit: match policy.algorithm {
                Algorithm::SlidingWindow => policy.limit,
                Algorithm::Gcra => policy.burst,
            },
            remaining: remaining.max(0) as u64,
            retry_after: ms(retry_ms),
            reset: ms(reset_ms),
        })
    }

    /// PING through the breaker; updates `gatehouse_redis_up`.
    pub async fn ping(&self) -> bool {
        self.call("ping", |mut conn| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(StoreError::from)
        })
        .await
        .is_ok()
    }
}
