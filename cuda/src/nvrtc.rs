//! Run-time compilation of `cuda/kernels/*.cu` with NVRTC.
//!
//! Every kernel file is embedded in the binary (`include_str!`). Before compiling, the line
//! `#include "common.cuh"` is replaced by the prelude's text, so NVRTC needs no include path and
//! no system header. A file is compiled for one compute capability at a time into a CUBIN
//! (`--gpu-architecture=sm_XY`, so ptxas runs too and the device loads machine code without a
//! JIT step); the CUBIN is cached in memory per (file, compute capability), and each `Gpu` loads
//! it once per file. A failed compile returns the NVRTC log in the error.
//!
//! Options: C++17, and NVRTC's defaults otherwise (IEEE division and square root, denormals
//! kept, fused multiply-adds allowed; kernels that must match the CPU bit for bit use explicitly
//! rounded operations such as `__fmul_rn`).
//!
//! NVRTC needs no GPU: the `nvrtc_compiles_every_kernel` test compiles every file for sm_80 and
//! sm_90 on machines without one.

use crate::{Error, Result};
use cudarc::nvrtc::sys;
use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex, OnceLock};

/// The shared prelude pasted into every kernel file.
pub const COMMON: &str = include_str!("../kernels/common.cuh");

const INCLUDE_LINE: &str = "#include \"common.cuh\"";

/// One kernel file: its name (the file stem) and its source.
#[derive(Debug)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
}

/// Kernel files by family, one static each (`kernels::SOFTMAX`, ...).
pub mod kernels {
    use super::KernelFile;

    macro_rules! kernel_file {
        ($($ident:ident = $name:literal),* $(,)?) => {
            $(pub static $ident: KernelFile = KernelFile {
                name: $name,
                source: include_str!(concat!("../kernels/", $name, ".cu")),
            };)*
            /// Every kernel file.
            pub static ALL: &[&KernelFile] = &[$(&$ident),*];
        };
    }

    kernel_file!(
        ACTIVATION = "activation",
        ADAMW = "adamw",
        CAST = "cast",
        CROSS_ENTROPY = "cross_entropy",
        DROPOUT = "dropout",
        ELEMENTWISE = "elementwise",
        EMBEDDING = "embedding",
        FLASH_ATTENTION = "flash_attention",
        GRAD_NORM = "grad_norm",
        INDEX = "index",
        LAYER_NORM = "layer_norm",
        LOSS_SCALE = "loss_scale",
        REDUCE = "reduce",
        SOFTMAX = "softmax",
        TOPK = "topk",
    );
}

impl KernelFile {
    /// The source NVRTC compiles: the file with the prelude pasted in place of its include line.
    pub fn full_source(&self) -> String {
        self.source.replacen(INCLUDE_LINE, COMMON, 1)
    }
}

/// A kernel file compiled for one compute capability: the machine code the device loads, and
/// the PTX it was assembled from (read by tests to list the kernels).
#[derive(Clone, Debug)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub ptx: Vec<u8>,
}

/// The NVRTC architecture name of compute capability (major, minor): `sm_XY`.
pub fn arch(cc: (u32, u32)) -> String {
    format!("sm_{}{}", cc.0, cc.1)
}

/// Errors unless the NVRTC library can be loaded (nothing else is needed to compile).
pub fn nvrtc_available() -> Result<()> {
    // SAFETY: only tries to dlopen the library by its candidate names.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "the NVRTC library (libnvrtc.so.{}) was not found; install the CUDA toolkit or the \
             `nvidia-cuda-nvrtc` wheel and put its lib directory on LD_LIBRARY_PATH",
            crate::CUDA_MAJOR
        )))
    }
}

/// The NVRTC version (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    nvrtc_available()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live ints.
    let r = crate::guard("nvrtcVersion", || unsafe {
        sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    nvrtc_check("nvrtcVersion", r)?;
    Ok((major, minor))
}

fn nvrtc_check(call: &'static str, r: sys::nvrtcResult) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Driver {
            call,
            message: format!("{r:?}"),
        })
    }
}

/// Destroys an NVRTC program when dropped.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

