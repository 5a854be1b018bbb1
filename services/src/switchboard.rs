//! Each service's HTTP listener as a switch: serving, or stopped (the port closed, as if its
//! process had died) and started again on the same address; the demo's control API drives it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a stop waits for in-flight requests before it leaves them to finish alone.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Errors of [`Switchboard`] operations.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// No service has this name.
    #[error("no service is named {0:?}")]
    Unknown(String),
    /// The address could not be bound again (another process took the port).
    #[error("cannot listen on {addr} again: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One service's listener: its router and address, and the serving task when it serves.
#[derive(Debug)]
pub struct Listening {
    router: Router,
    addr: SocketAddr,
    serving: Option<Serving>,
}

#[derive(Debug)]
struct Serving {
    task: JoinHandle<std::io::Result<()>>,
    stop: watch::Sender<bool>,
}

/// A service's state as the control API reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SwitchState {
    /// The service's name.
    pub name: &'static str,
    /// Where it listens (or listened).
    pub addr: SocketAddr,
    /// `serving` or `stopped`.
    pub state: &'static str,
}

impl Listening {
    /// Serves `router` on `listener` until `shutdown` turns true (the whole process) or
    /// the switch is stopped.
    pub fn start(
        listener: tokio::net::TcpListener,
        router: Router,
        shutdown: &watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let serving = Some(serve(listener, router.clone(), shutdown.clone()));
        Ok(Self {
            router,
            addr,
            serving,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when serving stopped although nobody asked it to (a listener error).
    pub fn failed(&self) -> bool {
        self.serving.as_ref().is_some_and(|s| s.task.is_finished())
    }

    /// Takes the serving task out (for the process's shutdown to await).
    pub fn take_task(&mut self) -> Option<JoinHandle<std::io::Result<()>>> {
        self.serving.take().map(|s| s.task)
    }
}

fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> Serving {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = shutdown.wait_for(|v| *v) => {}
                    _ = stopped.wait_for(|v| *v) => {}
                }
            })
            .await
    });
    Serving { task, stop }
}

/// The listeners of a process's services, shared between the process and the control API.
#[derive(Debug, Clone)]
pub struct Switchboard {
    slots: Arc<Vec<(&'static str, Mutex<Listening>)>>,
    shutdown: watch::Receiver<bool>,
}

impl Switchboard {
    /// A switchboard over `slots`; `shutdown` is the process's stop signal, which a
    /// restarted listener also obeys.
    pub fn new(slots: Vec<(&'static str, Listening)>, shutdown: watch::Receiver<bool>) -> Self {
        let slots = slots.into_iter().map(|(n, l)| (n, Mutex::new(l))).collect();
        Self {
            slots: Arc::new(slots),
            shutdown,
        }
    }

    /// The service's own (static) name and its listener slot.
    fn slot(&self, name: &str) -> Result<(&'static str, &Mutex<Listening>), SwitchError> {
        self.slots
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, l)| (*n, l))
            .ok_or_else(|| SwitchError::Unknown(name.to_owned()))
    }

    /// Every service's state, in start order.
    pub fn states(&self) -> Vec<SwitchState> {
        self.slots
            .iter()
            .map(|(name, l)| state_of(name, &lock(l)))
            .collect()
    }

    /// Stops serving `name`: the listener closes at once (new connections are refused),
    /// idle keep-alive connections are closed, in-flight requests finish (awaited up to
    /// 5 s). Stopping a stopped service does nothing.
    ///
    /// # Errors
    ///
    /// [`SwitchError::Unknown`] for a name that is not one of the services.
    pub async fn stop(&self, name: &str) -> Result<SwitchState, SwitchError> {
        let (name, slot) = self.slot(name)?;
        let serving = lock(slot).serving.take();
        if let Some(s) = serving {
            let _ = s.stop.send(true);
            let _ = tokio::time::timeout(STOP_GRACE, s.task).await;
            tracing::warn!(service = name, "service stopped (demo control)");
        }
        Ok(state_of(name, &lock(slot)))
    }

    /// Serves `name` again on its address. Starting a serving service does nothing.
    ///
    /// # Errors
    ///
    /// [`SwitchError::Unknown`]; [`SwitchError::Bind`] when the port was taken meanwhile.
    pub async fn start(&self, name: &str) -> Result<SwitchState, SwitchError> {
        let (name, slot) = self.slot(name)?;
        let (addr, router) = {
            let l = lock(slot);
            if l.serving.is_some() {
                return Ok(state_of(name, &l));
            }
            (l.addr, l.router.clone())
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SwitchError::Bind { addr, source })?;
        let mut l = lock(slot);
        if l.serving.is_none() {
            l.serving = Some(serve(listener, router, self.shutdown.clone()));
            tracing::info!(service = name, %addr, "service started again (demo control)");
        }
        Ok(state_of(name, &l))
    }

    /// The name of the first service whose listener failed on its own, if any.
    pub fn failed(&self) -> Option<&'static str> {
        self.slots
            .iter()
            .find(|(_, l)| lock(l).failed())
            .map(|(n, _)| *n)
    }

    /// Takes every serving task out, for shutdown to await.
    pub fn take_tasks(&self) -> Vec<JoinHandle<std::io::Result<()>>> {
        self.slots
            .iter()
            .filter_map(|(_, l)| lock(l).take_task())
            .collect()
    }
}

fn lock(l: &Mutex<Listening>) -> std::sync::MutexGuard<'_, Listening> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

fn state_of(name: &'static str, l: &Listening) -> SwitchState {
    SwitchState {
        name,
        addr: l.addr,
        state: if l.serving.is_some() {
            "serving"
        } else {
            "stopped"
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn status(addr: SocketAddr) -> Option<u16> {
        let resp = reqwest::Client::new()
            .get(format!("http://{addr}/ping"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        Some(resp.status().as_u16())
    }

    #[tokio::test]
    async fn a_stopped_service_refuses_connections_and_serves_again_on_the_same_address() {
        let (_tx, shutdown) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router = Router::new().route("/ping", get(|| async { "pong" }));
        let l = Listening::start(listener, router, &shutdown).unwrap();
        let addr = l.addr();
        let board = Switchboard::new(vec![("ping", l)], shutdown);
        assert_eq!(status(addr).await, Some(200));

        let s = board.stop("ping").await.unwrap();
        assert_eq!(s.state, "stopped");
        assert_eq!(status(addr).await, None, "the port is closed");
        assert!(
            board.failed().is_none(),
            "a requested stop is not a failure"
        );
        assert_eq!(board.stop("ping").await.unwrap().state, "stopped");

        let s = board.start("ping").await.unwrap();
        assert_eq!((s.state, s.addr), ("serving", addr));
        assert_eq!(status(addr).await, Some(200));
        assert_eq!(board.start("ping").await.unwrap().state, "serving");
        assert!(matches!(
            board.stop("nope").await,
            Err(SwitchError::Unknown(_))
        ));
        assert_eq!(board.states(), vec![s]);
    }
}
