//! Every kernel family against the CPU backend (the tensor crate's ops, and nn's AdamW and loss
//! scaler), on fresh random inputs (the seed is printed on failure), contiguous and strided /
//! transposed / broadcast layouts, for f32, f16 and bf16. Tolerances are the relative
//! errors (max |gpu - cpu| / max |cpu|): f32 1e-5, TF32 1e-3, f16/bf16 1e-2; the ops that are
//! exact by construction (copies, casts, masks, Philox draws, top-k, AdamW) are compared bit for
//! bit. Outputs come from a poisoned pool, so an unwritten element shows up as NaN.
//!
//! Every test skips with a message when there is no GPU.

use cuda::blas::{gemm, gemm_bias, Mat, MatMut, MathMode};
use cuda::ops::FloatElem;
use cuda::{Contig, DeviceBuffer, DeviceElem, Gpu, Strided};
use half::{bf16, f16};
use std::sync::{Arc, MutexGuard};
use tensor::{DType, Device, Layout, Rng, Tensor, WithDType};

/// `cuda:0` with its pool poisoned (an unwritten output element reads as NaN), held by this test
/// alone; `None` after saying why the test skips (a failure under `COTMAE_REQUIRE_GPU`).
fn gpu_or_skip() -> Option<(Arc<Gpu>, MutexGuard<'static, ()>)> {
    let (gpu, lock) = cuda::testing::serial_gpu_or_skip(&cuda::testing::current_test())?;
    gpu.poison_pool(256 << 20).unwrap();
    Some((gpu, lock))
}

/// A fresh seed per run.
fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let s = t.as_nanos() as u64;
    eprintln!("seed {s}");
    s
}

/// [`gpu_or_skip`] and a fresh seed.
fn gpu_and_seed() -> Option<(Arc<Gpu>, MutexGuard<'static, ()>, u64)> {
    let (gpu, lock) = gpu_or_skip()?;
    Some((gpu, lock, fresh_seed()))
}

/// Runs `$check::<T>($gpu, seed)` for T = f32, f16 and bf16, with seeds `$seed`, `$seed + 10`
/// and `$seed + 20`.
macro_rules! for_each_float {
    ($check:ident, $gpu:expr, $seed:expr) => {{
        $check::<f32>($gpu, $seed);
        $check::<f16>($gpu, $seed + 10);
        $check::<bf16>($gpu, $seed + 20);
    }};
}

fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::F64 => 1e-5,
        _ => 1e-2,
    }
}

fn randn(shape: &[usize], std: f64, dtype: DType, seed: u64) -> Tensor {
    tensor::testing::randn(shape, std, DType::F32, seed)
        .to_dtype(dtype)
        .unwrap()
}

/// Integer-valued floats in 0..hi (many ties), in `dtype`.
fn small_ints(shape: &[usize], hi: f64, dtype: DType, seed: u64) -> Tensor {
    tensor::testing::uniform(shape, 0.0, hi, DType::F32, seed)
        .to_dtype(DType::I64)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A CPU tensor's whole storage uploaded, with the tensor's layout.
struct OnGpu<T: DeviceElem> {
    buf: DeviceBuffer<T>,
    layout: Layout,
}

fn up<T: DeviceElem + WithDType>(gpu: &Gpu, t: &Tensor) -> OnGpu<T> {
    let all = t
        .cpu_storage("test")
        .unwrap()
        .as_slice::<T>("test")
        .unwrap();
    OnGpu {
        buf: gpu.upload(all).unwrap(),
        layout: t.layout().clone(),
    }
}

impl<T: DeviceElem> OnGpu<T> {
    fn strided(&self) -> Strided<'_, T> {
        Strided::new(&self.buf, self.layout.offset(), self.layout.strides())
    }
    /// Read through `l`, a layout of the same storage (e.g. a broadcast of `self.layout`).
    fn through<'a>(&'a self, l: &'a Layout) -> Strided<'a, T> {
        Strided::new(&self.buf, l.offset(), l.strides())
    }
    fn contig(&self) -> Contig<'_, T> {
        assert!(self.layout.is_contiguous(), "test input must be contiguous");
        Contig::new(&self.buf, self.layout.offset())
    }
}

fn down<T: DeviceElem + WithDType>(gpu: &Gpu, b: &DeviceBuffer<T>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(gpu.download(b).unwrap(), shape).unwrap()
}

/// max |got - want| / max |want| <= tol, with infinities and NaN required in the same places.
fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
    let scale = w
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, v| m.max(v.abs()));
    let mut worst = 0f64;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if !b.is_finite() {
            assert!(
                a == b || (a.is_nan() && b.is_nan()),
                "{what}[{i}]: got {a}, want {b}"
            );
            continue;
        }
        assert!(a.is_finite(), "{what}[{i}]: got {a}, want {b}");
        worst = worst.max((a - b).abs());
    }
    let rel = if scale == 0.0 { worst } else { worst / scale };
    assert!(rel <= tol, "{what}: relative error {rel:.3e} > {tol:e}");
}

/// Equal element for element (NaN equals NaN).
fn assert_same(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(
        (got.shape(), got.dtype()),
        (want.shape(), want.dtype()),
        "{what}"
    );
    let (g, w) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            a == b || (a.is_nan() && b.is_nan()),
            "{what}[{i}]: got {a}, want {b}"
        );
    }
}

// ---- elementwise ------------------------------------------------------------------------------

mod elementwise {
    use super::*;
    use cuda::ops::elementwise::{
        binary, compare, copy_strided, map1, masked_fill, where_cond, BinaryOp, CmpOp, Map1,
        UnaryOp,
    };

    type CpuUnary = fn(&Tensor) -> tensor::Result<Tensor>;
    type CpuBinary = fn(&Tensor, &Tensor) -> tensor::Result<Tensor>;
    type CpuScalar = fn(&Tensor, f64) -> tensor::Result<Tensor>;

    const UNARY: [(UnaryOp, CpuUnary, bool); 12] = [
        (UnaryOp::Neg, Tensor::neg, false),
        (UnaryOp::Exp, Tensor::exp, false),
        (UnaryOp::Log, Tensor::log, true),
        (UnaryOp::Sqrt, Tensor::sqrt, true),
        (UnaryOp::Rsqrt, Tensor::rsqrt, true),
        (UnaryOp::Tanh, Tensor::tanh, false),
        (UnaryOp::Erf, Tensor::erf, false),
        (UnaryOp::Relu, Tensor::relu, false),
        (UnaryOp::Sigmoid, Tensor::sigmoid, false),
        (UnaryOp::Abs, Tensor::abs, false),
        (UnaryOp::Sqr, Tensor::sqr, false),
        (UnaryOp::Recip, Tensor::recip, true),
    ];

    pub(super) const BINARY: [(BinaryOp, CpuBinary, CpuScalar); 6] = [
        (BinaryOp::Add, Tensor::add, Tensor::add_scalar),
        (BinaryOp::Sub, Tensor::sub, Tensor::sub_scalar),
        (BinaryOp::Mul, Tensor::mul, Tensor::mul_scalar),
        (BinaryOp::Div, Tensor::div, Tensor::div_scalar),
        (BinaryOp::Maximum, Tensor::maximum, Tensor::maximum_scalar),
        (BinaryOp::Minimum, Tensor::minimum, Tensor::minimum_scalar),
    ];

    pub(super) const COMPARE: [(CmpOp, CpuBinary); 6] = [
        (CmpOp::Eq, Tensor::eq),
        (CmpOp::Ne, Tensor::ne),
        (CmpOp::Lt, Tensor::lt),
        (CmpOp::Le, Tensor::le),
        (CmpOp::Gt, Tensor::gt),
        (CmpOp::Ge, Tensor::ge),
    ];

