//! Loading the YAML config: read -> parse (with path and line:column) -> validate.

pub mod diff;
pub mod error;
pub mod model;
pub mod positions;
mod strict;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use error::{ConfigError, ConfigErrors, ConfigWarning};
pub use model::GatewayConfig;
use positions::Positions;

/// A parsed and validated config, with what is needed to report on it later.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The config itself.
    pub config: GatewayConfig,
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
    /// Hex SHA-256 of the source text.
    pub hash: String,
    /// Non-fatal findings (shadowed routes, ...).
    pub warnings: Vec<ConfigWarning>,
    /// Field path -> position, to locate errors found later (e.g. when compiling
    /// filters). Built from the source on first use: a config without errors never
    /// needs it, and indexing a large file costs as much as parsing it.
    positions: LazyPositions,
}

/// A position index built from the source text when first asked for.
#[derive(Debug, Clone)]
struct LazyPositions {
    source: Arc<str>,
    index: Arc<OnceLock<Positions>>,
}

impl LazyPositions {
    fn new(source: &str) -> Self {
        Self {
            source: Arc::from(source),
            index: Arc::new(OnceLock::new()),
        }
    }

    fn get(&self) -> &Positions {
        self.index.get_or_init(|| Positions::index(&self.source))
    }
}

impl LoadedConfig {
    /// Whether the source writes the top-level `key` out (e.g. `routes: []`), rather than
    /// leaving it to its default. Builds the position index: call it on rare paths only.
    pub fn writes_key(&self, key: &str) -> bool {
        self.positions.get().locate(key).is_some()
    }

    /// Fills in file and line:column of errors that only carry a field path.
    pub fn locate(&self, mut e: ConfigError) -> ConfigError {
        locate(&mut e, self.file.as_deref(), &self.positions);
        e
    }
}

/// Sets `e`'s file, and its line:column from the index unless it has them already
/// (the index is only built when an error needs it). An error about the document itself
/// (an empty path: an empty file, a root that is no mapping) is at 1:1, so that every
/// error names a place (found by the config fuzz target: the empty file had none).
fn locate(e: &mut ConfigError, file: Option<&Path>, positions: &LazyPositions) {
    e.file = file.map(Path::to_path_buf);
    if e.line.is_none() {
        let found = positions.get().locate(&e.path);
        if let Some((line, col)) = found.or_else(|| e.path.is_empty().then_some((1, 1))) {
            e.line = Some(line);
            e.column = Some(col);
        }
    }
}

/// Reads and loads a config file.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    load_file_with_warnings(path).0
}

/// Like [`load_file`], and the validation warnings even when there are errors (for
/// `gatehouse validate --json`, which reports both).
pub fn load_file_with_warnings(
    path: &Path,
) -> (Result<LoadedConfig, ConfigErrors>, Vec<ConfigWarning>) {
    match read_text(path) {
        Ok(text) => load_str_with_warnings(&text, Some(path)),
        Err(e) => (Err(e), Vec::new()),
    }
}

/// The file as UTF-8 text, or a located refusal.
fn read_text(path: &Path) -> Result<String, ConfigErrors> {
    let refuse = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: Some(path.to_path_buf()),
            ..ConfigError::at("", message)
        }])
    };
    let bytes = std::fs::read(path).map_err(|e| refuse(format!("cannot read config file: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        refuse(format!(
            "the config file is not UTF-8 text (YAML 1.2 section 5.2): invalid byte at offset {at}, line {line}"
        ))
    })
}

/// Loads a config from YAML text; `file` is only used in messages and to resolve
/// relative paths.
pub fn load_str(text: &str, file: Option<&Path>) -> Result<LoadedConfig, ConfigErrors> {
    load_str_with_warnings(text, file).0
}

