//! The one-command demo: all four services in-process, embedded SQLite, the gateway
//! in-process when built with the `demo` feature, and a control API that stops and starts
//! one service.

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::config::Settings;
#[cfg(feature = "demo")]
use crate::server::Kind;
use crate::server::{StartError, System};
use crate::switchboard::{SwitchError, SwitchState, Switchboard};

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
                // The services alone are not the demo: end the process, as the gateway
                // itself exits non-zero when it cannot start (a port taken, a bad config).
                tracing::error!(error = %e, "the demo gateway could not start");
                eprintln!("error: the demo gateway could not start: {e}");
                std::process::exit(1);
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
pub async fn start(_settings: Settings, _control: SocketAddr) -> Result<System, StartError> {
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

/// Starts the demo system and its control API on `control`; the caller waits on it and
/// shuts it down.
#[cfg(feature = "demo")]
pub async fn start(settings: Settings, control: SocketAddr) -> Result<System, StartError> {
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
    serve_control(control, &system.switchboard).await?;
    start_gateway(&secret).await?;
    Ok(system)
}

/// The demo's control API on `addr`: `GET /services` lists each service and whether it
/// serves; `POST /services/{name}/stop` closes its port as if its process had died (in-flight
/// requests finish), `POST /services/{name}/start` serves it again on the same port. It lets
/// one watch the dashboard's health checks, breaker and status react to a dead service.
///
/// # Errors
///
/// The address cannot be bound.
pub async fn serve_control(addr: SocketAddr, board: &Switchboard) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let app = Router::new()
        .route("/services", get(list))
        .route("/services/{name}/{action}", post(switch))
        .with_state(board.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "demo control API stopped");
        }
    });
    tracing::info!(
        url = %format!("http://{addr}/services"),
        "demo control: POST /services/<name>/stop or /start to stop or start one service"
    );
    Ok(())
}

async fn list(State(board): State<Switchboard>) -> Json<Vec<SwitchState>> {
    Json(board.states())
}

async fn switch(
    State(board): State<Switchboard>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let result = match action.as_str() {
        "stop" => board.stop(&name).await,
        "start" => board.start(&name).await,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": format!("unknown action {action:?}: use stop or start") })),
            )
                .into_response()
        }
    };
    match result {
        Ok(state) => Json(state).into_response(),
        Err(e @ SwitchError::Unknown(_)) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
