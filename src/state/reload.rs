//! Reloading: parse, validate and compile the whole new config off the request path,
//! then swap it in atomically; a bad file is refused and the running config stays.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// What changed: routes, upstreams and endpoints, restart-only sections pending.
    pub diff: config::diff::ConfigDiff,
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
    check("listeners", !same_sockets(old, new));
    check("admin", old.admin != new.admin);
    check("runtime", old.runtime != new.runtime);
    check("redis", old.redis != new.redis);
    check("shutdown", old.shutdown != new.shutdown);
    check("metrics", old.metrics != new.metrics);
    check("tracing", !same_tracing(old, new));
    w
}

/// Whether both configs trace the same way but for `sampler.ratio`, which reloads.
fn same_tracing(a: &config::GatewayConfig, b: &config::GatewayConfig) -> bool {
    match (&a.tracing, &b.tracing) {
        (Some(x), Some(y)) => {
            let mut y = y.clone();
            y.sampler = x.sampler.clone();
            *x == y
        }
        (x, y) => x == y,
    }
}

/// Whether both configs have the same listeners but for what is read per connection from
/// the snapshot (`trusted_proxies`, `proxy_protocol`, `redirect_https`, `https_port`) and
/// the TLS certificates (served from the listener's store, replaced on reload).
fn same_sockets(a: &config::GatewayConfig, b: &config::GatewayConfig) -> bool {
    let shape = |c: &config::GatewayConfig| {
        let mut l = c.listeners.clone();
        for x in &mut l {
            x.trusted_proxies.clear();
            x.proxy_protocol = false;
            x.redirect_https = false;
            x.https_port = None;
            // Certificates and min_version reload; TLS on or off is the socket's shape,
            // and so is ACME (its renewal service starts with the process).
            if let Some(tls) = &mut x.tls {
                *tls = config::model::ListenerTlsConfig {
                    cert: None,
                    key: None,
                    certificates: Vec::new(),
                    min_version: Default::default(),
                    acme: tls.acme.take(),
                };
            }
        }
        l
    };
    shape(a) == shape(b)
}

/// Puts the running values of restart-only fields into a new config, so that the
/// snapshot (and `/admin/config`) tells what actually runs, and the warning repeats on
/// every reload until a restart.
fn keep_restart_only(new: &mut config::GatewayConfig, running: &config::GatewayConfig) {
    // A listener's trusted_proxies, proxy_protocol, redirect and certificates are read
    // per connection: they reload; the sockets themselves (and TLS on/off) do not.
    if !same_sockets(new, running) {
        new.listeners = running.listeners.clone();
    }
    new.admin = running.admin.clone();
    new.runtime = running.runtime.clone();
    new.redis = running.redis.clone();
    new.shutdown = running.shutdown.clone();
    new.metrics = running.metrics.clone();
    // The ratio of a running tracer reloads; the exporter's settings do not.
    if !same_tracing(new, running) {
        let ratio = new.tracing.as_ref().map(|t| t.sampler.clone());
        new.tracing = running.tracing.clone();
        if let (Some(t), Some(r)) = (&mut new.tracing, ratio) {
            t.sampler = r;
        }
    }
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
    let tel = &state.telemetry;
    match result {
        Ok((snap, warnings, diff)) => {
            let hash = snap.loaded.hash.clone();
            let changed = hash != state.current().loaded.hash;
            // Certificates first: a request on the new snapshot may follow a handshake
            // with the new certificate, never the other way round.
            state.tls.apply(&snap.tls_files);
            if let (Some(t), Some(c)) = (&state.tracing, &snap.loaded.config.tracing) {
                t.set_ratio(c.sampler.ratio);
            }
            let old = state.snapshot.swap(Arc::new(snap));
            super::publish::after_swap(state, &old);
            let warnings: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
            tel.reload_applied(
                &hash,
                trigger,
                changed,
                &warnings,
                &diff.summary(),
                &diff.pending_restart,
            );
            Ok(ReloadReport {
                hash,
                changed,
                warnings,
                diff,
            })
        }
        Err(errs) => {
            let lines: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
            tel.reload_refused(trigger, &lines);
            Err(errs)
        }
    }
}

/// A config without routes replacing one with routes is most likely a half-written or
/// truncated file (an in-place write read mid-way): it would answer 404 to everything.
/// It is applied only when the file says so with an explicit `routes: []`.
fn refuse_dropping_every_route(
    new: &config::LoadedConfig,
    running: &config::GatewayConfig,
) -> Result<(), ConfigErrors> {
    if !new.config.routes.is_empty() || running.routes.is_empty() || new.writes_key("routes") {
        return Ok(());
    }
    let e = config::ConfigError::at(
        "routes",
        format!(
            "the new config has no routes while {} are serving; refused as a likely half-written file (write `routes: []` to remove every route on purpose)",
            running.routes.len()
        ),
    );
    Err(ConfigErrors(vec![new.locate(e)]))
}

