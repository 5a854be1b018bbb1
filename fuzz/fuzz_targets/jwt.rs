//! The JWT filter on any token: no panic, never a 500, only 401 for a token the key did
//! not sign; tokens signed with the configured HS256 key reach the header and claims
//! checks with any JSON (or non-JSON) header and claims the fuzzer makes.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gatehouse_filters::{build, Filter, FilterConfig, FilterOutcome, FilterRuntime, RequestCx};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;

const SECRET: &str = "fuzz-secret-0123456789abcdef0123456789";

struct Env {
    rt: tokio::runtime::Runtime,
    filter: Arc<dyn Filter>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let registry = prometheus::Registry::new();
        let runtime = match FilterRuntime::new(None, &registry) {
            Ok(r) => Arc::new(r),
            Err(e) => panic!("filter runtime: {e}"),
        };
        let cfg: FilterConfig = match serde_json::from_value(serde_json::json!({
            "jwt": {
                "issuer": "gatehouse",
                "audience": "gatehouse",
                "keys": [ { "secret": SECRET, "algorithms": ["HS256"] } ],
                "required_claims": ["sub"],
                "forward_claims": { "sub": "x-user-id", "role": "x-user-role" },
                "token_cache_size": 0
            }
        })) {
            Ok(c) => c,
            Err(e) => panic!("jwt config: {e}"),
        };
        let filter = match build(&cfg, "fuzz", &runtime) {
            Ok(f) => f,
            Err(e) => panic!("jwt filter: {e}"),
        };
        Env { rt, filter }
    })
}

#[derive(Debug, Arbitrary)]
enum Input {
    /// Any bytes as the `Authorization: Bearer` token.
    Raw(Vec<u8>),
    /// A token signed with the filter's key: any header and claims bytes.
    Signed { header: Vec<u8>, claims: Vec<u8> },
    /// A token signed with the key whose header is `{"alg":"HS256"}` and claims are
    /// the given JSON text wrapped with a valid `iss`, `aud`, `sub` and `exp` when asked.
    Claims { claims: String, wrap: bool },
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()) else {
        panic!("hmac key");
    };
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

fuzz_target!(|input: Input| {
    let (token, signed) = match input {
        Input::Raw(b) => (b, false),
        Input::Signed { header, claims } => (sign(&header, &claims).into_bytes(), true),
        Input::Claims { claims, wrap } => {
            let body = if wrap {
                format!(
                    "{{\"iss\":\"gatehouse\",\"aud\":\"gatehouse\",\"sub\":\"u\",\"exp\":4102444800,\"x\":{claims}}}"
                )
            } else {
                claims
            };
            (
                sign(br#"{"alg":"HS256","typ":"JWT"}"#, body.as_bytes()).into_bytes(),
                true,
            )
        }
    };
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(&token);
    let Ok(mut req) = RequestHeader::build("GET", b"/", None) else {
        panic!("request");
    };
    if req
        .insert_header("authorization", value.as_slice())
        .is_err()
    {
        return; // not a valid header value: never reaches the filter
    }
    let env = env();
    let mut cx = RequestCx {
        route: "fuzz",
        client_ip: None,
        request_id: "fuzz",
        body_prefix: None,
        body: None,
        claims: None,
        response_headers: Vec::new(),
        state: &Default::default(),
    };
    let out = env.rt.block_on(env.filter.on_request(&mut req, &mut cx));
    match out {
        Ok(FilterOutcome::Continue) => {
            assert!(signed, "an unsigned token was accepted");
            let claims = cx.claims.as_ref().map(|c| c.as_ref().clone());
            let Some(serde_json::Value::Object(c)) = claims else {
                panic!("accepted without object claims: {claims:?}");
            };
            assert_eq!(c.get("iss").and_then(|v| v.as_str()), Some("gatehouse"));
            assert!(c.contains_key("sub"), "accepted without sub");
            assert!(c.contains_key("exp"), "accepted without exp");
        }
        Ok(FilterOutcome::Respond(r)) => {
            assert!(
                r.status.as_u16() == 401 || r.status.as_u16() == 403,
                "status {}",
                r.status
            );
        }
        Err(e) => panic!("filter error (a 500) for a token: {e}"),
    }
});
