//! The load harness's wasm filters: with an empty plugin configuration it does nothing (the
//! cost of the host alone); with a header name it adds that request header (`x-bench: 1`).
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { header: None }) });
}}

struct Root {
    header: Option<String>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.header = self
            .get_plugin_configuration()
            .and_then(|c| String::from_utf8(c).ok())
            .filter(|c| !c.is_empty());
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Bench { header: self.header.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Bench {
    header: Option<String>,
}

impl Context for Bench {}

impl HttpContext for Bench {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(h) = &self.header {
            self.set_http_request_header(h, Some("1"));
        }
        Action::Continue
    }
}
