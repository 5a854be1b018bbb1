//! Several `dispatch_http_call`s in flight at once, and one from the response phase: the
//! request phase asks the `svc` upstream `GET /a` and `GET /b` together and pauses until both
//! answered (each answer's body goes upstream as `x-call-a` / `x-call-b`); the response phase
//! asks `GET /c` and pauses until it answered (its body goes downstream as `x-call-c`).
use std::time::Duration;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Calls::default()) });
}}

#[derive(Default)]
struct Calls {
    /// (token, header to set) of the calls not answered yet.
    pending: Vec<(u32, &'static str)>,
    in_response: bool,
}

impl Calls {
    fn call(&mut self, path: &str, header: &'static str) -> bool {
        match self.dispatch_http_call(
            "svc",
            vec![(":method", "GET"), (":path", path), (":authority", "svc")],
            None,
            vec![],
            Duration::from_secs(10),
        ) {
            Ok(token) => {
                self.pending.push((token, header));
                true
            }
            Err(e) => {
                log::warn!("dispatch {path} failed: {e:?}");
                false
            }
        }
    }
}

impl HttpContext for Calls {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.call("/a", "x-call-a") && self.call("/b", "x-call-b") {
            return Action::Pause;
        }
        self.send_http_response(503, vec![], Some(b"dispatch failed\n"));
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.in_response = true;
        if self.call("/c", "x-call-c") {
            Action::Pause
        } else {
            self.set_http_response_header("x-call-c", Some("dispatch failed"));
            Action::Continue
        }
    }
}

impl Context for Calls {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some(at) = self.pending.iter().position(|(t, _)| *t == token) else {
            log::warn!("answer for unknown token {token}");
            return;
        };
        let (_, header) = self.pending.remove(at);
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        let value = format!("{status} {}", String::from_utf8_lossy(&body));
        if self.in_response {
            self.set_http_response_header(header, Some(&value));
            self.resume_http_response();
        } else {
            self.set_http_request_header(header, Some(&value));
            if self.pending.is_empty() {
                self.resume_http_request();
            }
        }
    }
}
