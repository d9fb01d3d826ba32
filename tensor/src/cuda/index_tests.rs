//! Parity with the CPU of the CUDA index ops (`index_select`, `gather`, `index_add`,
//! `scatter_add`, and their error text), `cat` / `stack`, the ascending sort, integer arithmetic
//! and sums, and saving device tensors to safetensors, on fresh random inputs (each test prints
//! its seed) read through non-contiguous views, for every dtype each op takes. Results that only
//! move, rank or add integers must agree bit for bit; float sums made with atomics within the
//! float tolerances (f32/f64 1e-5, f16/bf16 1e-2, relative to the largest CPU magnitude). Each
//! test skips with a printed reason when no CUDA device is available.

use super::tests::{gpu_or_skip, on_device, parity, randn_as, run_both, FLOATS};
use crate::testing::{uniform, TempDir};
use crate::{DType, Device, Result, Rng, Tensor};

/// Every dtype.
const ALL: [DType; 6] = [
    DType::F32,
    DType::F64,
    DType::F16,
    DType::BF16,
    DType::I64,
    DType::U8,
];

/// A seed that differs between runs, printed so a failure can be replayed.
fn fresh_seed(test: &str) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    let s = t.as_nanos() as u64;
    eprintln!("{test}: seed {s}");
    s
}

/// Random values of `dtype`: normal for floats, integers in 0..100 otherwise.
fn values(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    if dtype.is_float() {
        randn_as(shape, dtype, seed)
    } else {
        uniform(shape, 0.0, 100.0, DType::F32, seed)
            .to_dtype(dtype)
            .unwrap()
    }
}

/// `values` of `shape` read through a view: the reversed shape, permuted back.
fn view(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    let rev: Vec<usize> = shape.iter().rev().copied().collect();
    let perm: Vec<usize> = (0..shape.len()).rev().collect();
    let t = values(&rev, dtype, seed).permute(&perm).unwrap();
    assert!(t.is_contiguous() == (shape.iter().filter(|&&d| d > 1).count() <= 1));
    t
}

/// `n` i64 ids in `0..below`, shaped `shape` (product `n`).
fn ids(shape: &[usize], below: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    let v: Vec<i64> = (0..n).map(|_| rng.below(below as u64) as i64).collect();
    Tensor::from_vec(v, shape).unwrap()
}

