//! TLS termination on a listener: the handshake runs in the gateway's own server app, after
//! the PROXY protocol header (which comes before the ClientHello), with the certificate the
//! listener's store picks by SNI; a failed handshake is counted by reason.
//!
//! pingora can terminate TLS in its listener, but then a PROXY header would have to be
//! read in its pre-TLS hook and the store could not be swapped per handshake; here the
//! listener stays plain TCP and pingora's `handshake_with_callback` runs on the stream
//! (the same call pingora's listener makes).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

use crate::telemetry::Telemetry;
use crate::tls::{failure_reason, CertStore, Pick, ACME_TLS_ALPN};

/// Wraps the HTTP app of one listener: with a store, each connection is a TLS server
/// handshake first; without one (a clear-text listener) connections pass through.
pub struct Tls<A> {
    /// The HTTP app.
    pub inner: Arc<A>,
    /// The listener's certificates; `None`: clear text.
    pub store: Option<Arc<CertStore>>,
    /// Where failures are counted.
    pub telemetry: Arc<Telemetry>,
    /// How long a handshake may take (the listener's header read timeout).
    pub timeout: Duration,
}

impl<A> Tls<A> {
    fn failed(&self, store: &CertStore, reason: &str, error: &dyn std::fmt::Display) {
        self.telemetry
            .tls_handshake_failed(store.listener(), reason, error);
    }
}

/// The bounded reason of a failed handshake. pingora keeps OpenSSL's error only as text
/// in the error's context: `... error:0A000102:SSL routines:FUNCTION:REASON:FILE:LINE:`,
/// or `unexpected EOF` when the client hung up.
fn reason_of(e: &pingora_core::Error, pick: &Pick) -> &'static str {
    if pick.found_none() {
        return "no_certificate";
    }
    let text = e.to_string();
    match text
        .split("error:")
        .nth(1)
        .and_then(|l| l.split(':').nth(3))
    {
        Some(reason) => failure_reason(reason),
        None if text.contains("unexpected EOF") => "client_closed",
        None => "other",
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Tls<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(store) = &self.store else {
            return self.inner.process_new(stream, shutdown).await;
        };
        // The listener is plain TCP, so the accepted stream is pingora's L4 stream.
        let l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => *l4,
            Err(_) => {
                tracing::error!(listener = %store.listener(), "TLS listener got a stream that is not TCP; closed");
                return None;
            }
        };
        let pick = Pick::new(store.current());
        let handshake = handshake_with_callback(pick.set().acceptor(), l4, &pick);
        let tls = match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.failed(store, reason_of(&e, &pick), &e);
                return None;
            }
            Err(_) => {
                self.failed(
                    store,
                    "timeout",
                    &"no handshake within the header read timeout",
                );
                return None;
            }
        };
        if tls.ssl().selected_alpn_protocol() == Some(ACME_TLS_ALPN) {
            // RFC 8737 §3: the validator closes after the handshake; nothing to serve.
            return None;
        }
        let mut next = self.inner.process_new(Box::new(tls), shutdown).await;
        // A stream handed back for reuse is already past the handshake: keep it here.
        while let Some(s) = next {
            next = self.inner.process_new(s, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
