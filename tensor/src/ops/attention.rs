//! Flash attention as one op: out = dropout(softmax(q kᵀ · scale + mask)) v for q `[B, H, Sq, D]`,
//! k and v `[B, H, Sk, D]` (any views) and an additive mask (q's dtype) broadcast to
//! `[B, H, Sq, Sk]`, returning also the per-row log-sum-exp `lse` `[B, H, Sq]` of the logits
//! z = q kᵀ · scale + mask, from which the backward recomputes the probabilities:
//!
//!   P_ij = exp(z_ij - lse_i), Pd_ij = keep_ij P_ij / (1 - p), out_i = Σ_j Pd_ij v_j,
//!   delta_i = Σ_d dO_id out_id, dP_ij = keep_ij (dO_i · v_j) / (1 - p),
//!   dS_ij = P_ij (dP_ij - delta_i), dq = scale dS k, dk = scale dSᵀ q, dv = Pdᵀ dO.
//!
//! A row whose logits are all -inf gets out = 0 and lse = +inf (every recomputed P is then 0),
//! as softmax gives zeros there. Dropout keeps (b, h, i, j) iff uniform element
//! ((b·H + h)·Sq + i)·Sk + j of its draw is >= p (in f32): the keep mask `Tensor::dropout` draws
//! for the contiguous probs tensor; [`AttentionDropout::draw`] reserves the generator exactly as
//! that dropout does, so the fused and the composed attention consume the same stream.
//!
//! On CUDA this runs the flash kernels (`cuda/kernels/flash_attention.cu`) within their limits
//! ([`Tensor::flash_attention_fits`]); lse is f32 there. On the CPU it is a direct evaluation of
//! the formulas above in f64 (lse in f64 for f64 inputs, f32 otherwise): the reference the
//! kernels are tested against and what gradient checks run on. Training on the CPU composes the
//! separate ops instead (autograd's `scaled_dot_product_attention`), bit for bit as before.

use super::softmax::{check_dtype, check_float};
use crate::rng::Rng;
use crate::{DType, Error, Result, Tensor};

/// Dropout on the attention probabilities: drop probability `p` and the draw (seed, first
/// counter block) of the `[B, H, Sq, Sk]` uniform elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionDropout {
    pub p: f64,
    pub seed: u64,
    pub offset: u64,
}

impl AttentionDropout {
    /// Checks `p` and reserves from `rng` the draw of a probs tensor of `n` elements, exactly as
    /// `Tensor::dropout` of that tensor would (4 uniform elements per Philox block).
    pub fn draw(p: f64, n: usize, rng: &mut Rng) -> Result<AttentionDropout> {
        super::dropout::check_p("attention dropout", p)?;
        let seed = rng.seed;
        Ok(AttentionDropout {
            p,
            seed,
            offset: rng.reserve(n, 4),
        })
    }

    /// Per-element factors of the draw over `n` probabilities: 1 / (1 - p) (rounded as
    /// `Tensor::dropout` scales `dtype`) where kept, 0 where dropped.
    fn factors(&self, n: usize, dtype: DType) -> Vec<f64> {
        let keep = crate::rng::uniform_mask(self.seed, self.offset, n, self.p as f32, 0);
        let scale = if self.p < 1.0 {
            1.0 / (1.0 - self.p)
        } else {
            0.0
        };
        let scale = if dtype == DType::F64 {
            scale
        } else {
            scale as f32 as f64
        };
        keep.into_iter()
            .map(|k| if k != 0 { scale } else { 0.0 })
            .collect()
    }
}

