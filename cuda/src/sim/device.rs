//! A simulated GPU ([`SimDevice`]): what `Gpu` holds in place of a CUDA context and stream when
//! the simulator is selected (`COTMAE_CUDA_SIM=1`, see [`enabled`]).
//!
//! - Memory: host mappings with guard pages (`memory.rs`); a device address is the host address.
//!   Copies and memsets are plain host copies, bounds-checked by the caller (`Gpu`).
//! - The stream: every operation is synchronous and runs under the device's stream lock, so the
//!   order in which they are issued is the order in which they run, as on one CUDA stream.
//! - Kernels run on the device's own worker thread (one per ordinal, for the process's life), which
//!   keeps the fibers' stacks, the alternate signal stack and the shared memory of `runtime.h`
//!   between launches; the issuing thread waits for the launch to finish.
//! - Each launch gets a seed from `COTMAE_CUDA_SIM_SEED` (default 0), the ordinal and a per-device
//!   launch counter: it orders the blocks and the resumption of threads at barriers, so runs are
//!   reproducible and a different seed gives a different schedule.
//! - The status word is a 16-byte simulated buffer like any other.

use super::compile::{module, Entry};
use super::launch::{self, Shape};
use super::memory::{PoolCounters, SimAlloc};
use crate::gpu::{DeviceInfo, PoolUsage, STATUS_BYTES, STATUS_SLOTS};
use crate::nvrtc::KernelFile;
use crate::{Error, Result};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

/// The variable that selects the simulator.
pub const SIM_ENV: &str = "COTMAE_CUDA_SIM";
/// The variable holding the base seed of the simulated schedules.
pub const SEED_ENV: &str = "COTMAE_CUDA_SIM_SEED";
/// How many devices the simulator offers (enough for the multi-GPU tests).
pub const SIM_DEVICES: usize = 8;
/// What a simulated device calls itself.
pub const SIM_NAME: &str = "cotmae CUDA simulator (host CPU)";

/// Whether `COTMAE_CUDA_SIM` is set to something other than "" or "0".
pub fn enabled() -> bool {
    std::env::var(SIM_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The simulated devices: an H100-like description (compute capability 9.0, 132 SMs) with the
/// host's memory as the device's.
pub fn availability() -> Result<Vec<DeviceInfo>> {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        return Err(Error::Unavailable(
            "the CUDA simulator runs on x86-64 Linux only".into(),
        ));
    }
    Ok((0..SIM_DEVICES).map(info).collect())
}

fn info(ordinal: usize) -> DeviceInfo {
    DeviceInfo {
        ordinal,
        name: SIM_NAME.to_string(),
        compute_capability: (9, 0),
        multiprocessors: 132,
        total_memory: host_memory().min(80 << 30),
    }
}

/// MemTotal of /proc/meminfo, or 16 GiB when it cannot be read.
fn host_memory() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(16 << 30)
}

/// The base seed from `COTMAE_CUDA_SIM_SEED`.
fn base_seed() -> Result<u64> {
    match std::env::var(SEED_ENV) {
        Err(_) => Ok(0),
        Ok(v) if v.is_empty() => Ok(0),
        Ok(v) => v.trim().parse().map_err(|_| {
            Error::Unavailable(format!(
                "{SEED_ENV}={v:?} is not an unsigned 64-bit integer"
            ))
        }),
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The worker thread of one ordinal: runs jobs one at a time, in order.
struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Worker {
    fn of(ordinal: usize) -> Result<&'static Worker> {
        static WORKERS: OnceLock<Mutex<HashMap<usize, &'static Worker>>> = OnceLock::new();
        let mut map = WORKERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get(&ordinal) {
            return Ok(w);
        }
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("cotmae-sim-cuda:{ordinal}"))
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .map_err(|e| Error::Unavailable(format!("starting the simulator's thread: {e}")))?;
        let w: &'static Worker = Box::leak(Box::new(Worker {
            jobs: Mutex::new(tx),
        }));
        map.insert(ordinal, w);
        Ok(w)
    }

    /// Runs `f` on the worker and waits for it; a panic inside `f` resumes on the caller.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        });
        // SAFETY: this function does not return before the job has run (or been dropped): it
        // waits for the job's reply, so everything the job borrows outlives it.
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job);
        assert!(sent.is_ok(), "the simulator's worker thread is gone");
        match rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the simulator's worker thread dropped a launch"),
        }
    }
}

/// One simulated GPU (see the module docs).
pub(crate) struct SimDevice {
    ordinal: usize,
    pub pool: Arc<PoolCounters>,
    status: SimAlloc,
    /// Held by every operation: the stream's order.
    stream: Mutex<()>,
    /// Dynamic shared memory each function was allowed beyond 48 KiB, by (file, kernel).
    opt_in: Mutex<HashMap<(&'static str, String), u32>>,
    launches: AtomicU64,
    seed: u64,
    worker: &'static Worker,
}

impl SimDevice {
    pub fn open(ordinal: usize) -> Result<(DeviceInfo, SimDevice)> {
        let devices = availability()?;
        let Some(info) = devices.get(ordinal).cloned() else {
            return Err(Error::Unavailable(format!(
                "there is no CUDA device {ordinal} ({} simulated devices)",
                devices.len()
            )));
        };
        let pool = Arc::new(PoolCounters::default());
        let status = SimAlloc::new(STATUS_BYTES, &pool).map_err(|e| Error::Driver {
            call: "cuMemAllocAsync",
            message: e,
        })?;
        // SAFETY: the status words' own bytes.
        unsafe { std::ptr::write_bytes(status.ptr(), 0, STATUS_BYTES) };
        let device = SimDevice {
            ordinal,
            pool,
            status,
            stream: Mutex::new(()),
            opt_in: Mutex::new(HashMap::new()),
            launches: AtomicU64::new(0),
            seed: base_seed()?,
            worker: Worker::of(ordinal)?,
        };
        Ok((info, device))
    }

