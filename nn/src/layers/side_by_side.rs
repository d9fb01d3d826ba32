//! `SideBySide`: several `Linear`s that read the same input (BERT's query, key and value) run
//! as one product in inference under bf16 autocast on the CPU: their W^T packed side by side,
//! `[in, Σ out]`, once per weight value, and their biases concatenated. Each output column is
//! computed exactly as the separate layer computes it (same operands, same order of sums), so
//! the result is the separate outputs side by side, bit for bit, with one pass over the input
//! instead of one per layer. Training and the other devices keep the separate layers.

use std::sync::{Arc, Mutex};

use crate::layers::linear::on_rows;
use crate::layers::Linear;
use autograd::Var;
use tensor::{DType, PackedEpilogue, PackedWeight, Result, Tensor};

/// (ids of the weights' and biases' `Var`s, W^T side by side packed, the biases concatenated).
type Packed = (Vec<usize>, Arc<PackedWeight>, Option<Tensor>);

#[derive(Default)]
pub struct SideBySide {
    cache: Mutex<Option<Packed>>,
}

impl SideBySide {
    /// `x [.., in]` through every layer of `layers`, outputs side by side along the last dim
    /// (`[.., Σ out]`, written as `out`: f32, or bf16 for a consumer that rounds them anyway),
    /// as one bf16 GEMM; None where that does not apply (gradients on, no bf16
    /// autocast, a non-CPU or non-f32 operand, some layers with a bias and some without).
    pub fn forward(&self, layers: &[&Linear], x: &Var, out: DType) -> Result<Option<Var>> {
        let weights: Vec<Var> = layers.iter().map(|l| l.weight.var()).collect();
        let biases: Vec<Var> = layers
            .iter()
            .filter_map(|l| l.bias.as_ref().map(|b| b.var()))
            .collect();
        let mut operands: Vec<&Tensor> = vec![x.value()];
        operands.extend(weights.iter().chain(&biases).map(|v| v.value()));
        let uniform_bias = biases.is_empty() || biases.len() == layers.len();
        if layers.is_empty()
            || !uniform_bias
            || autograd::is_grad_enabled()
            || !autograd::cpu_bf16_products(&operands)
        {
            return Ok(None);
        }
        let ids: Vec<usize> = weights.iter().chain(&biases).map(|v| v.id()).collect();
        let (packed, bias) = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match &*cache {
                Some((kept, p, b)) if *kept == ids => (p.clone(), b.clone()),
                _ => {
                    let w: Vec<&Tensor> = weights.iter().map(|v| v.value()).collect();
                    let p = Arc::new(PackedWeight::pack(&Tensor::cat(&w, 0)?.t()?)?);
                    let b: Vec<&Tensor> = biases.iter().map(|v| v.value()).collect();
                    let b = (!b.is_empty()).then(|| Tensor::cat(&b, 0)).transpose()?;
                    *cache = Some((ids, p.clone(), b.clone()));
                    (p, b)
                }
            }
        };
        let ep = PackedEpilogue {
            bias: bias.as_ref(),
            gelu: false,
            residual: None,
            out,
        };
        let y = on_rows(x, |x2| {
            let y = x2.value().matmul_packed_bf16_with(&packed, &ep)?;
            Ok(Var::constant(y))
        })?;
        Ok(Some(y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::{DType, Device, Rng};

    /// Side by side == the separate layers' outputs concatenated, bit for bit; the packed copy
    /// follows a weight update; nothing applies with gradients on or without bf16 autocast.
    #[test]
    fn equals_the_separate_layers_side_by_side() {
        let mut rng = Rng::new(4);
        let x = Tensor::randn(&[2, 7, 40], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let x = Var::constant(x);
        let layers: Vec<Linear> = [24, 40, 17]
            .iter()
            .map(|&out| Linear::new(40, out, true, 0.5, &mut rng).unwrap())
            .collect();
        for l in &layers {
            let b = l.bias.as_ref().unwrap();
            let v = Tensor::randn(&b.shape(), 0.0, 1.0, DType::F32, Device::Cpu, &mut rng);
            b.set("bias", v.unwrap()).unwrap();
        }
        let refs: Vec<&Linear> = layers.iter().collect();
        let fused = SideBySide::default();
        use tensor::testing::bits;
        let check = |what: &str| {
            autograd::autocast(Some(DType::BF16), || {
                autograd::no_grad(|| {
                    let got = fused.forward(&refs, &x, DType::F32).unwrap();
                    let got = got.expect("applies");
                    let parts: Vec<Tensor> = layers
                        .iter()
                        .map(|l| l.forward(&x).unwrap().value().clone())
                        .collect();
                    let parts: Vec<&Tensor> = parts.iter().collect();
                    let want = Tensor::cat(&parts, 2).unwrap();
                    assert_eq!(got.shape(), want.shape(), "{what}");
                    assert_eq!(bits(got.value()), bits(&want), "{what}");
                    // Written as bf16: the same values, rounded.
                    let got16 = fused.forward(&refs, &x, DType::BF16).unwrap().unwrap();
                    let want16 = want.to_dtype(DType::BF16).unwrap();
                    assert_eq!(bits(got16.value()), bits(&want16), "{what}: bf16 out");
                })
            })
        };
        check("first pack");
        let w = &layers[1].weight;
        let updated = w.tensor().affine(0.5, 0.25).unwrap();
        w.set("weight", updated).unwrap();
        check("after a weight update");
        autograd::autocast(Some(DType::BF16), || {
            let y = fused.forward(&refs, &x, DType::F32).unwrap();
            assert!(y.is_none(), "gradients on");
        });
        autograd::no_grad(|| {
            let y = fused.forward(&refs, &x, DType::F32).unwrap();
            assert!(y.is_none(), "no autocast");
        });
    }
}
