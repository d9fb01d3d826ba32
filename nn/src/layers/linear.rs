//! `Linear`: y = x W^T + b with W stored [out, in] as in torch. The input's leading dims are
//! flattened into one so the product is a single 2-D GEMM, with the bias accumulated in that
//! GEMM (`matmul_bias`). `forward_gelu` adds the activation (fused with the bias on CUDA).
//!
//! The GEMM reads W^T. In training it is a stride view of W (no copy; W changes every step). In
//! inference (`autograd::no_grad`) the layer keeps a row-major copy of W^T, made once per weight
//! value: the CPU GEMM runs markedly faster on a row-major right operand than on the
//! column-major view (see docs/perf/), at the price of a second copy of the weight in memory.
//! The copy is keyed by the parameter's current `Var`, so an optimizer step (which installs a
//! new value) invalidates it. Under bf16 autocast on the CPU, inference keeps instead W^T packed
//! for the bf16 GEMM (`tensor::PackedWeight`, VNNI pairs of bf16), and the bias (and GELU) run
//! in that GEMM's epilogue.

use std::sync::{Arc, Mutex};

use crate::module::{join, Module};
use crate::Param;
use autograd::Var;
use tensor::{DType, Device, PackedEpilogue, PackedWeight, Result, Rng, Tensor};

pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    /// (id of the weight's `Var`, its row-major transpose [in, out]) for inference.
    weight_t: Mutex<Option<(usize, Tensor)>>,
    /// The same for bf16 autocast on the CPU: W^T packed for the bf16 GEMM.
    weight_bf16: Mutex<Option<(usize, Arc<PackedWeight>)>>,
}

