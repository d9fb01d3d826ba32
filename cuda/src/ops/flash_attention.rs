//! Flash attention (`kernels/flash_attention.cu`): out = dropout(softmax(Q·Kᵀ · scale + mask))·V
//! without storing the `[B, H, Sq, Sk]` scores, keeping the per-row log-sum-exp for the backward,
//! which recomputes the probabilities. Dropout draws its keep decisions in the kernels from the
//! Philox draw the CPU's dropout of the probs tensor would use (element ((b·H + h)·Sq + i)·Sk + j),
//! so both devices drop the same probabilities; the caller reserves `B·H·Sq·Sk` uniform elements
//! (`Rng::reserve(n, 4)`) as that dropout does.
//!
//! Layout: Q, K, V, dO and the mask are read in place through their strides (any `[B, H, S, D]`
//! view, e.g. `[B, S, H, D]` projections seen with heads moved forward; the mask any layout
//! broadcast to `[B, H, Sq, Sk]`). Outputs are contiguous: out, dQ `[B, H, Sq, D]`, dK, dV
//! `[B, H, Sk, D]`, lse `[B, H, Sq]` f32.
//!
//! Two kernel sets ([`FlashPath`]): f32 math on the CUDA cores for every float type (the reference
//! path), and, for bf16 on compute capability 8.0 or newer, the same algorithm with its products
//! on the tensor cores (`flash_tc_*`, mma.sync m16n8k16, f32 accumulation; the default there).
//!
//! Limits: head_dim 1..=[`MAX_HEAD_DIM`], k_len <= [`MAX_KEYS`] ([`fits`]); callers take the
//! fused masked-softmax path (`ops::attention`) otherwise.

use super::attention::{AttentionDims, AttentionGrads, Heads};
use super::dropout::Draw;
use super::FloatElem;
use crate::buffer::DeviceBuffer;
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::FLASH_ATTENTION, KernelFile};
use crate::strided::{Contig, Strided};
use crate::ElemType;
use crate::Result;
use cudarc::driver::DeviceRepr;
use std::ffi::c_void;

/// The largest head dim the kernels take (four dims per lane).
pub const MAX_HEAD_DIM: usize = 128;
/// The longest key sequence the flash path is used for.
pub const MAX_KEYS: usize = 512;

/// Threads per block (four warps).
const THREADS: u32 = 128;
/// Query rows per block of the forward and dQ kernels.
const BLOCK_Q: usize = 16;
/// Keys per tile (forward, dQ) and per block (dK/dV).
const BLOCK_K: usize = 32;
/// Queries per tile of the dK/dV kernel.
const QUERY_TILE: usize = 32;
/// Warps per block, and keys each warp of the dK/dV kernel owns.
const WARPS: usize = 4;
const KEYS_PER_WARP: usize = BLOCK_K / WARPS;
/// Grid y and z (heads, batch) limit.
const GRID_YZ: usize = 65_535;
/// Threads per block of the tensor-core kernels (four warps of 16 rows).
const TC_THREADS: u32 = 128;
/// Rows per block (queries for fwd and dQ, keys for dK/dV) and per streamed tile.
const TC_TILE: usize = 64;
/// Padded row length of a transposed tile (halves).
const TC_LDT: usize = TC_TILE + 8;

/// Which kernel set computes attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashPath {
    /// f32 math on the CUDA cores, any float type: the reference.
    CudaCores,
    /// bf16 products on the tensor cores (bf16 only, compute capability 8.0 or newer).
    TensorCores,
}

