//! Compiling kernel files for the simulator: the same `kernels/*.cu` text NVRTC compiles, built by
//! the host C++ compiler (`$CXX`, default `g++`, C++20) against `runtime.h` into a shared library
//! that is loaded with `dlopen`.
//!
//! - The runtime (the second half of `runtime.h`: fibers, barriers, the launch loop, the fault
//!   handler) is its own library, loaded first with `RTLD_GLOBAL`; kernel libraries resolve their
//!   calls into it when they are loaded.
//! - A kernel library holds the file (prelude pasted in, as for NVRTC) after the dialect half of
//!   `runtime.h`, plus one entry point per `extern "C" __global__` kernel:
//!   `sim_entry_<name>(void** args)` calls the kernel with each argument read through the kernel's
//!   own parameter type (`cotmae_sim::invoke`). The kernel names come from a first pass of the
//!   preprocessor with `__global__` expanded to a marker (`COTMAE_SIM_SCAN`), so kernels made by
//!   macros are found too.
//! - Flags: `-O2 -fPIC -shared -ffp-contract=off` (no fused multiply-adds beyond the explicit
//!   `fmaf`, so `__fmul_rn` and friends round once each), `-fno-strict-aliasing`, and
//!   `-D_FORTIFY_SOURCE=0` (the fault handler's `siglongjmp` leaves a fiber's stack).
//! - Debugging: with `COTMAE_CUDA_SIM_DEBUG=1` the libraries are built with `-O0 -g3` from a
//!   source file kept beside them in the cache (`<stem>-<hash>.cc`), so gdb can break in a
//!   kernel by name or line and step through it, printing `threadIdx` (the book's chapter "A
//!   kernel on the CUDA simulator").
//! - Cache: each library is stored under a name holding a content hash of (runtime.h, the source,
//!   the flags, the compiler's version), in `$COTMAE_CUDA_SIM_CACHE`, else
//!   `$XDG_CACHE_HOME/cotmae/cuda-sim`, else `~/.cache/cotmae/cuda-sim`, else the temp dir; it is
//!   written to a temporary name and renamed, so parallel test processes never load a partial
//!   file. A failed compile is an [`Error::Compile`] carrying the compiler's message.

use crate::nvrtc::KernelFile;
use crate::{Error, Result};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

/// The dialect and the runtime, one header.
pub(crate) const RUNTIME_H: &str = include_str!("runtime.h");

const FLAGS: &[&str] = &[
    "-std=c++20",
    "-O2",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-U_FORTIFY_SOURCE",
    "-D_FORTIFY_SOURCE=0",
    "-Wno-unknown-pragmas",
];

/// Set to 1: build with debug information, unoptimised, from a kept source file (module docs).
pub const DEBUG_ENV: &str = "COTMAE_CUDA_SIM_DEBUG";

