//! Mixed-precision autocast, as `torch.autocast(device, dtype)` for the matrix products: while
//! [`autocast`] is active with `Some(F16)` or `Some(BF16)`, [`Var::matmul`](crate::Var::matmul)
//! and [`Var::matmul_bias`](crate::Var::matmul_bias) (so `nn::Linear`, the attention products and
//! the MLM decoder) take operands that live on a CUDA device, cast those that are f32 to the half
//! dtype with differentiable casts (an operand already in the half dtype is read as it is), and
//! run the GEMM in half precision (cuBLAS, f32 accumulation). The product stays in the half dtype,
//! as torch's autocast returns it: activations flow in half between products (GELU and dropout
//! run in it), a half branch added into the f32 hidden state gives f32 (`Var::dropout_add`),
//! LayerNorm (`nn::LayerNorm`), softmax and the losses (`Var::cross_entropy`) compute in f32. The
//! gradients flow back through the casts in the matching dtypes, so f32 parameters (the master
//! weights) receive f32 gradients.
//!
//! On the CPU, `Some(BF16)` does the same with the CPU's bf16 GEMM (`Tensor::matmul_bf16`, AMX or
//! AVX512-BF16): f32 operands are rounded to bf16 as the GEMM packs them and the f32 sums come
//! back as f32, in one node whose backward runs its two products in the same GEMM (the gradient
//! rounded to bf16 as the cast's backward would). `Some(F16)` changes nothing on the CPU, and
//! without autocast the CPU products stay f32, bit for bit those of a run that never heard of
//! it. Operands that are not f32 (already half, or f64 in gradient checks) are left alone.
//!
//! The setting is per thread, like [`no_grad`](crate::no_grad); `autocast(None, f)` turns it off
//! inside `f`, and the previous setting comes back when `f` returns (or panics).

use std::cell::Cell;
use tensor::DType;

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Restores the previous setting when dropped (also on unwinding).
struct Restore(Option<DType>);

impl Drop for Restore {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.0));
    }
}

/// Runs `f` with the matrix products of CUDA f32 operands computed in `dtype` (module doc).
/// `None` (or a dtype other than f16/bf16, which is ignored by the products) turns autocast off.
pub fn autocast<R>(dtype: Option<DType>, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(AUTOCAST.with(|a| a.replace(dtype)));
    f()
}

/// The dtype of the current [`autocast`] region, if any.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(|a| a.get())
}

/// The half dtype the products of these operands run in: the active autocast dtype when it is
/// f16 or bf16, every operand is a tensor on a CUDA device of f32 or that half dtype, and at
/// least one is f32 (all-half operands need no autocast); None otherwise.
pub(crate) fn gemm_dtype(operands: &[&tensor::Tensor]) -> Option<DType> {
    let half = autocast_dtype().filter(|d| matches!(d, DType::F16 | DType::BF16))?;
    let on_gpu = |t: &&tensor::Tensor| t.device() != tensor::Device::Cpu;
    let fits = |t: &&tensor::Tensor| t.dtype() == DType::F32 || t.dtype() == half;
    (operands.iter().all(|t| on_gpu(t) && fits(t))
        && operands.iter().any(|t| t.dtype() == DType::F32))
    .then_some(half)
}

