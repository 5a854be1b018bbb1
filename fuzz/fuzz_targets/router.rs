//! The router against a slow reference written from DESIGN.md's "Route precedence": for
//! random route sets and requests, the route the router picks is the one the reference
//! picks by scanning every route and comparing, first difference wins: `priority`
//! (higher first), host (exact > wildcard, longer first > any), path (exact > template,
//! more literal segments first > regex in declared order > prefix, longer first), methods
//! (listed > any), more header conditions, declared order.
#![no_main]

use std::cmp::Reverse;
use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use gatehouse::config::model::{HeaderMatch, MatchConfig};
use gatehouse::path::normalize_path_with;
use gatehouse::router::{normalize_host, Matcher, RouteRequest, Router};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use regex::Regex;

const HOSTS: &[&str] = &[
    "a.com",
    "b.a.com",
    "*.a.com",
    "*.b.a.com",
    "*.com",
    "x.org",
    "*.x.org",
    "*a.com",
    "A.com",
];
const REQ_HOSTS: &[&str] = &[
    "a.com",
    "b.a.com",
    "c.b.a.com",
    "A.COM:8080",
    "a.com.",
    "",
    "x.org",
    "y.x.org",
    ".a.com",
    "com",
    "[::1]:80",
];
const PATHS: &[&str] = &[
    "/", "/a", "/a/", "/a/b", "/a/b/c", "/b", "/a/bc", "", "/a//b", "/%2F",
];
const TEMPLATES: &[&str] = &[
    "/a/{x}",
    "/{x}/b",
    "/a/{*rest}",
    "/{x}",
    "/a/{x}/",
    "/{x}/{y}",
    "/a/b",
    "/",
    "/{*all}",
    "/a/{x}/c",
    "/{x}/",
];
const REGEXES: &[&str] = &["/a.*", "/[ab]/.*", "/a/b", ".*/c", "/(a|b)", "/a/?", "/.*/"];
const SEGMENTS: &[&str] = &[
    "a", "b", "c", "bc", "", ".", "..", "%2F", "%61", "A", "x%2Fy",
];
const METHODS: &[&str] = &["GET", "POST", "PUT"];
const HEADER_NAMES: &[&str] = &["x-a", "x-b"];
const HEADER_VALUES: &[&str] = &["1", "2"];

#[derive(Debug, Arbitrary)]
enum PathKind {
    Any,
    Exact(u8),
    Prefix(u8),
    Template(u8),
    Regex(u8),
}

#[derive(Debug, Arbitrary)]
enum Cond {
    Equals(u8),
    Present(bool),
}

#[derive(Debug, Arbitrary)]
struct RouteIn {
    priority: u8,
    hosts: Vec<u8>,
    path: PathKind,
    methods: Vec<u8>,
    headers: Vec<(u8, Cond)>,
}

#[derive(Debug, Arbitrary)]
struct RequestIn {
    host: u8,
    segments: Vec<u8>,
    trailing_slash: bool,
    method: u8,
    headers: Vec<(u8, u8)>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    routes: Vec<RouteIn>,
    requests: Vec<RequestIn>,
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

/// One route as the reference sees it.
struct Ref {
    priority: i32,
    hosts: Vec<String>,
    path: RefPath,
    methods: Vec<Method>,
    headers: Vec<(String, Cond)>,
}

enum RefPath {
    Exact(String),
    /// Trailing slashes trimmed: `/api/` and `/api` are one prefix, `/` is every path.
    Prefix(String),
    /// The template's own regex and its literal segment count.
    Template(Regex, usize),
    Regex(Regex),
}

/// A template written as a regex: `{x}` one non-empty segment, `{*x}` the non-empty
/// rest, a trailing `/` required exactly when the template has one.
fn template_regex(t: &str) -> Option<(Regex, usize)> {
    let body = t.strip_prefix('/')?;
    let trailing = body.ends_with('/') && !body.is_empty();
    let body = body.trim_end_matches('/');
    let mut re = String::from("^");
    let mut literals = 0;
    if body.is_empty() {
        re.push('/');
    }
    for seg in body.split('/').filter(|_| !body.is_empty()) {
        if seg.starts_with("{*") {
            re.push_str("/.+$");
            return Some((Regex::new(&re).ok()?, literals));
        } else if seg.starts_with('{') {
            re.push_str("/[^/]+");
        } else {
            literals += 1;
            re.push('/');
            re.push_str(&regex::escape(seg));
        }
    }
    if trailing {
        re.push('/');
    }
    re.push('$');
    Some((Regex::new(&re).ok()?, literals))
}

/// The precedence key of route `idx` for a request, or `None` when it does not match.
fn key(
    r: &Ref,
    idx: usize,
    host: &str,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Option<(
    Reverse<i32>,
    (u8, usize),
    (u8, usize),
    bool,
    Reverse<usize>,
    usize,
)> {
    let host_tier = if r.hosts.is_empty() {
        (2, 0)
    } else {
        r.hosts
            .iter()
            .filter_map(|h| match h.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') && host.ends_with(suffix) => {
                    Some((1, usize::MAX - suffix.len()))
                }
                Some(_) => None,
                None if h == host => Some((0, 0)),
                None => None,
            })
            .min()?
    };
    let path_tier = match &r.path {
        RefPath::Exact(p) => (p == path).then_some((0, 0))?,
        RefPath::Template(re, literals) => {
            re.is_match(path).then_some((1, usize::MAX - literals))?
        }
        RefPath::Regex(re) => re.is_match(path).then_some((2, idx))?,
        RefPath::Prefix(p) => {
            let trimmed = path.trim_end_matches('/');
            let hit = p.is_empty()
                || trimmed == p
                || trimmed
                    .strip_prefix(p.as_str())
                    .is_some_and(|r| r.starts_with('/'));
            hit.then_some((3, usize::MAX - p.len()))?
        }
    };
    if !r.methods.is_empty() && !r.methods.contains(method) {
        return None;
    }
    for (name, cond) in &r.headers {
        let ok = match cond {
            Cond::Equals(v) => headers
                .get_all(name.as_str())
                .iter()
                .any(|h| h.as_bytes() == pick(HEADER_VALUES, *v).as_bytes()),
            Cond::Present(p) => headers.contains_key(name.as_str()) == *p,
        };
        if !ok {
            return None;
        }
    }
    Some((
        Reverse(r.priority),
        host_tier,
        path_tier,
        r.methods.is_empty(),
        Reverse(r.headers.len()),
        idx,
    ))
}

