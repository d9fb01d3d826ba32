//! Parity of every wired CUDA op with the CPU on random inputs (f32 within 1e-5, f16/bf16 within
//! 1e-2, relative to the largest CPU magnitude), plus transfers and the device errors. Each test
//! skips with a printed reason when no CUDA device is available.

use crate::testing::{max_rel_err, randn, uniform};
use crate::{DType, Device, Result, Tensor};

/// `cuda:0`, or `None` after printing why CUDA cannot be used here.
pub(super) use crate::testing::cuda_or_skip as gpu_or_skip;

pub(super) const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn tolerance(dtype: DType) -> f64 {
    if matches!(dtype, DType::F32 | DType::F64) {
        1e-5
    } else {
        1e-2
    }
}

/// Copies of `inputs` on `dev`.
pub(super) fn on_device(dev: Device, inputs: &[&Tensor]) -> Vec<Tensor> {
    inputs.iter().map(|t| t.to_device(dev).unwrap()).collect()
}

/// Runs `f` on `inputs` on the CPU and on `dev`, checks the results have the same dtype and
/// shape and that the CUDA one is on `dev`, and returns (CPU result, CUDA result moved to the
/// CPU).
pub(super) fn run_both(
    what: &str,
    dev: Device,
    inputs: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Tensor) {
    let on_cpu: Vec<Tensor> = inputs.iter().map(|&t| t.clone()).collect();
    let want = f(&on_cpu).unwrap_or_else(|e| panic!("{what} on the CPU: {e}"));
    let got = f(&on_device(dev, inputs)).unwrap_or_else(|e| panic!("{what} on {dev}: {e}"));
    assert_eq!(got.device(), dev, "{what}: result device");
    assert_eq!(
        (got.shape(), got.dtype()),
        (want.shape(), want.dtype()),
        "{what}"
    );
    (want, got.to_device(Device::Cpu).unwrap())
}

/// Runs `f` on `inputs` on the CPU and on `dev`, and checks the results agree within `dtype`'s
/// tolerance, with the same dtype and shape, the CUDA one on `dev`.
pub(super) fn parity(
    what: &str,
    dev: Device,
    dtype: DType,
    inputs: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let (want, got) = run_both(what, dev, inputs, f);
    let err = max_rel_err(&got, &want);
    assert!(
        err <= tolerance(dtype),
        "{what} ({dtype}): relative error {err}"
    );
}

pub(super) fn randn_as(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    randn(shape, 1.0, DType::F32, seed).to_dtype(dtype).unwrap()
}

#[test]
fn transfers_round_trip_every_dtype_and_view() {
    let Some(dev) = gpu_or_skip("transfers_round_trip_every_dtype_and_view") else {
        return;
    };
    for dtype in [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::U8,
    ] {
        let x = uniform(&[3, 4], 0.0, 100.0, DType::F32, 1)
            .to_dtype(dtype)
            .unwrap();
        for view in [x.clone(), x.t().unwrap(), x.narrow(1, 1, 2).unwrap()] {
            let g = view.to_device(dev).unwrap();
            assert_eq!(
                (g.device(), g.dtype(), g.shape()),
                (dev, dtype, view.shape())
            );
            assert_eq!(
                g.to_vec_f64().unwrap(),
                view.to_vec_f64().unwrap(),
                "{dtype}"
            );
            // Views of a device tensor download through their layout too.
            let back = g.t().unwrap().to_device(Device::Cpu).unwrap();
            assert_eq!(
                back.to_vec_f64().unwrap(),
                view.t().unwrap().to_vec_f64().unwrap()
            );
        }
        let z = Tensor::zeros(&[2, 3], dtype, dev).unwrap();
        assert_eq!(z.to_vec_f64().unwrap(), vec![0.0; 6]);
        let o = Tensor::ones(&[2], dtype, dev).unwrap();
        assert_eq!((o.device(), o.to_vec_f64().unwrap()), (dev, vec![1.0; 2]));
    }
}

