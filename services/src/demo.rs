//! The one-command demo: all four services in-process, embedded SQLite, and the gateway
//! in-process when built with the `demo` feature.

use crate::config::Settings;
#[cfg(feature = "demo")]
use crate::server::Kind;
use crate::server::{StartError, System};

/// What the demo command says when this binary was built without the gateway.
pub const NO_DEMO_FEATURE: &str =
    "this binary was built without the `demo` feature (the gateway): \
    run `cargo run --release -p gatehouse-services --features demo -- demo`";

/// Starts gatehouse in-process on :3000 with `config/demo.yaml` (or the file named by
/// `GATEHOUSE_DEMO_CONFIG`), on its own threads: pingora runs its own runtimes. The
/// config verifies tokens with the secret in `GATEHOUSE_JWT_SECRET`, the one the user
/// service signs with (`main` sets it before any thread starts when it was unset).
///
/// # Errors
///
/// The config file is missing: the demo must not run without its gateway.
#[cfg(feature = "demo")]
pub async fn start_gateway(secret: &str) -> Result<(), StartError> {
    let _ = secret; // handed over through GATEHOUSE_JWT_SECRET; never logged
    let config_path = gateway_config()?;
    let spawned = std::thread::Builder::new()
        .name("gatehouse-gateway".into())
        .spawn(move || {
            let opts = gatehouse::app::RunOptions::embedded(config_path);
            if let Err(e) = gatehouse::app::run(opts) {
                tracing::error!(error = %e, "the demo gateway could not start");
            }
        });
    match spawned {
        Ok(_) => tracing::info!(
            "gateway starting on http://127.0.0.1:3000 (admin and dashboard on http://127.0.0.1:9901/)"
        ),
        Err(e) => {
            return Err(StartError::Config(format!(
                "could not start the gateway thread: {e}"
            )))
        }
    }
    Ok(())
}

/// Starts the demo system; the caller waits on it and shuts it down. Without the `demo`
/// feature it refuses before starting anything ([`NO_DEMO_FEATURE`]).
#[cfg(not(feature = "demo"))]
pub async fn start(_settings: Settings) -> Result<System, StartError> {
    Err(StartError::Config(NO_DEMO_FEATURE.into()))
}

/// The demo gateway's config: `GATEHOUSE_DEMO_CONFIG`, else `config/demo.yaml` of the
/// working directory.
///
/// # Errors
///
/// The file does not exist: the demo must not run without its gateway.
#[cfg(feature = "demo")]
fn gateway_config() -> Result<std::path::PathBuf, StartError> {
    let path = std::env::var("GATEHOUSE_DEMO_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from("config/demo.yaml"));
    if path.exists() {
        Ok(path)
    } else {
        Err(StartError::Config(format!(
            "demo gateway config {} not found: run the demo from the repository root or set GATEHOUSE_DEMO_CONFIG",
            path.display()
        )))
    }
}

/// Starts the demo system; the caller waits on it and shuts it down.
#[cfg(feature = "demo")]
pub async fn start(settings: Settings) -> Result<System, StartError> {
    let secret = settings
        .jwt_secret
        .clone()
        .ok_or_else(|| StartError::Config("the demo needs a JWT secret".into()))?;
    // Before any service starts: a demo without its gateway is no demo.
    gateway_config()?;
    let system = System::start(settings, &Kind::ALL).await?;
    for s in &system.services {
        tracing::info!(service = s.name, url = %format!("http://{}", s.addr), "demo service up");
    }
    start_gateway(&secret).await?;
    Ok(system)
}
