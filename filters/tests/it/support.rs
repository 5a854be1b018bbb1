//! Helpers shared by the integration tests.

use std::path::PathBuf;

use gatehouse_filters::{Filter, FilterOutcome, RequestCx, Response};
use pingora_http::RequestHeader;

/// Path of a test key under tests/keys.
pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// Bytes of a test key under tests/keys.
pub fn key(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).unwrap()
}

/// The value of a counter or gauge with exactly these labels, 0 if absent.
pub fn metric(reg: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for mf in reg.gather() {
        if mf.name() != name {
            continue;
        }
        for m in mf.get_metric() {
            let ls = m.get_label();
            let all = labels
                .iter()
                .all(|(k, v)| ls.iter().any(|l| l.name() == *k && l.value() == *v));
            if all && ls.len() == labels.len() {
                return if mf.get_field_type() == prometheus::proto::MetricType::COUNTER {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                };
            }
        }
    }
    0.0
}

/// What one request produced.
pub struct Outcome {
    /// The response, if the filter answered.
    pub response: Option<Response>,
    /// The request after the filter (headers it set or removed).
    pub request: RequestHeader,
    /// Claims it set.
    pub claims: Option<std::sync::Arc<serde_json::Value>>,
    /// Response headers it asked for.
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Outcome {
    /// The status of the answer, or 0 when the request went on.
    pub fn status(&self) -> u16 {
        self.response.as_ref().map_or(0, |r| r.status.as_u16())
    }

    /// A header of the answer.
    pub fn header(&self, name: &str) -> Option<String> {
        let r = self.response.as_ref()?;
        r.headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.to_str().unwrap().to_string())
    }
}

/// Runs `f.on_request` on `req` with an optional body prefix and client IP.
pub async fn run(
    f: &dyn Filter,
    mut req: RequestHeader,
    body: Option<&[u8]>,
    claims: Option<std::sync::Arc<serde_json::Value>>,
) -> Outcome {
    let mut cx = RequestCx {
        route: "test_route",
        client_ip: Some("192.0.2.10".parse().unwrap()),
        request_id: "req-1",
        body_prefix: body,
        body: None,
        claims,
        response_headers: Vec::new(),
        state: &Default::default(),
    };
    let out = f.on_request(&mut req, &mut cx).await.unwrap();
    let claims = cx.claims.clone();
    let response_headers = std::mem::take(&mut cx.response_headers);
    drop(cx);
    Outcome {
        response: match out {
            FilterOutcome::Continue => None,
            FilterOutcome::Respond(r) => Some(r),
        },
        request: req,
        claims,
        response_headers,
    }
}