#[test]
fn elementwise_matches_the_cpu() {
    let Some(dev) = gpu_or_skip("elementwise_matches_the_cpu") else {
        return;
    };
    for dtype in FLOATS {
        let a = randn_as(&[4, 3, 5], dtype, 2);
        let b = randn_as(&[5, 3], dtype, 3); // transposed below: a strided, broadcast operand
        let pos = uniform(&[4, 5], 0.5, 2.0, DType::F32, 4)
            .to_dtype(dtype)
            .unwrap();
        let pair = [&a, &b];
        type Bin = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let binaries: [(&str, Bin); 6] = [
            ("add", Tensor::add),
            ("sub", Tensor::sub),
            ("mul", Tensor::mul),
            ("div", Tensor::div),
            ("maximum", Tensor::maximum),
            ("minimum", Tensor::minimum),
        ];
        for (name, f) in binaries {
            parity(name, dev, dtype, &pair, |t| f(&t[0], &t[1].t()?));
        }
        type Un = fn(&Tensor) -> Result<Tensor>;
        let unaries: [(&str, Un); 12] = [
            ("neg", Tensor::neg),
            ("exp", Tensor::exp),
            ("log", Tensor::log),
            ("sqrt", Tensor::sqrt),
            ("rsqrt", Tensor::rsqrt),
            ("tanh", Tensor::tanh),
            ("erf", Tensor::erf),
            ("relu", Tensor::relu),
            ("sigmoid", Tensor::sigmoid),
            ("abs", Tensor::abs),
            ("sqr", Tensor::sqr),
            ("recip", Tensor::recip),
        ];
        for (name, f) in unaries {
            // Positive inputs, read through a transposed view.
            parity(name, dev, dtype, &[&pos], |t| f(&t[0].t()?));
        }
        let one = [&a];
        parity("add_scalar", dev, dtype, &one, |t| t[0].add_scalar(0.5));
        parity("div_scalar", dev, dtype, &one, |t| t[0].div_scalar(3.0));
        parity("maximum_scalar", dev, dtype, &one, |t| {
            t[0].maximum_scalar(0.1)
        });
        parity("affine", dev, dtype, &one, |t| t[0].affine(1.5, -0.25));
        parity("powf", dev, dtype, &[&pos], |t| t[0].powf(1.7));
        parity("where_cond", dev, dtype, &pair, |t| {
            let c = t[0].gt(&t[1].t()?)?;
            c.where_cond(&t[0], &t[1].t()?)
        });
        parity("masked_fill", dev, dtype, &pair, |t| {
            t[0].masked_fill(&t[0].lt(&t[1].t()?)?, -4.0)
        });
    }
}

#[test]
fn comparisons_match_the_cpu() {
    let Some(dev) = gpu_or_skip("comparisons_match_the_cpu") else {
        return;
    };
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::I64, DType::U8] {
        let a = uniform(&[6, 4], 0.0, 5.0, DType::F32, 5)
            .to_dtype(dtype)
            .unwrap();
        let b = uniform(&[4], 0.0, 5.0, DType::F32, 6)
            .to_dtype(dtype)
            .unwrap();
        type Cmp = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let cmps: [(&str, Cmp); 6] = [
            ("eq", Tensor::eq),
            ("ne", Tensor::ne),
            ("lt", Tensor::lt),
            ("le", Tensor::le),
            ("gt", Tensor::gt),
            ("ge", Tensor::ge),
        ];
        for (name, f) in cmps {
            // Exact: both sides compare the same values.
            parity(name, dev, DType::F32, &[&a, &b], |t| f(&t[0], &t[1]));
        }
    }
}

#[test]
fn casts_match_the_cpu() {
    let Some(dev) = gpu_or_skip("casts_match_the_cpu") else {
        return;
    };
    let all = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::U8,
    ];
    for from in all {
        let x = uniform(&[5, 3], -20.0, 300.0, DType::F32, 7)
            .to_dtype(from)
            .unwrap();
        for to in all {
            // Each side converts the same values once: the results agree exactly.
            parity("cast", dev, DType::F32, &[&x], |t| t[0].t()?.to_dtype(to));
        }
    }
}

