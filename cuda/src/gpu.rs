//! One GPU: [`Gpu`] holds the device's primary context, its single compute stream, the kernels
//! loaded on it, its BLAS handles and a status word kernels report bad input through.
//!
//! - Finding CUDA: [`availability`] checks, in order, that libcuda (the driver), NVRTC, cuBLAS and
//!   cuBLASLt can be loaded (cudarc's `is_culib_present`), that the driver supports the CUDA 13.0
//!   API the bindings target, and that a device exists; each failure is an
//!   [`Error::Unavailable`] saying what to install. cudarc panics when a library or symbol is
//!   missing at a call; the calls that may hit one run inside [`guard`], so such a panic becomes
//!   an error and its message is not printed.
//! - Memory: buffers come from the device's stream-ordered pool (`cuMemAllocAsync` on the compute
//!   stream, `cuMemFreeAsync` on drop). The pool's release threshold is raised to "never", so freed
//!   memory stays reserved for the next allocation instead of going back to the driver at every
//!   synchronisation: after the first training step no op calls into the driver's allocator.
//! - One stream: every kernel, copy and GEMM of a `Gpu` runs on its one non-blocking stream, in
//!   issue order, so no event tracking between streams is needed (it is switched off). The one
//!   exception, an NCCL rank's communication stream, is ordered with it by explicit events
//!   (`comm_stream.rs`).
//! - Kernels: [`Gpu::function`] compiles a kernel file for the device's compute capability on
//!   first use (`nvrtc.rs`), loads the module once and caches each function.
//! - Timing: [`Gpu::timer`] records CUDA events on the stream.

use crate::buffer::{DeviceBuffer, DeviceElem, Storage};
use crate::counters::{Count, Counters, LiveCounters};
use crate::nvrtc::{self, KernelFile};
use crate::sim::launch::DEFAULT_SHARED_BYTES;
use crate::sim::{self, device::SimDevice};
use crate::{Error, Result};
use cudarc::driver::sys::{
    CUdevice_attribute, CUevent_flags, CUfunction_attribute, CUmemPool_attribute,
};
use cudarc::driver::{result as dr, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

/// The CUDA API version the bindings are built for (cudarc feature `cuda-13000`).
pub const CUDA_MAJOR: u32 = 13;
pub const CUDA_MINOR: u32 = 0;

thread_local! {
    /// Set while this thread runs inside [`guard`]: the panic hook stays silent then.
    static IN_GUARD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside the CUDA bindings (a library or symbol that cannot be
/// loaded) into [`Error::Unavailable`]. The first call chains a panic hook that keeps such a
/// panic's message off stderr (every other panic still reaches the previous hook), so the user
/// sees the error, not the bindings' panic.
pub(crate) fn guard<R>(what: &'static str, f: impl FnOnce() -> R) -> Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_GUARD.with(|g| g.get()) {
                previous(info)
            }
        }));
    });
    let outer = IN_GUARD.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_GUARD.with(|g| g.set(outer));
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string());
        Error::Unavailable(format!("{what} failed inside the CUDA bindings: {msg}"))
    })
}

/// A device as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for an H100/H200.
    pub compute_capability: (u32, u32),
    pub multiprocessors: u32,
    pub total_memory: usize,
}

/// Errors with what to install unless the CUDA driver, NVRTC, cuBLAS and cuBLASLt libraries can
/// all be loaded.
pub fn check_libraries() -> Result<()> {
    // SAFETY: each check only tries to dlopen the library by its candidate names.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    if !driver {
        return Err(Error::Unavailable(
            "the CUDA driver library (libcuda.so) was not found: no NVIDIA driver is installed, \
             or it is not on the library path"
                .into(),
        ));
    }
    nvrtc::nvrtc_available()?;
    let libs = [
        ("cuBLAS", unsafe { cudarc::cublas::sys::is_culib_present() }),
        ("cuBLASLt", unsafe {
            cudarc::cublaslt::sys::is_culib_present()
        }),
    ];
    for (name, present) in libs {
        if !present {
            return Err(Error::Unavailable(format!(
                "the {name} library (lib{}.so.{CUDA_MAJOR}) was not found; install the CUDA \
                 toolkit or the `nvidia-cublas` wheel and put its lib directory on LD_LIBRARY_PATH",
                name.to_lowercase()
            )));
        }
    }
    Ok(())
}

/// The reason inside an [`Error::Unavailable`], or the whole message of another error.
fn reason(e: Error) -> String {
    match e {
        Error::Unavailable(r) => r,
        other => other.to_string(),
    }
}

/// Loads the libraries, initialises the driver and checks its version (once per process; the
/// outcome is kept, so a missing CUDA is diagnosed once).
fn init_driver() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let outcome = INIT.get_or_init(|| {
        check_libraries().map_err(reason)?;
        match guard("cuInit", dr::init).map_err(reason)? {
            Ok(()) => {}
            Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_NO_DEVICE => {
                return Err("the driver found no CUDA device".to_string())
            }
            Err(e) => return Err(Error::driver("cuInit", e).to_string()),
        }
        let mut version = 0;
        // SAFETY: one out-pointer to a live int.
        let r = guard("cuDriverGetVersion", || unsafe {
            cudarc::driver::sys::cuDriverGetVersion(&mut version)
        })
        .map_err(reason)?;
        r.result()
            .map_err(|e| Error::driver("cuDriverGetVersion", e).to_string())?;
        let (major, minor) = (version / 1000, (version % 1000) / 10);
        if (major as u32, minor as u32) < (CUDA_MAJOR, CUDA_MINOR) {
            return Err(format!(
                "the NVIDIA driver supports CUDA {major}.{minor}, and this build needs \
                 {CUDA_MAJOR}.{CUDA_MINOR} or newer; update the driver"
            ));
        }
        Ok(())
    });
    outcome.clone().map_err(Error::Unavailable)
}

