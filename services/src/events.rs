//! Domain events: the transactional outbox, its publisher, and delivery (Redis Streams or in-process).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gatehouse_registry::topology::{Connector, RedisConn, Topology};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyConnection;
use tokio::sync::{watch, Notify};

use crate::db::Db;
use crate::metrics::Metrics;

/// One event as published: the outbox row plus its origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Globally unique id: `<source>:<position>`.
    pub id: String,
    /// The service that wrote it.
    pub source: String,
    /// Its outbox id in the source's database (the read model's position).
    pub position: i64,
    /// `TransferCompleted`, `UserRegistered`, ...
    pub event_type: String,
    /// The entity it is about (saga id, user id).
    pub aggregate_id: String,
    /// The event's data.
    pub payload: Value,
    /// Unix ms when the state change committed.
    pub created_at: i64,
}

/// A boxed future, for handler callbacks.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// An idempotent event handler; an `Err` means "deliver again later".
pub type Handler = Arc<dyn Fn(Event) -> BoxFuture<Result<(), String>> + Send + Sync>;

/// Writes an event into the outbox, inside the caller's transaction.
pub async fn enqueue(
    conn: &mut AnyConnection,
    event_type: &str,
    aggregate_id: &str,
    payload: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_id, payload, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(event_type)
    .bind(aggregate_id)
    .bind(payload.to_string())
    .bind(crate::now_ms())
    .execute(conn)
    .await
    .map(|_| ())
}

/// Records that `consumer` applied `event_id`, inside the caller's transaction.
///
/// Returns false when it was already applied: the caller then skips the effect.
pub async fn mark_processed(
    conn: &mut AnyConnection,
    db: &Db,
    consumer: &str,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "{} INTO processed_events (consumer, event_id, processed_at) VALUES (?, ?, ?)",
        db.insert_ignore()
    );
    let r = sqlx::query(&sql)
        .bind(consumer)
        .bind(event_id)
        .bind(crate::now_ms())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// In-process delivery: handlers registered in this process, called by the publisher.
#[derive(Default)]
pub struct LocalBus {
    handlers: RwLock<Vec<(String, Handler)>>,
}

/// Delivery through a Redis stream with one consumer group per consumer.
///
/// On a Redis Cluster the stream is one key, and a consumer group's state (its last
/// delivered id, its pending entries) lives inside that key, so every command here
/// (`XADD`, `XGROUP CREATE`, `XREADGROUP` of one stream, `XACK`) touches one slot and
/// needs no hash tag; the cluster client routes each to the slot's primary.
///
/// With Sentinel every command goes to the primary the sentinels name. After a failover
/// the first command on the old primary's connection fails (the publisher leaves the
/// event in the outbox, a consumer waits a second); the next one asks the sentinels
/// again. The stream and its groups reach the promoted replica by replication; an entry
/// written in the last moment before the kill can be lost with the old primary (Redis
/// replication is asynchronous), which the outbox does not see.
#[derive(Clone)]
pub struct RedisBus {
    connector: Connector,
    conn: RedisConn,
    stream: String,
}

/// Where published events go.
#[derive(Clone)]
pub enum Bus {
    /// In-process: every handler of this process is called by the publisher.
    Local(Arc<LocalBus>),
    /// Redis Streams: `XADD` to the stream; consumers read with `XREADGROUP`.
    Redis(Box<RedisBus>),
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bus::Local(_) => f.write_str("Bus::Local"),
            Bus::Redis(r) => write!(f, "Bus::Redis({})", r.stream),
        }
    }
}

/// Bounds each connect and each answer. Above the consumers' 1 s `BLOCK`, so a blocking
/// read that gets no entry is not taken for a dead server.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that reconnects by itself (standalone), follows the cluster's slot map,
/// or asks the sentinels for the primary again after an error.
async fn redis_conn(connector: &Connector) -> Result<RedisConn, redis::RedisError> {
    // A manager's own retries can take long against a dead server: bound the whole connect.
    tokio::time::timeout(REDIS_TIMEOUT, connector.connect_managed())
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out after 5s"))
        })?
}

impl Bus {
    /// An in-process bus.
    pub fn local() -> Self {
        Bus::Local(Arc::new(LocalBus::default()))
    }

    /// A Redis Streams bus on `<prefix>:events`, on one server, a Redis Cluster or a
    /// Sentinel-managed primary.
    pub async fn redis(topology: &Topology, prefix: &str) -> Result<Self, redis::RedisError> {
        let connector = Connector::new(topology, REDIS_TIMEOUT)?;
        let conn = redis_conn(&connector).await?;
        Ok(Bus::Redis(Box::new(RedisBus {
            connector,
            conn,
            stream: format!("{prefix}:events"),
        })))
    }

    /// Publishes one event; an error leaves it in the outbox for the next try.
    pub async fn publish(&self, ev: &Event) -> Result<(), String> {
        match self {
            Bus::Local(bus) => {
                let handlers: Vec<(String, Handler)> = bus
                    .handlers
                    .read()
                    .map(|h| h.clone())
                    .map_err(|_| "bus lock poisoned".to_string())?;
                for (name, h) in handlers {
                    h(ev.clone())
                        .await
                        .map_err(|e| format!("consumer {name}: {e}"))?;
                }
                Ok(())
            }
            Bus::Redis(r) => {
                let body = serde_json::to_string(ev).map_err(|e| e.to_string())?;
                let mut conn = r.conn.clone();
                conn.xadd_maxlen::<_, _, _, _, ()>(
                    &r.stream,
                    redis::streams::StreamMaxlen::Approx(1_000_000),
                    "*",
                    &[("event", body)],
                )
                .await
                .map_err(|e| format!("XADD: {e}"))
            }
        }
    }

