//! NCCL collectives, one communicator ([`NcclComm`]) per GPU: made together for one process
//! driving several GPUs, one thread per GPU, by `ncclCommInitAll` ([`NcclComm::for_devices`],
//! rank `i` drives the `i`-th device listed), or rank by rank in separate processes (or machines)
//! by `ncclCommInitRank` ([`NcclComm::init_rank`]) from an [`NcclId`] that one rank creates
//! ([`NcclId::new`]) and hands to the others (the trainers publish it through their TCP store).
//! Then, on a range of a device buffer (f32, f16 or bf16) on that GPU's compute
//! stream, in place: the all-reduce ([`Reduce::Sum`], or [`Reduce::Mean`]: the sum, then divided
//! by the world size elementwise, computed in f32 and rounded once, as `div_scalar` does), the
//! all-gather (each rank's slot of the range to every rank) and the broadcast (one rank's range
//! to every rank).
//!
//! Layout: every rank passes a flat range `offset..offset + len` of a buffer on its own GPU, with
//! the same `len` and element type on every rank (NCCL cannot check this; a mismatch hangs or
//! corrupts, so callers agree on the sizes first: nn's communicators exchange them on the host).
//! Every rank receives the same sum, bit for bit. f16/bf16 sums round at each addition inside NCCL.
//!
//! Ordering: the collective is issued on the GPU's one compute stream ([`Gpu::stream`]), after the
//! kernels issued before it and before the ones issued after it; nothing waits for the device.
//! [`NcclComm::all_reduce_async`] instead runs the sum on the rank's communication stream
//! (`comm_stream.rs`), beside the compute stream's later kernels, until [`NcclComm::wait`] orders
//! the compute stream after it.
//!
//! Finding NCCL: loaded at run time as `libnccl.so.2` (the name NCCL packages and the
//! `nvidia-nccl-cu13` wheel ship), else `libnccl.so` (`nccl_lib.rs`); without either every entry
//! point returns [`Error::Unavailable`] saying so. Every failing NCCL call is an [`Error::Nccl`]
//! naming the rank and device; no panic reaches the caller.
//!
//! On simulated devices (`COTMAE_CUDA_SIM=1`) the communicators are the simulator's
//! (`sim/nccl.rs`): `ncclCommInitRank`'s ranks are threads of one process that meet by the id.
//!
//! Teardown: dropping a communicator aborts it (`ncclCommAbort`, which does not wait for the other
//! ranks and cancels a collective still running): wait for the GPU's stream first when one may be.

use crate::buffer::DeviceBuffer;
pub use crate::comm_stream::CommDone;
use crate::comm_stream::CommStream;
use crate::gpu::{guard, Gpu};
use crate::nccl_lib::{nccl_lib, NcclLib};
use crate::ops::elementwise::{map1, BinaryOp, Map1};
use crate::ops::FloatElem;
use crate::sim::elem::DataType as SimType;
use crate::sim::nccl::{RedOp as SimRedOp, SimComm};
use crate::{Error, Result, Strided};
use cudarc::nccl::sys;
use half::{bf16, f16};
use std::ffi::{c_int, c_void, CStr};
use std::sync::Arc;

/// The oldest NCCL accepted: bf16 reductions arrived in 2.10.
pub const NCCL_MIN_VERSION: (u32, u32) = (2, 10);

/// How [`NcclComm::all_reduce`] combines the ranks' elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// The elementwise sum over ranks.
    Sum,
    /// The sum divided by the world size.
    Mean,
}

/// An element type NCCL reduces: f32, f16, bf16 (`SIM`: the same type for the simulator).
pub trait NcclElem: FloatElem {
    const NCCL: sys::ncclDataType_t;
    const SIM: SimType;
}

impl NcclElem for f32 {
    const NCCL: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;
    const SIM: SimType = SimType::F32;
}
impl NcclElem for f16 {
    const NCCL: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat16;
    const SIM: SimType = SimType::F16;
}
impl NcclElem for bf16 {
    const NCCL: sys::ncclDataType_t = sys::ncclDataType_t::ncclBfloat16;
    const SIM: SimType = SimType::Bf16;
}

