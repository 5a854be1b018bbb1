//! Shared data and a timer: the root context ticks every 50 ms and counts its ticks in the
//! shared key `ticks`; each request counts itself in `hits` (compare-and-swap), increments
//! the counter metric `wasm_requests` and reads both keys into response headers.
use std::time::Duration;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { metric: 0 }) });
}}

struct Root {
    metric: u32,
}

fn read(ctx: &dyn Context, key: &str) -> (u64, Option<u32>) {
    let (value, cas) = ctx.get_shared_data(key);
    let n = value
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    (n, cas)
}

fn bump(ctx: &dyn Context, key: &str) -> u64 {
    for _ in 0..100 {
        let (n, cas) = read(ctx, key);
        if ctx.set_shared_data(key, Some(&(n + 1).to_le_bytes()), cas).is_ok() {
            return n + 1;
        }
    }
    0
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.set_tick_period(Duration::from_millis(50));
        self.metric = proxy_wasm::hostcalls::define_metric(MetricType::Counter, "wasm_requests").unwrap_or(0);
        true
    }

    fn on_tick(&mut self) {
        bump(self, "ticks");
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Counter { metric: self.metric, hits: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Counter {
    metric: u32,
    hits: u64,
}

impl Context for Counter {}

impl HttpContext for Counter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.hits = bump(self, "hits");
        let _ = proxy_wasm::hostcalls::increment_metric(self.metric, 1);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let (ticks, _) = read(self, "ticks");
        let total = proxy_wasm::hostcalls::get_metric(self.metric).unwrap_or(0);
        self.set_http_response_header("x-hits", Some(&self.hits.to_string()));
        self.set_http_response_header("x-ticks", Some(&ticks.to_string()));
        self.set_http_response_header("x-metric", Some(&total.to_string()));
        Action::Continue
    }
}
