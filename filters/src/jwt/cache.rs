//! A bounded cache of tokens the filter fully accepted (signature, registered claims
//! and requirements), so a client that sends the same token on every request pays for
//! the verification once per minute instead of once per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const SHARDS: usize = 8;

/// Longer tokens are not cached, so that the cache's memory stays small.
pub const MAX_CACHED_TOKEN_BYTES: usize = 2048;

/// How long an accepted token is trusted without verifying it again. Bounds how long a
/// key removed from a JWKS keeps admitting the tokens it signed (the JWKS refresh
/// interval bounds it too).
pub const MAX_AGE: Duration = Duration::from_secs(60);

struct Entry {
    claims: Arc<serde_json::Value>,
    /// Unix seconds: the entry is used while `not_before <= now < valid_until`.
    not_before: u64,
    valid_until: u64,
}

/// A shard's map. Hashed with foldhash, not SipHash: only tokens whose signature verified
/// are ever inserted, so an attacker cannot choose the keys and flood a bucket, and
/// SipHash over a 150-300 byte token cost about 700 instructions per cached request.
type Shard = HashMap<Box<str>, Entry, foldhash::fast::RandomState>;

/// Accepted tokens, keyed by the whole token text.
pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    leeway: u64,
    validate_nbf: bool,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (rounded up to a multiple of the shard
    /// count), honouring `exp`/`nbf` with `leeway` exactly like the verifier.
    pub fn new(capacity: usize, leeway: Duration, validate_nbf: bool) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            leeway: leeway.as_secs(),
            validate_nbf,
        }
    }

    /// The shard of `token`, from its last 4 bytes (the end of the signature, which varies
    /// from token to token): the shard's map hashes the whole token anyway. A client that
    /// steers its tokens into one shard only crowds that shard, which is bounded like the
    /// others.
    fn shard(&self, token: &str) -> &Mutex<Shard> {
        let b = token.as_bytes();
        let mut tail = [0u8; 4];
        let n = b.len().min(4);
        tail[..n].copy_from_slice(&b[b.len() - n..]);
        let mixed = u32::from_le_bytes(tail).wrapping_mul(0x9E37_79B1);
        &self.shards[(mixed >> 29) as usize % SHARDS]
    }

    /// The claims of `token` if it was accepted and is still inside its validity.
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<serde_json::Value>> {
        let mut map = self.shard(token).lock().ok()?;
        let e = map.get(token)?;
        if e.not_before <= now && now < e.valid_until {
            return Some(Arc::clone(&e.claims));
        }
        if now >= e.valid_until {
            map.remove(token);
        }
        None
    }

    /// Remembers an accepted token with its verified claims.
    pub fn insert(&self, token: &str, claims: Arc<serde_json::Value>, now: u64) {
        let num = |k: &str| claims.get(k).and_then(serde_json::Value::as_u64);
        let mut valid_until = now + MAX_AGE.as_secs();
        if let Some(exp) = num("exp") {
            valid_until = valid_until.min(exp.saturating_add(self.leeway));
        }
        let not_before = match num("nbf") {
            Some(nbf) if self.validate_nbf => nbf.saturating_sub(self.leeway),
            _ => 0,
        };
        if now >= valid_until || token.len() > MAX_CACHED_TOKEN_BYTES {
            return;
        }
        let Ok(mut map) = self.shard(token).lock() else {
            return;
        };
        if map.len() >= self.per_shard && !map.contains_key(token) {
            map.retain(|_, e| now < e.valid_until);
            if map.len() >= self.per_shard {
                // Still full of live tokens: drop an arbitrary one (the map's order).
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            token.into(),
            Entry {
                claims,
                not_before,
                valid_until,
            },
        );
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_spread_over_every_shard() {
        let c = TokenCache::new(1024, Duration::from_secs(0), false);
        let mut hit = [false; SHARDS];
        for i in 0..200u32 {
            let token = format!("eyJhbGciOiJIUzI1NiJ9.e30.sig{i:08x}");
            let shard = c.shard(&token) as *const _;
            let at = c
                .shards
                .iter()
                .position(|s| std::ptr::eq(s, shard))
                .unwrap();
            hit[at] = true;
        }
        assert!(hit.iter().all(|h| *h), "{hit:?}");
        assert!(
            std::ptr::eq(c.shard(""), c.shard("")),
            "an empty token has a shard too"
        );
    }

    #[test]
    fn honours_exp_nbf_leeway_and_the_max_age() {
        let c = TokenCache::new(16, Duration::from_secs(30), true);
        let now = 1_000_000;
        c.insert("a", Arc::new(json!({"exp": now + 10})), now);
        assert!(c.get("a", now).is_some());
        assert!(c.get("a", now + 39).is_some(), "inside the leeway");
        assert!(c.get("a", now + 40).is_none(), "past exp + leeway");
        assert!(c.get("a", now).is_none(), "expired entries are dropped");

        c.insert(
            "b",
            Arc::new(json!({"exp": now + 3600, "nbf": now + 50})),
            now,
        );
        assert!(c.get("b", now).is_none(), "not yet valid");
        assert!(c.get("b", now + 20).is_some(), "nbf - leeway reached");

        c.insert("c", Arc::new(json!({"exp": now + 3600})), now);
        assert!(c.get("c", now + MAX_AGE.as_secs() - 1).is_some());
        assert!(
            c.get("c", now + MAX_AGE.as_secs()).is_none(),
            "re-verified after MAX_AGE"
        );

        c.insert("d", Arc::new(json!({"exp": now - 100})), now);
        assert!(
            c.get("d", now).is_none(),
            "an expired token is never cached"
        );
        let long = "x".repeat(MAX_CACHED_TOKEN_BYTES + 1);
        c.insert(&long, Arc::new(json!({"exp": now + 100})), now);
        assert!(c.get(&long, now).is_none(), "a long token is never cached");
        assert!(c.get("unknown", now).is_none());
    }

    #[test]
    fn stays_within_its_capacity() {
        let c = TokenCache::new(16, Duration::ZERO, true);
        for i in 0..1000 {
            c.insert(&format!("t{i}"), Arc::new(json!({})), 5);
        }
        assert!(c.len() <= 16, "{}", c.len());
        assert!(c.get("t999", 5).is_some(), "the newest is kept");
    }
}
