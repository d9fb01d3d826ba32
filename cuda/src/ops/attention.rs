//! Multi-head attention through the fused masked-softmax path: scores = Q·Kᵀ (cuBLAS,
//! strided-batched over heads), P = softmax(scores · scale + mask) in one kernel (softmax.cu,
//! the mask read in place), out = P·V; and the backward pass from the saved P. No operand is
//! copied: Q, K, V and dO may be any `[B, H, S, D]` views with a unit stride on D, in particular
//! the `[B, S, H, D]` projections seen with heads moved forward.
//!
//! Layout: outputs are contiguous, `out` `[B, H, Sq, D]`, `probs` `[B, H, Sq, Sk]`, gradients
//! `[B, H, S, D]`. GEMMs run as one strided-batched call over all B·H matrices when every
//! operand's batch stride is heads × head stride, else one call per batch entry.

use super::softmax::{softmax, softmax_backward};
use super::FloatElem;
use crate::blas::{gemm, GemmElem, Mat, MatMut, MathMode};
use crate::buffer::DeviceBuffer;
use crate::error::bail;
use crate::gpu::Gpu;
use crate::strided::{Contig, Strided};
use crate::Result;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub head_dim: usize,
}

/// A `[B, H, S, D]` operand: element (b, h, s, d) at `offset + b*strides[0] + h*strides[1] +
/// s*strides[2] + d*strides[3]`, with `strides[3] == 1`.
#[derive(Clone, Copy, Debug)]
pub struct Heads<'a, T: FloatElem> {
    pub buf: &'a DeviceBuffer<T>,
    pub offset: usize,
    pub strides: [usize; 4],
}

impl<'a, T: FloatElem> Heads<'a, T> {
    /// A contiguous `[B, H, S, D]` buffer.
    pub fn contiguous(buf: &'a DeviceBuffer<T>, dims: [usize; 4]) -> Self {
        let [_, h, s, d] = dims;
        Heads {
            buf,
            offset: 0,
            strides: [h * s * d, s * d, d, 1],
        }
    }
}

/// The forward's outputs.
pub struct AttentionOut<T: FloatElem> {
    /// `[B, H, Sq, D]`.
    pub out: DeviceBuffer<T>,
    /// softmax(Q·Kᵀ · scale + mask), `[B, H, Sq, Sk]`, saved for the backward.
    pub probs: DeviceBuffer<T>,
}

/// The backward's outputs, contiguous `[B, H, S, D]`.
pub struct AttentionGrads<T: FloatElem> {
    pub dq: DeviceBuffer<T>,
    pub dk: DeviceBuffer<T>,
    pub dv: DeviceBuffer<T>,
}

