//! The proxy-wasm guest filters of `tests/wasm-guests/` (each a cdylib against the published
//! proxy-wasm Rust SDK), built for `wasm32-wasip1` by `tests/wasm-guests/build.sh` into
//! `<target dir>/wasm-guests`, once per test process.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The built module of guest `name` (`headers`, `auth`, `body`, `local_response`,
/// `shared_timer`, `looping`, `bench`). Builds them all on first use; needs the
/// `wasm32-wasip1` target (`scripts/setup.sh test` adds it). Panics with cargo's output when
/// the build fails.
pub fn wasm_guest(name: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    /// A release build of seven small crates on 2 busy cores; beyond it, something is stuck.
    const BUILD_WITHIN: Duration = Duration::from_secs(15 * 60);
    let dir = DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let target_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .and_then(|profile| profile.parent())
            .expect("test executable under target/<profile>/deps")
            .to_path_buf();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/wasm-guests/build.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .env("CARGO_TARGET_DIR", &target_dir)
            // The test's cargo sets these for the host build; the guests build for wasm.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET");
        let (status, stderr) = crate::process::run_bounded(&mut cmd, script, BUILD_WITHIN);
        assert!(status.success(), "{script} failed ({status}):\n{stderr}");
        target_dir.join("wasm-guests/wasm32-wasip1/release")
    });
    let module = dir.join(format!("guest_{name}.wasm"));
    assert!(module.exists(), "{} was not built", module.display());
    module
}
