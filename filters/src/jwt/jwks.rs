//! JWKS fetching and caching: one cache per (URL, settings), shared across routes
//! and config reloads, refreshed in the background and kept when the endpoint is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use gatehouse_otel::opentelemetry::trace::SpanKind;
use gatehouse_otel::opentelemetry::KeyValue;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use super::keys::BoundKey;
use crate::{BuildError, FilterMetrics};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How a JWKS URL is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JwksSettings {
    /// Lifetime when the response has no `max-age`.
    pub ttl: Duration,
    /// Lower bound of the lifetime.
    pub ttl_min: Duration,
    /// Upper bound of the lifetime.
    pub ttl_max: Duration,
    /// Minimum time between two fetches caused by unknown `kid`s.
    pub unknown_kid_cooldown: Duration,
    /// Timeout of one fetch.
    pub fetch_timeout: Duration,
}

/// The JWKS caches of a [`crate::FilterRuntime`], keyed by URL, settings and algorithms.
#[derive(Default)]
pub struct JwksCaches {
    caches: Mutex<HashMap<CacheKey, Arc<JwksCache>>>,
}

type JwksSettingsKey = (u128, u128, u128, u128, u128);
type CacheKey = (String, JwksSettingsKey, Vec<String>);

impl JwksCaches {
    /// The cache of `url` (created on first use; prefetched if a tokio runtime runs).
    pub fn get(
        &self,
        url: &str,
        settings: JwksSettings,
        algorithms: &[Algorithm],
        metrics: FilterMetrics,
    ) -> Result<Arc<JwksCache>, BuildError> {
        let skey = (
            settings.ttl.as_millis(),
            settings.ttl_min.as_millis(),
            settings.ttl_max.as_millis(),
            settings.unknown_kid_cooldown.as_millis(),
            settings.fetch_timeout.as_millis(),
        );
        let akey = algorithms.iter().map(|a| format!("{a:?}")).collect();
        let mut caches = self
            .caches
            .lock()
            .map_err(|_| BuildError::new("JWKS cache lock poisoned"))?;
        let key = (url.to_string(), skey, akey);
        if let Some(c) = caches.get(&key) {
            return Ok(c.clone());
        }
        let cache = Arc::new(JwksCache::new(url, settings, algorithms, metrics)?);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let c = cache.clone();
            handle.spawn(async move {
                let _ = c.keys().await;
            });
        }
        caches.insert(key, cache.clone());
        Ok(cache)
    }
}

struct State {
    /// When the current key set goes stale (`None`: never fetched successfully).
    expires_at: Option<Instant>,
    /// Earliest time of the next background attempt after a failure.
    retry_at: Option<Instant>,
    /// Last fetch caused by an unknown kid.
    last_kid_fetch: Option<Instant>,
}

/// The cached key set of one JWKS URL.
pub struct JwksCache {
    url: String,
    settings: JwksSettings,
    algorithms: Vec<Algorithm>,
    client: reqwest::Client,
    keys: RwLock<Arc<Vec<BoundKey>>>,
    state: Mutex<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    generation: AtomicU64,
    metrics: FilterMetrics,
}

