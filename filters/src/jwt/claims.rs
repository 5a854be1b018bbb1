//! Claim checks after verification (`required_claims`, `require`, `require_scopes`)
//! and claim values rendered as upstream headers.

use http::HeaderValue;
use serde_json::Value;

use super::verify::Reason;
use super::JwtConfig;

/// The route's claim requirements.
pub struct Requirements {
    present: Vec<String>,
    equals: Vec<(String, Vec<String>)>,
    scopes: Vec<String>,
}

impl Requirements {
    /// From the filter config.
    pub fn new(cfg: &JwtConfig) -> Self {
        Self {
            present: cfg.required_claims.clone(),
            equals: cfg
                .require
                .iter()
                .map(|(k, v)| (k.clone(), v.values().to_vec()))
                .collect(),
            scopes: cfg.require_scopes.clone(),
        }
    }

    /// `Ok` when every requirement holds. A missing `required_claims` entry is a 401
    /// (`missing_claim`); a failed `require`/`require_scopes` is a 403 (`forbidden`).
    pub fn check(&self, claims: &Value) -> Result<(), Reason> {
        for c in &self.present {
            if claims.get(c).is_none_or(Value::is_null) {
                return Err(Reason::MissingClaim(c.clone()));
            }
        }
        for (claim, accepted) in &self.equals {
            let ok = match claims.get(claim) {
                Some(Value::Array(items)) => items.iter().any(|i| matches_any(i, accepted)),
                Some(v) => matches_any(v, accepted),
                None => false,
            };
            if !ok {
                return Err(Reason::Forbidden(format!("claim {claim} does not match")));
            }
        }
        if !self.scopes.is_empty() {
            let granted = granted_scopes(claims);
            for s in &self.scopes {
                if !granted.iter().any(|g| g == s) {
                    return Err(Reason::Forbidden(format!("scope {s} not granted")));
                }
            }
        }
        Ok(())
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn matches_any(v: &Value, accepted: &[String]) -> bool {
    scalar(v).is_some_and(|s| accepted.contains(&s))
}

/// Scopes from `scope` (space-separated) and `scp` (list or space-separated).
fn granted_scopes(claims: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_string)),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(scalar)),
            _ => {}
        }
    }
    out
}

/// A claim value as a header value: strings as they are, numbers and booleans as
/// text, lists of those comma-separated. `None` for objects, nulls, and values that
/// are not valid in a header (control characters).
pub fn header_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
            parts?.join(",")
        }
        other => scalar(other)?,
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reqs(v: serde_json::Value) -> Requirements {
        let mut cfg = JwtConfig::hs256_from_env("X");
        let extra: JwtConfig = {
            let mut base = serde_json::to_value(&cfg).unwrap();
            for (k, val) in v.as_object().unwrap() {
                base[k] = val.clone();
            }
            serde_json::from_value(base).unwrap()
        };
        cfg = extra;
        Requirements::new(&cfg)
    }

    #[test]
    fn role_must_match_one_value() {
        let r = reqs(json!({"require": {"role": ["ADMIN", "OPS"]}}));
        assert!(r.check(&json!({"role": "ADMIN"})).is_ok());
        assert!(r.check(&json!({"role": ["USER", "OPS"]})).is_ok());
        assert!(matches!(
            r.check(&json!({"role": "USER"})),
            Err(Reason::Forbidden(_))
        ));
        assert!(matches!(r.check(&json!({})), Err(Reason::Forbidden(_))));
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        let r = reqs(json!({"require_scopes": ["users:read", "users:write"]}));
        assert!(r
            .check(&json!({"scope": "users:read users:write other"}))
            .is_ok());
        assert!(r
            .check(&json!({"scp": ["users:write", "users:read"]}))
            .is_ok());
        assert!(r
            .check(&json!({"scope": "users:read", "scp": "users:write"}))
            .is_ok());
        assert!(matches!(
            r.check(&json!({"scope": "users:read"})),
            Err(Reason::Forbidden(_))
        ));
    }

    #[test]
    fn required_claims_are_401_material() {
        let r = reqs(json!({"required_claims": ["sub"]}));
        assert_eq!(
            r.check(&json!({"sub": null})),
            Err(Reason::MissingClaim("sub".into()))
        );
        assert!(r.check(&json!({"sub": "u1"})).is_ok());
    }

    #[test]
    fn header_values() {
        assert_eq!(header_value(&json!("u1")).unwrap(), "u1");
        assert_eq!(header_value(&json!(42)).unwrap(), "42");
        assert_eq!(header_value(&json!(["a", "b"])).unwrap(), "a,b");
        assert!(header_value(&json!({"a": 1})).is_none());
        assert!(header_value(&json!("bad\nvalue")).is_none());
    }
}
