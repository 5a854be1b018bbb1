//! Request routing: path normalization, then host / path / method / header matching
//! with a documented precedence (DESIGN.md "Route precedence", nginx's order), in time
//! independent of the number of exact and prefix routes.
//!
//! Precedence, first difference wins: `priority` (higher first), host (exact > longest
//! wildcard > any), path (exact > template, more literal segments first > regex in declared
//! order > longer prefix > shorter prefix), methods (a listed method > any), the number of
//! header conditions (more > fewer), declared order.

pub mod template;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::Method;
use regex::Regex;

use crate::config::model::{HeaderMatch, MatchConfig};
pub use template::{PathTemplate, TemplateError};

/// Why a path was refused before routing (answered with a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadEncoding,
    /// `%2F` (an encoded `/`) or `%5C` (an encoded `\`).
    #[error("encoded path separator")]
    EncodedSeparator,
    /// A NUL byte, raw or encoded.
    #[error("NUL byte in path")]
    Nul,
    /// `..` above the root.
    #[error("path escapes the root")]
    EscapesRoot,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes a request path (without its query): percent-encoded unreserved characters
/// are decoded and other escapes upper-cased, `//` is collapsed, `.` and `..` segments are
/// resolved; a path that escapes the root or holds an encoded `/`, `\` or NUL is refused.
/// A trailing `/` is kept.
pub fn normalize_path(raw: &[u8]) -> Result<String, PathError> {
    normalize_path_with(raw, false)
}

/// [`normalize_path`], but with `keep_encoded_slash` an encoded `/` is kept inside its
/// segment as `%2F` (for routes that choose `encoded_slashes: keep | decode`).
pub fn normalize_path_with(raw: &[u8], keep_encoded_slash: bool) -> Result<String, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // 1. decode unreserved escapes, validate the others
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            0 => return Err(PathError::Nul),
            b'%' => {
                let (h, l) = match (
                    raw.get(i + 1).and_then(|b| hex(*b)),
                    raw.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEncoding),
                };
                let v = h * 16 + l;
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' if keep_encoded_slash => decoded.extend_from_slice(b"%2F"),
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    v if is_unreserved(v) => decoded.push(v),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        decoded.extend_from_slice(&[
                            b'%',
                            HEX[(v >> 4) as usize],
                            HEX[(v & 15) as usize],
                        ]);
                    }
                }
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // 2. resolve segments
    let trailing = decoded.len() > 1 && decoded.ends_with(b"/");
    let mut segs: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if segs.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
            }
            s => segs.push(s),
        }
    }
    let last_is_dir = matches!(
        decoded.rsplit(|b| *b == b'/').next(),
        Some(b".") | Some(b"..")
    );
    let mut out = String::with_capacity(decoded.len());
    for s in &segs {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(s));
    }
    if out.is_empty() || ((trailing || last_is_dir) && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(out)
}

/// Applies a route's `encoded_slashes` choice to a path normalized with
/// [`normalize_path_with`]`(.., true)`: `Ok(None)` keeps it as it is, `Ok(Some(p))` is the
/// decoded path to forward; `reject`, or a decoding that would create `.`/`..` segments or
/// `//` (a path the gateway did not match), is an error.
pub fn apply_encoded_slashes(
    path: &str,
    choice: crate::config::model::EncodedSlashes,
) -> Result<Option<String>, PathError> {
    use crate::config::model::EncodedSlashes;
    if !path.contains("%2F") {
        return Ok(None);
    }
    match choice {
        EncodedSlashes::Reject => Err(PathError::EncodedSeparator),
        EncodedSlashes::Keep => Ok(None),
        EncodedSlashes::Decode => {
            let decoded = path.replace("%2F", "/");
            match normalize_path(decoded.as_bytes()) {
                Ok(n) if n == decoded => Ok(Some(decoded)),
                _ => Err(PathError::EncodedSeparator),
            }
        }
    }
}

/// A compiled header condition.
#[derive(Debug, Clone)]
enum HeaderCond {
    Equals(http::HeaderName, String),
    Present(http::HeaderName, bool),
}

