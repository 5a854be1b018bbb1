//! Prometheus metrics of one service, exposed on its `/metrics`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::db::Db;

/// The metric families of one service, in their own registry.
#[derive(Clone)]
pub struct Metrics {
    /// This service's name (the `service` label).
    pub service: &'static str,
    registry: Registry,
    /// `gatehouse_service_http_requests_total{service,method,route,status}`.
    pub http_requests: IntCounterVec,
    /// `gatehouse_service_http_request_duration_seconds{service,route}`.
    pub http_duration: HistogramVec,
    /// `gatehouse_service_db_pool_connections{service,state}`.
    pub db_pool: IntGaugeVec,
    /// `gatehouse_service_events_published_total{service}`.
    pub events_published: IntCounterVec,
    /// `gatehouse_service_events_consumed_total{service,consumer}`.
    pub events_consumed: IntCounterVec,
    /// `gatehouse_service_outbox_pending{service}`.
    pub outbox_pending: IntGaugeVec,
    /// Service-specific counters: `gatehouse_service_operations_total{service,op,result}`.
    pub operations: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("service", &self.service)
            .finish()
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: T,
) -> prometheus::Result<T> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Creates the families and pre-initializes the label sets known at start.
    pub fn new(service: &'static str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let http_requests = counter(
            "gatehouse_service_http_requests_total",
            "HTTP requests handled by a reference service",
            &["service", "method", "route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_service_http_request_duration_seconds",
                "Latency of HTTP requests handled by a reference service",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["service", "route"],
        )
        .and_then(|h| reg(&registry, h))?;
        let db_pool = gauge(
            "gatehouse_service_db_pool_connections",
            "Database pool connections by state (in_use, idle, max)",
            &["service", "state"],
        )?;
        let events_published = counter(
            "gatehouse_service_events_published_total",
            "Outbox events published",
            &["service"],
        )?;
        let events_consumed = counter(
            "gatehouse_service_events_consumed_total",
            "Events applied by a consumer (duplicates excluded)",
            &["service", "consumer"],
        )?;
        let outbox_pending = gauge(
            "gatehouse_service_outbox_pending",
            "Outbox events not yet published",
            &["service"],
        )?;
        let operations = counter(
            "gatehouse_service_operations_total",
            "Domain operations by result (debits, credits, sagas, logins, ...)",
            &["service", "op", "result"],
        )?;
        for state in ["in_use", "idle", "max"] {
            db_pool.with_label_values(&[service, state]).set(0);
        }
        events_published.with_label_values(&[service]);
        outbox_pending.with_label_values(&[service]).set(0);
        Ok(Metrics {
            service,
            registry,
            http_requests,
            http_duration,
            db_pool,
            events_published,
            events_consumed,
            outbox_pending,
            operations,
        })
    }

    /// Counts one domain operation.
    pub fn op(&self, op: &str, result: &str) {
        self.operations
            .with_label_values(&[self.service, op, result])
            .inc();
    }

    /// Updates the pool gauges from the pool.
    pub fn observe_pool(&self, db: &Db) {
        let (in_use, idle, max) = db.pool_state();
        let s = self.service;
        self.db_pool
            .with_label_values(&[s, "in_use"])
            .set(in_use.into());
        self.db_pool
            .with_label_values(&[s, "idle"])
            .set(idle.into());
        self.db_pool.with_label_values(&[s, "max"]).set(max.into());
    }

    /// Encodes the registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// State of the `/metrics` handler.
#[derive(Clone, Debug)]
pub struct MetricsState {
    /// The service's metrics.
    pub metrics: Metrics,
    /// Its database (pool gauges are refreshed on scrape).
    pub db: Db,
}

/// `GET /metrics`.
pub async fn metrics_handler(State(s): State<MetricsState>) -> Response {
    s.metrics.observe_pool(&s.db);
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.encode(),
    )
        .into_response()
}

/// Middleware counting requests by matched route (never the raw path: low cardinality).
pub async fn track(State(m): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    m.http_requests
        .with_label_values(&[m.service, &method, &route, &status])
        .inc();
    m.http_duration
        .with_label_values(&[m.service, &route])
        .observe(start.elapsed().as_secs_f64());
    resp
}
