//! Reads the reference services' DB pool gauges from their `/metrics`, so the dashboard
//! can show pool usage (in use / max) of the services behind the gateway.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// The metric the services export (`state` is in_use, idle or max).
pub const POOL_METRIC: &str = "gatehouse_service_db_pool_connections";

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
}

/// A pool and when it was read (monotonic ms, `clock::mono_ms`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The figures.
    pub pool: Pool,
    /// When they were read.
    pub read_at_ms: u64,
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
        map.retain(|(_, ep), _| ep != endpoint);
        map.extend(found.into_iter().map(|(service, pool)| {
            (
                (service, endpoint.to_string()),
                Reading {
                    pool,
                    read_at_ms: now_ms,
                },
            )
        }));
    }
}

/// Parses the pool gauges out of a Prometheus text exposition.
pub fn parse(text: &str, endpoint: &str) -> BTreeMap<String, Pool> {
    let mut out: BTreeMap<String, Pool> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(POOL_METRIC) && l[POOL_METRIC.len()..].starts_with('{'))
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
        let (Some(service), Some(state)) = (label("service"), label("state")) else {
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
        match state.as_str() {
            "in_use" => pool.in_use = value,
            "idle" => pool.idle = value,
            "max" => pool.max = value,
            _ => {}
        }
    }
    out
}

/// Reads one endpoint's pools into `pools`; failures are only logged at debug level (the
/// dashboard shows the last known value, health checks report the endpoint itself).
pub async fn scrape(pools: &Pools, addr: SocketAddr, endpoint: &str, path: &str) {
    let host = addr.to_string();
    let fetch = super::probe::request(addr, "GET", path, &host, "gatehouse", 1 << 20, true);
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
                endpoint: "127.0.0.1:3004".into()
            }
        );
    }
}
