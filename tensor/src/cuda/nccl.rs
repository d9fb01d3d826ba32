//! The tensor side of NCCL (feature `cuda`): a [`Bucket`] is a list of tensors on one rank's GPU
//! flattened, in order, into one fresh contiguous device buffer of their common float dtype
//! (f32, f16 or bf16), so that one `ncclAllReduce` sums all of them across ranks; the summed
//! bucket comes back as a 1-D tensor of the total length, which callers slice back into the
//! tensors' shapes (views, no copy).
//!
//! This is the hook through which `nn`'s communicators reach NCCL without depending on the `cuda`
//! crate: they see tensors only, as every other op does.

use super::{float_kernel, operands, strided, tensor_of, wrap, CudaBuf};
use crate::{bail, contiguous_strides, DType, Device, Result, Tensor};
pub use cuda::nccl::{nccl_version, NcclComm, Reduce};
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
            let mut out = gpu.alloc::<T>(len)?;
            let mut offset = 0;
            for t in tensors {
                let [s] = operands(OP, [*t])?;
                let src = strided(s.typed::<T>(OP)?, t.layout());
                let dst_strides = contiguous_strides(t.shape());
                copy_into(gpu, t.shape(), src, &mut out, offset, &dst_strides)?;
                offset += t.elem_count();
            }
            wrap(out)
        });
        Ok(Bucket { buf, len, dtype })
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
