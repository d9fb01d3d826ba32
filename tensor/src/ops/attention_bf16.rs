//! `Tensor::attention_bf16`: softmax(q kᵀ · scale + mask) v in inference under bf16 autocast on
//! the CPU, fused per (batch, head) (`cpu::attention_bf16`): the products in the bf16 GEMM (f32
//! sums), the softmax in f32. Equal bit for bit to the composed ops autocast runs otherwise
//! (`matmul_bf16`, `softmax_last`, `matmul_bf16`), without their [B, H, Sq, Sk] intermediates.

use super::softmax::{check_dtype, prepare_mask};
use crate::cpu::attention_bf16::{self as kernel, Dims, Heads};
use crate::cpu::bf16_gemm::{Bf16Source, OutElem};
use crate::cpu::softmax::RowMask;
use crate::{DType, Error, Result, Tensor, WithDType};
use half::bf16;

/// `t`'s CPU elements (of type `T`) as a [`Heads`] view.
fn heads<'a, T: WithDType>(op: &'static str, t: &'a Tensor) -> Result<Heads<'a, T>> {
    let l = t.layout();
    let strides = [
        l.strides()[0],
        l.strides()[1],
        l.strides()[2],
        l.strides()[3],
    ];
    Ok(Heads {
        data: t.cpu_storage(op)?.as_slice::<T>(op)?,
        offset: l.offset(),
        strides,
    })
}

