//! Reloading: parse, validate and compile the whole new config off the request path,
//! then swap it in atomically; a bad file is refused and the running config stays.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::events::{rfc3339, ReloadRecord};
use super::{compile, Snapshot, State};
use crate::config::{self, ConfigErrors, ConfigWarning};

/// What a successful reload changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// New config hash.
    pub hash: String,
    /// Whether the text changed at all.
    pub changed: bool,
    /// Findings like shadowed routes, and fields that need a restart to take effect.
    pub warnings: Vec<String>,
}

/// Fields that a reload cannot apply (they shape listeners and threads).
fn restart_only(old: &config::GatewayConfig, new: &config::GatewayConfig) -> Vec<ConfigWarning> {
    let mut w = Vec::new();
    let mut check = |field: &str, differs: bool| {
        if differs {
            w.push(config::ConfigError::at(
                field,
                "changed, but takes effect only after a restart; the running value stays",
            ));
        }
    };
    check("listeners", old.listeners != new.listeners);
    check("admin", old.admin != new.admin);
    check("runtime", old.runtime != new.runtime);
    check("redis", old.redis != new.redis);
    check("shutdown", old.shutdown != new.shutdown);
    w
}

/// Puts the running values of restart-only fields into a new config, so that the
/// snapshot (and `/admin/config`) tells what actually runs, and the warning repeats on
/// every reload until a restart.
fn keep_restart_only(new: &mut config::GatewayConfig, running: &config::GatewayConfig) {
    new.listeners = running.listeners.clone();
    new.admin = running.admin.clone();
    new.runtime = running.runtime.clone();
    new.redis = running.redis.clone();
    new.shutdown = running.shutdown.clone();
}

/// Reloads run one at a time: each reads the file inside the lock, so the last to run
/// applies the newest text even when triggers (file, signal, admin) race.
static RELOAD_LOCK: Mutex<()> = Mutex::new(());

/// Reloads from the config file. `trigger` is recorded (`file`, `signal`, `admin`).
/// Blocking (file I/O, compile): call it off the async threads.
pub fn reload(state: &State, trigger: &str) -> Result<ReloadReport, ConfigErrors> {
    let Some(path) = state.config_path.as_deref() else {
        return Err(ConfigErrors(vec![config::ConfigError::at(
            "",
            "no config file to reload from",
        )]));
    };
    let _serial = RELOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let result = load_and_compile(state, path);
    let m = &state.metrics;
    match result {
        Ok((snap, warnings)) => {
            let hash = snap.loaded.hash.clone();
            let changed = hash != state.current().loaded.hash;
            let old = state.snapshot.swap(Arc::new(snap));
            after_swap(state, &old);
            m.config_reloads.with_label_values(&["success"]).inc();
            m.config_last_success.set(unix_now());
            m.set_config_hash(&hash);
            let warnings: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
            for w in &warnings {
                tracing::warn!(warning = %w, "config warning");
            }
            tracing::info!(trigger, hash = &hash[..16], changed, "config reloaded");
            if changed {
                state.events.push(
                    "reload",
                    format!("config reloaded ({trigger}), hash {}", &hash[..12]),
                );
            }
            state.events.push_reload(ReloadRecord {
                time: rfc3339(SystemTime::now()),
                result: "success",
                hash: Some(hash.clone()),
                error: None,
                trigger: trigger.to_string(),
            });
            Ok(ReloadReport {
                hash,
                changed,
                warnings,
            })
        }
        Err(errs) => {
            m.config_reloads.with_label_values(&["failure"]).inc();
            for e in &errs.0 {
                tracing::error!(trigger, error = %e, "config reload refused; the running config stays");
            }
            state.events.push(
                "reload",
                format!(
                    "config reload refused ({trigger}): {}",
                    errs.0.first().map(|e| e.to_string()).unwrap_or_default()
                ),
            );
            state.events.push_reload(ReloadRecord {
                time: rfc3339(SystemTime::now()),
                result: "failure",
                hash: None,
                error: Some(errs.to_string()),
                trigger: trigger.to_string(),
            });
            Err(errs)
        }
    }
}

fn load_and_compile(
    state: &State,
    path: &Path,
) -> Result<(Snapshot, Vec<ConfigWarning>), ConfigErrors> {
    let mut loaded = config::load_file(path)?;
    let current = state.current();
    let mut warnings = loaded.warnings.clone();
    warnings.extend(
        restart_only(&current.loaded.config, &loaded.config)
            .into_iter()
            .map(|w| loaded.locate(w)),
    );
    keep_restart_only(&mut loaded.config, &current.loaded.config);
    let snap = compile(loaded, Some(&current), &state.filter_runtime)?;
    Ok((snap, warnings))
}

/// Drops metric series of endpoints that no longer exist and publishes the health of new ones.
pub fn after_swap(state: &State, old: &Snapshot) {
    let new = state.current();
    let keep = new.endpoint_keys();
    for (u, e) in old.endpoint_keys() {
        if !keep.contains(&(u.clone(), e.clone())) {
            let _ = state
                .metrics
                .endpoint_healthy
                .remove_label_values(&[&u, &e]);
        }
    }
    publish_health(state, &new);
}

/// Sets `gatehouse_upstream_endpoint_healthy` for every endpoint of `snap`.
pub fn publish_health(state: &State, snap: &Snapshot) {
    let now = crate::upstream::now_ms();
    for (name, u) in &snap.upstreams {
        for e in u.endpoints().iter() {
            state
                .metrics
                .endpoint_healthy
                .with_label_values(&[name, &e.address])
                .set(i64::from(e.is_available(now)));
        }
    }
    crate::resilience::publish(state, snap);
}

/// Unix time in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Watches the config file's directory (so write-and-rename and symlink swaps are seen)
/// and calls `on_change` once per burst of events, after `debounce` of quiet.
pub fn watch_file(
    path: &Path,
    debounce: Duration,
    on_change: impl Fn() + Send + 'static,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::Watcher;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("gatehouse-config-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // debounce: wait until the burst is over
                while rx.recv_timeout(debounce).is_ok() {}
                on_change();
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}
