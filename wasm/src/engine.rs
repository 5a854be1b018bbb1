//! The process's one wasmtime engine (epoch interruption on, a thread advancing the epoch
//! every [`EPOCH_TICK`]) and its module cache keyed by the module's SHA-256, so that a reload
//! (or a second route) naming the same bytes reuses the compiled code.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module};

/// How often the epoch advances: the granularity of a call's time limit.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engine, made on first use. Errors: wasmtime refused the configuration (not expected on
/// a supported platform), as text.
pub fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            // Epoch checks are cheaper than fuel (a load and compare at loop heads and calls,
            // not a counter on every block) and bound time, which is what matters here.
            config.epoch_interruption(true);
            let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || loop {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                })
                .map_err(|e| format!("starting the epoch thread: {e}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Nanoseconds on a monotonic clock (for the guests' `clock_time_get`).
pub(crate) fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Compiled modules by content hash. Modules stay for the life of the process (one per
/// distinct module file ever loaded).
#[derive(Default)]
pub struct ModuleCache {
    modules: Mutex<HashMap<[u8; 32], Module>>,
}

impl ModuleCache {
    /// The compiled module for `bytes` and whether it was compiled now (`false`: cache hit).
    /// Compiling runs on the caller's thread (a config compile, off the request path).
    ///
    /// # Errors
    ///
    /// The bytes are not a valid wasm module, as wasmtime explains it.
    pub fn get_or_compile(&self, engine: &Engine, bytes: &[u8]) -> Result<(Module, bool), String> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(m) = self
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            return Ok((m.clone(), false));
        }
        let module = Module::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, module.clone());
        Ok((module, true))
    }

    /// How many modules are cached.
    pub fn len(&self) -> usize {
        self.modules.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