    fn maps<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        // [37, 29] contiguous (1073 elements: vector body and tail) and its transpose (strided).
        let base = randn(&[37, 29], 1.5, dt, seed);
        for (layout, x) in [
            ("contiguous", base.clone()),
            ("transposed", base.t().unwrap()),
        ] {
            let pos = x.abs().unwrap().add_scalar(0.1).unwrap();
            let (gx, gp) = (up::<T>(gpu, &x), up::<T>(gpu, &pos));
            let shape = x.shape().to_vec();
            let run = |op: Map1, g: &OnGpu<T>| {
                down(gpu, &map1(gpu, op, &shape, g.strided()).unwrap(), &shape)
            };
            for (op, cpu, positive) in UNARY {
                let (src, g) = if positive { (&pos, &gp) } else { (&x, &gx) };
                assert_close(
                    &run(Map1::Unary(op), g),
                    &cpu(src).unwrap(),
                    tol(dt),
                    &format!("{op:?} {dt} {layout}"),
                );
            }
            for (op, _, cpu) in BINARY {
                let want = cpu(&x, 0.75).unwrap();
                assert_close(
                    &run(Map1::Scalar(op, 0.75), &gx),
                    &want,
                    tol(dt),
                    &format!("{op:?}_scalar {dt} {layout}"),
                );
            }
            let affine = run(
                Map1::Affine {
                    mul: 1.5,
                    add: -0.25,
                },
                &gx,
            );
            assert_close(
                &affine,
                &x.affine(1.5, -0.25).unwrap(),
                tol(dt),
                &format!("affine {dt} {layout}"),
            );
            assert_close(
                &run(Map1::Powf(1.7), &gp),
                &pos.powf(1.7).unwrap(),
                tol(dt),
                &format!("powf {dt} {layout}"),
            );
        }
    }

    fn binaries<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        let big = randn(&[1003], 1.0, dt, seed);
        let big2 = randn(&[1003], 1.0, dt, seed + 1)
            .abs()
            .unwrap()
            .add_scalar(0.5)
            .unwrap();
        let cube = randn(&[4, 5, 6], 1.0, dt, seed + 2);
        let row = randn(&[6], 1.0, dt, seed + 3)
            .abs()
            .unwrap()
            .add_scalar(0.5)
            .unwrap();
        let wide = randn(&[6, 5], 1.0, dt, seed + 4);
        let col = randn(&[5, 1], 1.0, dt, seed + 5)
            .abs()
            .unwrap()
            .add_scalar(0.5)
            .unwrap();
        let cases: [(&str, Tensor, Tensor); 4] = [
            ("contiguous", big.clone(), big2.clone()),
            // Offset 1: the vector path is off (unaligned), the scalar loop covers everything.
            (
                "unaligned",
                big.narrow(0, 1, 1002).unwrap(),
                big2.narrow(0, 1, 1002).unwrap(),
            ),
            ("broadcast row", cube, row),
            ("transposed + broadcast column", wide.t().unwrap(), col),
        ];
        for (what, a, b) in cases {
            let shape = tensor::broadcast_shapes("test", a.shape(), b.shape()).unwrap();
            let (la, lb) = (
                a.layout().broadcast_to("t", &shape).unwrap(),
                b.layout().broadcast_to("t", &shape).unwrap(),
            );
            let (ga, gb) = (up::<T>(gpu, &a), up::<T>(gpu, &b));
            for (op, cpu, _) in BINARY {
                let got = binary(gpu, op, &shape, ga.through(&la), gb.through(&lb)).unwrap();
                assert_close(
                    &down(gpu, &got, &shape),
                    &cpu(&a, &b).unwrap(),
                    tol(dt),
                    &format!("{op:?} {dt} {what}"),
                );
            }
        }
    }

    fn compares<T: DeviceElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        let a = small_ints(&[7, 9], 4.0, dt, seed).t().unwrap();
        let b = small_ints(&[7], 4.0, dt, seed + 1);
        let shape = a.shape().to_vec();
        let lb = b.layout().broadcast_to("t", &shape).unwrap();
        let (ga, gb) = (up::<T>(gpu, &a), up::<T>(gpu, &b));
        for (op, cpu) in COMPARE {
            let got = compare(gpu, op, &shape, ga.strided(), gb.through(&lb)).unwrap();
            assert_same(
                &down(gpu, &got, &shape),
                &cpu(&a, &b).unwrap(),
                &format!("{op:?} {dt}"),
            );
        }
    }

    fn selects<T: DeviceElem + WithDType>(gpu: &Gpu, seed: u64, fill: T) {
        let dt = T::DTYPE;
        let t = small_ints(&[6, 5], 100.0, dt, seed).t().unwrap();
        let f = small_ints(&[5, 6], 100.0, dt, seed + 1);
        let cond = small_ints(&[5, 1], 2.0, DType::U8, seed + 2);
        let shape = [5, 6];
        let lc = cond.layout().broadcast_to("t", &shape).unwrap();
        let (gt, gf, gc) = (up::<T>(gpu, &t), up::<T>(gpu, &f), up::<u8>(gpu, &cond));
        let got = where_cond(gpu, &shape, gc.through(&lc), gt.strided(), gf.strided()).unwrap();
        assert_same(
            &down(gpu, &got, &shape),
            &cond.where_cond(&t, &f).unwrap(),
            &format!("where_cond {dt}"),
        );
        let mask = small_ints(&[6], 2.0, DType::U8, seed + 3);
        let lm = mask.layout().broadcast_to("t", &shape).unwrap();
        let gm = up::<u8>(gpu, &mask);
        let got = masked_fill(gpu, &shape, gt.strided(), gm.through(&lm), fill).unwrap();
        let want = t.masked_fill(&mask, fill.to_f64()).unwrap();
        assert_same(
            &down(gpu, &got, &shape),
            &want,
            &format!("masked_fill {dt}"),
        );
        let cube = small_ints(&[4, 6, 5], 100.0, dt, seed + 4)
            .permute(&[2, 0, 1])
            .unwrap();
        let gcube = up::<T>(gpu, &cube);
        let got = copy_strided(gpu, cube.shape(), gcube.strided()).unwrap();
        assert_same(
            &down(gpu, &got, cube.shape()),
            &cube.contiguous().unwrap(),
            &format!("copy_strided {dt}"),
        );
    }

    #[test]
    fn unary_scalar_and_binary_maps_match_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(maps, &gpu, s);
        for_each_float!(binaries, &gpu, s + 30);
    }

    #[test]
    fn comparisons_selections_and_copies_match_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(compares, &gpu, s);
        compares::<i64>(&gpu, s + 3);
        compares::<u8>(&gpu, s + 4);
        selects::<f32>(&gpu, s + 5, -1e9);
        selects::<f16>(&gpu, s + 6, f16::from_f32(-3.5));
        selects::<i64>(&gpu, s + 7, -7);
        selects::<u8>(&gpu, s + 8, 255);
    }
}

// ---- vector fast paths -----------------------------------------------------------------------

/// The contiguous (16-byte packs + scalar tail) and row (leading-dim broadcast, row slices) walks
/// of elementwise.cu and the packed row sums of reduce.cu, for every dtype, at sizes around the
/// pack widths, on views misaligned by one element, against the CPU.
mod vector_paths {
    use super::elementwise::{BINARY, COMPARE};
    use super::*;
    use cuda::ops::elementwise::{
        binary, compare, copy_into, copy_strided, map1, masked_fill, where_cond, Map1, UnaryOp,
    };
    use cuda::ops::reduce::{arg_extreme, extreme, sum, sum_int, Axis, Extreme, SumKind};
    use cuda::ops::ArithElem;

    /// Around the pack widths (16, 8, 4 or 2 elements) and one long odd size.
    const SIZES: [usize; 5] = [1, 3, 7, 17, 1003];

    /// Integer values in lo..hi of `dt`, viewed from element `offset` of a longer buffer.
    fn ints(n: usize, offset: usize, lo: f64, hi: f64, dt: DType, seed: u64) -> Tensor {
        tensor::testing::uniform(&[n + offset], lo, hi, DType::F32, seed)
            .to_dtype(DType::I64)
            .unwrap()
            .to_dtype(dt)
            .unwrap()
            .narrow(0, offset, n)
            .unwrap()
    }

    /// Operands for arithmetic: normal floats (b positive, away from 0), or integers with
    /// nonzero divisors b (products of two wrap in u8).
    fn operands(n: usize, offsets: (usize, usize), dt: DType, seed: u64) -> (Tensor, Tensor) {
        if dt.is_float() {
            let a = randn(&[n + offsets.0], 1.0, dt, seed);
            let b = randn(&[n + offsets.1], 1.0, dt, seed + 1)
                .abs()
                .unwrap()
                .add_scalar(0.5)
                .unwrap();
            (
                a.narrow(0, offsets.0, n).unwrap(),
                b.narrow(0, offsets.1, n).unwrap(),
            )
        } else {
            (
                ints(n, offsets.0, 0.0, 100.0, dt, seed),
                ints(n, offsets.1, 1.0, 100.0, dt, seed + 1),
            )
        }
    }

    /// Every binary op on `a`, `b` (same shape after broadcasting to `shape`) against the CPU.
    fn check_binary<T: ArithElem + WithDType>(
        gpu: &Gpu,
        shape: &[usize],
        a: &Tensor,
        b: &Tensor,
        what: &str,
    ) {
        let (la, lb) = (
            a.layout().broadcast_to("t", shape).unwrap(),
            b.layout().broadcast_to("t", shape).unwrap(),
        );
        let (ga, gb) = (up::<T>(gpu, a), up::<T>(gpu, b));
        for (op, cpu, _) in BINARY {
            let got = binary(gpu, op, shape, ga.through(&la), gb.through(&lb)).unwrap();
            let (got, want) = (down(gpu, &got, shape), cpu(a, b).unwrap());
            let what = format!("{op:?} {} {what}", T::DTYPE);
            if T::DTYPE.is_float() {
                assert_close(&got, &want, tol(T::DTYPE), &what);
            } else {
                assert_same(&got, &want, &what);
            }
        }
    }

