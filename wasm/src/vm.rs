//! The instance each proxy thread runs a plugin's streams in: Envoy's model, one VM per
//! worker thread and one HTTP context per stream, so that a thread's concurrent streams share
//! one linear memory (hot in the cache, one guest heap) instead of holding an instance each.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::instance::{GuestError, Instance};
use crate::plugin::Plugin;

/// A thread's instance of one plugin. The lock is held only for one synchronous call into
/// the guest, never across an `.await`: each proxy thread runs its own streams (no contention),
/// and with `runtime.work_stealing: true` a stream that moved to another worker waits for at
/// most one call of the thread it came from (bounded by `vm_config.call_timeout`).
pub(crate) struct Vm {
    inst: Mutex<Instance>,
}

impl Vm {
    /// The instance, for one call. A panic while it was held (in a host function, say) may
    /// have stopped the guest mid-call with a stream's state still in the store: the
    /// instance is then marked failed, so its streams fail and the thread starts another.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Instance> {
        self.inst.lock().unwrap_or_else(|p: PoisonError<_>| {
            let mut inst = p.into_inner();
            inst.poisoned = true;
            inst
        })
    }
}

/// A plugin (weakly: a replaced one is noticed) and this thread's instance of it.
type Entry = (Weak<Plugin>, Arc<Vm>);

thread_local! {
    static VMS: RefCell<HashMap<u64, Entry>> = RefCell::new(HashMap::new());
}

/// This thread's instance of `plugin`, started on first use and started again after a call
/// into it failed (a trap poisons the instance: the streams that had contexts in it fail at
/// their next callback, as in Envoy when a VM fails).
///
/// # Errors
///
/// The new instance could not start.
pub(crate) fn get(plugin: &Arc<Plugin>) -> Result<Arc<Vm>, GuestError> {
    let live = VMS.with(|v| {
        v.borrow()
            .get(&plugin.id)
            .filter(|(_, vm)| !vm.lock().poisoned)
            .map(|(_, vm)| vm.clone())
    });
    if let Some(vm) = live {
        return Ok(vm);
    }
    // Started outside the map's borrow: starting runs the guest's constructors.
    let vm = Arc::new(Vm {
        inst: Mutex::new(Instance::new(plugin)?),
    });
    VMS.with(|v| {
        let mut vms = v.borrow_mut();
        if !vms.contains_key(&plugin.id) {
            // A new plugin on this thread: the moment to forget replaced ones.
            vms.retain(|_, (w, _)| w.strong_count() > 0);
        }
        vms.insert(plugin.id, (Arc::downgrade(plugin), vm.clone()));
    });
    Ok(vm)
}
