//! The payment service: accounts and idempotent debit / credit / void / refund operations.
//!
//! Every money movement is one row in `operations` keyed by the caller's operation id,
//! written in the same transaction as the balance change: the unique key is the point
//! where concurrent or retried requests with one id are decided, so each id moves money
//! at most once. A `void` writes a tombstone under an id that was never applied, so a late
//! or retried request with that id can no longer apply: the saga uses it before it refunds.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::AnyConnection;

use crate::auth::Caller;
use crate::config::Settings;
use crate::db::{is_transient, is_unique_violation, Db, Migration};
use crate::error::{ApiError, ApiResult};
use crate::faults::{Fault, FaultConfig, FaultInjector};
use crate::metrics::Metrics;
use crate::text_enum::{text_enum, UnknownVariant};

/// Service name.
pub const NAME: &str = "payment";

/// Schema of the payment database.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: "CREATE TABLE IF NOT EXISTS accounts (
        id VARCHAR(64) NOT NULL PRIMARY KEY,
        owner_id VARCHAR(64) NOT NULL,
        balance BIGINT NOT NULL CHECK (balance >= 0),
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS accounts_owner ON accounts (owner_id);
    CREATE TABLE IF NOT EXISTS operations (
        op_id VARCHAR(190) NOT NULL PRIMARY KEY,
        kind VARCHAR(16) NOT NULL,
        account_id VARCHAR(64) NULL,
        amount BIGINT NOT NULL,
        status VARCHAR(16) NOT NULL,
        reason VARCHAR(64) NULL,
        ref_op_id VARCHAR(190) NULL,
        created_at BIGINT NOT NULL
    )",
}];

/// Largest amount of one operation (keeps every sum far from i64 overflow).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// Shared state of the payment handlers.
#[derive(Clone, Debug)]
pub struct PaymentState {
    /// The payment database.
    pub db: Db,
    /// Service metrics.
    pub metrics: Metrics,
    /// Fault injection (active only in test/demo mode).
    pub faults: Arc<FaultInjector>,
    /// Process settings.
    pub settings: Arc<Settings>,
}

/// An account as returned by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// Account id (`acc_...`).
    pub id: String,
    /// The owning user id.
    pub owner_id: String,
    /// Balance in minor units.
    pub balance: i64,
    /// Unix ms.
    pub created_at: i64,
}

/// Body of `POST /ops/debit` and `POST /ops/credit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The caller's operation id: a retry with the same id applies at most once.
    pub op_id: String,
    /// Account to debit or credit.
    pub account_id: String,
    /// Positive amount in minor units.
    pub amount: i64,
    /// Debit only: refuse unless the account belongs to this user.
    #[serde(default)]
    pub expected_owner: Option<String>,
}

/// Body of `POST /ops/void`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    /// The operation id to void if it was never applied.
    pub op_id: String,
}

/// Body of `POST /ops/refund`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// The refund's own operation id.
    pub op_id: String,
    /// The debit to give back (voided instead if it was never applied).
    pub debit_op_id: String,
}

text_enum! {
    /// The payment service's answer to one operation; final for that operation id.
    OpStatus, "operation status" {
        /// Money moved.
        Applied = "APPLIED",
        /// Refused (unknown account, not the owner, insufficient funds).
        Rejected = "REJECTED",
        /// The operation id is voided: it never moved money and never will.
        Voided = "VOIDED",
        /// A debit given back by a refund.
        Refunded = "REFUNDED",
        /// A refund that had nothing to give back.
        Noop = "NOOP",
    }
}

/// The answer to every operation; `status` is final for that op id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpResult {
    /// The operation id.
    pub op_id: String,
    /// `debit`, `credit`, `refund` or `void`.
    pub kind: String,
    /// `APPLIED`, `REJECTED`, `VOIDED`, `REFUNDED` (a debit given back) or `NOOP` (refund).
    pub status: OpStatus,
    /// Why it was rejected or a no-op.
    pub reason: Option<String>,
    /// The account concerned.
    pub account_id: Option<String>,
    /// Its owner, when known.
    pub owner_id: Option<String>,
    /// The amount moved (0 for voids and no-ops).
    pub amount: i64,
    /// True when this answer replays an earlier request with the same id.
    pub replayed: bool,
}