impl FlashPath {
    /// The tensor cores for bf16 on sm_80 or newer, the CUDA cores otherwise, or always the
    /// CUDA cores with `COTMAE_ATTENTION=flash-cuda-cores` in the environment (read once; to
    /// time or check the reference path through the whole stack).
    pub fn default_for<T: FloatElem>(gpu: &Gpu) -> FlashPath {
        static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let forced = *FORCED.get_or_init(|| {
            std::env::var("COTMAE_ATTENTION").is_ok_and(|v| v == "flash-cuda-cores")
        });
        if !forced && T::TYPE == ElemType::BF16 && gpu.compute_capability() >= (8, 0) {
            FlashPath::TensorCores
        } else {
            FlashPath::CudaCores
        }
    }
}

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    super::FLOATS
        .iter()
        .flat_map(|t| {
            ["flash_fwd", "flash_delta", "flash_bwd_dq", "flash_bwd_dkdv"]
                .map(|k| format!("{k}_{t}"))
        })
        .chain(
            ["flash_tc_fwd", "flash_tc_bwd_dq", "flash_tc_bwd_dkdv"].map(|k| format!("{k}_bf16")),
        )
        .map(|n| (&FLASH_ATTENTION, n))
        .collect()
}

pub(crate) fn mirrored_constants() -> Vec<(&'static KernelFile, String)> {
    [
        format!("#define FA_THREADS {THREADS}"),
        format!("#define FA_WARPS {WARPS}"),
        format!("#define FA_BLOCK_Q {BLOCK_Q}"),
        format!("#define FA_BLOCK_K {BLOCK_K}"),
        format!("#define FA_KEYS_PER_WARP {KEYS_PER_WARP}"),
        format!("#define FA_QUERY_TILE {QUERY_TILE}"),
        format!("#define FA_MAX_HEAD_DIM {MAX_HEAD_DIM}"),
        format!("#define TC_THREADS {TC_THREADS}"),
        format!("#define TC_TILE {TC_TILE}"),
    ]
    .into_iter()
    .map(|s| (&FLASH_ATTENTION, s))
    .collect()
}

/// Whether the flash kernels take attention of these sizes.
pub fn fits(dims: &AttentionDims) -> bool {
    (1..=MAX_HEAD_DIM).contains(&dims.head_dim) && dims.k_len <= MAX_KEYS
}

/// Dropout on the probabilities: drop probability `p` and the draw of the `[B, H, Sq, Sk]`
/// uniform elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashDropout {
    pub p: f64,
    pub draw: Draw,
}

/// One attention call: sizes, operands, the additive mask (Q's type, strides over
/// `[B, H, Sq, Sk]`, 0 on broadcast dims), the scale of Q·Kᵀ and the dropout.
#[derive(Clone, Copy, Debug)]
pub struct FlashInputs<'a, T: FloatElem> {
    pub dims: AttentionDims,
    pub q: Heads<'a, T>,
    pub k: Heads<'a, T>,
    pub v: Heads<'a, T>,
    pub mask: Option<Strided<'a, T>>,
    pub scale: f32,
    pub dropout: Option<FlashDropout>,
}

/// The forward's outputs.
pub struct FlashOut<T: FloatElem> {
    /// `[B, H, Sq, D]`.
    pub out: DeviceBuffer<T>,
    /// log Σ_j exp(z_ij) per row `[B, H, Sq]` (+inf for a row whose logits are all -inf).
    pub lse: DeviceBuffer<f32>,
}

/// The kernels' `struct FlashParams` (same field order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct FlashParams {
    batch: i64,
    heads: i64,
    q_len: i64,
    k_len: i64,
    head_dim: i64,
    q_stride: [i64; 4],
    k_stride: [i64; 4],
    v_stride: [i64; 4],
    do_stride: [i64; 4],
    mask_stride: [i64; 4],
    scale: f32,
    drop_p: f32,
    drop_scale: f32,
    has_mask: i32,
    seed: u64,
    offset: u64,
}

// SAFETY: plain `repr(C)` integers and floats, laid out as the kernels' `struct FlashParams`.
unsafe impl DeviceRepr for FlashParams {}

fn strides_i64(s: [usize; 4]) -> [i64; 4] {
    s.map(|x| x as i64)
}

