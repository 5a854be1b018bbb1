//! One pingora service per client listener: its read buffer, request-header limits and
//! deadline (pingora's `HttpServerOptions`), HTTP/2 (h2c and its limits), its cap on open
//! connections, and the apps each connection goes through (cap, PROXY header, TLS
//! handshake, HTTP).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerOptions, ServerApp};
use pingora_core::listeners::{L4BufferSettings, ListenerConfig as PingoraListener};
use pingora_core::protocols::http::v2::server::{
    default_h2_options, H2Options, PrematureResetLimit,
};
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;

use super::edge::EdgeLimits;
use super::proxy_protocol::ProxyProtocol;
use super::tls::Tls;
use super::Gateway;
use crate::config::model::{HttpListenerConfig, ListenerConfig};
use crate::state::State;

/// The proxy service of one listener: `Gateway` behind a connection cap, the PROXY
/// protocol header and TLS.
pub type ListenerService = Service<Capped<ProxyProtocol<Tls<HttpProxy<Gateway>>>>>;

/// Builds listener `l`'s service. `read_buffer` is the per-connection read buffer in bytes.
pub fn service(
    conf: &Arc<ServerConf>,
    state: Arc<State>,
    l: &ListenerConfig,
    read_buffer: usize,
) -> ListenerService {
    let h = &l.http;
    let mut proxy =
        pingora_proxy::http_proxy(conf, Gateway::new(state.clone(), EdgeLimits::from(h)));
    let mut opts = HttpServerOptions::default();
    opts.max_request_header_bytes = Some(h.max_request_header_bytes);
    opts.request_header_timeout = Some(h.header_read_timeout.0);
    opts.h2c = h.h2c;
    state.telemetry.http_listener(&l.name);
    let (telemetry, listener) = (state.telemetry.clone(), l.name.clone());
    opts.h2_premature_reset = Some(PrematureResetLimit {
        total_stream_count: h.h2.premature_reset_total_stream_count,
        min_stream_lifetime: h.h2.premature_reset_min_stream_lifetime.0,
        on_close: Some(Arc::new(move || {
            telemetry.h2_premature_reset_close(&listener)
        })),
    });
    proxy.server_options = Some(opts);
    proxy.h2_options = Some(h2_options(h));
    let tls = Tls {
        inner: Arc::new(proxy),
        store: state.tls.get(&l.name).cloned(),
        telemetry: state.telemetry.clone(),
        timeout: h.header_read_timeout.0,
    };
    let app = Capped {
        inner: Arc::new(ProxyProtocol {
            inner: Arc::new(tls),
            state,
            timeout: h.header_read_timeout.0,
        }),
        open: Arc::new(AtomicUsize::new(0)),
        max: h.max_connections,
        listener: l.name.clone(),
    };
    let mut service = Service::new(format!("gatehouse proxy {}", l.name), app);
    let buffers = L4BufferSettings::default().read(read_buffer.max(1024));
    service.add_listener(PingoraListener::tcp(l.address.clone()).l4_buffer(buffers));
    service
}

/// The HTTP/2 settings of the listener's connections (h2c, and h2 over TLS): concurrent
/// streams, header list size (the HTTP/1 header limit when unset) and the rapid-reset
/// bound (CVE-2023-44487). Other settings keep pingora's defaults, among them the `h2`
/// crate's bound of 1024 streams the gateway itself had to reset for a client's protocol
/// errors (`max_local_error_reset_streams`, CVE-2025-8671).
fn h2_options(h: &HttpListenerConfig) -> H2Options {
    let mut o = default_h2_options();
    let list =
        h.h2.max_header_list_size
            .unwrap_or(h.max_request_header_bytes);
    o.max_concurrent_streams(h.h2.max_concurrent_streams)
        .max_header_list_size(u32::try_from(list).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(h.h2.max_pending_reset_streams);
    o
}

/// A server app that serves at most `max` connections at once; one beyond is closed as
/// soon as it is accepted, before a byte is read (nginx answers `worker_connections`
/// exhaustion the same way), so idle sockets cannot starve the listener's memory.
pub struct Capped<A> {
    inner: Arc<A>,
    open: Arc<AtomicUsize>,
    max: usize,
    listener: String,
}

/// One open connection's place under the cap, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(listener = %self.listener, max = self.max, "connection refused: listener at its connection cap");
            return None; // dropping the stream closes it
        }
        let _slot = Slot(self.open.clone());
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
