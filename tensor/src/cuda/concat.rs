//! CUDA dispatch of `cat` (`ops/concat.rs`): the output is allocated once, contiguous, and each
//! input is one strided copy (`cuda::ops::elementwise::copy_into`, a plain device copy when both
//! sides are contiguous) into the slice of the output it fills: offset `start * inner` (start =
//! the input's running position along `dim`, inner = the product of the dims after it) with the
//! output's strides. Every dtype.

use super::{map_cuda_buf, operands, same_device, strided, tensor_of, wrap, CudaElem};
use crate::{contiguous_strides, Result, Tensor};
use cuda::ops::elementwise::copy_into;
use cuda::{DeviceBuffer, Gpu};

const OP: &str = "cat";

/// `tensors` (checked by the op: one dtype, shapes agreeing but along `dim`) joined along `dim`
/// into `out_shape`, on their GPU.
pub(crate) fn cat(tensors: &[&Tensor], dim: usize, out_shape: &[usize]) -> Result<Tensor> {
    same_device(OP, tensors)?;
    let [first] = operands(OP, [tensors[0]])?;
    let gpu = &first.gpu;
    let out = map_cuda_buf!(&*first.buf, b => wrap(cat_typed(b, gpu, tensors, dim, out_shape)?));
    Ok(tensor_of(gpu, out, out_shape))
}

/// The concatenation in element type `T`, which `_like` (the first input's buffer) selects.
fn cat_typed<T: CudaElem>(
    _like: &DeviceBuffer<T>,
    gpu: &Gpu,
    tensors: &[&Tensor],
    dim: usize,
    out_shape: &[usize],
) -> Result<DeviceBuffer<T>> {
    let inner: usize = out_shape[dim + 1..].iter().product();
    let strides = contiguous_strides(out_shape);
    let mut out = gpu.alloc::<T>(out_shape.iter().product())?;
    let mut start = 0;
    for t in tensors {
        let [s] = operands(OP, [t])?;
        let src = strided(s.typed::<T>(OP)?, t.layout());
        copy_into(gpu, t.shape(), src, &mut out, start * inner, &strides)?;
        start += t.shape()[dim];
    }
    Ok(out)
}