fn attribute(dev: cudarc::driver::sys::CUdevice, a: CUdevice_attribute) -> Result<u32> {
    // SAFETY: `dev` comes from cuDeviceGet.
    let v = unsafe { dr::device::get_attribute(dev, a) }
        .map_err(|e| Error::driver("cuDeviceGetAttribute", e))?;
    Ok(v.max(0) as u32)
}

fn device_info(ordinal: usize) -> Result<DeviceInfo> {
    let dev = dr::device::get(ordinal as i32).map_err(|e| Error::driver("cuDeviceGet", e))?;
    use CUdevice_attribute::*;
    Ok(DeviceInfo {
        ordinal,
        name: dr::device::get_name(dev).map_err(|e| Error::driver("cuDeviceGetName", e))?,
        compute_capability: (
            attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ),
        multiprocessors: attribute(dev, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        // SAFETY: as above.
        total_memory: unsafe { dr::device::total_mem(dev) }
            .map_err(|e| Error::driver("cuDeviceTotalMem", e))?,
    })
}

/// The CUDA devices of this machine, or an [`Error::Unavailable`] saying why CUDA cannot be used
/// (a missing library, a driver older than CUDA 13.0, no device). With `COTMAE_CUDA_SIM=1`, the
/// simulated devices instead (libcuda is never touched).
pub fn availability() -> Result<Vec<DeviceInfo>> {
    if sim::enabled() {
        return sim::device::availability();
    }
    init_driver().map_err(|e| match e {
        Error::Unavailable(r) => Error::Unavailable(format!(
            "{r} (set {}=1 to run on the CUDA simulator instead)",
            sim::SIM_ENV
        )),
        other => other,
    })?;
    let count = guard("cuDeviceGetCount", dr::device::get_count)?
        .map_err(|e| Error::driver("cuDeviceGetCount", e))?;
    if count <= 0 {
        return Err(Error::Unavailable("the driver found no CUDA device".into()));
    }
    guard("device query", || {
        (0..count as usize)
            .map(device_info)
            .collect::<Result<Vec<_>>>()
    })?
}

/// Pool statistics in bytes: reserved from the driver, and in use by live buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    pub reserved: u64,
    pub used: u64,
}

/// Error codes kernels write to the status word (common.cuh).
const ERR_INDEX_OUT_OF_RANGE: u32 = 1;
const ERR_TARGET_OUT_OF_RANGE: u32 = 2;

/// Status slots: each op that checks its input on the device ([`Gpu::status_address_for`])
/// gets its own four words [code, value low, value high, unused], so the report names the op.
pub(crate) const STATUS_SLOTS: usize = 16;
pub(crate) const STATUS_BYTES: usize = STATUS_SLOTS * 16;

/// A launch shape: grid, block, dynamic shared memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

/// Threads per block of the 1-D grid-stride kernels.
pub(crate) const THREADS: u32 = 256;

impl Launch {
    /// A 1-D grid-stride launch covering `work` items with `THREADS`-thread blocks (the grid is
    /// capped; the kernels loop).
    pub fn grid_stride(work: usize) -> Launch {
        let blocks = work.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
        Launch {
            grid: (blocks, 1, 1),
            block: (THREADS, 1, 1),
            shared_bytes: 0,
        }
    }

    /// A 2-D grid-stride launch over `rows` rows of `units` units each (the `_rows` kernels of
    /// elementwise.cu): 256-thread blocks, x over a row's units (32..=256 wide, by the row's
    /// length), y over rows; both grid dims capped (the kernels loop).
    pub fn rows(rows: usize, units: usize) -> Launch {
        let bx = (units.div_ceil(32) * 32).clamp(32, THREADS as usize);
        let by = THREADS as usize / bx;
        Launch {
            grid: (
                units.div_ceil(bx).clamp(1, 1 << 16) as u32,
                rows.div_ceil(by).clamp(1, 65535) as u32,
                1,
            ),
            block: (bx as u32, by as u32, 1),
            shared_bytes: 0,
        }
    }

