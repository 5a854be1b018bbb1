//! Starting services: databases, event wiring, background tasks, HTTP listeners, registry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};
use gatehouse_registry::{Heartbeat, Registry};
use serde_json::json;
use tokio::sync::watch;

use crate::config::Settings;
use crate::db::{Db, DbError};
use crate::events::{Bus, Publisher};
use crate::faults::FaultInjector;
use crate::metrics::{metrics_handler, track, Metrics, MetricsState};
use crate::saga::Coordinator;
use crate::switchboard::{Listening, Switchboard};
use crate::{notification, payment, transaction, user};

/// Errors starting the services.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A database could not be opened or migrated.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Redis is configured but unusable.
    #[error("redis: {0}")]
    Redis(String),
    /// Anything else in the configuration.
    #[error("configuration: {0}")]
    Config(String),
}

/// One of the four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// User service.
    User,
    /// Transaction service (saga coordinator).
    Transaction,
    /// Payment service.
    Payment,
    /// Notification service.
    Notification,
}

impl Kind {
    /// All four, in start order (dependencies first).
    pub const ALL: [Kind; 4] = [
        Kind::Payment,
        Kind::Notification,
        Kind::User,
        Kind::Transaction,
    ];

    /// The service name (registry key, metric label, database suffix).
    pub fn name(self) -> &'static str {
        match self {
            Kind::User => user::NAME,
            Kind::Transaction => transaction::NAME,
            Kind::Payment => payment::NAME,
            Kind::Notification => notification::NAME,
        }
    }

    fn port(self, s: &Settings) -> u16 {
        match self {
            Kind::User => s.ports.user,
            Kind::Transaction => s.ports.transaction,
            Kind::Payment => s.ports.payment,
            Kind::Notification => s.ports.notification,
        }
    }
}

/// A running service.
#[derive(Debug)]
pub struct Running {
    /// Its name.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    heartbeat: Option<Heartbeat>,
}

/// The services of this process and the switch that stops them.
#[derive(Debug)]
pub struct System {
    /// The running services.
    pub services: Vec<Running>,
    /// Their listeners, which the demo's control API stops and starts one by one.
    pub switchboard: Switchboard,
    shutdown: watch::Sender<bool>,
}

async fn health(State(db): State<Db>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(2), db.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health: database check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "reason": "database" })),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": "database timeout" })),
        ),
    }
}

/// Runs each request's handler in its own task, so that a client that disconnects (or a
/// caller that times out) cannot cancel a handler half way through a database transaction.
///
/// A future dropped right after sqlx's `BEGIN` was executed but before it was acknowledged
/// leaves a pooled connection inside a transaction forever (holding SQLite's write lock,
/// and refusing every later `BEGIN IMMEDIATE`): we saw exactly that in the bank test when
/// the coordinator was SIGKILLed with calls in flight.
async fn run_to_completion(req: Request, next: Next) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "request handler panicked");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": { "code": "internal", "message": "internal error" } })),
            )
                .into_response()
        }
    }
}

fn finish(routes: Router, db: &Db, metrics: &Metrics, tracer: crate::trace::Tracer) -> Router {
    let ops = Router::new()
        .route("/health", get(health))
        .with_state(db.clone())
        .merge(
            Router::new()
                .route("/metrics", get(metrics_handler))
                .with_state(MetricsState {
                    metrics: metrics.clone(),
                    db: db.clone(),
                }),
        );
    // /health and /metrics are polled: they get no spans.
    routes
        .layer(middleware::from_fn_with_state(
            tracer,
            crate::trace::server_span,
        ))
        .merge(ops)
        .layer(middleware::from_fn(run_to_completion))
        .layer(middleware::from_fn_with_state(metrics.clone(), track))
}

/// The outbox publisher of a service that writes events, kept in `publishers` until every
/// consumer has subscribed; the handle returned wakes it after a commit.
fn outbox(
    publishers: &mut Vec<Publisher>,
    name: &'static str,
    db: &Db,
    bus: &Bus,
    metrics: &Metrics,
) -> Arc<tokio::sync::Notify> {
    let publisher = Publisher::new(name, db, bus, metrics);
    let wake = publisher.wake.clone();
    publishers.push(publisher);
    wake
}

struct Prepared {
    kind: Kind,
    router: Router,
}