/// The new snapshot, its warnings, and what it changes from the running config.
type Compiled = (Snapshot, Vec<ConfigWarning>, config::diff::ConfigDiff);

fn load_and_compile(state: &State, path: &Path) -> Result<Compiled, ConfigErrors> {
    let mut loaded = config::load_file(path)?;
    let current = state.current();
    refuse_dropping_every_route(&loaded, &current.loaded.config)?;
    let mut warnings = loaded.warnings.clone();
    let pending = restart_only(&current.loaded.config, &loaded.config);
    let pending_names = pending.iter().map(|w| w.path.clone()).collect();
    warnings.extend(pending.into_iter().map(|w| loaded.locate(w)));
    keep_restart_only(&mut loaded.config, &current.loaded.config);
    let diff = config::diff::diff(&current.loaded.config, &loaded.config, pending_names);
    let snap = compile(loaded, Some(&current), &state.filter_runtime)?;
    Ok((snap, warnings, diff))
}

/// Longest wait between the first event of a burst and the reload, however long a
/// writer that keeps the file open goes on.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// How long events that arrive together with a finished write (inotify reports a rename
/// as moved-to and as a from/to pair in one read) are gathered into one reload.
const COALESCE: Duration = Duration::from_millis(5);

/// What an event in the watched directory says about the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// A writer is done: the file was closed after writing (inotify `IN_CLOSE_WRITE`)
    /// or renamed into place (`IN_MOVED_TO`, also a Kubernetes `..data` symlink swap).
    /// Applied at once.
    Done,
    /// The file changed but its writer may still hold it open (`IN_MODIFY`, create,
    /// delete): applied after a quiet period.
    Writing,
}

/// What an event means for the config file: about the file itself (written in place, or
/// the target of a rename-over) or a `..name` entry (Kubernetes ConfigMaps swap a
/// `..data` symlink to a `..<timestamp>` directory). Other files in the directory (logs,
/// editors' swap files) and reads (the gateway's own) say nothing, so they can neither
/// trigger a reload nor keep the quiet period from ending.
fn signal(ev: &notify::Event, name: &std::ffi::OsStr) -> Option<Signal> {
    signal_about(ev, |p| {
        p.file_name()
            .is_some_and(|n| n == name || n.to_string_lossy().starts_with(".."))
    })
}

/// What an event means for the files `about` selects (by their paths as the event names
/// them).
fn signal_about(ev: &notify::Event, about: impl Fn(&Path) -> bool) -> Option<Signal> {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    use notify::EventKind;
    if !ev.paths.iter().any(|p| about(p)) {
        return None;
    }
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Signal::Done),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
            Some(Signal::Done)
        }
        // The old name going away: the moved-to that follows tells when it is done.
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => None,
        _ => Some(Signal::Writing),
    }
}

/// Watches the config file's directory (so write-and-rename and symlink swaps are seen)
/// and calls `on_change` when a writer is done with the file: at once (within
/// [`COALESCE`]) after a close-after-write or a rename into place, and otherwise after
/// `quiet` without events (a writer that keeps the file open), at most [`MAX_DEBOUNCE`]
/// after its first event. An atomic rename is the safe way to change the file; a reload
/// that would drop every route is refused besides (see `refuse_dropping_every_route`).
/// A config that is a symlink to a file elsewhere is not followed there: edits of the
/// target need SIGHUP or `POST /admin/reload`.
pub fn watch_file(
    path: &Path,
    quiet: Duration,
    on_change: impl Fn() + Send + 'static,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::Watcher;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let (tx, rx) = std::sync::mpsc::channel::<Signal>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if let Some(s) = signal(&ev, &name) {
                    let _ = tx.send(s);
                }
            }
            Err(e) => tracing::warn!(error = %e, "config watcher error"),
        })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    debounce("gatehouse-config-watch", rx, quiet, on_change)?;
    Ok(watcher)
}

