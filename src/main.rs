//! The `gatehouse` binary: the command line of `gatehouse::cli` with the built-in filter
//! kinds, and the allocator (mimalloc, tuned before the first allocation).

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc v3's `mimalloc.h` (the crate names only
/// the options v2 and v3 share).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Lets mimalloc commit its arena on demand instead of all at once: on Linux an eagerly
/// committed arena is re-populated in large steps by small allocations after a purge,
/// so RSS creeps back up while idle. It must run before the first allocation, which
/// reserves the arena, and Rust's runtime allocates before `main`: so it runs as an ELF
/// constructor.
#[cfg(target_os = "linux")]
#[used]
#[allow(unsafe_code)] // an ELF constructor: the only way to run before Rust's runtime allocates
#[link_section = ".init_array"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

#[allow(unsafe_code)] // mimalloc's option table through its C API (see SAFETY)
extern "C" fn tune_allocator() {
    extern "C" {
        // libc's; std's `env::var_os` would allocate, which is what must not happen yet.
        fn getenv(name: *const std::ffi::c_char) -> *mut std::ffi::c_char;
    }
    // SAFETY: getenv reads the environment with a NUL-terminated name; mi_version and
    // mi_option_set only read and write mimalloc's option table.
    unsafe {
        // An operator's own MIMALLOC_ARENA_EAGER_COMMIT wins (mimalloc reads it itself).
        let set_by_operator = !getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null();
        if !set_by_operator && libmimalloc_sys::mi_version() >= 30000 {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
}

/// Gives memory that mimalloc holds free back to the OS. mimalloc purges lazily, on
/// later allocations of the thread that freed it, so after a burst an idle proxy
/// thread would keep its peak RSS for good: each proxy thread calls this when it goes
/// quiet (`gatehouse::memory`), the maintenance thread too.
#[allow(unsafe_code)] // mimalloc's mi_collect through its C API (see SAFETY)
fn release_free_memory() {
    // SAFETY: mi_collect only walks mimalloc's own heaps and arenas; it is safe to
    // call from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    gatehouse::App::builder()
        .release_free_memory(release_free_memory)
        .run()
}
