//! The extension API: filter kinds defined outside this crate, each built by a
//! [`FilterFactory`] from its own serde config and registered by name in [`FilterKinds`].
//!
//! A custom kind is written in YAML exactly like a built-in one
//! (`- api_key: { header: x-api-key, keys_file: keys.txt }`). The config loader keeps an
//! entry whose kind is not built in as a [`CustomFilterConfig`] (its name and its value);
//! when the gateway compiles a config snapshot, the factory registered under that name
//! deserializes the value into its typed `Config` and builds the [`Filter`]. Errors in
//! the value carry the field path inside the filter's config, which the gateway turns
//! into `file:line:column` like the built-ins' errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_http::{RequestHeader, ResponseHeader};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;

use crate::{BuildError, Filter, RequestCx, RequestResult, ResponseCx, ResponseResult};

/// The kinds built into this crate, as written in YAML. A custom kind may not take one
/// of these names.
pub const BUILT_IN_KINDS: [&str; 7] = [
    "jwt",
    "rate_limit",
    "headers",
    "cors",
    "compression",
    "envelope",
    "wasm",
];

/// Builds the runtime [`Filter`] of one custom filter kind from its typed config.
///
/// Register it under a name with [`FilterKinds::register`] (or the gateway's
/// `gatehouse::App::builder().filter::<F>("name")`). The factory itself is created once,
/// when the program starts, and lives as long as the process: state that must survive
/// config reloads (a client, a cache, counters) belongs in it. [`FilterFactory::build`]
/// runs once per configured entry each time a config is compiled: at start, on every
/// reload (file change, SIGHUP, `POST /admin/reload`), and in `gatehouse validate` and
/// `gatehouse route-test`. It runs off the request path, on a blocking thread, so it may
/// read files; it must not block for long (a reload waits for it), and it must not
/// start work that outlives the returned filter: a refused config (another entry's
/// error) simply drops what was built.
///
/// ```
/// use std::sync::Arc;
/// use gatehouse_filters::{BuildError, Filter, FilterBuildContext, FilterFactory};
///
/// /// `- deny_all: { message: "closed" }`
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct DenyAllConfig {
///     /// Text of the 403's message.
///     message: String,
/// }
///
/// struct DenyAll(String);
///
/// #[async_trait::async_trait]
/// impl Filter for DenyAll {
///     fn kind(&self) -> &'static str {
///         "deny_all"
///     }
/// }
///
/// #[derive(Default)]
/// struct DenyAllFactory;
///
/// impl FilterFactory for DenyAllFactory {
///     type Config = DenyAllConfig;
///     fn build(
///         &self,
///         config: DenyAllConfig,
///         _cx: &FilterBuildContext<'_>,
///     ) -> Result<Arc<dyn Filter>, BuildError> {
///         if config.message.is_empty() {
///             return Err(BuildError::at("message", "must not be empty"));
///         }
///         Ok(Arc::new(DenyAll(config.message)))
///     }
/// }
///
/// let mut kinds = gatehouse_filters::FilterKinds::new();
/// kinds.register("deny_all", DenyAllFactory).unwrap();
/// assert!(kinds.contains("deny_all"));
/// ```
pub trait FilterFactory: Send + Sync + 'static {
    /// The filter's config: the value under the kind's key in YAML. Deserialized from
    /// the YAML value (enums are single-key maps, as for the built-ins); use
    /// `#[serde(deny_unknown_fields)]` so that a misspelt field is an error. Its JSON
    /// Schema (doc comments become descriptions) is what `gatehouse schema` shows for
    /// the kind.
    type Config: DeserializeOwned + JsonSchema;

    /// Builds the filter for one configured entry. Called at every compile of a config
    /// that uses the kind (see the trait's doc for when and on which thread).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when the filter cannot run with this config (an unreadable file,
    /// an empty list, ...). Give the field with [`BuildError::at`] so that the error
    /// points at its line; the whole config is then refused (at start: the gateway does
    /// not start; on reload: the running config keeps serving).
    fn build(
        &self,
        config: Self::Config,
        cx: &FilterBuildContext<'_>,
    ) -> Result<Arc<dyn Filter>, BuildError>;
}

/// What a [`FilterFactory`] knows about the entry it builds, besides its config.
#[derive(Debug, Clone, Copy)]
pub struct FilterBuildContext<'a> {
    /// The kind's name as registered and written in YAML (`api_key`).
    pub kind: &'a str,
    /// The route whose filter list holds the entry.
    pub route: &'a str,
    /// The directory of the config file, when the config came from a file: relative
    /// paths in a filter's config are relative to it (see [`FilterBuildContext::resolve`]).
    pub config_dir: Option<&'a Path>,
}

impl FilterBuildContext<'_> {
    /// `path` made relative to the config file's directory (unchanged when absolute, or
    /// when the config did not come from a file), like nginx resolves relative paths
    /// against its prefix rather than the working directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.config_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }
}

