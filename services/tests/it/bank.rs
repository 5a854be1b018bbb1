//! The bank invariant: concurrent transfers, payment faults, the coordinator SIGKILLed and
//! restarted mid-run; afterwards no saga is stuck, no balance is negative, money is conserved.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

const ACCOUNTS: usize = 5;
const INITIAL: i64 = 10_000;
const WORKERS: usize = 16;
const PER_WORKER: usize = 40;
const RESTARTS: usize = 3;

#[derive(Default)]
struct ClientStats {
    submitted: AtomicUsize,
    client_retries: AtomicUsize,
    gave_up: AtomicUsize,
}

/// Sends one transfer, retrying with the same Idempotency-Key through kills and 5xx.
async fn transfer(
    c: &reqwest::Client,
    base: &str,
    key: &str,
    body: &Value,
    stats: &ClientStats,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0..200 {
        if Instant::now() > deadline {
            break;
        }
        if attempt > 0 {
            stats.client_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let r = c
            .post(format!("{base}/transfers?wait_ms=3000"))
            .header("x-internal-token", TOKEN)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await;
        let Ok(r) = r else { continue };
        let status = r.status().as_u16();
        let Ok(v) = r.json::<Value>().await else {
            continue;
        };
        match status {
            200..=202 => return v["id"].as_str().map(str::to_string),
            500..=599 => continue,
            other => panic!("transfer refused with {other}: {v}"),
        }
    }
    stats.gave_up.fetch_add(1, Ordering::Relaxed);
    None
}

/// Starts the gateway in this test process (its own threads and runtimes), in front of the
/// transaction service, with connect-error retries; returns the base URL of its route.
/// Without the `demo` feature the services' tests have no gateway: this panics.
#[cfg(not(feature = "demo"))]
async fn start_gateway(_dir: &std::path::Path, _transaction_port: u16) -> String {
    panic!("the gateway is only linked in with --features demo")
}

/// See the other `start_gateway`.
#[cfg(feature = "demo")]
async fn start_gateway(dir: &std::path::Path, transaction_port: u16) -> String {
    let ports = free_ports(2);
    let (listen, admin) = (ports[0], ports[1]);
    let config = dir.join("gatehouse.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [ {{ name: public, address: \"127.0.0.1:{listen}\" }} ]\n\
             admin: {{ address: \"127.0.0.1:{admin}\" }}\n\
             runtime: {{ threads: 2 }}\n\
             access_log: {{ enabled: false }}\n\
             upstreams:\n  transaction:\n    discovery: {{ static: [ {{ address: \"127.0.0.1:{transaction_port}\" }} ] }}\n\
             \x20   timeouts: {{ connect: 500ms, read: 10s }}\n\
             \x20   retry: {{ attempts: 3, on: [connect_error], backoff: {{ base: 50ms, max: 200ms }} }}\n\
             routes:\n  - {{ name: transaction, match: {{ path_prefix: /api/transaction }}, upstream: transaction, strip_prefix: /api/transaction }}\n"
        ),
    )
    .unwrap();
    std::thread::spawn(move || {
        let opts = gatehouse::app::RunOptions::embedded(config);
        gatehouse::app::run(opts).expect("the gateway starts");
    });
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(&ready).await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the gateway did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    format!("http://127.0.0.1:{listen}/api/transaction")
}

async fn run_bank(mariadb: bool, redis: bool) {
    run_bank_via(mariadb, redis, false).await
}

