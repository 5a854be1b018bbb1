//! Body inspection and rewrite, as the SDK's `http_body` example: a response body that
//! contains "secret" is replaced once complete (its `content-length` removed at the header
//! phase); a request body that contains "forbidden" is answered 400, and in one that contains
//! "rewrite-me" each occurrence is replaced by "rewritten by wasm" (`set_http_request_body`
//! over the whole buffered body).
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Body) });
}}

struct Body;

impl Context for Body {}

impl HttpContext for Body {
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if String::from_utf8_lossy(&body).contains("forbidden") {
            self.send_http_response(400, vec![("x-wasm-body", "refused")], Some(b"forbidden word\n"));
            return Action::Pause;
        }
        let text = String::from_utf8_lossy(&body);
        if text.contains("rewrite-me") {
            let new_body = text.replace("rewrite-me", "rewritten by wasm");
            self.set_http_request_body(0, body_size, new_body.as_bytes());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, body_size) {
            if String::from_utf8_lossy(&body).contains("secret") {
                let new_body = format!("Original message body ({body_size} bytes) redacted.\n");
                self.set_http_response_body(0, body_size, new_body.as_bytes());
            }
        }
        Action::Continue
    }
}