/// (B, H, Sq, Sk, D) of an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Errors (naming `op`) unless q `[B, H, Sq, D]`, k and v `[B, H, Sk, D]` share one float
    /// dtype and the mask (q's dtype) broadcasts to `[B, H, Sq, Sk]`.
    pub fn of(
        op: &'static str,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<AttentionShape> {
        check_float(op, q)?;
        let &[batch, heads, q_len, head_dim] = q.shape() else {
            crate::bail!(
                op,
                "q must be [batch, heads, seq, head_dim], got {:?}",
                q.shape()
            );
        };
        let k_len = if k.rank() == 4 { k.shape()[2] } else { 0 };
        for t in [k, v] {
            check_dtype(op, q.dtype(), t)?;
            if t.shape() != [batch, heads, k_len, head_dim] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: q.shape().to_vec(),
                    rhs: t.shape().to_vec(),
                });
            }
        }
        let s = AttentionShape {
            batch,
            heads,
            q_len,
            k_len,
            head_dim,
        };
        if let Some(m) = mask {
            check_dtype(op, q.dtype(), m)?;
            m.layout().broadcast_to(op, &s.scores())?;
        }
        Ok(s)
    }

    /// `[B, H, Sq, Sk]`, the probabilities' shape.
    pub fn scores(&self) -> [usize; 4] {
        [self.batch, self.heads, self.q_len, self.k_len]
    }

    /// `[B, H, Sq, D]`, the output's shape.
    pub fn out(&self) -> [usize; 4] {
        [self.batch, self.heads, self.q_len, self.head_dim]
    }

    /// FLOPs of the forward's two products (see `profiler::flops`).
    pub fn flops_forward(&self) -> u64 {
        let s = self;
        crate::profiler::flops::attention_forward(s.batch, s.heads, s.q_len, s.k_len, s.head_dim)
    }

    /// FLOPs of the backward's five products.
    pub fn flops_backward(&self) -> u64 {
        let s = self;
        crate::profiler::flops::attention_backward(s.batch, s.heads, s.q_len, s.k_len, s.head_dim)
    }
}

impl Tensor {
    /// Whether [`Tensor::flash_attention`] runs fused kernels for these operands: all on one
    /// CUDA device, f32/f16/bf16, rank 4 with k `[.., Sk, D]`, head dim 1..=128 and Sk <= 512.
    /// Always false without the `cuda` feature.
    pub fn flash_attention_fits(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
        #[cfg(feature = "cuda")]
        {
            crate::cuda::attention::fits(q, k, v)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (q, k, v);
            false
        }
    }

    /// (out `[B, H, Sq, D]` of q's dtype, lse `[B, H, Sq]`): see the module doc.
    pub fn flash_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
        dropout: Option<AttentionDropout>,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "flash_attention";
        let s = AttentionShape::of(OP, q, k, v, mask)?;
        let _p = crate::profiler::scope(OP)
            .io(&[q, k, v], &s.out())
            .flops(s.flops_forward());
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[q, k, v]) || mask.is_some_and(|m| m.device() != q.device()) {
            return crate::cuda::attention::flash_attention(OP, s, q, k, v, mask, scale, dropout);
        }
        reference::forward(s, q, k, v, mask, scale, dropout)
    }

    /// (dq, dk, dv), contiguous, from the forward's inputs, its `out` and `lse`, and the output
    /// gradient `d_out` `[B, H, Sq, D]`.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        out: &Tensor,
        lse: &Tensor,
        d_out: &Tensor,
        scale: f64,
        dropout: Option<AttentionDropout>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "flash_attention_backward";
        let s = AttentionShape::of(OP, q, k, v, mask)?;
        for (t, shape) in [
            (out, &s.out()[..]),
            (d_out, &s.out()[..]),
            (lse, &s.out()[..3]),
        ] {
            if t.shape() != shape {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: shape.to_vec(),
                    rhs: t.shape().to_vec(),
                });
            }
        }
        check_dtype(OP, q.dtype(), out)?;
        check_dtype(OP, q.dtype(), d_out)?;
        check_dtype(
            OP,
            lse_dtype(q.dtype(), q.device() == crate::Device::Cpu),
            lse,
        )?;
        let _p = crate::profiler::scope(OP)
            .io(
                &[q, k, v, out, d_out],
                &[3 * s.out().iter().product::<usize>()],
            )
            .flops(s.flops_backward());
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[q, k, v, out, lse, d_out])
            || mask.is_some_and(|m| m.device() != q.device())
        {
            let saved = [out, lse, d_out];
            return crate::cuda::attention::flash_attention_backward(
                OP, s, q, k, v, mask, saved, scale, dropout,
            );
        }
        reference::backward(s, [q, k, v], mask, [out, lse, d_out], scale, dropout)
    }
}

/// The dtype of lse: f64 for f64 inputs on the CPU, f32 otherwise.
fn lse_dtype(dtype: DType, on_cpu: bool) -> DType {
    if dtype == DType::F64 && on_cpu {
        DType::F64
    } else {
        DType::F32
    }
}

/// The CPU evaluation, in f64 over row-major copies of the operands.
mod reference {
    use super::{lse_dtype, AttentionDropout, AttentionShape};
    use crate::{Result, Tensor};

