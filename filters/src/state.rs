//! Values a filter keeps for one request from its request phase to its response phase (the
//! `wasm` filter's guest context lives here between the two), owned by the request and
//! dropped with it.

use std::any::Any;
use std::sync::Mutex;

/// One request's filter state: a value per filter, keyed by the filter's address (see
/// [`FilterState::key`]). Only this request's own phases touch it, one after the other, so
/// its lock is never contended.
///
/// ```
/// # use gatehouse_filters::FilterState;
/// let state = FilterState::default();
/// let owner = 7u8;
/// state.put(FilterState::key(&owner), String::from("kept"));
/// assert_eq!(state.take::<String>(FilterState::key(&owner)).as_deref(), Some(&"kept".to_string()));
/// assert!(state.take::<String>(FilterState::key(&owner)).is_none());
/// ```
#[derive(Default)]
pub struct FilterState {
    slots: Mutex<Vec<(usize, Box<dyn Any + Send>)>>,
}

impl std::fmt::Debug for FilterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FilterState")
    }
}

impl FilterState {
    /// The key of a filter (its address: unique while the config snapshot that holds it
    /// serves the request).
    pub fn key<F: ?Sized>(filter: &F) -> usize {
        filter as *const F as *const () as usize
    }

    /// Keeps `value` under `key`, replacing what was there.
    pub fn put<T: Any + Send>(&self, key: usize, value: T) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|(k, _)| *k != key);
        slots.push((key, Box::new(value)));
    }

    /// Takes the value kept under `key`, if it is a `T`.
    pub fn take<T: Any>(&self, key: usize) -> Option<Box<T>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let at = slots.iter().position(|(k, v)| *k == key && v.is::<T>())?;
        slots.swap_remove(at).1.downcast::<T>().ok()
    }
}
