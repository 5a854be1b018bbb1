//! A YAML builder for the many tests whose gateway has one upstream, `app`.

use std::fmt;
use std::net::SocketAddr;

/// A gateway config with the test's listener and admin placeholders (filled by
/// `TestGateway::start`) and one upstream `app` with static endpoints; without a route of
/// its own, one route `all` sends every request to `app`. Rendered by `to_string()`:
///
/// ```ignore
/// AppConfig::new(&[up.addr]).top("runtime: { threads: 1 }").route("api", "/api", &["jwt: {..}"])
/// ```
#[derive(Clone, Debug, Default)]
pub struct AppConfig {
    top: String,
    endpoints: Vec<SocketAddr>,
    app: String,
    upstreams: String,
    routes: String,
}

impl AppConfig {
    /// Upstream `app` on these endpoints (weight 1 each, default timeouts).
    pub fn new(endpoints: &[SocketAddr]) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            ..Self::default()
        }
    }

    /// Top-level settings (`runtime: { threads: 1 }`, `redis: {..}`), one or more lines.
    pub fn top(mut self, yaml: &str) -> Self {
        push_lines(&mut self.top, yaml);
        self
    }

    /// Settings of upstream `app` (`timeouts: {..}`, `retry: {..}`), written without indent
    /// or, as lines already indented for an upstream, with four spaces.
    pub fn app(mut self, yaml: &str) -> Self {
        for line in yaml.lines().filter(|l| !l.trim().is_empty()) {
            let line = line.strip_prefix("    ").unwrap_or(line);
            self.app += &format!("    {line}\n");
        }
        self
    }

    /// More upstreams, as lines indented for the `upstreams` map (two spaces).
    pub fn upstreams(mut self, yaml: &str) -> Self {
        push_lines(&mut self.upstreams, yaml);
        self
    }

    /// A route `name` for the path prefix `prefix` to `app`, with `filters` (each one a
    /// filter entry, e.g. `jwt: {..}`) in order.
    pub fn route(mut self, name: &str, prefix: &str, filters: &[&str]) -> Self {
        self.routes += &format!(
            "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: app\n"
        );
        if !filters.is_empty() {
            self.routes += "    filters:\n";
            for f in filters {
                self.routes += &format!("      - {f}\n");
            }
        }
        self
    }
}

fn push_lines(to: &mut String, yaml: &str) {
    to.push_str(yaml);
    if !yaml.is_empty() && !yaml.ends_with('\n') {
        to.push('\n');
    }
}

impl fmt::Display for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|a| format!("{{ address: \"{a}\" }}"))
            .collect();
        let routes = if self.routes.is_empty() {
            "  - { name: all, upstream: app }\n"
        } else {
            &self.routes
        };
        write!(
            f,
            "listeners: [ {{ name: public, address: \"{{listen}}\" }} ]\nadmin: {{ address: \"{{admin}}\" }}\n{}\
             upstreams:\n  app:\n    discovery: {{ static: [ {} ] }}\n{}{}routes:\n{routes}",
            self.top,
            endpoints.join(", "),
            self.app,
            self.upstreams,
        )
    }
}
