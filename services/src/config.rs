//! Process settings read from the command line and the environment.

use std::path::PathBuf;
use std::time::Duration;

use gatehouse_registry::topology::Topology;

use crate::faults::FaultConfig;

/// How the services run: `production` refuses test-only features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normal operation: no fault injection admin endpoint, no opening balances.
    Production,
    /// Integration tests: fault injection and opening balances enabled.
    Test,
    /// The one-command demo: like test mode.
    Demo,
}

impl Mode {
    /// Parses `production|test|demo` (default production).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "production" | "prod" => Ok(Mode::Production),
            "test" => Ok(Mode::Test),
            "demo" => Ok(Mode::Demo),
            other => Err(format!("unknown mode {other:?} (production|test|demo)")),
        }
    }

    /// Whether test-only features (fault admin, opening balances, self-chosen roles) are on.
    pub fn testing(self) -> bool {
        matches!(self, Mode::Test | Mode::Demo)
    }
}

/// Everything a service needs to start; shared by all services of one process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Test/demo/production mode.
    pub mode: Mode,
    /// Directory of the SQLite files.
    pub data_dir: PathBuf,
    /// `mysql://user@host:port` (any path is replaced by the per-service database); None = SQLite.
    pub database_url: Option<String>,
    /// Prefix of database names / SQLite files: `<prefix>_<service>`.
    pub db_prefix: String,
    /// Maximum connections per service pool.
    pub db_max_connections: u32,
    /// Redis for the registry and the event streams (one server, a Redis Cluster through
    /// its seed nodes, or a Sentinel-managed primary); None = in-process events.
    pub redis: Option<Topology>,
    /// Prefix of every Redis key (`<prefix>:registry:*`, `<prefix>:events`).
    pub redis_prefix: String,
    /// HS256 secret for the JWTs the user service issues and verifies.
    pub jwt_secret: Option<String>,
    /// Token every internal (service-to-service) call carries in `X-Internal-Token`.
    pub internal_token: String,
    /// Address the services listen on.
    pub bind_host: String,
    /// Host advertised in the registry.
    pub advertise_host: String,
    /// Ports: user, transaction, payment, notification.
    pub ports: Ports,
    /// Base URL of the payment service, for the saga coordinator.
    pub payment_url: String,
    /// Base URL of the notification service, for the saga coordinator.
    pub notification_url: String,
    /// Find payment and notification in the Redis registry (the URLs above are then the
    /// fallback when no instance is live). On when Redis is configured and no URL was given.
    pub peer_discovery: bool,
    /// Fault injection in the payment service (test/demo mode only).
    pub faults: FaultConfig,
    /// Saga tuning.
    pub saga: SagaSettings,
    /// Weight registered in the registry.
    pub registry_weight: u32,
    /// Test mode only: do not run the history projection (to exercise the write-model fallback).
    pub disable_projection: bool,
    /// Where each service exports its spans (its `service.name` is the service's name);
    /// None = no tracing.
    pub tracing: Option<gatehouse_otel::Settings>,
}

/// The listening ports of the four services.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// User service (3001).
    pub user: u16,
    /// Transaction service (3003).
    pub transaction: u16,
    /// Payment service (3004).
    pub payment: u16,
    /// Notification service (3005).
    pub notification: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            user: 3001,
            transaction: 3003,
            payment: 3004,
            notification: 3005,
        }
    }
}

/// Retry and timing knobs of the saga coordinator.
#[derive(Debug, Clone, Copy)]
pub struct SagaSettings {
    /// Tries of one step per run before the step is given up (debit/credit) or parked.
    pub step_attempts: u32,
    /// Timeout of one call to payment or notification.
    pub call_timeout: Duration,
    /// First backoff between tries; doubles up to 1 s.
    pub backoff: Duration,
    /// How often the recovery loop looks for unfinished sagas.
    pub recovery_interval: Duration,
    /// Notification tries (over all runs) before the notify step is abandoned.
    pub max_notify_attempts: i64,
}

impl Default for SagaSettings {
    fn default() -> Self {
        SagaSettings {
            step_attempts: 4,
            call_timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(50),
            recovery_interval: Duration::from_secs(2),
            max_notify_attempts: 20,
        }
    }
}

/// The three ways to name the services' Redis, as given on the command line or in the
/// environment; empty values (and empty items of a list) count as unset.
#[derive(Debug, Clone, Default)]
pub struct RedisForms {
    /// `GATEHOUSE_REDIS_URL`: one server.
    pub url: Option<String>,
    /// `GATEHOUSE_REDIS_CLUSTER`: a Redis Cluster's seed URLs, comma-separated.
    pub cluster: Option<String>,
    /// `GATEHOUSE_REDIS_SENTINEL_MASTER`: the name the sentinels monitor.
    pub sentinel_master: Option<String>,
    /// `GATEHOUSE_REDIS_SENTINEL`: the sentinels' URLs, comma-separated.
    pub sentinel: Option<String>,
}

