//! `Var::fused_qkv_attention`: attention over one `[B, S, 3·H·D]` projection (q, k, v side by
//! side, BERT's fused QKV) equals `Var::scaled_dot_product_attention` over the three views
//! `[B, H, S, D]` made by hand, with the same dropout draws and the same generator state after;
//! the gradient of the projection is the three views' gradients side by side. On the CPU (the
//! composed path) bit for bit; on a GPU (the flash kernels reading the views in place, one
//! backward writing one gradient) bit for bit against the door on the views, and within bf16's
//! tolerance of the CPU's f32, on contiguous and transposed projections.

use autograd::Var;
use tensor::testing::randn;
use tensor::{DType, Device, Result, Rng, Tensor};

const B: usize = 2;
const S: usize = 10;
const H: usize = 3;
const D: usize = 8;
const P: f64 = 0.25;

/// The three `[B, H, S, D]` views of `qkv [B, S, 3HD]` as `Var`s (narrow, reshape, transpose).
fn views(qkv: &Var) -> Result<[Var; 3]> {
    let view = |i: usize| {
        qkv.narrow(2, i * H * D, H * D)?
            .reshape(&[B, S, H, D])?
            .transpose(1, 2)
    };
    Ok([view(0)?, view(1)?, view(2)?])
}

/// Padding: the last three keys of batch 1, as BERT's `[B, 1, 1, S]` additive mask (f32).
fn mask() -> Tensor {
    let m: Vec<f32> = (0..B * S)
        .map(|i| {
            if i >= S && i % S >= S - 3 {
                f32::MIN
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(m, &[B, 1, 1, S]).unwrap()
}

/// (output, gradient of qkv, generator after) of attention over `qkv` on its device, fused or
/// through the views; the output weighted by `w` so every element's gradient differs.
fn run(qkv: &Tensor, fused: bool, w: &Tensor) -> (Tensor, Tensor, Rng) {
    let x = Var::param(qkv.clone());
    let mask = mask().to_device(qkv.device()).unwrap();
    let mut rng = Rng::new(17);
    let scale = (D as f64).powf(-0.5);
    let out = if fused {
        Var::fused_qkv_attention(&x, H, Some(&mask), scale, P, Some(&mut rng)).unwrap()
    } else {
        let [q, k, v] = views(&x).unwrap();
        Var::scaled_dot_product_attention(&q, &k, &v, Some(&mask), scale, P, Some(&mut rng))
            .unwrap()
    };
    let w = w
        .to_device(qkv.device())
        .unwrap()
        .to_dtype(out.value().dtype())
        .unwrap();
    let grads = out
        .mul(&Var::constant(w))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let host = |t: &Tensor| {
        t.to_device(Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    };
    (host(out.value()), host(grads.get(&x).unwrap()), rng)
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec::<f64>()
        .unwrap()
        .iter()
        .map(|f| f.to_bits())
        .collect()
}

/// `[B, S, 3HD]` of `dtype` on `device`, contiguous or a transposed `[B, 3HD, S]` buffer.
fn projection(dtype: DType, device: Device, transposed: bool, seed: u64) -> Tensor {
    let t = match transposed {
        false => randn(&[B, S, 3 * H * D], 1.0, dtype, seed),
        true => randn(&[B, 3 * H * D, S], 1.0, dtype, seed)
            .transpose(1, 2)
            .unwrap(),
    };
    t.to_device(device).unwrap()
}

#[test]
fn on_the_cpu_fused_attention_is_the_door_over_the_views_bit_for_bit() {
    let w = randn(&[B, H, S, D], 1.0, DType::F32, 5);
    for transposed in [false, true] {
        let qkv = projection(DType::F32, Device::Cpu, transposed, 3);
        let (out, grad, rng) = run(&qkv, true, &w);
        let (want_out, want_grad, want_rng) = run(&qkv, false, &w);
        assert_eq!(bits(&out), bits(&want_out), "transposed {transposed}");
        assert_eq!(bits(&grad), bits(&want_grad), "transposed {transposed}");
        assert_eq!(rng, want_rng);
        assert!(
            grad.to_vec::<f64>().unwrap().iter().any(|g| *g != 0.0),
            "a gradient flows"
        );
    }
}

#[test]
fn bad_projections_are_refused_naming_the_op() {
    let x = Var::param(randn(&[B, S, 3 * H * D + 1], 1.0, DType::F32, 1));
    let err = Var::fused_qkv_attention(&x, H, None, 1.0, 0.0, None).unwrap_err();
    assert!(err.to_string().contains("fused_qkv_attention"), "{err}");
    let x = Var::param(randn(&[B, 3 * H * D], 1.0, DType::F32, 1));
    assert!(Var::fused_qkv_attention(&x, H, None, 1.0, 0.0, None).is_err());
}

#[cfg(feature = "cuda")]
#[test]
fn on_a_gpu_fused_attention_reads_the_views_in_place_and_matches() {
    let Some(dev) = tensor::testing::cuda_or_skip(
        "on_a_gpu_fused_attention_reads_the_views_in_place_and_matches",
    ) else {
        return;
    };
    let w = randn(&[B, H, S, D], 1.0, DType::F32, 5);
    for dtype in [DType::BF16, DType::F32] {
        for transposed in [false, true] {
            let what = format!("{dtype} transposed {transposed}");
            let qkv = projection(dtype, dev, transposed, 3);
            // One node over the projection: the flash kernels' path.
            let x = Var::param(qkv.clone());
            let out = Var::fused_qkv_attention(&x, H, None, 1.0, 0.0, None).unwrap();
            assert_eq!(out.op_name(), "fused_qkv_attention", "{what}");
            let (got, got_grad, got_rng) = run(&qkv, true, &w);
            let (want, want_grad, want_rng) = run(&qkv, false, &w);
            assert_eq!(bits(&got), bits(&want), "{what}: output");
            assert_eq!(bits(&got_grad), bits(&want_grad), "{what}: gradient");
            assert_eq!(got_rng, want_rng, "{what}: generator");
            // And the CPU's f32 composition, with the same dropout draws.
            let cpu = qkv
                .to_device(Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let (cpu_out, cpu_grad, _) = run(&cpu, false, &w);
            let tol = if dtype == DType::BF16 { 1e-2 } else { 1e-5 };
            for (g, c, name) in [
                (&got, &cpu_out, "output"),
                (&got_grad, &cpu_grad, "gradient"),
            ] {
                let e = tensor::testing::max_rel_err(g, c);
                assert!(
                    e <= tol,
                    "{what}: {name} relative error {e:.2e} > {tol:.0e}"
                );
            }
        }
    }
}