/// The NCCL library's version (major, minor, patch), or [`Error::Unavailable`] when it cannot be
/// loaded or is older than [`NCCL_MIN_VERSION`].
pub fn nccl_version() -> Result<(u32, u32, u32)> {
    let lib = nccl_lib()?;
    let mut code: c_int = 0;
    // SAFETY: one out-pointer to a live int.
    let r = guard("ncclGetVersion", || unsafe { (lib.get_version)(&mut code) })?;
    if r != sys::ncclResult_t::ncclSuccess {
        return Err(nccl_error("ncclGetVersion", "no rank".into(), r, None));
    }
    let version = decode_version(code as u32);
    if (version.0, version.1) < NCCL_MIN_VERSION {
        return Err(Error::Unavailable(format!(
            "NCCL {}.{}.{} is too old: bf16 all-reduce needs {}.{} or newer",
            version.0, version.1, version.2, NCCL_MIN_VERSION.0, NCCL_MIN_VERSION.1
        )));
    }
    Ok(version)
}

/// `NCCL_VERSION_CODE` as (major, minor, patch): `major*10000 + minor*100 + patch` since 2.9,
/// `major*1000 + minor*100 + patch` before.
fn decode_version(code: u32) -> (u32, u32, u32) {
    if code >= 10_000 {
        (code / 10_000, (code % 10_000) / 100, code % 100)
    } else {
        (code / 1000, (code % 1000) / 100, code % 100)
    }
}

