//! `Tensor`: shared storage plus a layout. Cloning is cheap (an `Arc` and a small `Layout`), views
//! share storage, and every op returns a new tensor. The one exception is `data_mut` (and its GPU
//! counterpart `cuda_data_mut`, tensor/src/cuda/inplace.rs), used by the optimizer to update
//! parameters in place (copy-on-write when the storage is shared).

use crate::cpu::copy::gather_strided;
use crate::{
    map_cpu_storage, Buf, CpuStorage, DType, Device, Error, Layout, Result, Storage, WithDType,
};
use std::sync::Arc;

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor[{:?}, {}, {}]",
            self.shape(),
            self.dtype(),
            self.device()
        )
    }
}

impl Tensor {
    // ---- construction -------------------------------------------------------------------

    /// Wraps a storage and a layout. Backends use this to return results.
    pub fn from_storage(storage: Storage, layout: Layout) -> Tensor {
        Tensor {
            storage: Arc::new(storage),
            layout,
        }
    }

    /// A contiguous CPU tensor from a storage holding exactly `shape`'s elements.
    pub fn from_cpu(storage: CpuStorage, shape: &[usize]) -> Tensor {
        debug_assert_eq!(storage.len(), shape.iter().product::<usize>());
        Tensor::from_storage(Storage::Cpu(storage), Layout::contiguous(shape))
    }

    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::op(
                "from_vec",
                format!("{} elements do not fill shape {shape:?} ({n})", data.len()),
            ));
        }
        Ok(Tensor::from_cpu(CpuStorage::from_vec(data), shape))
    }

    pub fn from_slice<T: WithDType>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A rank-0 tensor.
    pub fn scalar<T: WithDType>(v: T) -> Tensor {
        Tensor::from_cpu(CpuStorage::from_vec(vec![v]), &[])
    }

    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let _p = crate::profiler::scope("zeros");
        let n = shape.iter().product();
        match device {
            Device::Cpu => Ok(Tensor::from_cpu(CpuStorage::zeros(dtype, n), shape)),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => Ok(Tensor::from_storage(
                Storage::Cuda(crate::cuda::CudaStorage::zeros(cuda::gpu(i)?, dtype, n)?),
                Layout::contiguous(shape),
            )),
        }
    }

    pub fn ones(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    /// Every element `value` (converted to `dtype`).
    pub fn full(value: f64, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let _p = crate::profiler::scope("full");
        let n: usize = shape.iter().product();
        fn fill<T: WithDType>(v: f64, n: usize) -> CpuStorage {
            CpuStorage::from_vec(vec![T::from_f64(v); n])
        }
        let s = match dtype {
            DType::F32 => fill::<f32>(value, n),
            DType::F64 => fill::<f64>(value, n),
            DType::F16 => fill::<half::f16>(value, n),
            DType::BF16 => fill::<half::bf16>(value, n),
            DType::I64 => fill::<i64>(value, n),
            DType::U8 => fill::<u8>(value, n),
        };
        Tensor::from_cpu(s, shape).to_device(device)
    }

    /// `start, start+step, ...` while below `end` (above, for a negative step), as a 1-D tensor.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType, device: Device) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() {
            return Err(Error::op(
                "arange",
                format!("step must be finite and non-zero, got {step}"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        Tensor::from_vec(v, &[n])?
            .to_dtype(dtype)?
            .to_device(device)
    }

    /// A tensor over `shape` elements of `dtype` at byte `offset` of a memory map. Zero-copy when
    /// the range is aligned for the dtype; otherwise the bytes are copied.
    pub fn from_mmap(
        map: Arc<memmap2::Mmap>,
        offset: usize,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        fn make<T: WithDType>(
            map: Arc<memmap2::Mmap>,
            offset: usize,
            n: usize,
        ) -> Result<CpuStorage> {
            let bytes = n * std::mem::size_of::<T>();
            if offset + bytes > map.len() {
                return Err(Error::op(
                    "from_mmap",
                    format!(
                        "byte range {offset}..{} beyond the {}-byte map",
                        offset + bytes,
                        map.len()
                    ),
                ));
            }
            Ok(match Buf::<T>::mapped(map.clone(), offset, n) {
                Some(b) => T::wrap(b),
                None => {
                    // Unaligned data is copied: check the copy fits (a sparse file can claim
                    // more bytes than the machine has).
                    crate::memory::check_fits("copying the unaligned tensor", Some(bytes as u64))
                        .map_err(|m| Error::op("from_mmap", m))?;
                    let v: Vec<T> = bytemuck::pod_collect_to_vec(&map[offset..offset + bytes]);
                    CpuStorage::from_vec(v)
                }
            })
        }
        let s = match dtype {
            DType::F32 => make::<f32>(map, offset, n)?,
            DType::F64 => make::<f64>(map, offset, n)?,
            DType::F16 => make::<half::f16>(map, offset, n)?,
            DType::BF16 => make::<half::bf16>(map, offset, n)?,
            DType::I64 => make::<i64>(map, offset, n)?,
            DType::U8 => make::<u8>(map, offset, n)?,
        };
        Ok(Tensor::from_cpu(s, shape))
    }

    // ---- accessors ----------------------------------------------------------------------

    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }
    /// Alias of `shape`, as in candle.
    pub fn dims(&self) -> &[usize] {
        self.layout.shape()
    }
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }
    pub fn elem_count(&self) -> usize {
        self.layout.elem_count()
    }
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    pub fn device(&self) -> Device {
        self.storage.device()
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
    /// Size of dim `d` (negative counts from the end).
    pub fn dim(&self, d: isize) -> Result<usize> {
        Ok(self.shape()[self.layout.dim("dim", d)?])
    }
    /// The CPU storage, or an error naming `op` when the tensor is elsewhere.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub fn cpu_storage(&self, op: &'static str) -> Result<&CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => Err(Error::op(
                op,
                format!("needs a CPU tensor, this one is on {}", s.device()),
            )),
        }
    }
    /// True when the tensor reads a memory-mapped file rather than owned memory.
    pub fn is_mapped(&self) -> bool {
        match &*self.storage {
            Storage::Cpu(s) => s.is_mapped(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => false,
        }
    }
    /// True when the two tensors share one storage buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The whole storage this tensor reads, as a contiguous 1-D tensor (no copy): the buffer a
    /// view lives in (the fused half copy of several parameters, `nn::fused_half`).
    pub fn base(&self) -> Tensor {
        self.with_layout(Layout::contiguous(&[self.storage.len()]))
    }

    /// Elements in row-major order, whatever the layout. The dtype must be `T`.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if self.device() != Device::Cpu {
            return self.to_device(Device::Cpu)?.to_vec();
        }
        let s = self.cpu_storage("to_vec")?.as_slice::<T>("to_vec")?;
        Ok(match self.layout.contiguous_range() {
            Some(r) => s[r].to_vec(),
            None => gather_strided(s, &self.layout),
        })
    }

    /// The row-major index of the first NaN or infinite element, or None when every element is
    /// finite (integer tensors always are). Used to reject non-finite weights and embeddings
    /// where they are read.
    pub fn first_non_finite(&self) -> Result<Option<usize>> {
        let pos = match self.dtype() {
            DType::F32 => match (self.device(), self.layout.contiguous_range()) {
                // In place: a memory-mapped checkpoint tensor is scanned without a copy.
                (Device::Cpu, Some(r)) => self
                    .cpu_storage("first_non_finite")?
                    .as_slice::<f32>("first_non_finite")?[r]
                    .iter()
                    .position(|v| !v.is_finite()),
                _ => self.to_vec::<f32>()?.iter().position(|v| !v.is_finite()),
            },
            DType::F64 => self.to_vec::<f64>()?.iter().position(|v| !v.is_finite()),
            DType::F16 | DType::BF16 => self.to_dtype(DType::F32)?.first_non_finite()?,
            DType::I64 | DType::U8 => None,
        };
        Ok(pos)
    }

    /// Elements converted to f64 (any dtype), row-major. Handy in tests.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        self.to_dtype(DType::F64)?.to_vec::<f64>()
    }

    /// The single element of a tensor with one element.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::op(
                "to_scalar",
                format!("tensor of shape {:?} is not a single element", self.shape()),
            ));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// Mutable access to the elements, for in-place updates (the optimizer). Makes the tensor
    /// contiguous and its storage unshared and owned first, so no other tensor sees the writes.
    pub fn data_mut<T: WithDType>(&mut self) -> Result<&mut [T]> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch {
                op: "data_mut",
                expected: T::DTYPE,
                got: self.dtype(),
            });
        }
        match self.storage_mut()? {
            // The dtype was checked above, so this cast is between identical element types.
            Storage::Cpu(cpu) => {
                map_cpu_storage!(cpu, b => Ok(bytemuck::cast_slice_mut(b.as_mut_slice())))
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => Err(Error::op(
                "data_mut",
                format!(
                    "the tensor is on {}; update it in place with `cuda_data_mut`",
                    s.device()
                ),
            )),
        }
    }

    /// The storage, for an in-place write: made to hold exactly this tensor's elements in
    /// row-major order (copied first when the tensor is a view) and not shared with another
    /// tensor (`Arc::make_mut`; on the CPU that clones the buffer when shared, on a GPU it clones
    /// the handle only, see `cuda_data_mut`).
    pub(crate) fn storage_mut(&mut self) -> Result<&mut Storage> {
        let whole = self.is_contiguous()
            && self.layout.offset() == 0
            && self.storage.len() == self.elem_count();
        if !whole {
            *self = self.copy()?;
        }
        Ok(Arc::make_mut(&mut self.storage))
    }

    // ---- layout views (no copy) ----------------------------------------------------------

    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            layout,
        }
    }

    /// A contiguous copy when the layout is not contiguous; `self` (shared) otherwise.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            Ok(self.clone())
        } else {
            self.copy()
        }
    }

    /// A fresh contiguous copy with its own storage.
    pub fn copy(&self) -> Result<Tensor> {
        let _p = crate::profiler::scope("copy");
        match &*self.storage {
            Storage::Cpu(s) => {
                let out = map_cpu_storage!(s, b => CpuStorage::from_vec(gather_strided(b.as_slice(), &self.layout)));
                Ok(Tensor::from_cpu(out, self.shape()))
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => {
                let out = s.copy(&self.layout)?;
                Ok(Tensor::from_storage(
                    Storage::Cuda(out),
                    Layout::contiguous(self.shape()),
                ))
            }
        }
    }

    /// Same elements, new shape. A view when the strides allow it, else a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.elem_count() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
            });
        }
        match self.layout.reshape(shape) {
            Some(l) => Ok(self.with_layout(l)),
            None => Ok(self.copy()?.with_layout(Layout::contiguous(shape))),
        }
    }

    /// Flattens dims `start..=end` into one.
    pub fn flatten(&self, start: usize, end: usize) -> Result<Tensor> {
        let s = self.shape();
        if start > end || end >= s.len() {
            return Err(Error::op(
                "flatten",
                format!("dims {start}..={end} invalid for shape {s:?}"),
            ));
        }
        let mut shape = s[..start].to_vec();
        shape.push(s[start..=end].iter().product());
        shape.extend_from_slice(&s[end + 1..]);
        self.reshape(&shape)
    }

    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.transpose("transpose", a, b)?))
    }

    /// Swaps the last two dims.
    pub fn t(&self) -> Result<Tensor> {
        let r = self.rank();
        if r < 2 {
            return Err(Error::op(
                "t",
                format!("needs rank >= 2, got shape {:?}", self.shape()),
            ));
        }
        self.transpose(r - 2, r - 1)
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.permute("permute", perm)?))
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.narrow("narrow", dim, start, len)?))
    }

    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.broadcast_to("broadcast_to", shape)?))
    }

    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.unsqueeze("unsqueeze", dim)?))
    }

    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.squeeze("squeeze", dim)?))
    }

    /// Moves the tensor to `device` (a shared clone when it is already there). Crossing devices
    /// copies the elements the layout sees into a contiguous storage there.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        match (&*self.storage, device) {
            (Storage::Cpu(_), Device::Cpu) => Ok(self.clone()),
            #[cfg(feature = "cuda")]
            (Storage::Cpu(_), Device::Cuda(i)) => {
                let _p = crate::profiler::scope("upload");
                let host = self.contiguous()?;
                let r = host.layout.contiguous_range().expect("contiguous");
                let s = host.cpu_storage("to_device")?;
                let s = crate::cuda::CudaStorage::upload(cuda::gpu(i)?, s, r)?;
                Ok(Tensor::from_storage(
                    Storage::Cuda(s),
                    Layout::contiguous(self.shape()),
                ))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(s), Device::Cpu) => {
                let _p = crate::profiler::scope("download");
                Ok(Tensor::from_cpu(s.download(&self.layout)?, self.shape()))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(_), Device::Cuda(_)) => self.to_device(Device::Cpu)?.to_device(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_non_finite_finds_nan_and_inf_in_every_float_dtype_and_view() {
        let clean = Tensor::from_vec(vec![1.0f32, -2.0, 0.0, 3.5], &[2, 2]).unwrap();
        assert_eq!(clean.first_non_finite().unwrap(), None);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::from_vec(vec![1.0f32, 2.0, bad, 4.0], &[2, 2]).unwrap();
            assert_eq!(t.first_non_finite().unwrap(), Some(2));
            // A transposed view reports the row-major index of its own layout.
            assert_eq!(t.t().unwrap().first_non_finite().unwrap(), Some(1));
            for dt in [DType::F64, DType::F16, DType::BF16] {
                let c = t.to_dtype(dt).unwrap();
                assert_eq!(c.first_non_finite().unwrap(), Some(2), "{dt} {bad}");
            }
        }
        let ints = Tensor::from_vec(vec![1i64, 2], &[2]).unwrap();
        assert_eq!(ints.first_non_finite().unwrap(), None);
    }
}