/// Checked device addresses of the operands (Q, K, V, mask or 0) and the kernels' parameters.
fn prepare<T: FloatElem>(
    op: &'static str,
    gpu: &Gpu,
    inp: &FlashInputs<'_, T>,
) -> Result<([u64; 4], FlashParams)> {
    let AttentionDims {
        batch,
        heads,
        q_len,
        k_len,
        head_dim,
    } = inp.dims;
    if !fits(&inp.dims) {
        bail!(
            op,
            "head dim {head_dim} and {k_len} keys are outside the flash kernels' limits \
             (head dim 1..={MAX_HEAD_DIM}, at most {MAX_KEYS} keys)"
        );
    }
    if batch > GRID_YZ || heads > GRID_YZ {
        bail!(
            op,
            "batch {batch} or heads {heads} exceed the grid limit of {GRID_YZ}"
        );
    }
    let heads_address = |what: &str, h: &Heads<'_, T>, s: usize| -> Result<u64> {
        gpu.same_device(op, h.buf)?;
        Strided::new(h.buf, h.offset, &h.strides)
            .address(op, &[batch, heads, s, head_dim])
            .map_err(|e| crate::Error::arg(op, format!("{what}: {e}")))
    };
    let qa = heads_address("Q", &inp.q, q_len)?;
    let ka = heads_address("K", &inp.k, k_len)?;
    let va = heads_address("V", &inp.v, k_len)?;
    let (ma, mask_stride) = match &inp.mask {
        None => (0, [0; 4]),
        Some(m) => {
            gpu.same_device(op, m.buf)?;
            let strides: [usize; 4] = m.strides.try_into().map_err(|_| {
                crate::Error::arg(
                    op,
                    format!(
                        "the mask needs 4 strides over [B, H, Sq, Sk], got {:?}",
                        m.strides
                    ),
                )
            })?;
            (m.address(op, &[batch, heads, q_len, k_len])?, strides)
        }
    };
    let (drop_p, drop_scale, draw) = match inp.dropout {
        None => (0.0, 1.0, Draw { seed: 0, offset: 0 }),
        Some(FlashDropout { p, draw }) => {
            if !(0.0..=1.0).contains(&p) {
                bail!(op, "dropout p must be in [0, 1], got {p}");
            }
            (p as f32, super::dropout::keep_scale(p), draw)
        }
    };
    let params = FlashParams {
        batch: batch as i64,
        heads: heads as i64,
        q_len: q_len as i64,
        k_len: k_len as i64,
        head_dim: head_dim as i64,
        q_stride: strides_i64(inp.q.strides),
        k_stride: strides_i64(inp.k.strides),
        v_stride: strides_i64(inp.v.strides),
        do_stride: [0; 4],
        mask_stride: strides_i64(mask_stride),
        scale: inp.scale,
        drop_p,
        drop_scale,
        has_mask: inp.mask.is_some() as i32,
        seed: draw.seed,
        offset: draw.offset,
    };
    Ok(([qa, ka, va, ma], params))
}

/// Dynamic shared memory (bytes) of each kernel for head dim `d` (kernel header, Launch).
fn shared_bytes(kernel: Kernel, d: usize) -> u32 {
    let floats = match kernel {
        Kernel::Forward => BLOCK_Q * d + 2 * BLOCK_K * (d + 1),
        Kernel::Dq => 2 * BLOCK_Q * d + 2 * BLOCK_K * (d + 1),
        Kernel::DkDv => 2 * BLOCK_K * d + 2 * QUERY_TILE * (d + 1) + 2 * QUERY_TILE,
    };
    (floats * std::mem::size_of::<f32>()) as u32
}

/// The tensor-core kernels' shared memory: row tiles [64][Dp + 8] and transposed tiles
/// [Dp][72] of bf16 (Dp = d rounded up to 16), and dK/dV's lse and delta [64] f32.
fn tc_shared_bytes(kernel: Kernel, d: usize) -> u32 {
    let dp = d.div_ceil(16) * 16;
    let (row_tiles, transposed, floats) = match kernel {
        Kernel::Forward => (2, 1, 0),
        Kernel::Dq => (4, 1, 0),
        Kernel::DkDv => (4, 2, 2 * TC_TILE),
    };
    let halves = row_tiles * TC_TILE * (dp + 8) + transposed * dp * TC_LDT;
    (halves * 2 + floats * 4) as u32
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Forward,
    Dq,
    DkDv,
}

