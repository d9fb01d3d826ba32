//! `Var::scaled_dot_product_attention` on the CPU is the composition attention used before it
//! existed (matmul, masked softmax, dropout from the generator, matmul), bit for bit, generator
//! state included; `Var::flash_attention` (the formulas the CUDA kernels implement, evaluated
//! in f64 on the CPU) gives the composition's values and gradients with the same dropout draw;
//! both pass gradcheck.

use autograd::{gradcheck, GradcheckOptions, Var};
use tensor::ops::attention::AttentionDropout;
use tensor::testing::{max_rel_err, randn};
use tensor::{DType, Device, Result, Rng, Tensor};

const B: usize = 2;
const H: usize = 3;
const D: usize = 8;

/// The attention of bert/src/attention.rs before the fused door, dropout as `Dropout::forward`.
fn composed(
    [q, k, v]: [&Var; 3],
    mask: Option<&Tensor>,
    scale: f64,
    p: f64,
    train: bool,
    rng: &mut Rng,
) -> Result<Var> {
    let scores = q.matmul(&k.transpose(2, 3)?)?;
    let probs = scores.softmax_last(mask, scale)?;
    probs.dropout(p, train, rng)?.matmul(v)
}

/// `[B, S, H·D]` projections seen as `[B, H, S, D]` (a non-contiguous view, as BERT makes).
fn heads(x: &Var) -> Result<Var> {
    let s = x.shape()[1];
    x.reshape(&[B, s, H, D])?.transpose(1, 2)
}

/// q, k, v sources: q with `sq` positions, k and v with `sk`.
fn sources(sq: usize, sk: usize, dtype: DType, seed: u64) -> [Tensor; 3] {
    [sq, sk, sk].map(|s| randn(&[B, s, H * D], 1.0, dtype, seed + s as u64))
}

