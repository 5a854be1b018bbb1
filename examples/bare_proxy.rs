//! The floor: the least code that proxies HTTP/1.1 with pingora 0.9 and its default
//! settings (one thread, work stealing on, upstream keepalive pool of 128, default
//! allocator). The load harness in `benches/load/` measures gatehouse against it.
//!
//! Usage: `bare_proxy <listen addr> <upstream addr>`, e.g.
//! `bare_proxy 127.0.0.1:6188 127.0.0.1:8000`.

use async_trait::async_trait;
use pingora::prelude::*;

/// Sends every request to one fixed upstream over plain HTTP.
struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_proxy <listen addr> <upstream addr>");
        std::process::exit(2);
    };
    // `None`: pingora's defaults, and its `Opt` never sees our argv.
    let mut server = match Server::new(None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bare_proxy: {e}");
            std::process::exit(1);
        }
    };
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            upstream: upstream.clone(),
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
