//! The serde model of the YAML config: the user contract. Defaults are documented here.

use std::collections::BTreeMap;

use gatehouse_filters::{Duration, FilterConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The whole gatehouse configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the gateway accepts client traffic. Changing listeners needs a restart.
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener: /metrics, /healthz, /readyz, /admin/*, the dashboard.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Optional Redis: shared rate limits and the discovery registry. Without it, rate
    /// limits are per gateway instance, in memory.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Proxy runtime settings (threads, buffers). Changing them needs a restart.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Structured JSON access log on stdout.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// What `/metrics` exports. Changing it needs a restart.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Graceful shutdown settings.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Distributed tracing: W3C Trace Context and OpenTelemetry spans exported with OTLP
    /// (see the README's "Tracing"). Absent (the default): no span is made and trace
    /// headers pass through untouched. `sampler.ratio` reloads; the rest needs a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// Named upstream clusters.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, matched by precedence (see the README), then declared order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One client-facing listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A name for logs.
    pub name: String,
    /// `ip:port` to bind, e.g. `0.0.0.0:8080`.
    pub address: String,
    /// HTTP/1 limits and connection handling of this listener (see the README's "HTTP
    /// handling"); every field has a default.
    #[serde(default)]
    pub http: HttpListenerConfig,
    /// Load balancers and TLS terminators in front of this listener, as CIDR blocks or
    /// addresses (`10.0.0.0/8`, `fd00::/8`, `192.0.2.10`). From these peers the client is
    /// the rightmost untrusted `X-Forwarded-For` (or `Forwarded`) address and their
    /// `X-Forwarded-Proto`/`-Host` are kept; from any other peer the client is the peer and
    /// its forwarding headers are replaced. Empty by default: nobody is trusted. Reloadable.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Expect a PROXY protocol header (v1 text or v2 binary, HAProxy's `accept-proxy`) at
    /// the start of every connection; its source address becomes the connection's peer.
    /// Accepted only from `trusted_proxies`: a connection from any other address, or
    /// without a valid header, is closed. Default false. Reloadable.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Terminate TLS on this listener (see the README's "TLS"); absent: clear text.
    /// Certificates and `min_version` reload; turning TLS on or off needs a restart.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// On a clear-text listener: answer every request with `308 Permanent Redirect` to the
    /// same URL over https (RFC 9110 §15.4.9), except `/.well-known/acme-challenge/`
    /// (ACME HTTP-01, RFC 8555 §8.3), answered for the gateway's own pending challenges and
    /// routed as usual otherwise. Default false. Reloadable.
    #[serde(default)]
    pub redirect_https: bool,
    /// The port in a `redirect_https` Location, when the TLS listener is not on 443.
    #[serde(default)]
    pub https_port: Option<u16>,
}

/// TLS on a listener: one certificate (`cert` + `key`) or several chosen by SNI
/// (`certificates`), OpenSSL's Mozilla "intermediate" ciphers, ALPN `h2` and `http/1.1`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// PEM certificate chain (leaf first), relative to the config file: shorthand for a
    /// `certificates` list of one.
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1), relative to the config file.
    #[serde(default)]
    pub key: Option<String>,
    /// Certificates chosen by the client's SNI name: an exact SAN DNS name first, then a
    /// `*.example.com` wildcard (one label, RFC 6125 §6.4.3), else the default one.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Certificates obtained and renewed by ACME (RFC 8555; see the README's "ACME"),
    /// served for `domains` beside (and before) the files' certificates. Needs a restart.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
}

/// An ACME certificate of one TLS listener: one account per directory URL, one
/// certificate for all `domains`, renewed `renew_before` its expiry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The ACME server's directory URL (https), e.g.
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Contact address registered with the account (`mailto:`); optional.
    #[serde(default)]
    pub email: Option<String>,
    /// DNS names of the certificate (the first is its name in metrics); no wildcards
    /// (they need DNS-01, which gatehouse does not answer).
    pub domains: Vec<String>,
    /// Directory for the account key, certificate and key (created 0700, files 0600),
    /// relative to the config file. Must be writable by the gateway.
    pub storage: String,
    /// How the server validates the domains: `http-01` (default; answered on this
    /// config's clear-text listeners, which must be reachable on port 80) or
    /// `tls-alpn-01` (answered on this TLS listener, reachable on port 443).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// Renew this long before the certificate's `notAfter` (minus a random jitter of up
    /// to a tenth of it); default 30d (Let's Encrypt's advice for 90-day certificates).
    #[serde(default = "default_acme_renew_before")]
    pub renew_before: Duration,
    /// PEM CA certificate to trust for the directory's HTTPS instead of the system's
    /// roots (a private or test ACME server such as pebble), relative to the config file.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_acme_renew_before() -> Duration {
    Duration::from_secs(30 * 86_400)
}

/// The ACME challenge type gatehouse answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum AcmeChallenge {
    /// HTTP-01 (RFC 8555 §8.3): `/.well-known/acme-challenge/TOKEN` over clear text.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01 (RFC 8737): a handshake with ALPN `acme-tls/1` on the TLS listener.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// One certificate of a TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain (leaf first), relative to the config file.
    pub cert: String,
    /// PEM private key matching the certificate, relative to the config file.
    pub key: String,
    /// SNI names this certificate answers (exact or `*.example.com`); default: the
    /// certificate's own SAN DNS names (Traefik's rule).
    #[serde(default)]
    pub names: Vec<String>,
    /// Served to clients without SNI or with a name no certificate has; default: the
    /// first certificate listed. At most one per listener.
    #[serde(default)]
    pub default: bool,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246) and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only (RFC 8446).
    #[serde(rename = "1.3")]
    Tls13,
}

impl ListenerTlsConfig {
    /// The certificates in declared order: the `cert`/`key` shorthand first, then the
    /// list, each with its YAML path (`listeners[i].tls` or `..certificates[j]`).
    pub fn all_certificates(&self, at: &str) -> Vec<(String, CertificateConfig)> {
        let mut out = Vec::new();
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            out.push((
                at.to_string(),
                CertificateConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                    names: Vec::new(),
                    default: false,
                },
            ));
        }
        for (j, c) in self.certificates.iter().enumerate() {
            out.push((format!("{at}.certificates[{j}]"), c.clone()));
        }
        out
    }
}

/// Request-header limits, timeouts and connection handling of one listener. Defaults sit in
/// the range nginx and Envoy use.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerConfig {
    /// Largest request header section (request line and all fields), in bytes; default
    /// 32768 (nginx's `large_client_header_buffers 4 8k`; Envoy allows 60 KiB). Larger: 431.
    #[serde(
        default = "default_max_request_header_bytes",
        deserialize_with = "gatehouse_filters::size::de"
    )]
    #[schemars(with = "gatehouse_filters::size::ByteSize")]
    pub max_request_header_bytes: usize,
    /// Largest single header field line (name, colon, value), in bytes; default 8192 (one
    /// nginx large buffer). Larger: 431.
    #[serde(
        default = "default_max_header_line_bytes",
        deserialize_with = "gatehouse_filters::size::de"
    )]
    #[schemars(with = "gatehouse_filters::size::ByteSize")]
    pub max_header_line_bytes: usize,
    /// Most header fields in one request; default 100 (Envoy's `max_headers_count`).
    /// More: 431. pingora's parser refuses more than 256 whatever this says.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Longest request-target, in bytes; default 8192 (nginx: one large buffer). Longer: 414.
    #[serde(
        default = "default_max_uri_bytes",
        deserialize_with = "gatehouse_filters::size::de"
    )]
    #[schemars(with = "gatehouse_filters::size::ByteSize")]
    pub max_uri_bytes: usize,
    /// Time a client has to send its whole request header: counted from the accept for a
    /// connection's first request (a socket that sends nothing is closed then too), from
    /// its first byte for a later one on a kept-alive connection (whose idle wait is the
    /// 60 s keep-alive timeout); default 10s (HAProxy's usual `timeout http-request`;
    /// nginx's `client_header_timeout` is 60s). Past it the connection is closed without a
    /// response, as nginx does.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Most client connections open at once on this listener; default 10000. A connection
    /// beyond it is accepted and closed at once, before any byte is read.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Serve HTTP/1.1 requests a client sends before its previous answer (RFC 9112 §9.3.2),
    /// one at a time and in order; default true (nginx and Envoy do). With false, a
    /// pipelined request closes the connection after the first answer.
    #[serde(default = "default_true")]
    pub pipelining: bool,
    /// Serve HTTP/2 in clear text (h2c) to clients that open with the HTTP/2 connection
    /// preface ("prior knowledge", RFC 9113 §3.3); HTTP/1.1 clients keep working on the
    /// same port. Default false (nginx's `http2` on a plain listener, Envoy's
    /// `codec_type: AUTO`). Over TLS, HTTP/2 is chosen by ALPN instead. Needs a restart.
    #[serde(default)]
    pub h2c: bool,
    /// Limits of HTTP/2 connections on this listener (h2c, and h2 over TLS); every field
    /// has a default. Needs a restart.
    #[serde(default)]
    pub h2: H2ListenerConfig,
}

/// Limits of one listener's HTTP/2 connections (RFC 9113 §6.5.2 settings the gateway
/// announces, and its defence against stream-reset floods).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct H2ListenerConfig {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: requests one connection may have open at once;
    /// default 100 (the RFC 9113 §6.5.2 recommended minimum and pingora's value; nginx's
    /// `http2_max_concurrent_streams` is 128, Envoy's default is unbounded). A stream beyond it is refused with
    /// `REFUSED_STREAM` (RFC 9113 §5.1.2, §8.7), which clients retry.
    #[serde(default = "default_h2_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`: largest decoded header list of a request (names,
    /// values and 32 bytes per field, RFC 9113 §6.5.2), in bytes; default: the listener's
    /// `max_request_header_bytes`, so HTTP/1.1 and HTTP/2 share one limit. Larger: 431.
    #[serde(default, deserialize_with = "gatehouse_filters::size::de_opt")]
    #[schemars(with = "Option<gatehouse_filters::size::ByteSize>")]
    pub max_header_list_size: Option<usize>,
    /// Rapid-reset protection (CVE-2023-44487): how many streams the client may reset
    /// before the gateway has taken them up (HEADERS then RST_STREAM, the attack's
    /// pattern); one more and the connection is closed with `GOAWAY(ENHANCE_YOUR_CALM)`
    /// (the `h2` crate's `max_pending_accept_reset_streams`). Default 20 (the `h2` crate's
    /// and hyper's value).
    #[serde(default = "default_h2_max_pending_reset_streams")]
    pub max_pending_reset_streams: usize,
    /// Paced-reset protection (Envoy's premature-reset rule): a stream the client resets
    /// before the gateway finished it and within `premature_reset_min_stream_lifetime` of
    /// its start is premature; once premature resets reach half of the larger of this count
    /// and the connection's streams so far, the connection is closed with
    /// `GOAWAY(ENHANCE_YOUR_CALM)`. Catches a flood that takes each stream up before
    /// resetting it, which `max_pending_reset_streams` does not see. Default 500 (Envoy's
    /// `overload.premature_reset_total_stream_count`); at least 2.
    #[serde(default = "default_h2_premature_reset_total_stream_count")]
    pub premature_reset_total_stream_count: u64,
    /// A client reset later than this after a stream's start is not premature. Default 1s
    /// (Envoy's `overload.premature_reset_min_stream_lifetime_seconds`).
    #[serde(default = "default_h2_premature_reset_min_stream_lifetime")]
    pub premature_reset_min_stream_lifetime: Duration,
}

impl Default for H2ListenerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_streams: default_h2_max_concurrent_streams(),
            max_header_list_size: None,
            max_pending_reset_streams: default_h2_max_pending_reset_streams(),
            premature_reset_total_stream_count: default_h2_premature_reset_total_stream_count(),
            premature_reset_min_stream_lifetime: default_h2_premature_reset_min_stream_lifetime(),
        }
    }
}

fn default_h2_max_concurrent_streams() -> u32 {
    100
}
fn default_h2_max_pending_reset_streams() -> usize {
    20
}
fn default_h2_premature_reset_total_stream_count() -> u64 {
    500
}
fn default_h2_premature_reset_min_stream_lifetime() -> Duration {
    Duration::from_secs(1)
}

impl Default for HttpListenerConfig {
    fn default() -> Self {
        Self {
            max_request_header_bytes: default_max_request_header_bytes(),
            max_header_line_bytes: default_max_header_line_bytes(),
            max_headers: default_max_headers(),
            max_uri_bytes: default_max_uri_bytes(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
            pipelining: true,
            h2c: false,
            h2: H2ListenerConfig::default(),
        }
    }
}

fn default_max_request_header_bytes() -> usize {
    32 * 1024
}
fn default_max_header_line_bytes() -> usize {
    8 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_uri_bytes() -> usize {
    8 * 1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}

/// The admin listener. Binds to loopback by default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port`; default `127.0.0.1:9901`.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Optional auth for `/admin/*` and the dashboard (`/metrics`, `/healthz` and
    /// `/readyz` stay open so probes and scrapers work).
    #[serde(default)]
    pub auth: Option<AdminAuthConfig>,
    /// Optional `ip:port` of a probe listener that serves only `/metrics`, `/healthz` and
    /// `/readyz`, e.g. `0.0.0.0:9902` in a container, so Prometheus and Kubernetes reach
    /// them while `/admin/*` and the dashboard stay on `address`. Needs a restart.
    #[serde(default)]
    pub probe_address: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
            auth: None,
            probe_address: None,
        }
    }
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".to_string()
}

/// Admin authentication: a bearer token or basic credentials, read from env vars so
/// that secrets stay out of the file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminAuthConfig {
    /// Env var holding a bearer token (`Authorization: Bearer <token>`).
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// Basic auth user name.
    #[serde(default)]
    pub basic_user: Option<String>,
    /// Env var holding the basic auth password.
    #[serde(default)]
    pub basic_password_env: Option<String>,
}

/// Redis connection settings: exactly one of `url` (standalone), `cluster` or `sentinel`.
/// TLS (`rediss://`) and auth (`redis://user:pass@host`) come from the URLs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// A standalone Redis, e.g. `redis://127.0.0.1:6379`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Redis Cluster: seed node URLs, e.g. `[redis://127.0.0.1:7000, redis://127.0.0.1:7001]`.
    /// The client follows MOVED/ASK redirections and the cluster's failovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Vec<String>>,
    /// A Sentinel-managed primary: the gateway asks the sentinels for the primary and
    /// asks again after a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<RedisSentinelConfig>,
    /// Timeout of one Redis call on the request path; default 50ms.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
    /// TLS beyond what a `rediss://` URL says: a CA to trust instead of the system's
    /// roots, and a client certificate for a Redis with `tls-auth-clients yes`. Needs
    /// `rediss://` URLs; standalone and cluster only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsConfig>,
}

/// TLS files for Redis connections (PEM; paths relative to the working directory).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// CA certificate(s) that sign the Redis servers' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Client certificate chain (mutual TLS); needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// The client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

impl RedisConfig {
    /// The topology this section names (validation guarantees exactly one is set; with
    /// none, an empty standalone URL that fails to connect).
    pub fn topology(&self) -> gatehouse_registry::topology::Topology {
        use gatehouse_registry::topology::Topology;
        if let Some(nodes) = &self.cluster {
            Topology::Cluster(nodes.clone())
        } else if let Some(s) = &self.sentinel {
            Topology::Sentinel {
                master: s.master.clone(),
                nodes: s.nodes.clone(),
            }
        } else {
            Topology::Standalone(self.url.clone().unwrap_or_default())
        }
    }

    /// The TLS files' contents, read now.
    ///
    /// # Errors
    /// A file that cannot be read or holds no PEM block, or a client certificate
    /// without its key (or the other way round); the message names the key and the file.
    pub fn tls_material(&self) -> Result<Option<gatehouse_registry::topology::RedisTls>, String> {
        let Some(t) = &self.tls else {
            return Ok(None);
        };
        let read = |key: &str, path: &str| -> Result<Vec<u8>, String> {
            let pem = std::fs::read(path)
                .map_err(|e| format!("redis.tls.{key}: cannot read {path:?}: {e}"))?;
            if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(format!("redis.tls.{key}: {path:?} holds no PEM block"));
            }
            Ok(pem)
        };
        let ca_pem = t
            .ca_file
            .as_deref()
            .map(|p| read("ca_file", p))
            .transpose()?;
        let client = match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => Some((read("client_cert", c)?, read("client_key", k)?)),
            (None, None) => None,
            (Some(_), None) => return Err("redis.tls.client_cert: needs client_key".into()),
            (None, Some(_)) => return Err("redis.tls.client_key: needs client_cert".into()),
        };
        Ok(Some(gatehouse_registry::topology::RedisTls {
            ca_pem,
            client,
        }))
    }
}

/// Sentinel settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSentinelConfig {
    /// The monitored primary's name (`sentinel monitor NAME ...`).
    pub master: String,
    /// Sentinel URLs, e.g. `[redis://127.0.0.1:26379]`. The user and password of the
    /// first one (and `rediss://`) are also used for the primary.
    pub nodes: Vec<String>,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

/// Runtime settings of the proxy service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Proxy worker threads; default: the number of CPUs.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Tokio work stealing between proxy threads. Default false: each thread runs its own
    /// connections, which keeps tail latency at high connection counts close to the median.
    #[serde(default)]
    pub work_stealing: bool,
    /// Idle upstream connections kept per thread; default 1024 (must cover the expected
    /// concurrency, or connections churn).
    #[serde(default = "default_keepalive_pool")]
    pub upstream_keepalive_pool_size: usize,
    /// How long an idle upstream connection is kept; default 60s. A connection last used by
    /// a request that found more than `upstream_burst_threshold` requests in flight to its
    /// endpoint is kept `upstream_burst_idle_timeout` instead.
    #[serde(default = "default_upstream_idle")]
    pub upstream_idle_timeout: Duration,
    /// Requests in flight to one endpoint (the request's own included) above which the
    /// connection a request used goes back to the pool for `upstream_burst_idle_timeout`
    /// only; default 64. The connections a burst opened beyond what steady traffic keeps
    /// busy then close soon after it (HAProxy's `pool-purge-delay` aim), while a connection
    /// that steady traffic reuses every few milliseconds stays. HTTP/1.1 upstreams only (an
    /// HTTP/2 connection carries many requests). 0: every connection gets the burst timeout.
    #[serde(default = "default_burst_threshold")]
    pub upstream_burst_threshold: u64,
    /// How long an idle upstream connection last used above `upstream_burst_threshold` is
    /// kept; default 1s, at most `upstream_idle_timeout`.
    #[serde(default = "default_burst_idle")]
    pub upstream_burst_idle_timeout: Duration,
    /// Read buffer per client connection in bytes, at least 1024; default 4096. It is
    /// zero-filled when the connection opens and stays resident for the connection's life,
    /// so it is most of the memory an idle keep-alive connection costs (pingora's own
    /// default is 64 KiB; 16 KiB cost about 70 KiB per connection at 1000 connections,
    /// 4 KiB about 52). A request header larger than the buffer is read in more than one
    /// call; a body bypasses it.
    #[serde(
        default = "default_downstream_read_buffer",
        deserialize_with = "gatehouse_filters::size::de"
    )]
    #[schemars(with = "gatehouse_filters::size::ByteSize")]
    pub downstream_read_buffer: usize,
}

fn default_downstream_read_buffer() -> usize {
    4 * 1024
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            threads: None,
            work_stealing: false,
            upstream_keepalive_pool_size: default_keepalive_pool(),
            upstream_idle_timeout: default_upstream_idle(),
            upstream_burst_threshold: default_burst_threshold(),
            upstream_burst_idle_timeout: default_burst_idle(),
            downstream_read_buffer: default_downstream_read_buffer(),
        }
    }
}

fn default_keepalive_pool() -> usize {
    1024
}
fn default_upstream_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_burst_threshold() -> u64 {
    64
}
fn default_burst_idle() -> Duration {
    Duration::from_secs(1)
}

/// Access log settings: one line per request on stdout, in `format`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Write a line per request; default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `json` (default), `common` or `combined` (nginx's and Apache's text formats).
    #[serde(default)]
    pub format: AccessLogFormat,
    /// The fields of a `json` line, in this order; default: every field but `query`,
    /// `protocol`, `user_agent` and `referer`. Only for `format: json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<AccessLogField>>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            format: AccessLogFormat::Json,
            fields: None,
        }
    }
}

/// The shape of an access-log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object: `timestamp`, `level`, `fields` (the chosen fields), `target: access`,
    /// the envelope of every other log line.
    #[default]
    Json,
    /// The Common Log Format: `client - - [time] "request line" status bytes`
    /// (nginx's `$remote_addr - $remote_user [$time_local] "$request" $status
    /// $body_bytes_sent`).
    Common,
    /// `common` plus `"referer" "user agent"`: nginx's predefined `combined` format.
    Combined,
}

/// One field of a JSON access-log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogField {
    /// The request's id (the `X-Request-Id` answered).
    RequestId,
    /// The request method.
    Method,
    /// The normalized path, without the query.
    Path,
    /// The query string, without `?` (not in the default set).
    Query,
    /// `HTTP/1.1` or `HTTP/1.0` (not in the default set).
    Protocol,
    /// The `Host` header as received.
    Host,
    /// The route's name (`(none)`: unrouted).
    Route,
    /// The upstream's name.
    Upstream,
    /// The address of the endpoint of the last try.
    Endpoint,
    /// The status sent to the client.
    Status,
    /// `gateway` or `upstream`: who made the status.
    Source,
    /// The gateway's error code (`X-Gatehouse-Error`), empty on success.
    Error,
    /// The parser's reason for a request it refused; written only when there is one.
    Detail,
    /// The W3C trace id (32 hex digits) of the request's trace; written only when
    /// `tracing` is configured.
    TraceId,
    /// Tries made upstream (1 without retries).
    Tries,
    /// Time from the request's first byte to the end of the response, ms (3 decimals).
    DurationMs,
    /// Time spent in filters, ms (3 decimals).
    FilterMs,
    /// Request body bytes read from the client.
    BytesIn,
    /// Response body bytes sent to the client.
    BytesOut,
    /// The client's address (after `trusted_proxies`).
    ClientIp,
    /// The TCP peer's address.
    PeerIp,
    /// The `User-Agent` header (not in the default set).
    UserAgent,
    /// The `Referer` header (not in the default set).
    Referer,
    /// Why an upgraded connection (a WebSocket tunnel) ended: `client_close`,
    /// `upstream_close`, `idle_timeout` or `error`; written only for one.
    TunnelEnd,
    /// How long the tunnel lasted after the `101`, ms (3 decimals); written only for one.
    TunnelMs,
}

impl AccessLogField {
    /// The fields of a JSON line when `fields` is not given, in their order: the line
    /// gatehouse has always written.
    pub const DEFAULT: &'static [AccessLogField] = &[
        Self::RequestId,
        Self::TraceId,
        Self::Method,
        Self::Path,
        Self::Host,
        Self::Route,
        Self::Upstream,
        Self::Endpoint,
        Self::Status,
        Self::Source,
        Self::Error,
        Self::Detail,
        Self::Tries,
        Self::DurationMs,
        Self::FilterMs,
        Self::BytesIn,
        Self::BytesOut,
        Self::ClientIp,
        Self::PeerIp,
        Self::TunnelEnd,
        Self::TunnelMs,
    ];
}

fn default_true() -> bool {
    true
}

/// Metric series settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Label the per-endpoint counters (`gatehouse_upstream_requests_total`,
    /// `gatehouse_upstream_health_transitions_total`) with the endpoint's address; default
    /// true. The series of an endpoint are dropped when it leaves the upstream either way;
    /// set false when discovery churns many addresses and one series per upstream is
    /// enough (`endpoint=""`). `gatehouse_upstream_endpoint_healthy` keeps one series per
    /// live endpoint.
    #[serde(default = "default_true")]
    pub endpoint_labels: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            endpoint_labels: true,
        }
    }
}

/// Where spans go and how many traces are kept.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`:
    /// `http://127.0.0.1:4318` for `http/protobuf` (spans are POSTed to its path plus
    /// `/v1/traces`), `http://127.0.0.1:4317` for `grpc`. `https://` uses TLS with the
    /// system's roots.
    pub otlp_endpoint: String,
    /// `http/protobuf` (default) or `grpc`, as `OTEL_EXPORTER_OTLP_PROTOCOL`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Which traces are kept.
    #[serde(default)]
    pub sampler: SamplerConfig,
    /// The `service.name` of the gateway's spans; default `gatehouse`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Longest wait before a batch of finished spans is sent
    /// (`OTEL_BSP_SCHEDULE_DELAY`); default 5s.
    #[serde(default = "default_scheduled_delay")]
    pub scheduled_delay: Duration,
    /// Finished spans held for export at most; spans beyond it are dropped until the
    /// queue drains, never waited for (`OTEL_BSP_MAX_QUEUE_SIZE`); default 2048.
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
    /// Longest wait for one export request; default 10s.
    #[serde(default = "default_export_timeout")]
    pub export_timeout: Duration,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP/1.1 POST (OTLP/HTTP).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// The OTLP gRPC service (OTLP/gRPC).
    #[serde(rename = "grpc")]
    Grpc,
}

/// Head sampling: `ParentBased(TraceIdRatioBased(ratio))` of the OpenTelemetry SDK.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    /// Fraction of new traces kept, 0.0 to 1.0; default 1.0. A request whose
    /// `traceparent` is valid follows its sampled flag instead. Reloadable.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            ratio: default_ratio(),
        }
    }
}

fn default_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "gatehouse".to_string()
}

fn default_scheduled_delay() -> Duration {
    Duration::from_secs(5)
}

fn default_max_queue_size() -> usize {
    2048
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM, stop accepting and wait at most this long for in-flight requests;
    /// the process exits as soon as none is left. Default 10s.
    #[serde(default = "default_grace")]
    pub grace_period: Duration,
    /// On SIGTERM, keep accepting for this long first, while `/readyz` answers 503
    /// `draining` and responses ask clients to close (`Connection: close`); then stop
    /// accepting and drain for `grace_period`. The time a load balancer or Kubernetes
    /// needs to see the gateway not ready before its listeners close (Envoy's drain time;
    /// on Kubernetes, instead of a preStop sleep). Default 0s: stop accepting at once, as
    /// nginx does. SIGINT during the delay shuts down at once; a second SIGTERM ends the
    /// delay. At most 300s. Needs a restart.
    #[serde(default = "default_drain_delay")]
    pub drain_delay: Duration,
    /// Unix socket over which a binary upgrade hands the listening sockets from the
    /// running process to the new one (`gatehouse run --upgrade`, then SIGQUIT to the old
    /// one; or SIGUSR2, which does both). Default `/tmp/gatehouse-upgrade.sock`; give each
    /// gateway on a host its own. Needs a restart.
    #[serde(default = "default_upgrade_socket")]
    pub upgrade_socket: String,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: default_grace(),
            drain_delay: default_drain_delay(),
            upgrade_socket: default_upgrade_socket(),
        }
    }
}

fn default_upgrade_socket() -> String {
    "/tmp/gatehouse-upgrade.sock".to_string()
}

fn default_drain_delay() -> Duration {
    Duration::from_secs(0)
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

/// A named cluster of endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Where the endpoints come from.
    pub discovery: DiscoveryConfig,
    /// Timeouts of calls to this upstream.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Upstream `Host` header: `preserve` (the client's, default) or a fixed value
    /// with `{ set: "api.internal" }`.
    #[serde(default)]
    pub host_header: HostHeaderPolicy,
    /// The HTTP version spoken to the endpoints: `http1` (default), `h2` (HTTP/2 chosen by
    /// ALPN over TLS) or `h2c` (HTTP/2 in clear text by prior knowledge, RFC 9113 §3.3, as
    /// gRPC servers speak it). gRPC needs `h2` or `h2c`: HTTP/1.1 carries no trailers.
    /// Reloadable.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints (HTTPS, and mutual TLS with `client_cert`); clear text when
    /// absent. `protocol: h2` needs it. Reloadable; the files are read on every load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// Active health checks; none by default.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier detection on real traffic. On by default with conservative
    /// thresholds (5 consecutive failures eject an endpoint for 30s, longer each time up
    /// to 300s, never more than half of the upstream at once), as nginx marks a server
    /// down after failures out of the box; `outlier_detection: null` turns it off.
    #[serde(default = "default_outlier_detection")]
    pub outlier_detection: Option<OutlierConfig>,
    /// Circuit breaker for the whole upstream; none by default.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Retry policy. By default a connect error (the request never left) is retried
    /// once on another endpoint, as nginx's `proxy_next_upstream error` does; nothing
    /// else is retried. `retry: null` (or `{ attempts: 1 }`) turns it off.
    #[serde(default = "default_retry")]
    pub retry: Option<RetryConfig>,
    /// Bulkhead: at most this many requests in flight to this upstream; unlimited by default.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// How long a request may wait for a bulkhead slot before a 503; default 0 (no queue).
    #[serde(default)]
    pub max_wait: Option<Duration>,
    /// Queue length of the bulkhead; default = max_concurrent.
    #[serde(default)]
    pub max_queue: Option<u32>,
    /// Path of the endpoints' Prometheus metrics (e.g. `/metrics`). When set, the gateway
    /// reads `gatehouse_service_db_pool_connections` from each endpoint every 10s and shows
    /// the services' DB pools on the dashboard. Off by default.
    #[serde(default)]
    pub metrics_path: Option<String>,
}

/// The HTTP version of the connections to an upstream's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (RFC 9112), pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN `h2` (RFC 9113 §3.2).
    H2,
    /// HTTP/2 over clear-text TCP with prior knowledge (RFC 9113 §3.3).
    H2c,
}

/// TLS to an upstream's endpoints (PEM files, relative to the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// CA certificate(s) that sign the endpoints' certificates; absent: the system's
    /// trusted roots (OpenSSL's default paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The name sent as SNI and checked against the endpoint's certificate (RFC 6125).
    /// Default: the DNS discovery name, else the host of the endpoint's `host:port`
    /// address. An endpoint given as an IP address needs it when `verify` is on: an IP is
    /// not sent as SNI (RFC 6066 §3) nor matched against the certificate's names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Client certificate chain (leaf first) for mutual TLS; needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Verify the endpoint's certificate chain and name (default true). `false` accepts
    /// any certificate, as nginx's `proxy_ssl_verify off` does: for tests only.
    #[serde(default = "default_true")]
    pub verify: bool,
}

/// Endpoint discovery: exactly one source.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiscoveryConfig {
    /// A fixed list.
    Static(Vec<EndpointConfig>),
    /// A DNS name re-resolved every `refresh` (A and AAAA).
    Dns(DnsDiscoveryConfig),
    /// A YAML/JSON file of endpoints, watched for changes.
    File(FileDiscoveryConfig),
    /// The Redis registry (`gatehouse:registry:<service>`).
    Redis(RedisDiscoveryConfig),
}

/// One static endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `ip:port` (or `host:port`, resolved once at load).
    pub address: String,
    /// Relative weight for smooth weighted round-robin; default 1, must be >= 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// DNS discovery.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscoveryConfig {
    /// Name to resolve.
    pub name: String,
    /// Port of every resolved address.
    pub port: u16,
    /// Re-resolve interval; default 30s.
    #[serde(default = "default_dns_refresh")]
    pub refresh: Duration,
}

fn default_dns_refresh() -> Duration {
    Duration::from_secs(30)
}

/// File discovery.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileDiscoveryConfig {
    /// Path of a YAML/JSON list of `{address, weight, metadata}`; relative to the config file.
    pub path: String,
}

/// Redis registry discovery.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisDiscoveryConfig {
    /// Service name in the registry.
    pub service: String,
    /// Poll interval; default 2s.
    #[serde(default = "default_registry_poll")]
    pub refresh: Duration,
}

fn default_registry_poll() -> Duration {
    Duration::from_secs(2)
}

/// Timeouts of calls to an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP connect; default 1s. A connect timeout is a 504, a refused connect a 502.
    #[serde(default = "default_connect_timeout")]
    pub connect: Duration,
    /// Per-try wait for each read from the upstream (header or body chunk); default 30s.
    #[serde(default = "default_read_timeout")]
    pub read: Duration,
    /// Per-try wait for each write to the upstream; default 30s.
    #[serde(default = "default_read_timeout")]
    pub write: Duration,
    /// Deadline for the whole request across retries and backoff (until the response
    /// header arrives); default none.
    #[serde(default)]
    pub total: Option<Duration>,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            read: default_read_timeout(),
            write: default_read_timeout(),
            total: None,
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The `Host` header sent upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HostHeaderPolicy {
    /// Keep the client's Host header (default).
    #[default]
    Preserve,
    /// Use the endpoint's `ip:port`.
    Endpoint,
    /// Use a fixed value.
    Set(String),
}

/// Active health checks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http` (default) or `tcp`.
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// HTTP path; default `/health`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// HTTP method; default GET.
    #[serde(default = "default_health_method")]
    pub method: String,
    /// Host header of the check; default the endpoint address.
    #[serde(default)]
    pub host: Option<String>,
    /// Healthy status range, inclusive; default [200, 399].
    #[serde(default = "default_health_status")]
    pub expected_status: [u16; 2],
    /// Optional substring the body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// Interval between checks; default 10s (with up to 10% jitter).
    #[serde(default = "default_health_interval")]
    pub interval: Duration,
    /// Timeout of one check; default 2s.
    #[serde(default = "default_health_timeout")]
    pub timeout: Duration,
    /// Consecutive successes to turn healthy; default 2.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures to turn unhealthy; default 3.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// State of a newly discovered endpoint before its first check: `healthy` (default:
    /// healthy-unverified, takes traffic) or `unhealthy` (waits for healthy_threshold).
    #[serde(default)]
    pub initial_state: InitialHealth,
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// An HTTP request.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
}

/// Initial health of new endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InitialHealth {
    /// Takes traffic until a check says otherwise.
    #[default]
    Healthy,
    /// Takes no traffic until it passes `healthy_threshold` checks.
    Unhealthy,
}

fn default_health_path() -> String {
    "/health".into()
}
fn default_health_method() -> String {
    "GET".into()
}
fn default_health_status() -> [u16; 2] {
    [200, 399]
}
fn default_health_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// Passive outlier detection (Envoy semantics).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failures (connect error, timeout, 5xx) that eject an endpoint; default 5.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Base ejection time, multiplied by the number of times the endpoint was ejected;
    /// default 30s.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Duration,
    /// Upper bound of one ejection; default 300s.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Duration,
    /// At most this percentage of the cluster is ejected at once; default 50.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_outlier_detection() -> Option<OutlierConfig> {
    Some(OutlierConfig {
        consecutive_failures: default_consecutive_failures(),
        base_ejection_time: default_base_ejection(),
        max_ejection_time: default_max_ejection(),
        max_ejection_percent: default_max_ejection_percent(),
    })
}

fn default_retry() -> Option<RetryConfig> {
    Some(RetryConfig {
        attempts: default_attempts(),
        on: default_retry_on(),
        non_idempotent: false,
        backoff: BackoffConfig::default(),
        budget: default_budget(),
        min_retries_per_second: default_min_retries_per_second(),
    })
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// Circuit breaker of an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Failure rate in the window (0..1) that opens the breaker; default 0.5.
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    /// Minimum calls in the window before the rate counts; default 20.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Rolling window; default 30s.
    #[serde(default = "default_cb_window")]
    pub window: Duration,
    /// Open after this many consecutive failures, whatever the rate; default off.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// Time open before the first half-open probe; doubles on each re-trip up to
    /// `max_open_for`. Default 15s.
    #[serde(default = "default_open_for")]
    pub open_for: Duration,
    /// Cap of the growing open time; default 5m.
    #[serde(default = "default_max_open_for")]
    pub max_open_for: Duration,
    /// Probes let through while half-open; all must succeed to close. Default 3.
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: u32,
    /// Statuses counted as failures; default all 5xx.
    #[serde(default)]
    pub failure_statuses: Option<Vec<u16>>,
    /// Calls slower than this count as failures; default off.
    #[serde(default)]
    pub slow_call: Option<Duration>,
}

fn default_failure_rate() -> f64 {
    0.5
}
fn default_min_requests() -> u32 {
    20
}
fn default_cb_window() -> Duration {
    Duration::from_secs(30)
}
fn default_open_for() -> Duration {
    Duration::from_secs(15)
}
fn default_max_open_for() -> Duration {
    Duration::from_secs(300)
}
fn default_half_open_probes() -> u32 {
    3
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries in all, including the first (2 = one retry). Default 2.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Conditions: `connect_error`, `timeout`, `reset`, or a status code. Default
    /// `[connect_error]`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Retry non-idempotent methods too (otherwise only with an `Idempotency-Key`).
    #[serde(default)]
    pub non_idempotent: bool,
    /// Exponential backoff with full jitter.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Retries allowed as a fraction of recent requests; default 0.2.
    #[serde(default = "default_budget")]
    pub budget: f64,
    /// Retries always allowed per second regardless of the budget; default 10.
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
}

/// One retry condition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RetryOn {
    /// A response status.
    Status(u16),
    /// A failure kind.
    Kind(RetryKind),
}

/// A failure kind that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryKind {
    /// The connection could not be established.
    ConnectError,
    /// The upstream did not answer in time.
    Timeout,
    /// The connection was reset or closed before a response.
    Reset,
}

/// Backoff between tries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// Base delay; default 25ms.
    #[serde(default = "default_backoff_base")]
    pub base: Duration,
    /// Cap; default 250ms.
    #[serde(default = "default_backoff_max")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Kind(RetryKind::ConnectError)]
}
fn default_budget() -> f64 {
    0.2
}
fn default_min_retries_per_second() -> u32 {
    10
}
fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}

/// One route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// What requests this route takes; default: every request.
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// Name of the upstream that serves it.
    pub upstream: String,
    /// Precedence before every other rule: a higher priority wins whatever its host or path
    /// (see the README's precedence rule). Default 0; may be negative.
    #[serde(default)]
    pub priority: i32,
    /// What an encoded slash (`%2F`) in the path does on this route: `reject` (400
    /// `bad_path`, default), `keep` (matched inside its segment, forwarded encoded) or
    /// `decode` (matched inside its segment, forwarded as `/`).
    #[serde(default)]
    pub encoded_slashes: EncodedSlashes,
    /// A path prefix removed before forwarding (`/api/user/login` -> `/login`).
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Prefix added after stripping (`/v2` + `/login`).
    #[serde(default)]
    pub add_prefix: Option<String>,
    /// Replace the whole path sent upstream. `{name}` inserts a parameter captured by the
    /// route's `path_template` (`/v2/users/{id}`, `/blobs/{rest}`).
    #[serde(default)]
    pub rewrite_path: Option<String>,
    /// Request body limit; default 10MiB. Larger bodies get a 413.
    #[serde(default, deserialize_with = "gatehouse_filters::size::de_opt")]
    #[schemars(with = "Option<gatehouse_filters::size::ByteSize>")]
    pub max_body_bytes: Option<u64>,
    /// Read the whole request body before connecting upstream (nginx
    /// `proxy_request_buffering`, Envoy's buffer filter); default off: bodies stream.
    #[serde(default)]
    pub request_buffering: Option<RequestBufferingConfig>,
    /// Filters, run in this order.
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    /// Upgraded connections (WebSocket) of this route: their idle timeout.
    #[serde(default)]
    pub websocket: WebSocketConfig,
}

/// A route's upgraded connections (`Upgrade: websocket` answered `101`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// How long a tunnel may wait for the next byte from one side before the gateway
    /// closes it (nginx's `proxy_read_timeout` on a WebSocket); replaces the upstream's
    /// `timeouts.read` once the upstream answered `101`. Default 1h.
    #[serde(default = "default_tunnel_idle")]
    pub idle_timeout: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            idle_timeout: default_tunnel_idle(),
        }
    }
}

fn default_tunnel_idle() -> Duration {
    Duration::from_secs(3600)
}

/// Whole-body buffering of a route's requests. A body that is malformed (bad chunked
/// framing) is refused with 400, and one larger than `max_bytes` with 413, before any byte
/// goes upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestBufferingConfig {
    /// Largest body held, in bytes: 1..=65536 (pingora replays at most 64 KiB of a request
    /// body to the upstream); default 65536.
    #[serde(
        default = "default_buffer_bytes",
        deserialize_with = "gatehouse_filters::size::de"
    )]
    #[schemars(with = "gatehouse_filters::size::ByteSize")]
    pub max_bytes: usize,
}

fn default_buffer_bytes() -> usize {
    64 * 1024
}

/// A route's choice for an encoded slash (`%2F`) in the request path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    /// Refuse the request with 400 `bad_path` (default).
    #[default]
    Reject,
    /// Match `%2F` as part of its segment and forward it encoded, unchanged.
    Keep,
    /// Match `%2F` as part of its segment and forward it decoded as `/`.
    Decode,
}

/// Request matching. Every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Hosts: exact (`api.example.com`) or wildcard (`*.example.com`); any by default.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix on segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Path template: `{name}` matches one segment, a last `{*name}` the rest of the path
    /// (`/users/{id}`, `/files/{*rest}`); captures are usable in `rewrite_path`.
    #[serde(default)]
    pub path_template: Option<String>,
    /// Regex on the normalized path (anchored with ^...$ implicitly).
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Methods; any by default.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header conditions: a value to equal, or `{present: true}`.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderMatch>,
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum HeaderMatch {
    /// The header equals this value.
    Equals(String),
    /// The header is present (or absent, with `present: false`).
    Presence {
        /// Whether it must be present.
        present: bool,
    },
}

impl<'de> Deserialize<'de> for HeaderMatch {
    /// A string, or `{ present: bool }`; anything else is refused with how to write it
    /// (YAML reads `x-canary: 1` as a number, and `1.10` would silently become `1.1`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        struct V;
        fn quote<E: Error>(v: impl std::fmt::Display, what: &str) -> E {
            E::custom(format!(
                "a header condition is a string or {{ present: true|false }}: write \"{v}\" in quotes (YAML reads {v} as a {what})"
            ))
        }
        impl<'de> Visitor<'de> for V {
            type Value = HeaderMatch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a header value (a string) or { present: true|false }")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<HeaderMatch, E> {
                Ok(HeaderMatch::Equals(v.to_string()))
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<HeaderMatch, E> {
                Err(quote(v, "number"))
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<HeaderMatch, E> {
                Err(quote(v, "number"))
            }
            fn visit_f64<E: Error>(self, v: f64) -> Result<HeaderMatch, E> {
                Err(quote(v, "number"))
            }
            fn visit_bool<E: Error>(self, v: bool) -> Result<HeaderMatch, E> {
                Err(quote(v, "boolean"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HeaderMatch, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Presence {
                    present: bool,
                }
                let p = Presence::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(HeaderMatch::Presence { present: p.present })
            }
        }
        d.deserialize_any(V)
    }
}
