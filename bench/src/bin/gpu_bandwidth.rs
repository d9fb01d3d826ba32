//! Achieved memory bandwidth of each memory-bound CUDA kernel, against a device-to-device copy of
//! the same number of bytes on the same GPU in the same run (issue 6's goal: >= 80% of the copy).
//!
//! Every op runs through the tensor crate's dispatch on `cuda:N`, exactly as the model calls it,
//! on tensors of about `--mib` MiB each. An op's bytes are the least traffic it can have: every
//! input read once and every output written once (row statistics and scalars included). Its time
//! is CUDA events around `--iters` back-to-back calls (after warm-up), divided by `--iters`; the
//! host runs ahead of the GPU, so launch overhead is hidden at these sizes. The copy baseline is
//! `cuMemcpyDtoDAsync` of a buffer of the same size, reading and writing it once (2 x bytes).
//!
//! Then attention, which is compute-bound: the flash kernels' forward and backward at BERT-base's
//! shape (B 64, H 12, S 128, D 64, a padding mask, dropout 0.1), as achieved TFLOP/s with
//! FlashAttention-2's count (forward 4·B·H·S²·D, backward 10·B·H·S²·D: five products, S
//! recomputed). bf16 runs the tensor-core kernels on sm_80+, f32/f16 the CUDA-core ones; with
//! `COTMAE_ATTENTION=flash-cuda-cores` bf16 runs the CUDA-core (reference) kernels too.
//!
//! usage: gpu_bandwidth [--device N] [--mib 256] [--iters 20] [--dtype f32|bf16|f16]
//!        [--attention-only]
//! Prints one JSON line per op: {"op", "shape", "ms", "gbps", "copy_gbps", "ratio"}; the ratio
//! is op bandwidth / copy bandwidth (goal >= 0.8); attention lines hold {"op", "shape", "ms",
//! "tflops", "path"}.

use bench::report_json;
use std::process::ExitCode;
use tensor::{DType, Device, Result, Rng, Tensor};

/// Hidden size of the LayerNorm rows and the attention row length used for softmax.
const HIDDEN: usize = 768;
const ATTN_ROW: usize = 512;

struct Opts {
    device: usize,
    mib: usize,
    iters: usize,
    dtype: DType,
    attention_only: bool,
}

fn parse() -> std::result::Result<Opts, String> {
    let mut o = Opts {
        device: 0,
        mib: 256,
        iters: 20,
        dtype: DType::F32,
        attention_only: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value (see the usage in the source)"))
        };
        match flag.as_str() {
            "--device" => o.device = value()?.parse().map_err(|e| format!("--device: {e}"))?,
            "--mib" => o.mib = value()?.parse().map_err(|e| format!("--mib: {e}"))?,
            "--iters" => o.iters = value()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--dtype" => {
                o.dtype = match value()?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    other => {
                        return Err(format!("--dtype: expected f32, bf16 or f16, got {other}"))
                    }
                }
            }
            "--attention-only" => o.attention_only = true,
            "-h" | "--help" => return Err(
                "usage: gpu_bandwidth [--device N] [--mib 256] [--iters 20] [--dtype f32|bf16|f16] \
                 [--attention-only]"
                    .into(),
            ),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if o.iters == 0 || o.mib == 0 {
        return Err("--iters and --mib must be at least 1".into());
    }
    Ok(o)
}

/// Milliseconds per call of `f`: CUDA events around `iters` calls after 3 warm-up calls.
fn gpu_ms(gpu: &cuda::Gpu, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    gpu.synchronize()?;
    let timer = gpu.timer()?;
    for _ in 0..iters {
        f()?;
    }
    timer.stop()?;
    Ok(timer.elapsed_ms()? as f64 / iters as f64)
}

/// A random tensor of `shape` in `dtype` on `device` (drawn in f32 on the host).
fn rand(shape: &[usize], dtype: DType, device: Device, seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    Tensor::randn(shape, 0.0, 1.0, DType::F32, Device::Cpu, &mut rng)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// One memory-bound op: its name, the bytes it must move, and a call.
struct Case<'a> {
    op: &'static str,
    bytes: usize,
    run: Box<dyn FnMut() -> Result<()> + 'a>,
}

