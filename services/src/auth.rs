//! Identity of a caller: gateway-set `X-User-*` headers, a bearer JWT, or the internal token.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::error::{ApiError, ApiResult};

/// Header carrying the internal service token on service-to-service calls.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";
/// Header the gateway's JWT filter sets from the `sub` claim.
pub const USER_ID_HEADER: &str = "x-user-id";
/// Header the gateway's JWT filter sets from the `role` claim.
pub const USER_ROLE_HEADER: &str = "x-user-role";
/// Issuer and audience of the tokens.
pub const ISSUER: &str = "gatehouse";
/// The role allowed on admin endpoints.
pub const ADMIN: &str = "ADMIN";

/// The claims of a gatehouse JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The user's email.
    pub email: String,
    /// `USER` or `ADMIN`.
    pub role: String,
    /// Always `gatehouse`.
    pub iss: String,
    /// Always `gatehouse`.
    pub aud: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expiry, unix seconds.
    pub exp: u64,
}

/// Signs an HS256 token for a user, valid for `ttl_secs`.
pub fn issue_token(
    secret: &str,
    user_id: &str,
    email: &str,
    role: &str,
    ttl_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: user_id.to_string(),
        email: email.to_string(),
        role: role.to_string(),
        iss: ISSUER.to_string(),
        aud: ISSUER.to_string(),
        iat: now,
        exp: now + ttl_secs,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Verifies an HS256 token's signature, expiry, issuer and audience.
pub fn verify_token(secret: &str, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[ISSUER]);
    decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v).map(|d| d.claims)
}

/// Compares two secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is calling.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The user id, when a user is calling.
    pub user_id: Option<String>,
    /// The user's role.
    pub role: Option<String>,
    /// True when the call carries the valid internal service token.
    pub internal: bool,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl Caller {
    /// [`Caller::from_headers`] with this service's internal token and JWT secret.
    pub fn of(h: &HeaderMap, settings: &Settings) -> ApiResult<Caller> {
        Self::from_headers(h, &settings.internal_token, settings.jwt_secret.as_deref())
    }

    /// Reads the caller from the headers.
    ///
    /// Order: a valid internal token; else `X-User-Id`/`X-User-Role` (set by the gateway,
    /// which strips them from incoming requests); else a bearer JWT verified here when this
    /// service knows the secret. A wrong internal token or a bad bearer token is a 401.
    pub fn from_headers(
        h: &HeaderMap,
        internal_token: &str,
        jwt_secret: Option<&str>,
    ) -> ApiResult<Caller> {
        let mut caller = Caller::default();
        if let Some(t) = header(h, INTERNAL_TOKEN_HEADER) {
            if !constant_time_eq(t, internal_token) {
                return Err(ApiError::Unauthorized("invalid internal token".into()));
            }
            caller.internal = true;
        }
        if let Some(id) = header(h, USER_ID_HEADER) {
            caller.user_id = Some(id.to_string());
            caller.role = header(h, USER_ROLE_HEADER).map(str::to_string);
            return Ok(caller);
        }
        if let Some(auth) = header(h, "authorization") {
            let token = auth
                .strip_prefix("Bearer ")
                .or_else(|| auth.strip_prefix("bearer "))
                .ok_or_else(|| {
                    ApiError::Unauthorized("authorization is not a bearer token".into())
                })?;
            let secret = jwt_secret.ok_or_else(|| {
                ApiError::Unauthorized("bearer tokens are not accepted here".into())
            })?;
            let claims = verify_token(secret, token.trim()).map_err(|e| {
                // The reason goes to the log, never the token.
                tracing::info!(reason = %e, "bearer token rejected");
                ApiError::Unauthorized(format!("invalid token: {e}"))
            })?;
            caller.user_id = Some(claims.sub);
            caller.role = Some(claims.role);
        }
        Ok(caller)
    }

    /// The user id, or 401.
    pub fn user(&self) -> ApiResult<&str> {
        self.user_id
            .as_deref()
            .ok_or_else(|| ApiError::Unauthorized("no authenticated user".into()))
    }

    /// True for the internal token or an ADMIN user.
    pub fn is_admin(&self) -> bool {
        self.internal || self.role.as_deref() == Some(ADMIN)
    }

    /// 403 unless [`Caller::is_admin`]; 401 when nobody is identified at all.
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            return Ok(());
        }
        if self.user_id.is_none() {
            return Err(ApiError::Unauthorized("no authenticated user".into()));
        }
        Err(ApiError::Forbidden("role ADMIN required".into()))
    }

    /// 401 unless the call carries the internal token.
    pub fn require_internal(&self) -> ApiResult<()> {
        if self.internal {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("internal token required".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_rejects_wrong_secret() {
        let t = issue_token("s3cret", "u1", "a@b.c", "USER", 60).unwrap();
        let c = verify_token("s3cret", &t).unwrap();
        assert_eq!(c.sub, "u1");
        assert_eq!(c.aud, "gatehouse");
        assert!(verify_token("other", &t).is_err());
    }

    #[test]
    fn caller_from_headers() {
        let mut h = HeaderMap::new();
        h.insert(INTERNAL_TOKEN_HEADER, "wrong".parse().unwrap());
        assert!(Caller::from_headers(&h, "tok", None).is_err());
        let mut h = HeaderMap::new();
        h.insert(USER_ID_HEADER, "u7".parse().unwrap());
        h.insert(USER_ROLE_HEADER, "ADMIN".parse().unwrap());
        let c = Caller::from_headers(&h, "tok", None).unwrap();
        assert!(c.is_admin());
        assert!(!c.internal);
        let t = issue_token("k", "u9", "e@x", "USER", 60).unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        let c = Caller::from_headers(&h, "tok", Some("k")).unwrap();
        assert_eq!(c.user_id.as_deref(), Some("u9"));
        assert!(c.require_admin().is_err());
    }
}
