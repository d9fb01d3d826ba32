//! Where a tensor's elements live. A `Storage` is a flat buffer on one device; the `Layout` of a
//! tensor says which elements of it the tensor sees. CPU buffers are either owned vectors or a
//! read-only range of a memory-mapped file (zero-copy checkpoint loading).

use crate::{DType, Device, Error, Result, WithDType};
use half::{bf16, f16};
use std::sync::Arc;

/// A typed CPU buffer: an owned vector, or `len` elements of a memory map starting at byte `offset`.
#[derive(Clone)]
pub enum Buf<T> {
    Owned(Vec<T>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
}

impl<T: bytemuck::Pod> Buf<T> {
    /// A view of `len` elements of `map` at byte `offset`. Fails when the range is out of bounds
    /// or not aligned for `T` (the caller then copies instead).
    pub fn mapped(map: Arc<memmap2::Mmap>, offset: usize, len: usize) -> Option<Self> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        let end = offset.checked_add(bytes)?;
        if end > map.len()
            || !(map.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<T>())
        {
            return None;
        }
        Some(Buf::Mapped { map, offset, len })
    }

    #[inline]
    pub fn as_slice(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            Buf::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * std::mem::size_of::<T>()];
                bytemuck::cast_slice(bytes)
            }
        }
    }

    /// Mutable access; a mapped buffer is copied into an owned one first (copy on write).
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        if let Buf::Mapped { .. } = self {
            *self = Buf::Owned(self.as_slice().to_vec());
        }
        match self {
            Buf::Owned(v) => v,
            Buf::Mapped { .. } => unreachable!("converted to owned above"),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Buf::Mapped { .. })
    }

    pub fn len(&self) -> usize {
        match self {
            Buf::Owned(v) => v.len(),
            Buf::Mapped { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Host memory, one variant per dtype.
#[derive(Clone)]
pub enum CpuStorage {
    F32(Buf<f32>),
    F64(Buf<f64>),
    F16(Buf<f16>),
    BF16(Buf<bf16>),
    I64(Buf<i64>),
    U8(Buf<u8>),
}

/// Runs `$body` with `$b` bound to the typed buffer of a `CpuStorage`, whatever its dtype.
#[macro_export]
macro_rules! map_cpu_storage {
    ($s:expr, $b:ident => $body:expr) => {
        match $s {
            $crate::CpuStorage::F32($b) => $body,
            $crate::CpuStorage::F64($b) => $body,
            $crate::CpuStorage::F16($b) => $body,
            $crate::CpuStorage::BF16($b) => $body,
            $crate::CpuStorage::I64($b) => $body,
            $crate::CpuStorage::U8($b) => $body,
        }
    };
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::U8(_) => DType::U8,
        }
    }

    pub fn len(&self) -> usize {
        map_cpu_storage!(self, b => b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_mapped(&self) -> bool {
        map_cpu_storage!(self, b => b.is_mapped())
    }

    pub fn from_vec<T: WithDType>(v: Vec<T>) -> Self {
        T::wrap(Buf::Owned(v))
    }

    /// The elements as a typed slice; errors (naming `op`) when the dtype is not `T`.
    pub fn as_slice<T: WithDType>(&self, op: &'static str) -> Result<&[T]> {
        T::buf(self)
            .map(|b| b.as_slice())
            .ok_or(Error::DTypeMismatch {
                op,
                expected: T::DTYPE,
                got: self.dtype(),
            })
    }

    /// Zero-filled storage of `n` elements.
    pub fn zeros(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F32 => Self::from_vec(vec![0f32; n]),
            DType::F64 => Self::from_vec(vec![0f64; n]),
            DType::F16 => Self::from_vec(vec![f16::ZERO; n]),
            DType::BF16 => Self::from_vec(vec![bf16::ZERO; n]),
            DType::I64 => Self::from_vec(vec![0i64; n]),
            DType::U8 => Self::from_vec(vec![0u8; n]),
        }
    }
}

/// A buffer on some device. The CUDA variant (`crate::cuda::CudaStorage`) is added by the `cuda`
/// feature.
#[derive(Clone)]
pub enum Storage {
    Cpu(CpuStorage),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaStorage),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.device(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