/// The flash kernels at BERT-base's attention shape: forward, and backward alone (timed on the
/// forward's saved outputs), as TFLOP/s.
fn attention(o: &Opts, gpu: &cuda::Gpu) -> Result<()> {
    use tensor::ops::attention::AttentionDropout;
    let (b, h, s, d) = (64, 12, 128, 64);
    let dev = Device::Cuda(o.device);
    let [q, k, v, g] = [11, 12, 13, 14].map(|seed| rand(&[b, h, s, d], o.dtype, dev, seed));
    let (q, k, v, g) = (q?, k?, v?, g?);
    // The last quarter of each sequence padded, as BERT's additive mask.
    let pad: Vec<f32> = (0..b * s)
        .map(|j| if j % s >= 3 * s / 4 { -1e4 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(pad, &[b, 1, 1, s])?
        .to_dtype(o.dtype)?
        .to_device(dev)?;
    let scale = (d as f64).powf(-0.5);
    let mut rng = Rng::new(21);
    let drop = AttentionDropout::draw(0.1, b * h * s * s, &mut rng)?;
    let (out, lse) = Tensor::flash_attention(&q, &k, &v, Some(&mask), scale, Some(drop))?;
    let forced = std::env::var("COTMAE_ATTENTION").is_ok_and(|v| v == "flash-cuda-cores");
    let path = if o.dtype == DType::BF16 && !forced && gpu.compute_capability() >= (8, 0) {
        "tensor-cores"
    } else {
        "cuda-cores"
    };
    let flops = (b * h * s * s * d) as f64;
    let shape = format!("B {b} H {h} S {s} D {d} {}", o.dtype);
    let fwd = gpu_ms(gpu, o.iters, || {
        Tensor::flash_attention(&q, &k, &v, Some(&mask), scale, Some(drop)).map(drop_all)
    })?;
    let bwd = gpu_ms(gpu, o.iters, || {
        Tensor::flash_attention_backward(&q, &k, &v, Some(&mask), &out, &lse, &g, scale, Some(drop))
            .map(drop_all)
    })?;
    for (op, ms, f) in [
        ("flash_attention", fwd, 4.0 * flops),
        ("flash_attention_backward", bwd, 10.0 * flops),
    ] {
        report_json(serde_json::json!({
            "op": op, "shape": shape, "ms": ms, "tflops": f / ms / 1e9, "path": path
        }));
    }
    Ok(())
}

fn drop_all<T>(_: T) {}

fn run(o: &Opts) -> Result<()> {
    let dev = Device::Cuda(o.device);
    let gpu = cuda::gpu(o.device)?;
    if o.attention_only {
        return attention(o, &gpu);
    }
    let es = o.dtype.size_in_bytes();
    // Elements per tensor, rounded to whole rows of both row lengths.
    let row = HIDDEN * ATTN_ROW;
    let n = ((o.mib << 20) / es / row).max(1) * row;
    let x = rand(&[n / HIDDEN, HIDDEN], o.dtype, dev, 1)?;
    let y = rand(&[n / HIDDEN, HIDDEN], o.dtype, dev, 2)?;
    let rows_ln = n / HIDDEN;
    let gamma = rand(&[HIDDEN], o.dtype, dev, 3)?;
    let beta = rand(&[HIDDEN], o.dtype, dev, 4)?;
    let (_, mean, rstd) = x.layer_norm(&gamma, &beta, 1e-12)?;
    let scores = x.reshape(&[n / ATTN_ROW, ATTN_ROW])?;
    let probs = scores.softmax_last(None, 1.0)?;
    let dprobs = y.reshape(&[n / ATTN_ROW, ATTN_ROW])?;
    let bytes = n * es;
    // Row statistics of LayerNorm are f32, one per row.
    let stats = rows_ln * 4;
    let mut rng = Rng::new(5);
    let mut cases: Vec<Case> = vec![
        Case {
            op: "add",
            bytes: 3 * bytes,
            run: Box::new(|| x.add(&y).map(drop)),
        },
        Case {
            op: "affine",
            bytes: 2 * bytes,
            run: Box::new(|| x.affine(0.5, 1.0).map(drop)),
        },
        Case {
            op: "gelu",
            bytes: 2 * bytes,
            run: Box::new(|| x.gelu().map(drop)),
        },
        Case {
            op: "gelu_backward",
            bytes: 3 * bytes,
            run: Box::new(|| Tensor::gelu_backward(&x, &y).map(drop)),
        },
        Case {
            op: "softmax",
            bytes: 2 * bytes,
            run: Box::new(|| scores.softmax_last(None, 0.125).map(drop)),
        },
        Case {
            op: "softmax_backward",
            bytes: 3 * bytes,
            run: Box::new(|| Tensor::softmax_backward(&probs, &dprobs, 0.125).map(drop)),
        },
        Case {
            op: "layer_norm",
            bytes: 2 * bytes + 2 * stats,
            run: Box::new(|| x.layer_norm(&gamma, &beta, 1e-12).map(drop)),
        },
        Case {
            op: "layer_norm_backward",
            bytes: 3 * bytes + 2 * stats,
            run: Box::new(|| Tensor::layer_norm_backward(&x, &gamma, &mean, &rstd, &y).map(drop)),
        },
        Case {
            op: "dropout",
            // Reads x, writes the output and a one-byte keep mask.
            bytes: 2 * bytes + n,
            run: Box::new(|| x.dropout(0.1, &mut rng).map(drop)),
        },
        Case {
            op: "sum_last",
            bytes: bytes + rows_ln * es,
            run: Box::new(|| x.sum(&[1], false).map(drop)),
        },
    ];
    if o.dtype != DType::F32 {
        cases.push(Case {
            op: "cast_to_f32",
            bytes: bytes + n * 4,
            run: Box::new(|| x.to_dtype(DType::F32).map(drop)),
        });
    } else {
        // Autocast's direction: an f32 tensor to bf16 (16-byte packs when contiguous).
        cases.push(Case {
            op: "cast_to_bf16",
            bytes: bytes + n * 2,
            run: Box::new(|| x.to_dtype(DType::BF16).map(drop)),
        });
    }

    // The baseline: a device-to-device copy of a buffer of `bytes`.
    let src = gpu.zeros::<u8>(bytes)?;
    let mut dst = gpu.zeros::<u8>(bytes)?;
    let copy_ms = gpu_ms(&gpu, o.iters, || {
        gpu.copy(&src, 0, &mut dst, 0, bytes)
            .map_err(tensor::Error::from)
    })?;
    let copy_gbps = 2.0 * bytes as f64 / copy_ms / 1e6;
    let shape = format!("{} x {} {}", n / HIDDEN, HIDDEN, o.dtype);
    eprintln!(
        "{}: copy of {} MiB: {copy_ms:.3} ms, {copy_gbps:.0} GB/s",
        gpu.info().name,
        bytes >> 20
    );
    report_json(serde_json::json!({
        "op": "copy", "shape": shape, "ms": copy_ms, "gbps": copy_gbps,
        "copy_gbps": copy_gbps, "ratio": 1.0
    }));
    let mut worst: f64 = f64::INFINITY;
    for mut c in cases {
        let ms = gpu_ms(&gpu, o.iters, &mut c.run)?;
        let gbps = c.bytes as f64 / ms / 1e6;
        let ratio = gbps / copy_gbps;
        worst = worst.min(ratio);
        report_json(serde_json::json!({
            "op": c.op, "shape": shape, "ms": ms, "gbps": gbps,
            "copy_gbps": copy_gbps, "ratio": ratio
        }));
    }
    eprintln!("worst ratio to copy bandwidth: {worst:.2} (goal >= 0.80)");
    attention(o, &gpu)
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gpu_bandwidth: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu_bandwidth: {e}");
            ExitCode::FAILURE
        }
    }
}
