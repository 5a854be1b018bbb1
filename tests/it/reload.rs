//! Hot reload by every trigger (file edit, rename, ConfigMap symlink swap, SIGHUP, the admin
//! endpoint), a broken file that keeps the old routes, restart-only fields, and the state a
//! reload carries over (endpoint health, rate-limit counters).

use std::time::Duration;

use crate::support::*;

fn two_routes(a: &TestUpstream, b: &TestUpstream, with_b_route: bool) -> String {
    let ups = static_upstream("a", &[a.addr], "") + &static_upstream("b", &[b.addr], "");
    let mut routes = route("a", "/a", "a");
    if with_b_route {
        routes += &route("b", "/b", "b");
    }
    config(&ups, &routes)
}

/// A gateway started on `v1` (route `/a` to upstream `a`) or, `with_b_route`, on `v2`
/// (and route `/b` to `b`); both texts; the upstreams, kept alive for the gateway.
async fn start_on(with_b_route: bool) -> (TestGateway, String, String, [TestUpstream; 2]) {
    let [a, b] = upstreams(["a", "b"]).await;
    let (v1, v2) = (two_routes(&a, &b, false), two_routes(&a, &b, true));
    let gw = TestGateway::start(if with_b_route { &v2 } else { &v1 }).await;
    (gw, v1, v2, [a, b])
}