impl Linear {
    /// BERT initialisation: weight ~ N(0, std^2), bias 0.
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        std: f64,
        rng: &mut Rng,
    ) -> Result<Linear> {
        let w = Tensor::randn(
            &[out_features, in_features],
            0.0,
            std,
            DType::F32,
            Device::Cpu,
            rng,
        )?;
        let b = bias
            .then(|| Tensor::zeros(&[out_features], DType::F32, Device::Cpu))
            .transpose()?;
        Ok(Linear::from_params(Param::new(w), b.map(Param::new)))
    }

    /// A layer on existing parameters: weight [out, in], bias [out].
    pub fn from_params(weight: Param, bias: Option<Param>) -> Linear {
        Linear {
            weight,
            bias,
            weight_t: Mutex::new(None),
            weight_bf16: Mutex::new(None),
        }
    }

    /// W^T [in, out]: a view in training, the cached row-major copy in inference (module doc).
    fn weight_t(&self) -> Result<Var> {
        let w = self.weight.var();
        if autograd::is_grad_enabled() {
            return w.t();
        }
        let mut cache = self.weight_t.lock().unwrap_or_else(|e| e.into_inner());
        match &*cache {
            Some((id, t)) if *id == w.id() => Ok(Var::constant(t.clone())),
            _ => {
                let t = w.value().t()?.contiguous()?;
                *cache = Some((w.id(), t.clone()));
                Ok(Var::constant(t))
            }
        }
    }

    /// Inference under bf16 autocast on the CPU: `x W^T + b` (then GELU, then `residual`) in
    /// one bf16 GEMM on the cached packed W^T, written as `out`; None when that does not apply.
    /// `x` may be f32 or already bf16 (see [`Linear::forward_gelu_for_product`]).
    fn forward_packed_bf16(
        &self,
        x: &Var,
        gelu: bool,
        residual: Option<&Var>,
        out: DType,
    ) -> Result<Option<Var>> {
        let w = self.weight.var();
        let x_ok = x.value().device() == Device::Cpu
            && matches!(x.value().dtype(), DType::F32 | DType::BF16);
        let lead = |v: &Var| v.shape()[..v.shape().len().saturating_sub(1)].to_vec();
        let residual_ok = residual.is_none_or(|r| {
            let cpu_f32 = r.value().dtype() == DType::F32 && r.value().device() == Device::Cpu;
            cpu_f32 && lead(r) == lead(x) && r.shape().last() == w.shape().first()
        });
        if autograd::is_grad_enabled()
            || !autograd::cpu_bf16_products(&[w.value()])
            || !x_ok
            || !residual_ok
        {
            return Ok(None);
        }
        let packed = {
            let mut cache = self.weight_bf16.lock().unwrap_or_else(|e| e.into_inner());
            match &*cache {
                Some((id, p)) if *id == w.id() => p.clone(),
                _ => {
                    let p = Arc::new(PackedWeight::pack(&w.value().t()?)?);
                    *cache = Some((w.id(), p.clone()));
                    p
                }
            }
        };
        let bias = self.bias.as_ref().map(|b| b.var().value().clone());
        let y = on_rows(x, |x2| {
            let residual = residual
                .map(|r| r.value().reshape(&[x2.shape()[0], packed.shape()[1]]))
                .transpose()?;
            let ep = PackedEpilogue {
                bias: bias.as_ref(),
                gelu,
                residual: residual.as_ref(),
                out,
            };
            let y = x2.value().matmul_packed_bf16_with(&packed, &ep)?;
            Ok(Var::constant(y))
        })?;
        Ok(Some(y))
    }

    /// `forward(x) + residual` (a residual connection; `residual` has the output's shape). In
    /// inference under bf16 autocast on the CPU the add runs in the GEMM's epilogue, the same
    /// bits as the separate add without its pass over memory.
    pub fn forward_residual(&self, x: &Var, residual: &Var) -> Result<Var> {
        if let Some(y) = self.forward_packed_bf16(x, false, Some(residual), DType::F32)? {
            return Ok(y);
        }
        self.forward(x)?.add_promoted(residual)
    }

    /// `forward_gelu(x)` for an output that only feeds another product (BERT's intermediate
    /// activations, read by the output projection). In inference under bf16 autocast on the
    /// CPU it comes back already rounded to bf16, the rounding that product applies to its
    /// operand anyway: the same result, with half the bytes written and read and no f32 pass.
    pub fn forward_gelu_for_product(&self, x: &Var) -> Result<Var> {
        if let Some(y) = self.forward_packed_bf16(x, true, None, DType::BF16)? {
            return Ok(y);
        }
        self.forward_gelu(x)
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        if let Some(y) = self.forward_packed_bf16(x, false, None, DType::F32)? {
            return Ok(y);
        }
        if let Some(y) = self.forward_half(x, false)? {
            return Ok(y);
        }
        on_rows(x, |x2| match &self.bias {
            Some(b) => x2.matmul_bias(&self.weight_t()?, &b.var()),
            None => x2.matmul(&self.weight_t()?),
        })
    }

    /// gelu(x W^T + b): on the CPU the same bits as `forward(x)?.gelu()`; on CUDA the bias and
    /// the GELU run as one fused kernel after the GEMM (`Var::matmul_bias_gelu`).
    pub fn forward_gelu(&self, x: &Var) -> Result<Var> {
        if let Some(y) = self.forward_packed_bf16(x, true, None, DType::F32)? {
            return Ok(y);
        }
        if let Some(y) = self.forward_half(x, true)? {
            return Ok(y);
        }
        on_rows(x, |x2| match &self.bias {
            Some(b) => x2.matmul_bias_gelu(&self.weight_t()?, &b.var()),
            None => x2.matmul(&self.weight_t()?)?.gelu(),
        })
    }

    /// [`half_copy_product`] over x's leading dims flattened (None when it does not apply).
    fn forward_half(&self, x: &Var, gelu: bool) -> Result<Option<Var>> {
        let w = self.weight.tensor();
        if autocast_half(x).is_none() || w.dtype() != DType::F32 || w.device() == Device::Cpu {
            return Ok(None);
        }
        on_rows(x, |x2| {
            half_copy_product(x2, &self.weight, self.bias.as_ref(), gelu)?
                .ok_or_else(|| tensor::Error::op("Linear", "no half-precision product applies"))
        })
        .map(Some)
    }
}

/// `f(x2)` on x flattened to [rows, in], reshaped back to x's leading dims (a linear layer's
/// product on any number of leading dims).
pub(crate) fn on_rows(x: &Var, f: impl FnOnce(&Var) -> Result<Var>) -> Result<Var> {
    let shape = x.shape().to_vec();
    let in_features = *shape.last().unwrap_or(&0);
    let rows = x.value().elem_count() / in_features.max(1);
    let x2 = x.reshape(&[rows, in_features])?;
    let y = f(&x2)?;
    let mut out_shape = shape;
    *out_shape.last_mut().expect("rank >= 1") = y.shape()[1];
    y.reshape(&out_shape)
}

impl Module for Linear {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b);
        }
    }
}

/// The half dtype of an active f16/bf16 autocast when `x` is a GPU tensor of f32 or that dtype.
pub fn autocast_half(x: &Var) -> Option<DType> {
    let half = autograd::autocast_dtype().filter(|d| matches!(d, DType::F16 | DType::BF16))?;
    let dtype = x.value().dtype();
    ((dtype == DType::F32 || dtype == half) && x.value().device() != Device::Cpu).then_some(half)
}

