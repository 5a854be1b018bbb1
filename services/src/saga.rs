//! The transfer saga coordinator: debit -> credit -> notify, compensation by void + refund.
//!
//! The saga log (`sagas` + `saga_log`) is the only memory: every step transition is one
//! write transaction (with its outbox event), guarded by the step it leaves, and every
//! call to payment carries an operation id derived from the saga id, so a step re-run
//! after a crash or a lost answer is harmless. Money is conserved because
//! - each op id moves money at most once (payment's unique key),
//! - the credit is voided before the debit is refunded: a credit that did land turns the
//!   saga into COMPLETED instead of refunding (no money is created), and
//! - a refund of a debit that never landed voids it, so it cannot land later.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_registry::Registry;

use gatehouse_otel::opentelemetry::KeyValue;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::auth::INTERNAL_TOKEN_HEADER;
use crate::config::Settings;
use crate::db::Db;
use crate::events;
use crate::metrics::Metrics;
use crate::payment::OpResult;
use machine::{Decision, Move, Reply};

pub mod machine;

pub use crate::text_enum::UnknownVariant;
pub use machine::{Event, OpStatus, SagaState, Step};

/// One row of the saga log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Saga {
    /// `sg_...`.
    pub id: String,
    /// The client's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// The user who asked for the transfer (`X-User-Id`), if any.
    pub initiator: Option<String>,
    /// Source account.
    pub from_account: String,
    /// Destination account.
    pub to_account: String,
    /// Amount in minor units.
    pub amount: i64,
    /// Owner of the source account (known after the debit).
    pub from_user: Option<String>,
    /// Owner of the destination account (known after the credit).
    pub to_user: Option<String>,
    /// PENDING, COMPLETED, COMPENSATED or FAILED (an unknown text fails the load).
    #[sqlx(try_from = "String")]
    pub state: SagaState,
    /// The step still to do (an unknown text fails the load).
    #[sqlx(try_from = "String")]
    pub step: Step,
    /// Tries of the current step.
    pub attempts: i64,
    /// Tries of all steps.
    pub total_attempts: i64,
    /// Notification tries.
    pub notify_attempts: i64,
    /// The last failure seen, if any.
    pub last_error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// Columns of [`Saga`] in select order.
pub const SAGA_COLUMNS: &str = "id, idempotency_key, initiator, from_account, to_account, amount, \
    from_user, to_user, state, step, attempts, total_attempts, notify_attempts, last_error, created_at, updated_at";

/// Operation ids of a saga's payment calls.
pub fn debit_op(id: &str) -> String {
    format!("{id}:debit")
}
/// See [`debit_op`].
pub fn credit_op(id: &str) -> String {
    format!("{id}:credit")
}
/// See [`debit_op`].
pub fn refund_op(id: &str) -> String {
    format!("{id}:refund")
}

/// What a call to another service gave.
#[derive(Debug)]
enum Call {
    /// A definitive answer.
    Answer(OpResult),
    /// A 4xx: the request itself is refused (no retry helps).
    Refused(String),
    /// Timeout, connection error, 5xx: try again later.
    Transient(String),
}

impl Call {
    /// The reply as the transition table takes it.
    fn reply(&self) -> Reply<'_> {
        match self {
            Call::Answer(r) => Reply::Op {
                status: r.status,
                reason: r.reason.as_deref(),
                owner: r.owner_id.as_deref(),
            },
            Call::Refused(e) => Reply::Refused(e),
            Call::Transient(e) => Reply::Transient(e),
        }
    }
}

/// A saga's run stopped: the database failed, or the stored saga cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Reading or writing the saga log failed (an unknown stored state or step too).
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The transition table has no row for this step and reply.
    #[error(transparent)]
    Unexpected(#[from] machine::UnexpectedReply),
}

/// Runs sagas: on request, and from the recovery loop for unfinished ones.
pub struct Coordinator {
    db: Db,
    http: reqwest::Client,
    settings: Arc<Settings>,
    metrics: Metrics,
    wake_publisher: Arc<Notify>,
    inflight: Mutex<HashSet<String>>,
    permits: Semaphore,
    registry: Option<Registry>,
    peers: Mutex<PeerCache>,
    tracer: crate::trace::Tracer,
}

type PeerCache = HashMap<&'static str, (Instant, Vec<(String, u32)>)>;

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish()
    }
}