impl Kernel {
    /// The kernel's name without the type suffix.
    fn name(self, path: FlashPath) -> &'static str {
        match (path, self) {
            (FlashPath::CudaCores, Kernel::Forward) => "flash_fwd",
            (FlashPath::CudaCores, Kernel::Dq) => "flash_bwd_dq",
            (FlashPath::CudaCores, Kernel::DkDv) => "flash_bwd_dkdv",
            (FlashPath::TensorCores, Kernel::Forward) => "flash_tc_fwd",
            (FlashPath::TensorCores, Kernel::Dq) => "flash_tc_bwd_dq",
            (FlashPath::TensorCores, Kernel::DkDv) => "flash_tc_bwd_dkdv",
        }
    }
}

/// Grid (tiles, heads, batch) with 128-thread blocks and the kernel's shared memory.
fn tiled(kernel: Kernel, path: FlashPath, dims: &AttentionDims) -> Launch {
    let (block_q, block_k, shared) = match path {
        FlashPath::CudaCores => (BLOCK_Q, BLOCK_K, shared_bytes(kernel, dims.head_dim)),
        FlashPath::TensorCores => (TC_TILE, TC_TILE, tc_shared_bytes(kernel, dims.head_dim)),
    };
    let tiles = match kernel {
        Kernel::Forward | Kernel::Dq => dims.q_len.div_ceil(block_q),
        Kernel::DkDv => dims.k_len.div_ceil(block_k),
    };
    Launch {
        grid: (tiles as u32, dims.heads as u32, dims.batch as u32),
        block: (THREADS, 1, 1),
        shared_bytes: shared,
    }
}

/// Checks that `path` can run element type `T` on `gpu`.
fn check_path<T: FloatElem>(op: &'static str, gpu: &Gpu, path: FlashPath) -> Result<()> {
    if path == FlashPath::TensorCores {
        if T::TYPE != ElemType::BF16 {
            bail!(
                op,
                "the tensor-core flash kernels take bf16, not {}",
                T::TYPE
            );
        }
        let cc = gpu.compute_capability();
        if cc < (8, 0) {
            bail!(
                op,
                "the tensor-core flash kernels need compute capability 8.0 or newer, the device has {}.{}",
                cc.0,
                cc.1
            );
        }
    }
    Ok(())
}

/// Launches `kernel`_<t> of the flash file.
///
/// # Safety
/// As [`Gpu::launch`]: `args` match the kernel's parameters.
unsafe fn launch<T: FloatElem>(
    gpu: &Gpu,
    kernel: &str,
    shape: Launch,
    args: &mut [*mut c_void],
) -> Result<()> {
    unsafe {
        gpu.launch(
            &FLASH_ATTENTION,
            &format!("{kernel}_{}", T::TYPE),
            shape,
            args,
        )
    }
}

/// Forward: the attention output and the per-row log-sum-exp, on [`FlashPath::default_for`].
pub fn flash_attention<T: FloatElem>(gpu: &Gpu, inp: &FlashInputs<'_, T>) -> Result<FlashOut<T>> {
    flash_attention_on(gpu, inp, FlashPath::default_for::<T>(gpu))
}