/// `x` in the half dtype: itself when it already is (a product's output), else one cast.
pub fn half_input(x: &Var, half: DType) -> Result<Var> {
    match x.value().dtype() == half {
        true => Ok(x.clone()),
        false => x.to_dtype(half),
    }
}

/// `x [rows, in] W^T + b` (then GELU) under f16/bf16 autocast on a GPU, on the parameters' kept
/// half copies ([`Param::half`]: no weight cast per forward, the optimizer writes them): `x` cast
/// once when it is f32 (a half `x` is read as it is), the product in the half dtype (f32
/// accumulation) and left in it, as torch's autocast returns it; with `gelu`, the bias (f32)
/// and GELU fused after the product on the half values, as `Var::matmul_bias_gelu` does on a
/// GPU. None when that does not apply (no half autocast, a CPU or non-f32 weight). `Linear` and
/// the tied MLM decoder use it.
pub fn half_copy_product(
    x: &Var,
    weight: &Param,
    bias: Option<&Param>,
    gelu: bool,
) -> Result<Option<Var>> {
    let Some(half) = autocast_half(x) else {
        return Ok(None);
    };
    let Some(w) = weight.half(half)? else {
        return Ok(None);
    };
    Ok(Some(half_product(
        &half_input(x, half)?,
        &w.t()?,
        bias,
        half,
        gelu,
    )?))
}

