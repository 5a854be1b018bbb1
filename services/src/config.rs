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
    /// Redis for the registry and the event streams (one server, or a Redis Cluster
    /// through its seed nodes); None = in-process events.
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

/// Generates a random 32-byte hex secret.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
