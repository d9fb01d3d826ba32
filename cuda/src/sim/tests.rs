//! The simulator's own tests: kernels written to break (a missing barrier, an out-of-bounds
//! write, a use after free, launches over the limits, a deadlock, a shuffle with an exited lane)
//! and kernels that must agree with a host computation (shuffles, votes, block reductions, the
//! f16 conversions of common.cuh against the `half` crate, the emulated bf16 tensor-core mma
//! against a host matrix product), compiled through the same path as
//! `kernels/*.cu` and run on simulated devices (whatever `COTMAE_CUDA_SIM` says).

use crate::gpu::{arg, Launch};
use crate::nvrtc::KernelFile;
use crate::{DeviceBuffer, Gpu};
use half::{bf16, f16};
use std::sync::Arc;

static SELFTEST: KernelFile = KernelFile {
    name: "sim_selftest",
    source: r#"
#include "common.cuh"

// out[b * n + t] = x[b * n + (t + 1) % n], through shared memory: needs the barrier.
template <bool BARRIER>
__device__ void rotate(const float* x, float* out) {
    __shared__ float s[1024];
    const int n = blockDim.x, t = threadIdx.x;
    const i64 base = (i64)blockIdx.x * n;
    s[t] = x[base + t];
    if (BARRIER) __syncthreads();
    out[base + t] = s[(t + 1) % n];
}
extern "C" __global__ void rotate_synced(const float* x, float* out) { rotate<true>(x, out); }
extern "C" __global__ void rotate_racy(const float* x, float* out) { rotate<false>(x, out); }

extern "C" __global__ void write_at(float* p, i64 i, float v) {
    if (threadIdx.x == 0) p[i] = v;
}
extern "C" __global__ void read_at(const float* p, i64 i, float* out) {
    if (threadIdx.x == 0) out[0] = p[i];
}
extern "C" __global__ void dynamic_fill(float* out) {
    DYNAMIC_SHARED(float, smem);
    smem[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = smem[blockDim.x - 1 - threadIdx.x];
}

// Per lane: [sum over the warp (xor butterfly), lane 5's value, value of lane + 1 (down), value
// of lane - 2 (up), ballot of odd values, any(value > 100), all(value >= 0), the block's sum,
// the block's OR of (value == 7)].
extern "C" __global__ void warp_ops(const int* x, int* out) {
    const int t = threadIdx.x, v = x[t];
    __shared__ int smem[32];
    int* o = out + t * 9;
    o[0] = warp_reduce(v, SumOp());
    o[1] = __shfl_sync(0xffffffffu, v, 5);
    o[2] = __shfl_down_sync(0xffffffffu, v, 1);
    o[3] = __shfl_up_sync(0xffffffffu, v, 2);
    o[4] = (int)__ballot_sync(0xffffffffu, v & 1);
    o[5] = __any_sync(0xffffffffu, v > 100);
    o[6] = __all_sync(0xffffffffu, v >= 0);
    o[7] = block_reduce(v, SumOp(), 0, smem);
    o[8] = __syncthreads_or(v == 7);
}

// Threads 16.. exit at once; the rest meet at the barrier (exited threads count as arrived).
extern "C" __global__ void barrier_after_exits(int* out) {
    __shared__ int s[16];
    const int t = threadIdx.x;
    if (t >= 16) return;
    s[t] = t * 10;
    __syncthreads();
    out[t] = s[15 - t];
}
extern "C" __global__ void deadlock(int* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
    else __syncthreads();
}
extern "C" __global__ void shuffle_with_exited_lanes(int* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0);
}

// One m16n8k16 tile per warp: D = A B + C with A [16][16] and B [16][8] bf16 bits, row-major
// (B's element (k, n) at k * 8 + n), C and D [16][8] f32, each warp w at offset w of each array.
// Each lane gathers its fragments as the PTX ISA lays them out (mma_bf16_m16n8k16 in common.cuh).
extern "C" __global__ void mma_tiles(const u16* a, const u16* b, const float* c, float* d, int exit_half) {
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if (exit_half && lane >= 16) return;
    const u16* A = a + w * 256;
    const u16* B = b + w * 128;
    auto pair = [](u16 lo, u16 hi) { return (u32)lo | ((u32)hi << 16); };
    const u32 af[4] = {pair(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]),
                       pair(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
                       pair(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
                       pair(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9])};
    const u32 bf[2] = {pair(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]),
                       pair(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g])};
    const float* C = c + w * 128;
    float acc[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    mma_bf16_m16n8k16(acc, af, bf);
    float* D = d + w * 128;
    D[g * 8 + 2 * t] = acc[0];
    D[g * 8 + 2 * t + 1] = acc[1];
    D[(g + 8) * 8 + 2 * t] = acc[2];
    D[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

extern "C" __global__ void f16_round_trip(const float* x, u16* bits, float* back, i64 n) {
    for (i64 i = global_thread(); i < n; i += global_threads()) {
        const f16 h = from_f32<f16>(x[i]);
        bits[i] = h.bits;
        back[i] = to_f32(h);
    }
}
"#,
};

fn device(ordinal: usize) -> Arc<Gpu> {
    Gpu::simulated(ordinal).expect("a simulated device")
}

fn one_d(blocks: u32, threads: u32, shared_bytes: u32) -> Launch {
    Launch {
        grid: (blocks, 1, 1),
        block: (threads, 1, 1),
        shared_bytes,
    }
}

/// Launches `name` of the self-test file with the addresses / values in `args`.
fn launch(
    gpu: &Gpu,
    name: &str,
    shape: Launch,
    args: &mut [*mut std::ffi::c_void],
) -> crate::Result<()> {
    // SAFETY: each test passes the arguments of its kernel, with buffers large enough.
    unsafe { gpu.launch(&SELFTEST, name, shape, args) }
}

fn rotate(gpu: &Gpu, kernel: &str, x: &DeviceBuffer<f32>, n: usize) -> Vec<f32> {
    let out = gpu.alloc::<f32>(x.len()).unwrap();
    let (xa, oa) = (x.device_address(), out.device_address());
    let blocks = (x.len() / n) as u32;
    launch(
        gpu,
        kernel,
        one_d(blocks, n as u32, 0),
        &mut [arg(&xa), arg(&oa)],
    )
    .unwrap();
    gpu.download(&out).unwrap()
}

#[test]
fn a_missing_barrier_gives_a_wrong_result_and_the_barrier_the_right_one() {
    let gpu = device(0);
    let (n, blocks) = (256, 8);
    let x: Vec<f32> = (0..n * blocks).map(|i| i as f32 * 0.5 + 1.0).collect();
    let want: Vec<f32> = (0..n * blocks)
        .map(|i| x[(i / n) * n + (i % n + 1) % n])
        .collect();
    let xb = gpu.upload(&x).unwrap();
    for _ in 0..3 {
        assert_eq!(rotate(&gpu, "rotate_synced", &xb, n), want);
        let racy = rotate(&gpu, "rotate_racy", &xb, n);
        let wrong = racy.iter().zip(&want).filter(|(a, b)| a != b).count();
        // Each thread reads its neighbour's slot; without the barrier about half of the
        // neighbours have not written it yet when it is read.
        assert!(
            wrong > n * blocks / 8,
            "{wrong} wrong elements of {}",
            n * blocks
        );
    }
}

/// Asserts that a one-block launch of `name` with `args` faults: an out-of-bounds `access` that
/// memory.rs describes as `what`.
fn assert_fault(
    gpu: &Gpu,
    name: &str,
    args: &mut [*mut std::ffi::c_void],
    access: &str,
    what: &str,
) {
    let e = launch(gpu, name, one_d(1, 32, 0), args)
        .unwrap_err()
        .to_string();
    let head = format!("kernel {name}: out-of-bounds {access} at 0x");
    assert!(
        e.starts_with(&head) && e.ends_with(&format!("({what})")),
        "{e}"
    );
}

#[test]
fn out_of_bounds_writes_and_use_after_free_are_reported_and_the_device_goes_on() {
    let gpu = device(1);
    let buf = gpu.zeros::<f32>(1024).unwrap();
    let out = gpu.zeros::<f32>(1).unwrap();
    let (a, oa) = (buf.device_address(), out.device_address());
    let v = 1.5f32;
    // Past the end, writing and reading; before the start (a page-sized buffer starts at its
    // page, right after the leading guard page).
    let cases = [
        ("write_at", 1024i64, "write", "0 bytes past the end"),
        ("read_at", 1025, "read", "4 bytes past the end"),
        ("read_at", -1, "read", "4 bytes before the start"),
    ];
    for (kernel, i, access, what) in cases {
        let third = if kernel == "write_at" {
            arg(&v)
        } else {
            arg(&oa)
        };
        let what = format!("{what} of a 4096-byte buffer");
        assert_fault(&gpu, kernel, &mut [arg(&a), arg(&i), third], access, &what);
    }
    let freed = gpu.upload(&[1.0f32; 64]).unwrap();
    let fa = freed.device_address();
    drop(freed);
    let (three, uaf) = (3i64, "use after free: byte 12 of a freed 256-byte buffer");
    assert_fault(
        &gpu,
        "read_at",
        &mut [arg(&fa), arg(&three), arg(&oa)],
        "read",
        uaf,
    );
    // The device still works: the same kernels, in bounds.
    let last = 1023i64;
    for (kernel, third) in [("write_at", arg(&v)), ("read_at", arg(&oa))] {
        let shape = one_d(1, 32, 0);
        launch(&gpu, kernel, shape, &mut [arg(&a), arg(&last), third]).unwrap();
    }
    assert_eq!(gpu.download(&out).unwrap(), [1.5]);
    assert_eq!(gpu.download_range(&buf, 1022, 2).unwrap(), [0.0, 1.5]);
}

#[test]
fn launches_over_the_device_limits_are_refused_naming_the_kernel() {
    let gpu = device(2);
    let out = gpu.alloc::<f32>(2048).unwrap();
    let oa = out.device_address();
    let refused = |shape: Launch, want: &str| {
        let e = launch(&gpu, "dynamic_fill", shape, &mut [arg(&oa)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel dynamic_fill") && e.contains(want), "{e}");
    };
    refused(one_d(1, 1025, 4100), "1025 threads");
    refused(
        Launch {
            grid: (1, 65536, 1),
            block: (32, 1, 1),
            shared_bytes: 128,
        },
        "a grid of (1, 65536, 1)",
    );
    refused(one_d(1, 32, 228 * 1024), "device's maximum");
    // Gpu::launch opts in above 48 KiB (as on a GPU); the device itself refuses a launch that
    // did not, which is what a kernel launched without the attribute gets.
    let sim = gpu.sim().unwrap();
    let mut args = [arg(&oa)];
    let shape = one_d(1, 32, 49 * 1024);
    // SAFETY: dynamic_fill writes 32 floats of `out`.
    let e = unsafe { sim.launch(&SELFTEST, "dynamic_fill", shape.into(), &mut args) }
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kernel dynamic_fill") && e.contains("without the function's opt-in"),
        "{e}"
    );
    // Within the limits (with the opt-in) the launch runs and dynamic shared memory works.
    launch(&gpu, "dynamic_fill", shape, &mut [arg(&oa)]).unwrap();
    let got = gpu.download_range(&out, 0, 32).unwrap();
    assert_eq!(got, (0..32).rev().map(|i| i as f32).collect::<Vec<_>>());
}

#[test]
fn shuffles_votes_and_block_reductions_agree_with_the_host() {
    let gpu = device(3);
    let threads = 128usize;
    let x: Vec<i32> = (0..threads as i32).map(|i| (i * 37 + 11) % 97).collect();
    let xb = gpu.upload(&x).unwrap();
    let out = gpu.alloc::<i32>(threads * 9).unwrap();
    let (xa, oa) = (xb.device_address(), out.device_address());
    launch(
        &gpu,
        "warp_ops",
        one_d(1, threads as u32, 0),
        &mut [arg(&xa), arg(&oa)],
    )
    .unwrap();
    let got = gpu.download(&out).unwrap();
    let block_sum: i32 = x.iter().sum();
    let has_seven = x.contains(&7) as i32;
    for t in 0..threads {
        let (w, lane) = (t / 32, t % 32);
        let warp = &x[w * 32..w * 32 + 32];
        let ballot = warp
            .iter()
            .enumerate()
            .filter(|(_, v)| *v & 1 == 1)
            .fold(0u32, |b, (l, _)| b | 1 << l);
        let want = [
            warp.iter().sum(),
            warp[5],
            if lane < 31 {
                warp[lane + 1]
            } else {
                warp[lane]
            },
            if lane >= 2 {
                warp[lane - 2]
            } else {
                warp[lane]
            },
            ballot as i32,
            warp.iter().any(|&v| v > 100) as i32,
            warp.iter().all(|&v| v >= 0) as i32,
            block_sum,
            has_seven,
        ];
        assert_eq!(&got[t * 9..t * 9 + 9], &want, "thread {t}");
    }
}

#[test]
fn a_deadlock_and_a_shuffle_with_exited_lanes_are_errors_and_exited_threads_pass_barriers() {
    let gpu = device(4);
    let out = gpu.zeros::<i32>(32).unwrap();
    let oa = out.device_address();
    let e = launch(&gpu, "deadlock", one_d(2, 32, 0), &mut [arg(&oa)])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("kernel deadlock: deadlock: in block"), "{e}");
    assert!(
        e.contains("16 threads wait at __syncthreads, 16 at a warp operation"),
        "{e}"
    );
    let e = launch(
        &gpu,
        "shuffle_with_exited_lanes",
        one_d(1, 32, 0),
        &mut [arg(&oa)],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("kernel shuffle_with_exited_lanes: ") && e.contains("exited"),
        "{e}"
    );
    // Exited threads count as arrived at __syncthreads, as on hardware.
    launch(
        &gpu,
        "barrier_after_exits",
        one_d(3, 64, 0),
        &mut [arg(&oa)],
    )
    .unwrap();
    let want: Vec<i32> = (0..16).map(|t| (15 - t) * 10).collect();
    assert_eq!(gpu.download_range(&out, 0, 16).unwrap(), want);
    // And the device goes on.
    let x = gpu.upload(&[2.0f32; 64]).unwrap();
    assert_eq!(rotate(&gpu, "rotate_synced", &x, 32), vec![2.0f32; 64]);
}

#[test]
fn the_f16_twins_of_the_ptx_conversions_round_as_the_half_crate() {
    let gpu = device(5);
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        65504.0,
        65520.0,
        65519.99,
        -65536.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc1_2345),
        5.960_464_5e-8,
        2.980_232_2e-8,
        2.980_233e-8,
        1.0e-10,
        6.103_515_6e-5,
        6.097_555e-5,
        1.000_488_3,
        1.000_488_4,
        1.001_464_8,
    ];
    // Every f16 value and the midpoints between neighbours (the ties), then random bit patterns.
    for b in 0..=u16::MAX {
        let v = f16::from_bits(b).to_f32();
        x.push(v);
        let next = f16::from_bits(b.wrapping_add(1)).to_f32();
        if v.is_finite() && next.is_finite() {
            x.push(((v as f64 + next as f64) / 2.0) as f32);
        }
    }
    let mut s = 0x1234_5678_9abc_def0u64;
    for _ in 0..100_000 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x.push(f32::from_bits(s as u32));
    }
    let n = x.len();
    let xb = gpu.upload(&x).unwrap();
    let (bits, back) = (gpu.alloc::<f16>(n).unwrap(), gpu.alloc::<f32>(n).unwrap());
    let (xa, ba, fa, n64) = (
        xb.device_address(),
        bits.device_address(),
        back.device_address(),
        n as i64,
    );
    let shape = Launch::grid_stride(n);
    launch(
        &gpu,
        "f16_round_trip",
        shape,
        &mut [arg(&xa), arg(&ba), arg(&fa), arg(&n64)],
    )
    .unwrap();
    let (bits, back) = (gpu.download(&bits).unwrap(), gpu.download(&back).unwrap());
    for i in 0..n {
        let h = f16::from_f32(x[i]);
        assert_eq!(
            bits[i].to_bits(),
            h.to_bits(),
            "f32 {:#010x} -> f16",
            x[i].to_bits()
        );
        assert_eq!(
            back[i].to_bits(),
            h.to_f32().to_bits(),
            "f16 {:#06x} -> f32",
            h.to_bits()
        );
    }
}

