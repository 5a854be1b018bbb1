//! The YAML config loader and validator on any text: it never panics, and every error it
//! reports says where (a line, or a field path to find it by).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The loader takes text; a file that is not UTF-8 is refused before it (tested in
    // the gateway's own tests), so invalid bytes are replaced here to reach the parser.
    let text = String::from_utf8_lossy(data);
    let (result, warnings) = gatehouse::config::load_str_with_warnings(&text, None);
    if let Err(errors) = result {
        assert!(!errors.0.is_empty(), "an error list is never empty");
        for e in &errors.0 {
            assert!(
                e.line.is_some() || !e.path.is_empty(),
                "config error without a location: {e:?}"
            );
            assert!(
                !e.message.is_empty(),
                "config error without a message: {e:?}"
            );
        }
    }
    for w in &warnings {
        assert!(
            w.line.is_some() || !w.path.is_empty(),
            "config warning without a location: {w:?}"
        );
    }
});
