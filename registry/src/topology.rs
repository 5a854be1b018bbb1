//! Redis topologies (standalone, Cluster, Sentinel) behind one connection type, so the
//! same commands and Lua scripts run unchanged on each.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    TlsCertificates, Value,
};

/// TLS material for `rediss://` connections beyond the URL: a CA to trust instead of the
/// system's roots, and a client certificate for servers that require one
/// (`tls-auth-clients yes`). All PEM.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// The CA certificate(s) that sign the servers' certificates; `None`: system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and private key, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// Where the shared state lives: one of the three shapes of a Redis deployment.
/// TLS (`rediss://`) and auth (`redis://user:pass@host`) come from the URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a proxy in front of many): `redis://host:port[/db]`.
    Standalone(String),
    /// A Redis Cluster reached through any of these seed nodes; the client follows
    /// MOVED/ASK and refreshes its slot map after a failover.
    Cluster(Vec<String>),
    /// A primary found through Sentinel: the monitored `master` name and the sentinels'
    /// URLs. Auth and TLS of the data nodes come from the first sentinel URL.
    Sentinel {
        /// The name the sentinels monitor (`sentinel monitor NAME ...`).
        master: String,
        /// `redis://host:port` of each sentinel.
        nodes: Vec<String>,
    },
}

impl Topology {
    /// The URLs, for logs and redaction.
    pub fn urls(&self) -> Vec<&str> {
        match self {
            Topology::Standalone(u) => vec![u.as_str()],
            Topology::Cluster(n) | Topology::Sentinel { nodes: n, .. } => {
                n.iter().map(String::as_str).collect()
            }
        }
    }
}

/// Makes connections to a [`Topology`]. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    kind: Kind,
    timeout: Duration,
}

#[derive(Clone)]
enum Kind {
    Standalone(redis::Client),
    Cluster(ClusterClient),
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Standalone(_) => "standalone",
            Kind::Cluster(_) => "cluster",
            Kind::Sentinel(_) => "sentinel",
        };
        f.debug_struct("Connector").field("kind", &kind).finish()
    }
}

impl Connector {
    /// Parses the URLs; connects nothing yet. `timeout` bounds each connect and each
    /// response of the cluster and sentinel clients.
    ///
    /// # Errors
    /// A URL that does not parse, or an empty node list.
    pub fn new(topology: &Topology, timeout: Duration) -> RedisResult<Self> {
        Self::with_tls(topology, timeout, None)
    }