/// A stored operation: kind, account, amount, status, reason.
type OpRow = (String, Option<String>, i64, OpStatus, Option<String>);

/// An operation as stored, before its status text is parsed.
type StoredOpRow = (String, Option<String>, i64, String, Option<String>);

/// Loads an operation; a status text this code does not know fails the load.
async fn load_op(conn: &mut AnyConnection, op_id: &str) -> Result<Option<OpRow>, sqlx::Error> {
    let row: Option<StoredOpRow> = sqlx::query_as(
        "SELECT kind, account_id, amount, status, reason FROM operations WHERE op_id = ?",
    )
    .bind(op_id)
    .fetch_optional(conn)
    .await?;
    row.map(|(kind, account, amount, status, reason)| {
        let status = status
            .parse()
            .map_err(|e: UnknownVariant| sqlx::Error::Decode(Box::new(e)))?;
        Ok((kind, account, amount, status, reason))
    })
    .transpose()
}

async fn owner_of(conn: &mut AnyConnection, account: &str) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as("SELECT owner_id FROM accounts WHERE id = ?")
        .bind(account)
        .fetch_optional(conn)
        .await?;
    Ok(r.map(|r| r.0))
}

#[allow(clippy::too_many_arguments)]
async fn insert_op(
    conn: &mut AnyConnection,
    op_id: &str,
    kind: &str,
    account: Option<&str>,
    amount: i64,
    status: OpStatus,
    reason: Option<&str>,
    ref_op: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO operations (op_id, kind, account_id, amount, status, reason, ref_op_id, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(op_id)
    .bind(kind)
    .bind(account)
    .bind(amount)
    .bind(status.as_str())
    .bind(reason)
    .bind(ref_op)
    .bind(crate::now_ms())
    .execute(conn)
    .await
    .map(|_| ())
}

fn replay(op_id: &str, requested_kind: &str, row: OpRow, owner: Option<String>) -> OpResult {
    let (kind, account_id, amount, status, reason) = row;
    // A tombstone answers any later request under its id: the operation was voided.
    let kind = if kind == "void" {
        requested_kind.to_string()
    } else {
        kind
    };
    OpResult {
        op_id: op_id.to_string(),
        kind,
        status,
        reason,
        account_id,
        owner_id: owner,
        amount,
        replayed: true,
    }
}

/// Debit (`credit == false`) or credit one account, once per op id.
async fn try_move(db: &Db, kind: &str, req: &MoveRequest) -> Result<OpResult, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    if let Some(row) = load_op(&mut tx, &req.op_id).await? {
        let owner = match &row.1 {
            Some(a) => owner_of(&mut tx, a).await?,
            None => None,
        };
        tx.rollback().await?;
        let r = replay(&req.op_id, kind, row, owner);
        return Ok(r);
    }
    let acct: Option<(String, i64)> =
        sqlx::query_as("SELECT owner_id, balance FROM accounts WHERE id = ?")
            .bind(&req.account_id)
            .fetch_optional(&mut *tx)
            .await?;
    let now = crate::now_ms();
    let (status, reason, owner) = match acct {
        None => (OpStatus::Rejected, Some("unknown_account"), None),
        Some((owner, _))
            if kind == "debit" && req.expected_owner.as_deref().is_some_and(|o| o != owner) =>
        {
            (OpStatus::Rejected, Some("not_owner"), Some(owner))
        }
        Some((owner, _)) if kind == "debit" => {
            let n = sqlx::query(
                "UPDATE accounts SET balance = balance - ?, updated_at = ? WHERE id = ? AND balance >= ?",
            )
            .bind(req.amount)
            .bind(now)
            .bind(&req.account_id)
            .bind(req.amount)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                (OpStatus::Applied, None, Some(owner))
            } else {
                (OpStatus::Rejected, Some("insufficient_funds"), Some(owner))
            }
        }
        Some((owner, _)) => {
            sqlx::query("UPDATE accounts SET balance = balance + ?, updated_at = ? WHERE id = ?")
                .bind(req.amount)
                .bind(now)
                .bind(&req.account_id)
                .execute(&mut *tx)
                .await?;
            (OpStatus::Applied, None, Some(owner))
        }
    };
    let amount = if status == OpStatus::Applied {
        req.amount
    } else {
        0
    };
    insert_op(
        &mut tx,
        &req.op_id,
        kind,
        Some(&req.account_id),
        amount,
        status,
        reason,
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(OpResult {
        op_id: req.op_id.clone(),
        kind: kind.to_string(),
        status,
        reason: reason.map(str::to_string),
        account_id: Some(req.account_id.clone()),
        owner_id: owner,
        amount,
        replayed: false,
    })
}

