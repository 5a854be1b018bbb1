//! The `gatehouse` command line (run | validate | route-test | config | schema | health) as a
//! library, so that a program with its own filter kinds gets the same CLI:
//! `gatehouse::App::builder().filter::<ApiKeyFactory>("api_key").run()`. The one place
//! of the crate that uses `anyhow`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse_filters::{FilterFactory, FilterKinds, FilterRuntime, KindError};

use crate::config::{self, ConfigError};
use crate::router::RequestParts;

/// A gateway program: the built-in filter kinds plus the ones registered here, behind
/// the `gatehouse` command line. `src/main.rs` is `App::builder()...run()` with no
/// custom kind.
///
/// ```no_run
/// # use std::process::ExitCode;
/// fn main() -> ExitCode {
///     // .filter::<MyFactory>("my_kind") for each custom kind
///     gatehouse::App::builder().run()
/// }
/// ```
#[derive(Default)]
pub struct App {
    kinds: FilterKinds,
    /// Registration errors, reported when the program runs (a builder cannot fail).
    errors: Vec<KindError>,
    release_free_memory: Option<fn()>,
}

impl App {
    /// A program with the built-in filter kinds only.
    pub fn builder() -> Self {
        Self::default()
    }

    /// Adds the filter kind built by `F` (made with its `Default`) under `kind`, the key
    /// its entries use in YAML and the `filter` label of its metrics. A name that is a
    /// built-in kind's, registered twice, or not snake_case makes [`App::run`] refuse to
    /// start with the reason.
    pub fn filter<F: FilterFactory + Default>(self, kind: &'static str) -> Self {
        self.filter_factory(kind, F::default())
    }

    /// Same as [`App::filter`] with a factory value (for a factory holding state made
    /// before the gateway starts).
    pub fn filter_factory<F: FilterFactory>(mut self, kind: &'static str, factory: F) -> Self {
        if let Err(e) = self.kinds.register(kind, factory) {
            self.errors.push(e);
        }
        self
    }

    /// Gives the allocator's free memory back to the OS while the proxy is quiet (see
    /// `app::RunOptions::release_free_memory`); the `gatehouse` binary passes mimalloc's.
    pub fn release_free_memory(mut self, release: fn()) -> Self {
        self.release_free_memory = Some(release);
        self
    }

    /// The filter kinds registered so far, beside the built-in ones.
    pub fn kinds(&self) -> &FilterKinds {
        &self.kinds
    }

    /// Parses the process's arguments and runs the command (`run` when none is given);
    /// the exit code to return from `main`: 0 on success, 1 on a refused config, a
    /// failed command or a registration error (printed first), 2 on bad arguments.
    pub fn run(self) -> ExitCode {
        self.run_cli(Cli::parse())
    }

