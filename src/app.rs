//! Assembles and runs the pingora server: proxy listeners, the admin listener, and the
//! maintenance task (reload triggers, traffic sampling, health checks, discovery).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use gatehouse_filters::FilterRuntime;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service as ListeningService;

use crate::admin::{status::TrafficSampler, Admin, AdminAuth};
use crate::config::{self, ConfigErrors, LoadedConfig};
use crate::metrics::Metrics;
use crate::state::events::EventLog;
use crate::state::{compile, reload, State};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config was refused.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Something else at start (bad admin auth env, watcher).
    #[error("{0}")]
    Other(String),
}

/// How to run.
pub struct RunOptions {
    /// Config file (watched for changes).
    pub config_path: PathBuf,
    /// Exit the process as soon as nothing is in flight during a graceful shutdown.
    pub exit_when_drained: bool,
    /// Gives the allocator's freed memory back to the OS. Called every second while the
    /// proxy is quiet (no request in the last second, none in flight), so RSS returns to
    /// near idle after a burst; the binary passes its allocator's collect function.
    pub release_free_memory: Option<fn()>,
}

/// Builds the long-lived state from a loaded config.
pub fn build_state(
    loaded: LoadedConfig,
    config_path: Option<PathBuf>,
) -> Result<Arc<State>, StartError> {
    let metrics = Metrics::new()?;
    let redis = loaded.config.redis.as_ref().map(|r| {
        let mut settings = gatehouse_filters::RedisSettings::new(r.url.clone());
        settings.timeout = r.timeout.get();
        settings
    });
    let filter_runtime = Arc::new(
        FilterRuntime::new(redis, &metrics.registry).map_err(|e| StartError::Other(e.message))?,
    );
    let hash = loaded.hash.clone();
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    let snap = compile(loaded, None, &filter_runtime)?;
    let events = EventLog::default();
    reload::record_success(&metrics, &events, &hash, "start");
    let state = Arc::new(State {
        snapshot: arc_swap::ArcSwap::from_pointee(snap),
        metrics,
        filter_runtime,
        events,
        config_path,
        started_at: SystemTime::now(),
        service_pools: Default::default(),
        draining: std::sync::atomic::AtomicBool::new(false),
    });
    reload::publish_health(&state, &state.current());
    Ok(state)
}

/// SIGTERM: graceful (stop accepting, drain up to the grace period); SIGINT: fast;
/// SIGQUIT: pingora's graceful upgrade. Marks the state as draining first.
struct Signals {
    state: Arc<State>,
    exit_when_drained: bool,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        let sig = tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
        };
        if matches!(sig, ShutdownSignal::GracefulTerminate) {
            tracing::info!(
                grace_seconds = self.grace.as_secs_f64(),
                "SIGTERM: draining"
            );
            self.state.draining.store(true, Ordering::Relaxed);
            if self.exit_when_drained {
                let state = self.state.clone();
                let grace = self.grace;
                // pingora sleeps the whole grace period; end it as soon as nothing is in flight.
                std::thread::spawn(move || {
                    let start = std::time::Instant::now();
                    std::thread::sleep(Duration::from_millis(100));
                    while start.elapsed() < grace {
                        if state.metrics.inflight.get() <= 0 {
                            tracing::info!(
                                after_ms = start.elapsed().as_millis() as u64,
                                "drained; exiting"
                            );
                            std::process::exit(0);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        }
        sig
    }
}

/// Periodic work that must follow the *current* snapshot: reload triggers, traffic
/// samples, health checks and discovery.
struct Maintenance {
    state: Arc<State>,
    sampler: Arc<TrafficSampler>,
    release_free_memory: Option<fn()>,
}

/// Tells when the proxy is quiet: no request finished since the last look and none in
/// flight.
#[derive(Default)]
struct QuietWatch {
    last_count: Option<u64>,
}

impl QuietWatch {
    /// Whether nothing happened since the last look.
    fn quiet(&mut self, finished: u64, inflight: i64) -> bool {
        let quiet = self.last_count == Some(finished) && inflight <= 0;
        self.last_count = Some(finished);
        quiet
    }
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut quiet_tick = tokio::time::interval(Duration::from_secs(1));
        let mut quiet = QuietWatch::default();
        let upkeep = crate::upstream::maintain::Maintainer::new(self.state.clone());
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    self.sampler.sample(&self.state);
                    if self.state.current().loaded.config.redis.is_some() {
                        // Keeps gatehouse_redis_up true to life even without rate-limited traffic.
                        let rt = self.state.filter_runtime.clone();
                        tokio::spawn(async move { rt.check_redis().await });
                    }
                }
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let state = self.state.clone();
                    let _ = tokio::task::spawn_blocking(move || reload::reload(&state, "signal")).await;
                }
                _ = quiet_tick.tick(), if self.release_free_memory.is_some() => {
                    let m = &self.state.metrics;
                    let finished = m.request_duration_all.get_sample_count();
                    if quiet.quiet(finished, m.inflight.get()) {
                        if let Some(release) = self.release_free_memory {
                            release();
                        }
                    }
                }
                _ = upkeep.step() => {}
            }
        }
    }
}

