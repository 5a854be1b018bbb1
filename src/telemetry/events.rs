//! A bounded in-memory history of notable events and reloads, for the dashboard.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

const MAX_EVENTS: usize = 100;
const MAX_RELOADS: usize = 20;

/// One event: a health transition, a breaker trip, a reload.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// RFC 3339 time.
    pub time: String,
    /// `health`, `breaker`, `reload`, `discovery`, `acme`.
    pub kind: &'static str,
    /// What happened.
    pub message: String,
}

/// One reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// RFC 3339 time.
    pub time: String,
    /// `success` or `failure`.
    pub result: &'static str,
    /// Config hash when it loaded.
    pub hash: Option<String>,
    /// The errors when it did not.
    pub error: Option<String>,
    /// What triggered it: `start`, `file`, `signal`, `admin`.
    pub trigger: String,
    /// What a successful reload changed, in one line (`routes +a ~b; upstreams ~app:
    /// +127.0.0.1:3002`, or `no change`); absent at start and for failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<String>,
    /// Restart-only sections that differ from what runs, after a successful reload.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
}

/// Bounded event and reload history. The lock is only held to push or copy.
#[derive(Default)]
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
    reloads: Mutex<VecDeque<ReloadRecord>>,
}

/// RFC 3339 UTC time of `t`.
pub fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl EventLog {
    /// Adds an event (dropping the oldest beyond the bound).
    pub fn push(&self, kind: &'static str, message: impl Into<String>) {
        let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == MAX_EVENTS {
            q.pop_front();
        }
        q.push_back(Event {
            time: rfc3339(SystemTime::now()),
            kind,
            message: message.into(),
        });
    }

    /// Adds a reload record.
    pub fn push_reload(&self, r: ReloadRecord) {
        let mut q = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == MAX_RELOADS {
            q.pop_front();
        }
        q.push_back(r);
    }

    /// Events, newest first.
    pub fn events(&self) -> Vec<Event> {
        let q = self.events.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().rev().cloned().collect()
    }

    /// Reloads, newest first.
    pub fn reloads(&self) -> Vec<ReloadRecord> {
        let q = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().rev().cloned().collect()
    }

    /// Whether the newest reload was refused (the gateway is DEGRADED until one succeeds).
    pub fn last_reload_failed(&self) -> bool {
        let q = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        q.back().is_some_and(|r| r.result == "failure")
    }
}
