//! Trailers, both directions: the request's trailers are read and edited in
//! `on_http_request_trailers` (`x-checksum` is echoed as `x-wasm-saw-checksum`, `x-drop-me`
//! removed), the response's in `on_http_response_trailers` (`x-upstream` is echoed as
//! `x-wasm-saw-upstream`, `x-wasm-trailer` added, `x-drop-me` removed). The request header
//! `x-trailer-count` tells how many request trailers the module saw by the response phase.
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Trailers { seen: 0 }) });
}}

struct Trailers {
    seen: usize,
}

impl Context for Trailers {}

impl HttpContext for Trailers {
    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.seen = num_trailers;
        if let Some(sum) = self.get_http_request_trailer("x-checksum") {
            self.add_http_request_trailer("x-wasm-saw-checksum", &sum);
        }
        self.set_http_request_trailer("x-drop-me", None);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-wasm-request-trailers", Some(&self.seen.to_string()));
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        let upstream = self.get_http_response_trailer("x-upstream").unwrap_or_else(|| "-".into());
        self.set_http_response_trailer("x-wasm-saw-upstream", Some(&upstream));
        self.add_http_response_trailer("x-wasm-trailer", "added");
        self.set_http_response_trailer("x-drop-me", None);
        Action::Continue
    }
}