async fn try_void(db: &Db, op_id: &str) -> Result<OpResult, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    if let Some(row) = load_op(&mut tx, op_id).await? {
        tx.rollback().await?;
        return Ok(replay(op_id, "void", row, None));
    }
    insert_op(
        &mut tx,
        op_id,
        "void",
        None,
        0,
        OpStatus::Voided,
        Some("voided"),
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(OpResult {
        op_id: op_id.to_string(),
        kind: "void".into(),
        status: OpStatus::Voided,
        reason: Some("voided".into()),
        account_id: None,
        owner_id: None,
        amount: 0,
        replayed: false,
    })
}

async fn try_refund(db: &Db, req: &RefundRequest) -> Result<OpResult, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    if let Some(row) = load_op(&mut tx, &req.op_id).await? {
        tx.rollback().await?;
        return Ok(replay(&req.op_id, "refund", row, None));
    }
    let debit = load_op(&mut tx, &req.debit_op_id).await?;
    let now = crate::now_ms();
    let (status, reason, account, amount) = match debit {
        None => {
            // Never applied: void it, so that a late debit with this id cannot apply.
            insert_op(
                &mut tx,
                &req.debit_op_id,
                "void",
                None,
                0,
                OpStatus::Voided,
                Some("voided_by_refund"),
                None,
            )
            .await?;
            (OpStatus::Noop, Some("debit_not_applied"), None, 0)
        }
        Some((kind, Some(account), amount, status, _))
            if kind == "debit" && status == OpStatus::Applied =>
        {
            let n = sqlx::query(
                "UPDATE operations SET status = 'REFUNDED' WHERE op_id = ? AND status = 'APPLIED'",
            )
            .bind(&req.debit_op_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query(
                    "UPDATE accounts SET balance = balance + ?, updated_at = ? WHERE id = ?",
                )
                .bind(amount)
                .bind(now)
                .bind(&account)
                .execute(&mut *tx)
                .await?;
                (OpStatus::Applied, None, Some(account), amount)
            } else {
                (OpStatus::Noop, Some("already_refunded"), Some(account), 0)
            }
        }
        Some((_, account, _, OpStatus::Refunded, _)) => {
            (OpStatus::Noop, Some("already_refunded"), account, 0)
        }
        Some((_, account, _, _, _)) => (OpStatus::Noop, Some("debit_not_applied"), account, 0),
    };
    insert_op(
        &mut tx,
        &req.op_id,
        "refund",
        account.as_deref(),
        amount,
        status,
        reason,
        Some(&req.debit_op_id),
    )
    .await?;
    tx.commit().await?;
    Ok(OpResult {
        op_id: req.op_id.clone(),
        kind: "refund".into(),
        status,
        reason: reason.map(str::to_string),
        account_id: account,
        owner_id: None,
        amount,
        replayed: false,
    })
}

