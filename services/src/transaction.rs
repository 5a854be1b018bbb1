//! The transaction service: transfer API over the saga coordinator, and the history read model.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::config::Settings;
use crate::db::{is_transient, is_unique_violation, Db, Migration, OUTBOX_DDL, PROCESSED_DDL};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, Event, Handler};
use crate::metrics::Metrics;
use crate::payment::MAX_AMOUNT;
use crate::saga::{self, Coordinator, Saga, SagaState, Step, SAGA_COLUMNS};

/// Service name.
pub const NAME: &str = "transaction";
/// Consumer group of the history projection.
pub const PROJECTION: &str = "transaction-history";

/// Schema of the transaction database: write model (sagas, log, outbox) and read model.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: "CREATE TABLE IF NOT EXISTS sagas (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            idempotency_key VARCHAR(190) NULL UNIQUE,
            initiator VARCHAR(64) NULL,
            from_account VARCHAR(64) NOT NULL,
            to_account VARCHAR(64) NOT NULL,
            amount BIGINT NOT NULL,
            from_user VARCHAR(64) NULL,
            to_user VARCHAR(64) NULL,
            state VARCHAR(16) NOT NULL,
            step VARCHAR(24) NOT NULL,
            attempts BIGINT NOT NULL,
            total_attempts BIGINT NOT NULL,
            notify_attempts BIGINT NOT NULL,
            last_error VARCHAR(1000) NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS sagas_step ON sagas (step, created_at);
        CREATE INDEX IF NOT EXISTS sagas_from_user ON sagas (from_user);
        CREATE INDEX IF NOT EXISTS sagas_to_user ON sagas (to_user);
        CREATE TABLE IF NOT EXISTS saga_log (
            id {ID},
            saga_id VARCHAR(64) NOT NULL,
            step VARCHAR(24) NOT NULL,
            outcome VARCHAR(64) NOT NULL,
            detail VARCHAR(1000) NOT NULL,
            at BIGINT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS saga_log_saga ON saga_log (saga_id, id)",
    },
    Migration {
        version: 2,
        sql: OUTBOX_DDL,
    },
    Migration {
        version: 3,
        sql: PROCESSED_DDL,
    },
    Migration {
        version: 4,
        sql: "CREATE TABLE IF NOT EXISTS history (
            user_id VARCHAR(64) NOT NULL,
            saga_id VARCHAR(64) NOT NULL,
            direction VARCHAR(8) NOT NULL,
            account_id VARCHAR(64) NOT NULL,
            counterparty_account VARCHAR(64) NOT NULL,
            amount BIGINT NOT NULL,
            state VARCHAR(16) NOT NULL,
            position BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, saga_id, direction)
        );
        CREATE TABLE IF NOT EXISTS projection_state (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            position BIGINT NOT NULL
        )",
    },
];

/// Shared state of the transaction handlers.
#[derive(Clone, Debug)]
pub struct TransactionState {
    /// The transaction database.
    pub db: Db,
    /// Service metrics.
    pub metrics: Metrics,
    /// The saga coordinator.
    pub coordinator: Arc<Coordinator>,
    /// Process settings.
    pub settings: Arc<Settings>,
}

/// Body of `POST /transfers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Source account.
    pub from_account: String,
    /// Destination account.
    pub to_account: String,
    /// Positive amount in minor units.
    pub amount: i64,
}

/// Query of `POST /transfers`.
#[derive(Debug, Deserialize)]
pub struct TransferQuery {
    /// How long to wait for the saga to finish before answering 202 (default 5000, max 30000).
    pub wait_ms: Option<u64>,
}

