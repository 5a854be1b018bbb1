//! What `/metrics` exports and for how long: endpoint series leave with their endpoint,
//! `metrics.endpoint_labels`, the standard `process_*` metrics, the unrouted label, no
//! Redis gauge without Redis, gzip for scrapers, HEAD on the probe endpoints.

use std::io::Read;
use std::time::Duration;

use crate::support::*;

/// Every series line of metric `name` whose labels include `endpoint="<endpoint>"`.
fn series_of<'a>(text: &'a str, name: &str, endpoint: &str) -> Vec<&'a str> {
    let label = format!("endpoint=\"{endpoint}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .collect()
}

/// A gateway with one route `app` on `prefix` to the upstream `app` at `a`.
async fn gateway_to_app(a: &TestUpstream, prefix: &str) -> TestGateway {
    TestGateway::start(&config(
        &static_upstream("app", &[a.addr], ""),
        &route("app", prefix, "app"),
    ))
    .await
}

/// The metrics with one series per endpoint.
const ENDPOINT_SERIES: [&str; 3] = [
    "gatehouse_upstream_requests_total",
    "gatehouse_upstream_health_transitions_total",
    "gatehouse_upstream_endpoint_healthy",
];

#[tokio::test]
async fn endpoint_series_leave_with_the_endpoint_on_reload() {
    let [a, b] = upstreams(["a", "b"]).await;
    let both = config(
        &checked_upstream("app", &[a.addr, b.addr], "300ms", "healthy"),
        &route("app", "/", "app"),
    );
    let gw = TestGateway::start(&both).await;
    for _ in 0..8 {
        assert_eq!(status_of(&gw, "/x").await, 200);
    }
    let (ea, eb) = (a.addr.to_string(), b.addr.to_string());
    let before = gw.metrics().await;
    for name in ENDPOINT_SERIES {
        assert!(
            !series_of(&before, name, &ea).is_empty(),
            "{name} of {ea} before the reload"
        );
    }

    let only_b = config(
        &checked_upstream("app", &[b.addr], "300ms", "healthy"),
        &route("app", "/", "app"),
    );
    gw.write_config(&only_b);
    assert!(wait_applied(&gw, &only_b, Duration::from_secs(10)).await);
    let after = gw.metrics().await;
    for name in ENDPOINT_SERIES {
        assert_eq!(
            series_of(&after, name, &ea),
            Vec::<&str>::new(),
            "{name} of the removed endpoint"
        );
        assert!(
            !series_of(&after, name, &eb).is_empty(),
            "{name} of the endpoint that stays"
        );
    }
}

#[tokio::test]
async fn endpoint_labels_off_gives_one_series_per_upstream() {
    let [a, b] = upstreams(["a", "b"]).await;
    let yaml = config(
        &static_upstream("app", &[a.addr, b.addr], ""),
        &route("app", "/", "app"),
    )
    .replace(
        "runtime: { threads: 1 }\n",
        "runtime: { threads: 1 }\nmetrics: { endpoint_labels: false }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    for _ in 0..6 {
        assert_eq!(status_of(&gw, "/x").await, 200);
    }
    let text = gw.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "gatehouse_upstream_requests_total",
            &[
                ("upstream", "app"),
                ("endpoint", ""),
                ("outcome", "success")
            ]
        ),
        Some(6.0),
        "{text}"
    );
    for ep in [a.addr, b.addr] {
        assert_eq!(
            series_of(&text, "gatehouse_upstream_requests_total", &ep.to_string()),
            Vec::<&str>::new()
        );
        // The health gauge still names each live endpoint.
        assert_eq!(
            series_of(
                &text,
                "gatehouse_upstream_endpoint_healthy",
                &ep.to_string()
            )
            .len(),
            1
        );
    }
}

#[tokio::test]
async fn scrape_has_process_metrics_unrouted_label_and_no_redis_gauge() {
    let a = TestUpstream::start("a").await;
    let gw = gateway_to_app(&a, "/app").await;
    assert_eq!(status_of(&gw, "/nowhere").await, 404);
    // Counted in the logging phase, just after the answer is written.
    let text = gw
        .metrics_when(|t| t.contains("gatehouse_requests_total{"))
        .await;
    assert_eq!(
        metric_value(
            &text,
            "gatehouse_requests_total",
            &[
                ("route", "(none)"),
                ("upstream", "(none)"),
                ("status_class", "4xx")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("route=\"\""), "no empty route label: {text}");
    // CPU seconds can still read 0 this early (the kernel counts in ticks).
    assert!(metric_value(&text, "process_cpu_seconds_total", &[]).is_some());
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let v = metric_value(&text, name, &[]).unwrap_or_else(|| panic!("{name} missing"));
        assert!(v > 0.0, "{name} = {v}");
    }
    assert_eq!(
        metric_value(&text, "gatehouse_redis_up", &[]),
        None,
        "no redis: section, no gatehouse_redis_up"
    );
}

#[tokio::test]
async fn metrics_are_gzipped_for_scrapers_that_accept_it() {
    let a = TestUpstream::start("a").await;
    let gw = gateway_to_app(&a, "/").await;
    let get = async |accept: &str| {
        let r = client()
            .get(gw.admin_url("/metrics"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        let encoding = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        (encoding, r.bytes().await.unwrap())
    };
    let (encoding, body) = get("gzip, deflate").await;
    assert_eq!(encoding.as_deref(), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("gatehouse_build_info{"), "{text}");
    assert!(body.len() < text.len() / 2, "compressed");

    let (encoding, body) = get("gzip;q=0, identity").await;
    assert_eq!(encoding, None, "gzip;q=0 refuses gzip (RFC 9110 12.5.3)");
    assert!(String::from_utf8_lossy(&body).contains("gatehouse_build_info{"));
}

#[tokio::test]
async fn head_works_on_the_probe_endpoints() {
    let a = TestUpstream::start("a").await;
    let gw = gateway_to_app(&a, "/").await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let got = client().get(gw.admin_url(path)).send().await.unwrap();
        let (status, len) = (got.status(), got.bytes().await.unwrap().len());
        let head = client().head(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(head.status(), status, "HEAD {path}");
        let declared: usize = head.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // /metrics changes between two scrapes (counters of the scrapes themselves are
        // not among them, but process_* are): same order of size, and no body.
        if path != "/metrics" {
            assert_eq!(declared, len, "HEAD {path} declares the GET body's length");
        }
        assert!(declared > 0);
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }
}
