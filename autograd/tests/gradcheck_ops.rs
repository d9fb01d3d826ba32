//! Every differentiable op passes gradcheck (f64 finite differences), on contiguous inputs and
//! on non-contiguous (transposed, narrowed) and broadcast ones. Inputs are drawn fresh from a
//! seeded Philox stream, away from the kinks of relu/abs.

use autograd::{gradcheck, GradcheckOptions, Var};
use tensor::{DType, Device, Result, Rng, Tensor};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(
        shape,
        -1.0,
        1.0,
        DType::F64,
        Device::Cpu,
        &mut Rng::new(seed),
    )
    .unwrap()
}

fn positive(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(
        shape,
        0.5,
        2.0,
        DType::F64,
        Device::Cpu,
        &mut Rng::new(seed),
    )
    .unwrap()
}

fn check<const N: usize>(f: impl Fn(&[Var]) -> Result<Var>, inputs: [Tensor; N]) {
    gradcheck(f, &inputs, GradcheckOptions::default()).unwrap();
}

#[test]
fn binary_ops_with_broadcast_and_transposed_inputs() {
    let a = rand(&[3, 4], 1);
    let b = rand(&[4], 2); // broadcast over rows
    let bt = positive(&[4, 3], 3); // used transposed
    check(|v| v[0].add(&v[1]), [a.clone(), b.clone()]);
    check(|v| v[0].sub(&v[1]), [a.clone(), b.clone()]);
    check(|v| v[0].mul(&v[1].t()?), [a.clone(), bt.clone()]);
    check(|v| v[0].div(&v[1].t()?), [a.clone(), bt.clone()]);
    // The same input used twice accumulates both gradients.
    check(|v| v[0].mul(&v[0])?.add(&v[0]), [a.clone()]);
    check(
        |v| v[0].affine(2.5, -1.0)?.add_scalar(3.0)?.mul_scalar(-0.5),
        [a.clone()],
    );
    check(|v| v[0].powf(2.5), [positive(&[5], 4)]);
}

#[test]
fn unary_ops() {
    let x = rand(&[2, 3, 4], 5);
    let p = positive(&[2, 3, 4], 6);
    check(|v| v[0].neg(), [x.clone()]);
    check(|v| v[0].exp(), [x.clone()]);
    check(|v| v[0].log(), [p.clone()]);
    check(|v| v[0].sqrt(), [p.clone()]);
    check(|v| v[0].tanh(), [x.clone()]);
    check(|v| v[0].sigmoid(), [x.clone()]);
    check(|v| v[0].sqr(), [x.clone()]);
    // Away from 0 for the kinks: shift magnitudes into [0.5, 2] with random signs.
    let signed = p
        .mul(
            &x.gt(&Tensor::zeros(&[], DType::F64, Device::Cpu).unwrap())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .affine(2.0, -1.0)
                .unwrap(),
        )
        .unwrap();
    check(|v| v[0].relu(), [signed.clone()]);
    check(|v| v[0].abs(), [signed]);
    check(|v| v[0].transpose(0, 2)?.exp(), [x]);
}

#[test]
fn reductions() {
    let x = rand(&[3, 4, 5], 7);
    check(|v| v[0].sum(&[1], false), [x.clone()]);
    check(|v| v[0].sum(&[0, 2], true), [x.clone()]);
    check(|v| v[0].mean(&[2], false), [x.clone()]);
    check(|v| v[0].sum_all(), [x.clone()]);
    check(|v| v[0].permute(&[2, 0, 1])?.mean_all(), [x]);
}

#[test]
fn views_and_concatenation() {
    let x = rand(&[2, 3, 4], 8);
    let y = rand(&[2, 2, 4], 9);
    check(|v| v[0].reshape(&[6, 4])?.t()?.contiguous(), [x.clone()]);
    check(|v| v[0].permute(&[1, 2, 0])?.narrow(1, 1, 2), [x.clone()]);
    check(
        |v| v[0].unsqueeze(1)?.broadcast_to(&[2, 5, 3, 4]),
        [x.clone()],
    );
    check(|v| Var::cat(&[&v[0], &v[1]], 1), [x.clone(), y]);
    check(
        |v| {
            let parts = v[0].split(&[1, 2], 1)?;
            parts[1].mul(&parts[0])
        },
        [x],
    );
}

#[test]
fn matmul_batched_broadcast_and_transposed() {
    let a = rand(&[2, 3, 4], 10);
    let b = rand(&[4, 5], 11); // broadcast over the batch
    let bt = rand(&[2, 5, 4], 12); // used transposed
    check(|v| v[0].matmul(&v[1]), [a.clone(), b]);
    check(|v| v[0].matmul(&v[1].t()?), [a.clone(), bt]);
    check(|v| v[0].t()?.matmul(&v[0]), [a]);
}

#[test]
fn matmul_bias_with_transposed_weight() {
    let x = rand(&[3, 4], 40);
    let w = rand(&[5, 4], 41); // used as w.t(), as the linear layer does
    let b = rand(&[5], 42);
    check(|v| v[0].matmul_bias(&v[1].t()?, &v[2]), [x, w, b]);
}

#[test]
fn softmax_with_mask_and_scale() {
    let x = rand(&[2, 3, 5], 13);
    let mask_vals: Vec<f64> = vec![0.0, 0.0, -1e4, 0.0, -1e4, 0.0, 0.0, 0.0, 0.0, -1e4];
    let mask = Tensor::from_vec(mask_vals, &[2, 1, 5]).unwrap();
    let m = mask.clone();
    check(move |v| v[0].softmax_last(Some(&m), 0.7), [x.clone()]);
    // log-softmax returns the masked logits themselves (about -1e4), whose rounding would swamp
    // the finite differences, so its mask is moderate (-5).
    let soft_mask = mask.mul_scalar(5e-4).unwrap();
    check(
        move |v| v[0].log_softmax_last(Some(&soft_mask), 1.3),
        [x.clone()],
    );
    check(|v| v[0].transpose(1, 2)?.softmax_last(None, 1.0), [x]);
}

