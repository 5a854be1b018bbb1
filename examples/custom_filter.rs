//! A gateway with one custom filter kind, `api_key`: the `gatehouse` command line plus a
//! filter that admits a request only when a header carries one of the keys listed in a
//! file. The README's "Writing a filter" walks through it.
//!
//! ```yaml
//! routes:
//!   - name: api
//!     match: { path_prefix: /api }
//!     upstream: app
//!     filters:
//!       - api_key: { header: x-api-key, keys_file: keys.txt }
//! ```
//!
//! `cargo run --example custom_filter -- run -c gatehouse.yaml` (or `validate`,
//! `route-test`, `schema`, ... as with `gatehouse`). The keys file has one key per line;
//! blank lines and lines starting with `#` are skipped. It is read when the config is
//! compiled, so a reload (`kill -HUP`, `POST /admin/reload`, or an edit of the config
//! file) picks up an edited keys file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use gatehouse::filters::{
    BuildError, Filter, FilterBuildContext, FilterFactory, FilterOutcome, RequestCx, RequestResult,
    Response,
};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};

fn main() -> ExitCode {
    gatehouse::App::builder()
        .filter::<ApiKeyFactory>("api_key")
        .run()
}

/// Admit a request only when a header carries one of the keys listed in a file
/// (like Kong's `key-auth`): 401 `unauthorized` otherwise.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ApiKeyConfig {
    /// Request header that carries the key. Default `x-api-key`.
    #[serde(default = "default_header")]
    header: String,
    /// File with one key per line (blank lines and `#` comments skipped), relative to the
    /// config file. Read when the config is compiled: a reload re-reads it.
    keys_file: PathBuf,
    /// Remove the key's header before the request goes upstream, so the upstream never
    /// sees it (Kong's `hide_credentials`). Default true.
    #[serde(default = "yes")]
    hide_credentials: bool,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn yes() -> bool {
    true
}

/// The filter: the keys' SHA-256 digests only, so that neither the keys nor their
/// lengths can leak through `Debug`, a log line or the comparison's timing.
struct ApiKey {
    header: HeaderName,
    digests: Vec<[u8; 32]>,
    hide_credentials: bool,
}

#[derive(Default)]
struct ApiKeyFactory;

impl FilterFactory for ApiKeyFactory {
    type Config = ApiKeyConfig;

    fn build(
        &self,
        config: ApiKeyConfig,
        cx: &FilterBuildContext<'_>,
    ) -> Result<Arc<dyn Filter>, BuildError> {
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|e| BuildError::at("header", format!("not a header name: {e}")))?;
        let path = cx.resolve(&config.keys_file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            BuildError::at("keys_file", format!("cannot read {}: {e}", path.display()))
        })?;
        let digests: Vec<[u8; 32]> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|key| Sha256::digest(key.as_bytes()).into())
            .collect();
        if digests.is_empty() {
            return Err(BuildError::at(
                "keys_file",
                format!(
                    "{} lists no key: every request would be refused",
                    path.display()
                ),
            ));
        }
        Ok(Arc::new(ApiKey {
            header,
            digests,
            hide_credentials: config.hide_credentials,
        }))
    }
}

/// Whether two digests are equal, in time that does not depend on where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl ApiKey {
    /// Whether `key` is listed: every listed digest is compared (no early exit), and only
    /// digests are compared, so the time tells neither which key nor how long.
    fn admits(&self, key: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.digests
            .iter()
            .fold(false, |found, d| found | same_digest(d, &digest))
    }

    fn refuse(&self, message: &'static str) -> FilterOutcome {
        // RFC 9110 15.5.2: a 401 carries a challenge; Kong's key-auth sends this one.
        FilterOutcome::Respond(
            Response::error(StatusCode::UNAUTHORIZED, "unauthorized", message).with_header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Key realm=\"gatehouse\""),
            ),
        )
    }
}

#[async_trait::async_trait]
impl Filter for ApiKey {
    fn kind(&self) -> &'static str {
        "api_key"
    }

    async fn on_request(&self, req: &mut RequestHeader, _cx: &mut RequestCx<'_>) -> RequestResult {
        let admitted = match req.headers.get(&self.header) {
            None => return Ok(self.refuse("missing API key")),
            Some(v) => self.admits(v.as_bytes()),
        };
        if !admitted {
            // The key itself is never logged, nor sent back.
            return Ok(self.refuse("invalid API key"));
        }
        if self.hide_credentials {
            req.remove_header(&self.header);
        }
        Ok(FilterOutcome::Continue)
    }
}
