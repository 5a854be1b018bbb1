//! Distributed tracing for gatehouse and its services: W3C Trace Context in and out,
//! parent-based ratio sampling, and OTLP export in batches off the request path.
//!
//! A [`Tracing`] owns an OpenTelemetry SDK tracer provider and the one-thread runtime its
//! batch exporter runs on; request code only starts and ends spans (which queue finished
//! spans without waiting) and reads or writes `traceparent`/`tracestate`.

pub mod current;
pub mod propagation;
pub mod sampler;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracer, SdkTracerProvider};

pub use current::{child, within, ChildSpan};
pub use opentelemetry;
pub use opentelemetry_sdk::trace::Span;
pub use sampler::RatioSampler;

/// The OTLP transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` names it (OTLP specification,
/// "OTLP/HTTP" and "OTLP/gRPC"); `http/json` is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Protobuf over HTTP POST to `<endpoint>/v1/traces` (port 4318 by convention).
    #[default]
    HttpProtobuf,
    /// The OTLP gRPC service (port 4317 by convention).
    Grpc,
}

impl Protocol {
    /// `http/protobuf` or `grpc`, as in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = TracingError;
    fn from_str(s: &str) -> Result<Self, TracingError> {
        match s {
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "grpc" => Ok(Protocol::Grpc),
            other => Err(TracingError::Protocol(other.to_string())),
        }
    }
}

/// Where and how spans are exported, and how many traces are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`: for `http/protobuf`
    /// the spans go to its path plus `/v1/traces` (OTLP/HTTP specification); for `grpc`
    /// to the URL itself.
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// The `service.name` resource attribute of every span.
    pub service_name: String,
    /// Fraction of new traces kept, 0.0 to 1.0 (values outside are clamped); a trace that
    /// arrives with a parent follows the parent's sampled flag.
    pub ratio: f64,
    /// Longest wait before a batch is sent (`OTEL_BSP_SCHEDULE_DELAY`, default 5 s).
    pub scheduled_delay: Duration,
    /// Finished spans held for export at most; further spans are dropped until the queue
    /// drains (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048).
    pub max_queue_size: usize,
    /// Longest wait for one export request (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    pub export_timeout: Duration,
}

impl Settings {
    /// Settings with the OpenTelemetry SDK's defaults for the batch and the timeout.
    pub fn new(
        endpoint: impl Into<String>,
        protocol: Protocol,
        service_name: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol,
            service_name: service_name.into(),
            ratio: 1.0,
            scheduled_delay: Duration::from_secs(5),
            max_queue_size: 2048,
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The protocol name is not one of `http/protobuf`, `grpc`.
    #[error("unknown OTLP protocol {0:?}: expected http/protobuf or grpc")]
    Protocol(String),
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("otlp_endpoint {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    /// The exporter's runtime thread could not start.
    #[error("cannot start the OTLP export thread: {0}")]
    Runtime(#[from] std::io::Error),
    /// The OTLP exporter refused its settings.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// A running tracer: spans started from [`Tracing::tracer`] are sampled by the ratio
/// sampler and, once ended, exported in batches by a task on this value's own runtime.
pub struct Tracing {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    sampler: RatioSampler,
    settings: Settings,
    // Export runs here, never on the caller's threads; dropped in the background.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The signal path the OTLP/HTTP specification appends to a base endpoint.
fn http_traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

impl Tracing {
    /// Starts the export runtime (one thread, `gatehouse-otel`) and the tracer provider.
    /// No connection is made here: the first batch connects.
    ///
    /// # Errors
    /// A bad endpoint URL, a thread that cannot start, or an exporter the OTLP crate refuses.
    pub fn start(settings: Settings) -> Result<Arc<Self>, TracingError> {
        let url = settings.endpoint.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(TracingError::Endpoint(settings.endpoint.clone()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gatehouse-otel")
            .enable_all()
            .build()?;
        // The exporter's client and the batch task are bound to the runtime they are made in.
        let _entered = runtime.enter();
        let exporter = match settings.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(
                    reqwest::Client::builder()
                        .timeout(settings.export_timeout)
                        .build()
                        .map_err(|e| TracingError::Endpoint(format!("{url}: {e}")))?,
                )
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(http_traces_url(url))
                .with_timeout(settings.export_timeout)
                .build()?,
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(settings.export_timeout)
                .build()?,
        };
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(settings.scheduled_delay)
            .with_max_queue_size(settings.max_queue_size.max(1))
            .with_max_export_batch_size(settings.max_queue_size.clamp(1, 512))
            .with_max_export_timeout(settings.export_timeout)
            .build();
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(batch)
            .build();
        let sampler = RatioSampler::new(settings.ratio);
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler.clone())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(settings.service_name.clone());
        drop(_entered);
        Ok(Arc::new(Self {
            tracer,
            provider,
            sampler,
            settings,
            runtime: Some(runtime),
        }))
    }

    /// The tracer to start spans with.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// `cx` carrying this tracer, so that [`current::child`] makes spans inside it.
    pub fn carry(&self, cx: opentelemetry::Context) -> opentelemetry::Context {
        current::carry(cx, &self.tracer)
    }

    /// The settings it started with (the ratio as it started; see [`Tracing::ratio`]).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes the fraction of new traces kept, for spans started from now on.
    pub fn set_ratio(&self, ratio: f64) {
        self.sampler.set_ratio(ratio);
    }

    /// The fraction of new traces kept now.
    pub fn ratio(&self) -> f64 {
        self.sampler.ratio()
    }

    /// Exports what is queued and stops the exporter; spans ended later are dropped.
    /// Blocks up to `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        let _ = self.provider.shutdown_with_timeout(timeout);
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio refuses inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_signal_path_is_appended_once() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c/otlp"), "http://c/otlp/v1/traces");
    }

    #[test]
    fn protocols_parse_by_their_otel_names() {
        assert_eq!("grpc".parse::<Protocol>().ok(), Some(Protocol::Grpc));
        assert_eq!(
            "http/protobuf".parse::<Protocol>().ok(),
            Some(Protocol::HttpProtobuf)
        );
        assert!("http/json".parse::<Protocol>().is_err());
    }

    #[test]
    fn a_non_http_endpoint_is_refused() {
        let s = Settings::new("127.0.0.1:4318", Protocol::HttpProtobuf, "t");
        assert!(matches!(Tracing::start(s), Err(TracingError::Endpoint(_))));
    }
}