#[test]
fn the_emulated_bf16_mma_is_the_matrix_product_in_the_ptx_fragment_layout() {
    let gpu = device(6);
    let warps = 3;
    let mut s = 0x0bad_cafe_1234_5678u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
    };
    let a: Vec<bf16> = (0..warps * 256).map(|_| bf16::from_f64(next())).collect();
    let b: Vec<bf16> = (0..warps * 128).map(|_| bf16::from_f64(next())).collect();
    let c: Vec<f32> = (0..warps * 128).map(|_| next() as f32).collect();
    let (ab, bb, cb) = (
        gpu.upload(&a).unwrap(),
        gpu.upload(&b).unwrap(),
        gpu.upload(&c).unwrap(),
    );
    let d = gpu.alloc::<f32>(warps * 128).unwrap();
    let addrs = [
        &ab.device_address(),
        &bb.device_address(),
        &cb.device_address(),
    ];
    let da = d.device_address();
    let run = |exit_half: i32| {
        launch(
            &gpu,
            "mma_tiles",
            one_d(1, 32 * warps as u32, 0),
            &mut [
                arg(addrs[0]),
                arg(addrs[1]),
                arg(addrs[2]),
                arg(&da),
                arg(&exit_half),
            ],
        )
    };
    run(0).unwrap();
    let got = gpu.download(&d).unwrap();
    for w in 0..warps {
        for m in 0..16 {
            for n in 0..8 {
                let want = (0..16).fold(c[w * 128 + m * 8 + n] as f64, |acc, k| {
                    acc + a[w * 256 + m * 16 + k].to_f64() * b[w * 128 + k * 8 + n].to_f64()
                });
                let g = got[w * 128 + m * 8 + n] as f64;
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "warp {w}, D[{m}][{n}]: {g} vs {want}"
                );
            }
        }
    }
    // The instruction is .sync.aligned: a warp missing lanes is an error, not a partial product.
    let e = run(1).unwrap_err().to_string();
    assert!(e.contains("exited") && e.contains("mma_tiles"), "{e}");
}