#[test]
fn matmul_matches_the_cpu() {
    let Some(dev) = gpu_or_skip("matmul_matches_the_cpu") else {
        return;
    };
    for dtype in FLOATS {
        let x = randn_as(&[2, 3, 5, 8], dtype, 8);
        let w = randn_as(&[3, 6, 8], dtype, 9); // used transposed: [3, 8, 6]
        let v = randn_as(&[4, 8, 2, 3], dtype, 10); // a permuted, non-mergeable batch view
        let bias = randn_as(&[6], dtype, 11);
        let xw = [&x, &w];
        parity("matmul", dev, dtype, &xw, |t| {
            t[0].matmul(&t[1].transpose(1, 2)?)
        });
        parity("matmul (copied operand)", dev, dtype, &[&x, &v], |t| {
            t[0].matmul(&t[1].permute(&[2, 3, 1, 0])?.narrow(3, 0, 3)?)
        });
        let x2 = randn_as(&[7, 8], dtype, 12);
        parity("matmul_bias", dev, dtype, &[&x2, &w, &bias], |t| {
            let w = t[1].narrow(0, 0, 1)?.squeeze(0)?.t()?;
            t[0].matmul_bias(&w, &t[2])
        });
    }
}

#[test]
fn mixed_devices_are_clear_errors() {
    let Some(dev) = gpu_or_skip("mixed_devices_are_clear_errors") else {
        return;
    };
    let a = randn(&[2, 3], 1.0, DType::F32, 13);
    let g = a.to_device(dev).unwrap();
    let e = a.add(&g).unwrap_err().to_string();
    assert!(
        e.contains("add") && e.contains("cpu") && e.contains("cuda:0"),
        "{e}"
    );
    let e = a.matmul(&g.t().unwrap()).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("cuda:0"), "{e}");
}

#[test]
fn gelu_and_softmax_match_the_cpu() {
    let Some(dev) = gpu_or_skip("gelu_and_softmax_match_the_cpu") else {
        return;
    };
    for dtype in FLOATS {
        let x = randn_as(&[2, 3, 4, 7], dtype, 14);
        let dy = randn_as(&[2, 3, 4, 7], dtype, 15);
        // A [B, 1, 1, S] padding mask (0 or -1e4), and a transposed (copied) mask.
        let keep = uniform(&[2, 1, 1, 7], 0.0, 1.0, DType::F32, 16).gt(&Tensor::full(
            0.3,
            &[],
            DType::F32,
            Device::Cpu,
        )
        .unwrap());
        let mask = keep
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
            .affine(1e4, -1e4)
            .unwrap();
        let tmask = randn_as(&[7, 4], dtype, 17);
        let xd = [&x, &dy];
        parity("gelu", dev, dtype, &[&x], |t| t[0].t()?.gelu());
        parity("gelu_backward", dev, dtype, &xd, |t| {
            Tensor::gelu_backward(&t[0], &t[1])
        });
        for log in [false, true] {
            let fwd = |t: &[Tensor], m: Option<&Tensor>| {
                if log {
                    t[0].log_softmax_last(m, 0.5)
                } else {
                    t[0].softmax_last(m, 0.5)
                }
            };
            parity("softmax", dev, dtype, &[&x], |t| fwd(t, None));
            parity("softmax (mask)", dev, dtype, &[&x, &mask], |t| {
                fwd(t, Some(&t[1]))
            });
            parity("softmax (strided mask)", dev, dtype, &[&x, &tmask], |t| {
                fwd(t, Some(&t[1].t()?))
            });
            parity("softmax_backward", dev, dtype, &xd, |t| {
                let y = fwd(t, None)?;
                if log {
                    Tensor::log_softmax_backward(&y, &t[1], 0.5)
                } else {
                    Tensor::softmax_backward(&y, &t[1], 0.5)
                }
            });
        }
    }
}

#[test]
fn layer_norm_matches_the_cpu() {
    let Some(dev) = gpu_or_skip("layer_norm_matches_the_cpu") else {
        return;
    };
    for dtype in FLOATS {
        // Same-dtype weights, and f32 weights for half activations (mixed precision).
        let wdtypes: &[DType] = if dtype == DType::F32 {
            &[DType::F32]
        } else {
            &[dtype, DType::F32]
        };
        for &wd in wdtypes {
            let x = randn_as(&[3, 5, 16], dtype, 18);
            let w = uniform(&[16], 0.5, 1.5, DType::F32, 19)
                .to_dtype(wd)
                .unwrap();
            let b = randn_as(&[16], wd, 20);
            let dy = randn_as(&[3, 5, 16], dtype, 21);
            let ins = [&x, &w, &b, &dy];
            for part in 0..6 {
                parity("layer_norm", dev, dtype, &ins, |t| {
                    let (y, mean, rstd) = t[0].layer_norm(&t[1], &t[2], 1e-12)?;
                    let (dx, dw, db) =
                        Tensor::layer_norm_backward(&t[0], &t[1], &mean, &rstd, &t[3])?;
                    Ok([y, mean, rstd, dx, dw, db][part].clone())
                });
            }
        }
    }
}

