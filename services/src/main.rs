//! `gatehouse-services`: run one reference service, all of them, or the demo.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gatehouse_services::config::{random_secret, Mode, Ports, RedisForms, SagaSettings, Settings};
use gatehouse_services::faults::FaultConfig;
use gatehouse_services::server::{Kind, System};

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse-services",
    version,
    about = "Reference services behind the gatehouse gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Directory of the SQLite files.
    #[arg(long, env = "GATEHOUSE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// mysql://user[:password]@host:port (one database per service is created); unset = SQLite.
    #[arg(long, env = "GATEHOUSE_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Database name prefix: <prefix>_<service>.
    #[arg(long, env = "GATEHOUSE_DB_PREFIX", default_value = "gh", global = true)]
    db_prefix: String,
    /// Maximum connections of each service's pool.
    #[arg(
        long,
        env = "GATEHOUSE_DB_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    db_max_connections: u32,
    /// Redis for the registry and the event streams; unset = in-process events. The URL,
    /// the cluster and the Sentinel forms exclude each other (checked in `settings`, which
    /// names the environment variables too).
    #[arg(long, env = "GATEHOUSE_REDIS_URL", global = true)]
    redis_url: Option<String>,
    /// A Redis Cluster instead of one server: its seed nodes' URLs, comma-separated
    /// (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`).
    #[arg(long, env = "GATEHOUSE_REDIS_CLUSTER", global = true)]
    redis_cluster: Option<String>,
    /// A Sentinel-managed primary instead of one server: the name the sentinels monitor
    /// (with `--redis-sentinel`).
    #[arg(long, env = "GATEHOUSE_REDIS_SENTINEL_MASTER", global = true)]
    redis_sentinel_master: Option<String>,
    /// The sentinels' URLs, comma-separated (`redis://10.0.0.1:26379,redis://10.0.0.2:26379`);
    /// auth and TLS of the data nodes come from the first one.
    #[arg(long, env = "GATEHOUSE_REDIS_SENTINEL", global = true)]
    redis_sentinel: Option<String>,
    /// Prefix of every Redis key.
    #[arg(
        long,
        env = "GATEHOUSE_REDIS_PREFIX",
        default_value = "gatehouse",
        global = true
    )]
    redis_prefix: String,
    /// production | test | demo (test and demo enable fault injection and opening balances).
    #[arg(
        long,
        env = "GATEHOUSE_MODE",
        default_value = "production",
        global = true
    )]
    mode: String,
    /// Address to listen on.
    #[arg(
        long,
        env = "GATEHOUSE_BIND",
        default_value = "127.0.0.1",
        global = true
    )]
    bind: String,
    /// Host advertised in the registry.
    #[arg(
        long,
        env = "GATEHOUSE_ADVERTISE_HOST",
        default_value = "127.0.0.1",
        global = true
    )]
    advertise_host: String,
    /// User service port.
    #[arg(
        long,
        env = "GATEHOUSE_USER_PORT",
        default_value_t = 3001,
        global = true
    )]
    user_port: u16,
    /// Transaction service port.
    #[arg(
        long,
        env = "GATEHOUSE_TRANSACTION_PORT",
        default_value_t = 3003,
        global = true
    )]
    transaction_port: u16,
    /// Payment service port.
    #[arg(
        long,
        env = "GATEHOUSE_PAYMENT_PORT",
        default_value_t = 3004,
        global = true
    )]
    payment_port: u16,
    /// Notification service port.
    #[arg(
        long,
        env = "GATEHOUSE_NOTIFICATION_PORT",
        default_value_t = 3005,
        global = true
    )]
    notification_port: u16,
    /// Payment base URL for the saga (default http://127.0.0.1:<payment port>).
    #[arg(long, env = "GATEHOUSE_PAYMENT_URL", global = true)]
    payment_url: Option<String>,
    /// Notification base URL for the saga (default http://127.0.0.1:<notification port>).
    #[arg(long, env = "GATEHOUSE_NOTIFICATION_URL", global = true)]
    notification_url: Option<String>,
    /// Payment faults, e.g. fail=0.1,drop=0.1,delay=0.05,delay_ms=300 (test/demo mode only).
    #[arg(long, env = "GATEHOUSE_FAULTS", default_value = "", global = true)]
    faults: String,
    /// Tries of one saga step per run.
    #[arg(
        long,
        env = "GATEHOUSE_SAGA_STEP_ATTEMPTS",
        default_value_t = 4,
        global = true
    )]
    saga_step_attempts: u32,
    /// Timeout of one saga call, ms.
    #[arg(
        long,
        env = "GATEHOUSE_SAGA_CALL_TIMEOUT_MS",
        default_value_t = 2000,
        global = true
    )]
    saga_call_timeout_ms: u64,
    /// How often unfinished sagas are resumed, ms.
    #[arg(
        long,
        env = "GATEHOUSE_SAGA_RECOVERY_INTERVAL_MS",
        default_value_t = 2000,
        global = true
    )]
    saga_recovery_interval_ms: u64,
    /// Test mode only: do not run the history projection (exercises the write-model fallback).
    #[arg(long, env = "GATEHOUSE_DISABLE_PROJECTION", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    disable_projection: bool,
    /// Weight registered in the Redis registry.
    #[arg(
        long,
        env = "GATEHOUSE_REGISTRY_WEIGHT",
        default_value_t = 1,
        global = true
    )]
    registry_weight: u32,
    /// OTLP collector base URL for the services' spans (`http://127.0.0.1:4318`); unset:
    /// no tracing. The OpenTelemetry SDK's own variable.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    otlp_endpoint: Option<String>,
    /// `http/protobuf` or `grpc`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf",
        global = true
    )]
    otlp_protocol: String,
    /// Fraction of new traces kept (0.0 to 1.0); a caller's sampled flag wins.
    #[arg(
        long,
        env = "OTEL_TRACES_SAMPLER_ARG",
        default_value_t = 1.0,
        global = true
    )]
    trace_ratio: f64,
    /// Longest wait before a batch of spans is sent, in milliseconds.
    #[arg(
        long,
        env = "OTEL_BSP_SCHEDULE_DELAY",
        default_value_t = 5000,
        global = true
    )]
    otlp_schedule_delay_ms: u64,
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum Command {
    /// The user service (:3001).
    User,
    /// The payment service (:3004).
    Payment,
    /// The transaction service and saga coordinator (:3003).
    Transaction,
    /// The notification service (:3005).
    Notification,
    /// All four services in one process.
    All,
    /// All four services in demo mode on embedded SQLite, plus the gateway on :3000.
    Demo {
        /// Start from empty demo data: delete the demo's data directory (`data/demo`, or
        /// `--data-dir`) first, so a second walk-through starts like the first.
        #[arg(long)]
        fresh: bool,
        /// The demo's control API (`POST /services/<name>/stop`, `/start`; `GET /services`).
        #[arg(long, env = "GATEHOUSE_DEMO_CONTROL", default_value = "127.0.0.1:3010")]
        control: std::net::SocketAddr,
    },
}

