//! A loaded filter module: compiled (or taken from the cache), linked, pre-instantiated, and
//! proven to start and accept its configuration before the config that names it is accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::InstancePre;

use crate::engine::{engine, EPOCH_TICK};
use crate::instance::Instance;
use crate::runtime::WasmRuntime;
use crate::state::HostState;
use crate::ticker;

/// What a `wasm` filter entry asks for.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Name for logs and metric labels (the module's file stem).
    pub name: String,
    /// The module's bytes.
    pub bytes: Vec<u8>,
    /// `root_id`: the root context's name (`plugin_root_id`).
    pub root_id: String,
    /// `vm_config.vm_id`: scopes shared data.
    pub vm_id: String,
    /// `vm_config.configuration`, given to `proxy_on_vm_start`.
    pub vm_config: Vec<u8>,
    /// `config`, given to `proxy_on_configure`.
    pub plugin_config: Vec<u8>,
    /// Longest one call into the guest may run.
    pub call_timeout: Duration,
    /// Largest linear memory of one instance, in bytes.
    pub memory_limit: usize,
}

/// Why a module could not be used; reported as a config error at the entry's `module`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// The parts of a plugin every instance's host functions read.
pub struct PluginShared {
    /// Module name (logs, metric labels, `plugin_name`).
    pub name: String,
    /// `plugin_root_id`.
    pub root_id: String,
    /// `plugin_vm_id`.
    pub vm_id: String,
    /// The VM configuration.
    pub vm_config: Vec<u8>,
    /// The plugin configuration.
    pub plugin_config: Vec<u8>,
    /// The runtime.
    pub runtime: Arc<WasmRuntime>,
    pub(crate) deadline_ticks: u64,
    pub(crate) memory_limit: usize,
}

/// A filter module ready to serve: one per configured entry (a reload builds a new one,
/// reusing the compiled code).
pub struct Plugin {
    pub(crate) id: u64,
    pub(crate) shared: Arc<PluginShared>,
    pub(crate) pre: InstancePre<HostState>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl Plugin {
    /// Compiles (or reuses) the module, links the host functions, and starts one instance
    /// (`_initialize`, `proxy_on_vm_start`, `proxy_on_configure`) to prove that it runs with
    /// this configuration. When that instance set a tick period, it becomes the plugin's timer
    /// instance (`proxy_on_tick` on its root context, on a thread of its own, for as long as
    /// the plugin lives). Runs on the config compile's thread, never on a proxy thread.
    ///
    /// # Errors
    ///
    /// [`LoadError`]: not a wasm module, not a proxy-wasm 0.2 module, an import of the wrong
    /// type, or a guest that traps or returns false while starting or configuring.
    pub fn load(runtime: &Arc<WasmRuntime>, spec: PluginSpec) -> Result<Arc<Plugin>, LoadError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let engine = engine().map_err(LoadError)?;
        let (module, compiled) = runtime
            .modules
            .get_or_compile(engine, &spec.bytes)
            .map_err(|e| LoadError(format!("not a valid wasm module: {e}")))?;
        if compiled {
            runtime.metrics.compiled.inc();
        }
        let abi = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];
        if !module.exports().any(|e| abi.contains(&e.name())) {
            return Err(LoadError(
                "not a proxy-wasm module: it exports neither proxy_abi_version_0_2_1 nor proxy_abi_version_0_2_0".into(),
            ));
        }
        let (linker, stubbed) =
            crate::host::linker(engine, &module).map_err(|e| LoadError(format!("{e:#}")))?;
        if !stubbed.is_empty() {
            tracing::debug!(module = %spec.name, imports = %stubbed.join(", "), "wasm module imports host calls that answer Unimplemented");
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError(format!("cannot link the module: {e:#}")))?;
        let ticks = spec
            .call_timeout
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1) as u64
            + 1;
        let plugin = Arc::new(Plugin {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shared: Arc::new(PluginShared {
                name: spec.name,
                root_id: spec.root_id,
                vm_id: spec.vm_id,
                vm_config: spec.vm_config,
                plugin_config: spec.plugin_config,
                runtime: runtime.clone(),
                deadline_ticks: ticks,
                memory_limit: spec.memory_limit,
            }),
            pre,
        });
        let first = Instance::new(&plugin).map_err(|e| LoadError(e.to_string()))?;
        if let Some(period) = first.tick_period() {
            ticker::spawn(Arc::downgrade(&plugin), first, period);
        }
        Ok(plugin)
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The runtime it was loaded in.
    pub fn runtime(&self) -> &WasmRuntime {
        &self.shared.runtime
    }
}