#[test]
fn cross_entropy_matches_the_cpu() {
    // Serial: it reads the GPU's status words, which other tests' bad ids would also set.
    let Some((dev, _serial)) = crate::testing::serial_cuda_or_skip("cross_entropy_matches_the_cpu")
    else {
        return;
    };
    for dtype in FLOATS {
        let logits = randn_as(&[6, 11], dtype, 22);
        let targets = Tensor::from_vec(vec![3i64, -100, 0, 10, 7, -100], &[6]).unwrap();
        let ins = [&logits, &targets];
        parity("cross_entropy", dev, dtype, &ins, |t| {
            Ok(Tensor::cross_entropy(&t[0], &t[1], -100)?.0)
        });
        parity("cross_entropy lse", dev, dtype, &ins, |t| {
            Ok(Tensor::cross_entropy(&t[0], &t[1], -100)?.1)
        });
        parity("cross_entropy_backward", dev, dtype, &ins, |t| {
            let (_, lse) = Tensor::cross_entropy(&t[0], &t[1], -100)?;
            Tensor::cross_entropy_backward(&t[0], &t[1], &lse, -100, 0.75)
        });
        // The loss gradient read from the logits' device (no download on a GPU).
        parity("cross_entropy_backward_by", dev, dtype, &ins, |t| {
            let (_, lse) = Tensor::cross_entropy(&t[0], &t[1], -100)?;
            let g = Tensor::from_vec(vec![0.75f32], &[])?.to_device(t[0].device())?;
            Tensor::cross_entropy_backward_by(&t[0], &t[1], &lse, -100, &g)
        });
    }
    // A bad target: an error at once on the CPU; on the GPU, at the status check, naming the op.
    let logits = randn_as(&[2, 11], DType::F32, 25);
    let bad = Tensor::from_vec(vec![3i64, 11], &[2]).unwrap();
    let cpu = Tensor::cross_entropy(&logits, &bad, -100).unwrap_err();
    assert!(cpu.to_string().contains("11"), "{cpu}");
    dev.check_status().unwrap();
    let (gl, gb) = (logits.to_device(dev).unwrap(), bad.to_device(dev).unwrap());
    Tensor::cross_entropy(&gl, &gb, -100).unwrap();
    let e = dev.check_status().unwrap_err().to_string();
    assert!(
        e.contains("cross_entropy: target 11 is out of range"),
        "{e}"
    );
}

#[test]
fn embedding_matches_the_cpu() {
    // Serial: it reads the GPU's status words, which other tests' bad ids would also set.
    let Some((dev, _serial)) = crate::testing::serial_cuda_or_skip("embedding_matches_the_cpu")
    else {
        return;
    };
    let ids = Tensor::from_vec(vec![3i64, 0, 9, 3, 5, 3], &[2, 3]).unwrap();
    for dtype in FLOATS {
        let table = randn_as(&[10, 8], dtype, 23);
        let dy = randn_as(&[2, 3, 8], dtype, 24);
        parity("embedding", dev, dtype, &[&table, &ids], |t| {
            Tensor::embedding(&t[0], &t[1])
        });
        parity("embedding_backward", dev, dtype, &[&ids, &dy], |t| {
            Tensor::embedding_backward(&t[0], &t[1], 10)
        });
    }
    let g = ids.to_device(dev).unwrap();
    let bad = Tensor::from_vec(vec![10i64], &[1])
        .unwrap()
        .to_device(dev)
        .unwrap();
    let table = randn_as(&[10, 8], DType::F32, 25).to_device(dev).unwrap();
    dev.check_status().unwrap();
    assert!(Tensor::embedding(&table, &g).is_ok());
    dev.check_status().unwrap();
    // A bad id is found by the kernel and reported at the next status check, naming the op.
    assert!(Tensor::embedding(&table, &bad).is_ok());
    let e = dev.check_status().unwrap_err().to_string();
    assert!(e.contains("embedding: index 10 is out of range"), "{e}");
}