    fn contiguous<T: ArithElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        let lanes = 16 / dt.size_in_bytes();
        for (i, n) in SIZES.into_iter().enumerate() {
            // Aligned (packs), both misaligned by one element, one of two misaligned.
            for offsets in [(0, 0), (1, 1), (0, 1)] {
                let s = seed + 100 * i as u64 + 10 * offsets.0 as u64 + offsets.1 as u64;
                let what = format!("n {n} offsets {offsets:?}");
                let (a, b) = operands(n, offsets, dt, s);
                check_binary::<T>(gpu, &[n], &a, &b, &what);
                // Comparisons on small integers (many ties).
                let (a, b) = (
                    ints(n, offsets.0, 0.0, 4.0, dt, s + 2),
                    ints(n, offsets.1, 0.0, 4.0, dt, s + 3),
                );
                let (ga, gb) = (up::<T>(gpu, &a), up::<T>(gpu, &b));
                for (op, cpu) in COMPARE {
                    let got = compare(gpu, op, &[n], ga.strided(), gb.strided()).unwrap();
                    assert_same(
                        &down(gpu, &got, &[n]),
                        &cpu(&a, &b).unwrap(),
                        &format!("{op:?} {dt} {what}"),
                    );
                }
            }
            // Selections: the u8 side aligned to a pack's byte count, or off by one byte.
            for (off, cond_off) in [(0, 0), (0, lanes), (0, 1), (1, 1)] {
                let s = seed + 100 * i as u64 + 50 + off as u64 + cond_off as u64;
                let what = format!("{dt} n {n} offset {off} cond offset {cond_off}");
                let t = ints(n, off, 0.0, 100.0, dt, s);
                let f = ints(n, off, 0.0, 100.0, dt, s + 1);
                let cond = ints(n, cond_off, 0.0, 2.0, DType::U8, s + 2);
                let (gt, gf, gc) = (up::<T>(gpu, &t), up::<T>(gpu, &f), up::<u8>(gpu, &cond));
                let got = where_cond(gpu, &[n], gc.strided(), gt.strided(), gf.strided()).unwrap();
                assert_same(
                    &down(gpu, &got, &[n]),
                    &cond.where_cond(&t, &f).unwrap(),
                    &format!("where_cond {what}"),
                );
                let value = T::from_f64(7.0);
                let got = masked_fill(gpu, &[n], gt.strided(), gc.strided(), value).unwrap();
                assert_same(
                    &down(gpu, &got, &[n]),
                    &t.masked_fill(&cond, 7.0).unwrap(),
                    &format!("masked_fill {what}"),
                );
            }
        }
    }

    fn maps<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        for (i, n) in SIZES.into_iter().enumerate() {
            for off in [0, 1] {
                let x = randn(&[n + off], 1.0, dt, seed + 2 * i as u64 + off as u64)
                    .narrow(0, off, n)
                    .unwrap();
                let gx = up::<T>(gpu, &x);
                let what = format!("{dt} n {n} offset {off}");
                let got = map1(gpu, Map1::Unary(UnaryOp::Exp), &[n], gx.strided()).unwrap();
                assert_close(
                    &down(gpu, &got, &[n]),
                    &x.exp().unwrap(),
                    tol(dt),
                    &format!("exp {what}"),
                );
                let affine = Map1::Affine {
                    mul: 1.5,
                    add: -0.25,
                };
                let got = map1(gpu, affine, &[n], gx.strided()).unwrap();
                assert_close(
                    &down(gpu, &got, &[n]),
                    &x.affine(1.5, -0.25).unwrap(),
                    tol(dt),
                    &format!("affine {what}"),
                );
            }
        }
    }

    /// Row widths around the pack widths: rows start aligned only when cols * size is a
    /// multiple of 16.
    const COLS: [usize; 6] = [1, 3, 8, 13, 16, 33];

    fn rows<T: ArithElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        let r = 5;
        for (i, c) in COLS.into_iter().enumerate() {
            let s = seed + 20 * i as u64;
            // A bias row broadcast along the leading dim, either side.
            let (a, b) = operands(r * c, (0, 0), dt, s);
            let (a, b) = (a.reshape(&[r, c]).unwrap(), b.narrow(0, 0, c).unwrap());
            check_binary::<T>(gpu, &[r, c], &a, &b, &format!("[{r}, {c}] + [{c}]"));
            // (The second operand of `operands` is the nonzero divisor.)
            let (row, m) = operands(r * c, (0, 0), dt, s + 3);
            let (row, m) = (row.narrow(0, 0, c).unwrap(), m.reshape(&[r, c]).unwrap());
            check_binary::<T>(gpu, &[r, c], &row, &m, &format!("[{c}] + [{r}, {c}]"));
            // Row slices of a wider tensor (row stride c + 2, start misaligned by one).
            let (w1, w2) = operands(r * (c + 2), (0, 0), dt, s + 5);
            let slice = |w: Tensor| w.reshape(&[r, c + 2]).unwrap().narrow(1, 1, c).unwrap();
            let (a, b) = (slice(w1), slice(w2));
            check_binary::<T>(gpu, &[r, c], &a, &b, &format!("[{r}, {c}] slices"));
            // Copies: a row slice made contiguous, and a concatenation along the last dim
            // written slice by slice into one buffer.
            let ga = up::<T>(gpu, &a);
            let got = copy_strided(gpu, &[r, c], ga.strided()).unwrap();
            assert_same(
                &down(gpu, &got, &[r, c]),
                &a.contiguous().unwrap(),
                &format!("copy {dt} [{r}, {c}] slice"),
            );
            let x = ints(r * 3, 0, 0.0, 100.0, dt, s + 9)
                .reshape(&[r, 3])
                .unwrap();
            let gb = up::<T>(gpu, &b.contiguous().unwrap());
            let gx = up::<T>(gpu, &x);
            let total = c + 3;
            let mut cat = gpu.zeros::<T>(r * total).unwrap();
            copy_into(gpu, &[r, c], gb.strided(), &mut cat, 0, &[total, 1]).unwrap();
            copy_into(gpu, &[r, 3], gx.strided(), &mut cat, c, &[total, 1]).unwrap();
            assert_same(
                &down(gpu, &cat, &[r, total]),
                &Tensor::cat(&[&b, &x], 1).unwrap(),
                &format!("cat {dt} [{r}, {c}] + [{r}, 3]"),
            );
        }
    }

    fn packed_sums<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        // Rows of odd length start at every alignment; long rows and columns are split into
        // chunks; columns take packs when inner is a multiple of 16 and the view is aligned.
        let cases: [(&[usize], usize); 8] = [
            (&[3, 1], 1),
            (&[4, 7], 1),
            (&[3, 1003], 1),
            (&[2, 100_003], 1),
            (&[37, 64], 0),
            (&[3, 50, 32], 1),
            (&[5, 13, 48], 1),
            (&[20_001, 16], 0),
        ];
        for (i, (shape, dim)) in cases.into_iter().enumerate() {
            for off in [0, 1] {
                let x = offset_view(shape, off, |n| {
                    randn(&[n], 1.0, dt, seed + 2 * i as u64 + off as u64)
                });
                let gx = up::<T>(gpu, &x);
                let mut out_shape = shape.to_vec();
                out_shape.remove(dim);
                let got =
                    sum::<T, T>(gpu, gx.contig(), Axis::of(shape, dim), SumKind::Sum).unwrap();
                assert_close(
                    &down(gpu, &got, &out_shape),
                    &x.sum(&[dim], false).unwrap(),
                    tol(dt),
                    &format!("sum {dt} {shape:?} dim {dim} offset {off}"),
                );
            }
        }
    }

    /// Shapes of the packed reductions: rows of odd length (a head, packs and a tail at every
    /// alignment), long rows split into chunks, columns whose count is a multiple of every pack
    /// (16 for u8, 8 for bf16, ...; `_cols_packed` when the view is aligned), and an odd one.
    const REDUCED: [(&[usize], usize); 6] = [
        (&[4, 7], 1),
        (&[3, 1003], 1),
        (&[2, 70_001], 1),
        (&[37, 16], 0),
        (&[5, 13, 48], 1),
        (&[9, 17], 0),
    ];

    /// `x` (contiguous `shape`) viewed from element `off` of a longer buffer of `flat(n + off)`.
    fn offset_view(shape: &[usize], off: usize, flat: impl Fn(usize) -> Tensor) -> Tensor {
        let n: usize = shape.iter().product();
        flat(n + off)
            .narrow(0, off, n)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    /// Max, min, argmax and argmin in 16-byte packs against the CPU, bit for bit: many ties (the
    /// lowest index wins whichever thread read it) and a NaN in some outputs (NaN wins).
    fn packed_extremes<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        for (i, (shape, dim)) in REDUCED.into_iter().enumerate() {
            for off in [0, 1, 3] {
                let x = offset_view(shape, off, |n| {
                    let mut v =
                        small_ints(&[n], 20.0, DType::F32, seed + 7 * i as u64 + off as u64)
                            .to_vec::<f32>()
                            .unwrap();
                    v[n / 3] = f32::NAN;
                    Tensor::from_vec(v, &[n]).unwrap().to_dtype(dt).unwrap()
                });
                let gx = up::<T>(gpu, &x);
                let axis = Axis::of(shape, dim);
                let mut out_shape = shape.to_vec();
                out_shape.remove(dim);
                let what = format!("{dt} {shape:?} dim {dim} offset {off}");
                for which in [Extreme::Max, Extreme::Min] {
                    let (value, index) = match which {
                        Extreme::Max => (x.max(dim, false), x.argmax(dim, false)),
                        Extreme::Min => (x.min(dim, false), x.argmin(dim, false)),
                    };
                    let got = extreme(gpu, gx.contig(), axis, which).unwrap();
                    let got_i = arg_extreme(gpu, gx.contig(), axis, which).unwrap();
                    assert_same(&down(gpu, &got, &out_shape), &value.unwrap(), &what);
                    assert_same(&down(gpu, &got_i, &out_shape), &index.unwrap(), &what);
                }
            }
        }
    }

    /// Integer sums (i64, u8 into i64) in 16-byte packs for rows, against the CPU exactly.
    fn packed_int_sums<T: DeviceElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        for (i, (shape, dim)) in REDUCED.into_iter().enumerate() {
            for off in [0, 1, 3] {
                let s = seed + 7 * i as u64 + off as u64;
                let x = offset_view(shape, off, |n| ints(n, 0, 0.0, 250.0, dt, s));
                let gx = up::<T>(gpu, &x);
                let mut out_shape = shape.to_vec();
                out_shape.remove(dim);
                let got = sum_int(gpu, gx.contig(), Axis::of(shape, dim)).unwrap();
                assert_same(
                    &down(gpu, &got, &out_shape),
                    &x.sum(&[dim], false).unwrap(),
                    &format!("integer sum {dt} {shape:?} dim {dim} offset {off}"),
                );
            }
        }
    }

    #[test]
    fn packed_extremes_and_integer_sums_match_cpu_on_offset_views() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(packed_extremes, &gpu, s);
        packed_int_sums::<i64>(&gpu, s + 100);
        packed_int_sums::<u8>(&gpu, s + 200);
    }

    #[test]
    fn contiguous_packs_and_tails_match_cpu_for_every_dtype() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        contiguous::<f32>(&gpu, s);
        contiguous::<f16>(&gpu, s + 1000);
        contiguous::<bf16>(&gpu, s + 2000);
        contiguous::<i64>(&gpu, s + 3000);
        contiguous::<u8>(&gpu, s + 4000);
        for_each_float!(maps, &gpu, s + 5000);
    }

    #[test]
    fn row_walks_match_cpu_for_every_dtype() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        rows::<f32>(&gpu, s);
        rows::<f16>(&gpu, s + 1000);
        rows::<bf16>(&gpu, s + 2000);
        rows::<i64>(&gpu, s + 3000);
        rows::<u8>(&gpu, s + 4000);
    }

    #[test]
    fn packed_sums_match_cpu_on_offset_views() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(packed_sums, &gpu, s);
    }

    #[test]
    fn a_million_odd_elements_take_packs_and_a_tail() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        let n = 1_000_003;
        let (a, b) = operands(n, (0, 0), DType::F32, s);
        check_binary::<f32>(&gpu, &[n], &a, &b, "n 1000003");
    }
}

// ---- cast -------------------------------------------------------------------------------------

mod cast {
    use super::*;

