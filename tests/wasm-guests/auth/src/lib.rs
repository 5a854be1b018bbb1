//! Authorization through `dispatch_http_call`, as the SDK's `http_auth_random` example: the
//! request waits while the `authz` upstream is asked `GET /check` with the client's
//! `authorization` header; a 200 lets it through with the answer's `x-auth-user`, anything
//! else (or a failed call) is answered 403 by the filter.
use std::time::Duration;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Auth) });
}}

struct Auth;

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let token = self.get_http_request_header("authorization").unwrap_or_default();
        match self.dispatch_http_call(
            "authz",
            vec![(":method", "GET"), (":path", "/check"), (":authority", "authz"), ("authorization", &token)],
            None,
            vec![],
            Duration::from_secs(5),
        ) {
            Ok(_) => Action::Pause,
            Err(e) => {
                log::warn!("dispatch failed: {e:?}");
                self.send_http_response(503, vec![("x-auth", "unavailable")], Some(b"authz unavailable\n"));
                Action::Pause
            }
        }
    }
}

impl Context for Auth {
    fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        if status == "200" {
            let user = self.get_http_call_response_header("x-auth-user").unwrap_or_default();
            self.set_http_request_header("x-auth-user", Some(&user));
            self.resume_http_request();
            return;
        }
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        log::info!("denied: authz said {status}");
        self.send_http_response(403, vec![("x-auth", "denied"), ("x-authz-status", &status)], Some(&body));
    }
}
