//! CUDA dispatch of `to_dtype`: one launch of `cuda::ops::cast` (every pair of f32, f64, f16,
//! bf16, i64, u8), reading the source through its layout and writing a contiguous result.

use super::{map_cuda_buf, operands, strided, tensor_of, wrap, CudaElem};
use crate::{DType, Result, Tensor};
use half::{bf16, f16};

fn cast_to<S: CudaElem>(
    gpu: &cuda::Gpu,
    x: &cuda::DeviceBuffer<S>,
    src: &Tensor,
    dtype: DType,
) -> Result<super::CudaBuf> {
    let (shape, x) = (src.shape(), strided(x, src.layout()));
    Ok(match dtype {
        DType::F32 => wrap(cuda::ops::cast::cast::<S, f32>(gpu, shape, x)?),
        DType::F64 => wrap(cuda::ops::cast::cast::<S, f64>(gpu, shape, x)?),
        DType::F16 => wrap(cuda::ops::cast::cast::<S, f16>(gpu, shape, x)?),
        DType::BF16 => wrap(cuda::ops::cast::cast::<S, bf16>(gpu, shape, x)?),
        DType::I64 => wrap(cuda::ops::cast::cast::<S, i64>(gpu, shape, x)?),
        DType::U8 => wrap(cuda::ops::cast::cast::<S, u8>(gpu, shape, x)?),
    })
}

/// `x`'s elements converted to `dtype`, contiguous on the same GPU.
pub(crate) fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let [s] = operands("cast", [x])?;
    let out = map_cuda_buf!(&*s.buf, b => cast_to(&s.gpu, b, x, dtype)?);
    Ok(tensor_of(&s.gpu, out, x.shape()))
}