    /// Values with every conversion edge: NaN, infinities, rounding ties, out-of-range for u8,
    /// f16 and i64, negative fractions, tiny values; then random ones.
    fn source(seed: u64) -> Tensor {
        let mut v = vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.5,
            0.5,
            2.5,
            255.7,
            256.0,
            -1.0,
            1e20,
            -1e20,
            65504.0,
            70000.0,
            1e-8,
            -0.0,
            1.0 + 1.0 / 1024.0 + 1.0 / 4096.0,
        ];
        v.extend(
            tensor::testing::randn(&[48], 60.0, DType::F64, seed)
                .to_vec_f64()
                .unwrap(),
        );
        Tensor::from_vec(v, &[8, 8]).unwrap()
    }

    fn pair<S: DeviceElem + WithDType, D: DeviceElem + WithDType>(gpu: &Gpu, seed: u64) {
        // Non-finite values have no integer source.
        let src = source(seed);
        let src = if S::DTYPE == DType::I64 || S::DTYPE == DType::U8 {
            src.masked_fill(&src.ne(&src).unwrap(), 0.0)
                .unwrap()
                .minimum_scalar(1e15)
                .unwrap()
                .maximum_scalar(-1e15)
                .unwrap()
        } else {
            src
        };
        let typed = src.to_dtype(S::DTYPE).unwrap();
        // Transposed (the walk); contiguous (16-byte packs, then a tail of 61 % pack elements);
        // contiguous at an odd offset (not 16-byte aligned: one element at a time).
        let flat = typed.reshape(&[64]).unwrap();
        let views = [
            ("transposed", typed.t().unwrap()),
            ("contiguous", flat.narrow(0, 0, 61).unwrap()),
            ("offset", flat.narrow(0, 1, 61).unwrap()),
        ];
        for (how, x) in views {
            let gx = up::<S>(gpu, &x);
            let got = cuda::ops::cast::cast::<S, D>(gpu, x.shape(), gx.strided()).unwrap();
            let want = x.to_dtype(D::DTYPE).unwrap();
            assert_same(
                &down(gpu, &got, x.shape()),
                &want,
                &format!("cast {} -> {} ({how})", S::DTYPE, D::DTYPE),
            );
        }
    }

    macro_rules! from {
        ($gpu:expr, $seed:expr, $s:ty) => {
            pair::<$s, f32>($gpu, $seed);
            pair::<$s, f64>($gpu, $seed);
            pair::<$s, f16>($gpu, $seed);
            pair::<$s, bf16>($gpu, $seed);
            pair::<$s, i64>($gpu, $seed);
            pair::<$s, u8>($gpu, $seed);
        };
    }

    #[test]
    fn every_cast_matches_cpu_bit_for_bit() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        from!(&gpu, s, f32);
        from!(&gpu, s, f64);
        from!(&gpu, s, f16);
        from!(&gpu, s, bf16);
        from!(&gpu, s, i64);
        from!(&gpu, s, u8);
    }
}

// ---- reduce -----------------------------------------------------------------------------------

mod reduce {
    use super::*;
    use cuda::ops::reduce::{arg_extreme, extreme, sum, Axis, Extreme, SumKind};

    fn sums<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        // Column path, row path, long rows split into chunks, a long column split into chunks.
        let cases: [(&[usize], usize); 4] = [
            (&[7, 300, 5], 1),
            (&[7, 300, 5], 2),
            (&[3, 100_003], 1),
            (&[100_001, 3], 0),
        ];
        for (i, (shape, dim)) in cases.into_iter().enumerate() {
            let x = randn(shape, 1.0, dt, seed + i as u64)
                .add_scalar(0.3)
                .unwrap();
            let gx = up::<T>(gpu, &x);
            let axis = Axis::of(shape, dim);
            let mut out_shape = shape.to_vec();
            out_shape.remove(dim);
            let what = format!("{dt} {shape:?} dim {dim}");
            let got = |kind| {
                down(
                    gpu,
                    &sum::<T, T>(gpu, gx.contig(), axis, kind).unwrap(),
                    &out_shape,
                )
            };
            assert_close(
                &got(SumKind::Sum),
                &x.sum(&[dim], false).unwrap(),
                tol(dt),
                &format!("sum {what}"),
            );
            assert_close(
                &got(SumKind::Mean),
                &x.mean(&[dim], false).unwrap(),
                tol(dt),
                &format!("mean {what}"),
            );
            let x32 = x.to_dtype(DType::F32).unwrap();
            let sq = x32
                .sqr()
                .unwrap()
                .sum(&[dim], false)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            assert_close(
                &got(SumKind::SumSq),
                &sq,
                tol(dt),
                &format!("sum of squares {what}"),
            );
            if dt != DType::F32 {
                // Half input, f32 result: only the f32 rounding remains.
                let wide = down(
                    gpu,
                    &sum::<T, f32>(gpu, gx.contig(), axis, SumKind::Sum).unwrap(),
                    &out_shape,
                );
                assert_close(
                    &wide,
                    &x32.sum(&[dim], false).unwrap(),
                    1e-5,
                    &format!("sum to f32 {what}"),
                );
            }
        }
    }

    fn extremes<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        for (i, (shape, dim)) in [
            (&[5, 40, 3][..], 1),
            (&[6, 9000][..], 1),
            (&[4000, 7][..], 0),
        ]
        .into_iter()
        .enumerate()
        {
            // Ties everywhere, and a NaN in part of the data.
            let mut v = small_ints(shape, 20.0, DType::F32, seed + i as u64)
                .to_vec::<f32>()
                .unwrap();
            let n = v.len();
            v[n / 3] = f32::NAN;
            let x = Tensor::from_vec(v, shape).unwrap().to_dtype(dt).unwrap();
            let gx = up::<T>(gpu, &x);
            let axis = Axis::of(shape, dim);
            let mut out_shape = shape.to_vec();
            out_shape.remove(dim);
            let what = format!("{dt} {shape:?} dim {dim}");
            for (which, name) in [(Extreme::Max, "max"), (Extreme::Min, "min")] {
                let got = down(
                    gpu,
                    &extreme(gpu, gx.contig(), axis, which).unwrap(),
                    &out_shape,
                );
                let want = if which == Extreme::Max {
                    x.max(dim, false)
                } else {
                    x.min(dim, false)
                }
                .unwrap();
                assert_same(&got, &want, &format!("{name} {what}"));
                let got = down(
                    gpu,
                    &arg_extreme(gpu, gx.contig(), axis, which).unwrap(),
                    &out_shape,
                );
                let want = if which == Extreme::Max {
                    x.argmax(dim, false)
                } else {
                    x.argmin(dim, false)
                }
                .unwrap();
                assert_same(&got, &want, &format!("arg{name} {what}"));
            }
        }
    }

    #[test]
    fn sums_means_and_extremes_match_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(sums, &gpu, s);
        for_each_float!(extremes, &gpu, s + 30);
    }
}

// ---- softmax ----------------------------------------------------------------------------------

mod softmax {
    use super::*;
    use cuda::ops::softmax::{softmax, softmax_backward};

    fn check<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        let shape = [2, 3, 5, 130];
        let x = randn(&shape, 3.0, dt, seed);
        // A padding mask [2,1,1,130]: batch 0 masks some keys, batch 1 masks every key (rows of
        // -inf give zeros / -inf).
        let mut m = vec![0f32; 2 * 130];
        let drop = small_ints(&[130], 4.0, DType::F32, seed + 1)
            .to_vec::<f32>()
            .unwrap();
        for j in 0..130 {
            m[j] = if drop[j] == 0.0 {
                f32::NEG_INFINITY
            } else {
                0.0
            };
            m[130 + j] = f32::NEG_INFINITY;
        }
        let pad = Tensor::from_vec(m, &[2, 1, 1, 130])
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let full = randn(&shape, 2.0, dt, seed + 2);
        let per_row = randn(&[2, 3, 5, 1], 2.0, dt, seed + 3);
        let gx = up::<T>(gpu, &x);
        for (what, mask) in [
            ("no mask", None),
            ("padding mask", Some(&pad)),
            ("full mask", Some(&full)),
            ("per-row mask", Some(&per_row)),
        ] {
            let gm = mask.map(|m| up::<T>(gpu, m));
            let lm = mask.map(|m| m.layout().broadcast_to("t", &shape).unwrap());
            for log in [false, true] {
                let ms = gm.as_ref().zip(lm.as_ref()).map(|(g, l)| g.through(l));
                let got = down(
                    gpu,
                    &softmax(gpu, gx.contig(), &shape, ms, 0.125, log).unwrap(),
                    &shape,
                );
                let want = if log {
                    x.log_softmax_last(mask, 0.125)
                } else {
                    x.softmax_last(mask, 0.125)
                }
                .unwrap();
                assert_close(
                    &got,
                    &want,
                    tol(dt),
                    &format!(
                        "{} {dt} {what}",
                        if log { "log_softmax" } else { "softmax" }
                    ),
                );
            }
        }
        // Backward from the CPU's forward output.
        let dy = randn(&shape, 1.0, dt, seed + 4);
        for log in [false, true] {
            let y = if log {
                x.log_softmax_last(Some(&full), 0.5)
            } else {
                x.softmax_last(Some(&full), 0.5)
            }
            .unwrap();
            let (gy, gdy) = (up::<T>(gpu, &y), up::<T>(gpu, &dy));
            let got = down(
                gpu,
                &softmax_backward(gpu, gy.contig(), gdy.contig(), &shape, 0.5, log).unwrap(),
                &shape,
            );
            let want = if log {
                Tensor::log_softmax_backward(&y, &dy, 0.5)
            } else {
                Tensor::softmax_backward(&y, &dy, 0.5)
            }
            .unwrap();
            assert_close(&got, &want, tol(dt), &format!("backward (log {log}) {dt}"));
        }
        // A long row (the vocabulary).
        let wide = randn(&[3, 30522], 2.0, dt, seed + 5);
        let gw = up::<T>(gpu, &wide);
        let got = down(
            gpu,
            &softmax(gpu, gw.contig(), &[3, 30522], None, 1.0, true).unwrap(),
            &[3, 30522],
        );
        assert_close(
            &got,
            &wide.log_softmax_last(None, 1.0).unwrap(),
            tol(dt),
            &format!("log_softmax over 30522 {dt}"),
        );
    }

    #[test]
    fn softmax_with_mask_and_scale_matches_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(check, &gpu, s);
    }
}

// ---- layer_norm -------------------------------------------------------------------------------

mod layer_norm {
    use super::*;
    use cuda::ops::layer_norm::{layer_norm, layer_norm_backward};

