//! The host's own metrics (traps, compiles) and the metrics guests define
//! (`proxy_define_metric`), registered on the gateway's registry and exported on `/metrics`
//! as `gatehouse_wasm_custom_<name>` (the name's characters outside `[a-zA-Z0-9_]` become `_`).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::abi::Status;

/// One guest-defined metric (prometheus handles are shared atomics).
#[derive(Clone)]
pub enum GuestMetric {
    /// `proxy_increment_metric` only, by a non-negative offset.
    Counter(IntCounter),
    /// Set by `proxy_record_metric`, moved by `proxy_increment_metric`.
    Gauge(IntGauge),
    /// `proxy_record_metric` observes a value.
    Histogram(Histogram),
}

impl GuestMetric {
    /// `proxy_increment_metric`.
    pub fn increment(&self, offset: i64) -> Result<(), Status> {
        match self {
            GuestMetric::Counter(c) if offset >= 0 => c.inc_by(offset as u64),
            GuestMetric::Gauge(g) => g.add(offset),
            _ => return Err(Status::BadArgument),
        }
        Ok(())
    }

    /// `proxy_record_metric`.
    pub fn record(&self, value: u64) -> Result<(), Status> {
        match self {
            GuestMetric::Counter(c) => {
                let now = c.get();
                c.inc_by(value.saturating_sub(now));
            }
            GuestMetric::Gauge(g) => g.set(i64::try_from(value).unwrap_or(i64::MAX)),
            GuestMetric::Histogram(h) => h.observe(value as f64),
        }
        Ok(())
    }

    /// `proxy_get_metric` (a histogram's observation count).
    pub fn get(&self) -> u64 {
        match self {
            GuestMetric::Counter(c) => c.get(),
            GuestMetric::Gauge(g) => u64::try_from(g.get()).unwrap_or(0),
            GuestMetric::Histogram(h) => h.get_sample_count(),
        }
    }
}

/// The metrics of the host and of every guest of the process.
pub struct HostMetrics {
    registry: Registry,
    /// `gatehouse_wasm_traps_total{module, reason}`.
    pub traps: IntCounterVec,
    /// `gatehouse_wasm_modules_compiled_total`: compiles, not cache hits.
    pub compiled: IntCounter,
    /// `gatehouse_wasm_instances_created_total`.
    pub instances: IntCounter,
    guests: Mutex<(HashMap<String, u32>, Vec<GuestMetric>)>,
}

impl HostMetrics {
    /// Registers the host's metrics on `registry`; guest metrics go there too.
    ///
    /// # Errors
    ///
    /// A metric of the same name is registered already.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let traps = IntCounterVec::new(
            Opts::new(
                "gatehouse_wasm_traps_total",
                "Calls into a wasm filter that trapped (reason: timeout, memory, trap).",
            ),
            &["module", "reason"],
        )?;
        let compiled = IntCounter::new(
            "gatehouse_wasm_modules_compiled_total",
            "Wasm modules compiled (a module whose content was compiled before is reused).",
        )?;
        let instances = IntCounter::new(
            "gatehouse_wasm_instances_created_total",
            "Wasm filter instances created (one per module per proxy thread, another after a trap).",
        )?;
        registry.register(Box::new(traps.clone()))?;
        registry.register(Box::new(compiled.clone()))?;
        registry.register(Box::new(instances.clone()))?;
        Ok(Self {
            registry: registry.clone(),
            traps,
            compiled,
            instances,
            guests: Mutex::new((HashMap::new(), Vec::new())),
        })
    }

    /// `proxy_define_metric`: the id of metric `name` of type `kind` (0 counter, 1 gauge, 2
    /// histogram), the same id when defined again (by another instance, or after a reload).
    ///
    /// # Errors
    ///
    /// [`Status::BadArgument`] for an unknown type, a name defined with another type, or one
    /// that prometheus refuses.
    pub fn define(&self, kind: i32, name: &str) -> Result<u32, Status> {
        let mut guard = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        let (ids, table) = &mut *guard;
        let key = format!("{kind}:{name}");
        if let Some(id) = ids.get(&key) {
            return Ok(*id);
        }
        let full: String = format!("gatehouse_wasm_custom_{name}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let help = format!("Defined by a wasm filter as `{name}`.");
        let metric = match kind {
            0 => GuestMetric::Counter(
                IntCounter::new(&full, &help).map_err(|_| Status::BadArgument)?,
            ),
            1 => GuestMetric::Gauge(IntGauge::new(&full, &help).map_err(|_| Status::BadArgument)?),
            2 => GuestMetric::Histogram(
                Histogram::with_opts(HistogramOpts::new(&full, &help))
                    .map_err(|_| Status::BadArgument)?,
            ),
            _ => return Err(Status::BadArgument),
        };
        let collector: Box<dyn prometheus::core::Collector> = match &metric {
            GuestMetric::Counter(c) => Box::new(c.clone()),
            GuestMetric::Gauge(g) => Box::new(g.clone()),
            GuestMetric::Histogram(h) => Box::new(h.clone()),
        };
        self.registry
            .register(collector)
            .map_err(|_| Status::BadArgument)?;
        let id = u32::try_from(table.len()).map_err(|_| Status::BadArgument)?;
        table.push(metric);
        ids.insert(key, id);
        Ok(id)
    }

    /// The metric `id` names.
    pub fn get(&self, id: u32) -> Option<GuestMetric> {
        let guard = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.get(id as usize).cloned()
    }
}
