//! Token verification: header checks, key selection by `alg`/`kid`, signature and
//! registered claims (exp, nbf, iat, iss, aud).

use std::collections::HashMap;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::keys::{BoundKey, KeySource};
use super::JwtConfig;

/// Why a request was refused; the `reason` label of `gatehouse_auth_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No token in the request.
    MissingToken,
    /// The token is larger than `max_token_bytes`.
    TokenTooLarge,
    /// Not a JWS compact token, bad base64 or JSON, unsupported header.
    Malformed(String),
    /// `alg: none`.
    AlgNone,
    /// The header `alg` is not allowed for any configured key.
    AlgNotAllowed(String),
    /// The header `kid` names no known key (after an allowed JWKS refetch).
    UnknownKid(String),
    /// No configured key accepts the token's `alg`/`kid`.
    NoMatchingKey,
    /// A JWKS needed for this token could never be fetched.
    KeysUnavailable,
    /// No candidate key verifies the signature.
    BadSignature,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iat` is in the future (beyond the leeway): a token cannot have been issued
    /// later than now (RFC 7519 section 4.1.6; RFC 8725 section 3.10 asks to validate
    /// every time claim).
    IssuedInFuture,
    /// `iss` is not an accepted issuer.
    BadIssuer,
    /// `aud` contains no accepted audience.
    BadAudience,
    /// A required claim is missing.
    MissingClaim(String),
    /// A claim has the wrong type (e.g. `exp` is a string).
    InvalidClaim(String),
    /// The token is valid but a `require`/`require_scopes` check failed (403).
    Forbidden(String),
}

impl Reason {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::Malformed(_) => "malformed",
            Reason::AlgNone => "alg_none",
            Reason::AlgNotAllowed(_) => "alg_not_allowed",
            Reason::UnknownKid(_) => "unknown_kid",
            Reason::NoMatchingKey => "no_matching_key",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::BadIssuer => "bad_issuer",
            Reason::BadAudience => "bad_audience",
            Reason::MissingClaim(_) => "missing_claim",
            Reason::InvalidClaim(_) => "invalid_claim",
            Reason::Forbidden(_) => "forbidden",
        }
    }

    /// Detail for the log (never the token itself).
    pub fn detail(&self) -> String {
        match self {
            Reason::Malformed(d)
            | Reason::AlgNotAllowed(d)
            | Reason::MissingClaim(d)
            | Reason::InvalidClaim(d)
            | Reason::Forbidden(d) => d.clone(),
            Reason::UnknownKid(k) => format!("kid {k:?}"),
            _ => String::new(),
        }
    }
}

/// Verifies tokens against the configured key sources.
pub struct Verifier {
    sources: Vec<KeySource>,
    validations: HashMap<Algorithm, Validation>,
    /// Clock skew allowed on `iat` (jsonwebtoken checks only `exp` and `nbf`).
    leeway_secs: u64,
}

impl Verifier {
    /// Prepares one `Validation` per allowed algorithm.
    pub fn new(cfg: &JwtConfig, sources: Vec<KeySource>) -> Self {
        let mut validations = HashMap::new();
        for s in &sources {
            for alg in s.algorithms() {
                validations
                    .entry(*alg)
                    .or_insert_with(|| validation(cfg, *alg));
            }
        }
        Self {
            sources,
            validations,
            leeway_secs: cfg.leeway.get().as_secs(),
        }
    }

    /// Verifies `token`: its claims, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<serde_json::Value, Reason> {
        let claims = self.verify_signed(token).await?;
        check_iat(
            &claims,
            jsonwebtoken::get_current_timestamp(),
            self.leeway_secs,
        )?;
        Ok(claims)
    }

    /// The signature, `alg`/`kid` and the claims jsonwebtoken validates.
    async fn verify_signed(&self, token: &str) -> Result<serde_json::Value, Reason> {
        let (alg, kid) = inspect_header(token)?;
        let Some(validation) = self.validations.get(&alg) else {
            return Err(Reason::AlgNotAllowed(format!("{alg:?}")));
        };
        let kid = kid.as_deref();

        let mut tried_any = false;
        let mut jwks_unavailable = false;
        for source in &self.sources {
            match source {
                KeySource::Static(k) => {
                    if k.accepts(alg, kid) {
                        tried_any = true;
                        match try_key(token, &k.key, validation) {
                            Err(Reason::BadSignature) => {}
                            other => return other,
                        }
                    }
                }
                KeySource::Jwks { cache, algorithms } => {
                    if !algorithms.contains(&alg) {
                        continue;
                    }
                    let Some(mut keys) = cache.keys().await else {
                        jwks_unavailable = true;
                        continue;
                    };
                    let known = |keys: &[BoundKey]| match kid {
                        Some(kid) => keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
                        None => true,
                    };
                    if !known(&keys) && cache.refetch_for_unknown_kid().await {
                        if let Some(fresh) = cache.keys().await {
                            keys = fresh;
                        }
                    }
                    for k in keys.iter().filter(|k| jwks_accepts(k, alg, kid)) {
                        tried_any = true;
                        match try_key(token, &k.key, validation) {
                            Err(Reason::BadSignature) => {}
                            other => return other,
                        }
                    }
                }
            }
        }
        if tried_any {
            Err(Reason::BadSignature)
        } else if jwks_unavailable {
            Err(Reason::KeysUnavailable)
        } else if let Some(kid) = kid {
            Err(Reason::UnknownKid(kid.to_string()))
        } else {
            Err(Reason::NoMatchingKey)
        }
    }
}

/// `iat`, when present, must be a number no later than `now + leeway` (unix seconds).
fn check_iat(claims: &serde_json::Value, now: u64, leeway: u64) -> Result<(), Reason> {
    match claims.get("iat") {
        None => Ok(()),
        Some(v) => match v.as_f64() {
            Some(iat) if iat > now.saturating_add(leeway) as f64 => Err(Reason::IssuedInFuture),
            Some(_) => Ok(()),
            None => Err(Reason::InvalidClaim("iat is not a number".into())),
        },
    }
}

/// JWKS keys match a token's `kid` exactly when the token has one.
fn jwks_accepts(k: &BoundKey, alg: Algorithm, kid: Option<&str>) -> bool {
    k.algorithms.contains(&alg)
        && match kid {
            Some(kid) => k.kid.as_deref() == Some(kid),
            None => true,
        }
}

fn validation(cfg: &JwtConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway.get().as_secs();
    v.validate_exp = true;
    v.validate_nbf = cfg.validate_nbf;
    let mut required: Vec<&str> = Vec::new();
    if cfg.require_exp {
        required.push("exp");
    }
    if let Some(iss) = &cfg.issuer {
        v.set_issuer(iss.values());
        required.push("iss");
    }
    match &cfg.audience {
        Some(aud) => {
            v.set_audience(aud.values());
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// Reads the header without trusting it: `alg` (refusing `none`), `kid`; refuses
/// `crit`. `jku`, `x5u`, `jwk` and `x5c` are ignored: keys come from config only.
fn inspect_header(token: &str) -> Result<(Algorithm, Option<String>), Reason> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::Malformed("not three dot-separated parts".into()));
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .map_err(|_| Reason::Malformed("header is not base64url".into()))?;
    let header: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| Reason::Malformed("header is not JSON".into()))?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or_else(|| Reason::Malformed("header has no alg".into()))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(Reason::AlgNone);
    }
    if header.get("crit").is_some() {
        return Err(Reason::Malformed("unsupported crit header".into()));
    }
    let alg: Algorithm = alg
        .parse()
        .map_err(|_| Reason::AlgNotAllowed(alg.chars().take(16).collect()))?;
    let kid = match header.get("kid") {
        None => None,
        Some(serde_json::Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Reason::Malformed("kid is not a string".into())),
    };
    Ok((alg, kid))
}

fn try_key(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<serde_json::Value, Reason> {
    match jsonwebtoken::decode::<serde_json::Value>(token, key, validation) {
        Ok(data) if data.claims.is_object() => Ok(data.claims),
        Ok(_) => Err(Reason::Malformed("claims are not a JSON object".into())),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature => Reason::BadSignature,
            // A key of the wrong shape for the alg (e.g. P-384 key, ES256 token).
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => Reason::BadSignature,
            ErrorKind::ExpiredSignature => Reason::Expired,
            ErrorKind::ImmatureSignature => Reason::NotYetValid,
            ErrorKind::InvalidIssuer => Reason::BadIssuer,
            ErrorKind::InvalidAudience => Reason::BadAudience,
            ErrorKind::MissingRequiredClaim(c) => Reason::MissingClaim(c.clone()),
            ErrorKind::InvalidClaimFormat(c) => Reason::InvalidClaim(c.clone()),
            ErrorKind::InvalidAlgorithm => Reason::AlgNotAllowed("key/alg mismatch".into()),
            other => Reason::Malformed(format!("{other:?}")),
        }),
    }
}