    /// One block per row (`rows` <= 2^31 - 1) with a block size suited to rows of `n`: about
    /// n / 4 threads, a multiple of 32 in 32..=1024.
    pub fn per_row(op: &'static str, rows: usize, n: usize) -> Result<Launch> {
        if rows > i32::MAX as usize {
            crate::error::bail!(op, "{rows} rows exceed the grid limit of 2^31 - 1");
        }
        let threads = (n.div_ceil(4).div_ceil(32) * 32).clamp(32, 1024) as u32;
        Ok(Launch {
            grid: (rows as u32, 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        })
    }
}

/// A GPU and everything kernels need on it. Shared as `Arc<Gpu>` (see [`gpu`]); every method
/// takes `&self` and may be called from any thread.
pub struct Gpu {
    info: DeviceInfo,
    backend: Backend,
    pub(crate) blas: Mutex<Option<Arc<crate::blas::Blas>>>,
    /// Syncs, launches, GEMMs, heuristic queries, weight casts, bytes moved (`counters.rs`).
    pub(crate) counters: LiveCounters,
    /// The op of each status slot, in order of first use.
    status_ops: Mutex<Vec<&'static str>>,
    /// cuBLASLt plans by problem (`lt_plans.rs`).
    pub(crate) lt_plans: crate::lt_plans::PlanCache,
}

/// A real device through the driver, or the simulator.
enum Backend {
    Cuda(CudaDevice),
    Sim(SimDevice),
}

/// What a real GPU's `Gpu` holds.
struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    /// [code, value low, value high, unused] per status slot, zero when no kernel reported.
    status: cudarc::driver::CudaSlice<u32>,
}

/// A kernel as [`Gpu::function`] finds it.
#[derive(Clone, Debug)]
pub enum Function {
    /// A function of a loaded CUDA module.
    Cuda(CudaFunction),
    /// A kernel of a simulated device (its entry point in the host-compiled library).
    Simulated,
}

/// The process-wide handle of device `ordinal`, created on first use. Prefer this to
/// [`Gpu::new`], which creates a second stream and module set on the same device.
pub fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    let map = GPUS.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = map.get(&ordinal) {
        return Ok(g.clone());
    }
    let g = Gpu::new(ordinal)?;
    map.insert(ordinal, g.clone());
    Ok(g)
}

