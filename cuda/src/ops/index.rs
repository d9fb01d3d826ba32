//! Selecting and accumulating along one dim at i64 ids (`kernels/index.cu`), as
//! tensor/src/ops/index.rs: `index_select` / `index_add` (whole slices along `dim`) and `gather` /
//! `scatter_add` (element by element along `dim`). Operands are strided (any view); outputs are
//! contiguous row-major.
//!
//! Both kernels walk a shape (the output of a gather, the source of a scatter) and give element s
//! the id `ids[(s / inner) % k]`: the slice ops use `inner` = the product of the dims after `dim`
//! and `k` = the number of ids, the element ops `inner` = 1 and `k` = every element. The indexed
//! operand is walked with its `dim` stride set to 0 and offset by `id * stride[dim]`.
//!
//! Accumulation starts from a copy of the base in the accumulation type ([`ScatterElem::Acc`]:
//! f32 for f16/bf16, as the CPU widens them, rounded back once at the end) and adds with atomics:
//! integer results equal the CPU's exactly; float sums into one element are added in an order that
//! varies between runs (the CPU adds in index order), so they agree to rounding only.
//!
//! An id out of range is reported through the op's status slot ([`crate::Gpu::check_status`]
//! names the op) and reads as zero / adds nothing; the ids are never downloaded to be checked.

use super::len_i64;
use crate::buffer::{DeviceBuffer, DeviceElem, ElemType};
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::INDEX, KernelFile};
use crate::strided::{contiguous_strides, Contig, Strided, Walk};
use crate::Result;
use half::{bf16, f16};

/// A source type of `scatter_add` and the type its sums accumulate in.
pub trait ScatterElem: DeviceElem {
    type Acc: DeviceElem;
}

macro_rules! scatter_elem {
    ($($t:ty => $a:ty),*) => {
        $(impl ScatterElem for $t {
            type Acc = $a;
        })*
    };
}
scatter_elem!(f32 => f32, f16 => f32, bf16 => f32, f64 => f64, i64 => i64, u8 => u8);

const SCATTER_TYPES: [ElemType; 6] = [
    ElemType::F32,
    ElemType::F16,
    ElemType::BF16,
    ElemType::F64,
    ElemType::I64,
    ElemType::U8,
];

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v: Vec<String> = [8, 16, 32, 64]
        .iter()
        .map(|b| format!("gather_w{b}"))
        .collect();
    v.extend(SCATTER_TYPES.iter().map(|t| format!("scatter_add_{t}")));
    v.into_iter().map(|n| (&INDEX, n)).collect()
}

/// How the kernels walk: `walk_shape` (the gathered output / the scattered source), the indexed
/// `dim`, and the id of element s, `ids[(s / inner) % k]`.
struct Plan<'a> {
    walk_shape: &'a [usize],
    dim: usize,
    inner: usize,
    k: usize,
}