/// True when the products of these operands run in the CPU's bf16 GEMM: autocast is
/// `Some(BF16)` and every operand is an f32 CPU tensor.
pub fn cpu_bf16_products(operands: &[&tensor::Tensor]) -> bool {
    autocast_dtype() == Some(DType::BF16)
        && operands
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.device() == tensor::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Var;
    use tensor::{Device, Rng, Tensor};

    #[test]
    fn nests_and_restores() {
        assert_eq!(autocast_dtype(), None);
        autocast(Some(DType::BF16), || {
            assert_eq!(autocast_dtype(), Some(DType::BF16));
            autocast(Some(DType::F16), || {
                assert_eq!(autocast_dtype(), Some(DType::F16))
            });
            autocast(None, || assert_eq!(autocast_dtype(), None));
            assert_eq!(autocast_dtype(), Some(DType::BF16));
        });
        assert_eq!(autocast_dtype(), None);
        // A panic inside the region restores the setting too.
        let r = std::panic::catch_unwind(|| autocast(Some(DType::F16), || panic!("inside")));
        assert!(r.is_err());
        assert_eq!(autocast_dtype(), None);
        // Other threads are not affected.
        autocast(Some(DType::F16), || {
            let other = std::thread::spawn(autocast_dtype).join().unwrap();
            assert_eq!(other, None);
        });
    }

    #[test]
    fn cpu_products_are_unchanged_bit_for_bit_without_bf16() {
        let mut rng = Rng::new(5);
        let mut randn = |shape: &[usize]| {
            Tensor::randn(shape, 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap()
        };
        let (a, b, bias) = (
            Var::param(randn(&[3, 5])),
            Var::param(randn(&[5, 4])),
            Var::param(randn(&[4])),
        );
        let run = || {
            let y = a
                .matmul_bias(&b, &bias)
                .unwrap()
                .matmul(&b.t().unwrap())
                .unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y.value().to_vec::<f32>().unwrap()];
            for v in [&a, &b, &bias] {
                out.push(grads.get(v).unwrap().to_vec::<f32>().unwrap());
            }
            (out, y.op_name(), y.value().dtype())
        };
        let plain = run();
        // f16 autocast leaves CPU products alone (bf16 runs the bf16 GEMM, tested below).
        for half in [DType::F16] {
            let cast = autocast(Some(half), run);
            assert_eq!(cast.1, plain.1, "no cast node on the CPU");
            assert_eq!(cast.2, DType::F32);
            for (x, y) in cast.0.iter().zip(&plain.0) {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(x), bits(y));
            }
        }
    }

    /// bf16 autocast on the CPU: bf16 GEMM nodes (plain, with bias, the GELU layer, attention),
    /// f32 values and f32 gradients, close to the f32 run at bf16 precision.
    #[test]
    fn cpu_bf16_products_run_the_bf16_gemm_and_return_f32() {
        let mut rng = Rng::new(9);
        let host: Vec<Tensor> = [&[6, 40][..], &[40, 8], &[8], &[40]]
            .iter()
            .map(|s| Tensor::randn(s, 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap())
            .collect();
        let run = |cast: Option<DType>| {
            let v: Vec<Var> = host.iter().map(|t| Var::param(t.clone())).collect();
            autocast(cast, || product_chain(&v))
        };
        let (want, names, _) = run(None);
        assert_eq!(names, ["matmul_bias"]);
        let (got, names, dtypes) = run(Some(DType::BF16));
        assert_eq!(names, ["matmul_bias_bf16"]);
        assert_eq!(
            dtypes,
            [DType::F32; 2],
            "the CPU's bf16 products return f32"
        );
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.dtype(), DType::F32);
            let err = tensor::testing::max_rel_err(g, w);
            // Relative to the largest magnitude: bf16's 2^-9 rounding through the whole chain.
            assert!(err <= 2e-2 && err > 0.0, "relative error {err}");
        }
    }

    /// The products the autocast tests run on parameters `v` ([6,40], [40,8], [8], [40]): a
    /// linear layer, a linear + GELU, a plain product and attention over [1, 2, 6, 4] views (the
    /// flash path on CUDA), then the gradient of a mean square of the result in f32. Returns the
    /// output and every parameter's gradient, the op name of the first product and the dtypes of
    /// the first product and of the attention output.
    fn product_chain(v: &[Var]) -> (Vec<Tensor>, Vec<&'static str>, [DType; 2]) {
        let y = v[0].matmul_bias(&v[1], &v[2]).unwrap();
        let names = vec![y.op_name()];
        let first = y.value().dtype();
        let y = y.matmul_bias_gelu(&v[1].t().unwrap(), &v[3]).unwrap();
        let z = y.matmul(&v[1]).unwrap();
        let heads = z.reshape(&[1, 6, 2, 4]).unwrap().transpose(1, 2).unwrap();
        let att = Var::scaled_dot_product_attention(&heads, &heads, &heads, None, 0.5, 0.0, None)
            .unwrap();
        let att_dtype = att.value().dtype();
        let z = z
            .add(&att.transpose(1, 2).unwrap().reshape(&[6, 8]).unwrap())
            .unwrap();
        let z = match z.value().dtype() {
            DType::F32 => z,
            _ => z.to_dtype(DType::F32).unwrap(),
        };
        let grads = z.sqr().unwrap().mean_all().unwrap().backward().unwrap();
        let mut out = vec![z.value().clone()];
        out.extend(v.iter().map(|p| grads.get(p).unwrap().clone()));
        (out, names, [first, att_dtype])
    }

    #[test]
    fn gemm_dtype_needs_half_autocast_and_f32_device_operands() {
        let a = Tensor::zeros(&[2, 2], DType::F32, Device::Cpu).unwrap();
        assert_eq!(gemm_dtype(&[&a, &a]), None);
        autocast(Some(DType::BF16), || {
            assert_eq!(gemm_dtype(&[&a, &a]), None)
        });
        // f64 (gradient checks) is never an autocast dtype.
        autocast(Some(DType::F64), || assert_eq!(gemm_dtype(&[&a]), None));
    }

    /// On a GPU: half-precision products (plain, with bias, with the fused bias + GELU, and in
    /// attention) of f32 operands, results in f32 after the residual add (the products stay half:
    /// checked in `product_chain`) and f32 gradients of the f32 parameters, close to the CPU's.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_products_run_in_half_and_return_f32() {
        let Some(dev) = tensor::testing::cuda_or_skip("cuda_products_run_in_half_and_return_f32")
        else {
            return;
        };
        let mut rng = Rng::new(9);
        let host: Vec<Tensor> = [&[6, 40][..], &[40, 8], &[8], &[40]]
            .iter()
            .map(|s| Tensor::randn(s, 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap())
            .collect();
        let run = |device: Device, cast: Option<DType>| {
            let v: Vec<Var> = host
                .iter()
                .map(|t| Var::param(t.to_device(device).unwrap()))
                .collect();
            let (out, _, dtypes) = autocast(cast, || product_chain(&v));
            assert_eq!(
                dtypes,
                [cast.unwrap_or(DType::F32); 2],
                "products stay {cast:?}"
            );
            out
        };
        let want = run(Device::Cpu, None);
        // Tolerances for the whole chain (four products, attention, their backward), relative to
        // the largest CPU magnitude: f32 1e-4 (as the pretraining parity), half 1e-2 / 2e-2.
        for (cast, tol) in [
            (None, 1e-4),
            (Some(DType::BF16), 2e-2),
            (Some(DType::F16), 1e-2),
        ] {
            let got = run(dev, cast);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.dtype(), g.device()), (DType::F32, dev), "{cast:?}");
                let err = tensor::testing::max_rel_err(&g.to_device(Device::Cpu).unwrap(), w);
                assert!(err <= tol, "{cast:?}: relative error {err}");
            }
        }
    }
}