    /// Subscribes a consumer (its own consumer group on Redis) until `shutdown` flips.
    pub fn subscribe(
        &self,
        group: &str,
        instance: &str,
        handler: Handler,
        shutdown: watch::Receiver<bool>,
    ) {
        match self {
            Bus::Local(bus) => {
                if let Ok(mut h) = bus.handlers.write() {
                    h.push((group.to_string(), handler));
                }
            }
            Bus::Redis(r) => {
                let r = RedisBus::clone(r);
                let group = group.to_string();
                let consumer = format!("{group}@{instance}");
                tokio::spawn(async move {
                    redis_consume(r, group, consumer, handler, shutdown).await;
                });
            }
        }
    }
}

async fn ensure_group(conn: &mut RedisConn, stream: &str, group: &str) {
    // From "0": a consumer group created late still sees the stream's history;
    // consumers are idempotent so replays are harmless.
    let r: Result<(), _> = conn.xgroup_create_mkstream(stream, group, "0").await;
    if let Err(e) = r {
        if !e.to_string().contains("BUSYGROUP") {
            tracing::warn!(%stream, %group, error = %e, "XGROUP CREATE failed");
        }
    }
}

async fn redis_consume(
    r: RedisBus,
    group: String,
    consumer: String,
    handler: Handler,
    mut shutdown: watch::Receiver<bool>,
) {
    // A blocking XREADGROUP must not share the publisher's multiplexed connection.
    let mut conn = loop {
        match redis_conn(&r.connector).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(%group, error = %e, "redis consumer connect failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    ensure_group(&mut conn, &r.stream, &group).await;
    // First drain our own pending entries (delivered before a crash, never acked).
    let mut pending = true;
    while !*shutdown.borrow() {
        let id = if pending { "0" } else { ">" };
        let mut opts = StreamReadOptions::default()
            .group(&group, &consumer)
            .count(100);
        if !pending {
            opts = opts.block(1000);
        }
        let read: Result<StreamReadReply, _> = conn.xread_options(&[&r.stream], &[id], &opts).await;
        let reply = match read {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(%group, error = %e, "XREADGROUP failed; retrying");
                if e.to_string().contains("NOGROUP") {
                    ensure_group(&mut conn, &r.stream, &group).await;
                }
                pending = true;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        let entries: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        if pending && entries.is_empty() {
            pending = false;
            continue;
        }
        let mut failed = false;
        for entry in entries {
            let ev: Option<Event> = entry
                .map
                .get("event")
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
                .and_then(|s| serde_json::from_str(&s).ok());
            let Some(ev) = ev else {
                tracing::warn!(%group, id = %entry.id, "unparsable stream entry; acking it");
                let _: Result<(), _> = conn.xack(&r.stream, &group, &[&entry.id]).await;
                continue;
            };
            match handler(ev).await {
                Ok(()) => {
                    let _: Result<(), _> = conn.xack(&r.stream, &group, &[&entry.id]).await;
                }
                Err(e) => {
                    tracing::warn!(%group, id = %entry.id, error = %e, "event handler failed; will retry");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            pending = true;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Publishes a service's outbox: oldest first, marking each row once the bus took it.
#[derive(Clone)]
pub struct Publisher {
    /// The service (the event's `source`).
    pub source: &'static str,
    /// Its database.
    pub db: Db,
    /// Where events go.
    pub bus: Bus,
    /// Wakes the publisher right after a commit (it also polls).
    pub wake: Arc<Notify>,
    /// Metrics of the service.
    pub metrics: Metrics,
}

type OutboxRow = (i64, String, String, String, i64);

impl Publisher {
    /// The outbox publisher of service `source`, with a fresh wake-up handle.
    pub fn new(source: &'static str, db: &Db, bus: &Bus, metrics: &Metrics) -> Self {
        Self {
            source,
            db: db.clone(),
            bus: bus.clone(),
            wake: Arc::new(Notify::new()),
            metrics: metrics.clone(),
        }
    }

    /// Publishes what is pending now; returns how many were published.
    pub async fn publish_pending(&self) -> Result<usize, String> {
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, event_type, aggregate_id, payload, created_at FROM outbox \
             WHERE published_at IS NULL ORDER BY id LIMIT 200",
        )
        .fetch_all(&self.db.pool)
        .await
        .map_err(|e| e.to_string())?;
        let mut n = 0;
        for (id, event_type, aggregate_id, payload, created_at) in rows {
            let ev = Event {
                id: format!("{}:{}", self.source, id),
                source: self.source.to_string(),
                position: id,
                event_type,
                aggregate_id,
                payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
                created_at,
            };
            self.bus.publish(&ev).await?;
            // A crash here republishes the event: consumers are idempotent.
            sqlx::query("UPDATE outbox SET published_at = ? WHERE id = ?")
                .bind(crate::now_ms())
                .bind(id)
                .execute(&self.db.pool)
                .await
                .map_err(|e| e.to_string())?;
            self.metrics
                .events_published
                .with_label_values(&[self.source])
                .inc();
            n += 1;
        }
        if let Ok((pending,)) =
            sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.db.pool)
                .await
        {
            self.metrics
                .outbox_pending
                .with_label_values(&[self.source])
                .set(pending);
        }
        Ok(n)
    }

    /// Runs until `shutdown` flips: publish, then wait for a wake-up or 500 ms.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while !*shutdown.borrow() {
                match self.publish_pending().await {
                    Ok(n) if n > 0 => {
                        backoff = Duration::from_millis(100);
                        continue;
                    }
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!(source = self.source, error = %e, "outbox publish failed");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(backoff.max(Duration::from_millis(500))) => {}
                    _ = shutdown.changed() => {}
                }
            }
        });
    }
}
