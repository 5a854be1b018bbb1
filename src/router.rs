//! Request routing: building the router's view of a request (normalized path and host),
//! then host / path / method / header matching with a documented precedence (DESIGN.md
//! "Route precedence", nginx's order), in time independent of the number of exact and
//! prefix routes. The proxy and `gatehouse route-test` build that view with the same code
//! ([`Incoming`]).
//!
//! Precedence, first difference wins: `priority` (higher first), host (exact > longest
//! wildcard > any), path (exact > template, more literal segments first > regex in declared
//! order > longer prefix > shorter prefix), methods (a listed method > any), the number of
//! header conditions (more > fewer), declared order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Method, Uri};
use regex::Regex;

use crate::config::model::{HeaderMatch, MatchConfig};
pub use crate::path::template::{PathTemplate, TemplateError};
use crate::path::{normalize_path, normalize_path_with, PathError};

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

use crate::path::trim_prefix;

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

/// The request's host for routing (RFC 9110 section 7.2, RFC 3986 section 3.2.2): lower
/// case, without the port and without a trailing dot (`Example.COM.:8080` is
/// `example.com`); an IPv6 literal keeps its brackets (`[::1]:8080` is `[::1]`).
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = match raw.rfind(':') {
        Some(i) if !raw.ends_with(']') && raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            &raw[..i]
        }
        _ => raw,
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// A request as the router reads it, built the same way for the proxy and for
/// `gatehouse route-test`, so that the two never disagree on which route a request takes.
pub struct Incoming<'a> {
    /// The host, normalized by [`normalize_host`] (empty when absent).
    pub host: Cow<'a, str>,
    /// The path, normalized by [`normalize_path`].
    pub path: String,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
}

impl<'a> Incoming<'a> {
    /// From the request's method, target and headers: the path normalized (a path that
    /// cannot be is refused with its [`PathError`], answered 400), the host taken from
    /// the `Host` header, else from the target's authority (absolute form).
    pub fn new(
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> Result<Self, PathError> {
        // `%2F` is kept encoded for routing; the matched route's `encoded_slashes` decides.
        let path = normalize_path_with(uri.path().as_bytes(), true)?;
        let raw = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        Ok(Self {
            host: normalize_host(raw),
            path,
            method,
            headers,
        })
    }

    /// What the matchers look at.
    pub fn request(&self) -> RouteRequest<'_> {
        RouteRequest {
            host: &self.host,
            path: &self.path,
            method: self.method,
            headers: self.headers,
        }
    }
}

/// A request described by `gatehouse route-test`'s arguments, owned, from which
/// [`Incoming::new`] builds the router's view exactly as for a proxied request.
#[derive(Debug)]
pub struct RequestParts {
    /// Method.
    pub method: Method,
    /// Target (origin form: path and query).
    pub uri: Uri,
    /// Headers, with `Host` from the host argument unless a header gave one.
    pub headers: HeaderMap,
}

impl RequestParts {
    /// From a method, a host (may carry a port), a target (`/path?query`) and headers
    /// written `name: value`; errors say which argument is wrong.
    pub fn from_args(
        method: &str,
        host: &str,
        target: &str,
        headers: &[String],
    ) -> Result<Self, String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("method: {e}"))?;
        let uri: Uri = target
            .parse()
            .map_err(|e| format!("path {target:?}: {e}"))?;
        let mut map = HeaderMap::new();
        for h in headers {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| format!("header {h:?}: headers are name:value"))?;
            let name = http::HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|e| format!("header {h:?}: {e}"))?;
            let value = v.trim().parse().map_err(|e| format!("header {h:?}: {e}"))?;
            map.append(name, value);
        }
        if !host.is_empty() && !map.contains_key(http::header::HOST) {
            let value = host.parse().map_err(|e| format!("host {host:?}: {e}"))?;
            map.insert(http::header::HOST, value);
        }
        Ok(Self {
            method,
            uri,
            headers: map,
        })
    }

    /// The router's view of it (see [`Incoming::new`]).
    pub fn incoming(&self) -> Result<Incoming<'_>, PathError> {
        Incoming::new(&self.method, &self.uri, &self.headers)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn route_test_and_the_proxy_agree_on_the_host() {
        for (raw, want) in [
            ("[::1]:8080", "[::1]"),
            ("Example.COM.", "example.com"),
            ("example.com:8080", "example.com"),
        ] {
            // The proxy: pingora's parsed request header.
            let mut req = pingora_http::RequestHeader::build("GET", b"/a", None).unwrap();
            req.insert_header("host", raw).unwrap();
            let proxy = Incoming::new(&req.method, &req.uri, &req.headers).unwrap();
            // route-test: its arguments.
            let parts = RequestParts::from_args("GET", raw, "/a", &[]).unwrap();
            let cli = parts.incoming().unwrap();
            assert_eq!(proxy.host, want, "proxy, {raw}");
            assert_eq!(cli.host, want, "route-test, {raw}");
        }
        // Without a Host header the absolute-form target's authority counts.
        let uri: Uri = "http://Example.COM:81/a".parse().unwrap();
        let (method, headers) = (Method::GET, HeaderMap::new());
        let proxy = Incoming::new(&method, &uri, &headers).unwrap();
        assert_eq!(proxy.host, "example.com");
    }
}
