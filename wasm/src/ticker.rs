//! Root-context timers: the instance that proved a plugin's configuration is kept, when it
//! set a tick period, on a thread of its own that calls `proxy_on_tick` every period (like
//! Envoy's singleton root context), until the plugin is dropped (a reload replaced it).

use std::sync::Weak;
use std::time::Duration;

use crate::instance::Instance;
use crate::plugin::Plugin;

/// Shortest tick period honoured.
pub const MIN_PERIOD: Duration = Duration::from_millis(10);

pub(crate) fn spawn(plugin: Weak<Plugin>, mut inst: Instance, mut period: Duration) {
    let spawned = std::thread::Builder::new()
        .name("wasm-tick".into())
        .spawn(move || loop {
            std::thread::sleep(period.max(MIN_PERIOD));
            let Some(p) = plugin.upgrade() else {
                return;
            };
            if let Err(e) = inst.tick() {
                tracing::warn!(module = %p.name(), error = %e, "wasm timer stopped: proxy_on_tick failed");
                return;
            }
            match inst.tick_period() {
                Some(next) => period = next,
                None => return,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a wasm timer thread");
    }
}