/// `xh [rows, in] @ wt [in, out]` in the half dtype, then the bias (its kept half copy, in the
/// GEMM) or the bias and GELU (fused, the f32 bias): the product part of [`half_copy_product`].
fn half_product(xh: &Var, wt: &Var, bias: Option<&Param>, half: DType, gelu: bool) -> Result<Var> {
    match (bias, gelu) {
        (Some(b), true) => xh.matmul(wt)?.bias_gelu(&b.var()),
        (Some(b), false) => match b.half(half)? {
            Some(bh) => xh.matmul_bias(wt, &bh),
            None => xh.matmul(wt)?.add(&b.var()),
        },
        (None, true) => xh.matmul(wt)?.gelu(),
        (None, false) => xh.matmul(wt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_gelu_is_forward_then_gelu_bit_for_bit_on_the_cpu() {
        let mut rng = Rng::new(5);
        let x = Tensor::randn(&[2, 3, 6], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let w = Tensor::randn(&[2, 3, 4], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        for bias in [true, false] {
            let lin = Linear::new(6, 4, bias, 0.5, &mut rng).unwrap();
            if let Some(b) = &lin.bias {
                let v = Tensor::randn(&[4], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
                b.set("bias", v).unwrap();
            }
            let run = |fused: bool| {
                let xv = Var::param(x.clone());
                let y = if fused {
                    lin.forward_gelu(&xv).unwrap()
                } else {
                    lin.forward(&xv).unwrap().gelu().unwrap()
                };
                let g = y.backward_with(w.clone()).unwrap();
                let mut out = vec![y.value().clone(), g.get(&xv).unwrap().clone()];
                out.push(g.get(&lin.weight.var()).unwrap().clone());
                if let Some(b) = &lin.bias {
                    out.push(g.get(&b.var()).unwrap().clone());
                }
                out.iter()
                    .map(|t| t.to_vec::<f32>().unwrap())
                    .collect::<Vec<_>>()
            };
            assert_eq!(run(true), run(false), "bias {bias}");
            let infer = |fused: bool| {
                autograd::no_grad(|| {
                    let xv = Var::constant(x.clone());
                    let y = if fused {
                        lin.forward_gelu(&xv).unwrap()
                    } else {
                        lin.forward(&xv).unwrap().gelu().unwrap()
                    };
                    y.value().to_vec::<f32>().unwrap()
                })
            };
            assert_eq!(infer(true), infer(false));
        }
    }

    #[test]
    fn inference_copy_matches_training_view_and_follows_updates() {
        let mut rng = Rng::new(3);
        let lin = Linear::new(6, 4, true, 0.5, &mut rng).unwrap();
        lin.bias
            .as_ref()
            .unwrap()
            .set(
                "bias",
                Tensor::randn(&[4], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap(),
            )
            .unwrap();
        let x = Var::constant(
            Tensor::randn(&[2, 3, 6], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap(),
        );
        let run = |lin: &Linear| lin.forward(&x).unwrap().value().to_vec::<f32>().unwrap();
        // The two paths differ only in the GEMM's summation order.
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + y.abs()))
        };
        let train = run(&lin);
        let infer = autograd::no_grad(|| run(&lin));
        assert!(close(&train, &infer), "{train:?} vs {infer:?}");
        // A new weight value must not be served from the stale copy.
        lin.weight
            .update(|w| {
                *w = w.mul_scalar(2.0)?;
                Ok(())
            })
            .unwrap();
        let (train, infer) = (run(&lin), autograd::no_grad(|| run(&lin)));
        assert!(close(&train, &infer), "{train:?} vs {infer:?}");
        let no_bias = Linear::from_params(lin.weight.clone(), None);
        let want = x
            .value()
            .reshape(&[6, 6])
            .unwrap()
            .matmul(&lin.weight.tensor().t().unwrap())
            .unwrap();
        let got = autograd::no_grad(|| {
            no_bias
                .forward(&x)
                .unwrap()
                .value()
                .reshape(&[6, 4])
                .unwrap()
        });
        assert!(close(
            &got.to_vec::<f32>().unwrap(),
            &want.to_vec::<f32>().unwrap()
        ));
    }

    /// bf16 autocast inference on the CPU: W^T packed once per weight value (not the f32 copy),
    /// the same values as the training path's bf16 GEMM, and f32's up to bf16 rounding.
    #[test]
    fn bf16_inference_packs_the_weight_once() {
        let mut rng = Rng::new(8);
        let x = Tensor::randn(&[2, 5, 40], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let lin = Linear::new(40, 24, true, 0.5, &mut rng).unwrap();
        let b = Tensor::randn(&[24], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        lin.bias.as_ref().unwrap().set("bias", b).unwrap();
        let bf16 = Some(DType::BF16);
        for gelu in [false, true] {
            let run = |cast| {
                let xv = Var::param(x.clone());
                let y = autograd::autocast(cast, || match gelu {
                    true => lin.forward_gelu(&xv),
                    false => lin.forward(&xv),
                });
                y.unwrap().value().clone()
            };
            let (f32_train, bf16_train) = (run(None), run(bf16));
            let bf16_infer = autograd::no_grad(|| run(bf16));
            assert_eq!(bf16_infer.shape(), [2, 5, 24]);
            let same = tensor::testing::max_rel_err(&bf16_infer, &bf16_train);
            assert!(same <= 1e-6, "gelu={gelu}: packed vs training path {same}");
            let err = tensor::testing::max_rel_err(&bf16_infer, &f32_train);
            assert!(err > 0.0 && err <= 1e-2, "gelu={gelu}: bf16 vs f32 {err}");
        }
        let id = lin.weight.var().id();
        assert!(matches!(&*lin.weight_bf16.lock().unwrap(), Some((i, _)) if *i == id));
        assert!(
            lin.weight_t.lock().unwrap().is_none(),
            "no f32 W^T copy under bf16"
        );
    }

    /// Under CPU bf16 inference, `forward_residual` adds the residual in the GEMM's epilogue and
    /// `forward_gelu_for_product` hands back bf16: both the same bits as the separate steps
    /// (the add after the product; the rounding the next product's packing applies), and both
    /// plain compositions elsewhere (f32, or gradients on).
    #[test]
    fn residual_and_bf16_handoff_equal_the_separate_steps() {
        let mut rng = Rng::new(9);
        let x = Tensor::randn(&[2, 5, 40], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let r = Tensor::randn(&[2, 5, 24], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let lin = Linear::new(40, 24, true, 0.5, &mut rng).unwrap();
        let b = Tensor::randn(&[24], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        lin.bias.as_ref().unwrap().set("bias", b).unwrap();
        let (xv, rv) = (Var::constant(x), Var::constant(r));
        use tensor::testing::bits;
        for cast in [Some(DType::BF16), None] {
            let run = || {
                let fused = lin.forward_residual(&xv, &rv).unwrap();
                let separate = lin.forward(&xv).unwrap().add(&rv).unwrap();
                assert_eq!(
                    bits(fused.value()),
                    bits(separate.value()),
                    "{cast:?} residual"
                );
                let handed = lin.forward_gelu_for_product(&xv).unwrap();
                let rounded = lin
                    .forward_gelu(&xv)
                    .unwrap()
                    .value()
                    .to_dtype(DType::BF16)
                    .unwrap();
                let want_dtype = if cast.is_some() {
                    DType::BF16
                } else {
                    DType::F32
                };
                assert_eq!(handed.value().dtype(), want_dtype);
                let handed = handed.value().to_dtype(DType::BF16).unwrap();
                assert_eq!(bits(&handed), bits(&rounded), "{cast:?} bf16 hand-off");
            };
            autograd::autocast(cast, || autograd::no_grad(run));
        }
    }
}
