//! Verification keys: the configured key sources, each bound to its algorithm(s).

use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::jwks::{JwksCache, JwksSettings};
use crate::{BuildError, Duration, FilterRuntime};

/// A signature algorithm a key may verify. `none` does not exist here on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (shared secret).
    HS256,
    /// HMAC with SHA-384 (shared secret).
    HS384,
    /// HMAC with SHA-512 (shared secret).
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// The `jsonwebtoken` algorithm.
    pub fn get(self) -> Algorithm {
        match self {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::HS384 => Algorithm::HS384,
            JwtAlgorithm::HS512 => Algorithm::HS512,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::RS384 => Algorithm::RS384,
            JwtAlgorithm::RS512 => Algorithm::RS512,
            JwtAlgorithm::PS256 => Algorithm::PS256,
            JwtAlgorithm::PS384 => Algorithm::PS384,
            JwtAlgorithm::PS512 => Algorithm::PS512,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::ES384 => Algorithm::ES384,
            JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// One source of verification keys, with the algorithm(s) its key may verify.
/// Exactly one of `secret`, `secret_env`, `pem_file`, `jwks_url` is set.
///
/// ```yaml
/// keys:
///   - secret_env: GATEHOUSE_JWT_SECRET     # HMAC secret read from the environment at load
///     algorithms: [HS256]
///   - pem_file: /etc/gatehouse/jwt-rs256.pub.pem
///     algorithms: [RS256, PS256]
///     kid: 2024-01                          # optional: only tokens with this kid use it
///   - jwks_url: https://id.example.com/.well-known/jwks.json
///     algorithms: [RS256, ES256]
///     unknown_kid_cooldown: 30s
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySourceConfig {
    /// Inline HMAC secret (prefer `secret_env`: secrets do not belong in config files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Name of an environment variable holding the HMAC secret. Missing or empty: the
    /// config is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// A PEM file with an RSA, EC or Ed25519 public key (SPKI or PKCS#1 RSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem_file: Option<PathBuf>,
    /// A JWKS URL, fetched and cached (Cache-Control max-age, clamped to
    /// `cache_ttl_min`..`cache_ttl_max`), refreshed in the background when stale, and
    /// kept when the endpoint is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Algorithms this key may verify. A token whose `alg` is not listed for the key
    /// is refused (no RS256 -> HS256 confusion). For JWKS keys, a JWK's own `alg`
    /// must be in this list; a JWK without `alg` gets the listed algorithms of its
    /// key type.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Key id: if set, only tokens whose header `kid` equals it use this key (tokens
    /// without `kid` still do). Not allowed with `jwks_url` (JWKs carry their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// JWKS: cache lifetime when the response has no `max-age`. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<Duration>,
    /// JWKS: lower bound of the cache lifetime. Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_min: Option<Duration>,
    /// JWKS: upper bound of the cache lifetime. Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_max: Option<Duration>,
    /// JWKS: a token with an unknown `kid` triggers a refetch at most this often.
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_kid_cooldown: Option<Duration>,
    /// JWKS: timeout of one fetch. Default 3s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_timeout: Option<Duration>,
}

impl KeySourceConfig {
    /// A key source for an HMAC secret read from env var `var` with `alg`.
    pub fn secret_env(var: impl Into<String>, alg: JwtAlgorithm) -> Self {
        Self {
            secret: None,
            secret_env: Some(var.into()),
            pem_file: None,
            jwks_url: None,
            algorithms: vec![alg],
            kid: None,
            cache_ttl: None,
            cache_ttl_min: None,
            cache_ttl_max: None,
            unknown_kid_cooldown: None,
            fetch_timeout: None,
        }
    }
}

/// A key bound to the algorithms it may verify.
pub struct BoundKey {
    /// Key id, if any.
    pub kid: Option<String>,
    /// Algorithms it may verify.
    pub algorithms: Vec<Algorithm>,
    /// The key.
    pub key: DecodingKey,
}

impl BoundKey {
    /// Whether this key may verify a token with header `alg` and `kid`.
    pub fn accepts(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.algorithms.contains(&alg)
            && match (&self.kid, kid) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }
}

/// A built key source.
pub enum KeySource {
    /// A secret or a PEM key, loaded at build time.
    Static(BoundKey),
    /// A JWKS URL and its shared cache.
    Jwks {
        /// The cache (shared by every route using the same URL and settings).
        cache: Arc<JwksCache>,
        /// The algorithms keys from it may verify.
        algorithms: Vec<Algorithm>,
    },
}

impl KeySource {
    /// Algorithms this source may verify.
    pub fn algorithms(&self) -> &[Algorithm] {
        match self {
            KeySource::Static(k) => &k.algorithms,
            KeySource::Jwks { algorithms, .. } => algorithms,
        }
    }
}

fn family_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "HMAC",
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "EdDSA",
        _ => "RSA",
    }
}

