//! A JSON client for tests: one call sends a request and reads the whole answer, instead of
//! `.send().await.unwrap().json().await.unwrap()` chains; plus the polling and metric
//! helpers every crate's tests use.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::gateway::TestGateway;

/// A shared HTTP client without proxies (an `http_proxy` in the environment must never
/// see test traffic), 30 s timeout.
pub fn client() -> reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    })
    .clone()
}

/// An answer read whole.
#[derive(Debug)]
pub struct JsonResponse {
    /// Its status code.
    pub status: u16,
    /// Its headers.
    pub headers: reqwest::header::HeaderMap,
    /// Its body parsed as JSON, `Value::Null` when empty or not JSON.
    pub body: Value,
}

impl JsonResponse {
    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `req` and reads the whole answer. Panics (naming the request) when no answer
/// comes: a transport error is a failed test.
pub async fn send(req: reqwest::RequestBuilder) -> JsonResponse {
    let described = format!("{req:?}");
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{described}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r
        .text()
        .await
        .unwrap_or_else(|e| panic!("{described}: body: {e}"));
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    JsonResponse {
        status,
        headers,
        body,
    }
}

/// GETs `url` and returns its JSON body; panics when the answer is not JSON.
pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// GETs a JSON document from the gateway's admin listener.
pub async fn admin_json(gw: &TestGateway, path: &str) -> Value {
    get_json(&gw.admin_url(path)).await
}

/// The value of one sample line of a metric with all the given labels, if present
/// (Prometheus text exposition format).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `f` every 50 ms until it returns true or `within` passes; returns whether it did.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
