//! Attention in inference under bf16 autocast on the CPU, fused per (batch, head):
//!
//! ```text
//!   for each (b, h), one rayon task:                      shapes for BERT-base: Sq = Sk = 128, D = 64
//!     Qp  = pack_a(q[b, h])            [Sq, D]  bf16 rows      (read in place: any strides)
//!     Kp  = pack_b(k[b, h]^T)          [D, Sk]  VNNI pairs     (pair p = dims 2p, 2p+1 of a key)
//!     S   = Qp Kp                      [Sq, Sk] f32            (bf16 GEMM, f32 sums; 64 KB, in L2)
//!     S   = softmax(S * scale + mask)  in place, f32           (the rows of `softmax_last`)
//!     Pp  = pack_a(S)                  [Sq, Sk] bf16 rows
//!     Vp  = pack_b(v[b, h])            [Sk, D]  VNNI pairs     (pair p = keys 2p, 2p+1)
//!     out[b, :, h, :] = Pp Vp          [Sq, D]  f32, row stride H * D
//! ```
//!
//! The composed path (`matmul_bf16`, `softmax_last`, `matmul_bf16`) computes the same values in
//! the same order: the same GEMM micro-kernels over the same k blocks, the same row softmax, the
//! same rounding of the probabilities to bf16. So the result is the same bit for bit; what the
//! fusion saves is the [B, H, Sq, Sk] score and probability tensors going through memory (two
//! 6 MB round trips per BERT-base layer), the per-entry allocations of the batched products, and
//! the copy that moved the heads back next to each other: the output is written as
//! [B, Sq, H, D], what the attention output projection reads.
//!
//! q, k and v may be f32 or already bf16 (BERT's fused projection hands them over as bf16: the
//! rounding their packing applies anyway); the output has their type.
//!
//! Inference only: training keeps the composed ops, whose saved probabilities the backward reads.

use super::bf16_gemm::Strided;
use super::bf16_gemm::{filled, gemm_serial, Bf16Source, Epilogue, OutElem, PackedA, PackedB};
use super::softmax::{softmax_rows_in_place, RowMask};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A [B, H, S, D] operand read in place: element (b, h, s, d) at
/// `data[offset + b * strides[0] + h * strides[1] + s * strides[2] + d * strides[3]]`.
#[derive(Clone, Copy)]
pub struct Heads<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub strides: [usize; 4],
}

impl<'a, T> Heads<'a, T> {
    /// Head (b, h) as an [S, D] matrix.
    fn head(&self, b: usize, h: usize) -> Strided<'a, T> {
        Strided {
            data: self.data,
            offset: self.offset + b * self.strides[0] + h * self.strides[1],
            rs: self.strides[2],
            cs: self.strides[3],
        }
    }
}

/// The sizes: batch, heads, query and key lengths, q/k head dim, v head dim.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    pub dv: usize,
}

/// An output pointer shared by the (batch, head) tasks, which write disjoint elements.
#[derive(Clone, Copy)]
struct Out<T>(*mut T);
// SAFETY: task (b, h) writes only out[b, :, h, :] (see `attention_bf16`).
unsafe impl<T> Send for Out<T> {}
unsafe impl<T> Sync for Out<T> {}

impl<T> Out<T> {
    /// The pointer `count` elements on (a method, so closures capture the whole `Out`).
    ///
    /// # Safety
    /// The result stays inside the output.
    unsafe fn add(self, count: usize) -> *mut T {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(count) }
    }
}

/// softmax(q k^T * scale + mask) v for every (batch, head) (module doc), returned as
/// [B, Sq, H, Dv] in q, k and v's type. `mask` rows are indexed by (b, h, i) flattened, as
/// `softmax_last`'s over the [B, H, Sq, Sk] scores.
pub fn attention_bf16<T: Bf16Source + OutElem>(
    q: Heads<T>,
    k: Heads<T>,
    v: Heads<T>,
    dims: Dims,
    mask: Option<&RowMask<'_, f32>>,
    scale: f32,
) -> Vec<T> {
    let Dims {
        batch,
        heads,
        sq,
        sk,
        d,
        dv,
    } = dims;
    let all_heads = |out: &mut [MaybeUninit<T>]| {
        let dst = Out(out.as_mut_ptr().cast::<T>());
        (0..batch * heads).into_par_iter().for_each(|e| {
            let (b, h) = (e / heads, e % heads);
            let qp = PackedA::pack(q.head(b, h), sq, d);
            // k^T as a [D, Sk] matrix: the same element walk with the two strides swapped.
            let kt = Strided {
                rs: k.strides[3],
                cs: k.strides[2],
                ..k.head(b, h)
            };
            let kp = PackedB::pack(kt, d, sk);
            let mut s = vec![0f32; sq * sk];
            // SAFETY: `s` holds sq rows of sk; this task owns it.
            unsafe { gemm_serial(&qp, &kp, Epilogue::default(), s.as_mut_ptr(), sk) };
            softmax_rows_in_place(&mut s, sk.max(1), e * sq, mask, scale);
            let probs = Strided::rows(&s, sk);
            let pp = PackedA::pack(probs, sq, sk);
            let vp = PackedB::pack(v.head(b, h), sk, dv);
            // SAFETY: out[b, i, h, :] for i < sq starts at ((b * sq + i) * heads + h) * dv, rows
            // heads * dv apart, the last ending inside `out`; only this task writes head h of b.
            unsafe {
                let o = dst.add((b * sq * heads + h) * dv);
                gemm_serial(&pp, &vp, Epilogue::default(), o, heads * dv);
            }
        });
    };
    // SAFETY: task (b, h) writes out[b, i, h, :] for every i < sq: together, all of it.
    unsafe { filled(batch * sq * heads * dv, all_heads) }
}