/// The compiled form of one route's `match` block.
#[derive(Debug, Clone)]
pub struct Matcher {
    priority: i32,
    hosts: Vec<String>,
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<HeaderCond>,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Template(PathTemplate),
    Regex(Regex),
}

/// A config `match` block could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MatcherError(String);

impl Matcher {
    /// Compiles a `match` block.
    pub fn compile(m: &MatchConfig) -> Result<Self, MatcherError> {
        let path = match (&m.path, &m.path_prefix, &m.path_template, &m.path_regex) {
            (Some(p), ..) => PathMatch::Exact(p.clone()),
            (None, Some(p), ..) => PathMatch::Prefix(trim_prefix(p).to_string()),
            (None, None, Some(t), _) => PathMatch::Template(
                PathTemplate::parse(t).map_err(|e| MatcherError(e.to_string()))?,
            ),
            (None, None, None, Some(r)) => PathMatch::Regex(
                Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| MatcherError(format!("invalid regex: {e}")))?,
            ),
            (None, None, None, None) => PathMatch::Prefix(String::new()),
        };
        let methods = m
            .methods
            .iter()
            .map(|s| {
                Method::from_bytes(s.as_bytes())
                    .map_err(|_| MatcherError(format!("bad method {s:?}")))
            })
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .map(|(n, c)| {
                let name = http::HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| MatcherError(format!("bad header name {n:?}")))?;
                Ok(match c {
                    HeaderMatch::Equals(v) => HeaderCond::Equals(name, v.clone()),
                    HeaderMatch::Presence { present } => HeaderCond::Present(name, *present),
                })
            })
            .collect::<Result<_, MatcherError>>()?;
        Ok(Self {
            priority: 0,
            hosts: m.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            path,
            methods,
            headers,
        })
    }

    /// Sets the route's `priority` (higher wins before any other rule; default 0).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The path template, for routes matched by one.
    pub fn template(&self) -> Option<&PathTemplate> {
        match &self.path {
            PathMatch::Template(t) => Some(t),
            _ => None,
        }
    }

    fn accepts(&self, req: &RouteRequest<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(req.method))
            && self.headers.iter().all(|c| match c {
                HeaderCond::Equals(n, v) => req
                    .headers
                    .get_all(n)
                    .iter()
                    .any(|h| h.as_bytes() == v.as_bytes()),
                HeaderCond::Present(n, p) => req.headers.contains_key(n) == *p,
            })
    }

    /// (methods listed, header count): the in-bucket part of the precedence.
    fn rank(&self) -> (bool, usize) {
        (!self.methods.is_empty(), self.headers.len())
    }
}

/// `/api/` and `/api` are the same segment-boundary prefix; `/` is every path.
fn trim_prefix(p: &str) -> &str {
    p.trim_end_matches('/')
}

/// What the router looks at.
pub struct RouteRequest<'a> {
    /// Host without port, lower case (empty when absent).
    pub host: &'a str,
    /// Normalized path (see [`normalize_path`]).
    pub path: &'a str,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a http::HeaderMap,
}

/// Which tiers decided a match; printed by `gatehouse route-test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchReason {
    /// `exact host a.com`, `wildcard host *.a.com` or `any host`.
    pub host: String,
    /// `exact path /x`, `prefix /api`, `regex ^...$`.
    pub path: String,
}

impl fmt::Display for MatchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.host, self.path)
    }
}

#[derive(Default)]
struct PathTable {
    exact: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
    /// Templates, more literal segments first, then by rank.
    template: Vec<usize>,
    /// Regexes in declared order.
    regex: Vec<usize>,
}

impl PathTable {
    fn insert(&mut self, idx: usize, m: &Matcher) {
        match &m.path {
            PathMatch::Exact(p) => self.exact.entry(p.clone()).or_default().push(idx),
            PathMatch::Prefix(p) => self.prefix.entry(p.clone()).or_default().push(idx),
            PathMatch::Template(_) => self.template.push(idx),
            PathMatch::Regex(_) => self.regex.push(idx),
        }
    }

