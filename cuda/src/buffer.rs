//! Device memory: [`DeviceBuffer<T>`], a typed, owned allocation of `len` elements on one GPU,
//! taken from that GPU's stream-ordered pool (see `gpu.rs`) and given back to it on drop, and the
//! element types a buffer can hold ([`DeviceElem`], tagged at run time by [`ElemType`]). On a
//! simulated GPU the allocation is host memory fenced by guard pages (`sim/memory.rs`), and its
//! device address is its host address.
//!
//! Layout: a buffer is a flat array; ops see it through an element offset and strides
//! ([`crate::Strided`]), never through `Tensor`. Kernels receive raw device addresses, computed
//! here with a bounds check.

use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

/// The element type of a device buffer (the kernels' type suffix: `f32`, `bf16`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    U32,
    U8,
}

impl ElemType {
    /// The suffix kernel names use for this type.
    pub fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
            ElemType::F16 => "f16",
            ElemType::BF16 => "bf16",
            ElemType::I64 => "i64",
            ElemType::I32 => "i32",
            ElemType::U32 => "u32",
            ElemType::U8 => "u8",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            ElemType::U8 => 1,
            ElemType::F16 | ElemType::BF16 => 2,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F64 | ElemType::I64 => 8,
        }
    }

    /// f32, f16 or bf16: the types the float kernels are built for.
    pub fn is_kernel_float(self) -> bool {
        matches!(self, ElemType::F32 | ElemType::F16 | ElemType::BF16)
    }
}

impl std::fmt::Display for ElemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type a device buffer can hold. Every bit pattern is a valid value of each of them, so
/// fresh (unwritten) device memory is safe to read back.
pub trait DeviceElem:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static
{
    const TYPE: ElemType;
}

macro_rules! device_elem {
    ($t:ty, $v:ident) => {
        impl DeviceElem for $t {
            const TYPE: ElemType = ElemType::$v;
        }
    };
}

device_elem!(f32, F32);
device_elem!(f64, F64);
device_elem!(f16, F16);
device_elem!(bf16, BF16);
device_elem!(i64, I64);
device_elem!(i32, I32);
device_elem!(u32, U32);
device_elem!(u8, U8);

/// `len` elements of `T` in one GPU's memory. Created by [`crate::Gpu`] (`alloc`, `zeros`,
/// `upload`); freed (back into the pool, ordered on the GPU's stream) when dropped. An empty
/// buffer holds one unused element underneath (the driver rejects zero-byte allocations).
pub struct DeviceBuffer<T: DeviceElem> {
    pub(crate) storage: Storage<T>,
    pub(crate) len: usize,
    pub(crate) ordinal: usize,
}

/// Where a buffer's elements live: a CUDA allocation, or a simulated one (host memory).
pub(crate) enum Storage<T: DeviceElem> {
    Cuda(CudaSlice<T>),
    Sim(crate::sim::memory::SimAlloc),
}

impl<T: DeviceElem> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ordinal of the GPU that holds the buffer.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn elem_type(&self) -> ElemType {
        T::TYPE
    }

    /// The device address of element 0.
    pub fn device_address(&self) -> u64 {
        match &self.storage {
            Storage::Cuda(slice) => {
                // Event tracking is off on our contexts (one stream per device), so the returned
                // guard records nothing.
                let (ptr, _guard) = slice.device_ptr(slice.stream());
                ptr
            }
            Storage::Sim(a) => a.address(),
        }
    }

    /// Whether the buffer lives on a simulated GPU.
    pub fn is_simulated(&self) -> bool {
        matches!(self.storage, Storage::Sim(_))
    }

    /// The device address of element `offset` when elements `offset..offset + count` lie inside
    /// the buffer; `op` names the caller in the error.
    pub fn address_at(&self, op: &'static str, offset: usize, count: usize) -> crate::Result<u64> {
        match offset.checked_add(count) {
            Some(end) if end <= self.len() => {
                Ok(self.device_address() + (offset * std::mem::size_of::<T>()) as u64)
            }
            _ => Err(crate::Error::arg(
                op,
                format!(
                    "elements {offset}..{offset}+{count} are outside a device buffer of {} {}",
                    self.len(),
                    T::TYPE
                ),
            )),
        }
    }

    /// The cudarc slice underneath, for code that calls cudarc directly (one element long for an
    /// empty buffer); None on a simulated GPU.
    pub fn as_cuda_slice(&self) -> Option<&CudaSlice<T>> {
        match &self.storage {
            Storage::Cuda(slice) => Some(slice),
            Storage::Sim(_) => None,
        }
    }

    pub fn as_cuda_slice_mut(&mut self) -> Option<&mut CudaSlice<T>> {
        match &mut self.storage {
            Storage::Cuda(slice) => Some(slice),
            Storage::Sim(_) => None,
        }
    }
}

impl<T: DeviceElem> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer<{}>[{}] on cuda:{}",
            T::TYPE,
            self.len(),
            self.ordinal
        )
    }
}