/// A C string from NCCL, or "" for a null pointer.
fn c_text(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: NCCL returns NUL-terminated static or per-communicator strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// An [`Error::Nccl`] for status `r` of `call`, with NCCL's description of the status and, when a
/// communicator is given, its last error message.
fn nccl_error(
    call: &'static str,
    who: String,
    r: sys::ncclResult_t,
    comm: Option<sys::ncclComm_t>,
) -> Error {
    // SAFETY: both only read NCCL's error strings; without the library they are left out.
    let lib = nccl_lib().ok();
    let text = lib
        .map(|l| c_text(unsafe { (l.get_error_string)(r) }))
        .unwrap_or_default();
    let last = lib
        .zip(comm)
        .map(|(l, c)| c_text(unsafe { (l.get_last_error)(c) }))
        .unwrap_or_default();
    let mut message = format!("{r:?}");
    if !text.is_empty() {
        message.push_str(&format!(" ({text})"));
    }
    if !last.is_empty() {
        message.push_str(&format!(": {last}"));
    }
    Error::Nccl { call, who, message }
}

/// Errors unless `ordinals` is a non-empty list of distinct devices (NCCL needs one GPU per rank).
fn check_devices(ordinals: &[usize]) -> Result<()> {
    const OP: &str = "NcclComm::for_devices";
    if ordinals.is_empty() {
        crate::error::bail!(OP, "needs at least one device");
    }
    for (j, d) in ordinals.iter().enumerate() {
        if let Some(i) = ordinals[..j].iter().position(|e| e == d) {
            crate::error::bail!(
                OP,
                "cuda:{d} is listed for rank {i} and rank {j}; NCCL needs one GPU per rank"
            );
        }
        if *d > c_int::MAX as usize {
            crate::error::bail!(OP, "device ordinal {d} is out of range");
        }
    }
    Ok(())
}

/// What the ranks of one `ncclCommInitRank` clique share: NCCL's `ncclUniqueId` (128 opaque
/// bytes, made by one rank and handed to the others), or, on simulated devices, a name unique to
/// this process that the simulator's ranks meet by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NcclId(pub [u8; 128]);

impl NcclId {
    /// A new id for a clique whose rank 0 drives `cuda:ordinal` (`ncclGetUniqueId`; on a
    /// simulated device, a name from the process id, the time and a counter).
    pub fn new(ordinal: usize) -> Result<NcclId> {
        let mut bytes = [0u8; 128];
        if crate::gpu(ordinal)?.is_simulated() {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("sim-nccl-{}-{nanos}-{n}", std::process::id());
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            return Ok(NcclId(bytes));
        }
        nccl_version()?;
        let lib = nccl_lib()?;
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        // SAFETY: one out-pointer to a live id.
        let r = guard("ncclGetUniqueId", || unsafe {
            (lib.get_unique_id)(&mut id)
        })?;
        if r != sys::ncclResult_t::ncclSuccess {
            return Err(nccl_error("ncclGetUniqueId", "rank 0".into(), r, None));
        }
        Ok(NcclId(id.internal.map(|c| c as u8)))
    }

    /// The id as 256 hex digits (how the simulator names a clique).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One rank's NCCL communicator, bound to one GPU and that GPU's compute stream. It may move to
/// another thread (`Send`) but not be shared between threads: NCCL calls on one communicator must
/// not run concurrently.
pub struct NcclComm {
    comm: Comm,
    gpu: Arc<Gpu>,
    rank: usize,
    world_size: usize,
    /// Where [`NcclComm::all_reduce_async`] runs.
    comm_stream: CommStream,
}

/// A real NCCL communicator, or a rank of a simulated clique (on simulated devices).
enum Comm {
    Nccl(sys::ncclComm_t),
    Sim(SimComm),
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not overlap;
// `NcclComm` is not `Sync` (the raw handle), so only the thread that owns it can call it.
unsafe impl Send for NcclComm {}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclComm({})", self.who())
    }
}

impl NcclComm {
    /// One communicator per device of `ordinals`, rank `i` on `cuda:ordinals[i]`, made together
    /// (`ncclCommInitAll`, so inside this process only). Hand each to its own thread.
    pub fn for_devices(ordinals: &[usize]) -> Result<Vec<NcclComm>> {
        const CALL: &str = "ncclCommInitAll";
        check_devices(ordinals)?;
        let gpus = ordinals
            .iter()
            .map(|&o| crate::gpu(o))
            .collect::<Result<Vec<_>>>()?;
        let world_size = ordinals.len();
        if gpus.iter().all(|g| g.is_simulated()) {
            let comms = SimComm::init_all(world_size).map_err(|message| Error::Nccl {
                call: CALL,
                who: format!("ranks 0..{world_size} (simulated)"),
                message,
            })?;
            return Ok(comms
                .into_iter()
                .zip(gpus)
                .enumerate()
                .map(|(rank, (comm, gpu))| NcclComm {
                    comm: Comm::Sim(comm),
                    comm_stream: CommStream::new(&gpu),
                    gpu,
                    rank,
                    world_size,
                })
                .collect());
        }
        nccl_version()?;
        let lib = nccl_lib()?;
        let devlist: Vec<c_int> = ordinals.iter().map(|&o| o as c_int).collect();
        let mut comms: Vec<sys::ncclComm_t> = vec![std::ptr::null_mut(); ordinals.len()];
        // SAFETY: `comms` has room for one handle per device of `devlist`.
        let r = guard(CALL, || unsafe {
            (lib.comm_init_all)(comms.as_mut_ptr(), devlist.len() as c_int, devlist.as_ptr())
        })?;
        if r != sys::ncclResult_t::ncclSuccess {
            let devices: Vec<String> = ordinals.iter().map(|o| format!("cuda:{o}")).collect();
            let who = format!("ranks 0..{} on {}", ordinals.len(), devices.join(", "));
            return Err(nccl_error(CALL, who, r, None));
        }
        Ok(comms
            .into_iter()
            .zip(gpus)
            .enumerate()
            .map(|(rank, (comm, gpu))| NcclComm {
                comm: Comm::Nccl(comm),
                comm_stream: CommStream::new(&gpu),
                gpu,
                rank,
                world_size,
            })
            .collect())
    }

    /// Rank `rank` of `world_size` on `cuda:ordinal`, joining the ranks that pass the same `id`
    /// (`ncclCommInitRank`; blocks until every rank has joined). On a simulated device the ranks
    /// must be threads of this process (the simulator meets them by the id).
    pub fn init_rank(
        ordinal: usize,
        world_size: usize,
        rank: usize,
        id: &NcclId,
    ) -> Result<NcclComm> {
        const CALL: &str = "ncclCommInitRank";
        let who = format!("rank {rank} of {world_size} on cuda:{ordinal}");
        if rank >= world_size || world_size > c_int::MAX as usize {
            crate::error::bail!(CALL, "{who}: the rank is outside the world");
        }
        let gpu = crate::gpu(ordinal)?;
        let comm = if gpu.is_simulated() {
            let sim =
                SimComm::init_rank(&id.hex(), world_size, rank).map_err(|message| Error::Nccl {
                    call: CALL,
                    who: who.clone(),
                    message,
                })?;
            Comm::Sim(sim)
        } else {
            nccl_version()?;
            let lib = nccl_lib()?;
            gpu.bind()?;
            let mut comm: sys::ncclComm_t = std::ptr::null_mut();
            let unique = sys::ncclUniqueId {
                internal: id.0.map(|b| b as std::ffi::c_char),
            };
            // SAFETY: one out-pointer to a live handle; the id is passed by value; the device
            // NCCL binds to is the one current on this thread (bound above).
            let r = guard(CALL, || unsafe {
                (lib.comm_init_rank)(&mut comm, world_size as c_int, unique, rank as c_int)
            })?;
            if r != sys::ncclResult_t::ncclSuccess {
                return Err(nccl_error(CALL, who, r, None));
            }
            Comm::Nccl(comm)
        };
        Ok(NcclComm {
            comm,
            comm_stream: CommStream::new(&gpu),
            gpu,
            rank,
            world_size,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The GPU this rank drives.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// "rank r of n on cuda:d", for messages.
    pub fn who(&self) -> String {
        format!(
            "rank {} of {} on cuda:{}",
            self.rank,
            self.world_size,
            self.gpu.ordinal()
        )
    }

    /// Runs NCCL call `f` (its name `call`), turning a failure or a bindings panic into an error
    /// naming this rank.
    fn call(
        &self,
        call: &'static str,
        comm: sys::ncclComm_t,
        f: impl FnOnce() -> sys::ncclResult_t,
    ) -> Result<()> {
        let r = guard(call, f)?;
        if r == sys::ncclResult_t::ncclSuccess {
            return Ok(());
        }
        Err(nccl_error(call, self.who(), r, Some(comm)))
    }

    /// Binds this rank's GPU and runs collective `real` with the communicator and the GPU's
    /// stream, or, on a simulated clique, `simulated` in the device's stream order.
    fn issue(
        &self,
        call: &'static str,
        real: impl FnOnce(&NcclLib, sys::ncclComm_t, sys::cudaStream_t) -> sys::ncclResult_t,
        simulated: impl FnOnce(&SimComm) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let comm = match &self.comm {
            Comm::Nccl(c) => *c,
            Comm::Sim(c) => {
                let device = self
                    .gpu
                    .sim()
                    .ok_or_else(|| Error::arg(call, "a simulated communicator on a real GPU"))?;
                return device
                    .ordered(|| simulated(c))
                    .map_err(|message| Error::Nccl {
                        call,
                        who: self.who(),
                        message,
                    });
            }
        };
        let lib = nccl_lib()?;
        self.gpu.bind()?;
        let stream = self.gpu.cuda_stream("NCCL")?.cu_stream() as sys::cudaStream_t;
        self.call(call, comm, || real(lib, comm, stream))
    }

    /// Reduces elements `offset..offset + len` of `buf` (on this rank's GPU) across every rank,
    /// in place: afterwards each rank's range holds the same [`Reduce`] of all ranks' ranges.
    /// Every rank must call this, in the same order relative to its other collectives, with the
    /// same `len` and element type.
    pub fn all_reduce<T: NcclElem>(
        &self,
        buf: &mut DeviceBuffer<T>,
        offset: usize,
        len: usize,
        op: Reduce,
    ) -> Result<()> {
        const CALL: &str = "ncclAllReduce";
        self.gpu.same_device(CALL, buf)?;
        let addr = buf.address_at(CALL, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range was checked to lie inside `buf`, which lives on this communicator's
        // GPU; reading and writing it in place is allowed; the collective is ordered on the
        // stream every other use of `buf` is ordered on.
        let (send, recv) = (addr as *const c_void, addr as *mut c_void);
        self.issue(
            CALL,
            |lib, comm, stream| unsafe { sum_in_place::<T>(lib, addr, len, comm, stream) },
            |sim| unsafe { sim.all_reduce(send, recv, len, T::SIM, SimRedOp::Sum) },
        )?;
        if op == Reduce::Mean && self.world_size > 1 {
            let strides = [1usize];
            let divisor = Map1::Scalar(BinaryOp::Div, self.world_size as f32);
            let mean = map1(
                &self.gpu,
                divisor,
                &[len],
                Strided::new(&*buf, offset, &strides),
            )?;
            self.gpu.copy(&mean, 0, buf, offset, len)?;
        }
        Ok(())
    }

    /// Sums elements `offset..offset + len` of `buf` (on this rank's GPU) across every rank, in
    /// place, on this rank's communication stream after the compute stream's work so far, and
    /// returns the point after the sum: the compute stream's later kernels run beside it. Before
    /// anything reads or frees `buf`, [`NcclComm::wait`] for the returned point. Every rank must
    /// call this, in the same order relative to its other collectives, with the same `len` and
    /// element type.
    pub fn all_reduce_async<T: NcclElem>(
        &self,
        buf: &mut DeviceBuffer<T>,
        offset: usize,
        len: usize,
    ) -> Result<CommDone> {
        const CALL: &str = "ncclAllReduce";
        self.gpu.same_device(CALL, buf)?;
        let addr = buf.address_at(CALL, offset, len)?;
        let sim = (addr as usize, addr as usize, len, T::SIM);
        let real = |stream: &cudarc::driver::CudaStream| -> Result<()> {
            let Comm::Nccl(comm) = self.comm else {
                return Err(Error::arg(CALL, "a simulated communicator on a real GPU"));
            };
            let lib = nccl_lib()?;
            let stream = stream.cu_stream() as sys::cudaStream_t;
            // SAFETY: the range was checked to lie inside `buf` on this rank's GPU; the
            // communication stream waits for the compute stream's work on `buf`, and the caller
            // waits for the sum before reading or freeing it.
            self.call(CALL, comm, || unsafe {
                sum_in_place::<T>(lib, addr, len, comm, stream)
            })
        };
        if matches!(self.comm, Comm::Nccl(_)) {
            self.gpu.bind()?;
        }
        self.comm_stream.issue(&self.gpu, CALL, real, sim)
    }

    /// Makes the compute stream wait for `done` (from [`NcclComm::all_reduce_async`]): what it
    /// runs afterwards sees the sum. The host does not wait. On a simulated device the queued
    /// sums up to `done` run now (`comm_stream.rs`).
    pub fn wait(&self, done: &CommDone) -> Result<()> {
        let sim = match &self.comm {
            Comm::Sim(c) => Some(c),
            Comm::Nccl(_) => None,
        };
        self.comm_stream.wait(&self.gpu, done, sim, &self.who())
    }

    /// Sums issued by [`NcclComm::all_reduce_async`] that have not run yet (simulated devices
    /// only; 0 on a GPU, where the device runs them on its own).
    pub fn queued_on_comm_stream(&self) -> usize {
        self.comm_stream.queued()
    }

    /// Gathers every rank's `count` elements into all ranks, in place: rank r's input is elements
    /// `offset + r * count ..` of `buf` (its own slot), and afterwards `offset..offset + world_size
    /// * count` holds every rank's slot in rank order on every rank (`ncclAllGather` with the
    /// send buffer inside the receive buffer). Every rank calls it with the same `count` and type.
    pub fn all_gather<T: NcclElem>(
        &self,
        buf: &mut DeviceBuffer<T>,
        offset: usize,
        count: usize,
    ) -> Result<()> {
        const CALL: &str = "ncclAllGather";
        self.gpu.same_device(CALL, buf)?;
        let total = count.checked_mul(self.world_size).ok_or_else(|| {
            Error::arg(
                CALL,
                format!("{count} elements x {} ranks overflow", self.world_size),
            )
        })?;
        let addr = buf.address_at(CALL, offset, total)?;
        if count == 0 {
            return Ok(());
        }
        let send = addr + (self.rank * count * std::mem::size_of::<T>()) as u64;
        // SAFETY: the whole receive range was checked to lie inside `buf` on this rank's GPU, and
        // the send range is this rank's slot of it (NCCL's in-place all-gather); ordered on the
        // stream every other use of `buf` is ordered on.
        let (send, recv) = (send as *const c_void, addr as *mut c_void);
        self.issue(
            CALL,
            |lib, comm, stream| unsafe {
                (lib.all_gather)(send, recv, count, T::NCCL, comm, stream)
            },
            |sim| unsafe { sim.all_gather(send, recv, count, T::SIM) },
        )
    }

    /// Copies rank `root`'s elements `offset..offset + len` of `buf` into the same range of every
    /// rank's `buf`, in place (`ncclBroadcast`). Every rank calls it with the same `len`, type and
    /// root.
    pub fn broadcast<T: NcclElem>(
        &self,
        buf: &mut DeviceBuffer<T>,
        offset: usize,
        len: usize,
        root: usize,
    ) -> Result<()> {
        const CALL: &str = "ncclBroadcast";
        self.gpu.same_device(CALL, buf)?;
        if root >= self.world_size {
            crate::error::bail!(CALL, "root {root} is not a rank of {}", self.who());
        }
        let addr = buf.address_at(CALL, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range was checked to lie inside `buf` on this rank's GPU; in place is
        // allowed; ordered on the GPU's stream.
        let (send, recv) = (addr as *const c_void, addr as *mut c_void);
        self.issue(
            CALL,
            |lib, comm, stream| unsafe {
                (lib.broadcast)(send, recv, len, T::NCCL, root as c_int, comm, stream)
            },
            |sim| unsafe { sim.broadcast(send, recv, len, T::SIM, root) },
        )
    }

    /// Errors if NCCL recorded an asynchronous failure on this communicator (a peer or link
    /// failure found while a collective ran).
    pub fn check_async(&self) -> Result<()> {
        // A simulated collective reports its failure when it is called.
        let Comm::Nccl(comm) = self.comm else {
            return Ok(());
        };
        let lib = nccl_lib()?;
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: one out-pointer to a live status.
        self.call("ncclCommGetAsyncError", comm, || unsafe {
            (lib.comm_get_async_error)(comm, &mut state)
        })?;
        match state {
            sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress => Ok(()),
            r => Err(nccl_error(
                "ncclCommGetAsyncError",
                self.who(),
                r,
                Some(comm),
            )),
        }
    }
}

/// `ncclAllReduce` (sum) of the `len` elements of `T` at device address `addr`, in place, on
/// `stream`.
///
/// # Safety
/// `addr` must address `len` elements of `T` on the communicator's GPU that nothing else uses
/// until the sum is complete on `stream`.
unsafe fn sum_in_place<T: NcclElem>(
    lib: &NcclLib,
    addr: u64,
    len: usize,
    comm: sys::ncclComm_t,
    stream: sys::cudaStream_t,
) -> sys::ncclResult_t {
    let ptr = addr as *mut c_void;
    // SAFETY: the caller's promise; send and receive may be the same buffer.
    unsafe {
        (lib.all_reduce)(
            ptr,
            ptr,
            len,
            T::NCCL,
            sys::ncclRedOp_t::ncclSum,
            comm,
            stream,
        )
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // A simulated rank aborts its clique when it is dropped.
        if let (Comm::Nccl(comm), Ok(lib)) = (&self.comm, nccl_lib()) {
            // SAFETY: the handle came from ncclCommInitAll / ncclCommInitRank and is not used
            // after this.
            let _ = guard("ncclCommAbort", || unsafe { (lib.comm_abort)(*comm) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_codes_decode_in_both_schemes() {
        assert_eq!(decode_version(22_703), (2, 27, 3));
        assert_eq!(decode_version(21_003), (2, 10, 3));
        assert_eq!(decode_version(2_804), (2, 8, 4));
    }

    #[test]
    fn device_lists_are_checked_before_nccl_is_loaded() {
        let e = NcclComm::for_devices(&[]).unwrap_err().to_string();
        assert!(e.contains("at least one device"), "{e}");
        let e = NcclComm::for_devices(&[0, 1, 0]).unwrap_err().to_string();
        assert!(e.contains("cuda:0 is listed for rank 0 and rank 2"), "{e}");
    }

    #[test]
    fn nccl_errors_name_the_call_and_rank() {
        // Without libnccl the status descriptions are left out instead of panicking.
        let e = nccl_error(
            "ncclAllReduce",
            "rank 1 of 2 on cuda:1".into(),
            sys::ncclResult_t::ncclInvalidUsage,
            None,
        )
        .to_string();
        assert!(
            e.starts_with("ncclAllReduce failed (rank 1 of 2 on cuda:1): ncclInvalidUsage"),
            "{e}"
        );
    }
}