/// `f` on the CPU and on `dev` agree bit for bit (same shape and dtype, the result on `dev`).
fn exact(what: &str, dev: Device, inputs: &[&Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let (want, got) = run_both(what, dev, inputs, f);
    use crate::testing::bits;
    assert_eq!(bits(&got), bits(&want), "{what} ({})", want.dtype());
}

/// The error `f` gives on the CPU is the one it gives on `dev`.
fn same_error(
    what: &str,
    dev: Device,
    inputs: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let on_cpu: Vec<Tensor> = inputs.iter().map(|&t| t.clone()).collect();
    let want = f(&on_cpu).err().map(|e| e.to_string());
    let got = f(&on_device(dev, inputs)).err().map(|e| e.to_string());
    assert!(want.is_some(), "{what}: the CPU accepted it");
    assert_eq!(got, want, "{what}");
}

/// Sums: bitwise for integers (wrapping addition is exact in any order), within the dtype's
/// tolerance for floats (atomics add in a varying order).
fn sums(
    what: &str,
    dev: Device,
    dtype: DType,
    inputs: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    if dtype.is_float() {
        parity(what, dev, dtype, inputs, f);
    } else {
        exact(what, dev, inputs, f);
    }
}

#[test]
fn index_ops_match_the_cpu() {
    let Some(dev) = gpu_or_skip("index_ops_match_the_cpu") else {
        return;
    };
    let seed = fresh_seed("index_ops_match_the_cpu");
    for (t, dtype) in ALL.into_iter().enumerate() {
        let s = seed.wrapping_add(100 * t as u64);
        let x = view(&[4, 5, 6], dtype, s);
        for dim in 0..3 {
            let s = s.wrapping_add(10 * dim as u64);
            let d = x.shape()[dim];
            // Slices: 7 ids over at most 6 slices, so some repeat.
            let id = ids(&[7], d, s + 1);
            exact("index_select", dev, &[&x, &id], |t| {
                t[0].index_select(dim, &t[1])
            });
            let mut src_shape = x.shape().to_vec();
            src_shape[dim] = 7;
            let src = view(&src_shape, dtype, s + 2);
            sums("index_add", dev, dtype, &[&x, &id, &src], |t| {
                t[0].index_add(dim, &t[1], &t[2])
            });
            // Elements: an index smaller than x outside dim (8 along it), read transposed.
            let mut ishape = [3, 4, 5];
            ishape[dim] = 8;
            let rev: Vec<usize> = ishape.iter().rev().copied().collect();
            let idx = ids(&rev, d, s + 3).permute(&[2, 1, 0]).unwrap();
            exact("gather", dev, &[&x, &idx], |t| t[0].gather(dim, &t[1]));
            // A source larger than the index in every dim, as a view.
            let src = view(&[9, 9, 9], dtype, s + 4);
            sums("scatter_add", dev, dtype, &[&x, &idx, &src], |t| {
                t[0].scatter_add(dim, &t[1], &t[2])
            });
        }
        // Embedding (any dtype forward) through a view of the table and of the ids.
        let table = view(&[9, 6], dtype, s + 5);
        let eid = ids(&[4, 3], 9, s + 6).t().unwrap();
        exact("embedding", dev, &[&table, &eid], |t| {
            Tensor::embedding(&t[0], &t[1])
        });
    }
}

/// `index_select` and `index_add` whose source is contiguous take the `_rows` kernels (a row
/// per id, 16-byte packs when every row starts aligned): rows whose length is a multiple of
/// every pack (48 elements), odd rows (13, 1), sources at an offset of one element (no packs),
/// each dim, repeated ids, for every dtype; and the same ops on a transposed source (the strided
/// walk) give the same result.
#[test]
fn contiguous_slices_match_the_cpu_with_and_without_packs() {
    let Some(dev) = gpu_or_skip("contiguous_slices_match_the_cpu_with_and_without_packs") else {
        return;
    };
    let seed = fresh_seed("contiguous_slices_match_the_cpu_with_and_without_packs");
    for (t, dtype) in ALL.into_iter().enumerate() {
        for (c, shape) in [[3, 5, 48], [4, 6, 13], [2, 9, 1]].into_iter().enumerate() {
            for dim in 0..3 {
                for off in [0, 1] {
                    let s = seed.wrapping_add((1000 * t + 100 * c + 10 * dim + off) as u64);
                    let mut src_shape = shape.to_vec();
                    src_shape[dim] = 7;
                    // Flat buffers one element longer, viewed from element `off` on the device
                    // (an upload is compact, so the offset is made there).
                    let flat = |shape: &[usize], s: u64| {
                        values(&[shape.iter().product::<usize>() + off], dtype, s)
                    };
                    let (x, src) = (flat(&shape, s), flat(&src_shape, s + 2));
                    let at = |t: &Tensor, shape: &[usize]| -> Result<Tensor> {
                        let v = t.narrow(0, off, shape.iter().product())?.reshape(shape)?;
                        assert!(v.is_contiguous() && v.layout().offset() == off);
                        Ok(v)
                    };
                    // The same values through a transposed copy take the strided walk.
                    let flipped = |t: &Tensor, shape: &[usize]| -> Result<Tensor> {
                        let v = at(t, shape)?;
                        v.transpose(0, 2)?.contiguous()?.transpose(0, 2)
                    };
                    let id = ids(&[7], shape[dim], s + 1);
                    let what = format!("{dtype} {shape:?} dim {dim} offset {off}");
                    exact(&format!("index_select {what}"), dev, &[&x, &id], |t| {
                        at(&t[0], &shape)?.index_select(dim, &t[1])
                    });
                    exact(
                        &format!("strided index_select {what}"),
                        dev,
                        &[&x, &id],
                        |t| flipped(&t[0], &shape)?.index_select(dim, &t[1]),
                    );
                    let inputs = [&x, &id, &src];
                    sums(&format!("index_add {what}"), dev, dtype, &inputs, |t| {
                        at(&t[0], &shape)?.index_add(dim, &t[1], &at(&t[2], &src_shape)?)
                    });
                    sums(
                        &format!("strided index_add {what}"),
                        dev,
                        dtype,
                        &inputs,
                        |t| at(&t[0], &shape)?.index_add(dim, &t[1], &flipped(&t[2], &src_shape)?),
                    );
                }
            }
        }
    }
}

/// A bad id is an error naming the op on both devices: at once on the CPU; on a GPU, which
/// never downloads ids, at the next status check (`Device::check_status`), with no host sync
/// before it.
#[test]
fn index_errors_match_the_cpu() {
    // Serial: it reads the GPU's status words, which other tests' bad ids would also set.
    let Some((dev, _serial)) = crate::testing::serial_cuda_or_skip("index_errors_match_the_cpu")
    else {
        return;
    };
    let x = values(&[3, 4], DType::F32, 1);
    let src = values(&[2, 4], DType::F32, 2);
    type Op = fn(&[Tensor]) -> Result<Tensor>;
    let ops: [(&str, Op); 5] = [
        ("index_select", |t| t[0].index_select(0, &t[1])),
        ("index_add", |t| t[0].index_add(0, &t[1], &t[2])),
        ("gather", |t| t[0].gather(0, &t[3])),
        ("scatter_add", |t| t[0].scatter_add(0, &t[3], &t[2])),
        ("embedding", |t| Tensor::embedding(&t[0], &t[1])),
    ];
    dev.check_status().unwrap();
    for bad in [-1i64, 3] {
        let id = Tensor::from_vec(vec![0, bad], &[2]).unwrap();
        let idx = id.reshape(&[2, 1]).unwrap();
        let ins = [&x, &id, &src, &idx];
        let on_cpu: Vec<Tensor> = ins.iter().map(|&t| t.clone()).collect();
        let on_gpu = on_device(dev, &ins);
        for (what, f) in ops {
            let want = f(&on_cpu).unwrap_err().to_string();
            assert!(
                want.contains(what) && want.contains(&bad.to_string()),
                "{want}"
            );
            let before = dev.counters().unwrap().unwrap();
            f(&on_gpu).unwrap();
            let during = dev.counters().unwrap().unwrap().since(&before);
            assert_eq!(during.syncs, 0, "{what} synchronised with the host");
            let got = dev.check_status().unwrap_err().to_string();
            assert!(
                got.contains(&format!("{what}: index {bad} is out of range")),
                "{what}: {got}"
            );
            dev.check_status().unwrap();
        }
    }
    // Operands on different devices name both.
    let (gx, id) = (
        x.to_device(dev).unwrap(),
        Tensor::from_vec(vec![0i64], &[1]).unwrap(),
    );
    for e in [
        gx.index_select(0, &id).unwrap_err().to_string(),
        x.gather(0, &id.reshape(&[1, 1]).unwrap().to_device(dev).unwrap())
            .unwrap_err()
            .to_string(),
    ] {
        assert!(e.contains("cpu") && e.contains("cuda:0"), "{e}");
    }
}

#[test]
fn cat_and_stack_match_the_cpu() {
    let Some(dev) = gpu_or_skip("cat_and_stack_match_the_cpu") else {
        return;
    };
    let seed = fresh_seed("cat_and_stack_match_the_cpu");
    for (t, dtype) in ALL.into_iter().enumerate() {
        let s = seed.wrapping_add(10 * t as u64);
        for dim in 0..3 {
            let shape = |k: usize| {
                let mut v = vec![3, 4, 5];
                v[dim] = k;
                v
            };
            // Contiguous, empty along dim, a permuted view, a narrowed view.
            let a = values(&shape(2), dtype, s + 1);
            let b = values(&shape(0), dtype, s + 2);
            let c = view(&shape(3), dtype, s + 3);
            let wide: Vec<usize> = shape(1).iter().map(|&k| k + 2).collect();
            let mut d = values(&wide, dtype, s + 4);
            for (k, &n) in shape(1).iter().enumerate() {
                d = d.narrow(k, 1, n).unwrap();
            }
            exact("cat", dev, &[&a, &b, &c, &d], |t| {
                Tensor::cat(&[&t[0], &t[1], &t[2], &t[3]], dim)
            });
        }
        let a = values(&[2, 3], dtype, s + 5);
        let b = view(&[2, 3], dtype, s + 6);
        for dim in 0..3 {
            exact("stack", dev, &[&a, &b], |t| {
                Tensor::stack(&[&t[0], &t[1]], dim)
            });
        }
    }
    let a = values(&[2, 3], DType::F32, 7);
    let e = Tensor::cat(&[&a, &a.to_device(dev).unwrap()], 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cat") && e.contains("cpu") && e.contains("cuda:0"),
        "{e}"
    );
}

#[test]
fn sorts_match_the_cpu_both_ways() {
    let Some(dev) = gpu_or_skip("sorts_match_the_cpu_both_ways") else {
        return;
    };
    let seed = fresh_seed("sorts_match_the_cpu_both_ways");
    // Few distinct values (ties), NaN, -0 next to +0 and infinities.
    let pool = [
        -1.5f32,
        -0.0,
        0.0,
        2.0,
        f32::NAN,
        7.0,
        f32::NEG_INFINITY,
        f32::INFINITY,
    ];
    for (rows, n) in [(5, 40), (3, 300), (2, 1500)] {
        let mut rng = Rng::new(seed.wrapping_add(n as u64));
        let v: Vec<f32> = (0..rows * n).map(|_| pool[rng.below(8) as usize]).collect();
        // Stored [n, rows] and transposed: rows of n read through a view.
        let x = Tensor::from_vec(v, &[n, rows]).unwrap().t().unwrap();
        for dtype in FLOATS {
            let x = x.to_dtype(dtype).unwrap();
            for descending in [false, true] {
                exact("sort_last values", dev, &[&x], |t| {
                    Ok(t[0].sort_last(descending)?.0)
                });
                exact("sort_last indices", dev, &[&x], |t| {
                    Ok(t[0].sort_last(descending)?.1)
                });
            }
        }
    }
}

#[test]
fn integer_arithmetic_and_sums_match_the_cpu() {
    let Some(dev) = gpu_or_skip("integer_arithmetic_and_sums_match_the_cpu") else {
        return;
    };
    let seed = fresh_seed("integer_arithmetic_and_sums_match_the_cpu");
    for dtype in [DType::I64, DType::U8] {
        // Nonzero operands (either may divide): a plain one and a transposed one broadcast over
        // dim 0.
        let a = values(&[4, 3, 5], dtype, seed).add_scalar(1.0).unwrap();
        let b = values(&[5, 3], dtype, seed + 1)
            .add_scalar(1.0)
            .unwrap()
            .t()
            .unwrap();
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
            exact(name, dev, &[&a, &b], |t| f(&t[0], &t[1]));
            exact(name, dev, &[&a, &b], |t| f(&t[1], &t[0].narrow(0, 1, 1)?));
        }
        type Sc = fn(&Tensor, f64) -> Result<Tensor>;
        let scalars: [(&str, Sc, f64); 6] = [
            ("add_scalar", Tensor::add_scalar, 7.0),
            ("sub_scalar", Tensor::sub_scalar, 30.0),
            ("mul_scalar", Tensor::mul_scalar, 5.0),
            ("div_scalar", Tensor::div_scalar, 3.0),
            ("maximum_scalar", Tensor::maximum_scalar, 50.0),
            ("minimum_scalar", Tensor::minimum_scalar, 20.0),
        ];
        for (name, f, v) in scalars {
            exact(name, dev, &[&a], |t| f(&t[0].t()?, v));
        }
        exact("affine", dev, &[&a], |t| t[0].affine(3.0, 2.0));
        for dims in [&[0usize, 2][..], &[1], &[0, 1, 2], &[]] {
            for keepdim in [false, true] {
                exact("sum", dev, &[&a], |t| t[0].t()?.sum(dims, keepdim));
            }
        }
        exact("sum_all", dev, &[&a], |t| t[0].sum_all());
        // The CPU's errors: a zero divisor, a scalar the dtype cannot hold.
        let z = Tensor::zeros(&[5], dtype, Device::Cpu).unwrap();
        same_error("div by zero", dev, &[&a, &z], |t| t[0].div(&t[1]));
        same_error("div_scalar by zero", dev, &[&a], |t| t[0].div_scalar(0.0));
        same_error("add_scalar 0.5", dev, &[&a], |t| t[0].add_scalar(0.5));
        same_error("affine -1.5", dev, &[&a], |t| t[0].affine(-1.5, 0.0));
    }
    // Wrapping at the i64 limits, and i64::MIN / -1.
    let x = Tensor::from_vec(vec![i64::MAX, i64::MIN, -7, 9], &[4]).unwrap();
    let m = Tensor::from_vec(vec![3i64, -1, -2, 4], &[4]).unwrap();
    for (name, f) in [
        ("mul", Tensor::mul as fn(&Tensor, &Tensor) -> Result<Tensor>),
        ("div", Tensor::div),
        ("add", Tensor::add),
        ("sub", Tensor::sub),
    ] {
        exact(name, dev, &[&x, &m], |t| f(&t[0], &t[1]));
    }
    let big = Tensor::from_vec(vec![i64::MAX, i64::MAX, 5], &[3]).unwrap();
    exact("sum wraps", dev, &[&big], |t| t[0].sum_all());
    // u8 sums go to i64 without wrapping at 255.
    let bytes = Tensor::full(255.0, &[10, 300], DType::U8, Device::Cpu).unwrap();
    exact("u8 sum", dev, &[&bytes], |t| t[0].sum(&[1], false));
}

#[test]
fn saving_device_tensors_writes_the_cpu_bytes() {
    let Some(dev) = gpu_or_skip("saving_device_tensors_writes_the_cpu_bytes") else {
        return;
    };
    let seed = fresh_seed("saving_device_tensors_writes_the_cpu_bytes");
    let dir = TempDir::new("cuda-safetensors");
    let ts: Vec<Tensor> = ALL
        .into_iter()
        .enumerate()
        .map(|(i, d)| view(&[3, 4], d, seed.wrapping_add(i as u64)))
        .collect();
    let names: Vec<String> = ALL.iter().map(|d| format!("t_{d}")).collect();
    let save = |file: &str, ts: &[Tensor]| {
        let pairs: Vec<(&str, &Tensor)> = names.iter().map(|n| n.as_str()).zip(ts).collect();
        let p = dir.0.join(file);
        crate::safetensors::save(&p, &pairs, None).unwrap();
        std::fs::read(p).unwrap()
    };
    let on_gpu: Vec<Tensor> = ts.iter().map(|t| t.to_device(dev).unwrap()).collect();
    assert_eq!(
        save("gpu.safetensors", &on_gpu),
        save("cpu.safetensors", &ts)
    );
}
