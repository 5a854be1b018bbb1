//! The path normalizer on any bytes: no panic; a normalized path normalizes to itself;
//! it starts with `/`, never holds a `.` or `..` segment, an empty segment, a NUL, or an
//! encoded `/` or `\` unless encoded slashes are kept (then only as upper-case `%2F`).
#![no_main]

use gatehouse::path::{normalize_path, normalize_path_with};
use libfuzzer_sys::fuzz_target;

fn check(out: &str, keep_encoded_slash: bool) {
    assert!(out.starts_with('/'), "{out:?}");
    let inner = out.trim_end_matches('/');
    for seg in inner.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "dot segment in {out:?}");
        assert!(!seg.is_empty(), "empty segment in {out:?}");
    }
    assert!(!out.contains('\0'), "NUL in {out:?}");
    let upper = out.to_ascii_uppercase();
    assert!(!upper.contains("%00"), "encoded NUL in {out:?}");
    assert!(!upper.contains("%5C"), "encoded backslash in {out:?}");
    if keep_encoded_slash {
        assert!(!out.contains("%2f"), "lower-case encoded slash in {out:?}");
    } else {
        assert!(!upper.contains("%2F"), "encoded slash in {out:?}");
    }
    // Encoded unreserved characters are always decoded, so `%2E%2E` cannot hide a `..`.
    assert!(!upper.contains("%2E"), "encoded dot in {out:?}");
}

fuzz_target!(|data: &[u8]| {
    for keep in [false, true] {
        if let Ok(once) = normalize_path_with(data, keep) {
            check(&once, keep);
            let twice = normalize_path_with(once.as_bytes(), keep);
            assert_eq!(twice.as_deref(), Ok(once.as_str()), "not idempotent");
        }
    }
    // Without keeping encoded slashes, a refusal is the same either way: keeping them
    // only ever accepts more.
    if normalize_path_with(data, true).is_err() {
        assert!(normalize_path(data).is_err());
    }
});