#[tokio::test]
async fn reload_by_file_edit_rename_and_configmap_symlink_swap() {
    let (gw, v1, v2, _ups) = start_on(false).await;
    assert_eq!(status_of(&gw, "/b").await, 404);

    // In-place edit.
    gw.write_config(&v2);
    assert_applied(&gw, &v2).await;
    assert_eq!(status_of(&gw, "/b").await, 200);
    // Write a temporary file and rename it over.
    rename_over(&gw.config_path, &fill(&v1, gw.port, gw.admin_port));
    assert_applied(&gw, &v1).await;
    assert_eq!(status_of(&gw, "/b").await, 404);

    // Kubernetes ConfigMap: gatehouse.yaml -> ..data/gatehouse.yaml, ..data -> ..v1;
    // an update writes ..v2 and renames a new ..data link over the old one.
    let dir = gw.config_path.parent().unwrap().to_path_buf();
    let publish = |version: &str, yaml: &str| {
        std::fs::create_dir(dir.join(version)).unwrap();
        std::fs::write(
            dir.join(version).join("gatehouse.yaml"),
            fill(yaml, gw.port, gw.admin_port),
        )
        .unwrap();
        std::os::unix::fs::symlink(version, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    };
    publish("..v1", &v1);
    std::os::unix::fs::symlink("..data/gatehouse.yaml", dir.join("link~")).unwrap();
    std::fs::rename(dir.join("link~"), &gw.config_path).unwrap();
    publish("..v2", &v2);
    assert_applied(&gw, &v2).await;
    assert_eq!(status_of(&gw, "/b").await, 200);
    publish("..v3", &v1);
    assert_applied(&gw, &v1).await;
    assert_eq!(status_of(&gw, "/b").await, 404);
    let m = gw.metrics().await;
    let reloads =
        |result| metric_value(&m, "gatehouse_config_reloads_total", &[("result", result)]);
    assert_eq!(reloads("failure"), Some(0.0));
    assert!(reloads("success").unwrap() >= 5.0);
    let h = hash_of(&gw, &v1);
    assert_eq!(
        metric_value(&m, "gatehouse_config_info", &[("hash", &h[..16])]),
        Some(1.0)
    );
}

#[tokio::test]
async fn reload_by_sighup_and_admin_endpoint() {
    let (gw, v1, v2, _ups) = start_on(false).await;
    let outside = tempfile::tempdir().unwrap();
    let real = detach_config(&gw, &outside);
    // Let the watcher see the link swap (same content: no reload) before editing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ts0 = metric(
        &gw,
        "gatehouse_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .await;
    assert!(ts0 > 1.0e9);

    // An edit the watcher cannot see stays unapplied...
    std::fs::write(&real, fill(&v2, gw.port, gw.admin_port)).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(gw.config_hash().await, hash_of(&gw, &v1));
    // ...until SIGHUP.
    gw.signal(1);
    assert_applied(&gw, &v2).await;
    assert_eq!(status_of(&gw, "/b").await, 200);
    assert!(gw.logs().contains(r#""trigger":"signal""#), "{}", gw.logs());

    // The admin endpoint.
    std::fs::write(&real, fill(&v1, gw.port, gw.admin_port)).unwrap();
    let r = admin_reload(&gw).await;
    assert_eq!(r.status, 200);
    let body = r.body;
    assert_eq!(
        (body["result"].as_str(), body["changed"].as_bool()),
        (Some("success"), Some(true))
    );
    assert_eq!(body["hash"], hash_of(&gw, &v1));
    assert_eq!(status_of(&gw, "/b").await, 404);
    // Nothing changed: still a success, `changed: false`.
    let body = admin_reload(&gw).await.body;
    assert_eq!(body["changed"], false);
    assert_eq!(admin_status(&gw, "/admin/reload").await, 405);
    let ts1 = metric(
        &gw,
        "gatehouse_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .await;
    assert!(ts1 > ts0);
}

#[tokio::test]
async fn broken_file_keeps_the_old_routes_and_admin_returns_the_errors() {
    let (gw, _, v2, _ups) = start_on(true).await;
    let failures = async || reload_failures(&gw).await;
    let ts = metric(
        &gw,
        "gatehouse_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .await;

    // A syntax error (watched file): refused with file:line:column; old routes serve.
    let broken = v2.replace(
        "routes:\n",
        "routes:\n  - { name: x, match: { path_prefix: /x }\n",
    );
    gw.write_config(&broken);
    assert!(
        eventually(Duration::from_secs(10), async || failures().await >= 1.0).await,
        "{}",
        gw.logs()
    );
    assert_eq!(gw.config_hash().await, hash_of(&gw, &v2));
    assert_eq!(
        (status_of(&gw, "/a").await, status_of(&gw, "/b").await),
        (200, 200)
    );
    assert!(gw.logs().contains("config reload refused"), "{}", gw.logs());
    assert!(
        gw.logs().contains("gatehouse.yaml:"),
        "the log names file:line:column:\n{}",
        gw.logs()
    );

    // A semantic error through the admin endpoint: 422 with every error as JSON.
    let bad = v2.replace("upstream: b }", "upstream: nope }");
    gw.write_config(&bad);
    let r = admin_reload(&gw).await;
    assert_eq!(r.status, 422);
    let body = r.body;
    assert_eq!(body["result"], "failure");
    let e = &body["errors"][0];
    assert_eq!(e["path"], "routes[1].upstream");
    assert!(e["message"].as_str().unwrap().contains("nope"), "{body}");
    assert!(
        e["line"].as_u64().unwrap() > 0 && e["column"].as_u64().unwrap() > 0,
        "{body}"
    );
    assert!(e["file"].as_str().unwrap().ends_with("gatehouse.yaml"));
    assert_eq!(
        (status_of(&gw, "/a").await, status_of(&gw, "/b").await),
        (200, 200)
    );
    assert_eq!(
        metric(
            &gw,
            "gatehouse_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .await,
        ts
    );
    let h = hash_of(&gw, &v2);
    assert_eq!(
        metric(&gw, "gatehouse_config_info", &[("hash", &h[..16])]).await,
        1.0
    );

    // A bad endpoint file named by a reload refuses the config too.
    let with_file = v2.replace(
        "  b:\n    discovery: { static:",
        "  b:\n    discovery: { file: { path: missing.yaml } }\n    x_static:",
    );
    let with_file = with_file
        .lines()
        .filter(|l| !l.contains("x_static"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    gw.write_config(&with_file);
    let r = admin_reload(&gw).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(status_of(&gw, "/b").await, 200);
}

#[tokio::test]
async fn restoring_the_running_file_after_a_broken_edit_clears_degraded() {
    let (gw, _, v2, _ups) = start_on(true).await;
    let status = async || admin_json(&gw, "/admin/status").await["status"].clone();
    assert_eq!(status().await, "HEALTHY");
    let becomes = async |want: &str| {
        eventually(Duration::from_secs(10), async || status().await == want).await
    };
    gw.write_config(&v2.replace("routes:\n", "routes:\n  - { name: x\n"));
    assert!(becomes("DEGRADED").await, "{}", gw.logs());
    // The exact running text again (an editor's undo): a successful no-op reload.
    gw.write_config(&v2);
    assert!(
        becomes("HEALTHY").await,
        "restoring the running file clears DEGRADED:\n{}",
        gw.logs()
    );
    assert_eq!(gw.config_hash().await, hash_of(&gw, &v2));
    let reloads = admin_json(&gw, "/admin/status").await["reloads"].clone();
    assert_eq!(reloads[0]["result"], "success", "{reloads}");
    assert_eq!(reloads[1]["result"], "failure", "{reloads}");
}

#[tokio::test]
async fn a_reload_reports_what_it_changed_and_what_waits_for_a_restart() {
    let [a, b] = upstreams(["a", "b"]).await;
    let v1 = two_routes(&a, &b, false);
    let gw = TestGateway::start(&v1).await;
    let detached = tempfile::tempdir().unwrap();
    let real = detach_config(&gw, &detached);
    // The swap to a symlink is itself an event: let the watcher look at it (same text, no
    // reload) before the new text appears behind the link, so that only the admin call
    // below applies it (the watcher waits at most 1 s for a quiet file).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v2 = two_routes(&a, &b, true)
        .replace("runtime: { threads: 1 }", "runtime: { threads: 2 }")
        .replace(
            &format!("static: [ {{ address: \"{}\" }} ]", a.addr),
            &format!("static: [ {{ address: \"{}\", weight: 3 }} ]", a.addr),
        );
    std::fs::write(&real, fill(&v2, gw.port, gw.admin_port)).unwrap();
    let r = admin_reload(&gw).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let diff = &r.body["diff"];
    assert_eq!(diff["routes_added"], serde_json::json!(["b"]), "{}", r.body);
    assert_eq!(
        diff["upstreams_changed"],
        serde_json::json!([format!("a: {} weight 1->3", a.addr)]),
        "{}",
        r.body
    );
    assert_eq!(diff["pending_restart"], serde_json::json!(["runtime"]));
    let changes = r.body["changes"].as_str().unwrap().to_string();
    assert_eq!(
        changes,
        format!(
            "routes +b; upstreams ~a: {} weight 1->3; pending restart: runtime",
            a.addr
        )
    );
    // The same line in the log and the dashboard's reload history.
    assert!(gw.logs().contains(&changes), "{}", gw.logs());
    let status = admin_json(&gw, "/admin/status").await;
    assert_eq!(status["reloads"][0]["changes"], changes.as_str());
    assert_eq!(
        status["config"]["pending_restart"],
        serde_json::json!(["runtime"])
    );
    // Nothing new: a no-op reload says so.
    let r = admin_reload(&gw).await;
    assert_eq!(r.body["changes"], "pending restart: runtime", "{}", r.body);
}

#[tokio::test]
async fn restart_only_fields_are_reported_and_admin_config_shows_the_running_one() {
    let a = TestUpstream::start("a").await;
    let ups = static_upstream("a", &[a.addr], "");
    let v1 = String::from("redis: { url: \"redis://user:hunter2@127.0.0.1:6379\" }\n")
        + &config(&ups, &route("a", "/a", "a"));
    let gw = TestGateway::start(&v1).await;
    let cfg = admin_json(&gw, "/admin/config").await;
    assert_eq!(cfg["hash"], hash_of(&gw, &v1));
    assert!(cfg["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        cfg["config"]["redis"]["url"],
        "redis://user:<redacted>@127.0.0.1:6379"
    );
    assert!(!cfg.to_string().contains("hunter2"));

    let other = free_port();
    let v2 = v1
        .replace(
            "address: \"{listen}\"",
            &format!("address: \"127.0.0.1:{other}\""),
        )
        .replace("threads: 1", "threads: 2")
        + &route("a2", "/a2", "a");
    gw.write_config(&v2);
    let r = admin_reload(&gw).await;
    let body = r.body;
    assert_eq!(body["result"], "success", "{body}");
    let warnings: Vec<String> = body["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("listeners") && w.contains("restart")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("runtime") && w.contains("restart")),
        "{warnings:?}"
    );
    assert!(
        gw.logs().contains("takes effect only after a restart"),
        "{}",
        gw.logs()
    );
    // The rest applied; the listener did not move, and /admin/config says so.
    assert_eq!(status_of(&gw, "/a2").await, 200);
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", other))
        .await
        .is_err());
    let cfg = admin_json(&gw, "/admin/config").await;
    assert_eq!(
        cfg["config"]["listeners"][0]["address"],
        format!("127.0.0.1:{}", gw.port)
    );
    assert_eq!(cfg["config"]["runtime"]["threads"], 1);
}

#[tokio::test]
async fn reload_carries_endpoint_state_and_drops_removed_endpoints() {
    let [a, b, c] = upstreams(["a", "b", "c"]).await;
    let v = |eps: &[std::net::SocketAddr], interval: &str| {
        config(
            &checked_upstream("app", eps, interval, "healthy"),
            &route("app", "/", "app"),
        )
    };
    let v1 = v(&[a.addr, b.addr], "300ms");
    let gw = TestGateway::start(&v1).await;
    let ea = a.addr.to_string();
    let find = async |addr: &str| {
        endpoints(&gw, "app")
            .await
            .into_iter()
            .find(|e| e["address"] == addr)
    };
    a.set_health(500);
    assert!(
        eventually(Duration::from_secs(10), async || find(&ea)
            .await
            .is_some_and(|e| e["healthy"] == false))
        .await
    );
    let since = find(&ea).await.unwrap()["since"].clone();

    // Add c and change the check interval: a is still unhealthy right after the swap
    // (a fresh endpoint would start healthy and need 2 failed checks).
    let v2 = v(&[a.addr, b.addr, c.addr], "350ms");
    gw.write_config(&v2);
    assert_applied(&gw, &v2).await;
    let ja = find(&ea).await.unwrap();
    assert_eq!(
        (ja["healthy"].as_bool(), &ja["since"]),
        (Some(false), &since)
    );
    assert_eq!(find(&c.addr.to_string()).await.unwrap()["healthy"], true);

    // Remove a: its series is gone. Bring it back: fresh state (healthy-unverified).
    a.set_health(200);
    let v3 = v(&[b.addr, c.addr], "350ms");
    gw.write_config(&v3);
    assert_applied(&gw, &v3).await;
    assert!(find(&ea).await.is_none());
    assert_eq!(
        metric_value(
            &gw.metrics().await,
            "gatehouse_upstream_endpoint_healthy",
            &[("endpoint", &ea)]
        ),
        None
    );
    gw.write_config(&v2);
    assert_applied(&gw, &v2).await;
    let ja = find(&ea).await.unwrap();
    assert_eq!(ja["healthy"], true);
    assert_ne!(ja["since"], since);
}

#[tokio::test]
async fn reload_keeps_rate_limit_counters_of_routes_that_stay() {
    let a = TestUpstream::start("a").await;
    let ups = static_upstream("a", &[a.addr], "");
    let limited = "  - name: limited\n    match: { path_prefix: /l }\n    upstream: a\n    filters:\n      - rate_limit: { name: per_user, key: \"header:x-user\", limit: 3, window: 1m }\n";
    let v1 = config(&ups, limited);
    let v2 = config(&ups, &(limited.to_string() + &route("other", "/o", "a")));
    let gw = TestGateway::start(&v1).await;
    let send = async || {
        get_with(&gw, "/l", &[("x-user", "u1")])
            .await
            .status()
            .as_u16()
    };
    assert_eq!((send().await, send().await), (200, 200));
    gw.write_config(&v2);
    assert_applied(&gw, &v2).await;
    assert_eq!(send().await, 200);
    assert_eq!(
        send().await,
        429,
        "the count of the route's limit survived the reload"
    );
}

#[tokio::test]
async fn a_file_that_is_not_utf8_is_refused_alike_by_the_watcher_sighup_and_admin() {
    // Started on both routes: `running`.
    let (gw, _, running, _ups) = start_on(true).await;
    let failures = async || reload_failures(&gw).await;
    let refusals = |trigger: &str| {
        gw.logs()
            .lines()
            .filter(|l| {
                l.contains("config reload refused")
                    && l.contains("not UTF-8 text")
                    && l.contains(&format!(r#""trigger":"{trigger}""#))
            })
            .count()
    };
    // Latin-1 bytes in a comment: YAML text must be UTF-8.
    let mut bytes = fill(&running, gw.port, gw.admin_port).into_bytes();
    bytes.extend_from_slice(b"# caf\xe9\n");
    let tmp = gw.config_path.with_extension("tmp~");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &gw.config_path).unwrap();

    // The watcher: log line, failure count, DEGRADED.
    assert!(
        eventually(Duration::from_secs(10), async || failures().await >= 1.0).await,
        "the watcher reported the refusal:\n{}",
        gw.logs()
    );
    assert_eq!(refusals("file"), 1, "{}", gw.logs());
    let status = admin_json(&gw, "/admin/status").await;
    assert_eq!(status["status"], "DEGRADED", "{status}");
    assert!(
        status["status_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("last config reload failed"),
        "{status}"
    );
    assert_eq!(status_of(&gw, "/b").await, 200, "the old config serves");

    // SIGHUP and the admin endpoint report the same refusal the same way.
    gw.signal(1);
    assert!(
        eventually(Duration::from_secs(10), async || failures().await >= 2.0).await,
        "{}",
        gw.logs()
    );
    assert_eq!(refusals("signal"), 1, "{}", gw.logs());
    let r = admin_reload(&gw).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not UTF-8 text"),
        "{}",
        r.body
    );
    assert_eq!(failures().await, 3.0);
    assert_eq!(refusals("admin"), 1, "{}", gw.logs());
    assert_eq!(gw.config_hash().await, hash_of(&gw, &running));
}

#[tokio::test]
async fn an_in_place_write_in_pieces_is_applied_whole_and_never_as_zero_routes() {
    use std::io::Write;
    let (gw, _, v2, _ups) = start_on(false).await;
    let text = fill(&v2, gw.port, gw.admin_port);
    // The first piece is valid YAML without `routes`: applied alone it would be a
    // zero-route config (404 for everything).
    let cut = text.find("routes:").unwrap();

    // A writer that keeps the file open and pauses longer than the quiet period.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&gw.config_path)
        .unwrap();
    f.write_all(&text.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    let refused = eventually(Duration::from_secs(10), async || {
        metric(
            &gw,
            "gatehouse_config_reloads_total",
            &[("result", "failure")],
        )
        .await
            >= 1.0
    })
    .await;
    assert!(refused, "the half-written file was refused:\n{}", gw.logs());
    assert!(gw.logs().contains("likely half-written"), "{}", gw.logs());
    assert_eq!(
        status_of(&gw, "/a").await,
        200,
        "the old routes still serve"
    );

    f.write_all(&text.as_bytes()[cut..]).unwrap();
    drop(f);
    assert!(
        wait_applied(&gw, &v2, Duration::from_secs(10)).await,
        "applied on close:\n{}",
        gw.logs()
    );
    assert_eq!(
        (status_of(&gw, "/a").await, status_of(&gw, "/b").await),
        (200, 200)
    );

    // Writing `routes: []` out removes every route on purpose.
    let none = v2.split("routes:").next().unwrap().to_string() + "routes: []\n";
    rename_over(&gw.config_path, &fill(&none, gw.port, gw.admin_port));
    assert!(
        wait_applied(&gw, &none, Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "/a").await, 404);
}

#[tokio::test]
async fn a_writer_that_closes_the_file_is_applied_without_waiting_for_quiet() {
    use std::io::Write;
    let (gw, _, v2, _ups) = start_on(false).await;
    let text = fill(&v2, gw.port, gw.admin_port);
    // `cat > file`: several writes, then close.
    let mut f = std::fs::File::create(&gw.config_path).unwrap();
    for piece in text.as_bytes().chunks(64) {
        f.write_all(piece).unwrap();
    }
    drop(f);
    assert!(
        wait_applied(&gw, &v2, Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "/b").await, 200);
    assert_eq!(
        metric(
            &gw,
            "gatehouse_config_reloads_total",
            &[("result", "failure")],
        )
        .await,
        0.0,
        "no piece of the write was read as a config"
    );
}
