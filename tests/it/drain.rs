//! `weight: 0` drains an endpoint: set by a reload while a long request runs on it, the
//! request completes and no new request reaches the endpoint.

use std::time::{Duration, Instant};

use crate::support::*;

fn config(a: &str, b: &str, weight_a: u32) -> String {
    format!(
        r#"
listeners: [ {{ name: public, address: "{{listen}}" }} ]
admin: {{ address: "{{admin}}" }}
upstreams:
  app: {{ discovery: {{ static: [ {{ address: "{a}", weight: {weight_a} }}, {{ address: "{b}" }} ] }} }}
routes:
  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}
"#
    )
}

#[tokio::test]
async fn weight_zero_by_reload_drains_an_endpoint() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.set_mode(Mode::Sleep(4000));
    let (aa, ba) = (a.addr.to_string(), b.addr.to_string());
    let gw = TestGateway::start(&config(&aa, &ba, 1)).await;

    // Equal weights alternate: one of the first two requests lands on `a` and stays there.
    let url = gw.url("/long");
    let long = tokio::spawn(async move {
        let r = client().get(url).send().await.unwrap();
        (
            r.status().as_u16(),
            r.headers()["x-upstream"].to_str().unwrap().to_string(),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.hits() == 0 {
        if b.hits() > 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if a.hits() == 0 {
        // The first pick went to `b`: the next one goes to `a`.
        assert_eq!(status_of(&gw, "/first").await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.hits(), 1, "a long request is running on a");

    let before = gw.config_hash().await;
    gw.write_config(&config(&aa, &ba, 0));
    assert_reloaded_from(&gw, &before, Duration::from_secs(5)).await;
    assert!(
        !long.is_finished(),
        "the long request is still in flight after the reload"
    );

    let b_before = b.hits();
    for _ in 0..10 {
        let r = client().get(gw.url("/new")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-upstream"], "b");
    }
    assert_eq!(b.hits(), b_before + 10);
    assert_eq!(a.hits(), 1, "no new request reached the drained endpoint");

    let (status, upstream) = long.await.unwrap();
    assert_eq!(
        (status, upstream.as_str()),
        (200, "a"),
        "the in-flight request completed"
    );

    // Every endpoint drained: no endpoint takes new requests.
    let before = gw.config_hash().await;
    let all_drained = config(&aa, &ba, 0).replace(
        &format!("{{ address: \"{ba}\" }}"),
        &format!("{{ address: \"{ba}\", weight: 0 }}"),
    );
    assert!(all_drained.contains("weight: 0 }, {"));
    gw.write_config(&all_drained);
    assert_reloaded_from(&gw, &before, Duration::from_secs(5)).await;
    let r = client().get(gw.url("/none")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-gatehouse-error"], "no_healthy_endpoint");
}