fn settings(cli: &Cli) -> Result<Settings> {
    let demo = matches!(cli.command, Command::Demo { .. });
    let mode = if demo {
        Mode::Demo
    } else {
        Mode::parse(&cli.mode).map_err(anyhow::Error::msg)?
    };
    let faults = FaultConfig::parse(&cli.faults)
        .map_err(anyhow::Error::msg)
        .context("GATEHOUSE_FAULTS")?;
    let jwt_secret = match std::env::var("GATEHOUSE_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(s) => Some(s),
        None if demo => {
            tracing::info!(
                "GATEHOUSE_JWT_SECRET is unset: generated a random secret for this demo run"
            );
            Some(random_secret())
        }
        None => None,
    };
    let internal_token = match std::env::var("GATEHOUSE_INTERNAL_TOKEN")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(t) => t,
        None if matches!(cli.command, Command::All | Command::Demo { .. }) => random_secret(),
        None => anyhow::bail!(
            "GATEHOUSE_INTERNAL_TOKEN must be set when services run in separate processes \
             (every service checks it on service-to-service calls)"
        ),
    };
    let data_dir = cli.data_dir.clone().unwrap_or_else(|| {
        if demo {
            PathBuf::from("data/demo")
        } else {
            PathBuf::from("data")
        }
    });
    let redis = RedisForms {
        url: cli.redis_url.clone(),
        cluster: cli.redis_cluster.clone(),
        sentinel_master: cli.redis_sentinel_master.clone(),
        sentinel: cli.redis_sentinel.clone(),
    }
    .topology()
    .map_err(anyhow::Error::msg)?;
    Ok(Settings {
        mode,
        data_dir,
        database_url: if demo {
            None
        } else {
            cli.database_url.clone().filter(|s| !s.is_empty())
        },
        db_prefix: cli.db_prefix.clone(),
        db_max_connections: cli.db_max_connections,
        redis: redis.clone(),
        redis_prefix: cli.redis_prefix.clone(),
        jwt_secret,
        internal_token,
        bind_host: cli.bind.clone(),
        advertise_host: cli.advertise_host.clone(),
        ports: Ports {
            user: cli.user_port,
            transaction: cli.transaction_port,
            payment: cli.payment_port,
            notification: cli.notification_port,
        },
        payment_url: cli
            .payment_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", cli.payment_port)),
        notification_url: cli
            .notification_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", cli.notification_port)),
        peer_discovery: redis.is_some()
            && cli.payment_url.is_none()
            && cli.notification_url.is_none(),
        faults,
        saga: SagaSettings {
            step_attempts: cli.saga_step_attempts.max(1),
            call_timeout: Duration::from_millis(cli.saga_call_timeout_ms.max(10)),
            backoff: Duration::from_millis(50),
            recovery_interval: Duration::from_millis(cli.saga_recovery_interval_ms.max(50)),
            max_notify_attempts: 20,
        },
        registry_weight: cli.registry_weight.max(1),
        disable_projection: cli.disable_projection,
        tracing: tracing_settings(cli)?,
    })
}