/// A batch of matrices: matrix (b, h) is `rows x cols` at `offset + b*sb + h*sh` with row and
/// column strides `rs`, `cs`.
#[derive(Clone, Copy)]
struct Batched<'a, T: FloatElem> {
    buf: &'a DeviceBuffer<T>,
    offset: usize,
    sb: usize,
    sh: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T: FloatElem> Batched<'a, T> {
    /// The `S x D` matrices of a heads operand with `s` rows.
    fn of(h: &Heads<'a, T>, s: usize, d: usize) -> Self {
        Batched {
            buf: h.buf,
            offset: h.offset,
            sb: h.strides[0],
            sh: h.strides[1],
            rows: s,
            cols: d,
            rs: h.strides[2],
            cs: h.strides[3],
        }
    }

    /// Contiguous `[B, H, rows, cols]` matrices.
    fn contiguous(buf: &'a DeviceBuffer<T>, heads: usize, rows: usize, cols: usize) -> Self {
        Batched {
            buf,
            offset: 0,
            sb: heads * rows * cols,
            sh: rows * cols,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    fn t(self) -> Self {
        Batched {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn mat(&self, b: usize) -> Mat<'a, T> {
        Mat {
            buf: self.buf,
            offset: self.offset + b * self.sb,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.rs,
            col_stride: self.cs,
            batch_stride: self.sh,
        }
    }
}

/// C(b, h) = A(b, h) · B(b, h) into a fresh contiguous `[batch, heads, a.rows, b.cols]`.
fn batched_gemm<T: FloatElem + GemmElem>(
    gpu: &Gpu,
    batch: usize,
    heads: usize,
    a: Batched<'_, T>,
    b: Batched<'_, T>,
    math: MathMode,
) -> Result<DeviceBuffer<T>> {
    let (m, n) = (a.rows, b.cols);
    let mut c = gpu.alloc::<T>(batch * heads * m * n)?;
    let uniform = |sb: usize, sh: usize| batch <= 1 || sb == heads * sh;
    let (batches, per_call) = if uniform(a.sb, a.sh) && uniform(b.sb, b.sh) {
        (1, batch * heads)
    } else {
        (batch, heads)
    };
    for i in 0..batches {
        let out = MatMut {
            buf: &mut c,
            offset: i * heads * m * n,
            rows: m,
            cols: n,
            row_stride: n,
            batch_stride: m * n,
        };
        gemm(gpu, a.mat(i), b.mat(i), out, per_call, 1.0, 0.0, math)?;
    }
    Ok(c)
}

fn check<T: FloatElem>(op: &'static str, what: &str, h: &Heads<'_, T>) -> Result<()> {
    if h.strides[3] != 1 {
        bail!(
            op,
            "{what} must have a unit stride along the head dim, got strides {:?}",
            h.strides
        );
    }
    Ok(())
}

/// softmax(Q·Kᵀ · scale + mask)·V per batch entry and head. `mask` (Q's dtype, additive, -inf
/// masks out) is any layout broadcast to `[B, H, Sq, Sk]` with a last-dim stride of 0 or 1.
#[allow(clippy::too_many_arguments)]
pub fn attention<T: FloatElem + GemmElem>(
    gpu: &Gpu,
    dims: AttentionDims,
    q: Heads<'_, T>,
    k: Heads<'_, T>,
    v: Heads<'_, T>,
    mask: Option<Strided<'_, T>>,
    scale: f32,
    math: MathMode,
) -> Result<AttentionOut<T>> {
    const OP: &str = "attention";
    for (what, h) in [("Q", &q), ("K", &k), ("V", &v)] {
        check(OP, what, h)?;
    }
    let AttentionDims {
        batch,
        heads,
        q_len,
        k_len,
        head_dim,
    } = dims;
    let scores = batched_gemm(
        gpu,
        batch,
        heads,
        Batched::of(&q, q_len, head_dim),
        Batched::of(&k, k_len, head_dim).t(),
        math,
    )?;
    let shape = [batch, heads, q_len, k_len];
    let probs = softmax(gpu, Contig::new(&scores, 0), &shape, mask, scale, false)?;
    drop(scores);
    let out = batched_gemm(
        gpu,
        batch,
        heads,
        Batched::contiguous(&probs, heads, q_len, k_len),
        Batched::of(&v, k_len, head_dim),
        math,
    )?;
    Ok(AttentionOut { out, probs })
}

/// Gradients of `attention` w.r.t. Q, K and V from the forward inputs, the saved `probs` and the
/// output gradient `d_out` (`[B, H, Sq, D]`, any view with a unit head-dim stride).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: FloatElem + GemmElem>(
    gpu: &Gpu,
    dims: AttentionDims,
    q: Heads<'_, T>,
    k: Heads<'_, T>,
    v: Heads<'_, T>,
    probs: &DeviceBuffer<T>,
    d_out: Heads<'_, T>,
    scale: f32,
    math: MathMode,
) -> Result<AttentionGrads<T>> {
    const OP: &str = "attention_backward";
    for (what, h) in [("Q", &q), ("K", &k), ("V", &v), ("dO", &d_out)] {
        check(OP, what, h)?;
    }
    let AttentionDims {
        batch,
        heads,
        q_len,
        k_len,
        head_dim,
    } = dims;
    let p = Batched::contiguous(probs, heads, q_len, k_len);
    let dout = Batched::of(&d_out, q_len, head_dim);
    // dP = dO · Vᵀ, then dS = softmax'(P, dP) (with the scale).
    let dp = batched_gemm(
        gpu,
        batch,
        heads,
        dout,
        Batched::of(&v, k_len, head_dim).t(),
        math,
    )?;
    let shape = [batch, heads, q_len, k_len];
    let ds = softmax_backward(
        gpu,
        Contig::new(probs, 0),
        Contig::new(&dp, 0),
        &shape,
        scale,
        false,
    )?;
    drop(dp);
    let ds_m = Batched::contiguous(&ds, heads, q_len, k_len);
    Ok(AttentionGrads {
        dq: batched_gemm(
            gpu,
            batch,
            heads,
            ds_m,
            Batched::of(&k, k_len, head_dim),
            math,
        )?,
        dk: batched_gemm(
            gpu,
            batch,
            heads,
            ds_m.t(),
            Batched::of(&q, q_len, head_dim),
            math,
        )?,
        dv: batched_gemm(gpu, batch, heads, p.t(), dout, math)?,
    })
}
