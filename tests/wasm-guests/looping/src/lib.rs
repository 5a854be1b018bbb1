//! A broken filter: with `x-mode: loop` it spins forever in the request-header phase, with
//! `x-mode: alloc` it grows its memory without bound; otherwise it lets requests through.
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Looping) });
}}

struct Looping;

impl Context for Looping {}

impl HttpContext for Looping {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        match self.get_http_request_header("x-mode").as_deref() {
            Some("loop") => {
                let mut i: u64 = 1;
                while std::hint::black_box(i) != 0 {
                    i = i.wrapping_add(std::hint::black_box(2));
                }
            }
            Some("alloc") => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            _ => {}
        }
        Action::Continue
    }
}