impl Tensor {
    /// q `[B, H, Sq, D]`, k `[B, H, Sk, D]`, v `[B, H, Sk, Dv]` (CPU tensors, any strides, all
    /// three f32 or all three bf16) and an f32 additive mask broadcast to `[B, H, Sq, Sk]`:
    /// returns `[B, H, Sq, Dv]` in q's dtype, a view of a `[B, Sq, H, Dv]` buffer (so
    /// `transpose(1, 2)` of it is contiguous).
    pub fn attention_bf16(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        const OP: &str = "attention_bf16";
        if !matches!(q.dtype(), DType::F32 | DType::BF16) {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: q.dtype(),
            });
        }
        for t in [k, v] {
            check_dtype(OP, q.dtype(), t)?;
        }
        if let Some(m) = mask {
            check_dtype(OP, DType::F32, m)?;
        }
        for t in [q, k, v].into_iter().chain(mask) {
            if !t.device().is_cpu() {
                crate::bail!(
                    OP,
                    "is the CPU's fused attention; got a tensor on {:?}",
                    t.device()
                );
            }
        }
        let (&[b, h, sq, d], &[bk, hk, sk, dk], &[bv, hv, skv, dv]) =
            (q.shape(), k.shape(), v.shape())
        else {
            crate::bail!(
                OP,
                "expects q [B, H, Sq, D], k [B, H, Sk, D], v [B, H, Sk, Dv]; got {:?}, {:?}, {:?}",
                q.shape(),
                k.shape(),
                v.shape()
            );
        };
        if (bk, hk, dk) != (b, h, d) || (bv, hv, skv) != (b, h, sk) {
            crate::bail!(
                OP,
                "q {:?}, k {:?} and v {:?} disagree on batch, heads, key length or head dim",
                q.shape(),
                k.shape(),
                v.shape()
            );
        }
        let scores = [b, h, sq, sk];
        let mask = mask.map(|m| prepare_mask(OP, m, &scores)).transpose()?;
        let rows = mask.as_ref().map(|m| m.rows::<f32>(OP)).transpose()?;
        let dims = Dims {
            batch: b,
            heads: h,
            sq,
            sk,
            d,
            dv,
        };
        let flops = crate::profiler::flops::matmul(b * h, sq, d, sk)
            + crate::profiler::flops::matmul(b * h, sq, sk, dv);
        let _p = crate::profiler::scope(OP)
            .io(&[q, k, v], &[b, h, sq, dv])
            .flops(flops);
        /// The kernel on q, k, v of element type `T`, as a [B, Sq, H, Dv] tensor.
        fn run<T: WithDType + Bf16Source + OutElem>(
            [q, k, v]: [&Tensor; 3],
            dims: Dims,
            rows: Option<&RowMask<'_, f32>>,
            scale: f32,
        ) -> Result<Tensor> {
            let (q, k, v) = (heads(OP, q)?, heads(OP, k)?, heads(OP, v)?);
            let out = kernel::attention_bf16::<T>(q, k, v, dims, rows, scale);
            Tensor::from_vec(out, &[dims.batch, dims.sq, dims.heads, dims.dv])
        }
        let qkv = [q, k, v];
        let out = match q.dtype() {
            DType::BF16 => run::<bf16>(qkv, dims, rows.as_ref(), scale as f32)?,
            _ => run::<f32>(qkv, dims, rows.as_ref(), scale as f32)?,
        };
        out.transpose(1, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::uniform;

    /// q, k, v as the strided `[B, H, S, D]` views of one `[B, S, 3, H, D]` projection buffer
    /// that attention layers pass (heads moved forward, no copy).
    fn qkv(b: usize, h: usize, s: usize, d: usize, seed: u64) -> [Tensor; 3] {
        let all = uniform(&[b, s, 3 * h * d], -2.0, 2.0, DType::F32, seed);
        [0, 1, 2].map(|i| {
            all.narrow(2, i * h * d, h * d)
                .unwrap()
                .reshape(&[b, s, h, d])
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        })
    }

    /// The composed ops bf16 autocast runs without the fusion.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
        let scores = q.matmul_bf16(&k.transpose(2, 3).unwrap()).unwrap();
        let probs = scores.softmax_last(mask, scale).unwrap();
        probs.matmul_bf16(v).unwrap()
    }

    /// Same bits as the composed ops, on fresh random views: odd sizes (several GEMM k blocks
    /// for the probabilities' product, padding everywhere), BERT-base's head shape, a [B,1,1,Sk]
    /// padding mask with a fully masked batch entry (zeros, as softmax gives), a per-query mask,
    /// no mask, and a v head dim other than q's.
    #[test]
    fn equals_the_composed_ops_bit_for_bit() {
        let cases = [
            (2, 3, 17, 300, 15, 20),
            (2, 2, 128, 128, 64, 64),
            (1, 1, 1, 1, 1, 1),
        ];
        for (case, &(b, h, sq, sk, d, dv)) in cases.iter().enumerate() {
            let seed = 10 * case as u64;
            let [q, _, _] = qkv(b, h, sq, d, seed);
            let [_, k, _] = qkv(b, h, sk, d, seed + 1);
            let [_, _, v] = qkv(b, h, sk, dv, seed + 2);
            // Padding: the last third of the keys of entry 0 masked, entry b-1 entirely (-inf).
            let mut pad = vec![0f32; b * sk];
            pad[2 * sk / 3..sk].fill(-10000.0);
            if b > 1 {
                pad[(b - 1) * sk..].fill(f32::NEG_INFINITY);
            }
            let pad = Tensor::from_vec(pad, &[b, 1, 1, sk]).unwrap();
            let per_query = uniform(&[b, 1, sq, sk], -3.0, 0.0, DType::F32, seed + 3);
            let scale = (d as f64).powf(-0.5);
            for mask in [Some(&pad), Some(&per_query), None] {
                let got = Tensor::attention_bf16(&q, &k, &v, mask, scale).unwrap();
                let want = composed(&q, &k, &v, mask, scale);
                assert_eq!(got.shape(), want.shape());
                let (g, w) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
                let same = g.iter().zip(&w).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "case {case} ({b},{h},{sq},{sk},{d},{dv}): fused != composed"
                );
                // Written as [B, Sq, H, Dv]: the heads side by side without a copy.
                assert!(got.transpose(1, 2).unwrap().is_contiguous());
                // q, k, v handed over as bf16 (what their packing rounds them to anyway): the
                // same result, rounded to bf16.
                let [q16, k16, v16] = [&q, &k, &v].map(|t| t.to_dtype(DType::BF16).unwrap());
                let got16 = Tensor::attention_bf16(&q16, &k16, &v16, mask, scale).unwrap();
                assert_eq!(got16.dtype(), DType::BF16);
                let want16 = want.to_dtype(DType::BF16).unwrap();
                assert!(
                    crate::testing::bits(&got16) == crate::testing::bits(&want16),
                    "case {case}: bf16 q, k, v differ from the composed ops on f32 ones"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_operands() {
        let [q, k, v] = qkv(1, 2, 4, 8, 0);
        let k3 = Tensor::zeros(&[2, 4, 8], DType::F32, crate::Device::Cpu).unwrap();
        assert!(Tensor::attention_bf16(&q, &k3, &v, None, 1.0).is_err());
        let [_, k5, _] = qkv(1, 2, 5, 8, 1);
        assert!(
            Tensor::attention_bf16(&q, &k5, &v, None, 1.0).is_err(),
            "Sk of k and v differ"
        );
        let q64 = q.to_dtype(DType::F64).unwrap();
        assert!(Tensor::attention_bf16(&q64, &k, &v, None, 1.0).is_err());
        let q16 = q.to_dtype(DType::BF16).unwrap();
        assert!(
            Tensor::attention_bf16(&q16, &k, &v, None, 1.0).is_err(),
            "q bf16, k and v f32"
        );
        let bad_mask = Tensor::zeros(&[1, 1, 1, 5], DType::F32, crate::Device::Cpu).unwrap();
        assert!(Tensor::attention_bf16(&q, &k, &v, Some(&bad_mask), 1.0).is_err());
    }
}