impl<'a> Plan<'a> {
    /// Slices: element s of `walk_shape` (size `k` along `dim`) uses the id of its slice.
    fn slices(walk_shape: &'a [usize], dim: usize) -> Plan<'a> {
        Plan {
            walk_shape,
            dim,
            inner: walk_shape[dim + 1..].iter().product(),
            k: walk_shape[dim],
        }
    }

    /// Elements: element s of `walk_shape` uses id s.
    fn elements(walk_shape: &'a [usize], dim: usize) -> Plan<'a> {
        Plan {
            walk_shape,
            dim,
            inner: 1,
            k: walk_shape.iter().product(),
        }
    }

    fn len(&self) -> usize {
        self.walk_shape.iter().product()
    }

    /// Errors unless `shape` (the indexed operand) has the walk's rank, `dim` is one of its dims
    /// and the walk fits inside it outside `dim` (where ids, checked in the kernel, take over).
    fn check(&self, op: &'static str, shape: &[usize]) -> Result<()> {
        let fits = shape.len() == self.walk_shape.len()
            && self.dim < shape.len()
            && (0..shape.len()).all(|d| d == self.dim || self.walk_shape[d] <= shape[d]);
        if !fits {
            bail!(
                op,
                "a walk over {:?} along dim {} does not fit an operand of shape {shape:?}",
                self.walk_shape,
                self.dim
            );
        }
        Ok(())
    }

    /// The launch's scalar arguments: n, inner, k, the indexed dim's stride and size.
    fn scalars(&self, op: &'static str, dim_stride: usize, dim_size: usize) -> Result<[i64; 5]> {
        Ok([
            len_i64(op, self.len())?,
            len_i64(op, self.inner)?,
            len_i64(op, self.k)?,
            len_i64(op, dim_stride)?,
            len_i64(op, dim_size)?,
        ])
    }
}

/// `strides` with the entry of `dim` set to 0.
fn without_dim(strides: &[usize], dim: usize) -> Vec<usize> {
    let mut s = strides.to_vec();
    s[dim] = 0;
    s
}

/// A fresh contiguous buffer over `plan.walk_shape`: element s is `src` (over `shape`) at s's
/// position with `dim` replaced by its id.
fn gather_plan<T: DeviceElem>(
    gpu: &Gpu,
    op: &'static str,
    src: Strided<'_, T>,
    shape: &[usize],
    ids: Contig<'_, i64>,
    plan: Plan<'_>,
) -> Result<DeviceBuffer<T>> {
    gpu.same_device(op, src.buf)?;
    gpu.same_device(op, ids.buf)?;
    plan.check(op, shape)?;
    let sa = src.address(op, shape)?;
    let n = plan.len();
    let ia = ids.address(op, if n == 0 { 0 } else { plan.k })?;
    let out = gpu.alloc::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let strides = without_dim(src.strides, plan.dim);
    let (walk, _) = Walk::new(op, plan.walk_shape, &[&strides])?;
    let [n64, inner, k, ds, dn] = plan.scalars(op, src.strides[plan.dim], shape[plan.dim])?;
    let (oa, st) = (out.device_address(), gpu.status_address_for(op));
    // SAFETY: matches `gather_w<bits>(Walk, const W*, const i64*, W*, i64, i64, i64, i64, i64,
    // u32*)` with W of T's width; `src` reaches every element of `shape`, the walk stays inside
    // it outside `dim` (checked) and ids are range-checked on the device.
    unsafe {
        gpu.launch(
            &INDEX,
            &format!("gather_w{}", T::TYPE.size_in_bytes() * 8),
            Launch::grid_stride(n),
            &mut [
                arg(&walk),
                arg(&sa),
                arg(&ia),
                arg(&oa),
                arg(&n64),
                arg(&inner),
                arg(&k),
                arg(&ds),
                arg(&dn),
                arg(&st),
            ],
        )?;
    }
    Ok(out)
}

/// `base` (over `shape`) with `src` (over `plan.walk_shape`) added at the ids along `dim`,
/// contiguous, accumulated in `T::Acc`.
fn scatter_plan<T: ScatterElem>(
    gpu: &Gpu,
    op: &'static str,
    base: Strided<'_, T>,
    shape: &[usize],
    ids: Contig<'_, i64>,
    src: Strided<'_, T>,
    plan: Plan<'_>,
) -> Result<DeviceBuffer<T>> {
    for b in [base.buf, src.buf] {
        gpu.same_device(op, b)?;
    }
    gpu.same_device(op, ids.buf)?;
    plan.check(op, shape)?;
    let sa = src.address(op, plan.walk_shape)?;
    let n = plan.len();
    let ia = ids.address(op, if n == 0 { 0 } else { plan.k })?;
    let acc = super::cast::cast::<T, T::Acc>(gpu, shape, base)?;
    if n > 0 {
        let out_strides = without_dim(&contiguous_strides(shape), plan.dim);
        let (walk, _) = Walk::new(op, plan.walk_shape, &[src.strides, &out_strides])?;
        let dim_stride = shape[plan.dim + 1..].iter().product();
        let [n64, inner, k, ds, dn] = plan.scalars(op, dim_stride, shape[plan.dim])?;
        let (aa, st) = (acc.device_address(), gpu.status_address_for(op));
        // SAFETY: matches `scatter_add_<t>(Walk, const T*, const i64*, A*, i64, i64, i64, i64,
        // i64, u32*)` with A = T::Acc; `src` reaches the whole walk (checked), the output walk
        // stays inside the contiguous `shape` outside `dim` and ids are range-checked on the
        // device.
        unsafe {
            gpu.launch(
                &INDEX,
                &format!("scatter_add_{}", T::TYPE),
                Launch::grid_stride(n),
                &mut [
                    arg(&walk),
                    arg(&sa),
                    arg(&ia),
                    arg(&aa),
                    arg(&n64),
                    arg(&inner),
                    arg(&k),
                    arg(&ds),
                    arg(&dn),
                    arg(&st),
                ],
            )?;
        }
    }
    if T::TYPE == <T::Acc as DeviceElem>::TYPE {
        return Ok(super::cast::same_type(acc));
    }
    let strides = contiguous_strides(shape);
    super::cast::cast::<T::Acc, T>(gpu, shape, Strided::new(&acc, 0, &strides))
}

/// The shape of `shape` with dim `dim` of size `k`.
fn with_dim(op: &'static str, shape: &[usize], dim: usize, k: usize) -> Result<Vec<usize>> {
    if dim >= shape.len() {
        bail!(op, "dim {dim} is out of range for shape {shape:?}");
    }
    let mut s = shape.to_vec();
    s[dim] = k;
    Ok(s)
}

/// torch.index_select: slices of `src` (over `shape`) along `dim` at the `n_ids` ids, a
/// contiguous `shape` with `n_ids` along `dim`. Any element type.
pub fn index_select<T: DeviceElem>(
    gpu: &Gpu,
    src: Strided<'_, T>,
    shape: &[usize],
    dim: usize,
    ids: Contig<'_, i64>,
    n_ids: usize,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "index_select";
    let out_shape = with_dim(OP, shape, dim, n_ids)?;
    gather_plan(gpu, OP, src, shape, ids, Plan::slices(&out_shape, dim))
}

/// torch.gather: element p of `index` (contiguous, `index_shape`) reads `src` (over `shape`) at p
/// with `dim` replaced by `index[p]`; contiguous over `index_shape`. Any element type.
pub fn gather<T: DeviceElem>(
    gpu: &Gpu,
    src: Strided<'_, T>,
    shape: &[usize],
    dim: usize,
    index: Contig<'_, i64>,
    index_shape: &[usize],
) -> Result<DeviceBuffer<T>> {
    gather_plan(
        gpu,
        "gather",
        src,
        shape,
        index,
        Plan::elements(index_shape, dim),
    )
}

/// torch.index_add (out of place): `base` (over `shape`) with slice j of `src` (over `shape`
/// with `n_ids` along `dim`) added at slice `ids[j]`; contiguous.
pub fn index_add<T: ScatterElem>(
    gpu: &Gpu,
    base: Strided<'_, T>,
    shape: &[usize],
    dim: usize,
    ids: Contig<'_, i64>,
    n_ids: usize,
    src: Strided<'_, T>,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "index_add";
    let src_shape = with_dim(OP, shape, dim, n_ids)?;
    let plan = Plan::slices(&src_shape, dim);
    scatter_plan(gpu, OP, base, shape, ids, src, plan)
}

/// torch.scatter_add (out of place): `base` (over `shape`) with `src[p]` added at p with `dim`
/// replaced by `index[p]`, for every p of `index` (contiguous, `index_shape`); `src` is read over
/// `index_shape` through its own strides. Contiguous.
pub fn scatter_add<T: ScatterElem>(
    gpu: &Gpu,
    base: Strided<'_, T>,
    shape: &[usize],
    dim: usize,
    index: Contig<'_, i64>,
    index_shape: &[usize],
    src: Strided<'_, T>,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "scatter_add";
    let plan = Plan::elements(index_shape, dim);
    scatter_plan(gpu, OP, base, shape, index, src, plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_pick_slice_and_element_ids() {
        // index_select of 2 ids along dim 1 of [3, 5, 4]: elements of one [1, 1, 4] slice share
        // an id, slices cycle through the ids.
        let shape = [3, 2, 4];
        let p = Plan::slices(&shape, 1);
        let id_of = |p: &Plan<'_>, s: usize| (s / p.inner) % p.k;
        assert_eq!((p.inner, p.k, p.len()), (4, 2, 24));
        assert_eq!(
            (0..24).map(|s| id_of(&p, s)).collect::<Vec<_>>(),
            [[0; 4], [1; 4]].concat().repeat(3)
        );
        let e = Plan::elements(&shape, 2);
        assert!((0..24).all(|s| id_of(&e, s) == s));
        // Walks must fit the indexed operand outside dim; dim may differ in size.
        assert!(p.check("t", &[3, 5, 4]).is_ok());
        assert!(p.check("t", &[3, 1, 4]).is_ok());
        assert!(p.check("t", &[2, 5, 4]).is_err());
        assert!(p.check("t", &[3, 5]).is_err());
        assert!(Plan::slices(&[2], 0).check("t", &[7]).is_ok());
        assert!(with_dim("t", &[2, 3], 2, 1).is_err());
        assert_eq!(without_dim(&[12, 4, 1], 1), vec![12, 0, 1]);
    }
}
