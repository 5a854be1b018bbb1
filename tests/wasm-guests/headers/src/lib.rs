//! Header manipulation, as the SDK's `http_headers` example: the plugin configuration names a
//! request header to add; the request's path, method and client address (properties) go
//! upstream as headers; `x-remove-me` is removed; the response gets `x-wasm-response`, and
//! the request's `user-agent`, path and count of `x-wasm-added` as read in the response phase.
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { value: String::new() }) });
}}

struct Root {
    value: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match String::from_utf8(config) {
            Ok(v) if !v.is_empty() => {
                self.value = v;
                true
            }
            // An empty configuration is refused: the host must report it as a config error.
            _ => false,
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers { context_id, value: self.value.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Headers {
    context_id: u32,
    value: String,
}

impl Context for Headers {}

fn text(b: Option<Vec<u8>>) -> String {
    b.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|| "-".into())
}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let count = self.get_http_request_headers().len();
        log::info!("#{} request with {count} headers", self.context_id);
        self.set_http_request_header("x-wasm-config", Some(&self.value));
        self.add_http_request_header("x-wasm-added", "one");
        self.add_http_request_header("x-wasm-added", "two");
        self.set_http_request_header("x-remove-me", None);
        self.set_http_request_header("x-wasm-header-count", Some(&count.to_string()));
        let path = text(self.get_property(vec!["request", "path"]));
        let method = text(self.get_property(vec!["request", "method"]));
        let source = text(self.get_property(vec!["source", "address"]));
        let host = text(self.get_property(vec!["request", "host"]));
        let id = text(self.get_property(vec!["request", "id"]));
        let root = text(self.get_property(vec!["plugin_root_id"]));
        self.set_http_request_header("x-wasm-path", Some(&path));
        self.set_http_request_header("x-wasm-method", Some(&method));
        self.set_http_request_header("x-wasm-source", Some(&source));
        self.set_http_request_header("x-wasm-host", Some(&host));
        self.set_http_request_header("x-wasm-request-id", Some(&id));
        self.set_http_request_header("x-wasm-root-id", Some(&root));
        if let Some(ua) = self.get_http_request_header("user-agent") {
            self.set_http_request_header("x-wasm-user-agent", Some(&ua));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.add_http_response_header("x-wasm-response", &format!("saw {status}"));
        self.set_http_response_header("x-upstream-secret", None);
        // The request stays readable in the response phase, as in Envoy.
        let ua = self.get_http_request_header("user-agent").unwrap_or_else(|| "-".into());
        let path = text(self.get_property(vec!["request", "path"]));
        let added = self.get_http_request_headers().iter().filter(|(k, _)| k == "x-wasm-added").count();
        self.set_http_response_header("x-wasm-request-ua", Some(&ua));
        self.set_http_response_header("x-wasm-request-path", Some(&path));
        self.set_http_response_header("x-wasm-request-added", Some(&added.to_string()));
        Action::Continue
    }
}
