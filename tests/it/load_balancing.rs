//! Load balancing: smooth weighted round-robin sends the exact nginx interleaving.

use crate::support::*;

#[tokio::test]
async fn smooth_weighted_round_robin_is_exact() {
    let [a, b, c] = upstreams(["a", "b", "c"]).await;
    let ups = upstream_yaml("pool", &[(&a.addr, 5), (&b.addr, 1), (&c.addr, 1)]);
    let gw = TestGateway::start(&base(
        &ups,
        "  - { name: all, match: { path_prefix: / }, upstream: pool }\n",
    ))
    .await;
    let mut seq = String::new();
    for _ in 0..(7 * 20) {
        let (_, name) = upstream_of(get(&gw, "/").await).await;
        seq.push_str(&name);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (100, 20, 20));
    // smooth: every window of 7 holds exactly 5 a, 1 b, 1 c, and b/c never come in a row
    for w in seq.as_bytes().chunks(7) {
        let count = |ch| w.iter().filter(|x| **x == ch).count();
        assert_eq!((count(b'a'), count(b'b'), count(b'c')), (5, 1, 1), "{seq}");
    }
    assert!(!seq.contains("aaaaa"), "not smooth: {seq}");
}
