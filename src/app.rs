//! Assembles and runs the pingora server: proxy listeners, the admin and probe listeners,
//! the maintenance task (reload triggers, traffic sampling, health checks, discovery),
//! signals, and the binary upgrade's hand-over.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use gatehouse_filters::{FilterKinds, FilterRuntime};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{
    ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service as ListeningService;

use crate::admin::{status::TrafficSampler, Admin, AdminAuth};
use crate::config::{self, ConfigErrors, LoadedConfig};
use crate::lifecycle::{self, Binder, ListenerSpec, Readiness, Tracked};
use crate::state::{compile, reload, State};
use crate::telemetry::Telemetry;

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
    /// Take the listening sockets over from a running gatehouse through
    /// `shutdown.upgrade_socket` (pingora's `--upgrade`); that process hands them over on
    /// SIGQUIT.
    pub upgrade: bool,
    /// The binary SIGUSR2 starts for an upgrade: the path this process was started from,
    /// resolved at start (after the file is replaced, `/proc/self/exe` names the old one).
    /// `None` (the gateway inside another program): SIGUSR2 is ignored.
    pub exe: Option<PathBuf>,
    /// Gives the allocator's freed memory back to the OS. The maintenance thread calls it
    /// every second while the proxy is quiet (no request in the last second, none in
    /// flight), and each proxy thread on itself when it goes quiet ([`crate::memory`]:
    /// mimalloc's per-thread heaps are collected only by their own thread), so RSS returns
    /// toward idle after a burst; the binary passes its allocator's collect function.
    pub release_free_memory: Option<fn()>,
    /// The custom filter kinds the config may use, beside the built-in ones.
    pub filter_kinds: FilterKinds,
}

impl RunOptions {
    /// Options for running the gateway inside another program (the demo, tests): no
    /// early exit, no upgrade, no allocator hook.
    pub fn embedded(config_path: PathBuf) -> Self {
        Self {
            config_path,
            exit_when_drained: false,
            upgrade: false,
            exe: None,
            release_free_memory: None,
            filter_kinds: FilterKinds::new(),
        }
    }
}

/// Builds the long-lived state from a loaded config, with the custom filter kinds in
/// `filter_kinds` (kept for every reload).
pub fn build_state(
    loaded: LoadedConfig,
    config_path: Option<PathBuf>,
    filter_kinds: FilterKinds,
) -> Result<Arc<State>, StartError> {
    let telemetry = Arc::new(Telemetry::new()?);
    telemetry.set_endpoint_labels(loaded.config.metrics.endpoint_labels);
    let redis_tls = match loaded.config.redis.as_ref() {
        Some(r) => r.tls_material().map_err(StartError::Other)?,
        None => None,
    };
    let redis = loaded.config.redis.as_ref().map(|r| {
        let mut settings = gatehouse_filters::RedisSettings::with_topology(r.topology());
        settings.timeout = r.timeout.get();
        settings.tls = redis_tls.clone();
        settings
    });
    let filter_runtime = Arc::new(
        FilterRuntime::new(redis, &telemetry.metrics.registry)
            .map_err(|e| StartError::Other(e.message))?
            .with_kinds(filter_kinds),
    );
    let hash = loaded.hash.clone();
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    let tls = crate::tls::TlsStores::new(&loaded.config, &telemetry)
        .map_err(|e| StartError::Other(format!("TLS: {e}")))?;
    let tracing = match &loaded.config.tracing {
        Some(t) => Some(
            gatehouse_otel::Tracing::start(tracing_settings(t))
                .map_err(|e| StartError::Other(format!("tracing: {e}")))?,
        ),
        None => None,
    };
    let snap = compile(loaded, None, &filter_runtime)?;
    tls.apply(&snap.tls_files);
    telemetry.config_loaded(&hash, "start");
    crate::state::publish::publish(&telemetry, &snap);
    let state = Arc::new(State {
        snapshot: arc_swap::ArcSwap::from_pointee(snap),
        telemetry,
        filter_runtime,
        config_path,
        started_at: SystemTime::now(),
        service_pools: Default::default(),
        draining: std::sync::atomic::AtomicBool::new(false),
        tls,
        tracing,
        redis_tls,
    });
    state.filter_runtime.wasm().set_upstreams(Arc::new(
        crate::state::calls::SnapshotUpstreams::new(&state),
    ));
    Ok(state)
}