impl JwksCache {
    fn new(
        url: &str,
        settings: JwksSettings,
        algorithms: &[Algorithm],
        metrics: FilterMetrics,
    ) -> Result<Self, BuildError> {
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| BuildError::new(format!("JWKS HTTP client: {e}")))?;
        Ok(Self {
            url: url.to_string(),
            settings,
            algorithms: algorithms.to_vec(),
            client,
            keys: RwLock::new(Arc::new(Vec::new())),
            state: Mutex::new(State {
                expires_at: None,
                retry_at: None,
                last_kid_fetch: None,
            }),
            fetch_lock: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            metrics,
        })
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The current keys, fetching them first if there are none yet, and starting a
    /// background refresh when they are stale. `None` if no key set was ever fetched.
    pub async fn keys(self: &Arc<Self>) -> Option<Arc<Vec<BoundKey>>> {
        let now = Instant::now();
        let (expires_at, retry_at) = match self.state.lock() {
            Ok(s) => (s.expires_at, s.retry_at),
            Err(_) => (None, None),
        };
        match expires_at {
            None => {
                // Never fetched: this request waits (single flight), bounded by the timeout.
                if retry_at.is_none_or(|r| now >= r) {
                    self.refresh().await;
                }
                let ok = self.state.lock().ok()?.expires_at.is_some();
                if !ok {
                    return None;
                }
            }
            Some(exp) if now >= exp && retry_at.is_none_or(|r| now >= r) => {
                if !self.refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.refresh().await;
                        me.refreshing.store(false, Ordering::Release);
                    });
                }
            }
            Some(_) => {}
        }
        self.keys.read().ok().map(|k| k.clone())
    }

    /// Called when a token's `kid` is not in the cached set: refetches, at most once
    /// per `unknown_kid_cooldown`. Returns whether a fetch happened.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let now = Instant::now();
        {
            let Ok(mut s) = self.state.lock() else {
                return false;
            };
            if s.last_kid_fetch
                .is_some_and(|t| now.duration_since(t) < self.settings.unknown_kid_cooldown)
            {
                return false;
            }
            s.last_kid_fetch = Some(now);
        }
        self.refresh().await;
        true
    }

    /// Fetches the JWKS once. Callers that arrive while a fetch runs wait for it and
    /// do not fetch again (single flight). On failure the cached keys stay.
    pub async fn refresh(&self) {
        let seen = self.generation.load(Ordering::Acquire);
        let _guard = self.fetch_lock.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return;
        }
        let mut span = gatehouse_otel::child("JWKS fetch", SpanKind::Client, || {
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.full", self.url.clone()),
            ]
        });
        let result = self.fetch().await;
        if let (Some(s), Err(e)) = (span.as_mut(), &result) {
            s.fail(e);
        }
        drop(span);
        let now = Instant::now();
        match result {
            Ok((keys, ttl)) => {
                self.metrics.jwks_fetch(true);
                tracing::debug!(url = %self.url, keys = keys.len(), ttl_s = ttl.as_secs(), "JWKS fetched");
                if let Ok(mut k) = self.keys.write() {
                    *k = Arc::new(keys);
                }
                if let Ok(mut s) = self.state.lock() {
                    s.expires_at = Some(now + ttl);
                    s.retry_at = None;
                }
            }
            Err(e) => {
                self.metrics.jwks_fetch(false);
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the cached keys");
                if let Ok(mut s) = self.state.lock() {
                    let backoff = self.settings.ttl_min.min(Duration::from_secs(10));
                    s.retry_at = Some(now + backoff);
                }
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    async fn fetch(&self) -> Result<(Vec<BoundKey>, Duration), String> {
        let mut resp = self
            .client
            .get(&self.url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
        {
            return Err("JWKS larger than 1 MiB".into());
        }
        let ttl = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(self.settings.ttl)
            .clamp(self.settings.ttl_min, self.settings.ttl_max);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("body: {e}"))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err("JWKS larger than 1 MiB".into());
            }
        }
        let set: JwkSetLoose =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut keys = Vec::new();
        for raw in set.keys {
            // One odd key must not take the whole set down: skip what we cannot use.
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            if let Some(k) = bind(&jwk, &self.algorithms) {
                keys.push(k);
            }
        }
        if keys.is_empty() {
            return Err("no usable key in the JWK set".into());
        }
        Ok((keys, ttl))
    }
}

#[derive(serde::Deserialize)]
struct JwkSetLoose {
    keys: Vec<serde_json::Value>,
}

/// Binds a JWK to the algorithms it may verify: its own `alg` if it has one and it
/// is allowed, else the allowed algorithms of its key type.
fn bind(jwk: &Jwk, allowed: &[Algorithm]) -> Option<BoundKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let family = key.family();
    let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
        Some(ka) => {
            let a = key_alg(ka)?;
            if !allowed.contains(&a) || a.family() != family {
                return None;
            }
            vec![a]
        }
        None => allowed
            .iter()
            .copied()
            .filter(|a| a.family() == family)
            .collect(),
    };
    if algorithms.is_empty() {
        return None;
    }
    Some(BoundKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

fn key_alg(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// `max-age` of a Cache-Control value (`no-store`/`no-cache` count as 0).
fn max_age(cc: &str) -> Option<Duration> {
    let mut out = None;
    for d in cc.split(',') {
        let d = d.trim();
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if let Some((k, v)) = d.split_once('=') {
            if k.trim().eq_ignore_ascii_case("max-age") {
                out = v
                    .trim()
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_max_age() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
