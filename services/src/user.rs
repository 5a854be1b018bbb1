//! The user service: registration, login (issues the JWT), profiles, an admin listing.

use std::sync::Arc;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::auth::{issue_token, Caller, ADMIN};
use crate::config::Settings;
use crate::db::{is_unique_violation, Db, Migration, OUTBOX_DDL};
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::metrics::Metrics;

/// Service name.
pub const NAME: &str = "user";
/// Token lifetime: 24 h.
pub const TOKEN_TTL_SECS: u64 = 24 * 3600;

/// Schema of the user database.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: "CREATE TABLE IF NOT EXISTS users (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            email VARCHAR(190) NOT NULL UNIQUE,
            password_hash VARCHAR(255) NOT NULL,
            role VARCHAR(16) NOT NULL,
            display_name VARCHAR(190) NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
    },
    Migration {
        version: 2,
        sql: OUTBOX_DDL,
    },
];

/// Shared state of the user handlers.
#[derive(Clone, Debug)]
pub struct UserState {
    /// The user database.
    pub db: Db,
    /// Service metrics.
    pub metrics: Metrics,
    /// Process settings (the JWT secret).
    pub settings: Arc<Settings>,
    /// Wakes the outbox publisher.
    pub wake: Arc<Notify>,
}

/// Body of `POST /register`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Login name.
    pub email: String,
    /// At least 8 characters; never logged.
    pub password: String,
    /// `USER` (default) or `ADMIN` (test/demo mode, or an admin caller).
    #[serde(default)]
    pub role: Option<String>,
    /// Optional display name.
    #[serde(default)]
    pub display_name: Option<String>,
}

impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Body of `POST /login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Login name.
    pub email: String,
    /// Never logged.
    pub password: String,
}

/// A user as the API shows it (never the hash).
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct UserView {
    /// `usr_...`.
    pub id: String,
    /// Email.
    pub email: String,
    /// USER or ADMIN.
    pub role: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Unix ms.
    pub created_at: i64,
}

fn valid_email(e: &str) -> bool {
    let e = e.trim();
    e.len() <= 190
        && e.split_once('@').is_some_and(|(a, b)| {
            !a.is_empty() && b.contains('.') && !b.starts_with('.') && !b.ends_with('.')
        })
        && !e.contains(char::is_whitespace)
}

async fn hash_password(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("hashing task: {e}")))?
    .map_err(|e| ApiError::Internal(format!("hashing: {e}")))
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

async fn register(
    State(s): State<UserState>,
    h: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<Response> {
    let email = req.email.trim().to_ascii_lowercase();
    if !valid_email(&email) {
        return Err(ApiError::BadRequest("email is not valid".into()));
    }
    if req.password.chars().count() < 8 || req.password.len() > 1024 {
        return Err(ApiError::BadRequest(
            "password must be 8..=1024 characters".into(),
        ));
    }
    let role = req.role.as_deref().unwrap_or("USER").to_ascii_uppercase();
    if role != "USER" && role != ADMIN {
        return Err(ApiError::BadRequest("role must be USER or ADMIN".into()));
    }
    if role == ADMIN && !s.settings.mode.testing() {
        let caller = Caller::of(&h, &s.settings)?;
        if !caller.is_admin() {
            return Err(ApiError::Forbidden(
                "only an admin may create an ADMIN user".into(),
            ));
        }
    }
    if let Some(d) = &req.display_name {
        if d.len() > 190 {
            return Err(ApiError::BadRequest("display_name is too long".into()));
        }
    }
    let hash = hash_password(req.password).await?;
    let id = format!("usr_{}", crate::random_id());
    let now = crate::now_ms();
    let r = async {
        let mut tx = s.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, role, display_name, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&email)
        .bind(&hash)
        .bind(&role)
        .bind(&req.display_name)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        events::enqueue(&mut tx, "UserRegistered", &id, &json!({ "user_id": id, "email": email, "role": role })).await?;
        tx.commit().await
    }
    .await;
    match r {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e) => {
            s.metrics.op("register", "duplicate");
            return Err(ApiError::Conflict("email is already registered".into()));
        }
        Err(e) => return Err(e.into()),
    }
    s.wake.notify_one();
    s.metrics.op("register", "ok");
    tracing::info!(user = %id, "user registered");
    let view = UserView {
        id,
        email,
        role,
        display_name: req.display_name,
        created_at: now,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn login(
    State(s): State<UserState>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<Value>> {
    let secret = s.settings.jwt_secret.as_deref().ok_or_else(|| {
        ApiError::Unavailable("login is disabled: GATEHOUSE_JWT_SECRET is not set".into())
    })?;
    let email = req.email.trim().to_ascii_lowercase();
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT id, password_hash, role FROM users WHERE email = ?")
            .bind(&email)
            .fetch_optional(&s.db.pool)
            .await?;
    // Verify against a dummy hash when the user is unknown, so timing does not tell.
    let (id, hash, role) = match row {
        Some(r) => r,
        None => {
            let _ = verify_password(req.password, dummy_hash().await).await;
            s.metrics.op("login", "failed");
            return Err(ApiError::Unauthorized("invalid email or password".into()));
        }
    };
    if !verify_password(req.password, hash).await {
        s.metrics.op("login", "failed");
        return Err(ApiError::Unauthorized("invalid email or password".into()));
    }
    let token = issue_token(secret, &id, &email, &role, TOKEN_TTL_SECS)
        .map_err(|e| ApiError::Internal(format!("signing: {e}")))?;
    s.metrics.op("login", "ok");
    Ok(Json(json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_TTL_SECS,
        "user": { "id": id, "email": email, "role": role },
    })))
}

static DUMMY_HASH: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// An argon2id hash of a random string, to spend the same time on unknown emails.
async fn dummy_hash() -> String {
    DUMMY_HASH
        .get_or_init(|| async {
            hash_password(crate::config::random_secret())
                .await
                .unwrap_or_default()
        })
        .await
        .clone()
}

const USER_COLUMNS: &str = "id, email, role, display_name, created_at";

async fn profile(State(s): State<UserState>, h: HeaderMap) -> ApiResult<Json<UserView>> {
    let caller = Caller::of(&h, &s.settings)?;
    let id = caller.user()?;
    let u: Option<UserView> =
        sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(&s.db.pool)
            .await?;
    u.map(Json)
        .ok_or_else(|| ApiError::NotFound("user not found".into()))
}

/// Body of `PUT /profile`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// New display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// New password (at least 8 characters).
    #[serde(default)]
    pub password: Option<String>,
}

async fn update_profile(
    State(s): State<UserState>,
    h: HeaderMap,
    Json(req): Json<ProfileUpdate>,
) -> ApiResult<Json<UserView>> {
    let caller = Caller::of(&h, &s.settings)?;
    let id = caller.user()?.to_string();
    let now = crate::now_ms();
    if let Some(d) = &req.display_name {
        if d.len() > 190 {
            return Err(ApiError::BadRequest("display_name is too long".into()));
        }
        sqlx::query("UPDATE users SET display_name = ?, updated_at = ? WHERE id = ?")
            .bind(d)
            .bind(now)
            .bind(&id)
            .execute(&s.db.pool)
            .await?;
    }
    if let Some(p) = req.password {
        if p.chars().count() < 8 || p.len() > 1024 {
            return Err(ApiError::BadRequest(
                "password must be 8..=1024 characters".into(),
            ));
        }
        let hash = hash_password(p).await?;
        sqlx::query("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?")
            .bind(hash)
            .bind(now)
            .bind(&id)
            .execute(&s.db.pool)
            .await?;
    }
    profile(State(s), h).await
}

/// Query of `GET /admin/users`.
#[derive(Debug, Deserialize)]
pub struct AdminQuery {
    /// At most this many (default 100, max 1000).
    pub limit: Option<i64>,
}

async fn admin_users(
    State(s): State<UserState>,
    h: HeaderMap,
    Query(q): Query<AdminQuery>,
) -> ApiResult<Json<Value>> {
    // The gateway already checks role ADMIN; checking again keeps a direct call honest.
    Caller::of(&h, &s.settings)?.require_admin()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let users: Vec<UserView> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users ORDER BY created_at LIMIT ?"
    ))
    .bind(limit)
    .fetch_all(&s.db.pool)
    .await?;
    Ok(Json(json!({ "users": users })))
}

/// The user routes.
pub fn router(state: UserState) -> Router {
    Router::new()
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/profile", get(profile).put(update_profile))
        .route("/admin/users", get(admin_users))
        .with_state(state)
}
