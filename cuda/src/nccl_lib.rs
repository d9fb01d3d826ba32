//! Finding and loading NCCL: [`nccl_lib`] opens the library once per process, trying
//! [`NCCL_NAMES`] in order (`libnccl.so.2`, the name NCCL's packages and the `nvidia-nccl-cu13`
//! wheel ship, then the development link `libnccl.so`), and resolves the entry points this crate
//! calls into a table of function pointers ([`NcclLib`]). The types are cudarc's bindings
//! (`cudarc::nccl::sys`), which match NCCL's C declarations; only the loading is ours, because
//! cudarc looks for `libnccl.so` and versioned names that NCCL does not ship.
//!
//! A library that cannot be opened, or that lacks an entry point, is an [`Error::Unavailable`]
//! naming every name tried and dlopen's reason; nothing panics.

use crate::{Error, Result};
use cudarc::nccl::sys::{
    cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId,
};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

/// The file names tried, in order.
pub const NCCL_NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// NCCL's entry points (the C signatures of `nccl.h`).
pub struct NcclLib {
    /// The file name that was opened.
    pub name: &'static str,
    pub get_version: unsafe extern "C" fn(*mut c_int) -> ncclResult_t,
    pub get_error_string: unsafe extern "C" fn(ncclResult_t) -> *const c_char,
    pub get_last_error: unsafe extern "C" fn(ncclComm_t) -> *const c_char,
    pub get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> ncclResult_t,
    pub comm_init_all: unsafe extern "C" fn(*mut ncclComm_t, c_int, *const c_int) -> ncclResult_t,
    pub comm_init_rank:
        unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> ncclResult_t,
    pub all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclRedOp_t,
        ncclComm_t,
        cudaStream_t,
    ) -> ncclResult_t,
    pub all_gather: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclComm_t,
        cudaStream_t,
    ) -> ncclResult_t,
    pub broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        c_int,
        ncclComm_t,
        cudaStream_t,
    ) -> ncclResult_t,
    pub comm_get_async_error: unsafe extern "C" fn(ncclComm_t, *mut ncclResult_t) -> ncclResult_t,
    pub comm_abort: unsafe extern "C" fn(ncclComm_t) -> ncclResult_t,
}

/// The loaded library, or why it could not be loaded (the same answer for the whole process).
pub fn nccl_lib() -> Result<&'static NcclLib> {
    static LIB: OnceLock<std::result::Result<NcclLib, String>> = OnceLock::new();
    LIB.get_or_init(load)
        .as_ref()
        .map_err(|e| Error::Unavailable(e.clone()))
}

fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local message or null.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a NUL-terminated string owned by libdl.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn load() -> std::result::Result<NcclLib, String> {
    let mut why = Vec::new();
    for name in NCCL_NAMES {
        let c = CString::new(name).expect("no NUL in the names");
        // SAFETY: a NUL-terminated name; NCCL's initialisers run as for any dynamic link.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            why.push(format!("{name}: {}", dl_error()));
            continue;
        }
        return resolve(name, handle);
    }
    Err(format!(
        "the NCCL library was not found ({}); install NCCL (e.g. `pip install nvidia-nccl-cu13` \
         and add its nvidia/nccl/lib to LD_LIBRARY_PATH)",
        why.join("; ")
    ))
}

/// The table of `name`'s entry points from its open `handle` (never closed: the process keeps
/// NCCL loaded).
fn resolve(name: &'static str, handle: *mut c_void) -> std::result::Result<NcclLib, String> {
    let sym = |symbol: &str| -> std::result::Result<*mut c_void, String> {
        let c = CString::new(symbol).expect("no NUL in the symbols");
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            return Err(format!("{name} has no {symbol}: {}", dl_error()));
        }
        Ok(p)
    };
    // SAFETY (every `as_fn`): each symbol is NCCL's function of that name, whose C signature is
    // the field's type (nccl.h; cudarc's bindings declare the same).
    unsafe {
        Ok(NcclLib {
            name,
            get_version: as_fn(sym("ncclGetVersion")?),
            get_error_string: as_fn(sym("ncclGetErrorString")?),
            get_last_error: as_fn(sym("ncclGetLastError")?),
            get_unique_id: as_fn(sym("ncclGetUniqueId")?),
            comm_init_all: as_fn(sym("ncclCommInitAll")?),
            comm_init_rank: as_fn(sym("ncclCommInitRank")?),
            all_reduce: as_fn(sym("ncclAllReduce")?),
            all_gather: as_fn(sym("ncclAllGather")?),
            broadcast: as_fn(sym("ncclBroadcast")?),
            comm_get_async_error: as_fn(sym("ncclCommGetAsyncError")?),
            comm_abort: as_fn(sym("ncclCommAbort")?),
        })
    }
}

/// The function pointer `p` as the function type `F`.
///
/// # Safety
/// `p` must be the address of a function whose signature is `F`.
unsafe fn as_fn<F: Copy>(p: *mut c_void) -> F {
    assert_eq!(
        std::mem::size_of::<F>(),
        std::mem::size_of::<*mut c_void>(),
        "a function pointer type"
    );
    std::mem::transmute_copy(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_naming_every_name_tried() {
        match nccl_lib() {
            // A machine with NCCL installed: the first name that opened is reported.
            Ok(lib) => assert!(NCCL_NAMES.contains(&lib.name)),
            Err(e) => {
                let e = e.to_string();
                for name in NCCL_NAMES {
                    assert!(e.contains(name), "{e}");
                }
            }
        }
    }
}
