//! JWKS against a real HTTP server on 127.0.0.1: first fetch, rotation (a new kid is
//! picked up), unknown kids refetch at most once per cooldown, Cache-Control bounds,
//! and an endpoint that goes down keeps the cached keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_filters::{build, Filter, FilterConfig, FilterRuntime};
use gatehouse_testkit::raw_upstream;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pingora_http::RequestHeader;
use serde_json::json;

use crate::support::{key, metric, run};

/// A JWKS endpoint whose document can be changed, and which can be stopped.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    cache_control: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let body = Arc::new(Mutex::new(body));
        let cache_control = Arc::new(Mutex::new("max-age=3600".to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, cc, h) = (body.clone(), cache_control.clone(), hits.clone());
        let (addr, task) = raw_upstream(move || {
            h.fetch_add(1, Ordering::SeqCst);
            let body = b.lock().unwrap().clone();
            let cc = cc.lock().unwrap().clone();
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: {cc}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        })
        .await;
        let url = format!("http://{addr}/.well-known/jwks.json");
        Self {
            url,
            body,
            cache_control,
            hits,
            task,
        }
    }

    fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn rsa_jwk(private_pem: &str, kid: &str) -> Jwk {
    let k = EncodingKey::from_rsa_pem(&key(private_pem)).unwrap();
    let mut jwk = Jwk::from_encoding_key(&k, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn ec_jwk_without_alg(kid: &str) -> Jwk {
    let k = EncodingKey::from_ec_pem(&key("ec256_private.pem")).unwrap();
    let mut jwk = Jwk::from_encoding_key(&k, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk.common.key_algorithm = None;
    jwk
}

fn jwks(keys: Vec<Jwk>) -> String {
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn token(private_pem: &str, alg: Algorithm, kid: &str) -> String {
    let k = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key(private_pem)).unwrap(),
        _ => EncodingKey::from_rsa_pem(&key(private_pem)).unwrap(),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    let claims = json!({"sub": "u1", "exp": jsonwebtoken::get_current_timestamp() + 600});
    encode(&h, &claims, &k).unwrap()
}

fn filter(url: &str, extra: serde_json::Value, registry: &prometheus::Registry) -> Arc<dyn Filter> {
    let rt = Arc::new(FilterRuntime::new(None, registry).unwrap());
    let mut src = json!({"jwks_url": url, "algorithms": ["RS256", "ES256"]});
    for (k, v) in extra.as_object().unwrap() {
        src[k] = v.clone();
    }
    let cfg: FilterConfig = serde_json::from_value(json!({"jwt": {"keys": [src]}})).unwrap();
    build(&cfg, "test_route", &rt).unwrap()
}

/// JWKS fetches so far with `result` (ok, error, ...).
fn fetches(registry: &prometheus::Registry, result: &str) -> f64 {
    metric(
        registry,
        "gatehouse_jwks_fetches_total",
        &[("result", result)],
    )
}

/// Waits (up to 5s, generous for busy CI cores) until `cond` holds; fails otherwise.
async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached within 5s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The filter's answer to a token signed now (so not in the filter's accepted-token
/// cache unless an identical one was sent this second) with `private_pem`, `alg` and
/// `kid`: 0 when it passes, else the refusal's status.
async fn verify(f: &Arc<dyn Filter>, private_pem: &str, alg: Algorithm, kid: &str) -> u16 {
    status(f.as_ref(), &token(private_pem, alg, kid)).await
}

async fn status(f: &dyn Filter, token: &str) -> u16 {
    let mut r = RequestHeader::build("GET", b"/", None).unwrap();
    r.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    run(f, r, None, None).await.status()
}

#[tokio::test]
async fn rotation_unknown_kid_and_endpoint_down() {
    let server = JwksServer::start(jwks(vec![
        rsa_jwk("rsa_private.pem", "k1"),
        ec_jwk_without_alg("e1"),
    ]))
    .await;
    let registry = prometheus::Registry::new();
    let f = filter(
        &server.url,
        json!({"unknown_kid_cooldown": "1s", "cache_ttl_min": "1s", "cache_ttl_max": "2s"}),
        &registry,
    );

    assert_eq!(
        verify(&f, "rsa_private.pem", Algorithm::RS256, "k1").await,
        0
    );
    // A JWK without `alg` verifies the configured algorithms of its key type.
    assert_eq!(
        verify(&f, "ec256_private.pem", Algorithm::ES256, "e1").await,
        0
    );
    let after_first = server.hits();
    assert!(
        (1..=2).contains(&after_first),
        "prefetch and/or first request: {after_first}"
    );
    // A JWK is bound to its alg: RS256 key k1 does not verify PS256.
    assert_eq!(
        verify(&f, "rsa_private.pem", Algorithm::PS256, "k1").await,
        401
    );
    assert_eq!(server.hits(), after_first, "no refetch for a known kid");

    // Rotation: k2 appears; the first k2 token triggers one refetch and is accepted.
    server.set(jwks(vec![
        rsa_jwk("rsa_private.pem", "k1"),
        rsa_jwk("rsa2_private.pem", "k2"),
    ]));
    assert_eq!(
        verify(&f, "rsa2_private.pem", Algorithm::RS256, "k2").await,
        0
    );
    assert_eq!(server.hits(), after_first + 1);

    // Unknown kids: refetch at most once per cooldown.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hits = server.hits();
    for _ in 0..5 {
        assert_eq!(
            verify(&f, "rsa2_private.pem", Algorithm::RS256, "k-unknown").await,
            401
        );
    }
    assert_eq!(
        server.hits(),
        hits + 1,
        "five unknown-kid tokens, one refetch"
    );
    assert_eq!(
        metric(
            &registry,
            "gatehouse_auth_failures_total",
            &[("route", "test_route"), ("reason", "unknown_kid")]
        ),
        5.0
    );

    // max-age=3600 is clamped to cache_ttl_max (2s): a stale set is refreshed in the
    // background while requests are served from the cache.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let hits = server.hits();
    assert_eq!(
        verify(&f, "rsa_private.pem", Algorithm::RS256, "k1").await,
        0
    );
    wait_for(|| server.hits() > hits).await;
    assert_eq!(
        server.hits(),
        hits + 1,
        "background refresh after max-age clamp"
    );

    // The endpoint goes down: the cached keys keep working, also once stale.
    let JwksServer { task, .. } = server;
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let errors_before = fetches(&registry, "error");
    assert_eq!(
        verify(&f, "rsa_private.pem", Algorithm::RS256, "k1").await,
        0
    );
    assert_eq!(
        verify(&f, "rsa2_private.pem", Algorithm::RS256, "k2").await,
        0
    );
    wait_for(|| fetches(&registry, "error") > errors_before).await;
    assert_eq!(
        verify(&f, "rsa_private.pem", Algorithm::RS256, "k1").await,
        0
    );
}

#[tokio::test]
async fn unreachable_jwks_is_401_keys_unavailable() {
    // A port where nothing listens.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let registry = prometheus::Registry::new();
    let f = filter(
        &format!("http://127.0.0.1:{port}/jwks.json"),
        json!({"fetch_timeout": "500ms"}),
        &registry,
    );
    assert_eq!(
        verify(&f, "rsa_private.pem", Algorithm::RS256, "k1").await,
        401
    );
    assert_eq!(
        metric(
            &registry,
            "gatehouse_auth_failures_total",
            &[("route", "test_route"), ("reason", "keys_unavailable")]
        ),
        1.0
    );
}

#[tokio::test]
async fn cache_control_max_age_is_respected() {
    let server = JwksServer::start(jwks(vec![rsa_jwk("rsa_private.pem", "k1")])).await;
    *server.cache_control.lock().unwrap() = "public, max-age=1".into();
    let registry = prometheus::Registry::new();
    let f = filter(&server.url, json!({"cache_ttl_min": "1s"}), &registry);
    let t = token("rsa_private.pem", Algorithm::RS256, "k1");
    assert_eq!(status(f.as_ref(), &t).await, 0);
    let hits = server.hits();
    assert_eq!(status(f.as_ref(), &t).await, 0);
    assert_eq!(server.hits(), hits, "fresh: served from cache");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A new token (its exp moved on): the filter's accepted-token cache does not know
    // it, so the keys are needed again.
    let t2 = token("rsa_private.pem", Algorithm::RS256, "k1");
    assert_ne!(t, t2);
    assert_eq!(status(f.as_ref(), &t2).await, 0);
    wait_for(|| server.hits() > hits).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.hits(),
        hits + 1,
        "stale after max-age=1: refreshed once"
    );
}
