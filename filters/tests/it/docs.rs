//! The README's and the doc comments' YAML examples parse and build: they are the
//! user contract (doc comments become the published JSON Schema's descriptions).

use std::sync::Arc;

use gatehouse_filters::{build, FilterConfig, FilterRuntime, BUILT_IN_KINDS};

/// The ```yaml blocks of a text; `doc` strips a leading `/// `.
fn yaml_blocks(text: &str, doc: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let line = if doc {
            match line.trim_start().strip_prefix("///") {
                Some(l) => l.strip_prefix(' ').unwrap_or(l),
                None => continue,
            }
        } else {
            line
        };
        match (&mut cur, line.trim_start()) {
            (None, "```yaml") => cur = Some(String::new()),
            (Some(_), "```") => out.extend(cur.take()),
            (Some(c), _) => {
                c.push_str(line);
                c.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Parses a filter list the way the gateway parses its config (enums as singleton maps).
fn parse(yaml: &str) -> Result<Vec<FilterConfig>, serde_yaml::Error> {
    serde_yaml::with::singleton_map_recursive::deserialize(serde_yaml::Deserializer::from_str(yaml))
}

fn parse_and_build(yaml: &str, from: &str) -> usize {
    let filters = parse(yaml).unwrap_or_else(|e| panic!("{from}: {e}\n{yaml}"));
    let rt = Arc::new(FilterRuntime::default());
    for f in &filters {
        // A wasm example names a module file the reader builds; its config is checked by
        // parsing, and `tests/it/wasm.rs` builds real modules.
        if f.kind() == "wasm" {
            continue;
        }
        if let Err(e) = build(f, "docs", &rt) {
            panic!("{from}: {} does not build: {e}\n{yaml}", f.kind());
        }
    }
    filters.len()
}

#[test]
fn readme_examples_parse() {
    std::env::set_var(
        "GATEHOUSE_JWT_SECRET",
        "readme-secret-readme-secret-readme-secret",
    );
    let readme = include_str!("../../README.md");
    let blocks = yaml_blocks(readme, false);
    assert!(blocks.len() >= 7, "{}", blocks.len());
    let n: usize = blocks.iter().map(|b| parse_and_build(b, "README.md")).sum();
    assert!(n >= 9);
}

#[test]
fn doc_comment_examples_parse() {
    std::env::set_var(
        "GATEHOUSE_JWT_SECRET",
        "readme-secret-readme-secret-readme-secret",
    );
    let sources = [
        ("jwt/mod.rs", include_str!("../../src/jwt/mod.rs")),
        (
            "rate_limit/mod.rs",
            include_str!("../../src/rate_limit/mod.rs"),
        ),
        ("headers.rs", include_str!("../../src/headers.rs")),
        ("cors.rs", include_str!("../../src/cors.rs")),
        ("compression.rs", include_str!("../../src/compression.rs")),
        ("envelope.rs", include_str!("../../src/envelope.rs")),
    ];
    for (name, text) in sources {
        let blocks = yaml_blocks(text, true);
        assert!(
            !blocks.is_empty(),
            "{name} documents its config with a YAML example"
        );
        for b in blocks {
            parse_and_build(&b, name);
        }
    }
    // Key sources are a fragment of the jwt filter: check them inside one.
    let keys = yaml_blocks(include_str!("../../src/jwt/keys.rs"), true);
    assert_eq!(keys.len(), 1);
    let indented: String = keys[0].lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!("- jwt:\n{indented}");
    let filters = parse(&yaml).unwrap();
    assert_eq!(filters.len(), 1);
}

#[test]
fn json_schema_has_every_filter_and_its_docs() {
    let schema = schemars::schema_for!(FilterConfig);
    let text = serde_json::to_string(&schema).unwrap();
    for kind in BUILT_IN_KINDS {
        assert!(
            text.contains(&format!("\"{kind}\"")),
            "{kind} missing from the schema"
        );
    }
    assert!(
        text.contains("key: body.email"),
        "YAML examples are in the descriptions"
    );
}