impl Gpu {
    /// Opens device `ordinal`: its primary context, a new compute stream, the pool setting and
    /// the status word. Errors (never panics) when CUDA is unavailable or the device does not
    /// exist. With `COTMAE_CUDA_SIM=1`, opens a simulated device ([`Gpu::simulated`]).
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        if sim::enabled() {
            return Gpu::simulated(ordinal);
        }
        let devices = availability()?;
        let Some(info) = devices.iter().find(|d| d.ordinal == ordinal).cloned() else {
            return Err(Error::Unavailable(format!(
                "there is no CUDA device {ordinal} ({} device{} found)",
                devices.len(),
                if devices.len() == 1 { "" } else { "s" }
            )));
        };
        guard("opening the device", || Self::open(info))?
    }

    /// Opens simulated device `ordinal` (0..8) whatever `COTMAE_CUDA_SIM` says (see `sim/`).
    pub fn simulated(ordinal: usize) -> Result<Arc<Gpu>> {
        let (info, device) = SimDevice::open(ordinal)?;
        Ok(Arc::new(Gpu {
            info,
            backend: Backend::Sim(device),
            blas: Mutex::new(None),
            counters: LiveCounters::default(),
            status_ops: Mutex::new(Vec::new()),
            lt_plans: Default::default(),
        }))
    }

    fn open(info: DeviceInfo) -> Result<Arc<Gpu>> {
        let ctx = CudaContext::new(info.ordinal)
            .map_err(|e| Error::driver("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: called before this context allocates or creates a stream; every use of our
        // buffers is ordered on the single stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::driver("cuStreamCreate", e))?;
        if ctx.has_async_alloc() {
            let dev = ctx.cu_device();
            // SAFETY: the device comes from the context; the attribute takes a u64.
            unsafe {
                let pool = dr::device::get_mem_pool(dev)
                    .map_err(|e| Error::driver("cuDeviceGetMemPool", e))?;
                let mut keep = u64::MAX;
                dr::mem_pool::set_attribute(
                    pool,
                    CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    &mut keep as *mut u64 as *mut c_void,
                )
                .map_err(|e| Error::driver("cuMemPoolSetAttribute", e))?;
            }
        }
        let status = stream
            .alloc_zeros::<u32>(STATUS_BYTES / 4)
            .map_err(|e| Error::driver("cuMemAllocAsync", e))?;
        Ok(Arc::new(Gpu {
            info,
            backend: Backend::Cuda(CudaDevice {
                ctx,
                stream,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                status,
            }),
            blas: Mutex::new(None),
            counters: LiveCounters::default(),
            status_ops: Mutex::new(Vec::new()),
            lt_plans: Default::default(),
        }))
    }

    /// Whether this is a simulated device (`COTMAE_CUDA_SIM=1`).
    pub fn is_simulated(&self) -> bool {
        matches!(self.backend, Backend::Sim(_))
    }

    /// The simulated device, or None on a real GPU.
    pub(crate) fn sim(&self) -> Option<&SimDevice> {
        match &self.backend {
            Backend::Sim(s) => Some(s),
            Backend::Cuda(_) => None,
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn ordinal(&self) -> usize {
        self.info.ordinal
    }

    pub fn compute_capability(&self) -> (u32, u32) {
        self.info.compute_capability
    }

    /// The CUDA context, or None on a simulated device.
    pub fn context(&self) -> Option<&Arc<CudaContext>> {
        self.cuda().map(|c| &c.ctx)
    }

    /// The compute stream every op of this GPU runs on, or None on a simulated device.
    pub fn stream(&self) -> Option<&Arc<CudaStream>> {
        self.cuda().map(|c| &c.stream)
    }

    fn cuda(&self) -> Option<&CudaDevice> {
        match &self.backend {
            Backend::Cuda(c) => Some(c),
            Backend::Sim(_) => None,
        }
    }

    /// The real device's stream, or an error naming `call` on a simulated device (for the
    /// library calls the simulator does not provide).
    pub(crate) fn cuda_stream(&self, call: &'static str) -> Result<&Arc<CudaStream>> {
        self.stream().ok_or_else(|| {
            Error::Unavailable(format!("{call} is not yet simulated (COTMAE_CUDA_SIM=1)"))
        })
    }

    /// Makes the context current on this thread (nothing to do on a simulated device).
    pub(crate) fn bind(&self) -> Result<()> {
        match &self.backend {
            Backend::Cuda(c) => c
                .ctx
                .bind_to_thread()
                .map_err(|e| Error::driver("cuCtxSetCurrent", e)),
            Backend::Sim(_) => Ok(()),
        }
    }

    // ---- memory -------------------------------------------------------------------------

    /// `len` elements whose values are unspecified (whatever the pool's memory held; 0xFF bytes
    /// on a simulated device).
    pub fn alloc<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let storage = match &self.backend {
            // SAFETY: every DeviceElem accepts any bit pattern, so unwritten memory is a valid
            // value.
            Backend::Cuda(c) => Storage::Cuda(
                unsafe { c.stream.alloc::<T>(len.max(1)) }.map_err(|e| alloc_error::<T>(len, e))?,
            ),
            Backend::Sim(s) => Storage::Sim(s.alloc(sim_bytes::<T>(len)?)?),
        };
        Ok(self.wrap(storage, len))
    }

    fn wrap<T: DeviceElem>(&self, storage: Storage<T>, len: usize) -> DeviceBuffer<T> {
        DeviceBuffer {
            storage,
            len,
            ordinal: self.ordinal(),
        }
    }

    /// `len` zeros.
    pub fn zeros<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        match &self.backend {
            Backend::Cuda(c) => {
                let slice = c
                    .stream
                    .alloc_zeros::<T>(len.max(1))
                    .map_err(|e| alloc_error::<T>(len, e))?;
                Ok(self.wrap(Storage::Cuda(slice), len))
            }
            Backend::Sim(_) => {
                let mut buf = self.alloc::<T>(len)?;
                self.fill_zeros(&mut buf)?;
                Ok(buf)
            }
        }
    }

    /// Sets every element of `buf` to zero (asynchronously, on the stream).
    pub fn fill_zeros<T: DeviceElem>(&self, buf: &mut DeviceBuffer<T>) -> Result<()> {
        self.same_device("fill_zeros", buf)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.count(Count::Launch, 1);
        match (&self.backend, &mut buf.storage) {
            (Backend::Cuda(c), Storage::Cuda(slice)) => c
                .stream
                .memset_zeros(slice)
                .map_err(|e| Error::driver("cuMemsetD8Async", e)),
            (Backend::Sim(s), Storage::Sim(a)) => {
                // SAFETY: the buffer's own bytes.
                unsafe { s.memset(a.ptr(), 0, a.bytes()) };
                Ok(())
            }
            _ => Err(mixed_backends("fill_zeros")),
        }
    }

    /// A device copy of `data`.
    pub fn upload<T: DeviceElem>(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        if data.is_empty() {
            return self.alloc(0);
        }
        self.count(Count::BytesToDevice, std::mem::size_of_val(data) as u64);
        match &self.backend {
            Backend::Cuda(c) => {
                let slice = c
                    .stream
                    .clone_htod(data)
                    .map_err(|e| Error::driver("cuMemcpyHtoDAsync", e))?;
                Ok(self.wrap(Storage::Cuda(slice), data.len()))
            }
            Backend::Sim(_) => {
                let mut buf = self.alloc::<T>(data.len())?;
                self.upload_into(data, &mut buf, 0)?;
                Ok(buf)
            }
        }
    }

    /// A device copy of host records a kernel reads (multi-tensor tables), freed when dropped.
    pub(crate) fn upload_records<T: cudarc::driver::DeviceRepr>(
        &self,
        data: &[T],
    ) -> Result<Records<T>> {
        self.count(Count::BytesToDevice, std::mem::size_of_val(data) as u64);
        match &self.backend {
            Backend::Cuda(c) => c
                .stream
                .clone_htod(data)
                .map(Records::Cuda)
                .map_err(|e| Error::driver("cuMemcpyHtoDAsync", e)),
            Backend::Sim(s) => {
                let bytes = std::mem::size_of_val(data);
                let a = s.alloc(bytes)?;
                // SAFETY: `bytes` bytes of the records (padding included, copied as raw bytes)
                // into a fresh allocation of that size.
                unsafe { s.copy(a.ptr(), data.as_ptr() as *const u8, bytes) };
                Ok(Records::Sim(a, std::marker::PhantomData))
            }
        }
    }

    /// Copies `data` into `buf[offset..offset + data.len()]`.
    pub fn upload_into<T: DeviceElem>(
        &self,
        data: &[T],
        buf: &mut DeviceBuffer<T>,
        offset: usize,
    ) -> Result<()> {
        self.same_device("upload_into", buf)?;
        let addr = buf.address_at("upload_into", offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        self.count(Count::BytesToDevice, std::mem::size_of_val(data) as u64);
        match (&self.backend, &mut buf.storage) {
            (Backend::Cuda(c), Storage::Cuda(slice)) => {
                let mut view = slice.slice_mut(offset..offset + data.len());
                c.stream
                    .memcpy_htod(data, &mut view)
                    .map_err(|e| Error::driver("cuMemcpyHtoDAsync", e))
            }
            (Backend::Sim(s), Storage::Sim(_)) => {
                // SAFETY: the destination range was bounds-checked above.
                unsafe {
                    s.copy(
                        addr as *mut u8,
                        data.as_ptr() as *const u8,
                        std::mem::size_of_val(data),
                    )
                };
                Ok(())
            }
            _ => Err(mixed_backends("upload_into")),
        }
    }

    /// The whole buffer on the host (waits for the stream).
    pub fn download<T: DeviceElem>(&self, buf: &DeviceBuffer<T>) -> Result<Vec<T>> {
        self.download_range(buf, 0, buf.len())
    }

    /// Elements `offset..offset + len` on the host (waits for the stream).
    pub fn download_range<T: DeviceElem>(
        &self,
        buf: &DeviceBuffer<T>,
        offset: usize,
        len: usize,
    ) -> Result<Vec<T>> {
        self.same_device("download", buf)?;
        let addr = buf.address_at("download", offset, len)?;
        let mut out = vec![T::default(); len];
        if len == 0 {
            return Ok(out);
        }
        self.count(Count::Sync, 1);
        self.count(Count::BytesToHost, (len * std::mem::size_of::<T>()) as u64);
        match (&self.backend, &buf.storage) {
            (Backend::Cuda(c), Storage::Cuda(slice)) => {
                let view = slice.slice(offset..offset + len);
                c.stream
                    .memcpy_dtoh(&view, &mut out[..])
                    .map_err(|e| Error::driver("cuMemcpyDtoHAsync", e))?;
                self.wait()?;
            }
            (Backend::Sim(s), Storage::Sim(_)) => {
                // SAFETY: the source range was bounds-checked above; `out` holds `len` elements.
                unsafe {
                    s.copy(
                        out.as_mut_ptr() as *mut u8,
                        addr as *const u8,
                        len * std::mem::size_of::<T>(),
                    )
                };
            }
            _ => return Err(mixed_backends("download")),
        }
        Ok(out)
    }

    /// Copies `len` elements from `src[src_offset..]` to `dst[dst_offset..]` on the device.
    pub fn copy<T: DeviceElem>(
        &self,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        dst: &mut DeviceBuffer<T>,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.same_device("copy", src)?;
        self.same_device("copy", dst)?;
        let s = src.address_at("copy", src_offset, len)?;
        let d = dst.address_at("copy", dst_offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let bytes = len * std::mem::size_of::<T>();
        self.count(Count::BytesOnDevice, bytes as u64);
        match &self.backend {
            Backend::Cuda(c) => {
                self.bind()?;
                // SAFETY: both ranges were bounds-checked; the copy is ordered on our stream.
                unsafe { dr::memcpy_dtod_async(d, s, bytes, c.stream.cu_stream()) }
                    .map_err(|e| Error::driver("cuMemcpyDtoDAsync", e))
            }
            Backend::Sim(sim) => {
                // SAFETY: both ranges were bounds-checked, and lie in buffers of this device.
                unsafe { sim.copy(d as *mut u8, s as *const u8, bytes) };
                Ok(())
            }
        }
    }

    /// Errors unless `buf` lives on this GPU.
    pub(crate) fn same_device<T: DeviceElem>(
        &self,
        op: &'static str,
        buf: &DeviceBuffer<T>,
    ) -> Result<()> {
        if buf.ordinal() != self.ordinal() || buf.is_simulated() != self.is_simulated() {
            crate::error::bail!(
                op,
                "a buffer on cuda:{}{} was passed to an op on cuda:{}{}",
                buf.ordinal(),
                if buf.is_simulated() {
                    " (simulated)"
                } else {
                    ""
                },
                self.ordinal(),
                if self.is_simulated() {
                    " (simulated)"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }

    /// A testing aid: takes `bytes` from the pool, fills them with 0xFF (a NaN in every float
    /// type, -1 in the integers) and gives them back, so the next allocations start from garbage
    /// and a kernel that leaves an output element unwritten is caught. (A simulated device fills
    /// every new allocation with 0xFF, so there it only checks that `bytes` can be allocated.)
    pub fn poison_pool(&self, bytes: usize) -> Result<()> {
        let buf = self.alloc::<u8>(bytes)?;
        if bytes > 0 {
            if let Backend::Cuda(c) = &self.backend {
                self.bind()?;
                // SAFETY: the buffer's own bytes, in stream order.
                unsafe {
                    dr::memset_d8_async(buf.device_address(), 0xFF, bytes, c.stream.cu_stream())
                }
                .map_err(|e| Error::driver("cuMemsetD8Async", e))?;
            }
        }
        Ok(())
    }

    /// Bytes the pool holds from the driver and bytes in live buffers (on a simulated device:
    /// the bytes of live buffers, and their high-water mark since the last trim).
    pub fn pool_usage(&self) -> Result<PoolUsage> {
        let c = match &self.backend {
            Backend::Cuda(c) => c,
            Backend::Sim(s) => return Ok(s.pool_usage()),
        };
        self.bind()?;
        // SAFETY: the pool of our device; both attributes are u64.
        unsafe {
            let pool = dr::device::get_mem_pool(c.ctx.cu_device())
                .map_err(|e| Error::driver("cuDeviceGetMemPool", e))?;
            let (mut reserved, mut used) = (0u64, 0u64);
            dr::mem_pool::get_attribute(
                pool,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                &mut reserved as *mut u64 as *mut c_void,
            )
            .map_err(|e| Error::driver("cuMemPoolGetAttribute", e))?;
            dr::mem_pool::get_attribute(
                pool,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
                &mut used as *mut u64 as *mut c_void,
            )
            .map_err(|e| Error::driver("cuMemPoolGetAttribute", e))?;
            Ok(PoolUsage { reserved, used })
        }
    }

    /// Gives pool memory not held by live buffers back to the driver, keeping `keep_bytes`.
    pub fn trim_pool(&self, keep_bytes: usize) -> Result<()> {
        self.synchronize()?;
        let c = match &self.backend {
            Backend::Cuda(c) => c,
            Backend::Sim(s) => {
                s.pool.trim(keep_bytes as u64);
                return Ok(());
            }
        };
        // SAFETY: the pool of our device.
        unsafe {
            let pool = dr::device::get_mem_pool(c.ctx.cu_device())
                .map_err(|e| Error::driver("cuDeviceGetMemPool", e))?;
            dr::mem_pool::trim_to(pool, keep_bytes).map_err(|e| Error::driver("cuMemPoolTrimTo", e))
        }
    }

    // ---- counters ----------------------------------------------------------------------------

    /// What this GPU has done since the last [`Gpu::reset_counters`] (`counters.rs`). Reading
    /// them never touches the device.
    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// Sets every counter to zero.
    pub fn reset_counters(&self) {
        self.counters.reset()
    }

    /// Counts one f32 -> half cast of a parameter (autocast calls it for the weights it casts).
    pub fn note_weight_cast(&self) {
        self.count(Count::WeightCast, 1)
    }

    pub(crate) fn count(&self, c: Count, n: u64) {
        self.counters.add(c, n)
    }

    // ---- synchronisation, status, timing -------------------------------------------------

    /// Waits for everything issued on the stream (a simulated device's work is done when issued).
    /// Counts one device-to-host synchronisation.
    pub fn synchronize(&self) -> Result<()> {
        self.count(Count::Sync, 1);
        self.wait()
    }

    /// [`Gpu::synchronize`] without counting (the second half of a call already counted).
    fn wait(&self) -> Result<()> {
        match &self.backend {
            Backend::Cuda(c) => c
                .stream
                .synchronize()
                .map_err(|e| Error::driver("cuStreamSynchronize", e)),
            Backend::Sim(s) => {
                s.ordered(|| ());
                Ok(())
            }
        }
    }

    /// The device address of the status words where `op`'s kernels report bad input: a slot of
    /// its own (ops past the 16th share the last one, which then names them together).
    pub(crate) fn status_address_for(&self, op: &'static str) -> u64 {
        let slot = {
            let mut ops = self.status_ops.lock().unwrap_or_else(|p| p.into_inner());
            match ops.iter().position(|&o| o == op) {
                Some(i) => i,
                None if ops.len() < STATUS_SLOTS => {
                    ops.push(op);
                    ops.len() - 1
                }
                None => STATUS_SLOTS - 1,
            }
        };
        let base = match &self.backend {
            Backend::Cuda(c) => {
                let (ptr, _guard) = cudarc::driver::DevicePtr::device_ptr(&c.status, &c.stream);
                ptr
            }
            Backend::Sim(s) => s.status_address(),
        };
        base + 16 * slot as u64
    }

    /// Waits for the stream, then errors if a kernel since the last check reported bad input
    /// (an index or target out of range), naming the op that launched it, and clears the
    /// reports. Ops on a GPU do not download their ids to check them: the kernels check, and
    /// this reads the verdict, once per training step (or logging step) rather than once per op.
    /// One device-to-host synchronisation.
    pub fn check_status(&self) -> Result<()> {
        self.synchronize()?;
        let slots: [[u32; 4]; STATUS_SLOTS] = match &self.backend {
            Backend::Cuda(c) => {
                let mut words = [0u32; STATUS_BYTES / 4];
                c.stream
                    .memcpy_dtoh(&c.status, &mut words[..])
                    .map_err(|e| Error::driver("cuMemcpyDtoHAsync", e))?;
                self.wait()?;
                if words.iter().any(|&w| w != 0) {
                    self.bind()?;
                    // SAFETY: this GPU's status words, cleared in stream order.
                    unsafe {
                        let base = cudarc::driver::DevicePtr::device_ptr(&c.status, &c.stream).0;
                        dr::memset_d8_async(base, 0, STATUS_BYTES, c.stream.cu_stream())
                    }
                    .map_err(|e| Error::driver("cuMemsetD8Async", e))?;
                    self.wait()?;
                }
                std::array::from_fn(|i| std::array::from_fn(|j| words[4 * i + j]))
            }
            Backend::Sim(s) => s.take_status(),
        };
        let Some((slot, words)) = slots.iter().enumerate().find(|(_, w)| w[0] != 0) else {
            return Ok(());
        };
        let op = {
            let ops = self.status_ops.lock().unwrap_or_else(|p| p.into_inner());
            match (slot, ops.len()) {
                (s, n) if s == STATUS_SLOTS - 1 && n == STATUS_SLOTS => {
                    format!("one of {}", ops[s..].join(", "))
                }
                (s, n) if s < n => ops[s].to_string(),
                _ => "a kernel".to_string(),
            }
        };
        let value = (words[1] as u64 | (words[2] as u64) << 32) as i64;
        Err(Error::Kernel(match words[0] {
            ERR_INDEX_OUT_OF_RANGE => format!(
                "{op}: index {value} is out of range (found by the device and reported at the \
                 next status check)"
            ),
            ERR_TARGET_OUT_OF_RANGE => format!(
                "{op}: target {value} is out of range (found by the device and reported at the \
                 next status check)"
            ),
            code => format!("{op}: the kernel reported error code {code} (value {value})"),
        }))
    }

    /// A CUDA event pair around a stretch of work on the stream: call [`GpuTimer::stop`] after
    /// issuing it, then [`GpuTimer::elapsed_ms`]. On a simulated device the events are wall-clock
    /// instants (its work is synchronous, so that is the time the work took on the host).
    pub fn timer(&self) -> Result<GpuTimer> {
        let c = match &self.backend {
            Backend::Cuda(c) => c,
            Backend::Sim(_) => {
                return Ok(GpuTimer::Sim {
                    start: std::time::Instant::now(),
                    end: Mutex::new(None),
                })
            }
        };
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = c
            .ctx
            .new_event(flags)
            .map_err(|e| Error::driver("cuEventCreate", e))?;
        let end = c
            .ctx
            .new_event(flags)
            .map_err(|e| Error::driver("cuEventCreate", e))?;
        start
            .record(&c.stream)
            .map_err(|e| Error::driver("cuEventRecord", e))?;
        Ok(GpuTimer::Cuda {
            start,
            end,
            stream: c.stream.clone(),
        })
    }

    // ---- kernels --------------------------------------------------------------------------

    /// Kernel `name` of `file`, compiled for this device (on first use) and cached.
    pub fn function(&self, file: &'static KernelFile, name: &str) -> Result<Function> {
        let c = match &self.backend {
            Backend::Cuda(c) => c,
            Backend::Sim(s) => return s.function(file, name).map(|_| Function::Simulated),
        };
        let key = (file.name, name.to_string());
        if let Some(f) = c
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Function::Cuda(f.clone()));
        }
        let module = self.module(c, file)?;
        let f = module
            .load_function(name)
            .map_err(|e| Error::driver("cuModuleGetFunction", e))?;
        c.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, f.clone());
        Ok(Function::Cuda(f))
    }

    /// Compiles (once per process and compute capability) and loads (once per GPU) every kernel
    /// file, so that later timings exclude compilation.
    pub fn load_all_kernels(&self) -> Result<()> {
        for file in nvrtc::kernels::ALL {
            match &self.backend {
                Backend::Cuda(c) => {
                    self.module(c, file)?;
                }
                Backend::Sim(s) => s.load(file)?,
            }
        }
        Ok(())
    }

    fn module(&self, c: &CudaDevice, file: &'static KernelFile) -> Result<Arc<CudaModule>> {
        if let Some(m) = c
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(file.name)
        {
            return Ok(m.clone());
        }
        let cubin = nvrtc::cubin(file, self.compute_capability())?;
        let module = c
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin.as_ref().clone()))
            .map_err(|e| Error::driver("cuModuleLoadData", e))?;
        c.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(file.name, module.clone());
        Ok(module)
    }

    /// Launches kernel `name` of `file` on the stream with `args` (pointers to each argument's
    /// value, in the kernel's parameter order). A launch with more than 48 KiB of dynamic shared
    /// memory first raises the function's limit (the device's opt-in maximum bounds it). On a
    /// simulated device the launch runs to completion before this returns, and a fault, deadlock
    /// or limit it hits is its error.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number, order and type, and every device
    /// address among them must be valid for what the kernel reads and writes.
    pub(crate) unsafe fn launch(
        &self,
        file: &'static KernelFile,
        name: &str,
        shape: Launch,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.count(Count::Launch, 1);
        if let Backend::Sim(s) = &self.backend {
            if shape.shared_bytes > DEFAULT_SHARED_BYTES {
                s.set_max_dynamic_shared(file, name, shape.shared_bytes)?;
            }
            // SAFETY: the caller's promise.
            return unsafe { s.launch(file, name, shape.into(), args) };
        }
        let Function::Cuda(f) = self.function(file, name)? else {
            unreachable!("a real GPU's functions are CUDA functions")
        };
        let c = self.cuda().expect("checked above");
        self.bind()?;
        if shape.shared_bytes > DEFAULT_SHARED_BYTES {
            // Dynamic shared memory above the default needs a per-function opt-in.
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shape.shared_bytes as i32,
            )
            .map_err(|e| Error::driver("cuFuncSetAttribute", e))?;
        }
        unsafe {
            dr::launch_kernel(
                f.cu_function(),
                shape.grid,
                shape.block,
                shape.shared_bytes,
                c.stream.cu_stream(),
                args,
            )
        }
        .map_err(|e| Error::driver("cuLaunchKernel", e))
    }
}