    /// Like [`Connector::new`], with TLS material for `rediss://` URLs (a CA instead of the
    /// system roots, a client certificate).
    ///
    /// # Errors
    /// A URL that does not parse, an empty node list, PEM that does not parse, or TLS
    /// material for Sentinel (there only the URL's `rediss://` with system roots works).
    pub fn with_tls(
        topology: &Topology,
        timeout: Duration,
        tls: Option<&RedisTls>,
    ) -> RedisResult<Self> {
        let kind = match topology {
            Topology::Standalone(url) => Kind::Standalone(match tls {
                Some(t) => redis::Client::build_with_tls(url.as_str(), t.certificates())?,
                None => redis::Client::open(url.as_str())?,
            }),
            Topology::Cluster(nodes) => {
                let mut b = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2);
                if let Some(t) = tls {
                    b = b.certs(t.certificates());
                }
                Kind::Cluster(b.build()?)
            }
            Topology::Sentinel { .. } if tls.is_some() => {
                return Err(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "TLS files (ca_file, client_cert) are not supported with sentinel; use rediss:// URLs with the system's roots",
                )));
            }
            Topology::Sentinel { master, nodes } => {
                let first = nodes
                    .first()
                    .ok_or_else(|| {
                        RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "no sentinel nodes",
                        ))
                    })?
                    .as_str()
                    .into_connection_info()?;
                let tls_mode = match &first.addr {
                    redis::ConnectionAddr::TcpTls { insecure, .. } => Some(if *insecure {
                        redis::TlsMode::Insecure
                    } else {
                        redis::TlsMode::Secure
                    }),
                    _ => None,
                };
                let info = SentinelNodeConnectionInfo {
                    tls_mode,
                    redis_connection_info: Some(first.redis.clone()),
                };
                let client = SentinelClient::build(
                    nodes.iter().map(String::as_str).collect(),
                    master.clone(),
                    Some(info),
                    SentinelServerType::Master,
                )?;
                Kind::Sentinel(Arc::new(tokio::sync::Mutex::new(client)))
            }
        };
        Ok(Self { kind, timeout })
    }

    /// A multiplexed connection (standalone), a cluster connection, or a connection that
    /// asks the sentinels for the primary and asks again after a connection error.
    ///
    /// # Errors
    /// Connecting failed (for Sentinel: no sentinel knows a reachable primary).
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        match &self.kind {
            Kind::Standalone(c) => Ok(RedisConn::Single(
                c.get_multiplexed_async_connection().await?,
            )),
            Kind::Cluster(c) => Ok(RedisConn::Cluster(c.get_async_connection().await?)),
            Kind::Sentinel(s) => {
                let conn = SentinelConn {
                    client: Arc::clone(s),
                    current: Arc::new(tokio::sync::Mutex::new(None)),
                    timeout: self.timeout,
                };
                conn.get().await?;
                Ok(RedisConn::Sentinel(conn))
            }
        }
    }

    /// Like [`Connector::connect`], but a standalone connection is a
    /// [`ConnectionManager`] that reconnects by itself (long-lived users: the registry).
    ///
    /// # Errors
    /// Connecting failed.
    pub async fn connect_managed(&self) -> RedisResult<RedisConn> {
        match &self.kind {
            Kind::Standalone(c) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(500);
                Ok(RedisConn::Managed(
                    ConnectionManager::new_with_config(c.clone(), config).await?,
                ))
            }
            _ => self.connect().await,
        }
    }
}

/// A connection to the Sentinel-managed primary: made on first use, dropped after an
/// error that says the node is gone or no longer primary, then found again.
#[derive(Clone)]
pub struct SentinelConn {
    client: Arc<tokio::sync::Mutex<SentinelClient>>,
    current: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
    /// Bounds the sentinels' lookup, the connect to the primary and each answer: a
    /// primary cut off by the network (not refusing, just silent) must not hang callers
    /// that have no timeout of their own (the registry, the services' event bus).
    timeout: Duration,
}

impl SentinelConn {
    async fn get(&self) -> RedisResult<MultiplexedConnection> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref() {
            return Ok(c.clone());
        }
        let lookup = async { self.client.lock().await.async_get_client().await };
        let client = tokio::time::timeout(self.timeout, lookup)
            .await
            .map_err(|_| {
                RedisError::from((
                    redis::ErrorKind::IoError,
                    "no sentinel named a primary within the timeout",
                ))
            })??;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let c = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *cur = Some(c.clone());
        Ok(c)
    }

    async fn after<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            // A killed primary gives I/O errors; a demoted one answers READONLY.
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                || e.kind() == redis::ErrorKind::ReadOnly
            {
                *self.current.lock().await = None;
            }
        }
        r
    }
}

/// One connection to any topology; runs every command and script the same way.
#[derive(Clone)]
pub enum RedisConn {
    /// Standalone, multiplexed.
    Single(MultiplexedConnection),
    /// Standalone, reconnecting by itself.
    Managed(ConnectionManager),
    /// Redis Cluster: routes each command by its key's slot.
    Cluster(ClusterConnection),
    /// The Sentinel-managed primary.
    Sentinel(SentinelConn),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Managed(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(s) => Box::pin(async move {
                let r = match s.get().await {
                    Ok(mut c) => c.req_packed_command(cmd).await,
                    Err(e) => Err(e),
                };
                s.after(r).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Managed(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Sentinel(s) => Box::pin(async move {
                let r = match s.get().await {
                    Ok(mut c) => c.req_packed_commands(cmd, offset, count).await,
                    Err(e) => Err(e),
                };
                s.after(r).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Managed(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(_) => 0,
        }
    }
}
