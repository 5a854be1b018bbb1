//! The notification service: consumes events, stores notifications per user, lists them.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::config::Settings;
use crate::db::{Db, Migration, PROCESSED_DDL};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, Event, Handler};
use crate::metrics::Metrics;

/// Service name.
pub const NAME: &str = "notification";
/// Consumer group of the notification service.
pub const CONSUMER: &str = "notification";

/// Schema of the notification database.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: "CREATE TABLE IF NOT EXISTS notifications (
            id {ID},
            dedup_key VARCHAR(190) NOT NULL UNIQUE,
            user_id VARCHAR(64) NOT NULL,
            kind VARCHAR(64) NOT NULL,
            message VARCHAR(1000) NOT NULL,
            payload VARCHAR(4000) NOT NULL,
            created_at BIGINT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS notifications_user ON notifications (user_id, id)",
    },
    Migration {
        version: 2,
        sql: PROCESSED_DDL,
    },
];

/// A notification to store; `dedup_key` makes storing it idempotent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewNotification {
    /// Unique per (event, user, kind): a replay stores nothing new.
    pub dedup_key: String,
    /// Recipient.
    pub user_id: String,
    /// `transfer_sent`, `transfer_received`, `transfer_refunded`, `transfer_failed`, `welcome`.
    pub kind: String,
    /// Human-readable text.
    pub message: String,
    /// The event's data.
    #[serde(default)]
    pub payload: Value,
}

fn s<'a>(p: &'a Value, k: &str) -> Option<&'a str> {
    p.get(k).and_then(Value::as_str).filter(|v| !v.is_empty())
}

/// The notifications an event produces; the saga's notify step sends the same ones,
/// with the same keys, so the direct call and the event never notify twice.
pub fn notifications_for(event_type: &str, p: &Value) -> Vec<NewNotification> {
    let mut out = Vec::new();
    let saga = s(p, "saga_id").unwrap_or("?");
    let amount = p.get("amount").and_then(Value::as_i64).unwrap_or(0);
    let from = s(p, "from_account").unwrap_or("?");
    let to = s(p, "to_account").unwrap_or("?");
    let mut push = |user: Option<&str>, kind: &str, message: String| {
        if let Some(user) = user {
            out.push(NewNotification {
                dedup_key: format!("{saga}:{kind}:{user}"),
                user_id: user.to_string(),
                kind: kind.to_string(),
                message,
                payload: p.clone(),
            });
        }
    };
    let payer = s(p, "from_user").or_else(|| s(p, "initiator"));
    match event_type {
        "TransferCompleted" => {
            push(
                payer,
                "transfer_sent",
                format!("You sent {amount} from {from} to {to}"),
            );
            push(
                s(p, "to_user"),
                "transfer_received",
                format!("You received {amount} on {to} from {from}"),
            );
        }
        "TransferCompensated" => {
            push(
                payer,
                "transfer_refunded",
                format!("Transfer of {amount} to {to} failed; {from} was refunded"),
            );
        }
        "TransferFailed" => {
            push(
                payer,
                "transfer_failed",
                format!("Transfer of {amount} from {from} to {to} failed; nothing was moved"),
            );
        }
        "UserRegistered" => {
            if let Some(user) = s(p, "user_id") {
                out.push(NewNotification {
                    dedup_key: format!("welcome:{user}"),
                    user_id: user.to_string(),
                    kind: "welcome".into(),
                    message: format!("Welcome, {}", s(p, "email").unwrap_or("new user")),
                    payload: json!({ "user_id": user }),
                });
            }
        }
        _ => {}
    }
    out
}

/// Shared state of the notification handlers.
#[derive(Clone, Debug)]
pub struct NotificationState {
    /// The notification database.
    pub db: Db,
    /// Service metrics.
    pub metrics: Metrics,
    /// Process settings.
    pub settings: Arc<Settings>,
}

