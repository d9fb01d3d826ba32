//! The CUDA side of the tensor crate (feature `cuda`): [`CudaStorage`] (a typed device buffer per
//! dtype plus the GPU holding it), moving elements between host and device, and the helpers every
//! op's CUDA path uses (operand device checks, dtype dispatch of the kernels).
//!
//! Layout: a `CudaStorage` is a flat device array, read through the tensor's `Layout` exactly as a
//! CPU buffer is (element offset + strides, passed to the `cuda` crate's `Strided` operands).
//! Device buffers are immutable once written, so clones share them (`Arc`).

use crate::{map_cpu_storage, CpuStorage, DType, Device, Error, Layout, Result, Tensor, WithDType};
use cuda::ops::elementwise::copy_strided;

pub(crate) mod attention;
pub(crate) mod cast;
pub(crate) mod concat;
pub(crate) mod dropout;
pub(crate) mod elementwise;
pub(crate) mod index;
#[cfg(test)]
mod index_tests;
mod inplace;
pub(crate) mod layer_norm;
pub(crate) mod loss;
pub(crate) mod matmul;
pub mod nccl;
pub mod optim;
pub(crate) mod reduce;
pub(crate) mod rows;
#[cfg(test)]
mod tests;
pub(crate) mod topk;
/// What a GPU did since its counters were reset (`Device::counters`).
pub use cuda::Counters;
use cuda::{DeviceBuffer, Gpu};
use half::{bf16, f16};
use std::ops::Range;
use std::sync::Arc;

/// A device buffer, one variant per dtype.
pub enum CudaBuf {
    F32(DeviceBuffer<f32>),
    F64(DeviceBuffer<f64>),
    F16(DeviceBuffer<f16>),
    BF16(DeviceBuffer<bf16>),
    I64(DeviceBuffer<i64>),
    U8(DeviceBuffer<u8>),
}

/// Runs `$body` with `$b` bound to the typed device buffer of a `CudaBuf`, whatever its dtype.
macro_rules! map_cuda_buf {
    ($s:expr, $b:ident => $body:expr) => {
        match $s {
            $crate::cuda::CudaBuf::F32($b) => $body,
            $crate::cuda::CudaBuf::F64($b) => $body,
            $crate::cuda::CudaBuf::F16($b) => $body,
            $crate::cuda::CudaBuf::BF16($b) => $body,
            $crate::cuda::CudaBuf::I64($b) => $body,
            $crate::cuda::CudaBuf::U8($b) => $body,
        }
    };
}
pub(crate) use map_cuda_buf;

/// Elements on one GPU: the typed buffer (shared by clones) and the GPU that holds it.
#[derive(Clone)]
pub struct CudaStorage {
    pub buf: Arc<CudaBuf>,
    pub gpu: Arc<Gpu>,
}

impl CudaStorage {
    pub fn new(buf: CudaBuf, gpu: Arc<Gpu>) -> Self {
        CudaStorage {
            buf: Arc::new(buf),
            gpu,
        }
    }

    pub fn dtype(&self) -> DType {
        match &*self.buf {
            CudaBuf::F32(_) => DType::F32,
            CudaBuf::F64(_) => DType::F64,
            CudaBuf::F16(_) => DType::F16,
            CudaBuf::BF16(_) => DType::BF16,
            CudaBuf::I64(_) => DType::I64,
            CudaBuf::U8(_) => DType::U8,
        }
    }

    pub fn len(&self) -> usize {
        map_cuda_buf!(&*self.buf, b => b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.gpu.ordinal())
    }

    /// Zero-filled storage of `n` elements on `gpu`.
    pub fn zeros(gpu: Arc<Gpu>, dtype: DType, n: usize) -> Result<Self> {
        let buf = match dtype {
            DType::F32 => wrap::<f32>(gpu.zeros(n)?),
            DType::F64 => wrap::<f64>(gpu.zeros(n)?),
            DType::F16 => wrap::<f16>(gpu.zeros(n)?),
            DType::BF16 => wrap::<bf16>(gpu.zeros(n)?),
            DType::I64 => wrap::<i64>(gpu.zeros(n)?),
            DType::U8 => wrap::<u8>(gpu.zeros(n)?),
        };
        Ok(CudaStorage::new(buf, gpu))
    }

    /// A device copy of elements `range` of a host storage.
    pub fn upload(gpu: Arc<Gpu>, data: &CpuStorage, range: Range<usize>) -> Result<Self> {
        let buf = map_cpu_storage!(data, b => wrap(gpu.upload(&b.as_slice()[range])?));
        Ok(CudaStorage::new(buf, gpu))
    }

    /// The elements `layout` sees, contiguous on the device (shares the buffer when `layout`
    /// already covers it whole and in order).
    pub fn contiguous(&self, layout: &Layout) -> Result<CudaStorage> {
        if layout.is_contiguous() && layout.offset() == 0 && layout.elem_count() == self.len() {
            return Ok(self.clone());
        }
        self.copy(layout)
    }

    /// A fresh contiguous device copy of the elements `layout` sees.
    pub fn copy(&self, layout: &Layout) -> Result<CudaStorage> {
        let (gpu, shape) = (&*self.gpu, layout.shape());
        let buf =
            map_cuda_buf!(&*self.buf, b => wrap(copy_strided(gpu, shape, strided(b, layout))?));
        Ok(CudaStorage::new(buf, self.gpu.clone()))
    }

