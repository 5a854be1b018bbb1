//! Path templates (`/users/{id}`, `/files/{*rest}`): parsing, matching with captured
//! parameters, and expanding captures into a `rewrite_path`. The syntax is the one of
//! matchit/axum and OpenAPI path templating: `{name}` takes one whole segment, `{*name}`
//! (last only) takes the rest of the path.

use std::sync::Arc;

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Not starting with `/`.
    #[error("a path template must start with /")]
    NotAbsolute,
    /// `{` or `}` inside a segment with other characters, or unbalanced.
    #[error("segment {0:?}: a parameter must be a whole segment, `{{name}}` or `{{*name}}`")]
    PartialSegment(String),
    /// An empty or non-identifier name.
    #[error("parameter name {0:?} must be letters, digits or _")]
    BadName(String),
    /// The same name twice.
    #[error("parameter {0:?} appears twice")]
    Duplicate(String),
    /// `{*rest}` before the last segment.
    #[error("the catch-all {{*{0}}} must be the last segment")]
    CatchAllNotLast(String),
    /// A rewrite names a parameter that the template does not capture.
    #[error("{{{0}}} is not a parameter of the route's path_template")]
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    Param(Arc<str>),
    CatchAll(Arc<str>),
}

/// A compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segs: Vec<Seg>,
    trailing_slash: bool,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl PathTemplate {
    /// Parses `/users/{id}/posts/{*rest}`. Literal segments are compared with the
    /// normalized request path, so they must be written normalized.
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        let body = s.strip_prefix('/').ok_or(TemplateError::NotAbsolute)?;
        let trailing_slash = body.ends_with('/');
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segs = Vec::new();
        let mut names: Vec<Arc<str>> = Vec::new();
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let inner = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'));
            let seg = match inner {
                Some(inner) if !inner.contains(['{', '}']) => {
                    let (catch_all, name) = match inner.strip_prefix('*') {
                        Some(n) => (true, n),
                        None => (false, inner),
                    };
                    if !valid_name(name) {
                        return Err(TemplateError::BadName(name.to_string()));
                    }
                    if names.iter().any(|n| &**n == name) {
                        return Err(TemplateError::Duplicate(name.to_string()));
                    }
                    let name: Arc<str> = Arc::from(name);
                    names.push(name.clone());
                    if catch_all {
                        if i + 1 != parts.len() || trailing_slash {
                            return Err(TemplateError::CatchAllNotLast(name.to_string()));
                        }
                        Seg::CatchAll(name)
                    } else {
                        Seg::Param(name)
                    }
                }
                _ if part.contains(['{', '}']) => {
                    return Err(TemplateError::PartialSegment(part.to_string()))
                }
                _ => Seg::Literal(part.to_string()),
            };
            segs.push(seg);
        }
        Ok(Self {
            source: s.to_string(),
            segs,
            trailing_slash,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Literal segments: more of them rank first (`/users/me` before `/users/{id}`).
    pub fn literal_segments(&self) -> usize {
        self.segs
            .iter()
            .filter(|s| matches!(s, Seg::Literal(_)))
            .count()
    }

    /// Parameter names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            Seg::Param(n) | Seg::CatchAll(n) => Some(&**n),
            Seg::Literal(_) => None,
        })
    }

    /// Whether every path this template matches starts with the segment prefix `prefix`
    /// (`""` is the root): its leading literal segments cover the prefix.
    pub fn within_prefix(&self, prefix: &str) -> bool {
        let mut lits = String::new();
        for s in &self.segs {
            match s {
                Seg::Literal(l) => {
                    lits.push('/');
                    lits.push_str(l);
                }
                _ => break,
            }
        }
        prefix.is_empty()
            || lits == prefix
            || lits
                .strip_prefix(prefix)
                .is_some_and(|r| r.starts_with('/'))
    }

    /// Matches a normalized path; on success the captured (still percent-encoded) values,
    /// in template order. `{name}` takes one non-empty segment, `{*name}` one or more
    /// characters to the end (slashes included). A trailing `/` must agree with the
    /// template's.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Vec<(Arc<str>, &'p str)>> {
        let mut rest = path.strip_prefix('/')?;
        let mut out = Vec::new();
        for (i, seg) in self.segs.iter().enumerate() {
            if let Seg::CatchAll(n) = seg {
                if rest.is_empty() {
                    return None;
                }
                out.push((n.clone(), rest));
                return Some(out);
            }
            let (part, tail) = match rest.find('/') {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, ""),
            };
            let last = i + 1 == self.segs.len();
            // `tail` empty after a `/`: the path ends with a slash.
            let slash_after = rest.len() > part.len();
            if part.is_empty() || (last && (slash_after != self.trailing_slash || !tail.is_empty()))
            {
                return None;
            }
            match seg {
                Seg::Literal(l) if l == part => {}
                Seg::Param(n) => out.push((n.clone(), part)),
                _ => return None,
            }
            rest = tail;
        }
        // The root template `/` matches only `/`.
        if self.segs.is_empty() && !rest.is_empty() {
            return None;
        }
        Some(out)
    }
}