/// Stores notifications (duplicates by key are ignored); returns how many were new.
pub async fn store(
    db: &Db,
    notes: &[NewNotification],
    event_id: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    if let Some(id) = event_id {
        if !events::mark_processed(&mut tx, db, CONSUMER, id).await? {
            tx.rollback().await?;
            return Ok(0);
        }
    }
    let sql = format!(
        "{} INTO notifications (dedup_key, user_id, kind, message, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        db.insert_ignore()
    );
    let mut new = 0;
    for n in notes {
        new += sqlx::query(&sql)
            .bind(&n.dedup_key)
            .bind(&n.user_id)
            .bind(&n.kind)
            .bind(&n.message)
            .bind(n.payload.to_string())
            .bind(crate::now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(new)
}

/// The event handler of the notification service.
pub fn handler(state: NotificationState) -> Handler {
    Arc::new(move |ev: Event| {
        let state = state.clone();
        Box::pin(async move {
            let notes = notifications_for(&ev.event_type, &ev.payload);
            if notes.is_empty() {
                return Ok(());
            }
            let n = store(&state.db, &notes, Some(&ev.id))
                .await
                .map_err(|e| e.to_string())?;
            state
                .metrics
                .events_consumed
                .with_label_values(&[NAME, CONSUMER])
                .inc();
            tracing::debug!(event = %ev.id, new = n, "notifications stored from event");
            Ok(())
        })
    })
}

/// Body of `POST /internal/notifications`.
#[derive(Debug, Deserialize)]
pub struct NotifyRequest {
    /// Notifications to store.
    pub notifications: Vec<NewNotification>,
}

async fn internal_notify(
    State(s): State<NotificationState>,
    h: HeaderMap,
    Json(req): Json<NotifyRequest>,
) -> ApiResult<Json<Value>> {
    Caller::from_headers(&h, &s.settings.internal_token, None)?.require_internal()?;
    if req.notifications.len() > 100 {
        return Err(ApiError::BadRequest(
            "at most 100 notifications per call".into(),
        ));
    }
    for n in &req.notifications {
        if n.dedup_key.is_empty()
            || n.dedup_key.len() > 190
            || n.user_id.is_empty()
            || n.user_id.len() > 64
        {
            return Err(ApiError::BadRequest(
                "dedup_key (1..=190) and user_id (1..=64) are required".into(),
            ));
        }
        if n.message.chars().count() > 1000 || n.payload.to_string().chars().count() > 4000 {
            return Err(ApiError::BadRequest(
                "message (max 1000) or payload (max 4000 characters) too long".into(),
            ));
        }
    }
    let new = store(&s.db, &req.notifications, None).await?;
    s.metrics.op("notify", "ok");
    Ok(Json(json!({ "stored": new })))
}

/// Query of `GET /notifications`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Admin/internal only: whose notifications.
    pub user_id: Option<String>,
    /// At most this many, newest first (default 50, max 500).
    pub limit: Option<i64>,
}

/// A stored notification.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Notification {
    /// Sequence number.
    pub id: i64,
    /// Recipient.
    pub user_id: String,
    /// Kind.
    pub kind: String,
    /// Text.
    pub message: String,
    /// Unix ms.
    pub created_at: i64,
}

async fn list(
    State(s): State<NotificationState>,
    h: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let caller = Caller::of(&h, &s.settings)?;
    let user = match (&q.user_id, caller.is_admin()) {
        (Some(u), true) => u.clone(),
        _ => caller.user()?.to_string(),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let rows: Vec<Notification> = sqlx::query_as(
        "SELECT id, user_id, kind, message, created_at FROM notifications WHERE user_id = ? ORDER BY id DESC LIMIT ?",
    )
    .bind(&user)
    .bind(limit)
    .fetch_all(&s.db.pool)
    .await?;
    Ok(Json(json!({ "user_id": user, "notifications": rows })))
}

/// The notification routes.
pub fn router(state: NotificationState) -> Router {
    Router::new()
        .route("/notifications", get(list))
        .route("/internal/notifications", post(internal_notify))
        .with_state(state)
}