impl RedisForms {
    /// The one topology given, or None (in-process events, no registry).
    ///
    /// # Errors
    /// More than one form, or a Sentinel form without its master name or without its
    /// nodes; the message names the environment variables and the flags.
    pub fn topology(&self) -> Result<Option<Topology>, String> {
        let one = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let list = |v: &Option<String>| -> Vec<String> {
            v.iter()
                .flat_map(|l| l.split(','))
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect()
        };
        let (url, cluster) = (one(&self.url), list(&self.cluster));
        let (master, sentinel) = (one(&self.sentinel_master), list(&self.sentinel));
        let given: Vec<&str> = [
            (url.is_some(), "GATEHOUSE_REDIS_URL (--redis-url)"),
            (
                !cluster.is_empty(),
                "GATEHOUSE_REDIS_CLUSTER (--redis-cluster)",
            ),
            (
                master.is_some() || !sentinel.is_empty(),
                "GATEHOUSE_REDIS_SENTINEL (--redis-sentinel)",
            ),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if given.len() > 1 {
            return Err(format!(
                "Redis is named more than one way (set: {}); set only one of \
                 GATEHOUSE_REDIS_URL (one server), GATEHOUSE_REDIS_CLUSTER (a Redis Cluster) \
                 or GATEHOUSE_REDIS_SENTINEL_MASTER with GATEHOUSE_REDIS_SENTINEL (a \
                 Sentinel-managed primary)",
                given.join(", ")
            ));
        }
        Ok(match (url, master) {
            (Some(url), _) => Some(Topology::Standalone(url)),
            _ if !cluster.is_empty() => Some(Topology::Cluster(cluster)),
            (None, Some(_)) if sentinel.is_empty() => {
                return Err(
                    "GATEHOUSE_REDIS_SENTINEL_MASTER (--redis-sentinel-master) needs \
                     GATEHOUSE_REDIS_SENTINEL (--redis-sentinel): the sentinels' URLs, \
                     comma-separated"
                        .to_string(),
                )
            }
            (None, Some(master)) => Some(Topology::Sentinel {
                master,
                nodes: sentinel,
            }),
            (None, None) if !sentinel.is_empty() => {
                return Err("GATEHOUSE_REDIS_SENTINEL (--redis-sentinel) needs \
                     GATEHOUSE_REDIS_SENTINEL_MASTER (--redis-sentinel-master): the name the \
                     sentinels monitor"
                    .to_string())
            }
            (None, None) => None,
        })
    }
}

/// Generates a random 32-byte hex secret.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(url: &str, cluster: &str, master: &str, sentinel: &str) -> RedisForms {
        let some = |s: &str| Some(s.to_string());
        RedisForms {
            url: some(url),
            cluster: some(cluster),
            sentinel_master: some(master),
            sentinel: some(sentinel),
        }
    }

    #[test]
    fn each_form_alone_gives_its_topology_and_none_gives_none() {
        assert_eq!(RedisForms::default().topology(), Ok(None));
        assert_eq!(forms(" ", ",", "", " , ").topology(), Ok(None));
        assert_eq!(
            forms("redis://a:1", "", "", "").topology(),
            Ok(Some(Topology::Standalone("redis://a:1".into())))
        );
        assert_eq!(
            forms("", "redis://a:1, redis://b:2", "", "").topology(),
            Ok(Some(Topology::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ])))
        );
        assert_eq!(
            forms("", "", "mymaster", "redis://s1:26379,redis://s2:26379").topology(),
            Ok(Some(Topology::Sentinel {
                master: "mymaster".into(),
                nodes: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
            }))
        );
    }

    #[test]
    fn two_forms_or_half_a_sentinel_form_are_refused_by_name() {
        let err = forms("redis://a:1", "", "m", "redis://s:26379")
            .topology()
            .unwrap_err();
        assert!(
            err.starts_with(
                "Redis is named more than one way (set: GATEHOUSE_REDIS_URL (--redis-url), \
                 GATEHOUSE_REDIS_SENTINEL (--redis-sentinel)); set only one of"
            ),
            "{err}"
        );
        let err = forms("", "redis://a:1", "", "redis://s:26379")
            .topology()
            .unwrap_err();
        assert!(
            err.contains(
                "(set: GATEHOUSE_REDIS_CLUSTER (--redis-cluster), GATEHOUSE_REDIS_SENTINEL"
            ),
            "{err}"
        );
        let err = forms("", "", "m", "").topology().unwrap_err();
        assert!(
            err.starts_with("GATEHOUSE_REDIS_SENTINEL_MASTER (--redis-sentinel-master) needs GATEHOUSE_REDIS_SENTINEL"),
            "{err}"
        );
        let err = forms("", "", "", "redis://s:26379").topology().unwrap_err();
        assert!(
            err.starts_with(
                "GATEHOUSE_REDIS_SENTINEL (--redis-sentinel) needs GATEHOUSE_REDIS_SENTINEL_MASTER"
            ),
            "{err}"
        );
    }
}