#[test]
fn reductions_match_the_cpu() {
    let Some(dev) = gpu_or_skip("reductions_match_the_cpu") else {
        return;
    };
    for dtype in FLOATS {
        let x = randn_as(&[3, 4, 5, 6], dtype, 26);
        let one = [&x];
        // Adjacent dims, split dims (permuted first), everything, nothing; through a view.
        for dims in [&[1usize, 2][..], &[0, 2], &[3], &[0, 1, 2, 3], &[]] {
            for keepdim in [false, true] {
                parity("sum", dev, dtype, &one, |t| t[0].sum(dims, keepdim));
                parity("mean", dev, dtype, &one, |t| t[0].t()?.mean(dims, keepdim));
                if !dims.is_empty() {
                    parity("var", dev, dtype, &one, |t| t[0].var(dims, keepdim, 1));
                }
            }
        }
        parity("norm_l2", dev, dtype, &one, |t| t[0].norm_l2());
        parity("sum_to_shape", dev, dtype, &one, |t| {
            t[0].sum_to_shape(&[4, 1, 6])
        });
        for dim in 0..4 {
            parity("max", dev, dtype, &one, |t| t[0].max(dim, false));
            parity("min", dev, dtype, &one, |t| t[0].min(dim, true));
            parity("argmax", dev, dtype, &one, |t| t[0].argmax(dim, false));
            parity("argmin", dev, dtype, &one, |t| t[0].argmin(dim, false));
        }
    }
}

#[test]
fn dropout_matches_the_cpu() {
    let Some(dev) = gpu_or_skip("dropout_matches_the_cpu") else {
        return;
    };
    for dtype in FLOATS {
        let x = randn_as(&[5, 37], dtype, 27);
        let dy = randn_as(&[5, 37], dtype, 28);
        // The same generator state on both sides draws the same mask.
        for part in 0..3 {
            parity("dropout", dev, dtype, &[&x, &dy], |t| {
                let (out, keep) = t[0].dropout(0.3, &mut crate::Rng::new(29))?;
                let dx = Tensor::dropout_backward(&t[1], &keep, 0.3)?;
                Ok([out, keep.to_dtype(dtype)?, dx][part].clone())
            });
        }
    }
}

/// The fused dropout + residual add: the same bits as the CPU's dropout followed by add (a
/// transposed input and residual, so the kernel's operands are made contiguous first), the same
/// keep mask, and the same generator consumption as `dropout`.
#[test]
fn dropout_add_matches_the_cpu_bit_for_bit() {
    let Some(dev) = gpu_or_skip("dropout_add_matches_the_cpu_bit_for_bit") else {
        return;
    };
    for dtype in FLOATS {
        let x = randn_as(&[37, 5], dtype, 31).t().unwrap();
        let r = randn_as(&[37, 5], dtype, 32).t().unwrap();
        let run = |dev: Device| {
            let mut rng = crate::Rng::new(33);
            let [x, r] = [&x, &r].map(|t| t.to_device(dev).unwrap());
            let (out, keep) = x.dropout_add(&r, 0.3, &mut rng).unwrap();
            let cpu = |t: Tensor| t.to_device(Device::Cpu).unwrap().to_vec_f64().unwrap();
            (cpu(out), cpu(keep), rng)
        };
        let (want, want_keep, want_rng) = run(Device::Cpu);
        let (got, got_keep, got_rng) = run(dev);
        assert_eq!(got, want, "dropout_add {dtype}");
        assert_eq!(got_keep, want_keep, "dropout_add mask {dtype}");
        assert_eq!(got_rng, want_rng, "dropout_add rng {dtype}");
        // And the CPU's fused op is dropout then add, drawn the same way.
        let mut rng = crate::Rng::new(33);
        let (y, keep) = x.dropout(0.3, &mut rng).unwrap();
        assert_eq!(y.add(&r).unwrap().to_vec_f64().unwrap(), want);
        assert_eq!(keep.to_vec_f64().unwrap(), want_keep);
        assert_eq!(rng, want_rng);
    }
}

