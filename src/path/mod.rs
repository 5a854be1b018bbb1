//! Request paths: normalization before routing (RFC 3986 section 6.2.2), path templates
//! (`template`), and the rewrite of the path sent upstream. A leaf that knows no config
//! and no route.

pub mod template;

/// Why a path was refused before routing (answered with a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadEncoding,
    /// `%2F` (an encoded `/`) or `%5C` (an encoded `\`).
    #[error("encoded path separator")]
    EncodedSeparator,
    /// A NUL byte, raw or encoded.
    #[error("NUL byte in path")]
    Nul,
    /// `..` above the root.
    #[error("path escapes the root")]
    EscapesRoot,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes a request path (without its query): percent-encoded unreserved characters
/// are decoded and other escapes upper-cased, `//` is collapsed, `.` and `..` segments are
/// resolved; a path that escapes the root or holds an encoded `/`, `\` or NUL is refused.
/// A trailing `/` is kept.
pub fn normalize_path(raw: &[u8]) -> Result<String, PathError> {
    normalize_path_with(raw, false)
}

/// [`normalize_path`], but with `keep_encoded_slash` an encoded `/` is kept inside its
/// segment as `%2F` (for routes that choose `encoded_slashes: keep | decode`).
pub fn normalize_path_with(raw: &[u8], keep_encoded_slash: bool) -> Result<String, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // 1. decode unreserved escapes, validate the others
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            0 => return Err(PathError::Nul),
            b'%' => {
                let (h, l) = match (
                    raw.get(i + 1).and_then(|b| hex(*b)),
                    raw.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEncoding),
                };
                let v = h * 16 + l;
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' if keep_encoded_slash => decoded.extend_from_slice(b"%2F"),
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    v if is_unreserved(v) => decoded.push(v),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        decoded.extend_from_slice(&[
                            b'%',
                            HEX[(v >> 4) as usize],
                            HEX[(v & 15) as usize],
                        ]);
                    }
                }
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // 2. resolve segments
    let trailing = decoded.len() > 1 && decoded.ends_with(b"/");
    let mut segs: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if segs.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
            }
            s => segs.push(s),
        }
    }
    let last_is_dir = matches!(
        decoded.rsplit(|b| *b == b'/').next(),
        Some(b".") | Some(b"..")
    );
    let mut out = String::with_capacity(decoded.len());
    for s in &segs {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(s));
    }
    if out.is_empty() || ((trailing || last_is_dir) && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(out)
}

/// `/api/` and `/api` are the same segment-boundary prefix; `/` is every path.
pub fn trim_prefix(p: &str) -> &str {
    p.trim_end_matches('/')
}

/// The path sent upstream: `rewrite` replaces it; else `strip` is removed (on a segment
/// boundary) and `add` is prepended.
pub fn rewrite_path(
    path: &str,
    strip: Option<&str>,
    add: Option<&str>,
    rewrite: Option<&str>,
) -> String {
    if let Some(r) = rewrite {
        return r.to_string();
    }
    let mut p = path;
    if let Some(s) = strip.map(trim_prefix) {
        if let Some(rest) = p.strip_prefix(s) {
            if rest.is_empty() || rest.starts_with('/') {
                p = rest;
            }
        }
    }
    let mut out = String::with_capacity(p.len() + add.map_or(0, str::len));
    if let Some(a) = add {
        out.push_str(a.trim_end_matches('/'));
    }
    out.push_str(p);
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        let ok = [
            ("/", "/"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/%61dmin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/a/b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a%20b", "/a%20b"),
            ("/a%7e", "/a~"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("//", "/"),
        ];
        for (input, want) in ok {
            assert_eq!(
                normalize_path(input.as_bytes()).as_deref(),
                Ok(want),
                "{input}"
            );
        }
        let bad = [
            ("a", PathError::NotAbsolute),
            ("/..", PathError::EscapesRoot),
            ("/a/../../b", PathError::EscapesRoot),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%00", PathError::Nul),
            ("/a%zz", PathError::BadEncoding),
            ("/a%2", PathError::BadEncoding),
        ];
        for (input, want) in bad {
            assert_eq!(normalize_path(input.as_bytes()), Err(want), "{input}");
        }
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            rewrite_path("/api/user/login", Some("/api/user"), None, None),
            "/login"
        );
        assert_eq!(
            rewrite_path("/api/user", Some("/api/user/"), None, None),
            "/"
        );
        assert_eq!(
            rewrite_path("/api/users", Some("/api/user"), None, None),
            "/api/users"
        );
        assert_eq!(
            rewrite_path("/api/user/x", Some("/api"), Some("/v2"), None),
            "/v2/user/x"
        );
        assert_eq!(
            rewrite_path("/anything", None, None, Some("/fixed")),
            "/fixed"
        );
    }
}
