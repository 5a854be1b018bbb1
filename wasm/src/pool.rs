//! Idle instances, per plugin, per thread: a stream takes one from its thread's pool (no lock,
//! no sharing) and gives it back when it ends, on whatever thread that is. Pools of plugins
//! that a reload replaced are dropped the next time their thread returns an instance.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use crate::instance::Instance;
use crate::plugin::Plugin;

/// Most idle instances a thread keeps per plugin (more concurrent streams make more; the
/// extra ones are dropped when they end).
pub const MAX_IDLE: usize = 64;

/// A plugin (weakly: a replaced one is noticed) and its idle instances.
type Idle = (Weak<Plugin>, Vec<Box<Instance>>);

thread_local! {
    static POOLS: RefCell<HashMap<u64, Idle>> = RefCell::new(HashMap::new());
}

/// An idle instance of plugin `id` on this thread.
pub(crate) fn take(id: u64) -> Option<Box<Instance>> {
    POOLS.with(|p| p.borrow_mut().get_mut(&id).and_then(|(_, v)| v.pop()))
}

/// Gives `inst` back to this thread's pool of `plugin`.
pub(crate) fn put(plugin: &Arc<Plugin>, inst: Box<Instance>) {
    POOLS.with(|p| {
        let mut pools = p.borrow_mut();
        if !pools.contains_key(&plugin.id) {
            // A new plugin on this thread: the moment to forget replaced ones.
            pools.retain(|_, (w, _)| w.strong_count() > 0);
        }
        let (_, idle) = pools
            .entry(plugin.id)
            .or_insert_with(|| (Arc::downgrade(plugin), Vec::new()));
        if idle.len() < MAX_IDLE {
            idle.push(inst);
        }
    });
}
