//! Shared data (`proxy_get_shared_data` / `proxy_set_shared_data`): one key-value store per
//! gateway process, scoped by VM id as in Envoy, with a compare-and-swap version per key. A
//! guest call takes its lock for one map operation (no guest code runs under it).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::abi::Status;

/// (VM id, key) -> (value, CAS version).
type Entries = HashMap<(String, Vec<u8>), (Vec<u8>, u32)>;

/// The process's shared data.
#[derive(Default)]
pub struct SharedData {
    map: Mutex<Entries>,
}

impl SharedData {
    /// The value of `key` in VM `vm` and its CAS version.
    pub fn get(&self, vm: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(vm.to_string(), key.to_vec())).cloned()
    }

    /// Sets `key`; with `cas` non-zero, only if the stored version is still `cas`.
    ///
    /// # Errors
    ///
    /// [`Status::CasMismatch`] when another writer got there first.
    pub fn set(&self, vm: &str, key: &[u8], value: Vec<u8>, cas: u32) -> Result<(), Status> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry((vm.to_string(), key.to_vec()))
            .or_insert((Vec::new(), 0));
        if cas != 0 && cas != entry.1 {
            return Err(Status::CasMismatch);
        }
        // Version 0 means "no CAS" to the guest: skip it on wrap-around.
        entry.1 = entry.1.wrapping_add(1).max(1);
        entry.0 = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_refuses_a_stale_version() {
        let d = SharedData::default();
        assert_eq!(d.get("", b"k"), None);
        d.set("", b"k", b"1".to_vec(), 0).unwrap();
        let (v, cas) = d.get("", b"k").unwrap();
        assert_eq!(v, b"1");
        d.set("", b"k", b"2".to_vec(), cas).unwrap();
        assert_eq!(
            d.set("", b"k", b"3".to_vec(), cas),
            Err(Status::CasMismatch)
        );
        assert_eq!(d.get("", b"k").unwrap().0, b"2");
        assert_eq!(d.get("other-vm", b"k"), None, "scoped by VM id");
    }
}