impl System {
    /// Opens every database, wires events, then starts tasks and listeners of `kinds`.
    pub async fn start(settings: Settings, kinds: &[Kind]) -> Result<System, StartError> {
        let settings = Arc::new(settings);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (bus, registry) = match &settings.redis {
            Some(topology) => {
                let bus = Bus::redis(topology, &settings.redis_prefix)
                    .await
                    .map_err(|e| StartError::Redis(format!("event bus: {e}")))?;
                let reg = Registry::connect_topology(
                    topology,
                    &format!("{}:registry", settings.redis_prefix),
                )
                .await
                .map_err(|e| StartError::Redis(e.to_string()))?;
                (bus, Some(reg))
            }
            None => (Bus::local(), None),
        };
        tracing::info!(?bus, "event delivery");
        let mut prepared = Vec::new();
        let mut publishers = Vec::new();
        let mut coordinators = Vec::new();
        for &kind in kinds {
            let name = kind.name();
            let metrics = Metrics::new(name)?;
            let instance = format!("{}:{}", settings.advertise_host, kind.port(&settings));
            let tracer = crate::trace::start(settings.tracing.as_ref(), name)
                .map_err(|e| StartError::Config(format!("tracing: {e}")))?;
            let router = match kind {
                Kind::Payment => {
                    let db = Db::open(&settings, name, payment::MIGRATIONS).await?;
                    let st = payment::PaymentState {
                        db: db.clone(),
                        metrics: metrics.clone(),
                        faults: Arc::new(FaultInjector::new(if settings.mode.testing() {
                            settings.faults
                        } else {
                            Default::default()
                        })),
                        settings: settings.clone(),
                    };
                    finish(payment::router(st), &db, &metrics, tracer)
                }
                Kind::Notification => {
                    let db = Db::open(&settings, name, notification::MIGRATIONS).await?;
                    let st = notification::NotificationState {
                        db: db.clone(),
                        metrics: metrics.clone(),
                        settings: settings.clone(),
                    };
                    bus.subscribe(
                        notification::CONSUMER,
                        &instance,
                        notification::handler(st.clone()),
                        shutdown_rx.clone(),
                    );
                    finish(notification::router(st), &db, &metrics, tracer)
                }
                Kind::User => {
                    let db = Db::open(&settings, name, user::MIGRATIONS).await?;
                    let wake = outbox(&mut publishers, name, &db, &bus, &metrics);
                    let st = user::UserState {
                        db: db.clone(),
                        metrics: metrics.clone(),
                        settings: settings.clone(),
                        wake,
                    };
                    finish(user::router(st), &db, &metrics, tracer)
                }
                Kind::Transaction => {
                    let db = Db::open(&settings, name, transaction::MIGRATIONS).await?;
                    let wake = outbox(&mut publishers, name, &db, &bus, &metrics);
                    if settings.disable_projection && settings.mode.testing() {
                        tracing::warn!("history projection disabled (test mode): history reads fall back to the write model");
                    } else {
                        bus.subscribe(
                            transaction::PROJECTION,
                            &instance,
                            transaction::projection_handler(db.clone(), metrics.clone()),
                            shutdown_rx.clone(),
                        );
                    }
                    let coordinator = Arc::new(
                        Coordinator::new(
                            db.clone(),
                            settings.clone(),
                            metrics.clone(),
                            wake,
                            registry.clone().filter(|_| settings.peer_discovery),
                            tracer.clone(),
                        )
                        .map_err(|e| StartError::Config(format!("http client: {e}")))?,
                    );
                    coordinators.push(coordinator.clone());
                    let st = transaction::TransactionState {
                        db: db.clone(),
                        metrics: metrics.clone(),
                        coordinator,
                        settings: settings.clone(),
                    };
                    finish(transaction::router(st), &db, &metrics, tracer)
                }
            };
            prepared.push(Prepared { kind, router });
        }
        // Every consumer is subscribed before any publisher runs (matters for in-process delivery).
        for p in publishers {
            p.spawn(shutdown_rx.clone());
        }
        let mut services = Vec::new();
        let mut listening = Vec::new();
        for p in prepared {
            let port = p.kind.port(&settings);
            let bind = format!("{}:{}", settings.bind_host, port);
            let listener = tokio::net::TcpListener::bind(&bind)
                .await
                .map_err(|source| StartError::Bind {
                    addr: bind.clone(),
                    source,
                })?;
            let serving = Listening::start(listener, p.router, &shutdown_rx).map_err(|source| {
                StartError::Bind {
                    addr: bind.clone(),
                    source,
                }
            })?;
            let addr = serving.addr();
            listening.push((p.kind.name(), serving));
            let heartbeat = match &registry {
                Some(reg) => {
                    let member = format!("{}:{}", settings.advertise_host, addr.port());
                    match reg
                        .spawn_heartbeat(
                            p.kind.name(),
                            &member,
                            settings.registry_weight,
                            Duration::from_secs(15),
                            Duration::from_secs(5),
                        )
                        .await
                    {
                        Ok(h) => Some(h),
                        Err(e) => {
                            tracing::warn!(service = p.kind.name(), error = %e, "registry registration failed; serving anyway");
                            None
                        }
                    }
                }
                None => None,
            };
            tracing::info!(service = p.kind.name(), %addr, "service listening");
            services.push(Running {
                name: p.kind.name(),
                addr,
                heartbeat,
            });
        }
        // Resume unfinished sagas only once the listeners are up.
        for c in coordinators {
            c.spawn_recovery(shutdown_rx.clone());
        }
        let switchboard = Switchboard::new(listening, shutdown_rx);
        Ok(System {
            services,
            switchboard,
            shutdown,
        })
    }

    /// Waits until a listener stops on its own (an error) or shutdown is requested. A
    /// service stopped through the switchboard is not a failure.
    pub async fn wait(&mut self) {
        let mut rx = self.shutdown.subscribe();
        let board = self.switchboard.clone();
        let any_failed = async move {
            loop {
                if let Some(name) = board.failed() {
                    return name;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            _ = rx.wait_for(|v| *v) => {}
            name = any_failed => tracing::error!(service = name, "a service stopped unexpectedly"),
        }
    }

    /// Stops every service: deregisters, stops listeners and background tasks.
    pub async fn shutdown(self) {
        for s in &self.services {
            tracing::info!(service = s.name, "stopping");
        }
        let _ = self.shutdown.send(true);
        for s in self.services {
            if let Some(h) = s.heartbeat {
                h.stop().await;
            }
        }
        for task in self.switchboard.take_tasks() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