async fn run_bank_via(mariadb: bool, redis: bool, via_gateway: bool) {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let label = match (mariadb, redis, via_gateway) {
        (_, _, true) => "sqlite+gateway",
        (true, _, _) => "mariadb",
        (false, true, _) => "sqlite+redis-streams",
        (false, false, _) => "sqlite",
    };
    let mut dep = Deployment::new(&format!("bank{}", label.len()), mariadb);
    let redis_prefix = format!("test:{}", unique("bank"));
    if redis {
        dep.set("GATEHOUSE_REDIS_URL", REDIS)
            .set("GATEHOUSE_REDIS_PREFIX", &redis_prefix);
    }
    dep.set(
        "GATEHOUSE_FAULTS",
        "fail=0.15,drop=0.15,delay=0.05,delay_ms=300",
    )
    .set("GATEHOUSE_SAGA_STEP_ATTEMPTS", "3")
    .set("GATEHOUSE_SAGA_CALL_TIMEOUT_MS", "1000")
    .set("GATEHOUSE_SAGA_RECOVERY_INTERVAL_MS", "500");
    let payment = dep.start("payment", &["payment"]).await;
    let notification = dep.start("notification", &["notification"]).await;
    let mut transaction = dep.start("transaction", &["transaction"]).await;
    let c = http();
    let pay = dep.url("payment");
    let tx_base = dep.url("transaction");
    // Clients send their transfers through the gateway when asked; checks go direct.
    let client_base = if via_gateway {
        start_gateway(&dep.dir, dep.ports["transaction"]).await
    } else {
        tx_base.clone()
    };

    let mut accounts = Vec::new();
    for i in 0..ACCOUNTS {
        let (st, v) = post(
            &c,
            &format!("{pay}/accounts"),
            &json!({ "owner_id": format!("owner{i}"), "initial_balance": INITIAL }),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        accounts.push(v["id"].as_str().unwrap().to_string());
    }
    let initial_total = INITIAL * ACCOUNTS as i64;

    let stats = Arc::new(ClientStats::default());
    let received: Arc<tokio::sync::Mutex<Vec<(String, String)>>> = Default::default();
    let run_id = unique("k");
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (c, base, accounts, stats, received, run_id) = (
            c.clone(),
            client_base.clone(),
            accounts.clone(),
            stats.clone(),
            received.clone(),
            run_id.clone(),
        );
        workers.push(tokio::spawn(async move {
            for i in 0..PER_WORKER {
                let from = rand::random::<u32>() as usize % ACCOUNTS;
                let to = (from + 1 + rand::random::<u32>() as usize % (ACCOUNTS - 1)) % ACCOUNTS;
                // Up to 4000: some transfers hit insufficient funds (FAILED, nothing moves).
                let amount = 1 + (rand::random::<u32>() % 4000) as i64;
                let key = format!("{run_id}-{w}-{i}");
                let body = json!({ "from_account": accounts[from], "to_account": accounts[to], "amount": amount });
                stats.submitted.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = transfer(&c, &base, &key, &body, &stats).await {
                    received.lock().await.push((key, id));
                }
            }
        }));
    }

    // Kill the coordinator (SIGKILL) while transfers are in flight, and restart it.
    let total = WORKERS * PER_WORKER;
    let mut restarts = 0;
    let mut resumed_at_start = 0u64;
    for r in 0..RESTARTS {
        let threshold = total * (r + 1) / (RESTARTS + 1);
        let deadline = Instant::now() + Duration::from_secs(120);
        while stats.submitted.load(Ordering::Relaxed) < threshold && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        transaction.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        transaction = dep.start("transaction", &["transaction"]).await;
        restarts += 1;
        // The first recovery scan runs right after start; read what it resumed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = c
            .get(format!("{tx_base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        resumed_at_start += m
            .lines()
            .find(|l| l.contains("op=\"saga_resumed_at_start\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    for w in workers {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, w)
            .await
            .expect("clients finish within 240 s")
            .unwrap();
    }

    // Every saga reaches a final state (bounded wait; faults stay on).
    let stats_v = eventually("all sagas finished", Duration::from_secs(120), || {
        let c = c.clone();
        let url = format!("{tx_base}/admin/sagas/stats");
        async move {
            let (st, v) = get(&c, &url).await;
            (st == 200 && v["unfinished"] == 0).then_some(v)
        }
    })
    .await;

    let (_, all) = get(&c, &format!("{tx_base}/transfers?limit=10000")).await;
    let sagas = all["transfers"].as_array().unwrap().clone();
    let (_, acc) = get(&c, &format!("{pay}/accounts")).await;
    let (_, faults) = get(&c, &format!("{pay}/admin/faults")).await;

    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut expected: HashMap<String, i64> =
        accounts.iter().map(|a| (a.clone(), INITIAL)).collect();
    for s in &sagas {
        let state = s["status"].as_str().unwrap().to_string();
        assert!(
            ["COMPLETED", "COMPENSATED", "FAILED"].contains(&state.as_str()),
            "saga stuck: {s}"
        );
        assert_eq!(s["step"], "DONE", "saga not done: {s}");
        if state == "COMPLETED" {
            let amount = s["amount"].as_i64().unwrap();
            *expected
                .get_mut(s["from_account"].as_str().unwrap())
                .unwrap() -= amount;
            *expected.get_mut(s["to_account"].as_str().unwrap()).unwrap() += amount;
        }
        *outcomes.entry(state).or_default() += 1;
    }

    // One saga per Idempotency-Key: every id a client got is distinct and exists.
    let received = received.lock().await.clone();
    let ids: HashSet<&str> = received.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), received.len(), "two keys got the same saga");
    let saga_ids: HashSet<&str> = sagas.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(
        ids.is_subset(&saga_ids),
        "a client got an id that is not a saga"
    );
    assert!(
        sagas.len() <= total,
        "more sagas ({}) than transfer requests ({total})",
        sagas.len()
    );
    assert_eq!(
        stats.gave_up.load(Ordering::Relaxed),
        0,
        "some clients gave up"
    );
    assert_eq!(sagas.len(), total, "one saga per key");

    // Money: no negative balance, the total is conserved, and each account holds exactly
    // what its COMPLETED sagas say (COMPENSATED and FAILED moved nothing in the end).
    let mut total_now = 0;
    for a in acc["accounts"].as_array().unwrap() {
        let id = a["id"].as_str().unwrap();
        let bal = a["balance"].as_i64().unwrap();
        assert!(bal >= 0, "negative balance: {a}");
        assert_eq!(
            bal, expected[id],
            "account {id} does not match its completed sagas"
        );
        total_now += bal;
    }
    assert_eq!(total_now, initial_total, "money was created or destroyed");

    // The history read model catches up through the kills and agrees with the write model.
    let owners: HashSet<String> = acc["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["owner_id"].as_str().unwrap().to_string())
        .collect();
    for owner in owners {
        let key = |v: &Value| -> Vec<(String, String, String)> {
            let mut k: Vec<_> = v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        i["saga_id"].as_str().unwrap().to_string(),
                        i["direction"].as_str().unwrap().to_string(),
                        i["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            k.sort();
            k
        };
        let url = format!("{tx_base}/history?user_id={owner}&limit=1000");
        let read = eventually("read model caught up", Duration::from_secs(60), || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let (_, v) = get(&c, &url).await;
                (v["source"] == "read_model").then_some(v)
            }
        })
        .await;
        let (_, write) = get(&c, &format!("{url}&source=write")).await;
        assert_eq!(
            key(&read),
            key(&write),
            "read model of {owner} differs from the write model"
        );
        assert!(!key(&read).is_empty());
    }

    let injected = &faults["injected"];
    let fault_total: u64 = ["fail", "drop", "delay"]
        .iter()
        .map(|k| injected[k].as_u64().unwrap_or(0))
        .sum();
    assert!(fault_total > 0, "no fault was injected: {faults}");
    assert!(restarts >= 1);
    let insufficient = sagas
        .iter()
        .filter(|s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("insufficient_funds"))
        })
        .count();
    let line = format!(
        "BANK[{label}]: transfers={} sagas={} outcomes={:?} failed_for_insufficient_funds={insufficient} \
         saga_log={} faults_injected={} ({}) coordinator_sigkills_and_restarts={} \
         sagas_resumed_at_restart={} client_retries={} max_saga_attempts={} total_before={} total_after={} elapsed={:.1}s",
        total,
        sagas.len(),
        outcomes,
        stats_v["by_log_outcome"],
        fault_total,
        injected,
        restarts,
        resumed_at_start,
        stats.client_retries.load(Ordering::Relaxed),
        stats_v["max_attempts"],
        initial_total,
        total_now,
        started.elapsed().as_secs_f64()
    );
    println!("{line}");
    // Also kept beside the build, so CI output need not be captured to read the figures.
    let figures = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bank-figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&figures)
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
    drop((payment, notification, transaction));
    if mariadb {
        dep.drop_mariadb();
    }
    if redis {
        let client = redis::Client::open(REDIS).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(format!("{redis_prefix}:events"))
            .query_async(&mut conn)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_invariant_sqlite() {
    run_bank(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_invariant_sqlite_with_redis_streams() {
    run_bank(false, true).await;
}

#[cfg(feature = "demo")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_invariant_sqlite_through_the_gateway() {
    run_bank_via(false, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_invariant_mariadb() {
    run_bank(true, false).await;
}