/// Like [`load_str`], and the validation warnings even when there are errors.
pub fn load_str_with_warnings(
    text: &str,
    file: Option<&Path>,
) -> (Result<LoadedConfig, ConfigErrors>, Vec<ConfigWarning>) {
    let positions = LazyPositions::new(text);
    let config = match parse(text) {
        Ok(c) => c,
        Err(mut e) => {
            locate(&mut e, file, &positions);
            return (Err(ConfigErrors(vec![e])), Vec::new());
        }
    };
    let (errors, warnings) = validate::validate(&config);
    let fix = |mut list: Vec<ConfigError>| {
        for e in &mut list {
            locate(e, file, &positions);
        }
        list
    };
    let warnings = fix(warnings);
    if !errors.is_empty() {
        return (Err(ConfigErrors(fix(errors))), warnings);
    }
    let loaded = LoadedConfig {
        config,
        file: file.map(Path::to_path_buf),
        hash: hash_text(text),
        warnings: warnings.clone(),
        positions,
    };
    (Ok(loaded), warnings)
}

/// Hex SHA-256 of the config text (first 16 hex digits are shown in metrics).
pub fn hash_text(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Deserializes, keeping the path and location of the first syntax or type error.
#[allow(clippy::result_large_err)] // off the request path; one error per load
fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::at("", "the config file is empty")
            .with_hint("at least `listeners` and `routes` are needed; see config/gatehouse.yaml"));
    }
    // On any error, the value path reads the text again: it words and locates every
    // error (errors are rare; the common load pays one pass).
    match one_pass(text) {
        Some(config) => Ok(config),
        None => parse_by_value(text),
    }
}

/// The typed config read straight from the text (no `Value` tree: half the parse time of
/// a large file), with the value path's rules (`strict.rs`); `None` when the text has a
/// merge key or a tag (which only the value path resolves) or any error.
fn one_pass(text: &str) -> Option<GatewayConfig> {
    if text.contains("<<") || text.contains('!') {
        return None;
    }
    let de = strict::Strict::new(serde_yaml::Deserializer::from_str(text));
    // Enums are written as single-key maps (`static: [...]`, `- jwt: {...}`), not YAML tags.
    serde_yaml::with::singleton_map_recursive::deserialize(de).ok()
}

/// The two-pass parse: YAML text to a `Value` (resolving anchors and `<<` merge keys),
/// then to the typed config, keeping the path and location of the first error.
#[allow(clippy::result_large_err)] // off the request path; one error per load
fn parse_by_value(text: &str) -> Result<GatewayConfig, ConfigError> {
    // Positions for type errors come from the position index, by field path (the caller's).
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let line = e
            .location()
            .and_then(|l| text.lines().nth(l.line().saturating_sub(1)));
        let mut err = syntax_error(&strip_location(&e.to_string()), line.unwrap_or(""));
        if let Some(loc) = e.location() {
            err.line = Some(loc.line());
            err.column = Some(loc.column());
        }
        err
    })?;
    value
        .apply_merge()
        .map_err(|e| ConfigError::at("", strip_location(&e.to_string())))?;
    let mut track = serde_path_to_error::Track::new();
    // Enums are written as single-key maps (`static: [...]`, `- jwt: {...}`), not YAML tags.
    let result: Result<GatewayConfig, _> = serde_yaml::with::singleton_map_recursive::deserialize(
        serde_path_to_error::Deserializer::new(value, &mut track),
    );
    result.map_err(|inner| {
        let err = serde_path_to_error::Error::new(track.path(), inner);
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = strip_location(&err.into_inner().to_string());
        // serde_yaml prefixes its own path ("listeners[0]: ..."); we print ours.
        let message = match message.split_once(": ") {
            Some((prefix, rest))
                if !prefix.is_empty() && !prefix.contains(' ') && !prefix.contains('`') =>
            {
                rest.to_string()
            }
            _ => message,
        };
        if let Some(e) = under_indented(&path, &message) {
            return e;
        }
        let hint = unknown_name_hint(&message);
        let mut e = ConfigError::at(path, message);
        e.hint = hint;
        e
    })
}

/// A YAML syntax error in words an operator acts on: libyaml's tab and indentation
/// messages get the rule they break. `line`: the text of the line it points at.
fn syntax_error(message: &str, line: &str) -> ConfigError {
    let indent = &line[..line.len() - line.trim_start().len()];
    if message.contains("tab character") || indent.contains('\t') {
        return ConfigError::at("", "tabs are not allowed in YAML indentation")
            .with_hint("indent with spaces");
    }
    let err = ConfigError::at("", message);
    if message.starts_with("did not find expected")
        || message.contains("mapping values are not allowed")
    {
        return err.with_hint(
            "check this line's indentation: the keys of one block start in the same column, and a list item's keys line up after its `- `",
        );
    }
    err
}