/// A transfer as the API shows it.
#[derive(Debug, Serialize)]
pub struct TransferView {
    /// Saga id.
    pub id: String,
    /// PENDING, COMPLETED, COMPENSATED, FAILED.
    pub status: SagaState,
    /// The step still to do.
    pub step: Step,
    /// Source account.
    pub from_account: String,
    /// Destination account.
    pub to_account: String,
    /// Amount.
    pub amount: i64,
    /// Tries of all steps.
    pub attempts: i64,
    /// Last failure seen.
    pub last_error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

impl From<Saga> for TransferView {
    fn from(s: Saga) -> Self {
        TransferView {
            id: s.id,
            status: s.state,
            step: s.step,
            from_account: s.from_account,
            to_account: s.to_account,
            amount: s.amount,
            attempts: s.total_attempts,
            last_error: s.last_error,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

fn check_id(what: &str, v: &str) -> ApiResult<()> {
    if v.is_empty() || v.len() > 64 {
        return Err(ApiError::BadRequest(format!(
            "{what} must be 1..=64 characters"
        )));
    }
    Ok(())
}

impl TransactionState {
    fn caller(&self, h: &HeaderMap) -> ApiResult<Caller> {
        Caller::of(h, &self.settings)
    }
}

/// Finds or creates the saga of a request; true when it was created now.
async fn find_or_create(
    s: &TransactionState,
    key: Option<&str>,
    initiator: Option<&str>,
    req: &TransferRequest,
) -> Result<(Saga, bool), ApiError> {
    let mut last: Option<sqlx::Error> = None;
    for attempt in 0..5u32 {
        if let Some(key) = key {
            let found: Option<Saga> = sqlx::query_as(&format!(
                "SELECT {SAGA_COLUMNS} FROM sagas WHERE idempotency_key = ?"
            ))
            .bind(key)
            .fetch_optional(&s.db.pool)
            .await?;
            if let Some(found) = found {
                if found.from_account != req.from_account
                    || found.to_account != req.to_account
                    || found.amount != req.amount
                    || found.initiator.as_deref() != initiator
                {
                    return Err(ApiError::Unprocessable(
                        "Idempotency-Key was already used for a different transfer".into(),
                    ));
                }
                return Ok((found, false));
            }
        }
        let id = format!("sg_{}", crate::random_id());
        let now = crate::now_ms();
        let r = async {
            let mut tx = s.db.begin_write().await?;
            sqlx::query(
                "INSERT INTO sagas (id, idempotency_key, initiator, from_account, to_account, amount, \
                 state, step, attempts, total_attempts, notify_attempts, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, ?, ?)",
            )
            .bind(&id)
            .bind(key)
            .bind(initiator)
            .bind(&req.from_account)
            .bind(&req.to_account)
            .bind(req.amount)
            .bind(SagaState::Pending.as_str())
            .bind(Step::Debit.as_str())
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO saga_log (saga_id, step, outcome, detail, at) VALUES (?, ?, ?, ?, ?)")
                .bind(&id)
                .bind(Step::Debit.as_str())
                .bind("created")
                .bind("")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        match r {
            Ok(()) => {
                let saga = saga::load(&s.db, &id)
                    .await?
                    .ok_or_else(|| ApiError::Internal("saga vanished after insert".into()))?;
                return Ok((saga, true));
            }
            // Same key raced us: the next round finds the winner.
            Err(e) if is_unique_violation(&e) || is_transient(&e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(ApiError::from)
        .unwrap_or_else(|| ApiError::Unavailable("retries exhausted".into())))
}

async fn create_transfer(
    State(s): State<TransactionState>,
    h: HeaderMap,
    Query(q): Query<TransferQuery>,
    Json(req): Json<TransferRequest>,
) -> ApiResult<Response> {
    let caller = s.caller(&h)?;
    if caller.user_id.is_none() && !caller.internal {
        return Err(ApiError::Unauthorized("no authenticated user".into()));
    }
    check_id("from_account", &req.from_account)?;
    check_id("to_account", &req.to_account)?;
    if req.from_account == req.to_account {
        return Err(ApiError::BadRequest(
            "from_account and to_account must differ".into(),
        ));
    }
    if req.amount <= 0 || req.amount > MAX_AMOUNT {
        return Err(ApiError::BadRequest(format!(
            "amount must be within 1..={MAX_AMOUNT}"
        )));
    }
    let key = h
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| ApiError::BadRequest("Idempotency-Key is not ASCII".into()))
        })
        .transpose()?;
    if let Some(k) = key {
        if k.is_empty() || k.len() > 120 {
            return Err(ApiError::BadRequest(
                "Idempotency-Key must be 1..=120 characters".into(),
            ));
        }
    }
    // Keys are scoped to the caller: two users choosing the same key do not collide.
    let scoped = key.map(|k| format!("{}|{k}", caller.user_id.as_deref().unwrap_or("-")));
    let (saga, created) =
        find_or_create(&s, scoped.as_deref(), caller.user_id.as_deref(), &req).await?;
    s.metrics.op(
        "transfer_request",
        if created { "created" } else { "replayed" },
    );
    let mut saga = saga;
    if saga.step != Step::Done {
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(5000).min(30_000));
        if let Some(handle) = s.coordinator.spawn_run(&saga.id) {
            let _ = tokio::time::timeout(wait, handle).await;
        }
        if let Some(now) = saga::load(&s.db, &saga.id).await? {
            saga = now;
        }
    }
    let status = if !created {
        StatusCode::OK
    } else if saga.state == SagaState::Pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(TransferView::from(saga))).into_response())
}

fn may_see(caller: &Caller, s: &Saga) -> bool {
    caller.is_admin()
        || caller.user_id.as_deref().is_some_and(|u| {
            [&s.initiator, &s.from_user, &s.to_user]
                .iter()
                .any(|x| x.as_deref() == Some(u))
        })
}

async fn get_transfer(
    State(s): State<TransactionState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<TransferView>> {
    let caller = s.caller(&h)?;
    let saga = saga::load(&s.db, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("transfer {id} not found")))?;
    if !may_see(&caller, &saga) {
        if caller.user_id.is_none() {
            return Err(ApiError::Unauthorized("no authenticated user".into()));
        }
        return Err(ApiError::NotFound(format!("transfer {id} not found")));
    }
    Ok(Json(saga.into()))
}

/// Query of `GET /transfers`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Only this state.
    pub state: Option<String>,
    /// At most this many, newest first (default 100, max 10000).
    pub limit: Option<i64>,
}

