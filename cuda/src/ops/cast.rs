//! dtype conversion (`kernels/cast.cu`): a strided or contiguous input into a fresh contiguous
//! buffer of another element type, through f64 as tensor/src/ops/cast.rs converts (round to
//! nearest even into float types; truncation toward zero, saturation and NaN -> 0 into i64 / u8).
//! A conversion to the same type is a copy (`elementwise::copy_strided`).

use super::len_i64;
use crate::buffer::{DeviceBuffer, DeviceElem, ElemType};
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::CAST, KernelFile};
use crate::strided::{Strided, Walk};
use crate::Result;

/// The element types cast.cu converts between.
const TYPES: [ElemType; 6] = [
    ElemType::F32,
    ElemType::F64,
    ElemType::F16,
    ElemType::BF16,
    ElemType::I64,
    ElemType::U8,
];

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v = Vec::new();
    for s in TYPES {
        for d in TYPES {
            v.push((&CAST, format!("cast_{s}_{d}")));
        }
    }
    v
}

/// `x` (over `shape`) converted to `D`, contiguous.
pub fn cast<S: DeviceElem, D: DeviceElem>(
    gpu: &Gpu,
    shape: &[usize],
    x: Strided<'_, S>,
) -> Result<DeviceBuffer<D>> {
    const OP: &str = "cast";
    for t in [S::TYPE, D::TYPE] {
        if !TYPES.contains(&t) {
            bail!(OP, "no cast kernel for {t}");
        }
    }
    gpu.same_device(OP, x.buf)?;
    if S::TYPE == D::TYPE {
        return Ok(same_type(super::elementwise::copy_strided(gpu, shape, x)?));
    }
    let xa = x.address(OP, shape)?;
    let n: usize = shape.iter().product();
    let out = gpu.alloc::<D>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (walk, contiguous) = Walk::new(OP, shape, &[x.strides])?;
    let (n64, oa, flag) = (len_i64(OP, n)?, out.device_address(), contiguous as i32);
    gpu.count(crate::counters::Count::Cast, 1);
    let walk = if contiguous { Walk::unused() } else { walk };
    // SAFETY: matches `cast_<s>_<d>(Walk, const S*, D*, i64, int)`; extents checked.
    unsafe {
        gpu.launch(
            &CAST,
            &format!("cast_{}_{}", S::TYPE, D::TYPE),
            Launch::grid_stride(n),
            &mut [arg(&walk), arg(&xa), arg(&oa), arg(&n64), arg(&flag)],
        )?;
    }
    Ok(out)
}

/// `buf` as a `DeviceBuffer<D>`; S and D must be the same type (only the Rust type parameter
/// changes; checked).
pub(crate) fn same_type<S: DeviceElem, D: DeviceElem>(buf: DeviceBuffer<S>) -> DeviceBuffer<D> {
    let boxed: Box<dyn std::any::Any> = Box::new(buf);
    match boxed.downcast::<DeviceBuffer<D>>() {
        Ok(b) => *b,
        Err(_) => unreachable!("same_type called with {} and {}", S::TYPE, D::TYPE),
    }
}
