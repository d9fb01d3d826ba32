//! Cast between dtypes. Float to integer truncates toward zero (saturating); u8 from floats
//! clamps to 0..=255, as `as` does.

use crate::{map_cpu_storage, CpuStorage, DType, Result, Tensor, WithDType};
use half::{bf16, f16};

fn cast_slice<S: WithDType, D: WithDType>(src: &[S]) -> Vec<D> {
    src.iter().map(|&x| D::from_f64(x.to_f64())).collect()
}

/// Converts a contiguous typed slice into a storage of `dtype`.
pub fn cast_cpu<S: WithDType>(src: &[S], dtype: DType) -> CpuStorage {
    match dtype {
        DType::F32 => CpuStorage::from_vec(cast_slice::<S, f32>(src)),
        DType::F64 => CpuStorage::from_vec(cast_slice::<S, f64>(src)),
        DType::F16 => CpuStorage::from_vec(cast_slice::<S, f16>(src)),
        DType::BF16 => CpuStorage::from_vec(cast_slice::<S, bf16>(src)),
        DType::I64 => CpuStorage::from_vec(cast_slice::<S, i64>(src)),
        DType::U8 => CpuStorage::from_vec(cast_slice::<S, u8>(src)),
    }
}

impl Tensor {
    /// The same values in `dtype` (a shared clone when the dtype already matches).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let _p = crate::profiler::scope("cast").io_as(&[self], self.shape(), dtype);
        #[cfg(feature = "cuda")]
        if let crate::Storage::Cuda(_) = self.storage() {
            return crate::cuda::cast::cast(self, dtype);
        }
        let src = self.contiguous()?;
        let s = src.cpu_storage("cast")?;
        let r = src.layout().contiguous_range().expect("contiguous");
        let out = map_cpu_storage!(s, b => cast_cpu(&b.as_slice()[r], dtype));
        Ok(Tensor::from_cpu(out, self.shape()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cast_round_trips_and_truncates() {
        let t = Tensor::from_vec(vec![1.5f32, -2.7, 300.0], &[3]).unwrap();
        assert_eq!(
            t.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(),
            vec![1, -2, 300]
        );
        assert_eq!(
            t.to_dtype(DType::U8).unwrap().to_vec::<u8>().unwrap(),
            vec![1, 0, 255]
        );
        let h = t
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(h.to_vec::<f32>().unwrap(), vec![1.5, -2.703125, 300.0]);
        // A strided view casts in row-major order.
        let m = Tensor::from_vec(vec![1i64, 2, 3, 4, 5, 6], &[2, 3])
            .unwrap()
            .t()
            .unwrap();
        let f = m.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
        assert_eq!(f, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
