//! In-place writes to a CUDA tensor's elements (the optimizer's updates of parameters, moments and
//! gradients), copy-on-write exactly as `Tensor::data_mut` on the CPU: the tensor is first made to
//! cover its whole storage in row-major order (a view is copied), then its storage is made
//! unshared at both levels a clone may share: the tensor's `Arc<Storage>` and the storage's
//! `Arc<CudaBuf>`. A unique buffer is written in place; a shared one is copied on the device
//! first, so every other tensor keeps the values it saw.
//!
//! Layout: the returned [`DeviceBuffer`] is the tensor's elements, contiguous and row-major, and
//! exactly `elem_count` long.

use super::{map_cuda_buf, wrap, CudaBuf, CudaElem, CudaStorage};
use crate::{Error, Result, Storage, Tensor};
use cuda::{DeviceBuffer, DeviceElem, Gpu};
use std::sync::Arc;

const OP: &str = "cuda_data_mut";

impl CudaStorage {
    /// The device buffer for writing, not shared with any other storage (copied on the device
    /// first when it is).
    pub fn buf_mut(&mut self) -> Result<&mut CudaBuf> {
        if Arc::get_mut(&mut self.buf).is_none() {
            let gpu = &*self.gpu;
            let fresh = map_cuda_buf!(&*self.buf, b => wrap(duplicate(gpu, b)?));
            self.buf = Arc::new(fresh);
        }
        Arc::get_mut(&mut self.buf)
            .ok_or_else(|| Error::op(OP, "the device buffer is still shared after copying it"))
    }
}

/// A fresh device copy of `b`.
fn duplicate<T: DeviceElem>(gpu: &Gpu, b: &DeviceBuffer<T>) -> cuda::Result<DeviceBuffer<T>> {
    let mut out = gpu.alloc::<T>(b.len())?;
    gpu.copy(b, 0, &mut out, 0, b.len())?;
    Ok(out)
}

impl Tensor {
    /// Mutable access to a CUDA tensor's elements, for in-place updates: the GPU counterpart of
    /// [`Tensor::data_mut`]. The tensor becomes contiguous, whole and unshared first (see the
    /// module docs), so no other tensor sees the writes. Errors when the tensor is on the CPU or
    /// its dtype is not `T`.
    pub fn cuda_data_mut<T: CudaElem>(&mut self) -> Result<&mut DeviceBuffer<T>> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch {
                op: OP,
                expected: T::DTYPE,
                got: self.dtype(),
            });
        }
        if let Storage::Cpu(_) = self.storage() {
            crate::bail!(
                OP,
                "the tensor is on the cpu; update it in place with `data_mut`"
            );
        }
        match self.storage_mut()? {
            Storage::Cuda(s) => {
                let got = s.dtype();
                T::of_buf_mut(s.buf_mut()?).ok_or(Error::DTypeMismatch {
                    op: OP,
                    expected: T::DTYPE,
                    got,
                })
            }
            Storage::Cpu(_) => crate::bail!(OP, "the tensor moved to the cpu"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Tensor};

    #[test]
    fn cpu_tensors_are_refused_with_a_pointer_to_data_mut() {
        let mut t = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
        let err = t.cuda_data_mut::<f32>().unwrap_err().to_string();
        assert!(
            err.starts_with("cuda_data_mut") && err.contains("data_mut"),
            "{err}"
        );
        let err = t.cuda_data_mut::<half::f16>().unwrap_err().to_string();
        assert!(err.contains("expected dtype f16, got f32"), "{err}");
    }

    #[test]
    fn writes_stay_private_to_the_written_tensor() {
        let Some(dev) =
            super::super::tests::gpu_or_skip("writes_stay_private_to_the_written_tensor")
        else {
            return;
        };
        let host = Tensor::from_vec((0..12).map(|x| x as f32).collect(), &[3, 4]).unwrap();
        let original = host.to_device(dev).unwrap();
        // A shared clone: the write must copy and leave `original` as it was.
        let mut shared = original.clone();
        let gpu = cuda::gpu(0).unwrap();
        let ones = gpu.upload(&[1f32; 12]).unwrap();
        let buf = shared.cuda_data_mut::<f32>().unwrap();
        gpu.copy(&ones, 0, buf, 0, 12).unwrap();
        assert_eq!(shared.to_vec::<f32>().unwrap(), vec![1f32; 12]);
        assert_eq!(
            original.to_vec::<f32>().unwrap(),
            host.to_vec::<f32>().unwrap()
        );
        // A unique tensor is written in place: same device address before and after.
        let before = shared.cuda_data_mut::<f32>().unwrap().device_address();
        let after = shared.cuda_data_mut::<f32>().unwrap().device_address();
        assert_eq!(before, after);
        // A transposed view becomes a contiguous copy of what it saw.
        let mut view = original.t().unwrap();
        let n = view.cuda_data_mut::<f32>().unwrap().len();
        assert_eq!(n, 12);
        assert_eq!(view.shape(), &[4, 3]);
        assert!(view.is_contiguous());
        assert_eq!(
            view.to_vec::<f32>().unwrap(),
            host.t().unwrap().to_vec::<f32>().unwrap()
        );
        // Storage shared at the buffer level only (two storages, one buffer) is copied too.
        let crate::Storage::Cuda(s) = original.storage() else {
            panic!("on the gpu")
        };
        let mut twin =
            Tensor::from_storage(crate::Storage::Cuda(s.clone()), original.layout().clone());
        let b = twin.cuda_data_mut::<f32>().unwrap();
        gpu.copy(&ones, 0, b, 0, 12).unwrap();
        assert_eq!(
            original.to_vec::<f32>().unwrap(),
            host.to_vec::<f32>().unwrap()
        );
    }
}