    fn check<T: FloatElem + WithDType, W: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let (dt, wt) = (T::DTYPE, W::DTYPE);
        // The fused one-pass backward (n <= 8192; rows split over blocks, a partial last block,
        // one row) and, past 8192 columns, the two-kernel backward.
        let shapes = [(37usize, 768usize), (5, 5), (300, 33), (1, 1000), (3, 8200)];
        for (i, &(rows, n)) in shapes.iter().enumerate() {
            let s = seed + 10 * i as u64;
            let x = randn(&[rows, n], 2.0, dt, s).add_scalar(0.5).unwrap();
            let w = randn(&[n], 1.0, wt, s + 1);
            let b = randn(&[n], 1.0, wt, s + 2);
            let dy = randn(&[rows, n], 1.0, dt, s + 3);
            let what = format!("{dt}/{wt} [{rows}, {n}]");
            let (gx, gw, gb, gdy) = (
                up::<T>(gpu, &x),
                up::<W>(gpu, &w),
                up::<W>(gpu, &b),
                up::<T>(gpu, &dy),
            );
            let out = layer_norm::<T, W>(gpu, gx.contig(), rows, n, gw.contig(), gb.contig(), 1e-5)
                .unwrap();
            let (y, mean, rstd) = x.layer_norm(&w, &b, 1e-5).unwrap();
            assert_close(
                &down(gpu, &out.y, &[rows, n]),
                &y,
                tol(dt),
                &format!("y {what}"),
            );
            assert_close(
                &down(gpu, &out.mean, &[rows]),
                &mean,
                1e-5,
                &format!("mean {what}"),
            );
            assert_close(
                &down(gpu, &out.rstd, &[rows]),
                &rstd,
                1e-5,
                &format!("rstd {what}"),
            );
            let (gm, gr) = (up::<f32>(gpu, &mean), up::<f32>(gpu, &rstd));
            let g = layer_norm_backward::<T, W>(
                gpu,
                gx.contig(),
                gw.contig(),
                gm.contig(),
                gr.contig(),
                gdy.contig(),
                rows,
                n,
            )
            .unwrap();
            let (dx, dw, db) = Tensor::layer_norm_backward(&x, &w, &mean, &rstd, &dy).unwrap();
            assert_close(
                &down(gpu, &g.dx, &[rows, n]),
                &dx,
                tol(dt),
                &format!("dx {what}"),
            );
            // The parameter gradients sum rows of T-precision data: T's tolerance.
            assert_close(
                &down(gpu, &g.dweight, &[n]),
                &dw,
                tol(dt).max(tol(wt)),
                &format!("dweight {what}"),
            );
            assert_close(
                &down(gpu, &g.dbias, &[n]),
                &db,
                tol(dt).max(tol(wt)),
                &format!("dbias {what}"),
            );
        }
    }

    #[test]
    fn layer_norm_forward_and_backward_match_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        check::<f32, f32>(&gpu, s);
        check::<f16, f16>(&gpu, s + 100);
        check::<bf16, bf16>(&gpu, s + 200);
        check::<f16, f32>(&gpu, s + 300);
        check::<bf16, f32>(&gpu, s + 400);
    }
}

// ---- activation -------------------------------------------------------------------------------

mod activation {
    use super::*;
    use cuda::ops::activation::{bias_gelu, bias_gelu_backward, gelu, gelu_backward};

    /// 1025 elements: 16-byte packs and a tail when aligned (offset 0), one by one when x and
    /// dy are read from an offset of one element.
    fn plain<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        for off in [0, 1] {
            plain_at::<T>(gpu, seed + off as u64, off);
        }
    }

    fn plain_at<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64, off: usize) {
        let dt = T::DTYPE;
        let at = |t: Tensor| t.narrow(0, off, 1025).unwrap();
        let x = at(randn(&[1025 + off], 3.0, dt, seed));
        let dy = at(randn(&[1025 + off], 1.0, dt, seed + 1));
        let (gx, gdy) = (up::<T>(gpu, &x), up::<T>(gpu, &dy));
        assert_close(
            &down(gpu, &gelu(gpu, gx.contig(), 1025).unwrap(), &[1025]),
            &x.gelu().unwrap(),
            tol(dt),
            &format!("gelu {dt} offset {off}"),
        );
        let got = down(
            gpu,
            &gelu_backward(gpu, gx.contig(), gdy.contig(), 1025).unwrap(),
            &[1025],
        );
        assert_close(
            &got,
            &Tensor::gelu_backward(&x, &dy).unwrap(),
            tol(dt),
            &format!("gelu_backward {dt} offset {off}"),
        );
    }

    /// Rows of an odd length (one by one), of BERT-base's 3072 and of 40 (16-byte packs, the
    /// bias read in packs at each row's columns).
    fn fused<T: FloatElem + WithDType, W: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        for (i, (rows, h)) in [(19, 3072 + 7), (5, 3072), (3, 40)].into_iter().enumerate() {
            fused_rows::<T, W>(gpu, seed + 3 * i as u64, rows, h);
        }
    }

    fn fused_rows<T: FloatElem + WithDType, W: FloatElem + WithDType>(
        gpu: &Gpu,
        seed: u64,
        rows: usize,
        h: usize,
    ) {
        let (dt, wt) = (T::DTYPE, W::DTYPE);
        let x = randn(&[rows, h], 2.0, dt, seed);
        let b = randn(&[h], 1.0, wt, seed + 1);
        let dy = randn(&[rows, h], 1.0, dt, seed + 2);
        let (gx, gb, gdy) = (up::<T>(gpu, &x), up::<W>(gpu, &b), up::<T>(gpu, &dy));
        // The reference computes x + b in f32 (the kernel does not round it to T).
        let f32_ = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let z = f32_(&x).add(&f32_(&b)).unwrap();
        let what = format!("{dt}/{wt} [{rows}, {h}]");
        let got = down(
            gpu,
            &bias_gelu::<T, W>(gpu, gx.contig(), gb.contig(), rows, h).unwrap(),
            &[rows, h],
        );
        assert_close(
            &got,
            &z.gelu().unwrap().to_dtype(dt).unwrap(),
            tol(dt),
            &format!("bias_gelu {what}"),
        );
        let (dz, db) =
            bias_gelu_backward::<T, W>(gpu, gx.contig(), gb.contig(), gdy.contig(), rows, h)
                .unwrap();
        let dz_want = Tensor::gelu_backward(&z, &f32_(&dy)).unwrap();
        assert_close(
            &down(gpu, &dz, &[rows, h]),
            &dz_want.to_dtype(dt).unwrap(),
            tol(dt),
            &format!("bias_gelu dz {what}"),
        );
        let db_want = dz_want.sum(&[0], false).unwrap().to_dtype(wt).unwrap();
        assert_close(
            &down(gpu, &db, &[h]),
            &db_want,
            tol(dt).max(tol(wt)),
            &format!("bias_gelu db {what}"),
        );
    }

    #[test]
    fn gelu_and_bias_gelu_match_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(plain, &gpu, s);
        fused::<f32, f32>(&gpu, s + 30);
        fused::<f16, f16>(&gpu, s + 40);
        fused::<bf16, bf16>(&gpu, s + 50);
        fused::<f16, f32>(&gpu, s + 60);
        fused::<bf16, f32>(&gpu, s + 70);
    }
}

// ---- embedding --------------------------------------------------------------------------------

mod embedding {
    use super::*;
    use cuda::ops::embedding::{embedding, embedding_backward};

    fn ids(n: usize, v: usize, seed: u64) -> Tensor {
        small_ints(&[n], v as f64, DType::I64, seed)
    }

    fn check<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        let (v, h, n) = (50, 24 + 1, 300);
        let table = randn(&[v, h], 1.0, dt, seed);
        let idx = ids(n, v, seed + 1);
        let dy = randn(&[n, h], 1.0, dt, seed + 2);
        let (gt, gi, gdy) = (
            up::<T>(gpu, &table),
            up::<i64>(gpu, &idx),
            up::<T>(gpu, &dy),
        );
        let got = down(
            gpu,
            &embedding(gpu, gt.contig(), v, h, gi.contig(), n).unwrap(),
            &[n, h],
        );
        assert_same(
            &got,
            &Tensor::embedding(&table, &idx).unwrap(),
            &format!("embedding {dt}"),
        );
        let got = down(
            gpu,
            &embedding_backward(gpu, gi.contig(), gdy.contig(), n, h, v).unwrap(),
            &[v, h],
        );
        let want = Tensor::embedding_backward(&idx, &dy, v).unwrap();
        assert_close(&got, &want, tol(dt), &format!("embedding_backward {dt}"));
        gpu.check_status().unwrap();
    }

    #[test]
    fn embedding_forward_and_backward_match_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(check, &gpu, s);
        // Any element width gathers (an i64 table).
        let table = small_ints(&[9, 4], 1000.0, DType::I64, s + 30);
        let idx = ids(11, 9, s + 31);
        let (gt, gi) = (up::<i64>(&gpu, &table), up::<i64>(&gpu, &idx));
        let got = down(
            &gpu,
            &embedding(&gpu, gt.contig(), 9, 4, gi.contig(), 11).unwrap(),
            &[11, 4],
        );
        assert_same(
            &got,
            &Tensor::embedding(&table, &idx).unwrap(),
            "embedding i64",
        );
        // A bad id in the backward is reported too.
        let bad = gpu.upload(&[3i64, -1]).unwrap();
        let dy = gpu.upload(&[1.0f32; 8]).unwrap();
        embedding_backward(&gpu, (&bad).into(), (&dy).into(), 2, 4, 9).unwrap();
        let e = gpu.check_status().unwrap_err().to_string();
        assert!(e.contains("index -1"), "{e}");
    }
}

// ---- cross_entropy ----------------------------------------------------------------------------

mod cross_entropy {
    use super::*;
    use cuda::ops::cross_entropy::{cross_entropy, cross_entropy_backward};

    const IGNORE: i64 = -100;

    fn targets(rows: usize, c: usize, seed: u64, ignore_all: bool) -> Tensor {
        let t = small_ints(&[rows], c as f64, DType::I64, seed)
            .to_vec::<i64>()
            .unwrap();
        let t: Vec<i64> = t
            .into_iter()
            .enumerate()
            .map(|(i, v)| if ignore_all || i % 3 == 1 { IGNORE } else { v })
            .collect();
        Tensor::from_vec(t, &[rows]).unwrap()
    }

    fn check<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        for (i, &(rows, c, ignore_all)) in
            [(33usize, 1000usize, false), (5, 30522, false), (4, 7, true)]
                .iter()
                .enumerate()
        {
            let s = seed + 10 * i as u64;
            let x = randn(&[rows, c], 3.0, dt, s);
            let t = targets(rows, c, s + 1, ignore_all);
            let (gx, gt) = (up::<T>(gpu, &x), up::<i64>(gpu, &t));
            let what = format!(
                "{dt} [{rows}, {c}]{}",
                if ignore_all { " all ignored" } else { "" }
            );
            let out = cross_entropy(gpu, gx.contig(), rows, c, gt.contig(), IGNORE).unwrap();
            let (loss, lse) = Tensor::cross_entropy(&x, &t, IGNORE).unwrap();
            assert_close(
                &down(gpu, &out.loss, &[]),
                &loss,
                tol(dt),
                &format!("loss {what}"),
            );
            assert_close(
                &down(gpu, &out.lse, &[rows]),
                &lse,
                1e-5,
                &format!("lse {what}"),
            );
            let gl = up::<f32>(gpu, &lse);
            let got = cross_entropy_backward(
                gpu,
                gx.contig(),
                rows,
                c,
                gt.contig(),
                gl.contig(),
                IGNORE,
                0.7,
                None,
            )
            .unwrap();
            let want = Tensor::cross_entropy_backward(&x, &t, &lse, IGNORE, 0.7).unwrap();
            assert_close(
                &down(gpu, &got, &[rows, c]),
                &want,
                tol(dt),
                &format!("backward {what}"),
            );
            // The loss gradient may live on the device: 2.0 (device) x 0.35 (host) = 0.7.
            let two = gpu.upload(&[2.0f32]).unwrap();
            let got = cross_entropy_backward(
                gpu,
                gx.contig(),
                rows,
                c,
                gt.contig(),
                gl.contig(),
                IGNORE,
                0.35,
                Some(&two),
            )
            .unwrap();
            assert_close(
                &down(gpu, &got, &[rows, c]),
                &want,
                tol(dt),
                &format!("backward, device grad, {what}"),
            );
        }
        gpu.check_status().unwrap();
    }

    #[test]
    fn cross_entropy_with_ignore_index_matches_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(check, &gpu, s);
        // An out-of-range target is reported.
        let x = gpu.upload(&[0.0f32; 6]).unwrap();
        let t = gpu.upload(&[1i64, 3]).unwrap();
        cross_entropy(&gpu, (&x).into(), 2, 3, (&t).into(), IGNORE).unwrap();
        let e = gpu.check_status().unwrap_err().to_string();
        assert!(e.contains("target 3 is out of range"), "{e}");
    }
}

