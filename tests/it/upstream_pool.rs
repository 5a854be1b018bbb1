//! The upstream connection pool's idle times: the connections a burst opened beyond
//! `runtime.upstream_burst_threshold` close `upstream_burst_idle_timeout` after it, while the
//! ones used below the threshold stay pooled for `upstream_idle_timeout` and are reused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use gatehouse_testkit::{client, eventually, read_request_head, TestGateway};
use tokio::io::AsyncWriteExt;

/// A keep-alive HTTP/1.1 upstream that answers each request after `delay` and counts the
/// connections it accepted and those still open (the gateway's pooled ones among them).
struct CountingUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingUpstream {
    async fn start(delay: Duration) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, o) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    while read_request_head(&mut sock).await.is_some() {
                        tokio::time::sleep(delay).await;
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if sock.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            open,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_bursts_extra_upstream_connections_close_soon_after_it_and_the_steady_ones_stay() {
    // Each request is held 300 ms upstream, so the six of the burst are in flight together
    // and find 1, 2, ... 6 requests in flight to the endpoint: the first two are under the
    // threshold (pooled 60 s), the other four above it (pooled 500 ms).
    let up = CountingUpstream::start(Duration::from_millis(300)).await;
    let yaml = format!(
        "listeners: [ {{ name: public, address: \"{{listen}}\" }} ]\n\
         admin: {{ address: \"{{admin}}\" }}\n\
         runtime: {{ threads: 1, upstream_idle_timeout: 60s, upstream_burst_threshold: 2, upstream_burst_idle_timeout: 500ms }}\n\
         upstreams:\n  app: {{ discovery: {{ static: [ {{ address: \"{}\" }} ] }} }}\n\
         routes:\n  - {{ name: all, upstream: app }}\n",
        up.addr
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let burst = (0..6).map(|i| c.get(gw.url(&format!("/burst/{i}"))).send());
    for r in join_all(burst).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let ended = Instant::now();
    assert_eq!(
        up.accepted(),
        6,
        "the burst opened six upstream connections"
    );
    assert!(
        eventually(Duration::from_secs(3), async || up.open() == 2).await,
        "the four connections used above the threshold close after 500 ms idle; open: {}",
        up.open()
    );
    let closed_after = ended.elapsed();
    assert!(
        closed_after >= Duration::from_millis(400),
        "they were pooled first, not closed at once ({closed_after:?})"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(up.open(), 2, "the two used under the threshold stay pooled");
    // Steady traffic, one request at a time, reuses them.
    for i in 0..5 {
        let r = c.get(gw.url(&format!("/steady/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(up.accepted(), 6, "the steady requests opened no connection");
    assert_eq!(up.open(), 2);
}
