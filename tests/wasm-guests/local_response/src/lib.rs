//! A local response: `/wasm/hello` is answered by the filter itself (200, a body and a
//! header); a request with `x-deny` is answered 403; others go upstream.
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Local) });
}}

struct Local;

impl Context for Local {}

impl HttpContext for Local {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path.starts_with("/wasm/hello") {
            self.send_http_response(
                200,
                vec![("content-type", "text/plain"), ("x-wasm", "local")],
                Some(b"hello from wasm\n"),
            );
            return Action::Pause;
        }
        if self.get_http_request_header("x-deny").is_some() {
            self.send_http_response(403, vec![("x-wasm", "denied")], Some(b"Access forbidden.\n"));
            return Action::Pause;
        }
        Action::Continue
    }
}
