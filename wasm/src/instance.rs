//! One instance of a plugin's module in its own store: the guest's exported callbacks, each
//! call bounded in time (epoch deadline) and the memory bounded by a limiter. A call that
//! traps poisons the instance (its thread starts a new one for the next stream) and is
//! counted in `gatehouse_wasm_traps_total{module, reason}`.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{ResourceLimiter, Store, Trap, TypedFunc};

use crate::plugin::{Plugin, PluginShared};
use crate::state::{HostState, Stream};

/// The root context's id; streams get 2 and up.
pub(crate) const ROOT: u32 = 1;

/// Why a call into the guest failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It ran past the call time limit (`vm_config.call_timeout`).
    Timeout,
    /// It asked for more memory than `vm_config.memory_limit`.
    Memory,
    /// It trapped (a panic in the guest, an unreachable, a bad memory access).
    Trap,
    /// It returned false from `proxy_on_vm_start` or `proxy_on_configure`.
    Refused,
}

impl Failure {
    /// As in the metric's `reason` label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Memory => "memory",
            Failure::Trap => "trap",
            Failure::Refused => "refused",
        }
    }
}

/// A failed call into a guest.
#[derive(Debug, Clone, thiserror::Error)]
#[error("wasm module {module}: {message}")]
pub struct GuestError {
    /// The module's name.
    pub module: String,
    /// What kind of failure.
    pub failure: Failure,
    /// Details (wasmtime's trap message).
    pub message: String,
}