/// The error of an op given a buffer of the other backend (a simulated buffer on a real GPU).
fn mixed_backends(op: &'static str) -> Error {
    Error::arg(
        op,
        "a simulated buffer and a real GPU (or the reverse) were mixed",
    )
}

/// The bytes of `len` elements of `T` (at least one element, as on the GPU).
fn sim_bytes<T: DeviceElem>(len: usize) -> Result<usize> {
    len.max(1)
        .checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| Error::arg("alloc", format!("{len} elements of {} overflow", T::TYPE)))
}

/// Host records uploaded for a kernel to read ([`Gpu::upload_records`]).
pub(crate) enum Records<T> {
    Cuda(cudarc::driver::CudaSlice<T>),
    Sim(crate::sim::memory::SimAlloc, std::marker::PhantomData<T>),
}

impl<T: cudarc::driver::DeviceRepr> Records<T> {
    /// The device address of the first record.
    pub fn address(&self, gpu: &Gpu) -> u64 {
        match (self, gpu.stream()) {
            (Records::Cuda(slice), Some(stream)) => {
                cudarc::driver::DevicePtr::device_ptr(slice, stream).0
            }
            (Records::Sim(a, _), _) => a.address(),
            (Records::Cuda(slice), None) => {
                cudarc::driver::DevicePtr::device_ptr(slice, slice.stream()).0
            }
        }
    }
}