    /// The elements `layout` sees, row-major on the host (waits for the GPU).
    pub fn download(&self, layout: &Layout) -> Result<CpuStorage> {
        let c = self.contiguous(layout)?;
        let (gpu, n) = (&*self.gpu, layout.elem_count());
        Ok(map_cuda_buf!(&*c.buf, b => CpuStorage::from_vec(gpu.download_range(b, 0, n)?)))
    }

    /// The typed buffer; errors (naming `op`) when the dtype is not `T`.
    pub fn typed<T: CudaElem>(&self, op: &'static str) -> Result<&DeviceBuffer<T>> {
        T::of_buf(&self.buf).ok_or(Error::DTypeMismatch {
            op,
            expected: T::DTYPE,
            got: self.dtype(),
        })
    }
}

/// A dtype that has both a host and a device buffer variant.
pub trait CudaElem: WithDType + cuda::DeviceElem {
    fn into_buf(b: DeviceBuffer<Self>) -> CudaBuf;
    fn of_buf(b: &CudaBuf) -> Option<&DeviceBuffer<Self>>;
    fn of_buf_mut(b: &mut CudaBuf) -> Option<&mut DeviceBuffer<Self>>;
}

macro_rules! cuda_elem {
    ($t:ty, $v:ident) => {
        impl CudaElem for $t {
            fn into_buf(b: DeviceBuffer<Self>) -> CudaBuf {
                CudaBuf::$v(b)
            }
            fn of_buf(b: &CudaBuf) -> Option<&DeviceBuffer<Self>> {
                match b {
                    CudaBuf::$v(b) => Some(b),
                    _ => None,
                }
            }
            fn of_buf_mut(b: &mut CudaBuf) -> Option<&mut DeviceBuffer<Self>> {
                match b {
                    CudaBuf::$v(b) => Some(b),
                    _ => None,
                }
            }
        }
    };
}

cuda_elem!(f32, F32);
cuda_elem!(f64, F64);
cuda_elem!(f16, F16);
cuda_elem!(bf16, BF16);
cuda_elem!(i64, I64);
cuda_elem!(u8, U8);

/// A typed device buffer as a `CudaBuf`.
pub(crate) fn wrap<T: CudaElem>(b: DeviceBuffer<T>) -> CudaBuf {
    T::into_buf(b)
}

/// `buf` read through `layout` (its offset and strides).
pub(crate) fn strided<'a, T: cuda::DeviceElem>(
    buf: &'a DeviceBuffer<T>,
    layout: &'a Layout,
) -> cuda::Strided<'a, T> {
    cuda::Strided::new(buf, layout.offset(), layout.strides())
}

/// The one device every operand of `op` lives on; an error naming both devices otherwise.
pub(crate) fn same_device(op: &'static str, operands: &[&Tensor]) -> Result<Device> {
    let first = operands.first().map_or(Device::Cpu, |t| t.device());
    for t in operands {
        if t.device() != first {
            crate::bail!(
                op,
                "operands are on different devices ({first} and {})",
                t.device()
            );
        }
    }
    Ok(first)
}

/// True when any of the tensors is not on the CPU (the op then takes its CUDA path, which
/// checks that they share one GPU).
pub(crate) fn any_on_cuda(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.device() != Device::Cpu)
}

/// The CUDA storages of `op`'s operands, all on one GPU; an error naming the devices when they
/// are mixed (or on the CPU).
pub(crate) fn operands<'a, const N: usize>(
    op: &'static str,
    ts: [&'a Tensor; N],
) -> Result<[&'a CudaStorage; N]> {
    let device = same_device(op, &ts)?;
    let mut out = Vec::with_capacity(N);
    for t in ts {
        match t.storage() {
            crate::Storage::Cuda(s) => out.push(s),
            crate::Storage::Cpu(_) => crate::bail!(op, "expected a tensor on cuda, got {device}"),
        }
    }
    Ok(out
        .try_into()
        .unwrap_or_else(|_| unreachable!("one storage per operand")))
}

/// A contiguous tensor of `shape` over a fresh device buffer on `gpu`.
pub(crate) fn tensor_of(gpu: &Arc<Gpu>, buf: CudaBuf, shape: &[usize]) -> Tensor {
    let s = CudaStorage::new(buf, gpu.clone());
    Tensor::from_storage(crate::Storage::Cuda(s), Layout::contiguous(shape))
}

/// Runs `$body` with `$T` the element type of a float dtype the kernels are built for (f32, f16,
/// bf16); returns the "not implemented on cuda" error for the others.
macro_rules! float_kernel {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            dtype => {
                return Err($crate::Error::op(
                    $op,
                    format!("dtype {dtype} is not implemented on cuda"),
                ))
            }
        }
    };
}
pub(crate) use float_kernel;

/// As [`float_kernel!`], and also i64 and u8 (the integer arithmetic kernels).
macro_rules! arith_kernel {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
            dtype => $crate::cuda::float_kernel!($op, dtype, $T => $body),
        }
    };
}
pub(crate) use arith_kernel;