/// Builds one key source; `at` names it in errors (e.g. `keys[1]`).
pub fn build_source(
    cfg: &KeySourceConfig,
    at: &str,
    runtime: &FilterRuntime,
) -> Result<KeySource, BuildError> {
    let err = |m: String| BuildError::new(format!("{at}: {m}"));
    let set = [
        cfg.secret.is_some(),
        cfg.secret_env.is_some(),
        cfg.pem_file.is_some(),
        cfg.jwks_url.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(err(
            "set exactly one of secret, secret_env, pem_file, jwks_url".into(),
        ));
    }
    if cfg.algorithms.is_empty() {
        return Err(err(
            "algorithms must list at least one algorithm (e.g. [HS256])".into(),
        ));
    }
    let algorithms: Vec<Algorithm> = cfg.algorithms.iter().map(|a| a.get()).collect();
    let jwks_only = [
        cfg.cache_ttl.is_some(),
        cfg.cache_ttl_min.is_some(),
        cfg.cache_ttl_max.is_some(),
        cfg.unknown_kid_cooldown.is_some(),
        cfg.fetch_timeout.is_some(),
    ];
    if cfg.jwks_url.is_none() && jwks_only.iter().any(|b| *b) {
        return Err(err(
            "cache_ttl, cache_ttl_min, cache_ttl_max, unknown_kid_cooldown and fetch_timeout only apply to jwks_url".into(),
        ));
    }

    if let Some(url) = &cfg.jwks_url {
        if cfg.kid.is_some() {
            return Err(err(
                "kid does not apply to jwks_url: JWKs carry their own kid".into(),
            ));
        }
        if algorithms.iter().any(|a| family_name(*a) == "HMAC") {
            return Err(err(
                "a JWKS serves public keys: HS* algorithms are not allowed with jwks_url".into(),
            ));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| err(format!("jwks_url {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(err(format!(
                "jwks_url {url:?}: must be http:// or https://"
            )));
        }
        let settings = JwksSettings {
            ttl: cfg.cache_ttl.unwrap_or(Duration::from_secs(300)).get(),
            ttl_min: cfg.cache_ttl_min.unwrap_or(Duration::from_secs(60)).get(),
            ttl_max: cfg
                .cache_ttl_max
                .unwrap_or(Duration::from_secs(86_400))
                .get(),
            unknown_kid_cooldown: cfg
                .unknown_kid_cooldown
                .unwrap_or(Duration::from_secs(30))
                .get(),
            fetch_timeout: cfg.fetch_timeout.unwrap_or(Duration::from_secs(3)).get(),
        };
        if settings.ttl_min > settings.ttl_max {
            return Err(err("cache_ttl_min is larger than cache_ttl_max".into()));
        }
        let cache = runtime
            .jwks
            .get(url, settings, &algorithms, runtime.metrics.clone())?;
        return Ok(KeySource::Jwks { cache, algorithms });
    }

    let families: Vec<&str> = algorithms.iter().map(|a| family_name(*a)).collect();
    if families.iter().any(|f| *f != families[0]) {
        return Err(err(format!(
            "algorithms {:?} mix key types: one key verifies one family (HS*, RS*/PS*, ES*, EdDSA)",
            cfg.algorithms
        )));
    }
    let family = families[0];
    let key = if cfg.secret.is_some() || cfg.secret_env.is_some() {
        if family != "HMAC" {
            return Err(err(format!(
                "a secret verifies HS256/HS384/HS512 only, not {:?}; use pem_file or jwks_url for public keys",
                cfg.algorithms
            )));
        }
        let secret = match (&cfg.secret, &cfg.secret_env) {
            (Some(s), _) => s.clone(),
            (None, Some(var)) => runtime
                .env_secret(var)
                .map_err(|e| err(format!("{e} (secret_env)")))?,
            (None, None) => String::new(),
        };
        if secret.is_empty() {
            return Err(err("the HMAC secret is empty".into()));
        }
        if secret.len() < 32 {
            tracing::warn!(
                key = at,
                "HMAC secret is shorter than 32 bytes; use a longer random secret"
            );
        }
        DecodingKey::from_secret(secret.as_bytes())
    } else {
        let path = cfg.pem_file.as_ref().ok_or_else(|| err("no key".into()))?;
        let pem = std::fs::read(path)
            .map_err(|e| err(format!("cannot read pem_file {}: {e}", path.display())))?;
        let parsed = match family {
            "RSA" => DecodingKey::from_rsa_pem(&pem),
            "EC" => DecodingKey::from_ec_pem(&pem),
            "EdDSA" => DecodingKey::from_ed_pem(&pem),
            _ => {
                return Err(err(
                    "a PEM file holds a public key: HS* algorithms need secret or secret_env"
                        .into(),
                ))
            }
        };
        parsed.map_err(|e| {
            err(format!(
                "pem_file {} is not a {family} public key: {e}",
                path.display()
            ))
        })?
    };
    Ok(KeySource::Static(BoundKey {
        kid: cfg.kid.clone(),
        algorithms,
        key,
    }))
}