impl From<Launch> for crate::sim::launch::Shape {
    fn from(l: Launch) -> Self {
        crate::sim::launch::Shape {
            grid: l.grid,
            block: l.block,
            shared_bytes: l.shared_bytes,
        }
    }
}

fn alloc_error<T: DeviceElem>(len: usize, e: cudarc::driver::DriverError) -> Error {
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    match Error::driver("cuMemAllocAsync", e) {
        Error::Driver { call, message } => Error::Driver {
            call,
            message: format!("{message} (allocating {bytes} bytes)"),
        },
        other => other,
    }
}

/// A pointer to one kernel argument, for [`Gpu::launch`].
pub(crate) fn arg<T>(v: &T) -> *mut c_void {
    v as *const T as *mut c_void
}

/// Two events around work on a GPU's stream: `start` recorded when the timer was made, `end` by
/// [`GpuTimer::stop`] (on a simulated device, wall-clock instants).
pub enum GpuTimer {
    Cuda {
        start: CudaEvent,
        end: CudaEvent,
        stream: Arc<CudaStream>,
    },
    Sim {
        start: std::time::Instant,
        end: Mutex<Option<std::time::Instant>>,
    },
}

impl GpuTimer {
    /// Records the end event after the work issued so far.
    pub fn stop(&self) -> Result<()> {
        match self {
            GpuTimer::Cuda { end, stream, .. } => end
                .record(stream)
                .map_err(|e| Error::driver("cuEventRecord", e)),
            GpuTimer::Sim { end, .. } => {
                *end.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
                Ok(())
            }
        }
    }