/// The exporter's settings from the `tracing` section.
fn tracing_settings(t: &crate::config::model::TracingConfig) -> gatehouse_otel::Settings {
    use crate::config::model::OtlpProtocol;
    let protocol = match t.protocol {
        OtlpProtocol::HttpProtobuf => gatehouse_otel::Protocol::HttpProtobuf,
        OtlpProtocol::Grpc => gatehouse_otel::Protocol::Grpc,
    };
    let mut s = gatehouse_otel::Settings::new(&t.otlp_endpoint, protocol, &t.service_name);
    s.ratio = t.sampler.ratio;
    s.scheduled_delay = t.scheduled_delay.get();
    s.max_queue_size = t.max_queue_size;
    s.export_timeout = t.export_timeout.get();
    s
}

/// SIGTERM: graceful (stop accepting, drain up to the grace period); SIGINT: fast;
/// SIGQUIT: pingora's graceful upgrade (hand the listening sockets to a new process
/// started with `--upgrade`, then drain); SIGUSR2: start that new process from the
/// binary's path and, once it waits for the sockets, hand them over as on SIGQUIT.
struct Signals {
    state: Arc<State>,
    successor: Successor,
    /// `shutdown.drain_delay`.
    drain_delay: Duration,
}

impl Signals {
    /// After SIGTERM: not ready (`/readyz` 503 `draining`, responses ask clients to close)
    /// while the listeners keep accepting for `shutdown.drain_delay`, so that load
    /// balancers take the gateway out before its sockets close; then the graceful stop.
    /// SIGINT meanwhile is a fast shutdown; a second SIGTERM ends the delay.
    async fn drain_delay(
        &self,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> ShutdownSignal {
        self.state.draining.store(true, Ordering::Relaxed);
        if self.drain_delay.is_zero() {
            tracing::info!("SIGTERM: draining");
            return ShutdownSignal::GracefulTerminate;
        }
        tracing::info!(
            drain_delay_ms = self.drain_delay.as_millis() as u64,
            "SIGTERM: not ready; listeners keep accepting until the drain delay ends"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.drain_delay) => {
                tracing::info!("drain delay over: draining");
                ShutdownSignal::GracefulTerminate
            }
            _ = term.recv() => {
                tracing::info!("second SIGTERM: drain delay cut short; draining");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut usr2)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::user_defined2()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        let sig = loop {
            tokio::select! {
                _ = term.recv() => {
                    lifecycle::notify(&[sd_notify::NotifyState::Stopping]);
                    break self.drain_delay(&mut term, &mut int).await;
                }
                _ = int.recv() => {
                    lifecycle::notify(&[sd_notify::NotifyState::Stopping]);
                    break ShutdownSignal::FastShutdown;
                }
                _ = quit.recv() => {
                    tracing::info!(socket = %self.successor.upgrade_socket.display(), "SIGQUIT: handing the listening sockets over, then draining");
                    break ShutdownSignal::GracefulUpgrade;
                }
                _ = usr2.recv() => {
                    let successor = self.successor.clone();
                    match tokio::task::spawn_blocking(move || successor.start()).await {
                        Ok(Ok(pid)) => {
                            tracing::info!(new_pid = pid, "SIGUSR2: the new process waits for the listening sockets; handing them over, then draining");
                            break ShutdownSignal::GracefulUpgrade;
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "SIGUSR2: upgrade abandoned; this process keeps serving"),
                        Err(e) => tracing::error!(error = %e, "SIGUSR2: upgrade abandoned; this process keeps serving"),
                    }
                }
            }
        };
        // Responses now ask clients to close, so keep-alive clients move to the new
        // process (upgrade) or away (terminate) before idle connections are dropped.
        self.state.draining.store(true, Ordering::Relaxed);
        sig
    }
}

/// How SIGUSR2 starts the process that takes over: the binary at the path this one was
/// started from (replaced on disk by the new version), same config, `--upgrade`.
#[derive(Clone)]
struct Successor {
    exe: Option<PathBuf>,
    config_path: PathBuf,
    upgrade_socket: PathBuf,
}

impl Successor {
    /// How long the new process may take to load its config and wait on the socket.
    const START_WITHIN: Duration = Duration::from_secs(30);

    /// Starts the new process and returns its pid once it listens on the upgrade socket
    /// (by then it has loaded and compiled its config); an error when it exits first or
    /// does not get there in time, and then this process keeps everything.
    fn start(&self) -> Result<u32, String> {
        // pingora leaves the socket file behind after a hand-over; a stale one would look
        // like the new process waiting.
        let exe = self
            .exe
            .as_ref()
            .ok_or("this process was not started as the gatehouse binary")?;
        let _ = std::fs::remove_file(&self.upgrade_socket);
        let mut child = std::process::Command::new(exe)
            .arg("run")
            .arg("--upgrade")
            .arg("-c")
            .arg(&self.config_path)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let start = std::time::Instant::now();
        while start.elapsed() < Self::START_WITHIN {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the new process exited with {status} before taking over"
                ));
            }
            if self.upgrade_socket.exists() {
                return Ok(child.id());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "the new process did not listen on {} within {:?}",
            self.upgrade_socket.display(),
            Self::START_WITHIN
        ))
    }
}