/// An unknown field `x` under a key `k` that is itself a field of the entry above (e.g.
/// `timeouts:` dedented under `upstreams:`, so it reads as an upstream named `timeouts`):
/// the mistake is the key's indentation, one line earlier than serde's error, so the
/// error points at the key and says so.
fn under_indented(path: &str, message: &str) -> Option<ConfigError> {
    let rest = message.strip_prefix("unknown field `")?;
    let (_, expected) = rest.split_once('`')?;
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let (owner, _) = path.rsplit_once('.')?;
    let (outer, key) = owner.rsplit_once('.')?;
    if key.contains('[') || !names.contains(&key) {
        return None;
    }
    Some(
        ConfigError::at(
            owner,
            format!("`{key}` is indented as a new entry of `{outer}`, not as a field of the entry above it"),
        )
        .with_hint(format!("indent `{key}:` and its block to line up with the fields of the entry above")),
    )
}

/// serde_yaml appends " at line X column Y"; we print the location ourselves.
fn strip_location(raw: &str) -> String {
    match raw.find(" at line ") {
        Some(i) => raw[..i].to_string(),
        None => raw.to_string(),
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and variants), suggests
/// the closest expected name (also used for custom filter kinds' config errors).
pub fn unknown_name_hint(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (input, expected) = rest.split_once('`')?;
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    error::did_you_mean(input, names.iter().copied())
}

/// The JSON Schema of the config file, generated from the serde types, with the built-in
/// filter kinds only.
pub fn schema_json() -> String {
    schema_json_with(&gatehouse_filters::FilterKinds::new())
}

/// The JSON Schema of the config file with the custom filter kinds of `kinds`: each one
/// is an entry of `FilterConfig`'s `oneOf`, shaped like a built-in's
/// (`{"api_key": <its config's schema>}`), its config's definitions beside the others.
pub fn schema_json_with(kinds: &gatehouse_filters::FilterKinds) -> String {
    let mut generator = schemars::SchemaGenerator::default();
    let custom = kinds.schemas(&mut generator);
    let mut schema = generator.into_root_schema_for::<GatewayConfig>();
    if !custom.is_empty() {
        // The kind's description is its config type's doc comment (on the definition
        // that the `$ref` names).
        let described: Vec<_> = custom
            .into_iter()
            .map(|(kind, sub)| {
                let def = sub
                    .get("$ref")
                    .and_then(|r| r.as_str())
                    .and_then(|r| r.strip_prefix("#/$defs/"))
                    .and_then(|name| schema.get("$defs").and_then(|d| d.get(name)));
                let description = sub
                    .get("description")
                    .or_else(|| def.and_then(|d| d.get("description")))
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!(format!("The custom `{kind}` filter.")));
                (kind, sub, description)
            })
            .collect();
        let one_of = schema
            .get_mut("$defs")
            .and_then(|d| d.get_mut("FilterConfig"))
            .and_then(|f| f.get_mut("oneOf"))
            .and_then(|o| o.as_array_mut());
        if let Some(one_of) = one_of {
            for (kind, sub, description) in described {
                one_of.push(serde_json::json!({
                    "description": description,
                    "type": "object",
                    "properties": { kind: sub },
                    "additionalProperties": false,
                    "required": [kind],
                }));
            }
        }
    }
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nupstreams:\n  app:\n    discovery:\n      static:\n        - address: 127.0.0.1:3001\nroutes:\n  - name: all\n    match: { path_prefix: / }\n    upstream: app\n";

    #[test]
    fn every_error_names_a_place_even_about_the_whole_document() {
        for text in [
            "",
            "   \n\n",
            "just a string",
            "[1, 2]",
            "a: &x 1\nb: *x\n<<: 5\n",
        ] {
            let Err(errors) = load_str(text, None) else {
                panic!("{text:?} loaded");
            };
            for e in &errors.0 {
                assert!(e.line.is_some() || !e.path.is_empty(), "{text:?}: {e:?}");
            }
        }
        let Err(errors) = load_str("", None) else {
            panic!("empty loaded");
        };
        assert_eq!((errors.0[0].line, errors.0[0].column), (Some(1), Some(1)));
    }

    /// A config of `n` routes, like `benches/tools/reload_latency.py` writes.
    fn routes_config(n: usize) -> String {
        let mut s = String::from(
            "listeners: [ { name: public, address: \"127.0.0.1:8080\" } ]\nupstreams:\n  app: { discovery: { static: [ { address: \"127.0.0.1:9\" } ] } }\nroutes:\n",
        );
        for i in 0..n {
            s += &format!(
                "  - {{ name: r{i}, match: {{ path_prefix: /v1/r{i} }}, upstream: app }}\n"
            );
        }
        s
    }

    #[test]
    fn one_pass_reads_every_shipped_config_as_the_two_pass_parse_does() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |file: &str| std::fs::read_to_string(root.join(file)).unwrap();
        let mut texts = vec![MINIMAL.to_string(), routes_config(50)];
        for file in [
            "config/gatehouse.yaml",
            "config/examples/minimal.yaml",
            "config/examples/container.yaml",
        ] {
            texts.push(read(file));
        }
        for text in &texts {
            let two = parse_by_value(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(one_pass(text), Some(two));
        }
        // The demo's config has merge keys: read by value.
        let demo = read("config/demo.yaml");
        assert_eq!(one_pass(&demo), None);
        assert_eq!(parse(&demo).unwrap(), parse_by_value(&demo).unwrap());
    }

    #[test]
    fn merge_keys_and_duplicate_keys_keep_the_two_pass_reading() {
        let head = "listeners: [ { name: public, address: \"127.0.0.1:8080\" } ]\nroutes: [ { name: r, upstream: app } ]\nupstreams:\n  app: &up { discovery: { static: [ { address: \"127.0.0.1:1\" } ] } }\n";
        let merged = load_str(
            &format!("{head}  b: {{ <<: *up, max_concurrent: 7 }}\n"),
            None,
        );
        let written = load_str(&format!("{head}  b: {{ discovery: {{ static: [ {{ address: \"127.0.0.1:1\" }} ] }}, max_concurrent: 7 }}\n"), None);
        assert_eq!(merged.unwrap().config, written.unwrap().config);
        // A duplicate key, which the streaming reader alone would keep as the last one.
        let dup = MINIMAL.replace(
            "routes:",
            "  app:\n    discovery: { static: [ { address: 127.0.0.1:3002 } ] }\nroutes:",
        );
        let e = &load_str(&dup, None).unwrap_err().0[0];
        assert!(
            e.message.contains("duplicate entry with key \"app\""),
            "{e}"
        );
        assert!(e.line.is_some(), "{e}");
    }

    /// The parse + validate time of a 10,000-route config, one pass against two (issue
    /// 18's reload figure), the fastest of 7 interleaved runs each:
    /// `cargo test -p gatehouse --lib -- --ignored --nocapture parse_time`.
    #[test]
    #[ignore = "prints a timing figure; asserts nothing about time"]
    fn parse_time_of_ten_thousand_routes() {
        use std::time::{Duration, Instant};
        let text = routes_config(10_000);
        let timed = |f: &dyn Fn() -> GatewayConfig| {
            let t = Instant::now();
            let c = f();
            let parsed = t.elapsed();
            let (errors, _) = validate::validate(&c);
            assert!(errors.is_empty());
            (parsed, t.elapsed())
        };
        let mut best = [(Duration::MAX, Duration::MAX); 2];
        for _ in 0..7 {
            for (i, f) in [
                &(|| parse_by_value(&text).unwrap()) as &dyn Fn() -> GatewayConfig,
                &|| parse(&text).unwrap(),
            ]
            .into_iter()
            .enumerate()
            {
                let (p, pv) = timed(f);
                best[i] = (best[i].0.min(p), best[i].1.min(pv));
            }
        }
        let [(p2, pv2), (p1, pv1)] = best;
        eprintln!(
            "PARSE 10000 routes, fastest of 7: parse+validate two-pass {pv2:?} (parse {p2:?}), one-pass {pv1:?} (parse {p1:?}): {:.2}x the time ({:.2}x for the parse alone)",
            pv1.as_secs_f64() / pv2.as_secs_f64(),
            p1.as_secs_f64() / p2.as_secs_f64()
        );
    }

    #[test]
    fn loads_minimal() {
        let c = load_str(MINIMAL, None).unwrap();
        assert_eq!(c.config.routes[0].upstream, "app");
        assert_eq!(c.hash.len(), 64);
    }

    #[test]
    fn unknown_field_has_hint_and_location() {
        let text = MINIMAL.replace("upstream: app", "upstrem: app");
        let errs = load_str(&text, Some(Path::new("gw.yaml"))).unwrap_err();
        let e = &errs.0[0];
        assert!(e.message.starts_with("unknown field `upstrem`"), "{e}");
        assert_eq!(e.hint.as_deref(), Some("did you mean `upstream`?"));
        assert_eq!(e.line, Some(12));
        assert_eq!(e.path, "routes[0].upstrem");
        assert!(e.to_string().starts_with("gw.yaml:12:"), "{e}");
    }

    #[test]
    fn a_dedented_field_points_at_its_key() {
        let text = "listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\nupstreams:\n  app:\n    discovery: { static: [ { address: \"127.0.0.1:1\" } ] }\n  timeouts:\n    connect: 1s\nroutes: []\n";
        let e = &load_str(text, None).unwrap_err().0[0];
        assert_eq!(e.path, "upstreams.timeouts");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.message
                .starts_with("`timeouts` is indented as a new entry of `upstreams`"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_name_the_rule() {
        let tab = "listeners:\n\t- { name: a, address: \"127.0.0.1:8080\" }\n";
        let e = &load_str(tab, None).unwrap_err().0[0];
        assert_eq!(e.message, "tabs are not allowed in YAML indentation");
        assert_eq!(e.line, Some(2));
        let dedent = "routes:\n  - name: r\n    match: { path_prefix: / }\n   upstream: app\n";
        let e = &load_str(dedent, None).unwrap_err().0[0];
        assert_eq!(e.line, Some(4), "{e}");
        assert!(
            e.hint.as_deref().is_some_and(|h| h.contains("indentation")),
            "{e}"
        );
    }

    #[test]
    fn numbers_where_a_unit_is_needed_say_how_to_write_it() {
        let text = MINIMAL.replace("  app:\n", "  app:\n    timeouts: { connect: 1 }\n");
        let e = &load_str(&text, None).unwrap_err().0[0];
        assert_eq!(e.path, "upstreams.app.timeouts.connect");
        assert!(
            e.message
                .contains("write a duration with its unit, such as 1s"),
            "{e}"
        );
        let text = MINIMAL.replace(
            "    upstream: app\n",
            "    upstream: app\n    match: { path_prefix: /, headers: { x-canary: 1 } }\n",
        );
        let text = text.replacen("    match: { path_prefix: / }\n", "", 1);
        let e = &load_str(&text, None).unwrap_err().0[0];
        assert_eq!(e.path, "routes[0].match.headers.x-canary");
        assert!(e.message.contains("write \"1\" in quotes"), "{e}");
    }

    #[test]
    fn sizes_take_units() {
        for (written, bytes) in [
            ("1048576", 1_048_576u64),
            ("10MiB", 10 << 20),
            ("10m", 10 << 20),
            ("512k", 512 << 10),
            ("1g", 1 << 30),
        ] {
            let text = MINIMAL.replace(
                "    upstream: app\n",
                &format!("    upstream: app\n    max_body_bytes: {written}\n"),
            );
            let c = load_str(&text, None).unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(c.config.routes[0].max_body_bytes, Some(bytes), "{written}");
        }
        let text = MINIMAL.replace(
            "    upstream: app\n",
            "    upstream: app\n    max_body_bytes: 10 apples\n",
        );
        let e = &load_str(&text, None).unwrap_err().0[0];
        assert_eq!(e.path, "routes[0].max_body_bytes");
        assert!(e.message.contains("such as 10MiB"), "{e}");
    }

    #[test]
    fn type_error_has_path() {
        let text = MINIMAL.replace(
            "address: 127.0.0.1:3001",
            "address: 127.0.0.1:3001\n          weight: heavy",
        );
        let errs = load_str(&text, None).unwrap_err();
        assert_eq!(errs.0[0].path, "upstreams.app.discovery.static[0].weight");
        assert_eq!(errs.0[0].line, Some(9));
    }
}