fuzz_target!(|input: Input| {
    let mut entries = Vec::new();
    let mut refs = Vec::new();
    for r in input.routes.into_iter().take(12) {
        let mut m = MatchConfig {
            hosts: r
                .hosts
                .iter()
                .take(3)
                .map(|h| pick(HOSTS, *h).to_string())
                .collect(),
            methods: r
                .methods
                .iter()
                .take(2)
                .map(|i| pick(METHODS, *i).to_string())
                .collect(),
            ..MatchConfig::default()
        };
        m.methods.dedup();
        // A header map: the last condition on a name wins, as in YAML.
        let mut headers: BTreeMap<String, HeaderMatch> = BTreeMap::new();
        let mut conds: BTreeMap<String, Cond> = BTreeMap::new();
        for (n, c) in r.headers.into_iter().take(2) {
            let name = pick(HEADER_NAMES, n).to_string();
            let hm = match &c {
                Cond::Equals(v) => HeaderMatch::Equals(pick(HEADER_VALUES, *v).to_string()),
                Cond::Present(p) => HeaderMatch::Presence { present: *p },
            };
            headers.insert(name.clone(), hm);
            conds.insert(name, c);
        }
        m.headers = headers;
        let path = match r.path {
            PathKind::Any => RefPath::Prefix(String::new()),
            PathKind::Exact(i) => {
                m.path = Some(pick(PATHS, i).to_string());
                RefPath::Exact(pick(PATHS, i).to_string())
            }
            PathKind::Prefix(i) => {
                m.path_prefix = Some(pick(PATHS, i).to_string());
                RefPath::Prefix(pick(PATHS, i).trim_end_matches('/').to_string())
            }
            PathKind::Template(i) => {
                m.path_template = Some(pick(TEMPLATES, i).to_string());
                let Some((re, literals)) = template_regex(pick(TEMPLATES, i)) else {
                    continue;
                };
                RefPath::Template(re, literals)
            }
            PathKind::Regex(i) => {
                m.path_regex = Some(pick(REGEXES, i).to_string());
                let Ok(re) = Regex::new(&format!("^(?:{})$", pick(REGEXES, i))) else {
                    continue;
                };
                RefPath::Regex(re)
            }
        };
        let priority = i32::from(r.priority % 4) - 1;
        let Ok(matcher) = Matcher::compile(&m) else {
            continue;
        };
        let idx = entries.len();
        entries.push((matcher.with_priority(priority), idx));
        refs.push(Ref {
            priority,
            hosts: m.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            path,
            methods: m
                .methods
                .iter()
                .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
                .collect(),
            headers: conds.into_iter().collect(),
        });
    }
    let router = Router::new(entries);
    for q in input.requests.into_iter().take(16) {
        let mut raw = String::new();
        for s in q.segments.iter().take(5) {
            raw.push('/');
            raw.push_str(pick(SEGMENTS, *s));
        }
        if raw.is_empty() || q.trailing_slash {
            raw.push('/');
        }
        // The router sees paths as the proxy builds them (`router::Incoming`).
        let Ok(path) = normalize_path_with(raw.as_bytes(), true) else {
            continue;
        };
        let host = normalize_host(pick(REQ_HOSTS, q.host));
        let method = Method::from_bytes(pick(METHODS, q.method).as_bytes()).unwrap_or(Method::GET);
        let mut headers = HeaderMap::new();
        for (n, v) in q.headers.iter().take(3) {
            headers.append(
                HeaderName::from_static(pick(HEADER_NAMES, *n)),
                HeaderValue::from_static(pick(HEADER_VALUES, *v)),
            );
        }
        let req = RouteRequest {
            host: &host,
            path: &path,
            method: &method,
            headers: &headers,
        };
        let got = router.route(&req).copied();
        let want = refs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| key(r, i, &host, &path, &method, &headers))
            .min()
            .map(|k| k.5);
        assert_eq!(
            got, want,
            "host {host:?} path {path:?} method {method} headers {headers:?}"
        );
    }
});
