//! Reads the reference services' DB pool gauges and domain-operation counters from their
//! `/metrics`, so the dashboard can show pool usage (in use / max) and each service's
//! operation error rate: a backend that fails every operation behind a service that still
//! answers 2xx is invisible in the gateway's own HTTP figures.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// The metric the services export (`state` is in_use, idle or max).
pub const POOL_METRIC: &str = "gatehouse_service_db_pool_connections";

/// The services' domain-operation counter (`service`, `op`, `result`).
pub const OPERATIONS_METRIC: &str = "gatehouse_service_operations_total";

/// Operation results that count as failures: an injected fault (`fail`, `drop`), a saga or
/// step that ended `failed`, an `error` or a `timeout`. Anything else (`ok`, `completed`,
/// `retry`, `delay`, business refusals such as `declined`) is not an operation error.
pub const FAILED_RESULTS: [&str; 5] = ["fail", "drop", "failed", "error", "timeout"];

/// How often each endpoint's metrics are read.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(10);

/// How long a pool figure is shown after it was read: three scrapes. Older figures (an
/// endpoint that stopped answering, or left its upstream) are dropped, not shown as current.
pub const STALE_AFTER: Duration = Duration::from_secs(3 * SCRAPE_EVERY.as_secs());

/// One service's pool as last read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pool {
    /// Connections in use.
    pub in_use: f64,
    /// Idle connections.
    pub idle: f64,
    /// Pool size.
    pub max: f64,
    /// The endpoint it was read from.
    pub endpoint: String,
    /// Domain operations counted so far (`gatehouse_service_operations_total`).
    pub operations: f64,
    /// Of which failed ([`FAILED_RESULTS`]).
    pub failed_operations: f64,
}

/// A pool and when it was read (monotonic ms, `clock::mono_ms`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The figures.
    pub pool: Pool,
    /// When they were read.
    pub read_at_ms: u64,
    /// Operations counted between the previous reading and this one.
    pub recent_operations: f64,
    /// Of which failed.
    pub recent_failed: f64,
}

impl Reading {
    /// Share of the operations since the previous reading that failed (`None` without any).
    pub fn operation_error_rate(&self) -> Option<f64> {
        (self.recent_operations > 0.0).then(|| self.recent_failed / self.recent_operations)
    }
}

/// Last known pools by (service name, endpoint): two endpoints of one service are two
/// pools.
#[derive(Default)]
pub struct Pools(Mutex<BTreeMap<(String, String), Reading>>);

impl Pools {
    /// Every pool read within [`STALE_AFTER`] of `now_ms`, by (service, endpoint); older
    /// ones are dropped.
    pub fn snapshot(&self, now_ms: u64) -> BTreeMap<(String, String), Reading> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let stale = STALE_AFTER.as_millis() as u64;
        map.retain(|_, r| now_ms.saturating_sub(r.read_at_ms) <= stale);
        map.clone()
    }

    /// Replaces what `endpoint` reported (services it no longer reports are dropped).
    fn store(&self, endpoint: &str, found: BTreeMap<String, Pool>, now_ms: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut before = BTreeMap::new();
        map.retain(|(service, ep), r| {
            if ep == endpoint {
                before.insert(service.clone(), r.pool.clone());
            }
            ep != endpoint
        });
        map.extend(found.into_iter().map(|(service, pool)| {
            // Counters only grow; a smaller value is a restarted service: count from zero.
            let (ops, failed) = match before.get(&service) {
                Some(b) if pool.operations >= b.operations => (
                    pool.operations - b.operations,
                    (pool.failed_operations - b.failed_operations).max(0.0),
                ),
                _ => (pool.operations, pool.failed_operations),
            };
            (
                (service, endpoint.to_string()),
                Reading {
                    pool,
                    read_at_ms: now_ms,
                    recent_operations: ops,
                    recent_failed: failed,
                },
            )
        }));
    }
}

/// Parses the pool gauges and operation counters out of a Prometheus text exposition.
pub fn parse(text: &str, endpoint: &str) -> BTreeMap<String, Pool> {
    let mut out: BTreeMap<String, Pool> = BTreeMap::new();
    let of = |l: &str, metric: &str| l.starts_with(metric) && l[metric.len()..].starts_with('{');
    for line in text
        .lines()
        .filter(|l| of(l, POOL_METRIC) || of(l, OPERATIONS_METRIC))
    {
        let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
            continue;
        };
        let labels = &line[open + 1..close];
        let label = |k: &str| {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(n, _)| n.trim() == k)
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
        };
        let Some(service) = label("service") else {
            continue;
        };
        let Some(value) = line[close + 1..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let pool = out.entry(service).or_insert_with(|| Pool {
            endpoint: endpoint.to_string(),
            ..Pool::default()
        });
        if of(line, OPERATIONS_METRIC) {
            pool.operations += value;
            if label("result").is_some_and(|r| FAILED_RESULTS.contains(&r.as_str())) {
                pool.failed_operations += value;
            }
            continue;
        }
        match label("state").as_deref() {
            Some("in_use") => pool.in_use = value,
            Some("idle") => pool.idle = value,
            Some("max") => pool.max = value,
            _ => {}
        }
    }
    out
}