// ---- dropout and the Philox fills -------------------------------------------------------------

mod dropout {
    use super::*;
    use cuda::ops::dropout::{bernoulli, dropout, dropout_apply, normal, uniform, Draw};

    /// 1073 elements (whole Philox blocks in packs and a tail of one), aligned and read from an
    /// offset of one element (one by one).
    fn check<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        for off in [0, 1] {
            check_at::<T>(gpu, seed + off as u64, off);
        }
    }

    fn check_at<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64, off: usize) {
        let dt = T::DTYPE;
        let at = |t: Tensor| t.narrow(0, off, 37).unwrap();
        let x = at(randn(&[37 + off, 29], 1.0, dt, seed));
        let n = x.elem_count();
        let gx = up::<T>(gpu, &x);
        for p in [0.1, 0.5, 1.0] {
            let mut rng = Rng {
                seed: seed ^ 0x5eed,
                offset: 5,
            };
            let draw = Draw {
                seed: rng.seed,
                offset: rng.offset,
            };
            let (want, keep) = x.dropout(p, &mut rng).unwrap();
            let (got, got_keep) = dropout(gpu, gx.contig(), n, p, draw).unwrap();
            assert_same(
                &down(gpu, &got_keep, x.shape()),
                &keep,
                &format!("keep mask p {p} {dt} offset {off}"),
            );
            assert_same(
                &down(gpu, &got, x.shape()),
                &want,
                &format!("dropout p {p} {dt} offset {off}"),
            );
            let dy = at(randn(&[37 + off, 29], 1.0, dt, seed + 1));
            let (gdy, gk) = (up::<T>(gpu, &dy), up::<u8>(gpu, &keep));
            let got = dropout_apply(gpu, gdy.contig(), gk.contig(), n, p).unwrap();
            assert_same(
                &down(gpu, &got, x.shape()),
                &Tensor::dropout_backward(&dy, &keep, p).unwrap(),
                &format!("dropout backward p {p} {dt} offset {off}"),
            );
        }
        let shape = [1001];
        let mut rng = Rng { seed, offset: 3 };
        let draw = Draw { seed, offset: 3 };
        let want = Tensor::rand_uniform(&shape, -2.0, 3.0, dt, Device::Cpu, &mut rng).unwrap();
        assert_same(
            &down(
                gpu,
                &uniform::<T>(gpu, 1001, -2.0, 3.0, draw).unwrap(),
                &shape,
            ),
            &want,
            &format!("rand_uniform {dt}"),
        );
        let mut rng = Rng { seed, offset: 3 };
        let want = Tensor::randn(&shape, 0.5, 0.02, dt, Device::Cpu, &mut rng).unwrap();
        // Box-Muller in f64 through the device's log and cos: the same numbers to within rounding.
        assert_close(
            &down(
                gpu,
                &normal::<T>(gpu, 1001, 0.5, 0.02, draw).unwrap(),
                &shape,
            ),
            &want,
            tol(dt),
            &format!("randn {dt}"),
        );
    }

    #[test]
    fn dropout_masks_and_draws_equal_the_cpu_stream() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(check, &gpu, s);
        let mut rng = Rng {
            seed: s,
            offset: 11,
        };
        let want = Tensor::bernoulli(&[333], 0.3, Device::Cpu, &mut rng).unwrap();
        let got = bernoulli(
            &gpu,
            333,
            0.3,
            Draw {
                seed: s,
                offset: 11,
            },
        )
        .unwrap();
        assert_same(&down(&gpu, &got, &[333]), &want, "bernoulli");
    }
}

// ---- topk -------------------------------------------------------------------------------------

mod topk {
    use super::*;
    use cuda::ops::topk::topk;

    fn check<T: FloatElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        for (i, &n) in [1usize, 37, 5000].iter().enumerate() {
            let rows = 6;
            let mut v = small_ints(&[rows, n], 10.0, DType::F32, seed + i as u64)
                .to_vec::<f32>()
                .unwrap();
            if n > 3 {
                v[2 * n + 3] = f32::NAN;
                v[4 * n + 1] = -0.0;
            }
            let x = Tensor::from_vec(v, &[rows, n])
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let gx = up::<T>(gpu, &x);
            for k in [1, n.min(5), n.min(2048)] {
                let (vals, idx) = topk(gpu, gx.contig(), rows, n, k).unwrap();
                let (want_v, want_i) = x.topk(k).unwrap();
                let what = format!("topk {dt} n {n} k {k}");
                assert_same(
                    &down(gpu, &idx, &[rows, k]),
                    &want_i,
                    &format!("{what} indices"),
                );
                assert_same(
                    &down(gpu, &vals, &[rows, k]),
                    &want_v,
                    &format!("{what} values"),
                );
            }
        }
    }

    #[test]
    fn topk_matches_cpu_including_ties_and_nan() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(check, &gpu, s);
        let x = gpu.upload(&[1.0f32; 3000]).unwrap();
        assert!(
            topk(&gpu, (&x).into(), 1, 3000, 2049).is_err(),
            "k above the kernel's limit"
        );
    }
}

// ---- AdamW and loss scaling -------------------------------------------------------------------

mod optim {
    use super::*;
    use cuda::ops::adamw::{adamw_step, AdamWParam, AdamWScalars, AdamWVariant, HalfCopy};
    use cuda::ops::loss_scale::{unscale, Unscale};
    use nn::{AdamW, AdamWConfig, LossScaler, LossScalerConfig, ParamUpdate};

    const NAMES: [&str; 3] = [
        "encoder.dense.weight",
        "encoder.dense.bias",
        "embeddings.word_embeddings.weight",
    ];
    const SHAPES: [&[usize]; 3] = [&[300, 70], &[5], &[16385]];

    fn steps<G: FloatElem + WithDType>(gpu: &Gpu, variant: nn::AdamWVariant, seed: u64) {
        let config = AdamWConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            variant,
            ..AdamWConfig::default()
        };
        let mut cpu = AdamW::new(config.clone()).unwrap();
        let mut values: Vec<Tensor> = SHAPES
            .iter()
            .enumerate()
            .map(|(i, s)| randn(s, 0.5, DType::F32, seed + i as u64))
            .collect();
        let mut p: Vec<DeviceBuffer<f32>> = values
            .iter()
            .map(|t| gpu.upload(&t.to_vec::<f32>().unwrap()).unwrap())
            .collect();
        let mut m: Vec<DeviceBuffer<f32>> = values
            .iter()
            .map(|t| gpu.zeros(t.elem_count()).unwrap())
            .collect();
        let mut v: Vec<DeviceBuffer<f32>> = values
            .iter()
            .map(|t| gpu.zeros(t.elem_count()).unwrap())
            .collect();
        let mut copies: Vec<DeviceBuffer<f16>> = values
            .iter()
            .map(|t| gpu.zeros(t.elem_count()).unwrap())
            .collect();
        let gpu_variant = match variant {
            nn::AdamWVariant::Hf => AdamWVariant::Hf,
            nn::AdamWVariant::Torch => AdamWVariant::Torch,
        };
        for step in 1..=3u64 {
            let lr = 1e-3 * step as f64;
            let grads: Vec<Tensor> = SHAPES
                .iter()
                .enumerate()
                .map(|(i, s)| randn(s, 1.0, G::DTYPE, seed + 10 * step + i as u64))
                .collect();
            let g: Vec<DeviceBuffer<G>> = grads
                .iter()
                .map(|t| gpu.upload(&t.to_vec::<G>().unwrap()).unwrap())
                .collect();
            let mut params: Vec<AdamWParam<'_, G>> = Vec::new();
            for (i, ((((p, m), v), c), g)) in p
                .iter_mut()
                .zip(m.iter_mut())
                .zip(v.iter_mut())
                .zip(copies.iter_mut())
                .zip(&g)
                .enumerate()
            {
                params.push(AdamWParam {
                    param: p,
                    grad: g,
                    exp_avg: m,
                    exp_avg_sq: v,
                    half_copy: Some(HalfCopy::F16(c)),
                    scalars: AdamWScalars::new(
                        gpu_variant,
                        lr,
                        config.betas,
                        config.eps,
                        config.weight_decay_for(NAMES[i]),
                        step,
                    ),
                });
            }
            adamw_step(gpu, &mut params).unwrap();
            let grads32: Vec<Tensor> = grads
                .iter()
                .map(|t| t.to_dtype(DType::F32).unwrap())
                .collect();
            let mut updates: Vec<ParamUpdate<'_>> = values
                .iter_mut()
                .zip(&grads32)
                .enumerate()
                .map(|(i, (value, grad))| ParamUpdate {
                    name: NAMES[i],
                    value,
                    grad,
                })
                .collect();
            cpu.step(lr, &mut updates).unwrap();
        }
        // The same f32 operations in the same order: equal bit for bit.
        for (i, name) in NAMES.iter().enumerate() {
            let what = format!("{variant:?} grads {} {name}", G::DTYPE);
            let st = cpu.param_state(name).unwrap();
            assert_eq!(
                gpu.download(&p[i]).unwrap(),
                values[i].to_vec::<f32>().unwrap(),
                "weights {what}"
            );
            assert_eq!(
                gpu.download(&m[i]).unwrap(),
                st.exp_avg().to_vec::<f32>().unwrap(),
                "exp_avg {what}"
            );
            assert_eq!(
                gpu.download(&v[i]).unwrap(),
                st.exp_avg_sq().to_vec::<f32>().unwrap(),
                "exp_avg_sq {what}"
            );
            let half = values[i]
                .to_dtype(DType::F16)
                .unwrap()
                .to_vec::<f16>()
                .unwrap();
            assert_eq!(gpu.download(&copies[i]).unwrap(), half, "half copy {what}");
        }
    }

    #[test]
    fn adamw_step_equals_the_cpu_optimizer() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for variant in [nn::AdamWVariant::Hf, nn::AdamWVariant::Torch] {
            steps::<f32>(&gpu, variant, s);
            steps::<f16>(&gpu, variant, s + 100);
            steps::<bf16>(&gpu, variant, s + 200);
        }
    }

    #[test]
    fn unscale_matches_the_loss_scaler() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        let scaler = LossScaler::new(LossScalerConfig::default()).unwrap();
        let inv = (1.0 / scaler.scale() as f64) as f32;
        for poison in [false, true] {
            let mut a = randn(&[20000], 1000.0, DType::F32, s);
            let mut b = randn(&[7], 1000.0, DType::F32, s + 1);
            if poison {
                b.data_mut::<f32>().unwrap()[3] = f32::INFINITY;
            }
            let (mut ga, mut gb) = (
                gpu.upload(&a.to_vec::<f32>().unwrap()).unwrap(),
                gpu.upload(&b.to_vec::<f32>().unwrap()).unwrap(),
            );
            let found = unscale::<f32>(
                &gpu,
                &mut [Unscale::InPlace(&mut ga), Unscale::InPlace(&mut gb)],
                inv,
            )
            .unwrap();
            let want_found = scaler.unscale(&mut [&mut a, &mut b]).unwrap();
            assert_eq!(
                gpu.download(&found).unwrap()[0] == 1,
                want_found,
                "found_inf (poison {poison})"
            );
            assert_eq!(want_found, poison);
            assert_same(&down(&gpu, &ga, &[20000]), &a, "unscaled a");
            assert_same(&down(&gpu, &gb, &[7]), &b, "unscaled b");
        }
        // Half gradients into f32 buffers.
        let mut g = randn(&[1000], 100.0, DType::BF16, s + 2);
        let src = gpu.upload(&g.to_vec::<bf16>().unwrap()).unwrap();
        let mut dst = gpu.alloc::<f32>(1000).unwrap();
        let found = unscale::<bf16>(&gpu, &mut [Unscale::Into(&src, &mut dst)], inv).unwrap();
        g = g.to_dtype(DType::F32).unwrap();
        assert!(!scaler.unscale(&mut [&mut g]).unwrap());
        assert_eq!(gpu.download(&found).unwrap(), vec![0]);
        assert_same(&down(&gpu, &dst, &[1000]), &g, "unscaled bf16 -> f32");
    }
}