/// How long nothing must be in flight before a draining process exits: longer than the
/// second a connection accepted just before the listener stopped has to deliver its request
/// (vendored pingora patch 6), so that such a request is answered, not reset by the exit.
const QUIET_BEFORE_EXIT: Duration = Duration::from_millis(1200);

/// Ends the process once the grace period has begun (after SIGTERM, or after the
/// hand-over of an upgrade) and nothing has been in flight for [`QUIET_BEFORE_EXIT`]:
/// pingora itself would sleep the whole grace period.
fn exit_when_drained(server: &Server, state: Arc<State>, grace: Duration) {
    let mut phases = server.watch_execution_phase();
    std::thread::spawn(move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(ExecutionPhase::Terminated)
                | Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                _ => {}
            }
        }
        let start = std::time::Instant::now();
        let mut quiet_since = None;
        while start.elapsed() < grace {
            if state.telemetry.metrics.inflight.get() > 0 {
                quiet_since = None;
            } else if quiet_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= QUIET_BEFORE_EXIT
            {
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

/// Periodic work that must follow the *current* snapshot: reload triggers, traffic
/// samples, health checks and discovery.
struct Maintenance {
    state: Arc<State>,
    sampler: Arc<TrafficSampler>,
    release_free_memory: Option<fn()>,
    /// Follows the running config's certificate files (a reload may name others).
    cert_watch: Arc<reload::CertWatch>,
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
        let upkeep = crate::state::maintain::Maintainer::new(self.state.clone());
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    self.sampler.sample(&self.state);
                    watch_certificates(&self.cert_watch, &self.state);
                    if self.state.current().loaded.config.redis.is_some() {
                        // Keeps gatehouse_redis_up true to life even without rate-limited traffic.
                        let rt = self.state.filter_runtime.clone();
                        tokio::spawn(async move { rt.check_redis().await });
                    }
                }
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let state = self.state.clone();
                    lifecycle::notify_reloading();
                    let _ = tokio::task::spawn_blocking(move || reload::reload(&state, "signal")).await;
                    lifecycle::notify_reloaded();
                }
                _ = quiet_tick.tick(), if self.release_free_memory.is_some() => {
                    let m = &self.state.telemetry.metrics;
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

/// Reloads when the file's content hash differs from the running one, or when the last
/// reload failed: restoring the running text after a broken edit is then a successful
/// (no-op) reload that clears DEGRADED. A file that cannot be read as text (not UTF-8, no
/// permission) goes to the reload like any other, so it is refused and reported exactly
/// as SIGHUP and `POST /admin/reload` report it.
fn reload_if_changed(state: &State, path: &Path) {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        // Mid-rename the file may be missing for a moment; the next event retries.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(_) => Vec::new(),
    };
    if !state.telemetry.events.last_reload_failed()
        && std::str::from_utf8(&bytes)
            .is_ok_and(|text| config::hash_text(text) == state.current().loaded.hash)
    {
        return;
    }
    let _ = reload::reload(state, "file");
}

/// Points the certificate watcher at the files the running config names.
fn watch_certificates(watch: &reload::CertWatch, state: &State) {
    watch.sync(crate::tls::TlsStores::files_of(&state.current().tls_files));
}

/// The ACME certificate of each TLS listener that has `tls.acme`, renewed by a background
/// service once every listener is bound (the ACME server validates against them).
fn acme_managers(
    cfg: &config::GatewayConfig,
    config_path: &Path,
    state: &Arc<State>,
    readiness: &Arc<Readiness>,
) -> Vec<crate::tls::acme::AcmeManager> {
    let config_dir = config_path.parent().unwrap_or(Path::new("."));
    cfg.listeners
        .iter()
        .filter_map(|l| {
            let acme = l.tls.as_ref()?.acme.clone()?;
            let store = state.tls.get(&l.name)?.clone();
            let ready = readiness.clone();
            Some(crate::tls::acme::AcmeManager::new(
                &l.name,
                acme,
                config_dir,
                store,
                state.tls.http01.clone(),
                state.telemetry.clone(),
                Box::new(move || ready.check().is_ok()),
            ))
        })
        .collect()
}

/// Adds a listening service whose socket `spec` counts for `/readyz`, started only after
/// the binder has bound every listener.
fn add_tracked<S: pingora_core::services::ServiceWithDependents + 'static>(
    server: &mut Server,
    service: S,
    spec: &ListenerSpec,
    readiness: &Arc<Readiness>,
    binder: &pingora_core::services::ServiceHandle,
) {
    server
        .add_service(Tracked::new(
            service,
            vec![spec.address.clone()],
            readiness.clone(),
        ))
        .add_dependency(binder);
}