async fn list_transfers(
    State(s): State<TransactionState>,
    h: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    s.caller(&h)?.require_admin()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows: Vec<Saga> = match &q.state {
        Some(st) => {
            sqlx::query_as(&format!(
                "SELECT {SAGA_COLUMNS} FROM sagas WHERE state = ? ORDER BY created_at DESC LIMIT ?"
            ))
            .bind(st)
            .bind(limit)
            .fetch_all(&s.db.pool)
            .await?
        }
        None => {
            sqlx::query_as(&format!(
                "SELECT {SAGA_COLUMNS} FROM sagas ORDER BY created_at DESC LIMIT ?"
            ))
            .bind(limit)
            .fetch_all(&s.db.pool)
            .await?
        }
    };
    let items: Vec<TransferView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(json!({ "transfers": items })))
}

async fn saga_stats(State(s): State<TransactionState>, h: HeaderMap) -> ApiResult<Json<Value>> {
    s.caller(&h)?.require_admin()?;
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT state, step, COUNT(*) FROM sagas GROUP BY state, step")
            .fetch_all(&s.db.pool)
            .await?;
    let mut by_state = serde_json::Map::new();
    let mut by_step = serde_json::Map::new();
    let mut unfinished = 0;
    for (st, sp, n) in rows {
        let e = by_state.entry(st).or_insert(json!(0));
        *e = json!(e.as_i64().unwrap_or(0) + n);
        let e = by_step.entry(sp.clone()).or_insert(json!(0));
        *e = json!(e.as_i64().unwrap_or(0) + n);
        if sp != Step::Done.as_str() {
            unfinished += n;
        }
    }
    let (attempts,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(total_attempts), 0) FROM sagas")
        .fetch_one(&s.db.pool)
        .await?;
    // How the sagas got where they are: one count per saga-log outcome
    // (debited, credit_failed, credit_found_applied, refunded, ...).
    let outcomes: Vec<(String, i64)> =
        sqlx::query_as("SELECT outcome, COUNT(*) FROM saga_log GROUP BY outcome")
            .fetch_all(&s.db.pool)
            .await?;
    let by_outcome: serde_json::Map<String, Value> =
        outcomes.into_iter().map(|(o, n)| (o, json!(n))).collect();
    Ok(Json(json!({
        "by_state": by_state,
        "by_step": by_step,
        "by_log_outcome": by_outcome,
        "unfinished": unfinished,
        "max_attempts": attempts,
    })))
}

/// One entry of a user's history.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct HistoryItem {
    /// Saga id.
    pub saga_id: String,
    /// `out` (sent) or `in` (received).
    pub direction: String,
    /// The user's account.
    pub account_id: String,
    /// The other account.
    pub counterparty_account: String,
    /// Amount.
    pub amount: i64,
    /// Transfer state.
    pub state: String,
    /// Unix ms.
    pub updated_at: i64,
}

/// Query of `GET /history`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// Admin/internal only: whose history.
    pub user_id: Option<String>,
    /// At most this many, newest first (default 50, max 1000).
    pub limit: Option<i64>,
    /// `read` forces the read model, `write` the write model (for tests and debugging).
    pub source: Option<String>,
}

async fn projection_position(db: &Db) -> Result<i64, sqlx::Error> {
    let r: Option<(i64,)> = sqlx::query_as("SELECT position FROM projection_state WHERE name = ?")
        .bind(PROJECTION)
        .fetch_optional(&db.pool)
        .await?;
    Ok(r.map(|r| r.0).unwrap_or(0))
}

