//! The HTTP-01 answers (RFC 8555 §8.3) waiting for an ACME server's validation: token to
//! key authorization, read by the clear-text listeners without a lock.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Pending HTTP-01 challenges of every ACME certificate of the process. Lookups read one
/// `ArcSwap`; a change (a few per order) copies the small map.
#[derive(Default)]
pub struct Http01Tokens {
    tokens: ArcSwap<HashMap<String, String>>,
}

impl std::fmt::Debug for Http01Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http01Tokens")
            .field("pending", &self.tokens.load().len())
            .finish()
    }
}

impl Http01Tokens {
    /// The key authorization to answer for `token` (the path segment after
    /// `/.well-known/acme-challenge/`), while its challenge is pending.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.tokens.load().get(token).cloned()
    }

    /// Serves `key_authorization` for `token` until [`Http01Tokens::remove`].
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(token.to_string(), key_authorization.to_string());
            Arc::new(m)
        });
    }

    /// Stops answering for `token`.
    pub fn remove(&self, token: &str) {
        self.tokens.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(token);
            Arc::new(m)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_pending_tokens() {
        let t = Http01Tokens::default();
        assert_eq!(t.answer("abc"), None);
        t.insert("abc", "abc.thumb");
        t.insert("def", "def.thumb");
        assert_eq!(t.answer("abc").as_deref(), Some("abc.thumb"));
        t.remove("abc");
        assert_eq!(t.answer("abc"), None);
        assert_eq!(t.answer("def").as_deref(), Some("def.thumb"));
    }
}