    /// Milliseconds from `reference`'s start event to this timer's start and to its end (waits
    /// for the end event): where on the device's clock the work ran, for the profiler's GPU
    /// track. Both timers must come from the same GPU.
    pub fn offsets_ms(&self, reference: &GpuTimer) -> Result<(f32, f32)> {
        match (reference, self) {
            (GpuTimer::Cuda { start: r, .. }, GpuTimer::Cuda { start, end, .. }) => {
                let at = |e: &CudaEvent| {
                    r.elapsed_ms(e)
                        .map_err(|e| Error::driver("cuEventElapsedTime", e))
                };
                Ok((at(start)?, at(end)?))
            }
            (GpuTimer::Sim { start: r, .. }, GpuTimer::Sim { start, .. }) => {
                let ms =
                    |t: std::time::Instant| t.saturating_duration_since(*r).as_secs_f32() * 1e3;
                Ok((ms(*start), ms(*start) + self.elapsed_ms()?))
            }
            _ => Err(Error::Driver {
                call: "cuEventElapsedTime",
                message: "CUDA_ERROR_INVALID_CONTEXT (a simulated and a real device's events)"
                    .into(),
            }),
        }
    }

    /// Milliseconds between the two events (waits for the end event).
    pub fn elapsed_ms(&self) -> Result<f32> {
        match self {
            GpuTimer::Cuda { start, end, .. } => start
                .elapsed_ms(end)
                .map_err(|e| Error::driver("cuEventElapsedTime", e)),
            GpuTimer::Sim { start, end } => {
                let end = end.lock().unwrap_or_else(|p| p.into_inner());
                let end = end.ok_or_else(|| Error::Driver {
                    call: "cuEventElapsedTime",
                    message: "CUDA_ERROR_INVALID_HANDLE (the end event was never recorded: call \
                              stop first)"
                        .into(),
                })?;
                Ok(end.duration_since(*start).as_secs_f32() * 1000.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_guard_becomes_an_error() {
        let e = guard("loading", || -> u32 { panic!("no symbol cuFoo") }).unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)));
        assert_eq!(
            e.to_string(),
            "CUDA is not available: loading failed inside the CUDA bindings: no symbol cuFoo"
        );
        // Nested guards restore the outer state; results pass through.
        assert_eq!(guard("outer", || guard("inner", || 7).unwrap()).unwrap(), 7);
        assert!(!IN_GUARD.with(|g| g.get()));
    }
}