    /// Runs an already parsed command line (for a program that parses its own).
    pub fn run_cli(self, cli: Cli) -> ExitCode {
        if !self.errors.is_empty() {
            for e in &self.errors {
                eprintln!("gatehouse: cannot start: {e}");
            }
            return ExitCode::FAILURE;
        }
        match self.command(cli) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gatehouse: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    fn command(self, cli: Cli) -> anyhow::Result<ExitCode> {
        match cli.command.unwrap_or(Command::Run { upgrade: false }) {
            Command::Health { url } => match probe(&url) {
                Ok(status) if (200..300).contains(&status) => Ok(ExitCode::SUCCESS),
                Ok(status) => {
                    eprintln!("unhealthy: {url} answered {status}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => {
                    eprintln!("unhealthy: {url}: {e:#}");
                    Ok(ExitCode::FAILURE)
                }
            },
            Command::Validate { json, no_env } => {
                Ok(validate(&cli.config, json, no_env, &self.kinds))
            }
            Command::Config => Ok(dump_config(&cli.config)),
            Command::RouteTest {
                method,
                host,
                path,
                headers,
            } => route_test(&cli.config, &method, &host, &path, &headers, &self.kinds),
            Command::Schema => {
                println!("{}", config::schema_json_with(&self.kinds));
                Ok(ExitCode::SUCCESS)
            }
            Command::Run { upgrade } => {
                init_logging();
                match crate::app::run(crate::app::RunOptions {
                    config_path: cli.config.clone(),
                    exit_when_drained: true,
                    upgrade,
                    // argv[0] as started (resolved against PATH by the shell or systemd),
                    // so that SIGUSR2 runs the file now at that path: the new binary.
                    exe: std::env::args_os()
                        .next()
                        .map(PathBuf::from)
                        .and_then(|p| which_exe(&p)),
                    release_free_memory: self.release_free_memory,
                    filter_kinds: self.kinds,
                }) {
                    Ok(()) => Ok(ExitCode::SUCCESS),
                    Err(e) => {
                        eprintln!("gatehouse: cannot start:\n{e}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
        }
    }
}

/// A programmable edge gateway on pingora.
#[derive(Parser)]
#[command(name = "gatehouse", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file for the default `run` command.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "config/gatehouse.yaml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run {
        /// Take the listening sockets over from the running gatehouse (binary upgrade):
        /// start this, then send SIGQUIT to the old process within 5 s. SIGUSR2 to the old
        /// process does both.
        #[arg(long)]
        upgrade: bool,
    },
    /// Probe a URL, for container health checks without curl: exit 0 on a 2xx answer
    /// within 3 s, else print why and exit 1.
    Health {
        /// `http://host:port/path`, e.g. `http://127.0.0.1:9902/readyz`.
        #[arg(long)]
        url: String,
    },
    /// Check a config file, like `nginx -t`: exit 0 and "configuration OK", or the errors and exit 1.
    Validate {
        /// Print the result as JSON (errors and warnings).
        #[arg(long)]
        json: bool,
        /// Check syntax, routing and filters without the production secrets: a secret
        /// environment variable (`secret_env`) that is unset is a warning, not an error.
        /// `run` still refuses to start without it.
        #[arg(long)]
        no_env: bool,
    },
    /// Print the effective config (every default filled in) as YAML, like `nginx -T`;
    /// nothing runs and no secret is read.
    Config,
    /// Show which route a request would take, why, and the path sent upstream.
    RouteTest {
        /// Method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Host header.
        #[arg(long, default_value = "")]
        host: String,
        /// Path (with optional query).
        #[arg(long)]
        path: String,
        /// Header `name:value`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Print the JSON Schema of the config file (with this program's custom filter kinds).
    Schema,
}

/// The process log (JSON lines); `GATEHOUSE_LOG` holds `EnvFilter` directives.
fn init_logging() {
    let spec = std::env::var("GATEHOUSE_LOG").ok();
    crate::telemetry::logging::init(spec.as_deref(), "info");
}

fn error_json(e: &ConfigError) -> serde_json::Value {
    serde_json::json!({
        "file": e.file.as_ref().map(|f| f.display().to_string()),
        "line": e.line, "column": e.column, "path": e.path,
        "message": e.message, "hint": e.hint, "text": e.to_string(),
    })
}

/// A filter runtime for checking a config offline: the program's filter kinds, and with
/// `no_env` unset secret variables allowed (listed afterwards as warnings).
fn offline_runtime(kinds: &FilterKinds, no_env: bool) -> std::sync::Arc<FilterRuntime> {
    let runtime = FilterRuntime::default().with_kinds(kinds.clone());
    std::sync::Arc::new(if no_env {
        runtime.allowing_missing_env()
    } else {
        runtime
    })
}

/// A warning per secret variable that was unset while checking with `--no-env`.
fn missing_env_warnings(runtime: &FilterRuntime, path: &std::path::Path) -> Vec<ConfigError> {
    runtime
        .missing_env()
        .into_iter()
        .map(|var| ConfigError {
            file: Some(path.to_path_buf()),
            ..ConfigError::at(
                "",
                format!("environment variable {var} is not set: checked with a placeholder; `run` needs it"),
            )
        })
        .collect()
}

fn validate(path: &std::path::Path, json: bool, no_env: bool, kinds: &FilterKinds) -> ExitCode {
    let runtime = offline_runtime(kinds, no_env);
    let (loaded, mut warnings) = config::load_file_with_warnings(path);
    let result =
        loaded.and_then(|loaded| crate::state::compile(loaded, None, &runtime).map(|_| ()));
    warnings.extend(missing_env_warnings(&runtime, path));
    let errors = result.err().map(|e| e.0).unwrap_or_default();
    let ok = errors.is_empty();
    if json {
        let out = serde_json::json!({
            "ok": ok,
            "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
            "warnings": warnings.iter().map(error_json).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        for e in &errors {
            eprintln!("error: {e}");
        }
        if ok {
            println!("configuration OK: {}", path.display());
        } else {
            eprintln!("configuration test failed: {} error(s)", errors.len());
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `gatehouse config`: the parsed config with every default filled in, as YAML, inline
/// secrets redacted. Only the file is read (no filter is built, no secret resolved, no
/// address resolved).
fn dump_config(path: &std::path::Path) -> ExitCode {
    match config::load_file(path) {
        // Inline secrets are redacted as in `/admin/config`: the dump is made to be shared.
        Ok(loaded) => match serde_json::to_value(&loaded.config)
            .map(|mut v| {
                crate::admin::redact(&mut v);
                v
            })
            .map_err(|e| e.to_string())
            .and_then(|v| serde_yaml::to_string(&v).map_err(|e| e.to_string()))
        {
            Ok(text) => {
                println!(
                    "# effective config of {} (defaults filled in)",
                    path.display()
                );
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot print the config: {e}");
                ExitCode::FAILURE
            }
        },
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn route_test(
    path: &std::path::Path,
    method: &str,
    host: &str,
    target: &str,
    headers: &[String],
    kinds: &FilterKinds,
) -> anyhow::Result<ExitCode> {
    // Routing needs no secret: unset secret variables do not stop a route test.
    let runtime = offline_runtime(kinds, true);
    let snap = match config::load_file(path).and_then(|l| crate::state::compile(l, None, &runtime))
    {
        Ok(s) => s,
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    // The router's view is built exactly as for a proxied request (`router::Incoming`).
    let parts =
        RequestParts::from_args(method, host, target, headers).map_err(anyhow::Error::msg)?;
    let raw_path = parts.uri.path();
    let query = parts.uri.query();
    let incoming = match parts.incoming() {
        Ok(i) => i,
        Err(e) => {
            println!("400 bad_path: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (norm, method, host) = (&incoming.path, incoming.method, &incoming.host);
    match snap.router.route_explained(&incoming.request()) {
        Some((route, why)) => {
            let out = crate::path::rewrite_path(
                norm,
                route.strip_prefix.as_deref(),
                route.add_prefix.as_deref(),
                route.rewrite_path.as_deref(),
            );
            println!("route:     {}", route.name);
            println!("matched:   {why}");
            println!("upstream:  {}", route.cluster.name());
            if norm != raw_path {
                println!("normalized: {raw_path} -> {norm}");
            }
            println!(
                "forwarded: {out}{}",
                query.map(|q| format!("?{q}")).unwrap_or_default()
            );
            println!(
                "filters:   [{}]",
                route
                    .filters
                    .iter()
                    .map(|f| f.kind())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!("404 no_route: no route matches {method} {host}{norm}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The file a command name runs: a path as given (made absolute), a bare name looked
/// up in PATH.
fn which_exe(arg0: &std::path::Path) -> Option<PathBuf> {
    if arg0.components().count() > 1 {
        return std::path::absolute(arg0).ok();
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(arg0))
            .find(|p| p.is_file())
    })
}

/// One HTTP/1.1 GET over plain TCP through the gateway's probe client (the one health
/// checks use), bounded by 3 s; `Ok(status)` or why it failed.
fn probe(url: &str) -> anyhow::Result<u16> {
    let uri: http::Uri = url.parse().context("not a URL")?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are supported"
    );
    let host = uri.host().context("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .context("the host resolves to no address")?;
    let authority = format!("{host}:{port}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let request = crate::upstream::probe::request(
        crate::upstream::probe::Target::plain(addr),
        "GET",
        path,
        &authority,
        "gatehouse-health",
        16 * 1024,
        false,
    );
    // The timer must be made inside the runtime: `timeout` registers it at once.
    let answer = runtime
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(3), request).await });
    match answer {
        Ok(Ok(response)) => Ok(response.status),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => anyhow::bail!("no answer within 3 s"),
    }
}