/// [`flash_attention`] on the kernel set `path`.
pub fn flash_attention_on<T: FloatElem>(
    gpu: &Gpu,
    inp: &FlashInputs<'_, T>,
    path: FlashPath,
) -> Result<FlashOut<T>> {
    const OP: &str = "flash_attention";
    check_path::<T>(OP, gpu, path)?;
    let ([qa, ka, va, ma], params) = prepare(OP, gpu, inp)?;
    let d = inp.dims;
    let rows = d.batch * d.heads * d.q_len;
    let out = gpu.alloc::<T>(rows * d.head_dim)?;
    let lse = gpu.alloc::<f32>(rows)?;
    if rows == 0 {
        return Ok(FlashOut { out, lse });
    }
    let (oa, la) = (out.device_address(), lse.device_address());
    // SAFETY: matches `flash_fwd_<t>(const T*, const T*, const T*, const T*, T*, float*,
    // FlashParams)`; every operand's reachable extent was checked, out and lse hold B·H·Sq rows.
    unsafe {
        launch::<T>(
            gpu,
            Kernel::Forward.name(path),
            tiled(Kernel::Forward, path, &d),
            &mut [
                arg(&qa),
                arg(&ka),
                arg(&va),
                arg(&ma),
                arg(&oa),
                arg(&la),
                arg(&params),
            ],
        )?;
    }
    Ok(FlashOut { out, lse })
}

/// Backward: dQ, dK, dV from the forward's inputs, its `out` and `lse` (contiguous, as
/// [`flash_attention`] returns them) and the output gradient `d_out` (any `[B, H, Sq, D]` view),
/// on [`FlashPath::default_for`].
pub fn flash_attention_backward<T: FloatElem>(
    gpu: &Gpu,
    inp: &FlashInputs<'_, T>,
    out: Contig<'_, T>,
    lse: Contig<'_, f32>,
    d_out: Heads<'_, T>,
) -> Result<AttentionGrads<T>> {
    let path = FlashPath::default_for::<T>(gpu);
    flash_attention_backward_on(gpu, inp, out, lse, d_out, path)
}