    /// The operands as f64 row-major vectors; the mask broadcast to `[B, H, Sq, Sk]`.
    struct Operands {
        q: Vec<f64>,
        k: Vec<f64>,
        v: Vec<f64>,
        mask: Option<Vec<f64>>,
        keep: Option<Vec<f64>>,
    }

    fn operands(
        s: &AttentionShape,
        [q, k, v]: [&Tensor; 3],
        mask: Option<&Tensor>,
        dropout: Option<AttentionDropout>,
    ) -> Result<Operands> {
        let n = s.scores().iter().product();
        Ok(Operands {
            q: q.to_vec_f64()?,
            k: k.to_vec_f64()?,
            v: v.to_vec_f64()?,
            mask: mask
                .map(|m| m.broadcast_to(&s.scores())?.to_vec_f64())
                .transpose()?,
            keep: dropout.map(|d| d.factors(n, q.dtype())),
        })
    }

    impl Operands {
        /// z_ij for row `row` (= (b·H + h)·Sq + i) of head `bh`, all j.
        fn logits(&self, s: &AttentionShape, bh: usize, row: usize, scale: f64) -> Vec<f64> {
            let d = s.head_dim;
            let qi = &self.q[row * d..(row + 1) * d];
            (0..s.k_len)
                .map(|j| {
                    let kj = &self.k[(bh * s.k_len + j) * d..][..d];
                    let dot: f64 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                    let m = self.mask.as_ref().map_or(0.0, |m| m[row * s.k_len + j]);
                    dot * scale + m
                })
                .collect()
        }

        fn keep(&self, s: &AttentionShape, row: usize, j: usize) -> f64 {
            self.keep.as_ref().map_or(1.0, |k| k[row * s.k_len + j])
        }
    }

    pub(super) fn forward(
        s: AttentionShape,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
        dropout: Option<AttentionDropout>,
    ) -> Result<(Tensor, Tensor)> {
        let x = operands(&s, [q, k, v], mask, dropout)?;
        let d = s.head_dim;
        let rows = s.batch * s.heads * s.q_len;
        let (mut out, mut lse) = (vec![0.0; rows * d], vec![f64::INFINITY; rows]);
        for row in 0..rows {
            let bh = row / s.q_len.max(1);
            let z = x.logits(&s, bh, row, scale);
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            lse[row] = m + z.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            for (j, zj) in z.iter().enumerate() {
                let p = (zj - lse[row]).exp() * x.keep(&s, row, j);
                let vj = &x.v[(bh * s.k_len + j) * d..][..d];
                for (o, vv) in out[row * d..(row + 1) * d].iter_mut().zip(vj) {
                    *o += p * vv;
                }
            }
        }
        let lse_dtype = lse_dtype(q.dtype(), true);
        Ok((
            Tensor::from_vec(out, &s.out())?.to_dtype(q.dtype())?,
            Tensor::from_vec(lse, &s.out()[..3])?.to_dtype(lse_dtype)?,
        ))
    }