#[test]
fn layer_norm_all_inputs() {
    let x = rand(&[4, 6], 14);
    let w = rand(&[6], 15);
    let b = rand(&[6], 16);
    check(|v| v[0].layer_norm(&v[1], &v[2], 1e-5), [x, w.clone(), b]);
    // A transposed input, and a bias that is a narrowed view of a longer vector.
    check(
        |v| v[0].t()?.layer_norm(&v[1], &v[2].narrow(0, 2, 6)?, 1e-12),
        [rand(&[6, 4], 17), w, rand(&[9], 18)],
    );
}

#[test]
fn gelu_fused() {
    let x = Tensor::rand_uniform(
        &[3, 7],
        -4.0,
        4.0,
        DType::F64,
        Device::Cpu,
        &mut Rng::new(19),
    )
    .unwrap();
    check(|v| v[0].gelu(), [x.clone()]);
    check(|v| v[0].t()?.gelu(), [x]);
}

#[test]
fn cross_entropy_with_ignored_rows() {
    let logits = rand(&[5, 7], 20);
    let targets = Tensor::from_vec(vec![3i64, -100, 0, 6, -100], &[5]).unwrap();
    let t = targets.clone();
    check(move |v| v[0].cross_entropy(&t, -100), [logits.clone()]);
    check(
        move |v| {
            v[0].t()?
                .t()?
                .mul_scalar(2.0)?
                .cross_entropy(&targets, -100)
        },
        [logits],
    );
}

#[test]
fn embedding_index_select_gather_with_repeats() {
    let table = rand(&[6, 3], 21);
    let ids = Tensor::from_vec(vec![1i64, 4, 1, 5, 0, 1], &[2, 3]).unwrap();
    let i2 = ids.clone();
    check(move |v| v[0].embedding(&i2, None), [table.clone()]);
    let idx = Tensor::from_vec(vec![2i64, 0, 2], &[3]).unwrap();
    check(move |v| v[0].index_select(0, &idx), [table.clone()]);
    let gidx = Tensor::from_vec(vec![0i64, 2, 2, 1, 0, 0], &[2, 3]).unwrap();
    check(move |v| v[0].narrow(0, 0, 2)?.gather(1, &gidx), [table]);
}

#[test]
fn dropout_backward_uses_the_forward_mask() {
    let x = rand(&[4, 8], 22);
    // A fresh generator with the same seed inside every call gives the same mask each time, so
    // the finite differences see the same function.
    check(|v| v[0].dropout(0.3, true, &mut Rng::new(99)), [x.clone()]);
    let y = Var::param(x.clone())
        .dropout(0.3, false, &mut Rng::new(1))
        .unwrap();
    assert_eq!(
        y.value().to_vec::<f64>().unwrap(),
        x.to_vec::<f64>().unwrap()
    );
}

#[test]
fn dropout_add_is_dropout_then_add_with_both_gradients() {
    let (x, r) = (rand(&[4, 8], 25), rand(&[4, 8], 26));
    check(
        |v| v[0].dropout_add(&v[1], 0.3, true, &mut Rng::new(98)),
        [x.clone(), r.clone()],
    );
    // The same values and generator consumption as the two ops.
    let (mut r1, mut r2) = (Rng::new(97), Rng::new(97));
    let (vx, vr) = (Var::param(x.clone()), Var::param(r.clone()));
    let fused = vx.dropout_add(&vr, 0.3, true, &mut r1).unwrap();
    let composed = vx.dropout(0.3, true, &mut r2).unwrap().add(&vr).unwrap();
    assert_eq!(
        fused.value().to_vec::<f64>().unwrap(),
        composed.value().to_vec::<f64>().unwrap()
    );
    assert_eq!(r1, r2);
}

#[test]
fn gradients_reach_only_leaves_that_require_them() {
    let a = Var::param(rand(&[3], 23));
    let c = Var::constant(rand(&[3], 24));
    let loss = a.mul(&c).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(
        g.get(&a).unwrap().to_vec::<f64>().unwrap(),
        c.value().to_vec::<f64>().unwrap()
    );
    assert!(g.get(&c).is_none());
    // Under no_grad nothing is recorded.
    let y = autograd::no_grad(|| a.exp().unwrap());
    assert!(!y.requires_grad());
    // backward on a non-scalar is an error naming the op, not a panic.
    let err = a.exp().unwrap().backward().err().unwrap().to_string();
    assert!(err.contains("backward"), "{err}");
}

#[test]
fn embedding_padding_row_gets_no_gradient() {
    let table = Var::param(rand(&[6, 3], 25));
    let ids = Tensor::from_vec(vec![1i64, 4, 1, 0], &[4]).unwrap();
    let g_pad = table
        .embedding(&ids, Some(1))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_all = table
        .embedding(&ids, None)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (p, a) = (
        g_pad.get(&table).unwrap().to_vec::<f64>().unwrap(),
        g_all.get(&table).unwrap().to_vec::<f64>().unwrap(),
    );
    assert_eq!(&a[3..6], &[2.0, 2.0, 2.0]); // id 1 used twice
    assert_eq!(&p[3..6], &[0.0, 0.0, 0.0]);
    assert_eq!(&p[..3], &a[..3]);
    assert_eq!(&p[6..], &a[6..]);
}
