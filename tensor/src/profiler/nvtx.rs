//! NVTX ranges, so Nsight Systems shows our module and op names on its timeline. The library
//! (`libnvToolsExt.so.1`, or the file named by `COTMAE_NVTX_LIBRARY`) is looked up once with
//! `dlopen` when profiling first opens a range; absent, every call here is a no-op. A range is pushed when a module or op scope opens and
//! popped when it closes (NVTX ranges nest per thread, as our scopes do).

use std::ffi::{c_char, c_int, CString};
use std::sync::OnceLock;

/// The library `dlopen` looks up (a path, or a name searched on the loader's path).
const DEFAULT_LIBRARY: &str = "libnvToolsExt.so.1";

/// Overrides [`DEFAULT_LIBRARY`]: another NVTX build, or a recording stand-in in a test.
pub const LIBRARY_ENV: &str = "COTMAE_NVTX_LIBRARY";

type PushFn = unsafe extern "C" fn(*const c_char) -> c_int;
type PopFn = unsafe extern "C" fn() -> c_int;

struct Nvtx {
    push: PushFn,
    pop: PopFn,
}

fn library() -> Option<&'static Nvtx> {
    static LIB: OnceLock<Option<Nvtx>> = OnceLock::new();
    LIB.get_or_init(|| {
        let name = std::env::var(LIBRARY_ENV).unwrap_or_else(|_| DEFAULT_LIBRARY.to_string());
        let name = CString::new(name).ok()?;
        // SAFETY: dlopen/dlsym with NUL-terminated names; the handle is never closed, so the
        // function pointers stay valid for the process. The symbols have the C signatures of
        // nvToolsExt.h (`int nvtxRangePushA(const char*)`, `int nvtxRangePop(void)`).
        unsafe {
            let h = libc::dlopen(name.as_ptr(), libc::RTLD_NOW);
            if h.is_null() {
                return None;
            }
            let push = libc::dlsym(h, c"nvtxRangePushA".as_ptr());
            let pop = libc::dlsym(h, c"nvtxRangePop".as_ptr());
            if push.is_null() || pop.is_null() {
                return None;
            }
            Some(Nvtx {
                push: std::mem::transmute::<*mut libc::c_void, PushFn>(push),
                pop: std::mem::transmute::<*mut libc::c_void, PopFn>(pop),
            })
        }
    })
    .as_ref()
}

/// Whether the NVTX library was found.
pub fn available() -> bool {
    library().is_some()
}

/// Opens a range named `name` on this thread; returns whether one was opened (pop it then).
pub(super) fn push(name: &str) -> bool {
    let Some(l) = library() else { return false };
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: a valid C string, copied by NVTX before it returns.
    unsafe { (l.push)(c.as_ptr()) };
    true
}

/// Closes the innermost range this thread opened with [`push`].
pub(super) fn pop() {
    if let Some(l) = library() {
        // SAFETY: paired with a successful `push` on this thread.
        unsafe { (l.pop)() };
    }
}