/// The additive mask over `[B, 1, sq, sk]`: the last two keys of batch 1 padded, and in batch 0
/// query 1 masked from every key (a row of -inf, which softmax turns into zeros).
fn mask(sq: usize, sk: usize, dtype: DType) -> Tensor {
    let mut m = vec![0.0; B * sq * sk];
    for i in 0..sq {
        for j in sk - 2..sk {
            m[(sq + i) * sk + j] = f64::NEG_INFINITY;
        }
    }
    for j in 0..sk {
        m[sk + j] = f64::NEG_INFINITY;
    }
    Tensor::from_vec(m, &[B, 1, sq, sk])
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn leaves(src: &[Tensor; 3]) -> [Var; 3] {
    src.clone().map(Var::param)
}

/// Output and the gradients of the three leaves for the loss sum(out * w).
fn run(out: &Var, leaves: &[Var; 3], w: &Tensor) -> (Tensor, Vec<Tensor>) {
    let g = out.backward_with(w.clone()).unwrap();
    let grads = leaves.iter().map(|l| g.get(l).unwrap().clone()).collect();
    (out.value().clone(), grads)
}

#[test]
fn the_door_is_the_old_composition_bit_for_bit_on_the_cpu() {
    let scale = (D as f64).powf(-0.5);
    for (sq, sk) in [(5, 5), (4, 7)] {
        let src = sources(sq, sk, DType::F32, 1);
        // BERT's [B, 1, 1, Sk] padding mask with f32::MIN, and the -inf variant over queries.
        let pad = Tensor::from_vec(
            (0..B * sk)
                .map(|i| if i >= 2 * sk - 2 { f32::MIN } else { 0.0 })
                .collect::<Vec<f32>>(),
            &[B, 1, 1, sk],
        )
        .unwrap();
        let full = mask(sq, sk, DType::F32);
        let w = randn(&[B, H, sq, D], 1.0, DType::F32, 7);
        for m in [None, Some(&pad), Some(&full)] {
            for (p, train) in [(0.3, true), (0.3, false), (0.0, true)] {
                let start = Rng {
                    seed: 11,
                    offset: 5,
                };
                let (mut r_new, mut r_old) = (start, start);
                let (ln, lo) = (leaves(&src), leaves(&src));
                let [qn, kn, vn] = ln.clone().map(|x| heads(&x).unwrap());
                let [qo, ko, vo] = lo.clone().map(|x| heads(&x).unwrap());
                let new = Var::scaled_dot_product_attention(
                    &qn,
                    &kn,
                    &vn,
                    m,
                    scale,
                    p,
                    train.then_some(&mut r_new),
                )
                .unwrap();
                let old = composed([&qo, &ko, &vo], m, scale, p, train, &mut r_old).unwrap();
                assert_eq!(r_new, r_old, "generator state (p {p}, train {train})");
                if train && p > 0.0 {
                    assert_ne!(r_new, start, "dropout drew from the generator");
                }
                let (yn, gn) = run(&new, &ln, &w);
                let (yo, go) = run(&old, &lo, &w);
                assert_eq!(yn.to_vec::<f32>().unwrap(), yo.to_vec::<f32>().unwrap());
                for (a, b) in gn.iter().zip(&go) {
                    assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
                }
            }
        }
    }
}

#[test]
fn flash_formulas_match_the_composition_with_the_same_dropout() {
    let scale = 0.4;
    for (sq, sk, p) in [(5, 5, 0.0), (4, 7, 0.25), (6, 3, 0.5)] {
        let src = sources(sq, sk, DType::F64, 3);
        let m = mask(sq, sk, DType::F64);
        let w = randn(&[B, H, sq, D], 1.0, DType::F64, 9);
        let (mut r_flash, mut r_old) = (Rng::new(21), Rng::new(21));
        let (lf, lo) = (leaves(&src), leaves(&src));
        let [qf, kf, vf] = lf.clone().map(|x| heads(&x).unwrap());
        let [qo, ko, vo] = lo.clone().map(|x| heads(&x).unwrap());
        let drop = (p > 0.0)
            .then(|| AttentionDropout::draw(p, B * H * sq * sk, &mut r_flash))
            .transpose()
            .unwrap();
        let flash = Var::flash_attention(&qf, &kf, &vf, Some(&m), scale, drop).unwrap();
        let old = composed([&qo, &ko, &vo], Some(&m), scale, p, true, &mut r_old).unwrap();
        assert_eq!(r_flash, r_old, "the same generator consumption");
        let (yf, gf) = run(&flash, &lf, &w);
        let (yo, go) = run(&old, &lo, &w);
        assert!(
            max_rel_err(&yf, &yo) < 1e-13,
            "out {}",
            max_rel_err(&yf, &yo)
        );
        // The fully masked query gets zeros, as from softmax.
        let row = yf.narrow(0, 0, 1).unwrap().narrow(2, 1, 1).unwrap();
        assert!(row.to_vec_f64().unwrap().iter().all(|&x| x == 0.0));
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(gf.iter().zip(&go)) {
            let e = max_rel_err(a, b);
            assert!(e < 1e-12, "{name} (p {p}): {e}");
        }
    }
}

#[test]
fn the_log_sum_exp_is_kept_per_row_and_infinite_for_a_masked_row() {
    let (sq, sk) = (4, 6);
    let src = sources(sq, sk, DType::F64, 5);
    let [q, k, v] = src
        .clone()
        .map(|x| heads(&Var::constant(x)).unwrap().into_value());
    let m = mask(sq, sk, DType::F64);
    let (_, lse) = Tensor::flash_attention(&q, &k, &v, Some(&m), 0.5, None).unwrap();
    assert_eq!((lse.shape(), lse.dtype()), (&[B, H, sq][..], DType::F64));
    // log Σ exp(z) from the log-softmax of the same logits: z - log_softmax(z) at any unmasked j.
    let z = q.matmul(&k.transpose(2, 3).unwrap()).unwrap();
    let logp = z.log_softmax_last(Some(&m), 0.5).unwrap();
    let want = z
        .affine(0.5, 0.0)
        .unwrap()
        .sub(&logp)
        .unwrap()
        .narrow(3, 0, 1)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    for (idx, (g, w)) in lse.to_vec_f64().unwrap().iter().zip(&want).enumerate() {
        let (b, i) = (idx / (H * sq), idx % sq);
        if b == 0 && i == 1 {
            assert_eq!(*g, f64::INFINITY, "the fully masked row");
        } else {
            assert!((g - w).abs() < 1e-12, "row {idx}: {g} vs {w}");
        }
    }
    // f32 inputs keep an f32 lse (as the kernels do).
    let q32 = q.to_dtype(DType::F32).unwrap();
    let (k32, v32) = (
        k.to_dtype(DType::F32).unwrap(),
        v.to_dtype(DType::F32).unwrap(),
    );
    let m32 = m.to_dtype(DType::F32).unwrap();
    let (out, lse) = Tensor::flash_attention(&q32, &k32, &v32, Some(&m32), 0.5, None).unwrap();
    assert_eq!((out.dtype(), lse.dtype()), (DType::F32, DType::F32));
}

#[test]
fn both_paths_pass_gradcheck() {
    let (sq, sk) = (3, 5);
    let src = sources(sq, sk, DType::F64, 8);
    let m = mask(sq, sk, DType::F64);
    let scale = 0.35;
    let opts = GradcheckOptions::default();
    // A fresh generator per evaluation: every evaluation drops the same probabilities.
    let door = |v: &[Var]| {
        let [q, k, vv] = [&v[0], &v[1], &v[2]].map(|x| heads(x).unwrap());
        let mut rng = Rng::new(2);
        Var::scaled_dot_product_attention(&q, &k, &vv, Some(&m), scale, 0.3, Some(&mut rng))
    };
    gradcheck(door, &src, opts).unwrap();
    let flash = |v: &[Var]| {
        let [q, k, vv] = [&v[0], &v[1], &v[2]].map(|x| heads(x).unwrap());
        let drop = AttentionDropout::draw(0.3, B * H * sq * sk, &mut Rng::new(2))?;
        Var::flash_attention(&q, &k, &vv, Some(&m), scale, Some(drop))
    };
    gradcheck(flash, &src, opts).unwrap();
    // Without a mask or dropout too.
    let plain = |v: &[Var]| {
        let [q, k, vv] = [&v[0], &v[1], &v[2]].map(|x| heads(x).unwrap());
        Var::flash_attention(&q, &k, &vv, None, scale, None)
    };
    gradcheck(plain, &src, opts).unwrap();
}

#[test]
fn on_the_cpu_the_door_never_takes_the_flash_path() {
    let [q, k, v] = sources(4, 4, DType::F32, 4).map(|x| heads(&Var::constant(x)).unwrap());
    assert!(!Tensor::flash_attention_fits(
        q.value(),
        k.value(),
        v.value()
    ));
    // Shape errors come from the composed ops and name them.
    let bad = Var::constant(Tensor::zeros(&[B, H, 4, D + 1], DType::F32, Device::Cpu).unwrap());
    let e = Var::scaled_dot_product_attention(&q, &bad, &v, None, 1.0, 0.0, None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("matmul"), "{e}");
}

/// Inference under bf16 autocast on the CPU takes the fused kernel (`Tensor::attention_bf16`):
/// the composition's bits under the same autocast, as a constant; with gradients on, or with
/// dropout, the door keeps the composition (whose saved probabilities the backward needs).
#[test]
fn cpu_bf16_inference_is_the_composition_bit_for_bit() {
    let scale = (D as f64).powf(-0.5);
    let bf16 = Some(DType::BF16);
    for (sq, sk) in [(5, 5), (4, 40)] {
        let src = sources(sq, sk, DType::F32, 3);
        let m = mask(sq, sk, DType::F32);
        let [q, k, v] = leaves(&src);
        let (q, k, v) = (heads(&q).unwrap(), heads(&k).unwrap(), heads(&v).unwrap());
        let rng = &mut Rng::new(0);
        let want = autograd::autocast(bf16, || {
            composed([&q, &k, &v], Some(&m), scale, 0.1, false, rng)
        })
        .unwrap();
        let door = |p: f64, rng: Option<&mut Rng>| {
            autograd::autocast(bf16, || {
                Var::scaled_dot_product_attention(&q, &k, &v, Some(&m), scale, p, rng)
            })
            .unwrap()
        };
        let fused = autograd::no_grad(|| door(0.0, None));
        assert!(!fused.requires_grad());
        let same = |a: &Var| {
            let (x, y) = (
                a.value().to_vec_f64().unwrap(),
                want.value().to_vec_f64().unwrap(),
            );
            x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits())
        };
        assert!(same(&fused), "{sq}x{sk}: fused inference != composition");
        // The fused output is laid out [B, Sq, H, D] (heads side by side), the composition's
        // [B, H, Sq, D]: which one ran shows in the strides.
        assert!(fused.value().transpose(1, 2).unwrap().is_contiguous());
        let with_grad = door(0.0, None);
        assert!(same(&with_grad) && with_grad.value().is_contiguous());
        let mut r1 = Rng::new(7);
        let dropped = autograd::no_grad(|| door(0.5, Some(&mut r1)));
        assert!(
            dropped.value().is_contiguous(),
            "dropout keeps the composition"
        );
    }
}