/// Reloads when the file's content hash differs from the running one.
fn reload_if_changed(state: &State, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        // Mid-rename the file may be missing for a moment; the next event retries.
        return;
    };
    if config::hash_text(&text) == state.current().loaded.hash {
        return;
    }
    let _ = reload::reload(state, "file");
}

/// Loads the config, builds the server and runs it until shutdown.
pub fn run(opts: RunOptions) -> Result<(), StartError> {
    let loaded = config::load_file(&opts.config_path)?;
    let cfg = loaded.config.clone();
    let state = build_state(loaded, Some(opts.config_path.clone()))?;
    let auth = AdminAuth::from_config(&cfg.admin).map_err(StartError::Other)?;

    let mut conf = ServerConf {
        threads: cfg
            .runtime
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        work_stealing: cfg.runtime.work_stealing,
        upstream_keepalive_pool_size: cfg.runtime.upstream_keepalive_pool_size,
        grace_period_seconds: Some(cfg.shutdown.grace_period.get().as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    conf.pid_file = std::env::temp_dir()
        .join(format!("gatehouse-{}.pid", std::process::id()))
        .display()
        .to_string();
    conf.upgrade_sock = std::env::temp_dir()
        .join(format!("gatehouse-{}.sock", std::process::id()))
        .display()
        .to_string();
    // SIGHUP's default action kills the process; take it over now, before the maintenance
    // service listens for it (a handler once installed stays for the process's life).
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        rt.block_on(async {
            let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        });
    }
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // One service per listener: each has its own request limits and connection cap.
    let proxies: Vec<_> = cfg
        .listeners
        .iter()
        .map(|l| {
            crate::proxy::listener::service(
                &server.configuration,
                state.clone(),
                l,
                cfg.runtime.downstream_read_buffer,
            )
        })
        .collect();
    let sampler = Arc::new(TrafficSampler::default());
    let mut admin = ListeningService::new(
        "gatehouse admin".to_string(),
        Admin::new(state.clone(), auth, sampler.clone()),
    );
    admin.add_tcp(&cfg.admin.address);
    admin.threads = Some(1);
    let mut maintenance = background_service(
        "gatehouse maintenance",
        Maintenance {
            state: state.clone(),
            sampler,
            release_free_memory: opts.release_free_memory,
        },
    );
    maintenance.threads = Some(1);
    for proxy in proxies {
        server.add_service(proxy);
    }
    server.add_service(admin);
    server.add_service(maintenance);

    let watch_state = state.clone();
    let watch_path = opts.config_path.clone();
    let _watcher = reload::watch_file(&opts.config_path, Duration::from_millis(150), move || {
        reload_if_changed(&watch_state, &watch_path)
    })
    .map_err(|e| StartError::Other(format!("cannot watch {}: {e}", opts.config_path.display())))?;

    tracing::info!(
        listeners = ?cfg.listeners.iter().map(|l| l.address.as_str()).collect::<Vec<_>>(),
        admin = %cfg.admin.address,
        "gatehouse starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            state,
            exit_when_drained: opts.exit_when_drained,
            grace: cfg.shutdown.grace_period.get(),
        }),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::QuietWatch;

    #[test]
    fn quiet_means_no_request_since_the_last_look() {
        let mut q = QuietWatch::default();
        assert!(!q.quiet(0, 0), "the first look has nothing to compare");
        assert!(q.quiet(0, 0), "no request since the last look");
        assert!(q.quiet(0, 0));
        assert!(!q.quiet(5, 0), "busy again");
        assert!(!q.quiet(5, 2), "requests in flight are not quiet");
        assert!(q.quiet(5, 0));
    }
}
