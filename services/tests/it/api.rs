//! API behaviour: payment idempotency, Idempotency-Key, users and roles, events over Redis
//! Streams across processes, the read-model fallback, metrics, and the demo command.

use std::time::{Duration, Instant};

use gatehouse_registry::topology::{Connector, Topology};
use gatehouse_testkit::{send, RedisSentinels};
use serde_json::{json, Value};

use crate::harness::*;

async fn balance(c: &reqwest::Client, pay: &str, id: &str) -> i64 {
    let (st, v) = get(c, &format!("{pay}/accounts/{id}")).await;
    assert_eq!(st, 200, "{v}");
    v["balance"].as_i64().unwrap()
}

#[tokio::test]
async fn payment_operations_are_idempotent_and_never_negative_sqlite() {
    payment_ops(false).await;
}

#[tokio::test]
async fn payment_operations_are_idempotent_and_never_negative_mariadb() {
    payment_ops(true).await;
}

async fn payment_ops(mariadb: bool) {
    let dep = Deployment::new("payops", mariadb);
    let _p = dep.start("payment", &["payment"]).await;
    let c = http();
    let pay = dep.url("payment");
    let a = account(&c, &pay, "alice", 1000).await;

    // The internal token is required on operations.
    let r = c
        .post(format!("{pay}/ops/debit"))
        .json(&json!({"op_id": "x", "account_id": a, "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{pay}/ops/debit"))
        .header("x-internal-token", "wrong")
        .json(&json!({"op_id": "x", "account_id": a, "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // 20 concurrent debits with one op id debit once.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, pay, a) = (c.clone(), pay.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            post(
                &c,
                &format!("{pay}/ops/debit"),
                &json!({"op_id": "op-1", "account_id": a, "amount": 300}),
            )
            .await
        }));
    }
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["status"], "APPLIED", "{v}");
    }
    assert_eq!(balance(&c, &pay, &a).await, 700);

    // Refused when it would go negative, and the refusal is final for that op id.
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/debit"),
        &json!({"op_id": "op-big", "account_id": a, "amount": 701}),
    )
    .await;
    assert_eq!(v["status"], "REJECTED");
    assert_eq!(v["reason"], "insufficient_funds");
    post(
        &c,
        &format!("{pay}/ops/credit"),
        &json!({"op_id": "op-c", "account_id": a, "amount": 5000}),
    )
    .await;
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/debit"),
        &json!({"op_id": "op-big", "account_id": a, "amount": 701}),
    )
    .await;
    assert_eq!(v["status"], "REJECTED");
    assert_eq!(v["replayed"], true);
    assert_eq!(balance(&c, &pay, &a).await, 5700);

    // Refund gives a debit back once, whatever the refund ids.
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/refund"),
        &json!({"op_id": "rf-1", "debit_op_id": "op-1"}),
    )
    .await;
    assert_eq!(v["status"], "APPLIED", "{v}");
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/refund"),
        &json!({"op_id": "rf-1", "debit_op_id": "op-1"}),
    )
    .await;
    assert_eq!(v["status"], "APPLIED");
    assert_eq!(v["replayed"], true);
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/refund"),
        &json!({"op_id": "rf-2", "debit_op_id": "op-1"}),
    )
    .await;
    assert_eq!(v["status"], "NOOP");
    assert_eq!(v["reason"], "already_refunded");
    assert_eq!(balance(&c, &pay, &a).await, 6000);

    // A void (or a refund) of an op that never landed blocks it from landing later.
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/void"),
        &json!({"op_id": "late-credit"}),
    )
    .await;
    assert_eq!(v["status"], "VOIDED");
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/credit"),
        &json!({"op_id": "late-credit", "account_id": a, "amount": 10}),
    )
    .await;
    assert_eq!(v["status"], "VOIDED");
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/refund"),
        &json!({"op_id": "rf-3", "debit_op_id": "late-debit"}),
    )
    .await;
    assert_eq!(v["status"], "NOOP");
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/debit"),
        &json!({"op_id": "late-debit", "account_id": a, "amount": 10}),
    )
    .await;
    assert_eq!(v["status"], "VOIDED");
    // A void of an applied op reports it applied and changes nothing.
    let (_, v) = post(&c, &format!("{pay}/ops/void"), &json!({"op_id": "op-c"})).await;
    assert_eq!(v["status"], "APPLIED");
    assert_eq!(balance(&c, &pay, &a).await, 6000);

    // Bad input is a 400; unknown accounts are a definitive rejection.
    let (st, _) = post(
        &c,
        &format!("{pay}/ops/credit"),
        &json!({"op_id": "z", "account_id": a, "amount": 0}),
    )
    .await;
    assert_eq!(st, 400);
    let (_, v) = post(
        &c,
        &format!("{pay}/ops/credit"),
        &json!({"op_id": "z2", "account_id": "acc_nope", "amount": 5}),
    )
    .await;
    assert_eq!(v["reason"], "unknown_account");

    // Users see their own accounts only.
    let (st, _) = as_user(c.get(format!("{pay}/accounts/{a}")), "mallory").await;
    assert_eq!(st, 404);
    let (st, _) = as_user(c.get(format!("{pay}/accounts/{a}")), "alice").await;
    assert_eq!(st, 200);
    drop(_p);
    if mariadb {
        dep.drop_mariadb();
    }
}

