//! The host functions a guest imports, one group per file, assembled into a linker for one
//! module. An import the host does not implement is still satisfied: in `env` it answers
//! `Unimplemented` (status 12), in WASI `ENOSYS`; the module's load logs which ones.

mod buffers;
mod calls;
mod data;
mod headers;
mod misc;
mod properties;
mod wasi;

use wasmtime::{Engine, ExternType, Linker, Module, Val, ValType};

use crate::abi::Status;
use crate::state::HostState;

/// The linker for `module`: every host function, then stubs for its other function imports.
/// Returns the names of the stubbed imports too.
pub(crate) fn linker(
    engine: &Engine,
    module: &Module,
) -> wasmtime::Result<(Linker<HostState>, Vec<String>)> {
    let mut l = Linker::new(engine);
    headers::add(&mut l)?;
    buffers::add(&mut l)?;
    properties::add(&mut l)?;
    data::add(&mut l)?;
    misc::add(&mut l)?;
    calls::add(&mut l)?;
    wasi::add(&mut l)?;
    let mut stubbed = Vec::new();
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let answer = match import.module() {
            "env" => Status::Unimplemented.code(),
            "wasi_snapshot_preview1" => 52, // ENOSYS
            _ => continue,
        };
        let results: Vec<ValType> = ty.results().collect();
        let defined = l.func_new(
            import.module(),
            import.name(),
            ty.clone(),
            move |_, _, out| {
                for (slot, ty) in out.iter_mut().zip(&results) {
                    *slot = match ty {
                        ValType::I32 => Val::I32(answer),
                        ValType::I64 => Val::I64(i64::from(answer)),
                        ValType::F32 => Val::F32(0),
                        ValType::F64 => Val::F64(0),
                        _ => Val::I32(0),
                    };
                }
                Ok(())
            },
        );
        // An error means the name is implemented above (the linker refuses to shadow it).
        if defined.is_ok() {
            stubbed.push(format!("{}::{}", import.module(), import.name()));
        }
    }
    Ok((l, stubbed))
}