/// A half branch added into an f32 residual (autocast's residual add, `dropout_add_<t>_f32`): f32
/// out, bit for bit the CPU's (the half dropout, cast, then the f32 add), on transposed views,
/// the same mask and draws; and its backward from an f32 gradient into the half dtype
/// (`dropout_apply_f32_<t>`), bit for bit the CPU's f32 backward rounded once.
#[test]
fn mixed_dropout_add_and_its_backward_match_the_cpu_bit_for_bit() {
    let Some(dev) = gpu_or_skip("mixed_dropout_add_and_its_backward_match_the_cpu_bit_for_bit")
    else {
        return;
    };
    for half in [DType::F16, DType::BF16] {
        let x = randn_as(&[37, 6], half, 41).t().unwrap();
        let r = randn_as(&[6, 37], DType::F32, 42);
        let g = randn_as(&[37, 6], DType::F32, 43).t().unwrap();
        let run = |dev: Device| {
            let mut rng = crate::Rng::new(44);
            let [x, r, g] = [&x, &r, &g].map(|t| t.to_device(dev).unwrap());
            let (out, keep) = x.dropout_add(&r, 0.3, &mut rng).unwrap();
            assert_eq!(out.dtype(), DType::F32, "{half}");
            let dx = Tensor::dropout_backward_to(&g, &keep, 0.3, half).unwrap();
            assert_eq!(dx.dtype(), half);
            let cpu = |t: Tensor| t.to_device(Device::Cpu).unwrap().to_vec_f64().unwrap();
            (cpu(out), cpu(keep), cpu(dx), rng)
        };
        let want = run(Device::Cpu);
        let got = run(dev);
        assert_eq!(got.0, want.0, "dropout_add {half} + f32");
        assert_eq!(got.1, want.1, "mask {half}");
        assert_eq!(got.2, want.2, "backward f32 -> {half}");
        assert_eq!(got.3, want.3, "rng {half}");
        assert!(
            got.1.contains(&0.0) && got.1.contains(&1.0),
            "both kept and dropped"
        );
        // The CPU reference is the plain ops: the half dropout cast to f32, plus the residual.
        let mut rng = crate::Rng::new(44);
        let (y, _) = x.dropout(0.3, &mut rng).unwrap();
        let sum = y.to_dtype(DType::F32).unwrap().add(&r).unwrap();
        assert_eq!(sum.to_vec_f64().unwrap(), want.0);
    }
    // Other dtype pairs are refused with the op's name.
    let (x, r) = (
        randn_as(&[4], DType::F32, 1),
        randn_as(&[4], DType::BF16, 2),
    );
    let err = x.dropout_add(&r, 0.1, &mut crate::Rng::new(1)).unwrap_err();
    assert!(err.to_string().contains("dropout_add"), "{err}");
}

#[test]
fn topk_matches_the_cpu() {
    let Some(dev) = gpu_or_skip("topk_matches_the_cpu") else {
        return;
    };
    for dtype in FLOATS {
        // Few distinct values: many ties, which both sides break by lower index.
        let x = uniform(&[4, 50], 0.0, 5.0, DType::F32, 30)
            .to_dtype(DType::I64)
            .unwrap();
        let x = x.to_dtype(dtype).unwrap();
        for k in [1, 7, 50] {
            parity("topk values", dev, dtype, &[&x], |t| Ok(t[0].topk(k)?.0));
            parity("topk indices", dev, dtype, &[&x], |t| Ok(t[0].topk(k)?.1));
        }
        parity("sort_last", dev, dtype, &[&x], |t| {
            Ok(t[0].t()?.sort_last(true)?.1)
        });
    }
}

/// The most negative finite value of `dtype` (BERT's additive padding mask).
fn dtype_min(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => half::f16::MIN.to_f64(),
        DType::BF16 => half::bf16::MIN.to_f64(),
        _ => f32::MIN as f64,
    }
}