    /// Runs `f` in stream order.
    pub fn ordered<R>(&self, f: impl FnOnce() -> R) -> R {
        let _stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// A new allocation of `bytes` (filled with 0xFF).
    pub fn alloc(&self, bytes: usize) -> Result<SimAlloc> {
        SimAlloc::new(bytes, &self.pool).map_err(|e| Error::Driver {
            call: "cuMemAllocAsync",
            message: format!("CUDA_ERROR_OUT_OF_MEMORY ({e}, allocating {bytes} bytes)"),
        })
    }

    /// Copies `bytes` bytes from `src` to `dst` in stream order (the ranges were checked).
    ///
    /// # Safety
    /// Both ranges must be valid host memory of that many bytes (simulated buffers, or host data).
    pub unsafe fn copy(&self, dst: *mut u8, src: *const u8, bytes: usize) {
        // SAFETY: the caller's promise; `ptr::copy` allows overlap.
        self.ordered(|| unsafe { std::ptr::copy(src, dst, bytes) })
    }

    /// Sets `bytes` bytes at `dst` to `value` in stream order.
    ///
    /// # Safety
    /// As [`SimDevice::copy`].
    pub unsafe fn memset(&self, dst: *mut u8, value: u8, bytes: usize) {
        // SAFETY: the caller's promise.
        self.ordered(|| unsafe { std::ptr::write_bytes(dst, value, bytes) })
    }

    pub fn pool_usage(&self) -> PoolUsage {
        PoolUsage {
            reserved: self.pool.reserved.load(Ordering::Relaxed),
            used: self.pool.used.load(Ordering::Relaxed),
        }
    }

    pub fn status_address(&self) -> u64 {
        self.status.address()
    }

    /// The status words (four per op slot), cleared.
    pub fn take_status(&self) -> [[u32; 4]; STATUS_SLOTS] {
        self.ordered(|| {
            let p = self.status.ptr() as *mut [[u32; 4]; STATUS_SLOTS];
            // SAFETY: the status words' own bytes, 16-byte aligned.
            unsafe { std::mem::take(&mut *p) }
        })
    }

    /// Records that kernel `name` of `file` may use `bytes` of dynamic shared memory
    /// (`cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)`), which cannot exceed 227 KiB.
    pub fn set_max_dynamic_shared(
        &self,
        file: &'static KernelFile,
        name: &str,
        bytes: u32,
    ) -> Result<()> {
        if bytes > launch::MAX_SHARED_BYTES {
            return Err(Error::Driver {
                call: "cuFuncSetAttribute",
                message: format!(
                    "CUDA_ERROR_INVALID_VALUE: kernel {name}: {bytes} bytes of dynamic shared \
                     memory exceed the device's maximum of {}",
                    launch::MAX_SHARED_BYTES
                ),
            });
        }
        self.opt_in
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((file.name, name.to_string()), bytes);
        Ok(())
    }

    /// The entry point of kernel `name` of `file` (compiled on first use).
    pub fn function(&self, file: &'static KernelFile, name: &str) -> Result<Entry> {
        module(file)?.entry(name).ok_or_else(|| Error::Driver {
            call: "cuModuleGetFunction",
            message: format!(
                "CUDA_ERROR_NOT_FOUND (named symbol not found: {} defines no kernel {name})",
                file.name
            ),
        })
    }

    /// Compiles and loads `file`.
    pub fn load(&self, file: &'static KernelFile) -> Result<()> {
        module(file).map(|_| ())
    }

    /// Runs kernel `name` of `file` over `shape` with `args`, in stream order, on the worker.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters; every device address among them must be valid
    /// for what the kernel reads and writes (an invalid one faults, and is reported, only where
    /// it hits a guard page).
    pub unsafe fn launch(
        &self,
        file: &'static KernelFile,
        name: &str,
        shape: Shape,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let entry = self.function(file, name)?;
        let opt_in = self
            .opt_in
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(file.name, name.to_string()))
            .copied()
            .unwrap_or(0);
        launch::check_limits(name, shape, opt_in)?;
        let n = self.launches.fetch_add(1, Ordering::Relaxed);
        let seed = mix(mix(self.seed ^ 0x5DEECE66D, self.ordinal as u64), n);
        /// The argument pointers, carried to the worker (which runs while the caller waits).
        struct Args(*mut *mut c_void, usize);
        // SAFETY: the pointers are only used while the issuing thread waits for the launch.
        unsafe impl Send for Args {}
        let a = Args(args.as_mut_ptr(), args.len());
        self.ordered(|| {
            self.worker.run(move || {
                let a = a;
                // SAFETY: the caller's promise; the slice lives until the launch returns.
                unsafe {
                    let args = std::slice::from_raw_parts_mut(a.0, a.1);
                    launch::run(name, entry, shape, args, seed)
                }
            })
        })
    }
}

/// A 64-bit mix of two words (splitmix64's finaliser over their combination).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9E3779B97F4A7C15).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}