    fn sort(&mut self, matchers: &[Matcher]) {
        let key = |i: &usize| {
            let (listed, headers) = matchers[*i].rank();
            (std::cmp::Reverse(listed), std::cmp::Reverse(headers), *i)
        };
        for v in self.exact.values_mut().chain(self.prefix.values_mut()) {
            v.sort_by_key(key);
        }
        self.template.sort_by_key(|i| {
            let literals = matchers[*i]
                .template()
                .map_or(0, PathTemplate::literal_segments);
            (std::cmp::Reverse(literals), key(i))
        });
    }

    fn lookup<'p>(
        &self,
        req: &RouteRequest<'p>,
        matchers: &[Matcher],
    ) -> Option<(usize, PathHit<'p>)> {
        let first = |ids: &[usize]| ids.iter().copied().find(|i| matchers[*i].accepts(req));
        if let Some(i) = self.exact.get(req.path).and_then(|ids| first(ids)) {
            return Some((i, PathHit::Exact));
        }
        for &i in &self.template {
            if let PathMatch::Template(t) = &matchers[i].path {
                if let Some(params) = t.matches(req.path) {
                    if matchers[i].accepts(req) {
                        return Some((i, PathHit::Template(params)));
                    }
                }
            }
        }
        for &i in &self.regex {
            if let PathMatch::Regex(re) = &matchers[i].path {
                if re.is_match(req.path) && matchers[i].accepts(req) {
                    return Some((i, PathHit::Regex));
                }
            }
        }
        if !self.prefix.is_empty() {
            // segment-boundary prefixes of the path, longest first: /a/b/c, /a/b, /a, ""
            let p = req.path.trim_end_matches('/');
            let mut end = p.len();
            loop {
                let cand = &p[..end];
                if let Some(i) = self.prefix.get(cand).and_then(|ids| first(ids)) {
                    return Some((i, PathHit::Prefix(end)));
                }
                match cand.rfind('/') {
                    Some(cut) => end = cut,
                    None => break,
                }
            }
        }
        None
    }
}