/// Reads one endpoint's pools into `pools`; failures are only logged at debug level (the
/// dashboard shows the last known value, health checks report the endpoint itself).
pub async fn scrape(pools: &Pools, target: super::probe::Target<'_>, endpoint: &str, path: &str) {
    let host = target.addr.to_string();
    let fetch = super::probe::request(target, "GET", path, &host, "gatehouse", 1 << 20, true);
    match tokio::time::timeout(Duration::from_secs(2), fetch).await {
        Ok(Ok(resp)) => pools.store(
            endpoint,
            parse(&String::from_utf8_lossy(&resp.body), endpoint),
            crate::clock::mono_ms(),
        ),
        Ok(Err(e)) => tracing::debug!(endpoint, error = %e, "reading service metrics failed"),
        Err(_) => tracing::debug!(endpoint, "reading service metrics timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_error_rate_is_read_between_scrapes() {
        let text = |ok: u32, failed: u32| {
            format!(
                "gatehouse_service_operations_total{{service=\"payment\",op=\"debit\",result=\"ok\"}} {ok}\n\
                 gatehouse_service_operations_total{{service=\"payment\",op=\"fault_debit\",result=\"fail\"}} {failed}\n\
                 gatehouse_service_operations_total{{service=\"payment\",op=\"debit\",result=\"retry\"}} 0\n"
            )
        };
        let pools = Pools::default();
        let ep = "10.0.0.1:3004";
        pools.store(ep, parse(&text(90, 10), ep), 1_000);
        let key = ("payment".to_string(), ep.to_string());
        let first = pools.snapshot(1_000)[&key].clone();
        assert_eq!(first.operation_error_rate(), Some(0.1), "since start");
        // Next scrape: 0 more ok, 20 more failures: the recent rate is 100%.
        pools.store(ep, parse(&text(90, 30), ep), 11_000);
        let next = pools.snapshot(11_000)[&key].clone();
        assert_eq!((next.recent_operations, next.recent_failed), (20.0, 20.0));
        assert_eq!(next.operation_error_rate(), Some(1.0));
        // A restarted service (counters went down): counted from zero.
        pools.store(ep, parse(&text(5, 0), ep), 21_000);
        assert_eq!(
            pools.snapshot(21_000)[&key].operation_error_rate(),
            Some(0.0)
        );
    }

    #[test]
    fn pools_are_kept_per_endpoint_and_dropped_when_stale() {
        let text = |in_use: u32| {
            format!("gatehouse_service_db_pool_connections{{service=\"payment\",state=\"in_use\"}} {in_use}\n")
        };
        let pools = Pools::default();
        pools.store("10.0.0.1:3004", parse(&text(3), "10.0.0.1:3004"), 1_000);
        pools.store("10.0.0.2:3004", parse(&text(7), "10.0.0.2:3004"), 5_000);
        let snap = pools.snapshot(6_000);
        assert_eq!(snap.len(), 2, "two endpoints of one service are two pools");
        assert_eq!(
            snap[&("payment".into(), "10.0.0.1:3004".into())]
                .pool
                .in_use,
            3.0
        );
        assert_eq!(
            snap[&("payment".into(), "10.0.0.2:3004".into())]
                .pool
                .in_use,
            7.0
        );
        // 30 s after the first read, only the second endpoint's figure is fresh.
        let later = 1_000 + STALE_AFTER.as_millis() as u64 + 1;
        let snap = pools.snapshot(later);
        assert_eq!(
            snap.keys().map(|(_, ep)| ep.as_str()).collect::<Vec<_>>(),
            ["10.0.0.2:3004"]
        );
    }

    #[test]
    fn parses_pool_gauges() {
        let text = "# HELP x\n# TYPE gatehouse_service_db_pool_connections gauge\n\
            gatehouse_service_db_pool_connections{service=\"payment\",state=\"in_use\"} 3\n\
            gatehouse_service_db_pool_connections{service=\"payment\",state=\"idle\"} 2\n\
            gatehouse_service_db_pool_connections{service=\"payment\",state=\"max\"} 10\n\
            gatehouse_service_db_pool_connections_other{service=\"x\",state=\"max\"} 1\n";
        let p = parse(text, "127.0.0.1:3004");
        assert_eq!(p.len(), 1);
        assert_eq!(
            p["payment"],
            Pool {
                in_use: 3.0,
                idle: 2.0,
                max: 10.0,
                endpoint: "127.0.0.1:3004".into(),
                ..Pool::default()
            }
        );
    }
}