#[tokio::test]
async fn fault_injection_admin_endpoint_changes_behaviour() {
    let dep = Deployment::new("faults", false);
    let _p = dep.start("payment", &["payment"]).await;
    let c = http();
    let pay = dep.url("payment");
    let a = account(&c, &pay, "u", 100).await;
    let faults = c.put(format!("{pay}/admin/faults"));
    let (st, _) = as_user(faults.json(&json!({"fail": 1.0})), "u").await;
    assert_eq!(st, 403);
    let r = c
        .put(format!("{pay}/admin/faults"))
        .header("x-internal-token", TOKEN)
        .json(&json!({"fail": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, _) = post(
        &c,
        &format!("{pay}/ops/credit"),
        &json!({"op_id": "f1", "account_id": a, "amount": 5}),
    )
    .await;
    assert_eq!(st, 503);
    assert_eq!(
        balance(&c, &pay, &a).await,
        100,
        "a failed op applies nothing"
    );
    c.put(format!("{pay}/admin/faults"))
        .header("x-internal-token", TOKEN)
        .json(&json!({"drop": 1.0}))
        .send()
        .await
        .unwrap();
    let (st, _) = post(
        &c,
        &format!("{pay}/ops/credit"),
        &json!({"op_id": "f2", "account_id": a, "amount": 5}),
    )
    .await;
    assert_eq!(st, 503);
    assert_eq!(
        balance(&c, &pay, &a).await,
        105,
        "a dropped op is applied, its answer lost"
    );
    let (_, v) = get(&c, &format!("{pay}/admin/faults")).await;
    assert_eq!(v["injected"]["fail"], 1);
    assert_eq!(v["injected"]["drop"], 1);
    let r = c
        .put(format!("{pay}/admin/faults"))
        .header("x-internal-token", TOKEN)
        .json(&json!({"fail": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn fault_injection_is_off_in_production_mode() {
    let mut dep = Deployment::new("prodfaults", false);
    dep.set("GATEHOUSE_MODE", "production")
        .set("GATEHOUSE_FAULTS", "fail=1");
    let _p = dep.start("payment", &["payment"]).await;
    let c = http();
    let pay = dep.url("payment");
    let (st, _) = get(&c, &format!("{pay}/admin/faults")).await;
    assert_eq!(st, 404);
    // Opening balances need an admin in production; the internal token counts as one.
    let a = account(&c, &pay, "u", 10).await;
    let (st, v) = post(
        &c,
        &format!("{pay}/ops/credit"),
        &json!({"op_id": "p1", "account_id": a, "amount": 5}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let open = c.post(format!("{pay}/accounts"));
    let (st, _) = as_user(open.json(&json!({"initial_balance": 5})), "u").await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn idempotency_key_starts_one_saga() {
    let dep = Deployment::new("idem", false);
    let _all = dep
        .start("all", &["payment", "notification", "user", "transaction"])
        .await;
    let c = http();
    let (pay, tx) = (dep.url("payment"), dep.url("transaction"));
    let a = account(&c, &pay, "alice", 1000).await;
    let b = account(&c, &pay, "bob", 0).await;
    let body = json!({"from_account": a, "to_account": b, "amount": 100});
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, tx, body) = (c.clone(), tx.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let req = c
                .post(format!("{tx}/transfers"))
                .header("idempotency-key", "same-key")
                .json(&body);
            as_user(req, "alice").await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert!([200, 201, 202].contains(&st), "{st} {v}");
        if st != 200 {
            created += 1;
        }
        ids.insert(v["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "one saga for one key");
    assert_eq!(created, 1, "exactly one request created it");
    let id = ids.into_iter().next().unwrap();
    let v = eventually("transfer completed", Duration::from_secs(20), || {
        let (c, url) = (c.clone(), format!("{tx}/transfers/{id}"));
        async move {
            let (_, v) = get(&c, &url).await;
            (v["status"] == "COMPLETED").then_some(v)
        }
    })
    .await;
    assert_eq!(v["amount"], 100);
    assert_eq!(balance(&c, &pay, &a).await, 900);
    assert_eq!(balance(&c, &pay, &b).await, 100);
    // A transfer with the same Idempotency-Key, as `user`.
    let same_key = |user: &'static str, from: &str, to: &str, amount: i64| {
        let body = json!({"from_account": from, "to_account": to, "amount": amount});
        let req = c.post(format!("{tx}/transfers"));
        as_user(req.header("idempotency-key", "same-key").json(&body), user)
    };
    // Same key, different transfer: refused.
    let (st, _) = same_key("alice", &a, &b, 999).await;
    assert_eq!(st, 422);
    // Keys are per user: bob's identical key is bob's own transfer, never a replay of alice's.
    let (st, v) = same_key("bob", &b, &a, 10).await;
    assert_eq!(st, 201);
    assert_ne!(v["id"].as_str().unwrap(), id);
    assert_eq!(v["status"], "COMPLETED", "{v}");
    assert_eq!(balance(&c, &pay, &a).await, 910);
    // Someone else's account cannot be debited through a user's transfer.
    let theft = json!({"from_account": a, "to_account": b, "amount": 1});
    let (_, v) = as_user(c.post(format!("{tx}/transfers")).json(&theft), "mallory").await;
    assert_eq!(v["status"], "FAILED", "{v}");
    assert!(
        v["last_error"].as_str().unwrap().contains("not_owner"),
        "{v}"
    );
    assert_eq!(balance(&c, &pay, &a).await, 910);
    // Users only see their own transfers; anonymous calls are refused.
    let (st, _) = as_user(c.get(format!("{tx}/transfers/{id}")), "mallory").await;
    assert_eq!(st, 404);
    let r = c
        .post(format!("{tx}/transfers"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn users_register_login_profile_and_admin_sqlite() {
    users_flow(false).await;
}

#[tokio::test]
async fn users_register_login_profile_and_admin_mariadb() {
    users_flow(true).await;
}

async fn users_flow(mariadb: bool) {
    let mut dep = Deployment::new("users", mariadb);
    dep.set("GATEHOUSE_MODE", "production");
    let _u = dep.start("user", &["user"]).await;
    let c = http();
    let user = dep.url("user");
    let reg = |email: &str, role: Option<&str>| {
        let mut b = json!({"email": email, "password": "correct horse"});
        if let Some(r) = role {
            b["role"] = json!(r);
        }
        c.post(format!("{user}/register")).json(&b).send()
    };
    let r = reg("Ann@Example.com", None).await.unwrap();
    assert_eq!(r.status(), 201);
    let ann: Value = r.json().await.unwrap();
    assert_eq!(ann["role"], "USER");
    assert!(ann.get("password_hash").is_none());
    assert_eq!(reg("ann@example.com", None).await.unwrap().status(), 409);
    assert_eq!(reg("not-an-email", None).await.unwrap().status(), 400);
    // Self-made admins are refused outside test/demo mode.
    assert_eq!(
        reg("boss@example.com", Some("ADMIN"))
            .await
            .unwrap()
            .status(),
        403
    );
    let r = c
        .post(format!("{user}/register"))
        .header("x-internal-token", TOKEN)
        .json(&json!({"email": "boss@example.com", "password": "correct horse", "role": "ADMIN"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let login = |email: &str, pw: &str| {
        c.post(format!("{user}/login"))
            .json(&json!({"email": email, "password": pw}))
            .send()
    };
    assert_eq!(
        login("ann@example.com", "wrong password")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        login("nobody@example.com", "correct horse")
            .await
            .unwrap()
            .status(),
        401
    );
    let v: Value = login("ann@example.com", "correct horse")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    assert_eq!(v["expires_in"], 86400);

    // The token's claims: sub, email, role, iss, aud, exp = iat + 24 h.
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&b64url(payload)).unwrap();
    assert_eq!(claims["sub"], ann["id"]);
    assert_eq!(claims["email"], "ann@example.com");
    assert_eq!(claims["role"], "USER");
    assert_eq!(claims["iss"], "gatehouse");
    assert_eq!(claims["aud"], "gatehouse");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        86400
    );

    // Profile by bearer token, or by the gateway's X-User-Id.
    let r = c
        .get(format!("{user}/profile"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{user}/profile"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let profile = c
        .put(format!("{user}/profile"))
        .json(&json!({"display_name": "Ann"}));
    let (_, v) = as_user(profile, ann["id"].as_str().unwrap()).await;
    assert_eq!(v["display_name"], "Ann");
    assert_eq!(
        c.get(format!("{user}/profile"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Admin listing: 403 for a user, 200 for role ADMIN.
    let r = c
        .get(format!("{user}/admin/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (st, v) = as_user(
        c.get(format!("{user}/admin/users"))
            .header("x-user-role", "ADMIN"),
        "x",
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["users"].as_array().unwrap().len(), 2);
    // The password is never in the logs.
    let logs = std::fs::read_to_string(&_u.log).unwrap();
    assert!(!logs.contains("correct horse"));
    drop(_u);
    if mariadb {
        dep.drop_mariadb();
    }
}

fn b64url(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for ch in s.bytes() {
        let v = alphabet.iter().position(|&a| a == ch).unwrap() as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_redis_streams_across_processes_and_registry() {
    let _heavy = HEAVY.lock().await;
    events_and_registry_over(
        &[("GATEHOUSE_REDIS_URL", REDIS.to_string())],
        Topology::Standalone(REDIS.to_string()),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_registry_on_a_redis_cluster() {
    let _heavy = HEAVY.lock().await;
    // 3 primaries: the stream and each service's registry keys land on slots of their own.
    let cluster = gatehouse_testkit::RedisCluster::start();
    events_and_registry_over(
        &[("GATEHOUSE_REDIS_CLUSTER", cluster.urls().join(","))],
        Topology::Cluster(cluster.urls()),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_registry_on_redis_sentinel() {
    let _heavy = HEAVY.lock().await;
    // 1 primary, 1 replica, 3 sentinels (quorum 2, the primary down after 1 s).
    let mut set = RedisSentinels::start();
    let (master, urls) = (RedisSentinels::MASTER.to_string(), set.urls());
    let replica = set.replica_port();
    let env = [
        ("GATEHOUSE_REDIS_SENTINEL_MASTER", master.clone()),
        ("GATEHOUSE_REDIS_SENTINEL", urls.join(",")),
    ];
    let topology = Topology::Sentinel {
        master,
        nodes: urls,
    };
    // After the first transfer: SIGKILL the primary, then wait until the replica says it
    // is primary and every sentinel names it.
    let failover = || {
        set.kill_primary();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(set.replica_promoted() && set.primary_named_by_every_sentinel() == Some(replica)) {
            assert!(Instant::now() < deadline, "no promotion within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    events_and_registry_over(&env, topology, Some(Box::new(failover))).await;
}

/// A Redis failover done by the test between two transfers; it blocks until a replica
/// is primary.
type Failover<'a> = Box<dyn FnOnce() + Send + 'a>;

/// Waits (20 s at most, failing with `what`) for a notification of `kind` in the list at
/// `url` (`/notifications?user_id=..`); returns it.
async fn notification(c: &reqwest::Client, url: &str, kind: &str, what: &str) -> Value {
    eventually(what, Duration::from_secs(20), || {
        let (c, url) = (c.clone(), url.to_string());
        async move {
            let (_, v) = get(&c, &url).await;
            v["notifications"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["kind"] == kind).cloned())
        }
    })
    .await
}

/// Four service processes that share only Redis (`env` names it, `topology` is the same
/// for the test's own client): registration in the registry, a welcome notification and
/// a transfer's saga through the event stream, the read model built from it, and
/// deregistration on SIGTERM. With a `failover`, Redis fails over after the first
/// transfer and a second transfer must go through too.
async fn events_and_registry_over(
    env: &[(&str, String)],
    topology: Topology,
    failover: Option<Failover<'_>>,
) {
    let mut dep = Deployment::new("redis", false);
    let prefix = format!("test:{}", unique("svc"));
    for (k, v) in env {
        dep.set(k, v);
    }
    dep.set("GATEHOUSE_REDIS_PREFIX", &prefix);
    // Four separate processes: only Redis can carry events between them.
    let _p = dep.start("payment", &["payment"]).await;
    let _n = dep.start("notification", &["notification"]).await;
    let _u = dep.start("user", &["user"]).await;
    // The coordinator's configured peer ports lead nowhere: it can only reach payment and
    // notification by finding them in the registry.
    let mut tdep = dep.clone();
    let nowhere = free_ports(2);
    tdep.set("GATEHOUSE_PAYMENT_PORT", &nowhere[0].to_string())
        .set("GATEHOUSE_NOTIFICATION_PORT", &nowhere[1].to_string());
    let _t = tdep.start("transaction", &["transaction"]).await;
    let c = http();

    // Each service registered itself in the registry.
    let mut reg =
        gatehouse_registry::Registry::connect_topology(&topology, &format!("{prefix}:registry"))
            .await
            .expect("Redis must be running (the shared one at 127.0.0.1:6379, or the test's own)");
    for s in ["user", "payment", "transaction", "notification"] {
        let live = reg.list_live(s).await.unwrap();
        assert_eq!(
            live,
            vec![(format!("127.0.0.1:{}", dep.ports[s]), 1)],
            "{s}"
        );
    }

    // UserRegistered travels user -> stream -> notification (no direct call exists).
    let r = send(
        c.post(format!("{}/register", dep.url("user")))
            .json(&json!({"email": "r@example.com", "password": "password123"})),
    )
    .await;
    let uid = r.body["id"].as_str().unwrap().to_string();
    let notes_url = format!("{}/notifications?user_id={uid}", dep.url("notification"));
    notification(
        &c,
        &notes_url,
        "welcome",
        "welcome notification via Redis Streams",
    )
    .await;

    let pay = dep.url("payment");
    let a = account(&c, &pay, &uid, 500).await;
    let b = account(&c, &pay, "other", 0).await;
    transfer_through_the_stream(&c, &dep, &uid, (&a, &b), 200).await;
    if let Some(failover) = failover {
        let killed = Instant::now();
        tokio::task::block_in_place(failover);
        let promoted = killed.elapsed();
        // Each service's first command on the old primary's connection fails; the
        // next asks the sentinels again.
        transfer_through_the_stream(&c, &dep, &uid, (&a, &b), 50).await;
        println!(
            "FAILOVER sentinel: primary SIGKILLed; replica promoted and named by every \
                 sentinel after {:.2} s; second transfer COMPLETED in the read model with its \
                 notification delivered {:.2} s after the kill",
            promoted.as_secs_f64(),
            killed.elapsed().as_secs_f64()
        );
        assert_eq!(balance(&c, &pay, &a).await, 250, "both debits, once each");
        assert_eq!(balance(&c, &pay, &b).await, 250, "both credits, once each");
        // The test's own registry client was connected to the killed primary.
        reg = gatehouse_registry::Registry::connect_topology(
            &topology,
            &format!("{prefix}:registry"),
        )
        .await
        .unwrap();
    }

    // The stream and its consumer groups exist under the test's prefix.
    let mut conn = Connector::new(&topology, Duration::from_secs(2))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let len: i64 = redis::cmd("XLEN")
        .arg(format!("{prefix}:events"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(len >= 3, "stream length {len}");
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(format!("{prefix}:events"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(groups.len(), 2, "notification + transaction-history groups");
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}:events"))
        .query_async(&mut conn)
        .await
        .unwrap();

    // SIGTERM: a graceful exit that deregisters the instance.
    let mut u = _u;
    assert!(
        u.terminate(),
        "user service did not exit cleanly on SIGTERM:\n{}",
        u.log_tail()
    );
    assert!(reg.list_live("user").await.unwrap().is_empty());
    assert_eq!(reg.list_live("payment").await.unwrap().len(), 1);
}

/// Redis named two ways at once (a URL and a Sentinel set): the process refuses to start
/// and its error names both settings.
#[test]
fn redis_named_two_ways_is_refused_by_name() {
    let mut cmd = std::process::Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEHOUSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("all")
        .env("GATEHOUSE_DATA_DIR", temp_dir("twice").join("data"))
        .env("GATEHOUSE_REDIS_URL", REDIS)
        .env("GATEHOUSE_REDIS_SENTINEL_MASTER", "mymaster")
        .env("GATEHOUSE_REDIS_SENTINEL", "redis://127.0.0.1:26379");
    let (status, err) =
        gatehouse_testkit::run_bounded(&mut cmd, "gatehouse-services all", Duration::from_secs(20));
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(
            "Redis is named more than one way (set: GATEHOUSE_REDIS_URL (--redis-url), \
             GATEHOUSE_REDIS_SENTINEL (--redis-sentinel))"
        ),
        "{err}"
    );
}

/// A transfer of `amount` from `accounts.0` (owned by `uid`) to `accounts.1`, followed
/// until the saga is COMPLETED in the history read model (built from the stream) and the
/// saga's notify step told the payer.
async fn transfer_through_the_stream(
    c: &reqwest::Client,
    dep: &Deployment,
    uid: &str,
    accounts: (&str, &str),
    amount: i64,
) {
    let (_, v) = as_user(
        c.post(format!("{}/transfers", dep.url("transaction")))
            .json(&json!({"from_account": accounts.0, "to_account": accounts.1, "amount": amount})),
        uid,
    )
    .await;
    let saga = v["id"].as_str().unwrap().to_string();
    let hist_url = format!("{}/history", dep.url("transaction"));
    let item = eventually(
        "the transfer COMPLETED in the history read model",
        Duration::from_secs(20),
        || {
            let (c, url, uid, saga) = (c.clone(), hist_url.clone(), uid.to_string(), saga.clone());
            async move {
                let r = c.get(&url).header("x-user-id", &uid).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                if v["source"] != "read_model" {
                    return None;
                }
                v["items"]
                    .as_array()?
                    .iter()
                    .find(|i| i["saga_id"] == saga.as_str() && i["state"] == "COMPLETED")
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(item["direction"], "out", "{item}");
    let notes_url = format!("{}/notifications?user_id={uid}", dep.url("notification"));
    let sent = format!("You sent {amount} ");
    eventually(
        "the transfer_sent notification",
        Duration::from_secs(20),
        || {
            let (c, url, sent) = (c.clone(), notes_url.clone(), sent.clone());
            async move {
                let (_, v) = get(&c, &url).await;
                v["notifications"].as_array().and_then(|n| {
                    n.iter()
                        .find(|n| {
                            n["kind"] == "transfer_sent"
                                && n["message"].as_str().is_some_and(|m| m.starts_with(&sent))
                        })
                        .cloned()
                })
            }
        },
    )
    .await;
}

#[tokio::test]
async fn history_falls_back_to_the_write_model_when_the_read_model_lags() {
    let mut dep = Deployment::new("lag", false);
    dep.set("GATEHOUSE_DISABLE_PROJECTION", "1");
    let _all = dep
        .start("all", &["payment", "notification", "user", "transaction"])
        .await;
    let c = http();
    let pay = dep.url("payment");
    let a = account(&c, &pay, "ul", 500).await;
    let b = account(&c, &pay, "um", 0).await;
    let (st, _) = as_user(
        c.post(format!("{}/transfers", dep.url("transaction")))
            .json(&json!({"from_account": a, "to_account": b, "amount": 75})),
        "ul",
    )
    .await;
    assert_eq!(st, 201);
    let hist = format!("{}/history", dep.url("transaction"));
    let (_, v) = as_user(c.get(&hist), "ul").await;
    assert_eq!(v["source"], "write_model", "{v}");
    assert!(
        v["write_model_position"].as_i64().unwrap() > v["read_model_position"].as_i64().unwrap()
    );
    assert_eq!(v["items"][0]["amount"], 75);
    assert_eq!(v["items"][0]["state"], "COMPLETED");
    // The receiver sees it too, as incoming.
    let (_, v) = as_user(c.get(&hist), "um").await;
    assert_eq!(v["items"][0]["direction"], "in");
    // The lagging read model itself is empty.
    let (_, v) = as_user(c.get(format!("{hist}?source=read")), "ul").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
    // In-process delivery still reached the notification service.
    let (_, v) = get(
        &c,
        &format!("{}/notifications?user_id=um", dep.url("notification")),
    )
    .await;
    assert_eq!(v["notifications"][0]["kind"], "transfer_received", "{v}");
}

#[tokio::test]
async fn metrics_expose_pool_gauges_and_request_counts() {
    let dep = Deployment::new("metrics", false);
    let _all = dep
        .start("all", &["payment", "notification", "user", "transaction"])
        .await;
    let c = http();
    for s in ["user", "payment", "transaction", "notification"] {
        c.get(format!("{}/health", dep.url(s)))
            .send()
            .await
            .unwrap();
        let r = c
            .get(format!("{}/metrics", dep.url(s)))
            .send()
            .await
            .unwrap();
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let m = r.text().await.unwrap();
        for state in ["in_use", "idle", "max"] {
            let line = format!(
                "gatehouse_service_db_pool_connections{{service=\"{s}\",state=\"{state}\"}}"
            );
            assert!(m.contains(&line), "{s}: missing {line}\n{m}");
        }
        assert!(m.contains(&format!(
            "gatehouse_service_db_pool_connections{{service=\"{s}\",state=\"max\"}} 10"
        )));
        assert!(m.contains("route=\"/health\""), "{m}");
    }
}

/// Without the `demo` feature the binary has no gateway: the demo command says how to get
/// it and exits non-zero before starting anything.
#[cfg(not(feature = "demo"))]
#[test]
fn demo_without_the_feature_refuses_and_names_the_command() {
    let out = std::process::Command::new(BIN)
        .arg("demo")
        .env("GATEHOUSE_DATA_DIR", temp_dir("nodemo").join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("built without the `demo` feature") && err.contains("--features demo -- demo"),
        "{err}"
    );
}

#[cfg(feature = "demo")]
#[tokio::test]
async fn demo_starts_all_services_with_a_generated_secret() {
    let mut dep = Deployment::new("demo", false);
    dep.env.remove("GATEHOUSE_JWT_SECRET");
    dep.env.remove("GATEHOUSE_INTERNAL_TOKEN");
    dep.env.remove("GATEHOUSE_MODE");
    // The demo's gateway, on free ports in front of this deployment's services: the shipped
    // config/demo.yaml with its ports replaced.
    let gw_ports = free_ports(3);
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo.yaml"),
    )
    .unwrap();
    let config = shipped
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{}", gw_ports[0]))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", gw_ports[1]))
        .replace(
            "127.0.0.1:3001",
            &format!("127.0.0.1:{}", dep.ports["user"]),
        )
        .replace(
            "127.0.0.1:3003",
            &format!("127.0.0.1:{}", dep.ports["transaction"]),
        )
        .replace(
            "127.0.0.1:3004",
            &format!("127.0.0.1:{}", dep.ports["payment"]),
        )
        .replace(
            "127.0.0.1:3005",
            &format!("127.0.0.1:{}", dep.ports["notification"]),
        )
        // Health checks every second, so that a stopped service is seen within seconds.
        .replace("interval: 10s", "interval: 1s");
    let config_path = dep.dir.join("demo.yaml");
    std::fs::write(&config_path, config).unwrap();
    dep.set("GATEHOUSE_DEMO_CONFIG", config_path.to_str().unwrap());
    let control = format!("127.0.0.1:{}", gw_ports[2]);
    dep.set("GATEHOUSE_DEMO_CONTROL", &control);
    let d = dep
        .start("demo", &["payment", "notification", "user", "transaction"])
        .await;
    let gateway = format!("http://127.0.0.1:{}", gw_ports[0]);
    let c = http();
    let user = dep.url("user");
    let r = c
        .post(format!("{user}/register"))
        .json(&json!({"email": "d@example.com", "password": "password123", "role": "ADMIN"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "demo mode allows an ADMIN for the walk-through"
    );
    let r = c
        .post(format!("{user}/login"))
        .json(&json!({"email": "d@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login works with the generated secret");

    // Through the demo's gateway: login issues a token the gateway accepts.
    let mut ready = false;
    for _ in 0..200 {
        if c.get(format!("http://127.0.0.1:{}/readyz", gw_ports[1]))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let logs = std::fs::read_to_string(&d.log).unwrap();
    assert!(ready, "the demo's gateway became ready:\n{logs}");
    let r = c
        .post(format!("{gateway}/api/user/login"))
        .json(&json!({"email": "d@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .get(format!("{gateway}/api/user/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the gateway refuses a request without a token"
    );
    let r = c
        .get(format!("{gateway}/api/user/profile"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the gateway verifies the user service's token"
    );
    let r = c
        .get(format!("{gateway}/api/admin/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "an ADMIN passes the gateway's role check");

    let admin = format!("http://127.0.0.1:{}", gw_ports[1]);
    demo_payment_failing_every_operation_shows_on_the_dashboard(&c, &gateway, &admin, &token).await;
    demo_control_stops_and_starts_one_service(&c, &admin, &control, &dep).await;
}

/// The payment service's fault injection set to fail every debit: transfers through the
/// gateway end FAILED while the gateway itself sees only the transaction service's 2xx; the
/// dashboard's status reads the payment service's own operation counters and says so.
#[cfg(feature = "demo")]
async fn demo_payment_failing_every_operation_shows_on_the_dashboard(
    c: &reqwest::Client,
    gateway: &str,
    admin: &str,
    token: &str,
) {
    let r = c
        .put(format!("{gateway}/api/payment/admin/faults"))
        .bearer_auth(token)
        .json(&json!({ "fail": 1.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the demo's ADMIN turns on payment faults");
    let mut accounts = Vec::new();
    for balance in [1000, 0] {
        let r = send(
            c.post(format!("{gateway}/api/payment/accounts"))
                .bearer_auth(token)
                .json(&json!({ "initial_balance": balance })),
        )
        .await;
        assert_eq!(r.status, 201);
        accounts.push(r.body["id"].as_str().unwrap().to_string());
    }
    let status = eventually("the payment service's failures on /admin/status", Duration::from_secs(60), || {
        let (c, gateway, admin, token, accounts) = (c.clone(), gateway.to_string(), admin.to_string(), token.to_string(), accounts.clone());
        async move {
            // A few transfers per poll: each tries its debit and fails.
            for _ in 0..3 {
                let r = c
                    .post(format!("{gateway}/api/transaction/transfers"))
                    .bearer_auth(&token)
                    .json(&json!({ "from_account": accounts[0], "to_account": accounts[1], "amount": 1 }))
                    .send()
                    .await
                    .ok()?;
                assert!(r.status().is_success(), "the gateway sees a 2xx: {}", r.status());
            }
            let v: Value = c.get(format!("{admin}/admin/status")).send().await.ok()?.json().await.ok()?;
            let payment = v["services"].as_array()?.iter().find(|s| s["name"] == "payment")?.clone();
            // Every debit fails; the voids that follow succeed (faults hit debits and
            // credits only): about 2 of 3 operations fail.
            (payment["operations"]["error_rate"].as_f64()? >= 0.5).then_some(v)
        }
    })
    .await;
    assert_eq!(status["status"], "DEGRADED", "{status}");
    let reason = status["status_reason"].as_str().unwrap();
    assert!(reason.contains("service payment"), "{reason}");
    let r = c
        .put(format!("{gateway}/api/payment/admin/faults"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The demo's control API stops the payment service (its port closes): the gateway's health
/// checks mark it down on the dashboard; started again, it is healthy again.
#[cfg(feature = "demo")]
async fn demo_control_stops_and_starts_one_service(
    c: &reqwest::Client,
    admin: &str,
    control: &str,
    dep: &Deployment,
) {
    let healthy = |want: u64| {
        let (c, admin) = (c.clone(), admin.to_string());
        async move {
            let v: Value = c
                .get(format!("{admin}/admin/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let up = v["upstreams"]
                .as_array()?
                .iter()
                .find(|u| u["name"] == "payment")?
                .clone();
            (up["healthy_endpoints"].as_u64()? == want).then_some(v)
        }
    };
    let switch = |path: &'static str| {
        let (c, url) = (c.clone(), format!("http://{control}/services/{path}"));
        async move {
            let r = c.post(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = switch("payment/stop").await;
    assert_eq!((status, &v["state"]), (200, &json!("stopped")));
    assert!(
        c.get(format!("{}/health", dep.url("payment")))
            .send()
            .await
            .is_err(),
        "a stopped service's port refuses connections"
    );
    let v = eventually(
        "payment down on /admin/status",
        Duration::from_secs(20),
        || healthy(0),
    )
    .await;
    assert_ne!(v["status"], "HEALTHY", "{v}");
    let r = c
        .get(format!("http://{control}/services"))
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    let states: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert!(
        states.contains(&("payment", "stopped")) && states.contains(&("user", "serving")),
        "{states:?}"
    );

    let (status, v) = switch("payment/start").await;
    assert_eq!((status, &v["state"]), (200, &json!("serving")));
    eventually("payment healthy again", Duration::from_secs(20), || {
        healthy(1)
    })
    .await;
    assert_eq!(switch("nope/stop").await.0, 404);
}

#[test]
fn openapi_lists_every_route() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = std::fs::read_to_string(root.join("openapi.yaml")).unwrap();
    let mut routes = vec!["/health".to_string(), "/metrics".to_string()];
    for f in ["user.rs", "payment.rs", "transaction.rs", "notification.rs"] {
        let src = std::fs::read_to_string(root.join("src").join(f)).unwrap();
        for part in src.split(".route(\"").skip(1) {
            routes.push(part.split('"').next().unwrap().to_string());
        }
    }
    assert!(routes.len() > 15, "{routes:?}");
    for r in routes {
        assert!(
            spec.contains(&format!("\n  {r}:\n")),
            "openapi.yaml misses {r}"
        );
    }
}