/// Refuses memory growth past the plugin's limit, and remembers that it did.
pub(crate) struct Limiter {
    max: usize,
    pub denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.max;
        self.denied |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

type Stream3 = TypedFunc<(u32, u32, u32), u32>;
type Stream2 = TypedFunc<(u32, u32), u32>;
type CallResponse = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The guest's callbacks (those a module does not export are skipped as `Continue`).
pub(crate) struct Exports {
    pub context_create: TypedFunc<(u32, u32), ()>,
    pub request_headers: Option<Stream3>,
    pub request_body: Option<Stream3>,
    pub request_trailers: Option<Stream2>,
    pub response_headers: Option<Stream3>,
    pub response_body: Option<Stream3>,
    pub response_trailers: Option<Stream2>,
    pub http_call_response: Option<CallResponse>,
    pub done: Option<TypedFunc<u32, u32>>,
    pub log: Option<TypedFunc<u32, ()>>,
    pub delete: Option<TypedFunc<u32, ()>>,
    pub tick: Option<TypedFunc<u32, ()>>,
}

/// Most per-stream states an instance keeps for reuse (more concurrent streams make more;
/// the extra ones are dropped when their stream ends).
const MAX_SPARE: usize = 256;

/// An instance and its store.
pub(crate) struct Instance {
    pub store: Store<HostState>,
    pub ex: Exports,
    next_context: u32,
    pub poisoned: bool,
    /// States of ended streams, reused so that opening a stream allocates nothing.
    #[allow(clippy::vec_box)]
    // boxed: a stream moves its state in and out of the store by pointer
    spare: Vec<Box<Stream>>,
}

impl Instance {
    /// Instantiates the module and starts its root context: `_initialize`, then
    /// `proxy_on_context_create(root)`, `proxy_on_vm_start`, `proxy_on_configure`.
    pub(crate) fn new(plugin: &Arc<Plugin>) -> Result<Self, GuestError> {
        let shared = plugin.shared.clone();
        let fail = |failure: Failure, message: String| GuestError {
            module: shared.name.clone(),
            failure,
            message,
        };
        let stream = Stream::new().map_err(|e| fail(Failure::Trap, e))?;
        let state = HostState {
            limiter: Limiter {
                max: shared.memory_limit,
                denied: false,
            },
            plugin: shared.clone(),
            memory: None,
            alloc: None,
            stream: Box::new(stream),
            in_root: true,
            tick_period_ms: 0,
            next_token: 0,
            metrics: Default::default(),
        };
        let mut store = Store::new(plugin.pre.module().engine(), state);
        store.limiter(|s| &mut s.limiter);
        // Starting may take longer than a request's call (a large module's constructors).
        store.set_epoch_deadline(shared.deadline_ticks.saturating_mul(10));
        shared.runtime.metrics.instances.inc();
        let inst = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&shared, &store, e))?;
        let memory = inst.get_memory(&mut store, "memory");
        let alloc = inst
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| inst.get_typed_func::<u32, u32>(&mut store, "malloc"))
            .ok();
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        macro_rules! opt {
            ($name:literal) => {
                inst.get_typed_func(&mut store, $name).ok()
            };
        }
        let context_create = inst
            .get_typed_func::<(u32, u32), ()>(&mut store, "proxy_on_context_create")
            .map_err(|e| {
                fail(
                    Failure::Trap,
                    format!("missing export proxy_on_context_create: {e:#}"),
                )
            })?;
        let ex = Exports {
            context_create,
            request_headers: opt!("proxy_on_request_headers"),
            request_body: opt!("proxy_on_request_body"),
            request_trailers: opt!("proxy_on_request_trailers"),
            response_headers: opt!("proxy_on_response_headers"),
            response_body: opt!("proxy_on_response_body"),
            response_trailers: opt!("proxy_on_response_trailers"),
            http_call_response: opt!("proxy_on_http_call_response"),
            done: opt!("proxy_on_done"),
            log: opt!("proxy_on_log"),
            delete: opt!("proxy_on_delete"),
            tick: opt!("proxy_on_tick"),
        };
        let vm_start: Option<TypedFunc<(u32, u32), u32>> = opt!("proxy_on_vm_start");
        let configure: Option<TypedFunc<(u32, u32), u32>> = opt!("proxy_on_configure");
        let init = inst
            .get_typed_func::<(), ()>(&mut store, "_initialize")
            .or_else(|_| inst.get_typed_func::<(), ()>(&mut store, "_start"))
            .ok();
        let mut me = Instance {
            store,
            ex,
            next_context: ROOT,
            poisoned: false,
            spare: Vec::new(),
        };
        if let Some(f) = init {
            me.call(|s, _| f.call(s, ()))?;
        }
        me.call(|s, ex| ex.context_create.call(s, (ROOT, 0)))?;
        let (vm_len, cfg_len) = (
            shared.vm_config.len() as u32,
            shared.plugin_config.len() as u32,
        );
        if let Some(f) = vm_start {
            if me.call(|s, _| f.call(s, (ROOT, vm_len)))? == 0 {
                return Err(fail(Failure::Refused, "proxy_on_vm_start returned false (the module refused its vm_config.configuration)".into()));
            }
        }
        if let Some(f) = configure {
            if me.call(|s, _| f.call(s, (ROOT, cfg_len)))? == 0 {
                return Err(fail(
                    Failure::Refused,
                    "proxy_on_configure returned false (the module refused its config)".into(),
                ));
            }
        }
        me.store.data_mut().in_root = false;
        Ok(me)
    }

    /// Runs one call into the guest under the time limit; a failure poisons the instance and
    /// is counted. `f` gets the store and the exports apart, so that it calls an export by
    /// reference: cloning a `TypedFunc` per call costs reference counts on the engine's type
    /// registry (seen in the load harness's profile of the no-op filter).
    pub(crate) fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<HostState>, &Exports) -> wasmtime::Result<R>,
    ) -> Result<R, GuestError> {
        let ticks = self.store.data().plugin.deadline_ticks;
        self.store.set_epoch_deadline(ticks);
        match f(&mut self.store, &self.ex) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.poisoned = true;
                let shared = self.store.data().plugin.clone();
                let err = classify(&shared, &self.store, e);
                shared
                    .runtime
                    .metrics
                    .traps
                    .with_label_values(&[shared.name.as_str(), err.failure.as_str()])
                    .inc();
                Err(err)
            }
        }
    }

    /// A fresh stream context id.
    pub(crate) fn next_context(&mut self) -> u32 {
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT + 1);
        self.next_context
    }

    /// A stream state for a new stream: an ended stream's, or a new one.
    pub(crate) fn stream_state(&mut self) -> Result<Box<Stream>, GuestError> {
        match self.spare.pop() {
            Some(s) => Ok(s),
            None => Stream::new().map(Box::new).map_err(|message| GuestError {
                module: self.store.data().plugin.name.clone(),
                failure: Failure::Trap,
                message,
            }),
        }
    }

    /// Keeps an ended stream's state (already reset) for the next stream.
    pub(crate) fn keep_stream_state(&mut self, state: Box<Stream>) {
        if self.spare.len() < MAX_SPARE {
            self.spare.push(state);
        }
    }

    /// The tick period the root context asked for, if any.
    pub(crate) fn tick_period(&self) -> Option<Duration> {
        let ms = self.store.data().tick_period_ms;
        (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// `proxy_on_tick` on the root context.
    pub(crate) fn tick(&mut self) -> Result<(), GuestError> {
        if self.ex.tick.is_none() {
            return Ok(());
        }
        self.store.data_mut().in_root = true;
        let r = self.call(|s, ex| ex.tick.as_ref().map_or(Ok(()), |f| f.call(s, ROOT)));
        self.store.data_mut().in_root = false;
        r
    }
}

fn classify(shared: &PluginShared, store: &Store<HostState>, e: wasmtime::Error) -> GuestError {
    let failure = if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        Failure::Timeout
    } else if store.data().limiter.denied {
        Failure::Memory
    } else {
        Failure::Trap
    };
    let message = match failure {
        Failure::Timeout => "ran past its call time limit and was stopped".to_string(),
        Failure::Memory => format!(
            "trapped after its memory reached the limit ({} bytes): {e:#}",
            shared.memory_limit
        ),
        _ => format!("trapped: {e:#}"),
    };
    GuestError {
        module: shared.name.clone(),
        failure,
        message,
    }
}
