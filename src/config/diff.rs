//! What a reload changes, in an operator's words: routes added, removed and changed,
//! upstreams and their static endpoints (address and weight), and restart-only sections
//! that wait for a restart.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::{DiscoveryConfig, GatewayConfig};

/// The difference between the running config and the one a reload applies. Empty lists
/// are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConfigDiff {
    /// Routes by name that are new.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes_added: Vec<String>,
    /// Routes by name that are gone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes_removed: Vec<String>,
    /// Routes whose match, upstream, rewrite, limits or filters changed (or that moved in
    /// the declared order, which decides between equal matches).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes_changed: Vec<String>,
    /// Upstreams that are new.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams_added: Vec<String>,
    /// Upstreams that are gone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams_removed: Vec<String>,
    /// Upstreams whose settings changed, one line each naming what: `app: +127.0.0.1:3002,
    /// -127.0.0.1:3001, 127.0.0.1:3003 weight 1->5, timeouts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams_changed: Vec<String>,
    /// Restart-only sections that differ from what runs (`listeners`, `runtime`, ...):
    /// the running values stay until a restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
}

impl ConfigDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// One line for the log and the reload history, e.g. `routes +orders -legacy ~users;
    /// upstreams ~app: +127.0.0.1:3002; pending restart: runtime` (`no change` when empty).
    /// Each section names at most [`SUMMARY_NAMES`] entries and counts the rest, so that a
    /// reload of 10,000 generated routes writes one short line, not 70 KB.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let sections = [
            (
                "routes",
                [
                    &self.routes_added,
                    &self.routes_removed,
                    &self.routes_changed,
                ],
            ),
            (
                "upstreams",
                [
                    &self.upstreams_added,
                    &self.upstreams_removed,
                    &self.upstreams_changed,
                ],
            ),
        ];
        for (title, [added, removed, changed]) in sections {
            let total = added.len() + removed.len() + changed.len();
            if total == 0 {
                continue;
            }
            let named: Vec<String> = [("+", added), ("-", removed), ("~", changed)]
                .iter()
                .flat_map(|(sign, names)| names.iter().map(move |n| format!("{sign}{n}")))
                .take(SUMMARY_NAMES)
                .collect();
            let mut line = format!("{title} {}", named.join(" "));
            if total > SUMMARY_NAMES {
                line.push_str(&format!(
                    " ... and {} more (+{} -{} ~{} in all)",
                    total - SUMMARY_NAMES,
                    added.len(),
                    removed.len(),
                    changed.len()
                ));
            }
            parts.push(line);
        }
        if !self.pending_restart.is_empty() {
            parts.push(format!(
                "pending restart: {}",
                self.pending_restart.join(", ")
            ));
        }
        if parts.is_empty() {
            "no change".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// The most names a section of [`ConfigDiff::summary`] lists; `POST /admin/reload` returns
/// every name in its `diff`.
pub const SUMMARY_NAMES: usize = 20;

/// The difference from `old` to `new`. `pending_restart` names the restart-only sections
/// given by the caller (it knows which it keeps).
pub fn diff(old: &GatewayConfig, new: &GatewayConfig, pending_restart: Vec<String>) -> ConfigDiff {
    let mut d = ConfigDiff {
        pending_restart,
        ..ConfigDiff::default()
    };
    let index = |c: &GatewayConfig| -> BTreeMap<String, usize> {
        c.routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect()
    };
    let (old_routes, new_routes) = (index(old), index(new));
    // A kept route moved when its rank among the routes both configs have differs (one
    // pass each: counting the routes before it per route was quadratic, 57 s for 10,000).
    let ranks = |routes: &[crate::config::model::RouteConfig],
                 other: &BTreeMap<String, usize>|
     -> BTreeMap<String, usize> {
        routes
            .iter()
            .filter(|r| other.contains_key(&r.name))
            .enumerate()
            .map(|(rank, r)| (r.name.clone(), rank))
            .collect()
    };
    let (old_rank, new_rank) = (
        ranks(&old.routes, &new_routes),
        ranks(&new.routes, &old_routes),
    );
    for r in &new.routes {
        match old_routes.get(&r.name) {
            None => d.routes_added.push(r.name.clone()),
            Some(&i) => {
                let moved = old_rank.get(&r.name) != new_rank.get(&r.name);
                if old.routes[i] != *r || moved {
                    d.routes_changed.push(r.name.clone());
                }
            }
        }
    }
    d.routes_removed = old
        .routes
        .iter()
        .filter(|r| !new_routes.contains_key(&r.name))
        .map(|r| r.name.clone())
        .collect();

    for (name, u) in &new.upstreams {
        let Some(o) = old.upstreams.get(name) else {
            d.upstreams_added.push(name.clone());
            continue;
        };
        if o == u {
            continue;
        }
        let mut what = Vec::new();
        match (&o.discovery, &u.discovery) {
            (DiscoveryConfig::Static(a), DiscoveryConfig::Static(b)) => {
                let before: BTreeMap<&str, u32> =
                    a.iter().map(|e| (e.address.as_str(), e.weight)).collect();
                let after: BTreeMap<&str, u32> =
                    b.iter().map(|e| (e.address.as_str(), e.weight)).collect();
                for (addr, w) in &after {
                    match before.get(addr) {
                        None => what.push(format!("+{addr}")),
                        Some(ow) if ow != w => what.push(format!("{addr} weight {ow}->{w}")),
                        Some(_) => {}
                    }
                }
                what.extend(
                    before
                        .keys()
                        .filter(|a| !after.contains_key(*a))
                        .map(|a| format!("-{a}")),
                );
            }
            (a, b) if a != b => what.push("discovery".to_string()),
            _ => {}
        }
        let (mut oj, mut nj) = (
            serde_json::to_value(o).unwrap_or_default(),
            serde_json::to_value(u).unwrap_or_default(),
        );
        if let (Some(oj), Some(nj)) = (oj.as_object_mut(), nj.as_object_mut()) {
            oj.remove("discovery");
            nj.remove("discovery");
            let keys: std::collections::BTreeSet<&String> = oj.keys().chain(nj.keys()).collect();
            what.extend(
                keys.into_iter()
                    .filter(|k| oj.get(*k) != nj.get(*k))
                    .map(|k| k.to_string()),
            );
        }
        d.upstreams_changed
            .push(format!("{name}: {}", what.join(", ")));
    }
    d.upstreams_removed = old
        .upstreams
        .keys()
        .filter(|n| !new.upstreams.contains_key(*n))
        .cloned()
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn cfg(upstreams: &str, routes: &str) -> GatewayConfig {
        let yaml = format!("listeners: [ {{ name: a, address: \"127.0.0.1:8080\" }} ]\nupstreams:\n{upstreams}routes:\n{routes}");
        load_str(&yaml, None)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
            .config
    }

    const APP: &str = "  app: { discovery: { static: [ { address: \"127.0.0.1:1\" }, { address: \"127.0.0.1:3\" } ] } }\n";

    #[test]
    fn names_routes_added_removed_changed_and_moved() {
        let old = cfg(APP, "  - { name: a, match: { path_prefix: /a }, upstream: app }\n  - { name: b, match: { path_prefix: /b }, upstream: app }\n  - { name: c, match: { path_prefix: /c }, upstream: app }\n  - { name: d, match: { path_prefix: /d }, upstream: app }\n");
        let new = cfg(APP, "  - { name: a, match: { path_prefix: /a }, upstream: app }\n  - { name: c, match: { path_prefix: /c }, upstream: app }\n  - { name: b, match: { path_prefix: /b }, upstream: app }\n  - { name: e, match: { path_prefix: /e }, upstream: app }\n");
        let d = diff(&old, &new, vec![]);
        assert_eq!(d.routes_added, ["e"]);
        assert_eq!(d.routes_removed, ["d"]);
        assert_eq!(d.routes_changed, ["c", "b"], "b and c swapped places");
        let new2 = cfg(APP, "  - { name: a, match: { path_prefix: /a2 }, upstream: app }\n  - { name: b, match: { path_prefix: /b }, upstream: app }\n  - { name: c, match: { path_prefix: /c }, upstream: app }\n");
        let d = diff(&old, &new2, vec![]);
        assert_eq!(
            (d.routes_changed.clone(), d.routes_removed.clone()),
            (vec!["a".to_string()], vec!["d".to_string()]),
            "removing d moves nobody"
        );
        assert!(diff(&old, &old, vec![]).is_empty());
        assert_eq!(diff(&old, &old, vec![]).summary(), "no change");
    }

    #[test]
    fn a_summary_names_twenty_entries_and_counts_the_rest() {
        let d = ConfigDiff {
            routes_added: vec!["new".into()],
            routes_changed: (0..10_000).map(|i| format!("r{i}")).collect(),
            ..ConfigDiff::default()
        };
        let s = d.summary();
        assert!(s.starts_with("routes +new ~r0 ~r1 "), "{s}");
        assert!(
            s.ends_with(" ~r18 ... and 9981 more (+1 -0 ~10000 in all)"),
            "{s}"
        );
        assert!(s.len() < 200, "{} bytes", s.len());
    }

    #[test]
    fn names_endpoints_weights_and_settings_of_upstreams() {
        let routes = "  - { name: a, match: { path_prefix: /a }, upstream: app }\n";
        let old = cfg(
            &format!(
                "{APP}  gone: {{ discovery: {{ static: [ {{ address: \"127.0.0.1:9\" }} ] }} }}\n"
            ),
            routes,
        );
        let new = cfg("  app: { discovery: { static: [ { address: \"127.0.0.1:2\" }, { address: \"127.0.0.1:3\", weight: 5 } ] }, timeouts: { connect: 3s } }\n  fresh: { discovery: { static: [ { address: \"127.0.0.1:8\" } ] } }\n", routes);
        let d = diff(&old, &new, vec!["runtime".into()]);
        assert_eq!(d.upstreams_added, ["fresh"]);
        assert_eq!(d.upstreams_removed, ["gone"]);
        assert_eq!(
            d.upstreams_changed,
            ["app: +127.0.0.1:2, 127.0.0.1:3 weight 1->5, -127.0.0.1:1, timeouts"]
        );
        assert_eq!(
            d.summary(),
            "upstreams +fresh -gone ~app: +127.0.0.1:2, 127.0.0.1:3 weight 1->5, -127.0.0.1:1, timeouts; pending restart: runtime"
        );
    }
}