#[test]
fn flash_attention_matches_the_cpu() {
    use crate::ops::attention::AttentionDropout;
    let Some(dev) = gpu_or_skip("flash_attention_matches_the_cpu") else {
        return;
    };
    // (B, H, Sq, Sk, D): Sq != Sk, partial tiles, several key tiles, a head dim that is not a
    // multiple of 32, the largest head dim.
    for (i, &(b, h, sq, sk, d)) in [(2, 3, 37, 45, 64), (1, 2, 20, 300, 128), (2, 2, 5, 3, 40)]
        .iter()
        .enumerate()
    {
        let seed = 50 + 10 * i as u64;
        let scale = (d as f64).powf(-0.5);
        for dtype in FLOATS {
            // Projections [B, S, H·D], seen as [B, H, S, D] views (not contiguous).
            let heads = |t: &Tensor| t.reshape(&[b, t.shape()[1], h, d])?.transpose(1, 2);
            let src = [sq, sk, sk, sq].map(|s| randn_as(&[b, s, h * d], dtype, seed + s as u64));
            // Batch b-1 pads its last third of keys.
            let pad: Vec<f64> = (0..b * sk)
                .map(|j| {
                    if j >= b * sk - sk / 3 {
                        dtype_min(dtype)
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(pad, &[b, 1, 1, sk])
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let n = b * h * sq * sk;
            for p in [0.0, 0.2] {
                let rng = || crate::Rng { seed: 7, offset: 3 };
                let draw = |p: f64| {
                    (p > 0.0)
                        .then(|| AttentionDropout::draw(p, n, &mut rng()))
                        .transpose()
                };
                let inputs = [&src[0], &src[1], &src[2], &mask];
                // Forward: the CUDA kernel against the CPU composition (matmul, masked softmax,
                // dropout of the probs with the same generator state, matmul) in f32.
                parity("flash_attention", dev, dtype, &inputs, |t| {
                    let [q, k, v] = [&t[0], &t[1], &t[2]].map(|x| heads(x).unwrap());
                    if t[0].device() == Device::Cpu {
                        let f = |x: &Tensor| x.to_dtype(DType::F32);
                        let scores = f(&q)?.matmul(&f(&k)?.transpose(2, 3)?)?;
                        let probs = scores.softmax_last(Some(&f(&t[3])?), scale)?;
                        let probs = if p > 0.0 {
                            probs.dropout(p, &mut rng())?.0
                        } else {
                            probs
                        };
                        probs.matmul(&f(&v)?)?.to_dtype(dtype)
                    } else {
                        assert!(Tensor::flash_attention_fits(&q, &k, &v));
                        Ok(Tensor::flash_attention(&q, &k, &v, Some(&t[3]), scale, draw(p)?)?.0)
                    }
                });
                // Backward: against the CPU evaluation of the same formulas in f64, the output
                // gradient a non-contiguous view too.
                let all = [&src[0], &src[1], &src[2], &mask, &src[3]];
                for part in 0..3 {
                    parity("flash_attention_backward", dev, dtype, &all, |t| {
                        let on_cpu = t[0].device() == Device::Cpu;
                        let c = |x: &Tensor| {
                            if on_cpu {
                                x.to_dtype(DType::F64)
                            } else {
                                Ok(x.clone())
                            }
                        };
                        let [q, k, v, g] =
                            [&t[0], &t[1], &t[2], &t[4]].map(|x| heads(&c(x).unwrap()).unwrap());
                        let m = c(&t[3])?;
                        let (out, lse) =
                            Tensor::flash_attention(&q, &k, &v, Some(&m), scale, draw(p)?)?;
                        let grads = Tensor::flash_attention_backward(
                            &q,
                            &k,
                            &v,
                            Some(&m),
                            &out,
                            &lse,
                            &g,
                            scale,
                            draw(p)?,
                        )?;
                        [grads.0, grads.1, grads.2][part].to_dtype(dtype)
                    });
                }
            }
        }
    }
}

/// The keep decisions of the flash kernels (tensor cores for bf16, CUDA cores otherwise) equal
/// the CPU's dropout mask of the `[B, H, Sq, Sk]` probabilities bit for bit, in all three
/// kernels: with Q = 0 every probability of a row is 1 / Sk, and K = V = I (Sk = D), so
/// out[i][j] = keep_ij / ((1 - p) Sk) is nonzero iff (i, j) is kept; with dO = I (Sq = D),
/// dV[j][i] = Pd_ij likewise; with dO = 1, dQ[i][j] = scale P (keep_ij / (1 - p) - delta_i)
/// is not negative iff kept. Sk = 64 takes the kernels' four-decisions-per-Philox-call path,
/// Sk = 62 the per-element one.
#[test]
fn flash_attention_dropout_draws_equal_the_cpus() {
    use crate::ops::attention::AttentionDropout;
    let Some(dev) = gpu_or_skip("flash_attention_dropout_draws_equal_the_cpus") else {
        return;
    };
    let (b, h, p) = (2, 3, 0.3);
    for n in [64usize, 62] {
        for dtype in FLOATS {
            let eye: Vec<f64> = (0..n * n)
                .map(|e| if e / n == e % n { 1.0 } else { 0.0 })
                .collect();
            let eye = Tensor::from_vec(eye, &[1, 1, n, n])
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .broadcast_to(&[b, h, n, n])
                .unwrap();
            let zeros = Tensor::zeros(&[b, h, n, n], dtype, Device::Cpu).unwrap();
            let ones = Tensor::ones(&[b, h, n, n], dtype, Device::Cpu).unwrap();
            let [q, k, g_eye, g_ones] =
                [&zeros, &eye, &eye, &ones].map(|t| t.to_device(dev).unwrap());
            let v = k.clone();
            let mut rng = crate::Rng {
                seed: 11,
                offset: 5,
            };
            let draw = AttentionDropout::draw(p, b * h * n * n, &mut rng).unwrap();
            let keep = crate::rng::uniform_mask(draw.seed, draw.offset, b * h * n * n, p as f32, 0);
            let scale = 0.125;
            let (out, lse) = Tensor::flash_attention(&q, &k, &v, None, scale, Some(draw)).unwrap();
            let grads = |g: &Tensor| {
                Tensor::flash_attention_backward(&q, &k, &v, None, &out, &lse, g, scale, Some(draw))
                    .unwrap()
            };
            let f64s = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_vec_f64().unwrap();
            let (o, dv, dq) = (f64s(&out), f64s(&grads(&g_eye).2), f64s(&grads(&g_ones).0));
            for bh in 0..b * h {
                for i in 0..n {
                    for j in 0..n {
                        let kept = keep[(bh * n + i) * n + j] != 0;
                        let at = |t: &[f64], r: usize, c: usize| t[(bh * n + r) * n + c];
                        let what = format!("{dtype}, Sk {n}, (bh {bh}, i {i}, j {j}), kept {kept}");
                        assert_eq!(at(&o, i, j) != 0.0, kept, "out: {what}");
                        assert_eq!(at(&dv, j, i) != 0.0, kept, "dV: {what}");
                        assert_eq!(at(&dq, i, j) >= 0.0, kept, "dQ: {what}");
                    }
                }
            }
        }
    }
}

#[test]
fn bias_gelu_matches_the_cpu() {
    let Some(dev) = gpu_or_skip("bias_gelu_matches_the_cpu") else {
        return;
    };
    for dtype in FLOATS {
        let x = randn_as(&[6, 40], dtype, 60);
        let b = randn_as(&[40], dtype, 61);
        let dy = randn_as(&[6, 40], dtype, 62);
        parity("bias_gelu", dev, dtype, &[&x, &b], |t| {
            t[0].bias_gelu(&t[1])
        });
        for part in 0..2 {
            parity("bias_gelu_backward", dev, dtype, &[&x, &b, &dy], |t| {
                let (dx, db) = Tensor::bias_gelu_backward(&t[0], &t[1], &t[2])?;
                Ok([dx, db][part].clone())
            });
        }
        if dtype != DType::F32 {
            // Half activations with an f32 bias (mixed precision): against the CPU in f32.
            let b32 = b.to_dtype(DType::F32).unwrap();
            let (x32, dy32) = (
                x.to_dtype(DType::F32).unwrap(),
                dy.to_dtype(DType::F32).unwrap(),
            );
            let g = |t: &Tensor| t.to_device(dev).unwrap();
            let y = g(&x).bias_gelu(&g(&b32)).unwrap();
            let want = x32.bias_gelu(&b32).unwrap();
            let err = max_rel_err(
                &y.to_device(Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
                &want,
            );
            assert!(err <= tolerance(dtype), "bias_gelu mixed {dtype}: {err}");
            let (dx, db) = Tensor::bias_gelu_backward(&g(&x), &g(&b32), &g(&dy)).unwrap();
            let (wdx, wdb) = Tensor::bias_gelu_backward(&x32, &b32, &dy32).unwrap();
            assert_eq!((dx.dtype(), db.dtype()), (dtype, DType::F32));
            for (got, want) in [(dx, wdx), (db, wdb)] {
                let got = got
                    .to_device(Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                let err = max_rel_err(&got, &want);
                assert!(
                    err <= tolerance(dtype),
                    "bias_gelu_backward mixed {dtype}: {err}"
                );
            }
        }
    }
}