    pub(super) fn backward(
        s: AttentionShape,
        qkv: [&Tensor; 3],
        mask: Option<&Tensor>,
        [out, lse, d_out]: [&Tensor; 3],
        scale: f64,
        dropout: Option<AttentionDropout>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let x = operands(&s, qkv, mask, dropout)?;
        let (o, lse, g) = (out.to_vec_f64()?, lse.to_vec_f64()?, d_out.to_vec_f64()?);
        let d = s.head_dim;
        let rows = s.batch * s.heads * s.q_len;
        let mut dq = vec![0.0; rows * d];
        let mut dk = vec![0.0; s.batch * s.heads * s.k_len * d];
        let mut dv = dk.clone();
        for row in 0..rows {
            let bh = row / s.q_len.max(1);
            let gi = &g[row * d..(row + 1) * d];
            let delta: f64 = gi.iter().zip(&o[row * d..]).map(|(a, b)| a * b).sum();
            let z = x.logits(&s, bh, row, scale);
            for (j, zj) in z.iter().enumerate() {
                let p = (zj - lse[row]).exp();
                if p == 0.0 {
                    continue;
                }
                let keep = x.keep(&s, row, j);
                let krow = (bh * s.k_len + j) * d;
                let vj = &x.v[krow..krow + d];
                let dp = gi.iter().zip(vj).map(|(a, b)| a * b).sum::<f64>() * keep;
                let ds = p * (dp - delta);
                for c in 0..d {
                    dq[row * d + c] += scale * ds * x.k[krow + c];
                    dk[krow + c] += scale * ds * x.q[row * d + c];
                    dv[krow + c] += p * keep * gi[c];
                }
            }
        }
        let dtype = qkv[0].dtype();
        let kv_shape = [s.batch, s.heads, s.k_len, d];
        Ok((
            Tensor::from_vec(dq, &s.out())?.to_dtype(dtype)?,
            Tensor::from_vec(dk, &kv_shape)?.to_dtype(dtype)?,
            Tensor::from_vec(dv, &kv_shape)?.to_dtype(dtype)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::randn;
    use crate::Device;

    #[test]
    fn the_draw_consumes_the_generator_as_dropout_of_the_probs_does() {
        let probs = randn(&[2, 3, 5, 7], 1.0, DType::F32, 1);
        let n = probs.elem_count();
        for p in [0.1, 0.5, 1.0] {
            let start = Rng { seed: 4, offset: 9 };
            let (mut a, mut b) = (start, start);
            let drop = AttentionDropout::draw(p, n, &mut a).unwrap();
            let (_, keep) = probs.dropout(p, &mut b).unwrap();
            assert_eq!(a, b, "p {p}");
            assert_eq!((drop.seed, drop.offset), (start.seed, start.offset));
            let factors = drop.factors(n, DType::F32);
            let scale = if p < 1.0 {
                (1.0 / (1.0 - p)) as f32
            } else {
                0.0
            };
            for (f, k) in factors.iter().zip(keep.to_vec::<u8>().unwrap()) {
                assert_eq!(*f, if k == 1 { scale as f64 } else { 0.0 });
            }
        }
        let mut r = Rng::new(3);
        let e = AttentionDropout::draw(1.5, n, &mut r)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("attention dropout:"), "{e}");
        assert_eq!(r, Rng::new(3), "a refused draw reserves nothing");
    }

    #[test]
    fn arguments_are_checked_with_the_op_named() {
        let t = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, Device::Cpu).unwrap();
        let q = t(&[2, 3, 4, 8], DType::F32);
        let k = t(&[2, 3, 6, 8], DType::F32);
        let ok = AttentionShape::of("op", &q, &k, &k, None).unwrap();
        assert_eq!(ok.scores(), [2, 3, 4, 6]);
        assert_eq!(ok.out(), [2, 3, 4, 8]);
        let cases = [
            (t(&[3, 4, 8], DType::F32), k.clone(), None),
            (q.clone(), t(&[2, 3, 6, 9], DType::F32), None),
            (q.clone(), t(&[2, 3, 6, 8], DType::F64), None),
            (q.clone(), k.clone(), Some(t(&[2, 1, 1, 5], DType::F32))),
            (q.clone(), k.clone(), Some(t(&[2, 1, 1, 6], DType::F16))),
        ];
        for (q, k, m) in cases {
            let e = Tensor::flash_attention(&q, &k, &k, m.as_ref(), 1.0, None)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("flash_attention:"), "{e}");
        }
        let (out, lse) = Tensor::flash_attention(&q, &k, &k, None, 1.0, None).unwrap();
        let e = Tensor::flash_attention_backward(&q, &k, &k, None, &out, &lse, &k, 1.0, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("flash_attention_backward:"), "{e}");
        let lse64 = lse.to_dtype(DType::F64).unwrap();
        let e = Tensor::flash_attention_backward(&q, &k, &k, None, &out, &lse64, &out, 1.0, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("flash_attention_backward:"), "{e}");
        assert!(!Tensor::flash_attention_fits(&q, &k, &k), "CPU tensors");
    }

    #[test]
    fn empty_sizes_give_empty_or_zero_results() {
        let t = |shape: &[usize]| randn(shape, 1.0, DType::F32, 2);
        // No keys: zero output, zero dq, empty dk/dv.
        let (q, k) = (t(&[1, 2, 3, 4]), t(&[1, 2, 0, 4]));
        let (out, lse) = Tensor::flash_attention(&q, &k, &k, None, 1.0, None).unwrap();
        assert!(out.to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
        assert!(lse
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|&x| x == f32::INFINITY));
        let (dq, dk, _) =
            Tensor::flash_attention_backward(&q, &k, &k, None, &out, &lse, &out, 1.0, None)
                .unwrap();
        assert!(dq.to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
        assert_eq!(dk.shape(), &[1, 2, 0, 4]);
    }
}