/// Runs a write up to 5 times while it fails transiently or loses a unique-key race
/// (the loser's transaction rolled back; the retry reads the winner's row).
async fn retrying<F, Fut>(mut f: F) -> ApiResult<OpResult>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<OpResult, sqlx::Error>>,
{
    let mut last = None;
    for attempt in 0..5u32 {
        match f().await {
            Ok(r) => return Ok(r),
            Err(e) if is_transient(&e) || is_unique_violation(&e) => {
                tracing::debug!(error = %e, attempt, "payment write retried");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(10 * (1 << attempt))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(ApiError::from)
        .unwrap_or_else(|| ApiError::Unavailable("retries exhausted".into())))
}

fn check_op_id(id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > 180 {
        return Err(ApiError::BadRequest(
            "op_id must be 1..=180 characters".into(),
        ));
    }
    Ok(())
}

fn check_amount(amount: i64) -> ApiResult<()> {
    if amount <= 0 || amount > MAX_AMOUNT {
        return Err(ApiError::BadRequest(format!(
            "amount must be within 1..={MAX_AMOUNT}"
        )));
    }
    Ok(())
}

impl PaymentState {
    fn caller(&self, h: &HeaderMap) -> ApiResult<Caller> {
        Caller::of(h, &self.settings)
    }
}

async fn do_move(
    s: PaymentState,
    h: HeaderMap,
    kind: &'static str,
    req: MoveRequest,
) -> ApiResult<Response> {
    s.caller(&h)?.require_internal()?;
    check_op_id(&req.op_id)?;
    check_amount(req.amount)?;
    let fault = if s.settings.mode.testing() {
        s.faults.draw()
    } else {
        Fault::None
    };
    if fault != Fault::None {
        s.metrics.op(&format!("fault_{kind}"), fault.label());
    }
    match fault {
        Fault::Fail => return Err(ApiError::Unavailable("injected fault: fail".into())),
        Fault::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    let r = retrying(|| try_move(&s.db, kind, &req)).await?;
    s.metrics.op(kind, &r.status.as_str().to_ascii_lowercase());
    if fault == Fault::Drop {
        return Err(ApiError::Unavailable(
            "injected fault: answer dropped".into(),
        ));
    }
    Ok(Json(r).into_response())
}

async fn debit(
    State(s): State<PaymentState>,
    h: HeaderMap,
    Json(req): Json<MoveRequest>,
) -> ApiResult<Response> {
    do_move(s, h, "debit", req).await
}

async fn credit(
    State(s): State<PaymentState>,
    h: HeaderMap,
    Json(req): Json<MoveRequest>,
) -> ApiResult<Response> {
    do_move(s, h, "credit", req).await
}

async fn void(
    State(s): State<PaymentState>,
    h: HeaderMap,
    Json(req): Json<VoidRequest>,
) -> ApiResult<Json<OpResult>> {
    s.caller(&h)?.require_internal()?;
    check_op_id(&req.op_id)?;
    let r = retrying(|| try_void(&s.db, &req.op_id)).await?;
    s.metrics
        .op("void", &r.status.as_str().to_ascii_lowercase());
    Ok(Json(r))
}

async fn refund(
    State(s): State<PaymentState>,
    h: HeaderMap,
    Json(req): Json<RefundRequest>,
) -> ApiResult<Json<OpResult>> {
    s.caller(&h)?.require_internal()?;
    check_op_id(&req.op_id)?;
    check_op_id(&req.debit_op_id)?;
    let r = retrying(|| try_refund(&s.db, &req)).await?;
    s.metrics
        .op("refund", &r.status.as_str().to_ascii_lowercase());
    Ok(Json(r))
}

/// Body of `POST /accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Owner; only admins and internal callers may name someone else.
    #[serde(default)]
    pub owner_id: Option<String>,
    /// Opening balance: test/demo mode, admins and internal callers only.
    #[serde(default)]
    pub initial_balance: i64,
}

async fn create_account(
    State(s): State<PaymentState>,
    h: HeaderMap,
    Json(req): Json<CreateAccount>,
) -> ApiResult<Response> {
    let caller = s.caller(&h)?;
    let owner = match (&req.owner_id, &caller.user_id) {
        (Some(o), _) if caller.is_admin() => o.clone(),
        (_, Some(u)) => u.clone(),
        (Some(o), None) if caller.internal => o.clone(),
        _ => return Err(ApiError::Unauthorized("no authenticated user".into())),
    };
    if owner.is_empty() || owner.len() > 64 {
        return Err(ApiError::BadRequest(
            "owner_id must be 1..=64 characters".into(),
        ));
    }
    if req.initial_balance < 0 || req.initial_balance > MAX_AMOUNT {
        return Err(ApiError::BadRequest("initial_balance out of range".into()));
    }
    if req.initial_balance > 0 && !(s.settings.mode.testing() || caller.is_admin()) {
        return Err(ApiError::Forbidden(
            "an opening balance needs test/demo mode or an admin".into(),
        ));
    }
    let id = format!("acc_{}", crate::random_id());
    let now = crate::now_ms();
    sqlx::query("INSERT INTO accounts (id, owner_id, balance, created_at, updated_at) VALUES (?, ?, ?, ?, ?)")
        .bind(&id)
        .bind(&owner)
        .bind(req.initial_balance)
        .bind(now)
        .bind(now)
        .execute(&s.db.pool)
        .await?;
    s.metrics.op("create_account", "ok");
    let a = Account {
        id,
        owner_id: owner,
        balance: req.initial_balance,
        created_at: now,
    };
    Ok((StatusCode::CREATED, Json(a)).into_response())
}

type AccountRow = (String, String, i64, i64);

fn account(r: AccountRow) -> Account {
    Account {
        id: r.0,
        owner_id: r.1,
        balance: r.2,
        created_at: r.3,
    }
}

async fn list_accounts(
    State(s): State<PaymentState>,
    h: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let caller = s.caller(&h)?;
    let rows: Vec<AccountRow> = if caller.is_admin() {
        sqlx::query_as("SELECT id, owner_id, balance, created_at FROM accounts ORDER BY id")
            .fetch_all(&s.db.pool)
            .await?
    } else {
        let user = caller.user()?;
        sqlx::query_as(
            "SELECT id, owner_id, balance, created_at FROM accounts WHERE owner_id = ? ORDER BY id",
        )
        .bind(user)
        .fetch_all(&s.db.pool)
        .await?
    };
    let total: i64 = rows.iter().map(|r| r.2).sum();
    let accounts: Vec<Account> = rows.into_iter().map(account).collect();
    Ok(Json(json!({ "accounts": accounts, "total": total })))
}

async fn get_account(
    State(s): State<PaymentState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Account>> {
    let caller = s.caller(&h)?;
    let row: Option<AccountRow> =
        sqlx::query_as("SELECT id, owner_id, balance, created_at FROM accounts WHERE id = ?")
            .bind(&id)
            .fetch_optional(&s.db.pool)
            .await?;
    let a = row
        .map(account)
        .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))?;
    if !caller.is_admin() && caller.user()? != a.owner_id {
        // Not yours: indistinguishable from missing.
        return Err(ApiError::NotFound(format!("account {id} not found")));
    }
    Ok(Json(a))
}

fn require_fault_admin(s: &PaymentState, h: &HeaderMap) -> ApiResult<()> {
    if !s.settings.mode.testing() {
        return Err(ApiError::NotFound(
            "fault injection is only available in test/demo mode".into(),
        ));
    }
    s.caller(h)?.require_admin()
}

async fn get_faults(
    State(s): State<PaymentState>,
    h: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    require_fault_admin(&s, &h)?;
    Ok(Json(
        json!({ "config": s.faults.config(), "injected": s.faults.counts() }),
    ))
}

async fn put_faults(
    State(s): State<PaymentState>,
    h: HeaderMap,
    Json(c): Json<FaultConfig>,
) -> ApiResult<Json<serde_json::Value>> {
    require_fault_admin(&s, &h)?;
    c.validate().map_err(ApiError::BadRequest)?;
    s.faults.set(c);
    tracing::info!(?c, "fault injection changed");
    Ok(Json(
        json!({ "config": s.faults.config(), "injected": s.faults.counts() }),
    ))
}

/// The payment routes (without `/health` and `/metrics`).
pub fn router(state: PaymentState) -> Router {
    Router::new()
        .route("/accounts", post(create_account).get(list_accounts))
        .route("/accounts/{id}", get(get_account))
        .route("/ops/debit", post(debit))
        .route("/ops/credit", post(credit))
        .route("/ops/void", post(void))
        .route("/ops/refund", post(refund))
        .route("/admin/faults", get(get_faults).put(put_faults))
        .with_state(state)
}
