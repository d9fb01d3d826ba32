//! Batched matrix product on the CPU through the `gemm` crate. Operands are read in place through
//! their layouts (any strides: a transposed view costs no copy); the output is a fresh row-major
//! [batch..., m, n] buffer.
//!
//! Threading: a batch of small matrices (attention: 96 x 128x64x128) runs one single-threaded
//! gemm per batch entry across rayon tasks; a single large product (or a few) lets gemm split
//! each product over the rayon pool. A batch whose rhs is shared (x `[B,S,K]` @ w `[K,N]`, the
//! linear layer) and whose lhs rows are evenly strided is folded into one `[B*S,K] @ [K,N]`
//! product first.

use crate::{Layout, WithDType};
use half::f16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Element types the `gemm` crate multiplies natively.
pub trait GemmElem: WithDType {}
impl GemmElem for f32 {}
impl GemmElem for f64 {}
impl GemmElem for f16 {}

/// Multiply-adds per product below which a batch runs one product per rayon task (each
/// single-threaded) rather than threading inside each product.
const SMALL_PRODUCT: usize = 1 << 22;

/// One m x k by k x n operand pair, as (offset, row stride, column stride) into each buffer.
#[derive(Clone, Copy)]
struct Operand {
    offset: usize,
    rs: isize,
    cs: isize,
}

/// `lhs` [batch..., m, k] times `rhs` [batch..., k, n], where both layouts are already
/// broadcast to the same batch dims. Returns the row-major [batch..., m, n] product.
pub fn matmul<T: GemmElem>(lhs: &[T], lhs_l: &Layout, rhs: &[T], rhs_l: &Layout) -> Vec<T> {
    let r = lhs_l.rank();
    debug_assert!(r >= 2 && rhs_l.rank() == r);
    let (m, k, n) = (
        lhs_l.shape()[r - 2],
        lhs_l.shape()[r - 1],
        rhs_l.shape()[r - 1],
    );
    let batch_dims = &lhs_l.shape()[..r - 2];
    let batch: usize = batch_dims.iter().product();
    if batch * m * n == 0 || k == 0 {
        return vec![T::from_f64(0.0); batch * m * n];
    }
    // Not zero-filled first: gemm writes every destination element (read_dst = false, k > 0).
    let mut out: Box<[MaybeUninit<T>]> = Box::new_uninit_slice(batch * m * n);
    let threads = rayon::current_num_threads();
    let operand = |l: &Layout, offset| Operand {
        offset,
        rs: l.strides()[r - 2] as isize,
        cs: l.strides()[r - 1] as isize,
    };

    // The linear-layer case: fold the batch into the rows of one product.
    let rhs_shared = rhs_l.strides()[..r - 2].iter().all(|&s| s == 0) || batch == 1;
    if rhs_shared {
        if let Some(folded) = lhs_l.reshape(&[batch * m, k]) {
            let a = Operand {
                offset: folded.offset(),
                rs: folded.strides()[0] as isize,
                cs: folded.strides()[1] as isize,
            };
            let b = operand(rhs_l, rhs_l.offset());
            gemm_one(&mut out, batch * m, n, k, lhs, a, rhs, b, threads, false);
            // SAFETY: the one product wrote all of `out` (see `gemm_one`).
            return unsafe { out.assume_init() }.into_vec();
        }
    }

    let batch_offsets = |l: &Layout| {
        Layout::new(
            batch_dims.to_vec(),
            l.strides()[..r - 2].to_vec(),
            l.offset(),
        )
        .offsets()
    };
    let (lo, ro) = (batch_offsets(lhs_l), batch_offsets(rhs_l));
    let per_batch = |i: usize, dst: &mut [MaybeUninit<T>], threads: usize| {
        let (a, b) = (operand(lhs_l, lo[i]), operand(rhs_l, ro[i]));
        gemm_one(dst, m, n, k, lhs, a, rhs, b, threads, false);
    };
    let small = m.saturating_mul(n).saturating_mul(k) <= SMALL_PRODUCT;
    if batch > 1 && (batch >= 2 * threads || (small && batch >= threads)) {
        out.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, dst)| per_batch(i, dst, 1));
    } else {
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            per_batch(i, dst, threads);
        }
    }
    // SAFETY: the chunks cover `out` and each was written by its product (see `gemm_one`).
    unsafe { out.assume_init() }.into_vec()
}

/// `bias[j] + sum_l lhs[i, l] rhs[l, j]` for 2-D operands: the destination is first filled with
/// the bias rows, then the product is accumulated into it by gemm (read_dst = true), so the bias
/// costs one write pass instead of a separate read-add-write over the output.
pub fn matmul_bias<T: GemmElem>(
    lhs: &[T],
    lhs_l: &Layout,
    rhs: &[T],
    rhs_l: &Layout,
    bias: &[T],
) -> Vec<T> {
    let (m, k, n) = (lhs_l.shape()[0], lhs_l.shape()[1], rhs_l.shape()[1]);
    debug_assert_eq!(bias.len(), n);
    let mut out: Vec<T> = Vec::with_capacity(m * n);
    for _ in 0..m {
        out.extend_from_slice(bias);
    }
    if m * n == 0 || k == 0 {
        return out;
    }
    let operand = |l: &Layout| Operand {
        offset: l.offset(),
        rs: l.strides()[0] as isize,
        cs: l.strides()[1] as isize,
    };
    // SAFETY: `MaybeUninit<T>` has T's layout, and every element is initialised (the bias rows).
    let dst = unsafe { &mut *(out.as_mut_slice() as *mut [T] as *mut [MaybeUninit<T>]) };
    let threads = rayon::current_num_threads();
    gemm_one(
        dst,
        m,
        n,
        k,
        lhs,
        operand(lhs_l),
        rhs,
        operand(rhs_l),
        threads,
        true,
    );
    out
}

/// dst (row-major m x n) = a (m x k) · b (k x n), plus dst's old value when `accumulate`,
/// with gemm using up to `threads` threads. Without `accumulate`, writes every element of
/// `dst[..m * n]` and never reads it; with it, `dst` must be initialised.
#[allow(clippy::too_many_arguments)]
fn gemm_one<T: GemmElem>(
    dst: &mut [MaybeUninit<T>],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[T],
    a: Operand,
    rhs: &[T],
    b: Operand,
    threads: usize,
    accumulate: bool,
) {
    assert!(dst.len() >= m * n && m > 0 && n > 0 && k > 0);
    // Every element the operands address must lie inside their buffers.
    let last = |o: Operand, rows: usize, cols: usize| {
        o.offset + (rows - 1) * o.rs as usize + (cols - 1) * o.cs as usize
    };
    assert!(last(a, m, k) < lhs.len() && last(b, k, n) < rhs.len());
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `dst` holds m*n elements, written at row stride n and read only when
    // `accumulate` (then the caller initialised them); the asserts above show that every
    // element of both operands (offset + i*rs + j*cs, strides non-negative) is inside its buffer;
    // T is f32, f64 or f16 (`GemmElem`), the types gemm supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr() as *mut T,
            1,
            n as isize,
            accumulate,
            lhs.as_ptr().add(a.offset),
            a.cs,
            a.rs,
            rhs.as_ptr().add(b.offset),
            b.cs,
            b.rs,
            T::from_f64(if accumulate { 1.0 } else { 0.0 }),
            T::from_f64(1.0),
            false,
            false,
            false,
            parallelism,
        );
    }
}