/// A configured filter whose kind is not built in: its name and its YAML value, kept
/// until the config is compiled, when the factory registered under `kind` builds it (or
/// an unknown kind is reported).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomFilterConfig {
    /// The kind as written in YAML.
    pub kind: String,
    /// The value under the kind's key.
    pub config: serde_json::Value,
}

/// Why a filter kind could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    /// The name is a built-in kind's.
    #[error("filter kind `{0}` is built in; register the custom kind under another name")]
    BuiltIn(&'static str),
    /// The name was registered before.
    #[error("filter kind `{0}` is registered twice")]
    Duplicate(&'static str),
    /// The name is not snake_case ASCII (`[a-z][a-z0-9_]*`): it is a YAML key and the
    /// `filter` label of `gatehouse_filter_duration_seconds`.
    #[error("filter kind `{0}` is not a valid name: use lower-case letters, digits and `_`, starting with a letter")]
    InvalidName(&'static str),
}

/// A factory behind its typed config.
trait DynFactory: Send + Sync {
    fn build(
        &self,
        config: &serde_json::Value,
        cx: &FilterBuildContext<'_>,
    ) -> Result<Arc<dyn Filter>, BuildError>;
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema;
}

struct Typed<F>(F);

impl<F: FilterFactory> DynFactory for Typed<F> {
    fn build(
        &self,
        config: &serde_json::Value,
        cx: &FilterBuildContext<'_>,
    ) -> Result<Arc<dyn Filter>, BuildError> {
        let typed: F::Config = serde_path_to_error::deserialize(config).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            if path == "." {
                BuildError::new(message)
            } else {
                BuildError::at(path, message)
            }
        })?;
        self.0.build(typed, cx)
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<F::Config>()
    }
}

/// The custom filter kinds a gateway knows, by name, beside the built-in ones
/// ([`BUILT_IN_KINDS`]). Made once at start and kept in the [`crate::FilterRuntime`].
#[derive(Clone, Default)]
pub struct FilterKinds {
    custom: BTreeMap<&'static str, Arc<dyn DynFactory>>,
}

impl std::fmt::Debug for FilterKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.custom.keys()).finish()
    }
}

impl FilterKinds {
    /// The built-in kinds only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `factory` under `kind`, the key its entries use in YAML.
    ///
    /// # Errors
    ///
    /// [`KindError`] when `kind` is a built-in's name, was registered before, or is not
    /// snake_case ASCII.
    pub fn register<F: FilterFactory>(
        &mut self,
        kind: &'static str,
        factory: F,
    ) -> Result<(), KindError> {
        let valid = kind.starts_with(|c: char| c.is_ascii_lowercase())
            && kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(KindError::InvalidName(kind));
        }
        if BUILT_IN_KINDS.contains(&kind) {
            return Err(KindError::BuiltIn(kind));
        }
        if self.custom.contains_key(kind) {
            return Err(KindError::Duplicate(kind));
        }
        self.custom.insert(kind, Arc::new(Typed(factory)));
        Ok(())
    }

    /// Whether `kind` is built in or registered.
    pub fn contains(&self, kind: &str) -> bool {
        BUILT_IN_KINDS.contains(&kind) || self.custom.contains_key(kind)
    }

    /// Every known kind: the built-in ones, then the custom ones in name order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        BUILT_IN_KINDS
            .iter()
            .copied()
            .chain(self.custom.keys().copied())
    }

    /// The JSON Schema of each custom kind's config (a `$ref` into `generator`'s
    /// definitions), in name order, for `gatehouse schema`.
    pub fn schemas(&self, generator: &mut SchemaGenerator) -> Vec<(&'static str, Schema)> {
        self.custom
            .iter()
            .map(|(kind, f)| (*kind, f.schema(generator)))
            .collect()
    }

    /// Builds a custom entry with the factory registered under its kind. The filter is
    /// labelled with that name in metrics and logs, whatever its own
    /// [`Filter::kind`] says.
    pub(crate) fn build(
        &self,
        cfg: &CustomFilterConfig,
        cx: &FilterBuildContext<'_>,
    ) -> Result<Arc<dyn Filter>, BuildError> {
        let Some((kind, factory)) = self.custom.get_key_value(cfg.kind.as_str()) else {
            return Err(BuildError::new(format!(
                "unknown filter kind `{}`; known kinds: {}",
                cfg.kind,
                self.names().collect::<Vec<_>>().join(", ")
            )));
        };
        let inner = factory.build(&cfg.config, cx)?;
        Ok(Arc::new(Named { kind, inner }))
    }
}

/// A custom filter under its registered name.
struct Named {
    kind: &'static str,
    inner: Arc<dyn Filter>,
}

#[async_trait]
impl Filter for Named {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn body_prefix_limit(&self) -> Option<usize> {
        self.inner.body_prefix_limit()
    }

    async fn on_request(&self, req: &mut RequestHeader, cx: &mut RequestCx<'_>) -> RequestResult {
        self.inner.on_request(req, cx).await
    }