fn debug_build() -> bool {
    std::env::var(DEBUG_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// What the preprocessor leaves in place of `__global__` in the name scan.
const KERNEL_MARKER: &str = "COTMAE_SIM_KERNEL";

/// The entry point of one kernel: `sim_entry_<name>(void** args)`.
pub(crate) type Entry = unsafe extern "C" fn(*mut *mut c_void);

/// A loaded library; never unloaded (its code may be running on another thread's launch).
struct Library(*mut c_void);

// SAFETY: a dlopen handle may be used from any thread.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

impl Library {
    fn open(path: &Path, global: bool) -> std::result::Result<Library, String> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
        let flags = libc::RTLD_NOW
            | if global {
                libc::RTLD_GLOBAL
            } else {
                libc::RTLD_LOCAL
            };
        // SAFETY: a NUL-terminated path; the library's initialisers are our own code.
        let h = unsafe { libc::dlopen(c.as_ptr(), flags) };
        if h.is_null() {
            return Err(format!("dlopen {}: {}", path.display(), dl_error()));
        }
        Ok(Library(h))
    }

    fn symbol(&self, name: &str) -> Option<*mut c_void> {
        let c = CString::new(name).ok()?;
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(self.0, c.as_ptr()) };
        (!p.is_null()).then_some(p)
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local message or null.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a NUL-terminated string owned by libdl.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// The runtime library's entry points.
pub(crate) struct Runtime {
    _lib: Library,
    pub launch: unsafe extern "C" fn(
        *const super::launch::LaunchParams,
        *mut super::launch::LaunchResult,
    ) -> i32,
}

/// A kernel file compiled for the simulator.
pub(crate) struct Module {
    lib: Library,
}

impl Module {
    /// The entry point of kernel `name`, or None when the file defines no such kernel.
    pub fn entry(&self, name: &str) -> Option<Entry> {
        let p = self.lib.symbol(&format!("sim_entry_{name}"))?;
        // SAFETY: every sim_entry_ symbol is generated with the Entry signature.
        Some(unsafe { std::mem::transmute::<*mut c_void, Entry>(p) })
    }
}

fn compiler() -> String {
    std::env::var("CXX")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "g++".into())
}

/// The compiler's `--version` first line (part of every cache key).
fn compiler_version() -> Result<String> {
    static V: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    V.get_or_init(|| {
        let cxx = compiler();
        let out = Command::new(&cxx)
            .arg("--version")
            .output()
            .map_err(|e| format!("running `{cxx} --version`: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().next().unwrap_or("").to_string())
    })
    .clone()
    .map_err(|e| {
        Error::Unavailable(format!(
            "the CUDA simulator needs a C++20 compiler (g++ or $CXX): {e}"
        ))
    })
}

/// The cache directory (see the module docs), created if needed.
fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let candidates = [
        var("COTMAE_CUDA_SIM_CACHE"),
        var("XDG_CACHE_HOME").map(|d| d.join("cotmae/cuda-sim")),
        var("HOME").map(|d| d.join(".cache/cotmae/cuda-sim")),
    ];
    for dir in candidates.into_iter().flatten() {
        if std::fs::create_dir_all(&dir).is_ok() {
            return dir;
        }
    }
    let dir = std::env::temp_dir().join("cotmae-cuda-sim");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A 128-bit FNV-1a hash of the parts (with their lengths, so boundaries count).
fn content_hash(parts: &[&[u8]]) -> u128 {
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for part in parts {
        for &b in (part.len() as u64).to_le_bytes().iter().chain(part.iter()) {
            h ^= b as u128;
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// Runs the compiler on `source` (stdin) with `args`; its stdout, or an error with its stderr.
fn run_compiler(args: &[&str], source: &str) -> std::result::Result<Vec<u8>, String> {
    use std::io::Write;
    let cxx = compiler();
    let mut child = Command::new(&cxx)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {cxx}: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let text = source.to_string();
    // Written from another thread: the compiler may fill its output pipes before reading all.
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {cxx}: {e}"))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(out.stdout)
}

/// Builds (unless cached) the library for `source` with `extra` flags, named `stem-<hash>.so`,
/// and loads it.
fn build_and_load(
    stem: &str,
    source: &str,
    extra: &[&str],
    global: bool,
) -> std::result::Result<Library, String> {
    let version = compiler_version().map_err(|e| e.to_string())?;
    let debug = debug_build();
    let mut flags: Vec<&str> = FLAGS.iter().chain(extra).copied().collect();
    if debug {
        flags.retain(|f| *f != "-O2");
        flags.extend(["-O0", "-g3"]);
    }
    let hash = content_hash(&[
        source.as_bytes(),
        flags.join(" ").as_bytes(),
        version.as_bytes(),
    ]);
    let dir = cache_dir();
    let path = dir.join(format!("{stem}-{hash:032x}.so"));
    if path.exists() {
        match Library::open(&path, global) {
            Ok(lib) => return Ok(lib),
            // A damaged cache entry: build it again.
            Err(_) => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{stem}-{hash:032x}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp_str = tmp.to_string_lossy().into_owned();
    let mut args = flags.clone();
    // A debug build compiles a file on disk, so the debugger can show its lines.
    let kept = dir.join(format!("{stem}-{hash:032x}.cc"));
    let kept_str = kept.to_string_lossy().into_owned();
    if debug {
        // Without its `#line` directives, the debugger's line numbers are this file's own.
        let text: String = source
            .lines()
            .filter(|l| !l.starts_with("#line "))
            .flat_map(|l| [l, "\n"])
            .collect();
        std::fs::write(&kept, text).map_err(|e| format!("{}: {e}", kept.display()))?;
        args.extend([kept_str.as_str(), "-o", &tmp_str]);
    } else {
        args.extend(["-x", "c++", "-", "-o", &tmp_str]);
    }
    let built = run_compiler(&args, source);
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {} to {}: {e}", tmp.display(), path.display())
    })?;
    Library::open(&path, global)
}

/// The runtime library, built and loaded once per process, its fault handler installed.
pub(crate) fn runtime() -> Result<&'static Runtime> {
    static RT: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let lib = build_and_load(
            "cotmae-sim-runtime",
            RUNTIME_H,
            &["-DCOTMAE_SIM_RUNTIME_IMPL"],
            true,
        )?;
        let launch = lib
            .symbol("cotmae_sim_launch")
            .ok_or("the runtime library lacks cotmae_sim_launch")?;
        let install = lib
            .symbol("cotmae_sim_install_fault_handler")
            .ok_or("the runtime library lacks cotmae_sim_install_fault_handler")?;
        // SAFETY: the symbols are defined in runtime.h with these signatures.
        unsafe {
            let install = std::mem::transmute::<*mut c_void, extern "C" fn() -> i32>(install);
            if install() != 0 {
                return Err(format!(
                    "installing the fault handler: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(Runtime {
                _lib: lib,
                launch: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(
                        *const super::launch::LaunchParams,
                        *mut super::launch::LaunchResult,
                    ) -> i32,
                >(launch),
            })
        }
    })
    .as_ref()
    .map_err(|e| Error::Compile {
        file: "runtime.h",
        arch: "the CUDA simulator".into(),
        log: e.clone(),
    })
}

/// The kernel names of a file: the preprocessed text's identifiers that follow the marker, up to
/// their parameter list (`COTMAE_SIM_KERNEL void name(`).
fn scan_kernel_names(full: &str) -> std::result::Result<Vec<String>, String> {
    let text = run_compiler(
        &[
            "-std=c++20",
            "-E",
            "-P",
            "-DCOTMAE_SIM_SCAN",
            "-x",
            "c++",
            "-",
        ],
        &format!("{RUNTIME_H}\n{full}"),
    )?;
    let text = String::from_utf8_lossy(&text);
    let mut names = Vec::new();
    for (at, _) in text.match_indices(KERNEL_MARKER) {
        let rest = &text[at + KERNEL_MARKER.len()..];
        let head = rest.split('(').next().unwrap_or("");
        if let Some(name) = head.split_whitespace().last() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

fn compile_error(file: &KernelFile, log: String) -> Error {
    Error::Compile {
        file: file.name,
        arch: "the CUDA simulator (host C++)".into(),
        log,
    }
}

type ModuleCache = Mutex<HashMap<u128, Arc<OnceLock<std::result::Result<Arc<Module>, String>>>>>;

/// `file` compiled for the simulator and loaded, once per process (per distinct source).
pub(crate) fn module(file: &'static KernelFile) -> Result<Arc<Module>> {
    runtime()?;
    static CACHE: OnceLock<ModuleCache> = OnceLock::new();
    let key = content_hash(&[file.name.as_bytes(), file.source.as_bytes()]);
    let slot = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default()
        .clone();
    // Other files compile meanwhile; callers of this one wait for the first.
    let built = slot.get_or_init(|| {
        let full = file.full_source();
        let names = scan_kernel_names(&full)?;
        let mut source = format!("{RUNTIME_H}\n#line 1 \"{}.cu\"\n{full}\n", file.name);
        for n in &names {
            source.push_str(&format!(
                "extern \"C\" void sim_entry_{n}(void** a) {{ cotmae_sim::invoke({n}, a); }}\n"
            ));
        }
        let lib = build_and_load(&format!("kernels-{}", file.name), &source, &[], false)?;
        Ok(Arc::new(Module { lib }))
    });
    built.clone().map_err(|log| compile_error(file, log))
}