/// Checks that every `{name}` (or `{*name}`) in a rewrite is one of `names`.
pub fn check_rewrite(rewrite: &str, names: &[&str]) -> Result<(), TemplateError> {
    match placeholders(rewrite).find(|p| !names.contains(p)) {
        Some(unknown) => Err(TemplateError::Unknown(unknown.to_string())),
        None => Ok(()),
    }
}

/// The names of the `{name}` / `{*name}` placeholders of a rewrite, in order.
fn placeholders(rewrite: &str) -> impl Iterator<Item = &str> {
    rewrite.split('{').skip(1).filter_map(|p| {
        let name = p.split_once('}')?.0;
        Some(name.strip_prefix('*').unwrap_or(name))
    })
}

/// Replaces each `{name}` (or `{*name}`) of `rewrite` with its captured value.
pub fn expand(rewrite: &str, params: &[(Arc<str>, String)]) -> String {
    let mut out = String::with_capacity(rewrite.len() + 32);
    let mut rest = rewrite;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.split_once('}') {
            Some((name, tail)) => {
                let name = name.strip_prefix('*').unwrap_or(name);
                if let Some((_, v)) = params.iter().find(|(n, _)| &**n == name) {
                    out.push_str(v);
                }
                rest = tail;
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(t: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(t).unwrap().matches(path).map(|v| {
            v.into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        })
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            list.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn matches_and_captures() {
        assert_eq!(caps("/users/{id}", "/users/42"), pairs(&[("id", "42")]));
        assert_eq!(caps("/users/{id}", "/users/42/x"), None);
        assert_eq!(caps("/users/{id}", "/users/"), None);
        assert_eq!(caps("/users/{id}", "/users"), None);
        assert_eq!(caps("/users/{id}", "/users/42/"), None);
        assert_eq!(caps("/users/{id}/", "/users/42/"), pairs(&[("id", "42")]));
        assert_eq!(
            caps("/u/{a}/p/{b}", "/u/1/p/2"),
            pairs(&[("a", "1"), ("b", "2")])
        );
        assert_eq!(caps("/u/{a}/p/{b}", "/u/1/q/2"), None);
        assert_eq!(
            caps("/files/{*rest}", "/files/a/b/c.txt"),
            pairs(&[("rest", "a/b/c.txt")])
        );
        assert_eq!(caps("/files/{*rest}", "/files/"), None);
        assert_eq!(caps("/files/{*rest}", "/files"), None);
        assert_eq!(
            caps("/p/{id}", "/p/group%2Fproject"),
            pairs(&[("id", "group%2Fproject")])
        );
        assert_eq!(caps("/", "/"), pairs(&[]));
        assert_eq!(caps("/", "/x"), None);
    }

    #[test]
    fn refuses_bad_templates() {
        use TemplateError::*;
        let bad = [
            ("users/{id}", NotAbsolute),
            ("/users/x{id}", PartialSegment("x{id}".into())),
            ("/users/{id", PartialSegment("{id".into())),
            ("/users/{}", BadName("".into())),
            ("/users/{a-b}", BadName("a-b".into())),
            ("/{a}/{a}", Duplicate("a".into())),
            ("/{*a}/b", CatchAllNotLast("a".into())),
        ];
        for (t, e) in bad {
            assert_eq!(PathTemplate::parse(t), Err(e), "{t}");
        }
    }

    #[test]
    fn ranks_and_prefixes() {
        let t = PathTemplate::parse("/api/users/{id}/posts").unwrap();
        assert_eq!(t.literal_segments(), 3);
        assert!(t.within_prefix("/api"));
        assert!(t.within_prefix("/api/users"));
        assert!(t.within_prefix(""));
        assert!(!t.within_prefix("/ap"));
        assert!(!t.within_prefix("/api/users/x"));
        assert_eq!(t.names().collect::<Vec<_>>(), ["id"]);
    }

    #[test]
    fn expands_rewrites() {
        let p = vec![
            (Arc::from("id"), "42".to_string()),
            (Arc::from("rest"), "a/b".to_string()),
        ];
        assert_eq!(expand("/v2/users/{id}", &p), "/v2/users/42");
        assert_eq!(expand("/blob/{*rest}?x", &p), "/blob/a/b?x");
        assert_eq!(expand("/fixed", &p), "/fixed");
        assert!(check_rewrite("/v2/{id}/{*rest}", &["id", "rest"]).is_ok());
        assert_eq!(
            check_rewrite("/v2/{user}", &["id"]),
            Err(TemplateError::Unknown("user".into()))
        );
    }
}