// ---- GEMM and attention -----------------------------------------------------------------------

mod blas {
    use super::*;
    use cuda::blas::GemmElem;
    use cuda::ops::attention::{attention, attention_backward, AttentionDims, Heads};

    /// `t` as a row-major or transposed `Mat` (a 2-D view with one unit stride).
    fn mat<'a, T: DeviceElem>(g: &'a OnGpu<T>, t: &Tensor, batch_stride: usize) -> Mat<'a, T> {
        let (s, st) = (t.shape(), t.layout().strides());
        let r = s.len();
        Mat {
            buf: &g.buf,
            offset: t.layout().offset(),
            rows: s[r - 2],
            cols: s[r - 1],
            row_stride: st[r - 2],
            col_stride: st[r - 1],
            batch_stride,
        }
    }

    fn f32_(t: &Tensor) -> Tensor {
        t.to_dtype(DType::F32).unwrap()
    }

    fn products<T: FloatElem + GemmElem + WithDType>(gpu: &Gpu, math: MathMode, seed: u64) {
        let dt = T::DTYPE;
        let tolerance = if dt == DType::F32 && math == MathMode::Tf32 {
            1e-3
        } else {
            tol(dt)
        };
        let what = format!("{dt} {math:?}");
        let (m, k, n) = (37, 64, 53);
        let a = randn(&[m, k], 1.0, dt, seed);
        let at = randn(&[k, m], 1.0, dt, seed + 1).t().unwrap();
        let b = randn(&[k, n], 1.0, dt, seed + 2);
        let bt = randn(&[n, k], 1.0, dt, seed + 3).t().unwrap();
        // C = A·B (alpha 1, beta 0) for `batch` row-major m x n outputs.
        let plain = |a: Mat<'_, T>, b: Mat<'_, T>, c: &mut DeviceBuffer<T>, batch: usize| {
            gemm(
                gpu,
                a,
                b,
                MatMut::row_major(c, 0, m, n),
                batch,
                1.0,
                0.0,
                math,
            )
            .unwrap()
        };
        for (case, x, y) in [
            ("A B", &a, &b),
            ("Aᵀ B", &at, &b),
            ("A Bᵀ", &a, &bt),
            ("Aᵀ Bᵀ", &at, &bt),
        ] {
            let (gx, gy) = (up::<T>(gpu, x), up::<T>(gpu, y));
            let mut c = gpu.alloc::<T>(m * n).unwrap();
            plain(mat(&gx, x, 0), mat(&gy, y, 0), &mut c, 1);
            let want = f32_(x).matmul(&f32_(y)).unwrap().to_dtype(dt).unwrap();
            assert_close(
                &down(gpu, &c, &[m, n]),
                &want,
                tolerance,
                &format!("{case} {what}"),
            );
        }
        // alpha and beta: C = 0.5 A B + 2 C.
        let c0 = randn(&[m, n], 1.0, dt, seed + 4);
        let (ga, gb) = (up::<T>(gpu, &a), up::<T>(gpu, &b));
        let mut c = gpu.upload(&c0.to_vec::<T>().unwrap()).unwrap();
        gemm(
            gpu,
            mat(&ga, &a, 0),
            mat(&gb, &b, 0),
            MatMut::row_major(&mut c, 0, m, n),
            1,
            0.5,
            2.0,
            math,
        )
        .unwrap();
        let want = f32_(&a)
            .matmul(&f32_(&b))
            .unwrap()
            .mul_scalar(0.5)
            .unwrap()
            .add(&f32_(&c0).mul_scalar(2.0).unwrap())
            .unwrap();
        assert_close(
            &down(gpu, &c, &[m, n]),
            &want.to_dtype(dt).unwrap(),
            tolerance,
            &format!("alpha/beta {what}"),
        );
        // Strided batch of 3, and a B shared by every batch entry (batch stride 0).
        let a3 = randn(&[3, m, k], 1.0, dt, seed + 5);
        let b3 = randn(&[3, k, n], 1.0, dt, seed + 6);
        let (ga3, gb3) = (up::<T>(gpu, &a3), up::<T>(gpu, &b3));
        let mut c3 = gpu.alloc::<T>(3 * m * n).unwrap();
        plain(mat(&ga3, &a3, m * k), mat(&gb3, &b3, k * n), &mut c3, 3);
        let want = f32_(&a3).matmul(&f32_(&b3)).unwrap().to_dtype(dt).unwrap();
        assert_close(
            &down(gpu, &c3, &[3, m, n]),
            &want,
            tolerance,
            &format!("batched {what}"),
        );
        plain(mat(&ga3, &a3, m * k), mat(&gb, &b, 0), &mut c3, 3);
        let want = f32_(&a3).matmul(&f32_(&b)).unwrap().to_dtype(dt).unwrap();
        assert_close(
            &down(gpu, &c3, &[3, m, n]),
            &want,
            tolerance,
            &format!("batched, shared B, {what}"),
        );
        // The bias epilogue (cuBLASLt), with a transposed weight as in a Linear layer.
        let bias = randn(&[n], 1.0, dt, seed + 7);
        let gbias = up::<T>(gpu, &bias);
        let gbt = up::<T>(gpu, &bt);
        let mut c = gpu.alloc::<T>(m * n).unwrap();
        gemm_bias(
            gpu,
            mat(&ga, &a, 0),
            mat(&gbt, &bt, 0),
            (&gbias.buf, 0),
            MatMut::row_major(&mut c, 0, m, n),
            math,
        )
        .unwrap();
        let want = f32_(&a)
            .matmul(&f32_(&bt))
            .unwrap()
            .add(&f32_(&bias))
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        assert_close(
            &down(gpu, &c, &[m, n]),
            &want,
            tolerance,
            &format!("gemm_bias {what}"),
        );
        // A layout neither row- nor column-major is refused.
        let odd = randn(&[4, 4, 4], 1.0, dt, seed + 8);
        let godd = up::<T>(gpu, &odd);
        let bad = Mat {
            buf: &godd.buf,
            offset: 0,
            rows: 4,
            cols: 4,
            row_stride: 16,
            col_stride: 4,
            batch_stride: 0,
        };
        let mut c = gpu.alloc::<T>(16).unwrap();
        assert!(gemm(
            gpu,
            bad,
            bad,
            MatMut::row_major(&mut c, 0, 4, 4),
            1,
            1.0,
            0.0,
            math
        )
        .is_err());
    }

    #[test]
    fn gemm_matches_cpu_for_every_precision_and_layout() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        products::<f32>(&gpu, MathMode::Exact, s);
        products::<f32>(&gpu, MathMode::Tf32, s + 10);
        products::<f16>(&gpu, MathMode::Exact, s + 20);
        products::<bf16>(&gpu, MathMode::Exact, s + 30);
    }

    /// `gemm_bias` on views at odd element offsets (2-byte aligned bf16, 4-byte aligned f32
    /// pointers) against the CPU; its cuBLASLt plans cached (one heuristic query per problem and
    /// alignment, none on a repeat); and its plain GEMM + bias fallback, the same numbers.
    fn bias_plans<T: FloatElem + GemmElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        let (m, k, n) = (9, 24, 13);
        // Each operand is a narrowed view one element into a larger buffer.
        let view = |rows: usize, cols: usize, s: u64| {
            let t = randn(&[rows * cols + 1], 1.0, dt, s);
            t.narrow(0, 1, rows * cols)
                .unwrap()
                .reshape(&[rows, cols])
                .unwrap()
        };
        let (a, w, bias) = (view(m, k, seed), view(n, k, seed + 1), view(1, n, seed + 2));
        let (ga, gw, gb) = (up::<T>(gpu, &a), up::<T>(gpu, &w), up::<T>(gpu, &bias));
        let want = f32_(&a)
            .matmul(&f32_(&w).t().unwrap())
            .unwrap()
            .add(&f32_(&bias))
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let wt = w.t().unwrap();
        let run = |what: &str| -> cuda::Counters {
            let before = gpu.counters();
            let mut c = gpu.alloc::<T>(m * n + 1).unwrap();
            gemm_bias(
                gpu,
                mat(&ga, &a, 0),
                mat(&gw, &wt, 0),
                (&gb.buf, 1),
                MatMut::row_major(&mut c, 1, m, n),
                MathMode::Exact,
            )
            .unwrap();
            let got = gpu.download(&c).unwrap()[1..].to_vec();
            let got = Tensor::from_vec(got, &[m, n]).unwrap();
            assert_close(&got, &want, tol(dt), &format!("gemm_bias {dt} {what}"));
            gpu.counters().since(&before)
        };
        let first = run("offset views");
        assert!(first.heuristic_queries <= 1, "{first}");
        let again = run("offset views, cached plan");
        assert_eq!(again.heuristic_queries, 0, "{again}");
        assert_eq!(again.gemms, 1, "{again}");
        gpu.force_gemm_bias_fallback(true);
        let fallback = run("plain GEMM + bias");
        assert_eq!(
            (fallback.heuristic_queries, fallback.gemms),
            (1, 1),
            "{fallback}"
        );
        assert!(
            fallback.launches >= 1,
            "the bias copy is a launch: {fallback}"
        );
        gpu.force_gemm_bias_fallback(false);
        assert_eq!(run("after the fallback").heuristic_queries, 1);
    }

    #[test]
    fn gemm_bias_plans_are_cached_and_offset_views_and_the_fallback_match_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        bias_plans::<f32>(&gpu, s);
        bias_plans::<bf16>(&gpu, s + 10);
        bias_plans::<f16>(&gpu, s + 20);
    }

    fn heads<'a, T: FloatElem>(g: &'a OnGpu<T>) -> Heads<'a, T> {
        let st = g.layout.strides();
        Heads {
            buf: &g.buf,
            offset: g.layout.offset(),
            strides: [st[0], st[1], st[2], st[3]],
        }
    }

    fn attention_check<T: FloatElem + GemmElem + WithDType>(gpu: &Gpu, seed: u64) {
        let dt = T::DTYPE;
        let (b, s, h, d) = (2, 17, 3, 8);
        let scale = 1.0 / (d as f64).sqrt();
        // Projections come as [B, S, H, D]; attention sees them as [B, H, S, D] views.
        let view = |t: Tensor| t.permute(&[0, 2, 1, 3]).unwrap();
        let q = view(randn(&[b, s, h, d], 1.0, dt, seed));
        let k = view(randn(&[b, s, h, d], 1.0, dt, seed + 1));
        let v = view(randn(&[b, s, h, d], 1.0, dt, seed + 2));
        let d_out = view(randn(&[b, s, h, d], 1.0, dt, seed + 3));
        let mut mask = vec![0f32; b * s];
        for j in s - 4..s {
            mask[s + j] = f32::NEG_INFINITY; // batch 1: the last 4 keys are padding
        }
        let mask = Tensor::from_vec(mask, &[b, 1, 1, s])
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let (gq, gk, gv, gdo, gm) = (
            up::<T>(gpu, &q),
            up::<T>(gpu, &k),
            up::<T>(gpu, &v),
            up::<T>(gpu, &d_out),
            up::<T>(gpu, &mask),
        );
        let lm = mask.layout().broadcast_to("t", &[b, h, s, s]).unwrap();
        let dims = AttentionDims {
            batch: b,
            heads: h,
            q_len: s,
            k_len: s,
            head_dim: d,
        };
        let out = attention(
            gpu,
            dims,
            heads(&gq),
            heads(&gk),
            heads(&gv),
            Some(gm.through(&lm)),
            scale as f32,
            MathMode::Exact,
        )
        .unwrap();
        let grads = attention_backward(
            gpu,
            dims,
            heads(&gq),
            heads(&gk),
            heads(&gv),
            &out.probs,
            heads(&gdo),
            scale as f32,
            MathMode::Exact,
        )
        .unwrap();
        // The reference in f32 from the same inputs.
        let (q, k, v, d_out, mask) = (f32_(&q), f32_(&k), f32_(&v), f32_(&d_out), f32_(&mask));
        let p = q
            .matmul(&k.transpose(2, 3).unwrap())
            .unwrap()
            .softmax_last(Some(&mask), scale)
            .unwrap();
        let o = p.matmul(&v).unwrap();
        let dp = d_out.matmul(&v.transpose(2, 3).unwrap()).unwrap();
        let ds = Tensor::softmax_backward(&p, &dp, scale).unwrap();
        let dq = ds.matmul(&k).unwrap();
        let dk = ds.transpose(2, 3).unwrap().matmul(&q).unwrap();
        let dv = p.transpose(2, 3).unwrap().matmul(&d_out).unwrap();
        let back = |buf: &DeviceBuffer<T>, shape: &[usize]| f32_(&down(gpu, buf, shape));
        let (bhsd, bhss) = ([b, h, s, d], [b, h, s, s]);
        assert_close(
            &back(&out.probs, &bhss),
            &p,
            tol(dt),
            &format!("attention probs {dt}"),
        );
        assert_close(
            &back(&out.out, &bhsd),
            &o,
            tol(dt),
            &format!("attention out {dt}"),
        );
        assert_close(
            &back(&grads.dq, &bhsd),
            &dq,
            tol(dt),
            &format!("attention dq {dt}"),
        );
        assert_close(
            &back(&grads.dk, &bhsd),
            &dk,
            tol(dt),
            &format!("attention dk {dt}"),
        );
        assert_close(
            &back(&grads.dv, &bhsd),
            &dv,
            tol(dt),
            &format!("attention dv {dt}"),
        );
    }

    #[test]
    fn attention_forward_and_backward_match_cpu() {
        let Some((gpu, _serial, s)) = gpu_and_seed() else {
            return;
        };
        for_each_float!(attention_check, &gpu, s);
    }
}