    fn on_response(&self, resp: &mut ResponseHeader, cx: &ResponseCx<'_>) -> ResponseResult {
        self.inner.on_response(resp, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct EchoConfig {
        header: String,
        #[serde(default)]
        limit: u32,
    }

    struct Echo(u32);

    #[async_trait]
    impl Filter for Echo {
        fn kind(&self) -> &'static str {
            "something_else"
        }

        fn body_prefix_limit(&self) -> Option<usize> {
            Some(self.0 as usize)
        }
    }

    #[derive(Default)]
    struct EchoFactory;

    impl FilterFactory for EchoFactory {
        type Config = EchoConfig;
        fn build(
            &self,
            config: EchoConfig,
            _cx: &FilterBuildContext<'_>,
        ) -> Result<Arc<dyn Filter>, BuildError> {
            if config.header.is_empty() {
                return Err(BuildError::at("header", "must not be empty"));
            }
            Ok(Arc::new(Echo(config.limit)))
        }
    }

    fn cx() -> FilterBuildContext<'static> {
        FilterBuildContext {
            kind: "echo",
            route: "r",
            config_dir: Some(Path::new("/etc/gatehouse")),
        }
    }

    fn entry(kind: &str, config: serde_json::Value) -> CustomFilterConfig {
        CustomFilterConfig {
            kind: kind.into(),
            config,
        }
    }

    #[test]
    fn names_are_checked_at_registration() {
        let mut k = FilterKinds::new();
        assert_eq!(k.register("echo", EchoFactory), Ok(()));
        assert_eq!(
            k.register("echo", EchoFactory),
            Err(KindError::Duplicate("echo"))
        );
        assert_eq!(
            k.register("jwt", EchoFactory),
            Err(KindError::BuiltIn("jwt"))
        );
        for bad in ["", "Echo", "1echo", "echo-2", "échо"] {
            assert_eq!(
                k.register(bad, EchoFactory),
                Err(KindError::InvalidName(bad))
            );
        }
        assert!(k.contains("echo") && k.contains("rate_limit") && !k.contains("nope"));
        assert_eq!(k.names().last(), Some("echo"));
    }

    #[test]
    fn builds_under_the_registered_name() {
        let mut k = FilterKinds::new();
        k.register("echo", EchoFactory).unwrap();
        let f = k
            .build(&entry("echo", serde_json::json!({"header": "x"})), &cx())
            .unwrap();
        assert_eq!(f.kind(), "echo", "the registered name labels the filter");
        let f = k
            .build(
                &entry("echo", serde_json::json!({"header": "x", "limit": 64})),
                &cx(),
            )
            .unwrap();
        assert_eq!(f.body_prefix_limit(), Some(64), "the wrapper delegates");
    }

    #[test]
    fn config_errors_carry_the_field_path() {
        let mut k = FilterKinds::new();
        k.register("echo", EchoFactory).unwrap();
        let build = |v| k.build(&entry("echo", v), &cx()).err().unwrap();
        let e = build(serde_json::json!({"header": "x", "limit": "many"}));
        assert_eq!(e.path.as_deref(), Some("limit"));
        assert!(e.message.contains("invalid type"), "{e}");
        let e = build(serde_json::json!({"hedaer": "x"}));
        assert_eq!(e.path.as_deref(), Some("hedaer"));
        assert!(e.message.starts_with("unknown field `hedaer`"), "{e}");
        let e = build(serde_json::json!({}));
        assert_eq!(e.path, None);
        assert!(e.message.contains("missing field `header`"), "{e}");
        let e = build(serde_json::json!({"header": ""}));
        assert_eq!(
            (e.path.as_deref(), e.message.as_str()),
            (Some("header"), "must not be empty")
        );
    }

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        let mut k = FilterKinds::new();
        k.register("echo", EchoFactory).unwrap();
        let e = k
            .build(&entry("ecko", serde_json::json!({})), &cx())
            .err()
            .unwrap();
        assert_eq!(
            e.message,
            "unknown filter kind `ecko`; known kinds: jwt, rate_limit, headers, cors, compression, envelope, wasm, echo"
        );
    }

    #[test]
    fn a_custom_entry_reads_and_writes_as_a_single_key_map() {
        use crate::FilterConfig;
        let v = serde_json::json!({"api_key": {"keys_file": "k"}});
        let c: FilterConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            c,
            FilterConfig::Custom(entry("api_key", serde_json::json!({"keys_file": "k"})))
        );
        assert_eq!(c.kind(), "api_key");
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            v,
            "as /admin/config shows it"
        );
        let h: FilterConfig = serde_json::from_value(serde_json::json!({"headers": {}})).unwrap();
        assert!(matches!(h, FilterConfig::Headers(_)), "{h:?}");
        assert!(serde_json::to_value(&h).unwrap()["headers"].is_object());
        for bad in [serde_json::json!({"a": 1, "b": 2}), serde_json::json!({})] {
            assert!(
                serde_json::from_value::<FilterConfig>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        assert_eq!(
            cx().resolve(Path::new("keys.txt")),
            Path::new("/etc/gatehouse/keys.txt")
        );
        assert_eq!(cx().resolve(Path::new("/k")), Path::new("/k"));
    }
}
