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
//! The slice ops take a faster form when their strided operand is contiguous (`index_select`'s
//! source, `index_add`'s added source; the other side is always a contiguous buffer): the
//! `_rows` kernels walk the `[outer, k, inner]` shape as rows of `inner` elements, one id per
//! row, in 16-byte packs where the pointers and the row length allow, with no division per
//! element. Any other layout takes the strided walk.
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
    v.extend([8, 16, 32, 64].iter().map(|b| format!("gather_rows_w{b}")));
    v.extend(SCATTER_TYPES.iter().map(|t| format!("scatter_add_{t}")));
    v.extend(
        SCATTER_TYPES
            .iter()
            .map(|t| format!("scatter_add_rows_{t}")),
    );
    v.into_iter().map(|n| (&INDEX, n)).collect()
}

/// How the kernels walk: `walk_shape` (the gathered output / the scattered source), the indexed
/// `dim`, and the id of element s, `ids[(s / inner) % k]`.
struct Plan<'a> {
    walk_shape: &'a [usize],
    dim: usize,
    inner: usize,
    k: usize,
    /// Slices (one id per `inner` elements), which may take the `_rows` kernels.
    slices: bool,
}

impl<'a> Plan<'a> {
    /// Slices: element s of `walk_shape` (size `k` along `dim`) uses the id of its slice.
    fn slices(walk_shape: &'a [usize], dim: usize) -> Plan<'a> {
        Plan {
            walk_shape,
            dim,
            inner: walk_shape[dim + 1..].iter().product(),
            k: walk_shape[dim],
            slices: true,
        }
    }

    /// Elements: element s of `walk_shape` uses id s.
    fn elements(walk_shape: &'a [usize], dim: usize) -> Plan<'a> {
        Plan {
            walk_shape,
            dim,
            inner: 1,
            k: walk_shape.iter().product(),
            slices: false,
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

    /// The `_rows` form of a slice plan (`index_select`, `index_add`: the walk and the indexed
    /// operand agree outside `dim`) whose strided operand is `contiguous`: its launch and scalar
    /// arguments (rows, inner, k, dim_size) and `packs`, set when both pointers (`addrs`) are
    /// 16-byte aligned and so is every row of `elem_bytes`-byte elements. None otherwise.
    fn rows(
        &self,
        op: &'static str,
        contiguous: bool,
        dim_size: usize,
        addrs: [u64; 2],
        elem_bytes: usize,
    ) -> Result<Option<RowsForm>> {
        if !self.slices || !contiguous || self.inner == 0 {
            return Ok(None);
        }
        let rows = self.len() / self.inner;
        let row_bytes = self.inner * elem_bytes;
        let packs = row_bytes.is_multiple_of(16) && addrs.iter().all(|a| a.is_multiple_of(16));
        let units = if packs { row_bytes / 16 } else { self.inner };
        let scalars = [
            len_i64(op, rows)?,
            len_i64(op, self.inner)?,
            len_i64(op, self.k)?,
            len_i64(op, dim_size)?,
        ];
        Ok(Some(RowsForm {
            launch: Launch::rows(rows, units),
            scalars,
            packs: packs as i32,
        }))
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

/// A slice plan in the `_rows` kernels' form ([`Plan::rows`]).
struct RowsForm {
    launch: Launch,
    /// rows, inner, k, dim_size.
    scalars: [i64; 4],
    packs: i32,
}

impl RowsForm {
    /// Launches `kernel`, an index.cu `_rows` entry `(const S* src, const i64* ids, D* dst, i64
    /// rows, i64 inner, i64 k, i64 dim_size, int packs, u32* status)`, with the addresses
    /// `[src, ids, dst, status]`.
    ///
    /// # Safety
    /// `kernel` must have that signature; the walked operand must be a contiguous
    /// `[outer, k, inner]` and the indexed one a contiguous `[outer, dim_size, inner]` (ids are
    /// range-checked on the device).
    unsafe fn launch(&self, gpu: &Gpu, kernel: &str, addrs: [u64; 4]) -> Result<()> {
        let [sa, ia, da, st] = addrs;
        let [rows, inner, k, dn] = self.scalars;
        // SAFETY: the caller's contract.
        unsafe {
            gpu.launch(
                &INDEX,
                kernel,
                self.launch,
                &mut [
                    arg(&sa),
                    arg(&ia),
                    arg(&da),
                    arg(&rows),
                    arg(&inner),
                    arg(&k),
                    arg(&dn),
                    arg(&self.packs),
                    arg(&st),
                ],
            )
        }
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
    let (oa, st) = (out.device_address(), gpu.status_address_for(op));
    let bits = T::TYPE.size_in_bytes() * 8;
    // (A layout the walk cannot merge is not contiguous.)
    let contiguous = Walk::new(op, shape, &[src.strides]).is_ok_and(|(_, c)| c);
    let eb = T::TYPE.size_in_bytes();
    if let Some(form) = plan.rows(op, contiguous, shape[plan.dim], [sa, oa], eb)? {
        // SAFETY: `gather_rows_w<bits>` has the `_rows` signature with W of T's width; `src` is
        // a contiguous [outer, dim_size, inner] (its extent checked above), `out` a fresh
        // [outer, k, inner].
        unsafe { form.launch(gpu, &format!("gather_rows_w{bits}"), [sa, ia, oa, st])? };
        return Ok(out);
    }
    let strides = without_dim(src.strides, plan.dim);
    let (walk, _) = Walk::new(op, plan.walk_shape, &[&strides])?;
    let [n64, inner, k, ds, dn] = plan.scalars(op, src.strides[plan.dim], shape[plan.dim])?;
    // SAFETY: matches `gather_w<bits>(Walk, const W*, const i64*, W*, i64, i64, i64, i64, i64,
    // u32*)` with W of T's width; `src` reaches every element of `shape`, the walk stays inside
    // it outside `dim` (checked) and ids are range-checked on the device.
    unsafe {
        gpu.launch(
            &INDEX,
            &format!("gather_w{bits}"),
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
    let (aa, st) = (acc.device_address(), gpu.status_address_for(op));
    let contiguous = Walk::new(op, plan.walk_shape, &[src.strides]).is_ok_and(|(_, c)| c);
    let eb = T::TYPE.size_in_bytes();
    let rows = match n {
        0 => None,
        _ => plan.rows(op, contiguous, shape[plan.dim], [sa, aa], eb)?,
    };
    if let Some(form) = rows {
        // SAFETY: `scatter_add_rows_<t>` has the `_rows` signature with S = T, D = T::Acc;
        // `src` is a contiguous [outer, k, inner] (its extent checked above), `acc` a
        // contiguous [outer, dim_size, inner].
        let kernel = format!("scatter_add_rows_{}", T::TYPE);
        unsafe { form.launch(gpu, &kernel, [sa, ia, aa, st])? };
    } else if n > 0 {
        let out_strides = without_dim(&contiguous_strides(shape), plan.dim);
        let (walk, _) = Walk::new(op, plan.walk_shape, &[src.strides, &out_strides])?;
        let dim_stride = shape[plan.dim + 1..].iter().product();
        let [n64, inner, k, ds, dn] = plan.scalars(op, dim_stride, shape[plan.dim])?;
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