/// Which path tier matched (allocation-free but for a template's captures; explained
/// only on demand).
enum PathHit<'p> {
    Exact,
    /// Captured parameters, in template order.
    Template(Vec<(Arc<str>, &'p str)>),
    Regex,
    /// Length of the matched prefix of the (trailing-slash-trimmed) path.
    Prefix(usize),
}

/// Which host tier matched.
#[derive(Clone, Copy)]
enum HostHit {
    Exact,
    /// Byte offset of the matched `.suffix` in the host.
    Wildcard(usize),
    Any,
}

/// The routes of one `priority`, indexed by host tier.
#[derive(Default)]
struct Level {
    priority: i32,
    exact_hosts: HashMap<String, PathTable>,
    wildcard_hosts: HashMap<String, PathTable>,
    any_host: PathTable,
}

/// A matched route and the parameters its path template captured (empty for other
/// routes), still percent-encoded as in the normalized path.
pub struct RouteMatch<'r, 'p, T> {
    /// The route.
    pub value: &'r T,
    /// `(name, value)` per template parameter, in template order.
    pub params: Vec<(Arc<str>, &'p str)>,
}

/// Routes requests to values of type `T` (the gateway's `Route`).
pub struct Router<T> {
    /// One per distinct priority, highest first (usually just one, priority 0).
    levels: Vec<Level>,
    matchers: Vec<Matcher>,
    values: Vec<T>,
}

impl<T> Router<T> {
    /// Builds the index; `entries` are in declared order.
    pub fn new(entries: Vec<(Matcher, T)>) -> Self {
        let mut priorities: Vec<i32> = entries.iter().map(|(m, _)| m.priority).collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        let mut r = Router {
            levels: priorities
                .into_iter()
                .map(|priority| Level {
                    priority,
                    ..Level::default()
                })
                .collect(),
            matchers: Vec::with_capacity(entries.len()),
            values: Vec::with_capacity(entries.len()),
        };
        for (idx, (m, v)) in entries.into_iter().enumerate() {
            if let Some(level) = r.levels.iter_mut().find(|l| l.priority == m.priority) {
                if m.hosts.is_empty() {
                    level.any_host.insert(idx, &m);
                }
                for h in &m.hosts {
                    match h.strip_prefix('*') {
                        Some(suffix) => level
                            .wildcard_hosts
                            .entry(suffix.to_string())
                            .or_default()
                            .insert(idx, &m),
                        None => level
                            .exact_hosts
                            .entry(h.clone())
                            .or_default()
                            .insert(idx, &m),
                    }
                }
            }
            r.matchers.push(m);
            r.values.push(v);
        }
        let matchers = &r.matchers;
        for level in &mut r.levels {
            for t in level
                .exact_hosts
                .values_mut()
                .chain(level.wildcard_hosts.values_mut())
            {
                t.sort(matchers);
            }
            level.any_host.sort(matchers);
        }
        r
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there is no route.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The route for a request, if any. The hot path: no allocation (but for a template
    /// route's captures).
    pub fn route(&self, req: &RouteRequest<'_>) -> Option<&T> {
        self.find(req).map(|(i, _, _)| &self.values[i])
    }

    /// The route for a request with its template's captured parameters.
    pub fn route_match<'r, 'p>(&'r self, req: &RouteRequest<'p>) -> Option<RouteMatch<'r, 'p, T>> {
        let (i, _, path) = self.find(req)?;
        let params = match path {
            PathHit::Template(p) => p,
            _ => Vec::new(),
        };
        Some(RouteMatch {
            value: &self.values[i],
            params,
        })
    }

    fn find<'p>(&self, req: &RouteRequest<'p>) -> Option<(usize, HostHit, PathHit<'p>)> {
        self.levels
            .iter()
            .find_map(|level| self.find_in(level, req))
    }

    fn find_in<'p>(
        &self,
        level: &Level,
        req: &RouteRequest<'p>,
    ) -> Option<(usize, HostHit, PathHit<'p>)> {
        if !level.exact_hosts.is_empty() {
            if let Some(t) = level.exact_hosts.get(req.host) {
                if let Some((i, p)) = t.lookup(req, &self.matchers) {
                    return Some((i, HostHit::Exact, p));
                }
            }
        }
        if !level.wildcard_hosts.is_empty() {
            // .b.example.com, .example.com, .com: longest wildcard first
            let mut offset = 0;
            while let Some(dot) = req.host[offset..].find('.') {
                let at = offset + dot;
                if let Some(t) = level.wildcard_hosts.get(&req.host[at..]) {
                    if let Some((i, p)) = t.lookup(req, &self.matchers) {
                        return Some((i, HostHit::Wildcard(at), p));
                    }
                }
                offset = at + 1;
            }
        }
        level
            .any_host
            .lookup(req, &self.matchers)
            .map(|(i, p)| (i, HostHit::Any, p))
    }

    /// The route for a request and why it matched (for `gatehouse route-test`).
    pub fn route_explained(&self, req: &RouteRequest<'_>) -> Option<(&T, MatchReason)> {
        let (i, host, path) = self.find(req)?;
        let host = match host {
            HostHit::Exact => format!("exact host {}", req.host),
            HostHit::Wildcard(at) => format!("wildcard host *{}", &req.host[at..]),
            HostHit::Any => "any host".to_string(),
        };
        let mut path = match path {
            PathHit::Exact => format!("exact path {}", req.path),
            PathHit::Template(params) => {
                let t = self.matchers[i].template().map_or("", PathTemplate::as_str);
                let caps: Vec<String> = params.iter().map(|(n, v)| format!("{n}={v}")).collect();
                format!("template {t} ({})", caps.join(", "))
            }
            PathHit::Prefix(0) => "prefix /".to_string(),
            PathHit::Prefix(end) => format!("prefix {}", &req.path[..end]),
            PathHit::Regex => match &self.matchers[i].path {
                PathMatch::Regex(re) => format!("regex {}", re.as_str()),
                _ => "regex".to_string(),
            },
        };
        if self.matchers[i].priority != 0 {
            path.push_str(&format!(", priority {}", self.matchers[i].priority));
        }
        Some((&self.values[i], MatchReason { host, path }))
    }
}

/// The path sent upstream: `rewrite` replaces it; else `strip` is removed (on a segment
/// boundary) and `add` is prepended.
pub fn rewrite_path(
    path: &str,
    strip: Option<&str>,
    add: Option<&str>,
    rewrite: Option<&str>,
) -> String {
    if let Some(r) = rewrite {
        return r.to_string();
    }
    let mut p = path;
    if let Some(s) = strip.map(trim_prefix) {
        if let Some(rest) = p.strip_prefix(s) {
            if rest.is_empty() || rest.starts_with('/') {
                p = rest;
            }
        }
    }
    let mut out = String::with_capacity(p.len() + add.map_or(0, str::len));
    if let Some(a) = add {
        out.push_str(a.trim_end_matches('/'));
    }
    out.push_str(p);
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        let ok = [
            ("/", "/"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/%61dmin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/a/b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a%20b", "/a%20b"),
            ("/a%7e", "/a~"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("//", "/"),
        ];
        for (input, want) in ok {
            assert_eq!(
                normalize_path(input.as_bytes()).as_deref(),
                Ok(want),
                "{input}"
            );
        }
        let bad = [
            ("a", PathError::NotAbsolute),
            ("/..", PathError::EscapesRoot),
            ("/a/../../b", PathError::EscapesRoot),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%00", PathError::Nul),
            ("/a%zz", PathError::BadEncoding),
            ("/a%2", PathError::BadEncoding),
        ];
        for (input, want) in bad {
            assert_eq!(normalize_path(input.as_bytes()), Err(want), "{input}");
        }
    }

    fn m(yaml: &str) -> Matcher {
        Matcher::compile(&serde_yaml::from_str::<MatchConfig>(yaml).unwrap()).unwrap()
    }

    fn lookup<'a>(
        r: &'a Router<&'static str>,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<&'a str> {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        r.route(&RouteRequest {
            host,
            path,
            method: &method,
            headers: &h,
        })
        .copied()
    }

    #[test]
    fn precedence_table() {
        let r = Router::new(vec![
            (m("{ path_prefix: / }"), "root"),
            (m("{ path_prefix: /api }"), "api"),
            (m("{ path_prefix: /api/user }"), "user"),
            (m("{ path: /api/user/login }"), "login-exact"),
            (
                m("{ path: /api/user/login, methods: [POST] }"),
                "login-post",
            ),
            (
                m("{ path_prefix: /api, headers: { x-canary: '1' } }"),
                "api-canary",
            ),
            (
                m("{ path_prefix: /api, hosts: [admin.example.com] }"),
                "admin-host",
            ),
            (
                m("{ path_prefix: /api, hosts: ['*.example.com'] }"),
                "wild-host",
            ),
            (m("{ path_regex: '/items/[0-9]+' }"), "items"),
            (m("{ path_prefix: /apix }"), "apix"),
        ]);
        let cases = [
            ("x", "GET", "/", &[][..], "root"),
            ("x", "GET", "/api", &[], "api"),
            ("x", "GET", "/api/", &[], "api"),
            ("x", "GET", "/api/other", &[], "api"),
            ("x", "GET", "/apix/1", &[], "apix"),
            ("x", "GET", "/apiy", &[], "root"),
            ("x", "GET", "/api/user/9", &[], "user"),
            ("x", "GET", "/api/user/login", &[], "login-exact"),
            ("x", "POST", "/api/user/login", &[], "login-post"),
            ("x", "GET", "/api/x", &[("x-canary", "1")], "api-canary"),
            ("x", "GET", "/api/x", &[("x-canary", "2")], "api"),
            ("admin.example.com", "GET", "/api/x", &[], "admin-host"),
            ("a.b.example.com", "GET", "/api/x", &[], "wild-host"),
            ("example.com", "GET", "/api/x", &[], "api"),
            ("admin.example.com", "GET", "/other", &[], "root"),
            // a regex outranks any prefix, so `/` never hides it (DESIGN precedence)
            ("x", "GET", "/items/42", &[], "items"),
            ("x", "GET", "/items/4x", &[], "root"),
        ];
        for (host, method, path, headers, want) in cases {
            assert_eq!(
                lookup(&r, host, method, path, headers),
                Some(want),
                "{method} {host}{path} {headers:?}"
            );
        }
    }

    #[test]
    fn templates_priority_and_captures() {
        let r = Router::new(vec![
            (m("{ path_prefix: / }"), "root"),
            (m("{ path_prefix: /users }"), "users-prefix"),
            (m("{ path_regex: '/users/[0-9]+' }"), "users-regex"),
            (m("{ path_template: '/users/{id}' }"), "user"),
            (m("{ path_template: '/users/me' }"), "me-template"),
            (m("{ path_template: '/users/{id}/posts/{post}' }"), "post"),
            (m("{ path_template: '/files/{*rest}' }"), "files"),
            (m("{ path: /users/42 }"), "exact-42"),
            (
                m("{ path_prefix: /admin }").with_priority(10),
                "admin-first",
            ),
            (
                m("{ path_template: '/admin/{x}', hosts: [a.example] }"),
                "admin-host",
            ),
        ]);
        let cases = [
            ("/users/42", "exact-42"),
            ("/users/7", "user"),
            ("/users/me", "me-template"),
            ("/users/7/posts/9", "post"),
            ("/users/7/other", "users-prefix"),
            ("/files/a/b.txt", "files"),
            ("/files", "root"),
            ("/other", "root"),
        ];
        for (path, want) in cases {
            assert_eq!(lookup(&r, "x", "GET", path, &[]), Some(want), "{path}");
        }
        // priority beats an exact host and a template
        assert_eq!(
            lookup(&r, "a.example", "GET", "/admin/x", &[]),
            Some("admin-first")
        );
        let method = Method::GET;
        let h = http::HeaderMap::new();
        let req = RouteRequest {
            host: "x",
            path: "/users/7/posts/9",
            method: &method,
            headers: &h,
        };
        let got = r.route_match(&req).unwrap();
        let params: Vec<(&str, &str)> = got.params.iter().map(|(n, v)| (&**n, *v)).collect();
        assert_eq!(params, [("id", "7"), ("post", "9")]);
        let (_, why) = r.route_explained(&req).unwrap();
        assert_eq!(why.path, "template /users/{id}/posts/{post} (id=7, post=9)");
    }

    #[test]
    fn encoded_slash_choices() {
        use crate::config::model::EncodedSlashes::*;
        let p = normalize_path_with(b"/p/group%2fproject", true).unwrap();
        assert_eq!(p, "/p/group%2Fproject");
        assert_eq!(
            normalize_path(b"/p/a%2Fb"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            apply_encoded_slashes(&p, Reject),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(apply_encoded_slashes(&p, Keep), Ok(None));
        assert_eq!(
            apply_encoded_slashes(&p, Decode),
            Ok(Some("/p/group/project".into()))
        );
        let sneaky = normalize_path_with(b"/p/x%2F..%2Fadmin", true).unwrap();
        assert_eq!(
            apply_encoded_slashes(&sneaky, Decode),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(apply_encoded_slashes("/plain", Reject), Ok(None));
    }

    #[test]
    fn no_match_without_root() {
        let r = Router::new(vec![
            (m("{ path: /only, methods: [GET] }"), "only"),
            (m("{ path_regex: '/items/[0-9]+' }"), "items"),
        ]);
        assert_eq!(lookup(&r, "x", "GET", "/items/42", &[]), Some("items"));
        assert_eq!(lookup(&r, "x", "GET", "/items/4x", &[]), None);
        assert_eq!(lookup(&r, "x", "GET", "/only", &[]), Some("only"));
        assert_eq!(lookup(&r, "x", "POST", "/only", &[]), None);
        assert_eq!(lookup(&r, "x", "GET", "/other", &[]), None);
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            rewrite_path("/api/user/login", Some("/api/user"), None, None),
            "/login"
        );
        assert_eq!(
            rewrite_path("/api/user", Some("/api/user/"), None, None),
            "/"
        );
        assert_eq!(
            rewrite_path("/api/users", Some("/api/user"), None, None),
            "/api/users"
        );
        assert_eq!(
            rewrite_path("/api/user/x", Some("/api"), Some("/v2"), None),
            "/v2/user/x"
        );
        assert_eq!(
            rewrite_path("/anything", None, None, Some("/fixed")),
            "/fixed"
        );
    }
}