/// Compiles `file` for compute capability `cc` (`--gpu-architecture=sm_XY`). The error of a
/// failed compile carries NVRTC's log.
pub fn compile(file: &KernelFile, cc: (u32, u32)) -> Result<Compiled> {
    nvrtc_available()?;
    let arch = arch(cc);
    let source = CString::new(file.full_source())
        .map_err(|_| Error::arg("nvrtc", format!("{}.cu contains a NUL byte", file.name)))?;
    let name = CString::new(format!("{}.cu", file.name))
        .map_err(|_| Error::arg("nvrtc", "a kernel file name contains a NUL byte"))?;
    let options = [
        CString::new(format!("--gpu-architecture={arch}")),
        CString::new("--std=c++17"),
    ]
    .into_iter()
    .collect::<std::result::Result<Vec<_>, _>>()
    .map_err(|_| Error::arg("nvrtc", "an option contains a NUL byte"))?;
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    crate::guard("nvrtc", || -> Result<Compiled> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: source and name outlive the program (destroyed at the end of this closure);
        // no headers are passed.
        let r = unsafe {
            sys::nvrtcCreateProgram(
                &mut raw,
                source.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        nvrtc_check("nvrtcCreateProgram", r)?;
        let prog = Program(raw);
        // SAFETY: the option pointers point into `options`, alive for the call.
        let r = unsafe {
            sys::nvrtcCompileProgram(prog.0, option_ptrs.len() as i32, option_ptrs.as_ptr())
        };
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(Error::Compile {
                file: file.name,
                arch: format!("{arch} with NVRTC"),
                log: program_log(&prog).unwrap_or_else(|e| format!("{r:?} (no log: {e})")),
            });
        }
        let (mut cubin_size, mut ptx_size) = (0usize, 0usize);
        // SAFETY: size out-pointers, then buffers of those sizes.
        unsafe {
            nvrtc_check(
                "nvrtcGetCUBINSize",
                sys::nvrtcGetCUBINSize(prog.0, &mut cubin_size),
            )?;
            nvrtc_check(
                "nvrtcGetPTXSize",
                sys::nvrtcGetPTXSize(prog.0, &mut ptx_size),
            )?;
        }
        let mut out = Compiled {
            cubin: vec![0u8; cubin_size],
            ptx: vec![0u8; ptx_size],
        };
        // SAFETY: as above.
        unsafe {
            nvrtc_check(
                "nvrtcGetCUBIN",
                sys::nvrtcGetCUBIN(prog.0, out.cubin.as_mut_ptr() as *mut c_char),
            )?;
            nvrtc_check(
                "nvrtcGetPTX",
                sys::nvrtcGetPTX(prog.0, out.ptx.as_mut_ptr() as *mut c_char),
            )?;
        }
        Ok(out)
    })?
}

fn program_log(prog: &Program) -> Result<String> {
    let mut size = 0usize;
    // SAFETY: size out-pointer, then a buffer of that size.
    nvrtc_check("nvrtcGetProgramLogSize", unsafe {
        sys::nvrtcGetProgramLogSize(prog.0, &mut size)
    })?;
    let mut buf = vec![0u8; size];
    nvrtc_check("nvrtcGetProgramLog", unsafe {
        sys::nvrtcGetProgramLog(prog.0, buf.as_mut_ptr() as *mut c_char)
    })?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

type CubinCache = Mutex<HashMap<(&'static str, u32, u32), Arc<Vec<u8>>>>;

/// The CUBIN of `file` for compute capability `cc`, compiled on first use and kept for the
/// process (devices with the same compute capability share it).
pub fn cubin(file: &'static KernelFile, cc: (u32, u32)) -> Result<Arc<Vec<u8>>> {
    static CACHE: OnceLock<CubinCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (file.name, cc.0, cc.1);
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    // Compiled outside the lock: other files can compile meanwhile; a race compiles twice.
    let code = Arc::new(compile(file, cc)?.cubin);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, code.clone());
    Ok(code)
}

/// The names of the `extern "C"` kernels a PTX text defines (`.entry name(`).
pub fn ptx_entries(ptx: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(ptx);
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix(".visible .entry ")?;
            Some(rest.split('(').next()?.trim().to_string())
        })
        .collect()
}