/// The services' exporter settings from the OpenTelemetry variables, when an endpoint is set.
fn tracing_settings(cli: &Cli) -> Result<Option<gatehouse_otel::Settings>> {
    let Some(endpoint) = cli.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let protocol: gatehouse_otel::Protocol = cli
        .otlp_protocol
        .parse()
        .context("OTEL_EXPORTER_OTLP_PROTOCOL")?;
    if !(0.0..=1.0).contains(&cli.trace_ratio) {
        anyhow::bail!(
            "OTEL_TRACES_SAMPLER_ARG: {} is not between 0.0 and 1.0",
            cli.trace_ratio
        );
    }
    let mut s = gatehouse_otel::Settings::new(endpoint, protocol, "gatehouse-services");
    s.ratio = cli.trace_ratio;
    s.scheduled_delay = Duration::from_millis(cli.otlp_schedule_delay_ms.max(1));
    Ok(Some(s))
}

/// JSON lines on stdout, `RUST_LOG` directives: with the gateway built in (`demo`), the
/// gateway's own format (`gatehouse run`'s, access log included); without it,
/// tracing-subscriber's JSON. Never ANSI colours: this log is usually redirected.
fn init_logging() {
    const DEFAULT: &str = "info,sqlx=warn";
    #[cfg(feature = "demo")]
    gatehouse::telemetry::logging::init(std::env::var("RUST_LOG").ok().as_deref(), DEFAULT);
    #[cfg(not(feature = "demo"))]
    tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT)),
        )
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `demo --fresh`: removes the demo's data directory (a missing one is fine). Refuses a
/// path that cannot be a data directory of its own (the working directory, a root).
fn remove_demo_data(dir: &std::path::Path) -> Result<()> {
    let here = std::env::current_dir().ok();
    let canonical = dir.canonicalize().ok();
    if dir.as_os_str().is_empty()
        || dir.parent().is_none()
        || (canonical.is_some() && canonical == here.and_then(|h| h.canonicalize().ok()))
    {
        anyhow::bail!("demo --fresh: refusing to delete {}", dir.display());
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "demo --fresh: removed the demo data");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("demo --fresh: removing {}", dir.display())),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Demo { .. })
        && std::env::var("GATEHOUSE_JWT_SECRET").map_or(true, |s| s.is_empty())
    {
        // The demo's gateway verifies tokens with the secret named in config/demo.yaml
        // (`hs256_secret_env: GATEHOUSE_JWT_SECRET`); set it while the process is still
        // single-threaded, before any runtime starts.
        std::env::set_var("GATEHOUSE_JWT_SECRET", random_secret());
        eprintln!(
            "gatehouse demo: GATEHOUSE_JWT_SECRET was unset; generated a random one for this run"
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    init_logging();
    let settings = settings(&cli)?;
    if let Command::Demo { fresh: true, .. } = cli.command {
        remove_demo_data(&settings.data_dir)?;
    }
    let kinds: Vec<Kind> = match cli.command {
        Command::User => vec![Kind::User],
        Command::Payment => vec![Kind::Payment],
        Command::Transaction => vec![Kind::Transaction],
        Command::Notification => vec![Kind::Notification],
        Command::All | Command::Demo { .. } => Kind::ALL.to_vec(),
    };
    let mut system = if let Command::Demo { control, .. } = cli.command {
        gatehouse_services::demo::start(settings, control).await?
    } else {
        System::start(settings, &kinds).await?
    };
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutdown requested"),
        _ = system.wait() => {}
    }
    system.shutdown().await;
    Ok(())
}
