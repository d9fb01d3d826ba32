//! The NVTX path, exercised without Nsight: the test compiles a stand-in `libnvToolsExt` with the
//! system C compiler (`cc`): a shared library exporting `nvtxRangePushA` and `nvtxRangePop` that
//! appends each call to a log, and `nvtx_stub_log` that returns the log. The profiler loads it
//! through its ordinary `dlopen` lookup (`COTMAE_NVTX_LIBRARY` names the file), so the test
//! checks what Nsight Systems would receive: one push per module and op scope, with our names
//! (the full HF module path, the op name), in scope order, each popped when its scope closes;
//! and no call at all while profiling is off.
//!
//! Its own test binary (one process, one test): the library is looked up once per process.

use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use tensor::profiler::{self, Phase};
use tensor::{DType, Device, Tensor};

const STUB: &str = r#"
#include <pthread.h>
#include <string.h>

static char log_buf[1 << 16];
static size_t log_len;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void append(const char *s) {
    size_t n = strlen(s);
    pthread_mutex_lock(&lock);
    if (log_len + n + 1 < sizeof log_buf) {
        memcpy(log_buf + log_len, s, n);
        log_len += n;
        log_buf[log_len] = 0;
    }
    pthread_mutex_unlock(&lock);
}

int nvtxRangePushA(const char *message) {
    append("push ");
    append(message);
    append("\n");
    return 0;
}

int nvtxRangePop(void) {
    append("pop\n");
    return 0;
}

const char *nvtx_stub_log(void) { return log_buf; }
"#;

/// Compiles the stand-in library into this test's scratch folder.
fn build_stub() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nvtx-stub");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("nvtx_stub.c");
    let lib = dir.join("libnvtx_stub.so");
    std::fs::write(&src, STUB).unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-lpthread")
        .output()
        .expect("running `cc` (a C compiler is needed to build the NVTX stand-in)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// The stand-in's log so far (the same handle the profiler opened: dlopen counts references).
fn stub_log(lib: &Path) -> String {
    let path = std::ffi::CString::new(lib.to_str().unwrap()).unwrap();
    // SAFETY: dlopen/dlsym with NUL-terminated names; `nvtx_stub_log` has the C signature
    // `const char *(void)` and returns a NUL-terminated static buffer.
    unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
        assert!(!h.is_null(), "dlopen {}", lib.display());
        let f = libc::dlsym(h, c"nvtx_stub_log".as_ptr());
        assert!(!f.is_null(), "nvtx_stub_log not exported");
        let f: unsafe extern "C" fn() -> *const c_char = std::mem::transmute(f);
        CStr::from_ptr(f()).to_string_lossy().into_owned()
    }
}

fn ones(shape: &[usize]) -> Tensor {
    Tensor::ones(shape, DType::F32, Device::Cpu).unwrap()
}

/// A module inside a module, one matmul in it.
fn layer_matmul(a: &Tensor, b: &Tensor) {
    let _f = profiler::phase(Phase::Forward);
    let _m = profiler::module("bert");
    let _l = profiler::module("encoder.layer.0");
    a.matmul(b).unwrap();
}

#[test]
fn nvtx_ranges_carry_module_paths_and_op_names_and_balance() {
    let lib = build_stub();
    // Before the profiler's first lookup; this binary has no other test (no other thread).
    std::env::set_var(profiler::nvtx::LIBRARY_ENV, &lib);
    let (a, b) = (ones(&[4, 8]), ones(&[8, 16]));

    // Off: not a single call (the library is not even looked up).
    profiler::disable();
    layer_matmul(&a, &b);
    assert_eq!(stub_log(&lib), "", "NVTX calls while profiling is off");

    let session = profiler::session(1 << 10);
    assert!(
        profiler::nvtx::available(),
        "the stand-in was not loaded from {}",
        lib.display()
    );
    layer_matmul(&a, &b);
    drop(session);
    let log = stub_log(&lib);
    let expected = "push bert\npush bert.encoder.layer.0\npush matmul\npop\npop\npop\n";
    assert_eq!(log, expected, "NVTX calls in scope order");

    // Off again: the log does not grow.
    layer_matmul(&a, &b);
    assert_eq!(stub_log(&lib), expected);
}