/// [`flash_attention_backward`] on the kernel set `path`.
pub fn flash_attention_backward_on<T: FloatElem>(
    gpu: &Gpu,
    inp: &FlashInputs<'_, T>,
    out: Contig<'_, T>,
    lse: Contig<'_, f32>,
    d_out: Heads<'_, T>,
    path: FlashPath,
) -> Result<AttentionGrads<T>> {
    const OP: &str = "flash_attention_backward";
    check_path::<T>(OP, gpu, path)?;
    let ([qa, ka, va, ma], mut params) = prepare(OP, gpu, inp)?;
    let d = inp.dims;
    let rows = d.batch * d.heads * d.q_len;
    gpu.same_device(OP, out.buf)?;
    gpu.same_device(OP, lse.buf)?;
    gpu.same_device(OP, d_out.buf)?;
    let (oa, la) = (out.address(OP, rows * d.head_dim)?, lse.address(OP, rows)?);
    let ga = Strided::new(d_out.buf, d_out.offset, &d_out.strides)
        .address(OP, &[d.batch, d.heads, d.q_len, d.head_dim])?;
    params.do_stride = strides_i64(d_out.strides);
    let dq = gpu.alloc::<T>(rows * d.head_dim)?;
    let kv_len = d.batch * d.heads * d.k_len * d.head_dim;
    let (dk, dv) = (gpu.alloc::<T>(kv_len)?, gpu.alloc::<T>(kv_len)?);
    if rows == 0 || kv_len == 0 {
        // No query rows: dK = dV = 0; no keys: dQ = 0 (and dK, dV are empty).
        let (mut dq, mut dk, mut dv) = (dq, dk, dv);
        for b in [&mut dq, &mut dk, &mut dv] {
            gpu.fill_zeros(b)?;
        }
        return Ok(AttentionGrads { dq, dk, dv });
    }
    let delta = gpu.alloc::<f32>(rows)?;
    let (da, qa_, ka_, va_) = (
        delta.device_address(),
        dq.device_address(),
        dk.device_address(),
        dv.device_address(),
    );
    let delta_launch = Launch {
        grid: (
            rows.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32,
            1,
            1,
        ),
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    };
    // SAFETY: each call matches its kernel's parameters (`flash_delta_<t>(const T*, const T*,
    // float*, FlashParams)`, `flash_bwd_dq_<t>(q, k, v, mask, dO, lse, delta, dq, FlashParams)`,
    // `flash_bwd_dkdv_<t>(q, k, v, mask, dO, lse, delta, dk, dv, FlashParams)`); inputs were
    // bounds-checked above, outputs hold their [B, H, S, D] elements.
    unsafe {
        launch::<T>(
            gpu,
            "flash_delta",
            delta_launch,
            &mut [arg(&oa), arg(&ga), arg(&da), arg(&params)],
        )?;
        launch::<T>(
            gpu,
            Kernel::Dq.name(path),
            tiled(Kernel::Dq, path, &d),
            &mut [
                arg(&qa),
                arg(&ka),
                arg(&va),
                arg(&ma),
                arg(&ga),
                arg(&la),
                arg(&da),
                arg(&qa_),
                arg(&params),
            ],
        )?;
        launch::<T>(
            gpu,
            Kernel::DkDv.name(path),
            tiled(Kernel::DkDv, path, &d),
            &mut [
                arg(&qa),
                arg(&ka),
                arg(&va),
                arg(&ma),
                arg(&ga),
                arg(&la),
                arg(&da),
                arg(&ka_),
                arg(&va_),
                arg(&params),
            ],
        )?;
    }
    Ok(AttentionGrads { dq, dk, dv })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_layout_matches_the_kernel_struct() {
        // flash_attention.cu: i64 x5, i64[4] x5, float x3, i32, u64 x2.
        assert_eq!(
            std::mem::size_of::<FlashParams>(),
            5 * 8 + 5 * 32 + 4 * 4 + 2 * 8
        );
        assert_eq!(std::mem::align_of::<FlashParams>(), 8);
    }

    #[test]
    fn limits_and_launch_shapes() {
        let dims = |q_len, k_len, head_dim| AttentionDims {
            batch: 3,
            heads: 5,
            q_len,
            k_len,
            head_dim,
        };
        assert!(fits(&dims(7, 512, 128)) && fits(&dims(1, 1, 1)));
        assert!(!fits(&dims(7, 513, 64)) && !fits(&dims(7, 8, 129)) && !fits(&dims(7, 8, 0)));
        let l = tiled(Kernel::Forward, FlashPath::CudaCores, &dims(33, 7, 64));
        assert_eq!((l.grid, l.block), ((3, 5, 3), (THREADS, 1, 1)));
        assert_eq!(
            tiled(Kernel::DkDv, FlashPath::CudaCores, &dims(33, 65, 64)).grid,
            (3, 5, 3)
        );
        let tc = tiled(Kernel::Forward, FlashPath::TensorCores, &dims(129, 7, 64));
        assert_eq!((tc.grid, tc.block), ((3, 5, 3), (TC_THREADS, 1, 1)));
        assert_eq!(
            tiled(Kernel::DkDv, FlashPath::TensorCores, &dims(33, 65, 64)).grid,
            (2, 5, 3)
        );
        // The largest tiles need the opt-in above 48 KiB; all stay within sm_80's 163 KiB.
        for k in [Kernel::Forward, Kernel::Dq, Kernel::DkDv] {
            assert!(shared_bytes(k, MAX_HEAD_DIM) <= 163 * 1024);
            assert!(tc_shared_bytes(k, MAX_HEAD_DIM) <= 163 * 1024);
        }
        // D = 40 pads to 48: two row tiles [64][56] and V transposed [48][72], in halves.
        assert_eq!(
            tc_shared_bytes(Kernel::Forward, 40),
            ((2 * 64 * 56 + 48 * 72) * 2) as u32
        );
        assert_eq!(shared_bytes(Kernel::Forward, 64), (16 * 64 + 64 * 65) * 4);
        assert!(shared_bytes(Kernel::DkDv, MAX_HEAD_DIM) > 48 * 1024);
    }
}
