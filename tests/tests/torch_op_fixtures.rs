//! Our ops against PyTorch's, on the fixed inputs in `tests/fixtures/ops.safetensors` (written by
//! `scripts/gen_op_fixtures.py`). The error measure is max |ours - torch| / max |torch| over each
//! tensor, and must be below 1e-5 for f32.

use tensor::safetensors::SafeTensors;
use tensor::testing::max_rel_err;
use tensor::{Result, Tensor};

const TOL: f64 = 1e-5;

fn fixtures() -> SafeTensors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ops.safetensors");
    SafeTensors::open(path).unwrap()
}

fn get(f: &SafeTensors, name: &str) -> Tensor {
    f.get(name)
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn scalar(f: &SafeTensors, name: &str) -> f64 {
    get(f, name).to_vec_f64().unwrap()[0]
}

/// Fails with the tensor's name when ours differs from torch's by more than TOL (relative to
/// torch's largest magnitude).
fn assert_close(name: &str, ours: &Tensor, want: &Tensor) {
    assert_eq!(ours.shape(), want.shape(), "{name}: shape");
    let err = max_rel_err(ours, want);
    assert!(err < TOL, "{name}: relative error {err:e} >= {TOL:e}");
}

fn run_softmax(f: &SafeTensors, prefix: &str, log: bool) -> Result<()> {
    let name = |r: &str| format!("{prefix}.{r}");
    let (x, mask) = (get(f, &name("x")), get(f, &name("mask")));
    let scale = scalar(f, &name("scale"));
    let y = if log {
        x.log_softmax_last(Some(&mask), scale)?
    } else {
        x.softmax_last(Some(&mask), scale)?
    };
    assert_close(&name("y"), &y, &get(f, &name("y")));
    let dy = get(f, &name("dy"));
    let dx = if log {
        Tensor::log_softmax_backward(&y, &dy, scale)?
    } else {
        Tensor::softmax_backward(&y, &dy, scale)?
    };
    assert_close(&name("dx"), &dx, &get(f, &name("dx")));
    Ok(())
}

#[test]
fn softmax_with_mask_and_scale_matches_torch() {
    run_softmax(&fixtures(), "softmax", false).unwrap();
}

#[test]
fn log_softmax_with_mask_and_scale_matches_torch() {
    run_softmax(&fixtures(), "log_softmax", true).unwrap();
}

#[test]
fn layer_norm_forward_and_backward_match_torch() {
    let f = fixtures();
    let (x, w, b) = (
        get(&f, "layer_norm.x"),
        get(&f, "layer_norm.weight"),
        get(&f, "layer_norm.bias"),
    );
    let (y, mean, rstd) = x.layer_norm(&w, &b, scalar(&f, "layer_norm.eps")).unwrap();
    assert_close("layer_norm.y", &y, &get(&f, "layer_norm.y"));
    let (dx, dw, db) =
        Tensor::layer_norm_backward(&x, &w, &mean, &rstd, &get(&f, "layer_norm.dy")).unwrap();
    assert_close("layer_norm.dx", &dx, &get(&f, "layer_norm.dx"));
    assert_close("layer_norm.dweight", &dw, &get(&f, "layer_norm.dweight"));
    assert_close("layer_norm.dbias", &db, &get(&f, "layer_norm.dbias"));
}

#[test]
fn cross_entropy_with_ignore_index_matches_torch() {
    let f = fixtures();
    let (logits, target) = (
        get(&f, "cross_entropy.logits"),
        get(&f, "cross_entropy.target"),
    );
    let (loss, lse) = Tensor::cross_entropy(&logits, &target, -100).unwrap();
    assert_close("cross_entropy.loss", &loss, &get(&f, "cross_entropy.loss"));
    let d = Tensor::cross_entropy_backward(&logits, &target, &lse, -100, 1.0).unwrap();
    assert_close(
        "cross_entropy.dlogits",
        &d,
        &get(&f, "cross_entropy.dlogits"),
    );
}

#[test]
fn batched_matmul_with_transposed_operands_matches_torch() {
    let f = fixtures();
    let (a, b) = (get(&f, "matmul_bt.a"), get(&f, "matmul_bt.b"));
    assert_close(
        "matmul_bt.y",
        &a.matmul(&b.t().unwrap()).unwrap(),
        &get(&f, "matmul_bt.y"),
    );
    let (a, b) = (get(&f, "matmul_at.a"), get(&f, "matmul_at.b"));
    assert_close(
        "matmul_at.y",
        &a.t().unwrap().matmul(&b).unwrap(),
        &get(&f, "matmul_at.y"),
    );
    let (a, b) = (get(&f, "matmul_bcast.a"), get(&f, "matmul_bcast.b"));
    assert_close(
        "matmul_bcast.y",
        &a.matmul(&b).unwrap(),
        &get(&f, "matmul_bcast.y"),
    );
}

#[test]
fn gelu_forward_and_backward_match_torch() {
    let f = fixtures();
    let x = get(&f, "gelu.x");
    assert_close("gelu.y", &x.gelu().unwrap(), &get(&f, "gelu.y"));
    let dx = Tensor::gelu_backward(&x, &get(&f, "gelu.dy")).unwrap();
    assert_close("gelu.dx", &dx, &get(&f, "gelu.dx"));
}