/// Runs `on_change` on its own thread once per burst of signals: at once (within
/// [`COALESCE`]) after a finished write, else after `quiet` without events, at most
/// [`MAX_DEBOUNCE`] after the burst's first event.
fn debounce(
    thread: &str,
    rx: std::sync::mpsc::Receiver<Signal>,
    quiet: Duration,
    on_change: impl Fn() + Send + 'static,
) -> Result<(), notify::Error> {
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            while let Ok(mut last) = rx.recv() {
                let first = std::time::Instant::now();
                // Bounded by MAX_DEBOUNCE: a writer that never stops is applied anyway.
                while let Some(left) = MAX_DEBOUNCE.checked_sub(first.elapsed()) {
                    let wait = match last {
                        Signal::Done => COALESCE,
                        Signal::Writing => quiet,
                    };
                    match rx.recv_timeout(wait.min(left)) {
                        Ok(s) => last = s,
                        Err(_) => break,
                    }
                }
                on_change();
            }
        })
        .map(|_| ())
        .map_err(|e| notify::Error::generic(&e.to_string()))
}

/// Watches the certificate and key files of the TLS listeners (their directories, as the
/// config file's is watched, so renames and Kubernetes Secret `..data` swaps are seen) and
/// calls `on_change` when a writer is done with one, with the config file's debounce. The
/// set of files follows the running config through [`CertWatch::sync`].
pub struct CertWatch {
    watcher: Mutex<notify::RecommendedWatcher>,
    /// The watched files, absolute; shared with the event callback.
    files: Arc<Mutex<BTreeSet<PathBuf>>>,
    dirs: Mutex<BTreeSet<PathBuf>>,
}

impl CertWatch {
    /// Starts watching nothing; [`CertWatch::sync`] names the files.
    pub fn start(
        quiet: Duration,
        on_change: impl Fn() + Send + 'static,
    ) -> Result<Self, notify::Error> {
        let files: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let watched = files.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Signal>();
        let watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    let files = watched.lock().unwrap_or_else(|p| p.into_inner());
                    let about = |p: &Path| {
                        files.contains(p)
                            || (p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with(".."))
                                && files.iter().any(|f| f.parent() == p.parent()))
                    };
                    if let Some(s) = signal_about(&ev, about) {
                        let _ = tx.send(s);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "certificate watcher error"),
            })?;
        debounce("gatehouse-cert-watch", rx, quiet, on_change)?;
        Ok(Self {
            watcher: Mutex::new(watcher),
            files,
            dirs: Mutex::default(),
        })
    }

    /// Watches exactly `files` from now on (relative paths are taken from the current
    /// directory, as the config loader resolved them).
    pub fn sync(&self, files: impl IntoIterator<Item = PathBuf>) {
        use notify::Watcher;
        let files: BTreeSet<PathBuf> = files
            .into_iter()
            .map(|f| std::path::absolute(&f).unwrap_or(f))
            .collect();
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        let mut watching = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if *watching != dirs {
            let mut w = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
            for gone in watching.difference(&dirs) {
                let _ = w.unwatch(gone);
            }
            for new in dirs.difference(&watching) {
                if let Err(e) = w.watch(new, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %new.display(), error = %e, "cannot watch certificate directory; reload by SIGHUP or POST /admin/reload");
                }
            }
            *watching = dirs;
        }
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RenameMode,
    };

    fn ev(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        e.paths = paths.iter().map(std::path::PathBuf::from).collect();
        e
    }

    #[test]
    fn a_finished_write_applies_at_once_an_open_one_after_quiet_and_others_never() {
        let name = std::ffi::OsStr::new("gatehouse.yaml");
        let sig = |kind, paths: &[&str]| signal(&ev(kind, paths), name);
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert_eq!(
            sig(write, &["/etc/gh/gatehouse.yaml"]),
            Some(Signal::Writing)
        );
        assert_eq!(sig(closed, &["/etc/gh/gatehouse.yaml"]), Some(Signal::Done));
        assert_eq!(
            sig(read, &["/etc/gh/gatehouse.yaml"]),
            None,
            "our own reads"
        );
        assert_eq!(sig(write, &["/etc/gh/gateway.log"]), None);
        assert_eq!(sig(closed, &["/etc/gh/.gatehouse.yaml.swp"]), None);
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert_eq!(
            sig(
                both,
                &["/etc/gh/gatehouse.yaml.tmp", "/etc/gh/gatehouse.yaml"]
            ),
            Some(Signal::Done)
        );
        assert_eq!(sig(to, &["/etc/gh/gatehouse.yaml"]), Some(Signal::Done));
        assert_eq!(sig(from, &["/etc/gh/gatehouse.yaml"]), None);
        assert_eq!(
            sig(both, &["/etc/gh/..data_tmp", "/etc/gh/..data"]),
            Some(Signal::Done),
            "a ConfigMap swap"
        );
        assert_eq!(
            sig(
                EventKind::Create(CreateKind::Folder),
                &["/etc/gh/..2026_01_01"]
            ),
            Some(Signal::Writing)
        );
    }
}
