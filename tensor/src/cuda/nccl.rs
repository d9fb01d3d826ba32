//! The tensor side of NCCL (feature `cuda`): a [`Bucket`] is a list of tensors on one rank's GPU
//! flattened, in order, into one fresh contiguous device buffer of their common float dtype
//! (f32, f16 or bf16), so that one `ncclAllReduce` sums all of them across ranks; the summed
//! bucket comes back as a 1-D tensor of the total length, which callers slice back into the
//! tensors' shapes (views, no copy).
//!
//! [`Bucket::start_all_reduce`] sums on the rank's communication stream instead, beside the
//! compute stream's later kernels (the gradient all-reduce overlapped with backward); the
//! [`PendingBucket`] it returns gives the sum once the compute stream is ordered after it.
//!
//! [`all_gather`] is the other collective: one tensor per rank, every rank's copied into its slot
//! of one buffer of `world` slots, which `ncclAllGather` fills in place on every rank.
//!
//! This is the hook through which `nn`'s communicators reach NCCL without depending on the `cuda`
//! crate: they see tensors only, as every other op does.

use super::{float_kernel, operands, strided, tensor_of, wrap, CudaBuf};
use crate::{bail, contiguous_strides, DType, Device, Result, Tensor};
pub use cuda::nccl::{nccl_version, CommDone, NcclComm, NcclId, Reduce};
use cuda::ops::elementwise::copy_into;

const OP: &str = "nccl all_reduce";

/// Tensors flattened into one device buffer, ready to be reduced across ranks.
pub struct Bucket {
    buf: CudaBuf,
    len: usize,
    dtype: DType,
}

impl Bucket {
    /// Copies `tensors` (any layout; all of one float dtype and on `comm`'s GPU) one after the
    /// other into a fresh buffer.
    pub fn flatten(comm: &NcclComm, tensors: &[&Tensor]) -> Result<Bucket> {
        Bucket::flatten_into_slot(comm, tensors, 1, 0)
    }

    /// Copies `tensors` one after the other into slot `slot` of a fresh buffer of `slots` slots,
    /// each as long as the tensors together.
    fn flatten_into_slot(
        comm: &NcclComm,
        tensors: &[&Tensor],
        slots: usize,
        slot: usize,
    ) -> Result<Bucket> {
        let gpu = comm.gpu();
        let device = Device::Cuda(gpu.ordinal());
        let Some(first) = tensors.first() else {
            bail!(OP, "a bucket needs at least one tensor");
        };
        let dtype = first.dtype();
        for (i, t) in tensors.iter().enumerate() {
            if t.device() != device {
                bail!(
                    OP,
                    "tensor {i} is on {}, and {} drives {device}",
                    t.device(),
                    comm.who()
                );
            }
            if t.dtype() != dtype {
                bail!(
                    OP,
                    "tensor {i} is {}, tensor 0 is {dtype}: a bucket holds one dtype",
                    t.dtype()
                );
            }
        }
        let len: usize = tensors.iter().map(|t| t.elem_count()).sum();
        let buf = float_kernel!(OP, dtype, T => {
            let mut out = gpu.alloc::<T>(len * slots)?;
            let mut offset = len * slot;
            for t in tensors {
                let [s] = operands(OP, [*t])?;
                let src = strided(s.typed::<T>(OP)?, t.layout());
                let dst_strides = contiguous_strides(t.shape());
                copy_into(gpu, t.shape(), src, &mut out, offset, &dst_strides)?;
                offset += t.elem_count();
            }
            wrap(out)
        });
        Ok(Bucket {
            buf,
            len: len * slots,
            dtype,
        })
    }

    /// Number of elements (the sum of the tensors' element counts).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Reduces the bucket across every rank of `comm` in place (the collective is issued on the
    /// GPU's stream; nothing waits) and returns it as a 1-D tensor. Every rank must call this
    /// with a bucket of the same length and dtype.
    pub fn all_reduce(mut self, comm: &NcclComm, op: Reduce) -> Result<Tensor> {
        match &mut self.buf {
            CudaBuf::F32(b) => comm.all_reduce(b, 0, self.len, op)?,
            CudaBuf::F16(b) => comm.all_reduce(b, 0, self.len, op)?,
            CudaBuf::BF16(b) => comm.all_reduce(b, 0, self.len, op)?,
            _ => bail!(OP, "dtype {} cannot be all-reduced", self.dtype),
        }
        Ok(tensor_of(comm.gpu(), self.buf, &[self.len]))
    }
}

/// A bucket whose sum across ranks runs on the communication stream ([`Bucket::start_all_reduce`]).
pub struct PendingBucket {
    buf: CudaBuf,
    len: usize,
    done: CommDone,
}

impl Bucket {
    /// Sums the bucket across every rank of `comm` in place on `comm`'s communication stream,
    /// after the compute stream's work so far (the flattening included); the compute stream goes
    /// on meanwhile. Every rank must call this with a bucket of the same length and dtype.
    pub fn start_all_reduce(mut self, comm: &NcclComm) -> Result<PendingBucket> {
        let done = match &mut self.buf {
            CudaBuf::F32(b) => comm.all_reduce_async(b, 0, self.len)?,
            CudaBuf::F16(b) => comm.all_reduce_async(b, 0, self.len)?,
            CudaBuf::BF16(b) => comm.all_reduce_async(b, 0, self.len)?,
            _ => bail!(OP, "dtype {} cannot be all-reduced", self.dtype),
        };
        Ok(PendingBucket {
            buf: self.buf,
            len: self.len,
            done,
        })
    }
}

impl PendingBucket {
    /// The summed bucket as a 1-D tensor: the compute stream waits for the sum first (the host
    /// does not), so every op on the result runs after it.
    pub fn wait(self, comm: &NcclComm) -> Result<Tensor> {
        comm.wait(&self.done)?;
        Ok(tensor_of(comm.gpu(), self.buf, &[self.len]))
    }
}

/// Every rank's `t` (contiguous or not; f32, f16 or bf16 on `comm`'s GPU), flattened, in rank
/// order: a 1-D tensor of `world_size * t.elem_count()` elements, the same on every rank. The
/// collective is issued on the GPU's stream; nothing waits. Every rank must call this with a
/// tensor of the same element count and dtype.
pub fn all_gather(comm: &NcclComm, t: &Tensor) -> Result<Tensor> {
    let (world, n) = (comm.world_size(), t.elem_count());
    let mut slots = Bucket::flatten_into_slot(comm, &[t], world, comm.rank())?;
    match &mut slots.buf {
        CudaBuf::F32(b) => comm.all_gather(b, 0, n)?,
        CudaBuf::F16(b) => comm.all_gather(b, 0, n)?,
        CudaBuf::BF16(b) => comm.all_gather(b, 0, n)?,
        _ => bail!(
            "nccl all_gather",
            "dtype {} cannot be gathered",
            slots.dtype
        ),
    }
    Ok(tensor_of(comm.gpu(), slots.buf, &[world * n]))
}