/// Loads the config, builds the server and runs it until shutdown.
pub fn run(opts: RunOptions) -> Result<(), StartError> {
    let loaded = config::load_file(&opts.config_path)?;
    let cfg = loaded.config.clone();
    let state = build_state(
        loaded,
        Some(opts.config_path.clone()),
        opts.filter_kinds.clone(),
    )?;
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
    conf.upgrade_sock = cfg.shutdown.upgrade_socket.clone();
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
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With --upgrade: receive the listening sockets of the running process (it sends them
    // on SIGQUIT); pingora exits with status 1 when none arrive.
    server.bootstrap();

    let proxy_specs: Vec<ListenerSpec> = cfg
        .listeners
        .iter()
        .map(|l| ListenerSpec {
            name: l.name.clone(),
            address: l.address.clone(),
        })
        .collect();
    let admin_spec = ListenerSpec {
        name: "admin".into(),
        address: cfg.admin.address.clone(),
    };
    let probe_spec = cfg.admin.probe_address.as_ref().map(|a| ListenerSpec {
        name: "probe".into(),
        address: a.clone(),
    });
    let all_specs: Vec<ListenerSpec> = proxy_specs
        .iter()
        .chain(std::iter::once(&admin_spec))
        .chain(probe_spec.iter())
        .cloned()
        .collect();
    let readiness = Readiness::new(&all_specs);

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
        Admin::new(state.clone(), auth, sampler.clone(), readiness.clone()),
    );
    admin.add_tcp(&admin_spec.address);
    admin.threads = Some(1);
    // A renewed certificate or key file reloads like an edit of the config file does.
    let cert_state = state.clone();
    let cert_watch = Arc::new(
        reload::CertWatch::start(Duration::from_millis(100), move || {
            let _ = reload::reload(&cert_state, "certificate");
        })
        .map_err(|e| StartError::Other(format!("cannot watch certificate files: {e}")))?,
    );
    watch_certificates(&cert_watch, &state);
    if let Some(release) = opts.release_free_memory {
        crate::memory::set_release(release);
    }
    let mut maintenance = background_service(
        "gatehouse maintenance",
        Maintenance {
            state: state.clone(),
            sampler: sampler.clone(),
            release_free_memory: opts.release_free_memory,
            cert_watch: cert_watch.clone(),
        },
    );
    maintenance.threads = Some(1);
    let binder = server.add_service(Binder::new(all_specs.clone()));
    for (proxy, spec) in proxies.into_iter().zip(&proxy_specs) {
        add_tracked(&mut server, proxy, spec, &readiness, &binder);
    }
    add_tracked(&mut server, admin, &admin_spec, &readiness, &binder);
    if let Some(probe_spec) = &probe_spec {
        let mut probe = ListeningService::new(
            "gatehouse probe".to_string(),
            Admin::probes(state.clone(), sampler, readiness.clone()),
        );
        probe.add_tcp(&probe_spec.address);
        probe.threads = Some(1);
        add_tracked(&mut server, probe, probe_spec, &readiness, &binder);
    }
    server.add_service(maintenance);
    for acme in acme_managers(&cfg, &opts.config_path, &state, &readiness) {
        let mut service = background_service("gatehouse acme", acme);
        service.threads = Some(1);
        server.add_service(service);
    }

    let watch_state = state.clone();
    let watch_path = opts.config_path.clone();
    let _watcher = reload::watch_file(&opts.config_path, Duration::from_millis(100), move || {
        reload_if_changed(&watch_state, &watch_path);
        watch_certificates(&cert_watch, &watch_state);
    })
    .map_err(|e| StartError::Other(format!("cannot watch {}: {e}", opts.config_path.display())))?;

    tracing::info!(
        listeners = ?all_specs.iter().map(|l| format!("{}={}", l.name, l.address)).collect::<Vec<_>>(),
        upgrade = opts.upgrade,
        "gatehouse starting"
    );
    if opts.exit_when_drained {
        exit_when_drained(&server, state.clone(), cfg.shutdown.grace_period.get());
    }
    let config_path = std::path::absolute(&opts.config_path).unwrap_or(opts.config_path.clone());
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            state,
            drain_delay: cfg.shutdown.drain_delay.get(),
            successor: Successor {
                exe: opts.exe.clone(),
                config_path,
                upgrade_socket: PathBuf::from(&cfg.shutdown.upgrade_socket),
            },
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
