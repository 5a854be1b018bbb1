//! Loading the YAML config: read -> parse (with path and line:column) -> validate.

pub mod error;
pub mod model;
pub mod positions;
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
    /// Fills in file and line:column of errors that only carry a field path.
    pub fn locate(&self, mut e: ConfigError) -> ConfigError {
        locate(&mut e, self.file.as_deref(), &self.positions);
        e
    }
}

/// Sets `e`'s file, and its line:column from the index unless it has them already
/// (the index is only built when an error needs it).
fn locate(e: &mut ConfigError, file: Option<&Path>, positions: &LazyPositions) {
    e.file = file.map(Path::to_path_buf);
    if e.line.is_none() {
        if let Some((line, col)) = positions.get().locate(&e.path) {
            e.line = Some(line);
            e.column = Some(col);
        }
    }
}

/// Reads and loads a config file.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let refuse = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: Some(path.to_path_buf()),
            ..ConfigError::at("", message)
        }])
    };
    let bytes = std::fs::read(path).map_err(|e| refuse(format!("cannot read config file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        refuse(format!(
            "the config file is not UTF-8 text (YAML 1.2 section 5.2): invalid byte at offset {at}, line {line}"
        ))
    })?;
    load_str(&text, Some(path))
}

/// Loads a config from YAML text; `file` is only used in messages and to resolve
/// relative paths.
pub fn load_str(text: &str, file: Option<&Path>) -> Result<LoadedConfig, ConfigErrors> {
    let positions = LazyPositions::new(text);
    let config = parse(text).map_err(|mut e| {
        locate(&mut e, file, &positions);
        ConfigErrors(vec![e])
    })?;
    let (errors, warnings) = validate::validate(&config);
    let fix = |mut list: Vec<ConfigError>| {
        for e in &mut list {
            locate(e, file, &positions);
        }
        list
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(fix(errors)));
    }
    Ok(LoadedConfig {
        config,
        file: file.map(Path::to_path_buf),
        hash: hash_text(text),
        warnings: fix(warnings),
        positions,
    })
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
    // Parse to a value first: that resolves anchors and `<<` merge keys; positions for
    // type errors then come from the position index, by field path (the caller's).
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let mut err = ConfigError::at("", strip_location(&e.to_string()));
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
        let hint = unknown_name_hint(&message);
        let mut e = ConfigError::at(path, message);
        e.hint = hint;
        e
    })
}

/// serde_yaml appends " at line X column Y"; we print the location ourselves.
fn strip_location(raw: &str) -> String {
    match raw.find(" at line ") {
        Some(i) => raw[..i].to_string(),
        None => raw.to_string(),
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and variants), suggests
/// the closest expected name.
fn unknown_name_hint(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (input, expected) = rest.split_once('`')?;
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    error::did_you_mean(input, names.iter().copied())
}

/// The JSON Schema of the config file, generated from the serde types.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(GatewayConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nupstreams:\n  app:\n    discovery:\n      static:\n        - address: 127.0.0.1:3001\nroutes:\n  - name: all\n    match: { path_prefix: / }\n    upstream: app\n";

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