/// Loads one saga.
pub async fn load(db: &Db, id: &str) -> Result<Option<Saga>, sqlx::Error> {
    sqlx::query_as::<_, Saga>(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ?"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await
}

/// The event payload describing a saga after a transition.
pub fn event_payload(s: &Saga) -> Value {
    json!({
        "saga_id": s.id,
        "from_account": s.from_account,
        "to_account": s.to_account,
        "amount": s.amount,
        "from_user": s.from_user,
        "to_user": s.to_user,
        "initiator": s.initiator,
        "state": s.state,
        "updated_at": s.updated_at,
    })
}

impl Coordinator {
    /// A coordinator over the transaction database.
    pub fn new(
        db: Db,
        settings: Arc<Settings>,
        metrics: Metrics,
        wake_publisher: Arc<Notify>,
        registry: Option<Registry>,
        tracer: crate::trace::Tracer,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.saga.call_timeout)
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        Ok(Coordinator {
            db,
            http,
            settings,
            metrics,
            wake_publisher,
            inflight: Mutex::new(HashSet::new()),
            permits: Semaphore::new(64),
            registry,
            peers: Mutex::new(HashMap::new()),
            tracer,
        })
    }

    /// The base URL of a peer service: a weighted pick among its live registry entries
    /// (cached 2 s) when discovery is on, else (or when none is live) `fallback`.
    async fn peer(&self, service: &'static str, fallback: &str) -> String {
        let Some(reg) = &self.registry else {
            return fallback.to_string();
        };
        let cached = self.peers.lock().ok().and_then(|p| {
            p.get(service)
                .filter(|(at, _)| at.elapsed() < Duration::from_secs(2))
                .map(|(_, l)| l.clone())
        });
        let live = match cached {
            Some(l) => l,
            None => match reg.list_live(service).await {
                Ok(l) => {
                    if let Ok(mut p) = self.peers.lock() {
                        p.insert(service, (Instant::now(), l.clone()));
                    }
                    l
                }
                // Not cached: after a Redis failover the first command on the old
                // connection fails and the next reconnects, so the step's next try asks
                // again instead of using the fallback for 2 s.
                Err(e) => {
                    tracing::warn!(service, error = %e, "registry lookup failed; using the configured address");
                    Vec::new()
                }
            },
        };
        let total: u64 = live.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return fallback.to_string();
        }
        let mut r = rand::random::<u64>() % total;
        for (addr, w) in &live {
            if r < u64::from(*w) {
                return format!("http://{addr}");
            }
            r -= u64::from(*w);
        }
        fallback.to_string()
    }

    /// Starts running saga `id` unless it is already running in this process. The run
    /// joins the caller's trace (its steps are spans under the current span).
    pub fn spawn_run(self: &Arc<Self>, id: &str) -> Option<JoinHandle<()>> {
        {
            let mut inflight = self.inflight.lock().ok()?;
            if !inflight.insert(id.to_string()) {
                return None;
            }
        }
        let me = Arc::clone(self);
        let id = id.to_string();
        let cx = gatehouse_otel::opentelemetry::Context::current();
        Some(tokio::spawn(async move {
            let run = crate::trace::within(Some(&cx), me.run(&id));
            match run.await {
                Ok(()) => {}
                Err(RunError::Db(e)) => {
                    tracing::warn!(saga = %id, error = %e, "saga run stopped on a database error; recovery resumes it");
                }
                Err(e) => tracing::error!(saga = %id, error = %e, "saga run stopped"),
            }
            if let Ok(mut inflight) = me.inflight.lock() {
                inflight.remove(&id);
            }
        }))
    }

    /// Resumes unfinished sagas now and then every `recovery_interval` until shutdown.
    pub fn spawn_recovery(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut first = true;
            while !*shutdown.borrow() {
                let ids: Result<Vec<(String,)>, _> = sqlx::query_as(
                    "SELECT id FROM sagas WHERE step <> 'DONE' ORDER BY created_at LIMIT 1000",
                )
                .fetch_all(&me.db.pool)
                .await;
                match ids {
                    Ok(ids) => {
                        let mut resumed = 0;
                        for (id,) in ids {
                            if me.spawn_run(&id).is_some() {
                                resumed += 1;
                            }
                        }
                        if first && resumed > 0 {
                            tracing::info!(resumed, "resuming unfinished sagas after start");
                            me.metrics
                                .operations
                                .with_label_values(&[
                                    me.metrics.service,
                                    "saga_resumed_at_start",
                                    "ok",
                                ])
                                .inc_by(resumed);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "saga recovery scan failed"),
                }
                first = false;
                tokio::select! {
                    _ = tokio::time::sleep(me.settings.saga.recovery_interval) => {}
                    _ = shutdown.changed() => {}
                }
            }
        });
    }

    async fn call(&self, url: &str, body: &Value) -> Call {
        let resp = crate::trace::outgoing(self.http.post(url))
            .header(INTERNAL_TOKEN_HEADER, &self.settings.internal_token)
            .json(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Call::Transient(format!("{url}: {e}")),
        };
        let status = resp.status();
        if status.is_success() {
            return match resp.json::<OpResult>().await {
                Ok(r) => Call::Answer(r),
                Err(e) => Call::Transient(format!("{url}: unreadable answer: {e}")),
            };
        }
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        if status.is_client_error() && status.as_u16() != 401 && status.as_u16() != 429 {
            Call::Refused(format!("{url}: {status} {text}"))
        } else {
            Call::Transient(format!("{url}: {status} {text}"))
        }
    }

    /// Calls with up to `step_attempts` tries and jittered exponential backoff.
    async fn call_retrying(&self, step: Step, path: &str, body: &Value) -> Call {
        let mut backoff = self.settings.saga.backoff;
        let tries = self.settings.saga.step_attempts.max(1);
        let mut last = Call::Transient("not tried".into());
        for attempt in 0..tries {
            // Resolved per try: a retry may go to another payment instance.
            let base = self.peer("payment", &self.settings.payment_url).await;
            let url = format!("{}{}", base.trim_end_matches('/'), path);
            last = self.call(&url, body).await;
            match &last {
                Call::Transient(e) => {
                    self.metrics.op(&format!("saga_{}", step.label()), "retry");
                    tracing::debug!(step = step.as_str(), attempt, error = %e, "saga call failed");
                    if attempt + 1 < tries {
                        let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 + 1);
                        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
                _ => break,
            }
        }
        last
    }

    /// Moves the saga out of `from_step`; false when someone else already moved it.
    async fn transition(
        &self,
        s: &Saga,
        from_step: Step,
        t: &Move<'_>,
    ) -> Result<bool, sqlx::Error> {
        let now = crate::now_ms();
        let error = t.error.as_deref().map(|e| crate::db::clip(e, 900));
        let mut tx = self.db.begin_write().await?;
        let new_state = t.state.unwrap_or(s.state);
        let n = sqlx::query(
            "UPDATE sagas SET step = ?, state = ?, from_user = COALESCE(?, from_user), \
             to_user = COALESCE(?, to_user), last_error = COALESCE(?, last_error), attempts = 0, \
             total_attempts = total_attempts + 1, updated_at = ? WHERE id = ? AND step = ?",
        )
        .bind(t.step.as_str())
        .bind(new_state.as_str())
        .bind(t.from_user)
        .bind(t.to_user)
        .bind(&error)
        .bind(now)
        .bind(&s.id)
        .bind(from_step.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO saga_log (saga_id, step, outcome, detail, at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(from_step.as_str())
        .bind(t.note)
        .bind(t.error.as_deref().unwrap_or(""))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(event) = t.event {
            let mut after = s.clone();
            after.state = new_state;
            after.step = t.step;
            if let Some(u) = t.from_user {
                after.from_user = Some(u.to_string());
            }
            if let Some(u) = t.to_user {
                after.to_user = Some(u.to_string());
            }
            after.updated_at = now;
            events::enqueue(&mut tx, event.as_str(), &s.id, &event_payload(&after)).await?;
        }
        tx.commit().await?;
        if t.event.is_some() {
            self.wake_publisher.notify_one();
        }
        if let Some(st) = t.state {
            if st != s.state {
                self.metrics.op("saga", &st.as_str().to_ascii_lowercase());
            }
        }
        Ok(true)
    }

    /// Records a failed run of the current step; the saga stays where it is.
    async fn park(&self, s: &Saga, error: &str, notify: bool) -> Result<(), sqlx::Error> {
        let sql = if notify {
            "UPDATE sagas SET attempts = attempts + 1, total_attempts = total_attempts + 1, \
             notify_attempts = notify_attempts + 1, last_error = ?, updated_at = ? WHERE id = ? AND step = ?"
        } else {
            "UPDATE sagas SET attempts = attempts + 1, total_attempts = total_attempts + 1, \
             last_error = ?, updated_at = ? WHERE id = ? AND step = ?"
        };
        let mut tx = self.db.begin_write().await?;
        sqlx::query(sql)
            .bind(crate::db::clip(error, 900))
            .bind(crate::now_ms())
            .bind(&s.id)
            .bind(s.step.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.metrics.op("saga_parked", &s.step.label());
        Ok(())
    }

    /// Drives one saga until it is done or parked (bounded number of transitions).
    pub async fn run(&self, id: &str) -> Result<(), RunError> {
        let _permit = self.permits.acquire().await;
        for _ in 0..16 {
            let Some(s) = load(&self.db, id).await? else {
                return Ok(());
            };
            if s.step == Step::Done {
                return Ok(());
            }
            let span = crate::trace::child(
                &self.tracer,
                format!("saga {}", s.step.label()),
                vec![
                    KeyValue::new("gatehouse.saga.id", s.id.clone()),
                    KeyValue::new("gatehouse.saga.step", s.step.as_str()),
                ],
            );
            let call = crate::trace::within(span.as_ref(), self.step_call(&s)).await;
            let reply = match &call {
                StepCall::Payment(c) => c.reply(),
                StepCall::Notify(None) => Reply::Delivered,
                StepCall::Notify(Some(e)) => Reply::Undelivered {
                    error: e,
                    last_try: s.notify_attempts + 1 >= self.settings.saga.max_notify_attempts,
                },
            };
            let (outcome, failed) = match &call {
                StepCall::Payment(Call::Answer(_)) | StepCall::Notify(None) => ("answered", false),
                StepCall::Payment(Call::Refused(_)) => ("refused", false),
                StepCall::Payment(Call::Transient(_)) | StepCall::Notify(Some(_)) => {
                    ("failed", true)
                }
            };
            crate::trace::end(span, outcome, failed);
            match machine::next(s.step, reply)? {
                Decision::Move(m) => {
                    let done = m.step == Step::Done;
                    self.transition(&s, s.step, &m).await?;
                    if done {
                        return Ok(());
                    }
                }
                Decision::Park { error } => {
                    self.park(&s, error, s.step == Step::Notify).await?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Runs the current step's call to payment or notification.
    async fn step_call(&self, s: &Saga) -> StepCall {
        let (path, body) = match s.step {
            Step::Debit => (
                "/ops/debit",
                json!({
                    "op_id": debit_op(&s.id),
                    "account_id": s.from_account,
                    "amount": s.amount,
                    "expected_owner": s.initiator,
                }),
            ),
            Step::Credit => (
                "/ops/credit",
                json!({ "op_id": credit_op(&s.id), "account_id": s.to_account, "amount": s.amount }),
            ),
            Step::CompensateVoid => ("/ops/void", json!({ "op_id": credit_op(&s.id) })),
            Step::CompensateRefund => (
                "/ops/refund",
                json!({ "op_id": refund_op(&s.id), "debit_op_id": debit_op(&s.id) }),
            ),
            Step::Notify | Step::Done => return StepCall::Notify(self.notify(s).await.err()),
        };
        StepCall::Payment(self.call_retrying(s.step, path, &body).await)
    }

    /// Sends the saga's notifications; the error names the failure.
    async fn notify(&self, s: &Saga) -> Result<(), String> {
        let event = s.state.outcome_event();
        let notes = crate::notification::notifications_for(event.as_str(), &event_payload(s));
        let base = self
            .peer("notification", &self.settings.notification_url)
            .await;
        let url = format!("{}/internal/notifications", base.trim_end_matches('/'));
        let resp = crate::trace::outgoing(self.http.post(&url))
            .header(INTERNAL_TOKEN_HEADER, &self.settings.internal_token)
            .json(&json!({ "notifications": notes }))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{url}: {}", r.status())),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }
}

/// The result of one step's call.
enum StepCall {
    /// A payment operation's outcome.
    Payment(Call),
    /// The notification call: `None` when delivered, else the failure.
    Notify(Option<String>),
}