async fn history(
    State(s): State<TransactionState>,
    h: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Value>> {
    let caller = s.caller(&h)?;
    let user = match (&q.user_id, caller.is_admin()) {
        (Some(u), true) => u.clone(),
        _ => caller.user()?.to_string(),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let applied = projection_position(&s.db).await?;
    let (head,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM outbox")
        .fetch_one(&s.db.pool)
        .await?;
    let use_read = match q.source.as_deref() {
        Some("read") => true,
        Some("write") => false,
        _ => applied >= head,
    };
    let items: Vec<HistoryItem> = if use_read {
        sqlx::query_as(
            "SELECT saga_id, direction, account_id, counterparty_account, amount, state, updated_at \
             FROM history WHERE user_id = ? ORDER BY updated_at DESC, saga_id LIMIT ?",
        )
        .bind(&user)
        .bind(limit)
        .fetch_all(&s.db.pool)
        .await?
    } else {
        // The authoritative write model, shaped like the read model.
        sqlx::query_as(
            "SELECT id AS saga_id, 'out' AS direction, from_account AS account_id, to_account AS counterparty_account, \
             amount, state, updated_at FROM sagas WHERE from_user = ? \
             UNION ALL \
             SELECT id AS saga_id, 'in' AS direction, to_account AS account_id, from_account AS counterparty_account, \
             amount, state, updated_at FROM sagas WHERE to_user = ? AND state = 'COMPLETED' \
             ORDER BY updated_at DESC, saga_id LIMIT ?",
        )
        .bind(&user)
        .bind(&user)
        .bind(limit)
        .fetch_all(&s.db.pool)
        .await?
    };
    let source = if use_read {
        "read_model"
    } else {
        "write_model"
    };
    s.metrics.op("history_query", source);
    Ok(Json(json!({
        "user_id": user,
        "source": source,
        "read_model_position": applied,
        "write_model_position": head,
        "items": items,
    })))
}

/// Applies one transaction event to the history read model (idempotent, order-safe).
pub async fn project(db: &Db, ev: &Event) -> Result<bool, sqlx::Error> {
    let p = &ev.payload;
    let get = |k: &str| {
        p.get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let mut tx = db.begin_write().await?;
    if !events::mark_processed(&mut tx, db, PROJECTION, &ev.id).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    let (Some(saga), Some(from_acc), Some(to_acc), Some(st)) = (
        get("saga_id"),
        get("from_account"),
        get("to_account"),
        get("state"),
    ) else {
        tx.commit().await?;
        return Ok(true);
    };
    let amount = p.get("amount").and_then(Value::as_i64).unwrap_or(0);
    let updated = p
        .get("updated_at")
        .and_then(Value::as_i64)
        .unwrap_or(ev.created_at);
    let mut rows = Vec::new();
    if let Some(u) = get("from_user") {
        rows.push((u, "out", from_acc.clone(), to_acc.clone()));
    }
    if let (Some(u), true) = (get("to_user"), st == SagaState::Completed.as_str()) {
        rows.push((u, "in", to_acc, from_acc));
    }
    for (user, dir, acc, other) in rows {
        let stored: Option<(i64,)> = sqlx::query_as(
            "SELECT position FROM history WHERE user_id = ? AND saga_id = ? AND direction = ?",
        )
        .bind(&user)
        .bind(&saga)
        .bind(dir)
        .fetch_optional(&mut *tx)
        .await?;
        if stored.is_some_and(|(pos,)| pos > ev.position) {
            continue; // a newer event already wrote this row
        }
        sqlx::query("DELETE FROM history WHERE user_id = ? AND saga_id = ? AND direction = ?")
            .bind(&user)
            .bind(&saga)
            .bind(dir)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO history (user_id, saga_id, direction, account_id, counterparty_account, amount, state, position, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&user)
        .bind(&saga)
        .bind(dir)
        .bind(&acc)
        .bind(&other)
        .bind(amount)
        .bind(&st)
        .bind(ev.position)
        .bind(updated)
        .execute(&mut *tx)
        .await?;
    }
    let n = sqlx::query("UPDATE projection_state SET position = ? WHERE name = ? AND position < ?")
        .bind(ev.position)
        .bind(PROJECTION)
        .bind(ev.position)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        let sql = format!(
            "{} INTO projection_state (name, position) VALUES (?, ?)",
            db.insert_ignore()
        );
        sqlx::query(&sql)
            .bind(PROJECTION)
            .bind(ev.position)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The projection's event handler (only this service's own transfer events).
pub fn projection_handler(db: Db, metrics: Metrics) -> Handler {
    Arc::new(move |ev: Event| {
        let db = db.clone();
        let metrics = metrics.clone();
        Box::pin(async move {
            if ev.source != NAME {
                return Ok(());
            }
            if project(&db, &ev).await.map_err(|e| e.to_string())? {
                metrics
                    .events_consumed
                    .with_label_values(&[NAME, PROJECTION])
                    .inc();
            }
            Ok(())
        })
    })
}

/// The transaction routes.
pub fn router(state: TransactionState) -> Router {
    Router::new()
        .route("/transfers", post(create_transfer).get(list_transfers))
        .route("/transfers/{id}", get(get_transfer))
        .route("/history", get(history))
        .route("/admin/sagas/stats", get(saga_stats))
        .with_state(state)
}