// ---- flash attention: the tensor-core kernels against the CUDA-core reference -----------------

mod flash_paths {
    use super::*;
    use cuda::ops::attention::{AttentionDims, Heads};
    use cuda::ops::dropout::Draw;
    use cuda::ops::flash_attention::{
        flash_attention_backward_on, flash_attention_on, FlashDropout, FlashInputs, FlashPath,
    };

    /// A `[B, S, H·D]` projection seen as `[B, H, S, D]` (not contiguous).
    fn heads<'a>(buf: &'a DeviceBuffer<bf16>, (h, s, d): (usize, usize, usize)) -> Heads<'a, bf16> {
        Heads {
            buf,
            offset: 0,
            strides: [s * h * d, d, h * d, 1],
        }
    }

    /// (out, lse, dq, dk, dv) of one path, downloaded as f32 tensors.
    fn run(
        gpu: &Gpu,
        inp: &FlashInputs<'_, bf16>,
        d_out: Heads<'_, bf16>,
        path: FlashPath,
    ) -> Vec<Tensor> {
        let AttentionDims {
            batch: b,
            heads: h,
            q_len: sq,
            k_len: sk,
            head_dim: d,
        } = inp.dims;
        let f = flash_attention_on(gpu, inp, path).unwrap();
        let (out, lse) = (Contig::new(&f.out, 0), Contig::new(&f.lse, 0));
        let g = flash_attention_backward_on(gpu, inp, out, lse, d_out, path).unwrap();
        let as_f32 = |t: Tensor| t.to_dtype(DType::F32).unwrap();
        vec![
            as_f32(down(gpu, &f.out, &[b, h, sq, d])),
            down(gpu, &f.lse, &[b, h, sq]),
            as_f32(down(gpu, &g.dq, &[b, h, sq, d])),
            as_f32(down(gpu, &g.dk, &[b, h, sk, d])),
            as_f32(down(gpu, &g.dv, &[b, h, sk, d])),
        ]
    }

    /// bf16 attention on the tensor cores equals the f32-math reference kernels within bf16's
    /// tolerance: two query and key tiles with partial ones, a head dim that pads to 16 and one
    /// that does not need to, a key-padding mask, dropout on both Philox paths (Sk % 4 == 0
    /// draws four decisions per call, Sk = 67 one), q/k/v/dO as strided views.
    #[test]
    fn tensor_core_flash_attention_matches_the_reference_kernels() {
        let Some((gpu, _serial, seed)) = gpu_and_seed() else {
            return;
        };
        for (i, &(b, h, sq, sk, d)) in [(2, 2, 70, 68, 48), (1, 3, 33, 67, 40), (1, 1, 5, 130, 64)]
            .iter()
            .enumerate()
        {
            let s = seed + 10 * i as u64;
            let make = |len: usize, k: u64| {
                let t = randn(&[b, len, h * d], 1.0, DType::BF16, s + k);
                up::<bf16>(&gpu, &t).buf
            };
            let (q, k, v, g) = (make(sq, 1), make(sk, 2), make(sk, 3), make(sq, 4));
            // The last third of the keys of the last batch element padded (BERT's additive mask).
            let pad: Vec<f32> = (0..b * sk)
                .map(|j| if j >= b * sk - sk / 3 { -1e4 } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(pad, &[b, 1, 1, sk])
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let gm = up::<bf16>(&gpu, &mask);
            let mask_strides = [sk, 0, 0, 1];
            let dims = AttentionDims {
                batch: b,
                heads: h,
                q_len: sq,
                k_len: sk,
                head_dim: d,
            };
            for dropout in [None, Some(0.25)] {
                let inp = FlashInputs {
                    dims,
                    q: heads(&q, (h, sq, d)),
                    k: heads(&k, (h, sk, d)),
                    v: heads(&v, (h, sk, d)),
                    mask: Some(Strided::new(&gm.buf, 0, &mask_strides)),
                    scale: (d as f32).powf(-0.5),
                    dropout: dropout.map(|p| FlashDropout {
                        p,
                        draw: Draw {
                            seed: s ^ 0x5eed,
                            offset: 7,
                        },
                    }),
                };
                let d_out = heads(&g, (h, sq, d));
                let want = run(&gpu, &inp, d_out, FlashPath::CudaCores);
                let got = run(&gpu, &inp, d_out, FlashPath::TensorCores);
                for (name, (g, w)) in ["out", "lse", "dq", "dk", "dv"]
                    .iter()
                    .zip(got.iter().zip(&want))
                {
                    assert_close(
                        g,
                        w,
                        1e-2,
                        &format!("{name} (B {b} H {h} Sq {sq} Sk {sk} D {d}, dropout {dropout:?})"),
                    );
                }
            }
        }
    }
}
