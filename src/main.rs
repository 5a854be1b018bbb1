//! The `gatehouse` command: run | validate | route-test | schema.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse::config::{self, ConfigError};
use gatehouse::router::RequestParts;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc v3's `mimalloc.h` (the crate names only
/// the options v2 and v3 share).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Lets mimalloc commit its arena on demand instead of all at once: on Linux an eagerly
/// committed arena is re-populated in large steps by small allocations after a purge,
/// so RSS creeps back up while idle. It must run before the first allocation, which
/// reserves the arena, and Rust's runtime allocates before `main`: so it runs as an ELF
/// constructor.
#[cfg(target_os = "linux")]
#[used]
#[allow(unsafe_code)] // an ELF constructor: the only way to run before Rust's runtime allocates
#[link_section = ".init_array"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

#[allow(unsafe_code)] // mimalloc's option table through its C API (see SAFETY)
extern "C" fn tune_allocator() {
    extern "C" {
        // libc's; std's `env::var_os` would allocate, which is what must not happen yet.
        fn getenv(name: *const std::ffi::c_char) -> *mut std::ffi::c_char;
    }
    // SAFETY: getenv reads the environment with a NUL-terminated name; mi_version and
    // mi_option_set only read and write mimalloc's option table.
    unsafe {
        // An operator's own MIMALLOC_ARENA_EAGER_COMMIT wins (mimalloc reads it itself).
        let set_by_operator = !getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null();
        if !set_by_operator && libmimalloc_sys::mi_version() >= 30000 {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
}

/// Gives memory that mimalloc holds free back to the OS. mimalloc purges lazily, on
/// later allocations of the thread that freed it, so after a burst an idle proxy
/// thread would keep its peak RSS for good.
#[allow(unsafe_code)] // mimalloc's mi_collect through its C API (see SAFETY)
fn release_free_memory() {
    // SAFETY: mi_collect only walks mimalloc's own heaps and arenas; it is safe to
    // call from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// A programmable edge gateway on pingora.
#[derive(Parser)]
#[command(name = "gatehouse", version, about)]
struct Cli {
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
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
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
    /// Print the JSON Schema of the config file.
    Schema,
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(true)
        .init();
}

fn error_json(e: &ConfigError) -> serde_json::Value {
    serde_json::json!({
        "file": e.file.as_ref().map(|f| f.display().to_string()),
        "line": e.line, "column": e.column, "path": e.path,
        "message": e.message, "hint": e.hint, "text": e.to_string(),
    })
}

fn validate(path: &std::path::Path, json: bool) -> ExitCode {
    let result = config::load_file(path).and_then(|loaded| {
        let runtime = std::sync::Arc::new(gatehouse_filters::FilterRuntime::default());
        let warnings = loaded.warnings.clone();
        gatehouse::state::compile(loaded, None, &runtime).map(|_| warnings)
    });
    match result {
        Ok(warnings) => {
            if json {
                let out = serde_json::json!({"ok": true, "errors": [], "warnings": warnings.iter().map(error_json).collect::<Vec<_>>()});
                println!("{out}");
            } else {
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                println!("configuration OK: {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(errs) => {
            if json {
                let out = serde_json::json!({"ok": false, "errors": errs.0.iter().map(error_json).collect::<Vec<_>>(), "warnings": []});
                println!("{out}");
            } else {
                for e in &errs.0 {
                    eprintln!("error: {e}");
                }
                eprintln!("configuration test failed: {} error(s)", errs.0.len());
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
) -> anyhow::Result<ExitCode> {
    let runtime = std::sync::Arc::new(gatehouse_filters::FilterRuntime::default());
    let snap =
        match config::load_file(path).and_then(|l| gatehouse::state::compile(l, None, &runtime)) {
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
            let out = gatehouse::path::rewrite_path(
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
    let request = gatehouse::upstream::probe::request(
        addr,
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

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
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
        Command::Validate { json } => Ok(validate(&cli.config, json)),
        Command::RouteTest {
            method,
            host,
            path,
            headers,
        } => route_test(&cli.config, &method, &host, &path, &headers),
        Command::Schema => {
            println!("{}", gatehouse::config::schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { upgrade } => {
            init_logging();
            match gatehouse::app::run(gatehouse::app::RunOptions {
                config_path: cli.config.clone(),
                exit_when_drained: true,
                upgrade,
                // argv[0] as started (resolved against PATH by the shell or systemd), so
                // that SIGUSR2 runs the file now at that path: the new binary.
                exe: std::env::args_os()
                    .next()
                    .map(PathBuf::from)
                    .and_then(|p| which_exe(&p)),
                release_free_memory: Some(release_free_memory),
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
