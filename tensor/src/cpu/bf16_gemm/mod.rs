//! bf16 GEMM on the CPU: C = A B with A and B rounded to bf16 and every product accumulated in
//! f32, written as f32 or bf16, with an optional fused bias and GELU epilogue. This is what
//! `torch.autocast("cpu", torch.bfloat16)` does for matrix products (through oneDNN); here it is
//! written out, in three interchangeable micro-kernels chosen at run time:
//!
//! | backend | instruction | micro-tile | CPUs |
//! |---|---|---|---|
//! | `amx.rs` | `tdpbf16ps` on tiles (`asm!`) | 32 x 32 | Intel Sapphire Rapids and later |
//! | `avx512.rs` | `vdpbf16ps` on zmm registers | 8 x 48 | Cooper Lake, Sapphire Rapids, AMD Zen 4+ |
//! | `portable.rs` | scalar Rust | 8 x 32 | any |
//!
//! All read the same packed operands (`pack.rs`: A row-major bf16, B in VNNI pair panels), and
//! each bf16 x bf16 product is exact in f32, so the three give the same result up to the order
//! of the f32 additions. The best available one is picked once per process (AMX needs the Linux
//! permission for the tile state and passes a check against the portable kernel first);
//! `COTMAE_BF16_GEMM=amx|avx512|portable` forces one (a benchmark or a test comparing them).
//!
//! Loop order and threading (rayon over output tiles, one task per tile):
//!
//! ```text
//!   tasks: (batch entry, 64-row block, 192-column block) of C, in parallel
//!     acc = [64, 192] f32, the thread's             (the task's C tile, stays in L2;
//!                                                    the first k block writes, not adds)
//!     for k0 in 0..kp step 768:                          (A [64, 768] and B [768, 192] blocks)
//!       for each micro column (NB panels of 16):         (B micro-panel stays in L1)
//!         for each micro row (MR rows):  kernel(acc tile += A rows . B panels)
//!     epilogue: out = cast(gelu?(acc + bias))           (the only write of C)
//! ```
//!
//! Small products (the demo's tiny BERT, attention's head products) take `small.rs` instead:
//! the same kernels, with the packing done by the tasks into per-thread buffers.

mod amx;
mod avx512;
pub mod pack;
mod portable;
pub mod small;
mod transpose;

pub use pack::{Bf16Source, PackedA, PackedB, Strided};

use crate::cpu::activation::GeluFloat;
use crate::cpu::simd::multiversion;
use half::bf16;
use pack::PANEL;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::slice;
use std::sync::OnceLock;

/// Rows of C per task.
const MC: usize = 64;
/// B panels (of 16 columns) per task: 192 columns, a multiple of every backend's micro-tile.
const NC_PANELS: usize = 12;
const NC: usize = NC_PANELS * PANEL;
/// k elements per block (a multiple of 32, the AMX tile depth). Each block re-reads and
/// re-writes the task's accumulator, so a deep block pays that less often: on the avx512
/// kernel (Zen 4, 1 thread) 768 ran the BERT-base products 2-4% faster than 256, 128 was
/// slower still, and 1024-3072 were no better than 768. BERT's k = 768 is then one block.
const KC: usize = 768;

/// Which micro-kernel computes the products (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Amx,
    Avx512Bf16,
    Portable,
}

/// One call of a micro-kernel: C[MR, nb * 16] += A[MR, 2 kpairs] B[2 kpairs, nb * 16], over the
/// packed operands (`pack.rs`). `a` addresses MR rows of `lda` u16s, `b` `nb` panels
/// `panel_stride` u16s apart holding `kpairs` pair rows each, `c` MR rows of `ldc` f32.
/// With `fresh` (the first k block) C starts from zero instead: it is only written, so the
/// accumulator needs no zeroing first (and 0 + x is x, so the sums are the same bits).
#[derive(Clone, Copy)]
pub struct MicroTile {
    pub a: *const u16,
    pub lda: usize,
    pub b: *const u16,
    pub panel_stride: usize,
    pub kpairs: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub nb: usize,
    pub fresh: bool,
}

type Kernel = unsafe fn(MicroTile);

/// A backend's micro-kernel and its tile shape, what the driver (`task`) needs of it.
#[derive(Clone, Copy)]
struct Micro {
    /// Rows of C per call.
    mr: usize,
    /// Most B panels (of 16 columns) per call.
    nb: usize,
    kernel: Kernel,
    /// Load the AMX tile configuration on the thread first.
    tiles: bool,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Amx => "amx",
            Backend::Avx512Bf16 => "avx512",
            Backend::Portable => "portable",
        }
    }

    fn micro(self) -> Micro {
        let (mr, nb, kernel) = match self {
            Backend::Amx => (amx::MR, amx::NB, amx::kernel as Kernel),
            Backend::Avx512Bf16 => (avx512::MR, avx512::NB, avx512::kernel as Kernel),
            Backend::Portable => (portable::MR, portable::NB, portable::kernel as Kernel),
        };
        Micro {
            mr,
            nb,
            kernel,
            tiles: self == Backend::Amx,
        }
    }

    /// Whether this CPU (and OS) can run it; AMX also requests the tile permission and checks
    /// the kernel against the portable one, once.
    pub fn usable(self) -> bool {
        match self {
            Backend::Portable => true,
            Backend::Avx512Bf16 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
            Backend::Amx => {
                static AMX: OnceLock<bool> = OnceLock::new();
                *AMX.get_or_init(|| {
                    amx::cpu_has_amx() && amx::request_permission() && agrees_with_portable()
                })
            }
        }
    }

    /// Every backend this machine runs, fastest first.
    pub fn available() -> Vec<Backend> {
        [Backend::Amx, Backend::Avx512Bf16, Backend::Portable]
            .into_iter()
            .filter(|b| b.usable())
            .collect()
    }

    /// The backend products use: `COTMAE_BF16_GEMM` if set and usable, else the fastest.
    pub fn current() -> Backend {
        static CURRENT: OnceLock<Backend> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let fastest = Backend::available()[0];
            let Ok(want) = std::env::var("COTMAE_BF16_GEMM") else {
                return fastest;
            };
            let forced = Backend::available().into_iter().find(|b| b.name() == want);
            forced.unwrap_or_else(|| {
                eprintln!(
                    "COTMAE_BF16_GEMM={want}: not one of amx, avx512, portable usable on this \
                     CPU; using {}",
                    fastest.name()
                );
                fastest
            })
        })
    }
}

/// The AMX kernel's result on a fixed 40 x 70 x 50 product equals the portable kernel's up to
/// f32 rounding; a mismatch (a CPU or OS that faults nothing but computes wrong) turns AMX off
/// with a message rather than giving wrong products.
fn agrees_with_portable() -> bool {
    let (m, k, n) = (40, 70, 50);
    let val = |i: usize| ((i * 7919 % 613) as f32 - 306.0) / 64.0;
    let a: Vec<f32> = (0..m * k).map(val).collect();
    let b: Vec<f32> = (0..k * n).map(|i| val(i + 11)).collect();
    let pa = PackedA::pack(Strided::rows(&a, k), m, k);
    let pb = PackedB::pack(Strided::rows(&b, n), k, n);
    // SAFETY: the product writes all of its output.
    let run = |backend| unsafe {
        filled::<f32>(m * n, |out| {
            gemm_with(backend, &[&pa], &[&pb], Epilogue::default(), out)
        })
    };
    let (got, want) = (run(Backend::Amx), run(Backend::Portable));
    let scale = want.iter().fold(1f32, |s, x| s.max(x.abs()));
    let ok = got
        .iter()
        .zip(&want)
        .all(|(g, w)| (g - w).abs() <= 1e-5 * scale);
    if !ok {
        eprintln!("bf16 GEMM: the AMX kernel disagrees with the portable one; AMX not used");
    }
    ok
}

/// What is applied to each f32 sum before it is written, in this order.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to column j.
    pub bias: Option<&'a [f32]>,
    /// GELU (erf form) after the bias.
    pub gelu: bool,
    /// Added last, element by element: an [m, n] row-major matrix (one batch entry only), the
    /// residual a BERT output projection adds before its LayerNorm.
    pub residual: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    /// `dst` = the epilogue of `acc`, the sums of row i, columns j0 .. j0 + acc.len() of an
    /// [m, n] product (the bias and residual sliced to match).
    fn row<O: OutElem>(
        &self,
        acc: &mut [f32],
        (i, j0): (usize, usize),
        n: usize,
        dst: &mut [MaybeUninit<O>],
    ) {
        let cols = acc.len();
        let bias = self.bias.map(|b| &b[j0..j0 + cols]);
        let residual = self.residual.map(|x| &x[i * n + j0..][..cols]);
        epilogue_row(acc, bias, self.gelu, residual, dst);
    }
}

/// Output element types.
pub trait OutElem: Copy + Send + Sync {
    fn from_f32(x: f32) -> Self;
}

impl OutElem for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
}

impl OutElem for bf16 {
    #[inline(always)]
    fn from_f32(x: f32) -> bf16 {
        bf16::from_bits(pack::round_bf16(x))
    }
}

multiversion! {
    /// One row of the epilogue: `dst[c]` = out(gelu?(`acc[c]` + `bias[c]`) + `residual[c]`),
    /// in 16 lanes where the CPU has them (the scalar build would call libm's `fmaf` for every
    /// GELU step).
    fn epilogue_row<O: OutElem>(
        acc: &mut [f32],
        bias: Option<&[f32]>,
        gelu: bool,
        residual: Option<&[f32]>,
        dst: &mut [MaybeUninit<O>],
    ) {
        let out = |d: &mut MaybeUninit<O>, v: f32| {
            d.write(O::from_f32(v));
        };
        // BERT's four cases as one pass each (the sums straight to the output); any other
        // combination one step per pass. Same operations in the same order either way.
        match (bias, gelu, residual) {
            (None, false, None) => dst.iter_mut().zip(acc.iter()).for_each(|(d, &v)| out(d, v)),
            (Some(b), false, None) => {
                let each = dst.iter_mut().zip(acc.iter()).zip(b);
                each.for_each(|((d, &v), &bj)| out(d, v + bj))
            }
            (Some(b), true, None) => {
                let each = dst.iter_mut().zip(acc.iter()).zip(b);
                each.for_each(|((d, &v), &bj)| out(d, (v + bj).gelu()))
            }
            (Some(b), false, Some(r)) => {
                let each = dst.iter_mut().zip(acc.iter()).zip(b).zip(r);
                each.for_each(|(((d, &v), &bj), &x)| out(d, v + bj + x))
            }
            _ => {
                if let Some(b) = bias {
                    acc.iter_mut().zip(b).for_each(|(v, &bj)| *v += bj);
                }
                if gelu {
                    acc.iter_mut().for_each(|v| *v = v.gelu());
                }
                if let Some(r) = residual {
                    acc.iter_mut().zip(r).for_each(|(v, &x)| *v += x);
                }
                dst.iter_mut().zip(acc.iter()).for_each(|(d, &v)| out(d, v));
            }
        }
    }
}

/// `out[e]` (row-major [m, n]) = epilogue(`a[e]` `b[e]`) for every batch entry e, with the
/// current backend. `b` has one entry (shared by the batch) or one per entry. Every element of
/// `out` is written (it may start uninitialised: see [`filled`]).
pub fn gemm<O: OutElem>(a: &[&PackedA], b: &[&PackedB], ep: Epilogue, out: &mut [MaybeUninit<O>]) {
    gemm_with(Backend::current(), a, b, ep, out)
}

/// A fresh `Vec` of `len` outputs that `fill` writes, never zeroed first (a product's output is
/// written once, by its epilogue; zeroing it first was a whole extra pass over memory).
///
/// # Safety
/// `fill` writes every one of the `len` elements (as [`gemm`] and `small::gemm_strided` do).
pub unsafe fn filled<O>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<O>])) -> Vec<O> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller's contract: the first `len` elements are written.
    unsafe { out.set_len(len) };
    out
}

/// A raw output pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct OutPtr<O>(*mut MaybeUninit<O>);
// SAFETY: each task writes only its own tile (rows x columns) of one batch entry.
unsafe impl<O: Send> Send for OutPtr<O> {}
unsafe impl<O: Send> Sync for OutPtr<O> {}

impl<O> OutPtr<O> {
    /// # Safety
    /// `count` elements on stays inside the output.
    unsafe fn add(self, count: usize) -> OutPtr<O> {
        // SAFETY: the caller's contract.
        OutPtr(unsafe { self.0.add(count) })
    }
}

/// [`gemm`] with a given backend (which must be usable).
pub fn gemm_with<O: OutElem>(
    backend: Backend,
    a: &[&PackedA],
    b: &[&PackedB],
    ep: Epilogue,
    out: &mut [MaybeUninit<O>],
) {
    gemm_micro(backend.micro(), a, b, ep, out)
}

/// Asserts a product's shapes: `entries` A operands (at least one) and one B or one per entry,
/// `out` [entries, m, n], the bias [n], the residual [m, n] (one entry only).
fn check_shapes<O>(
    (entries, bs): (usize, usize),
    (m, n): (usize, usize),
    ep: &Epilogue,
    out: &[O],
) {
    assert!(entries > 0 && (bs == 1 || bs == entries));
    assert_eq!(out.len(), entries * m * n);
    if let Some(bias) = ep.bias {
        assert_eq!(bias.len(), n);
    }
    if let Some(residual) = ep.residual {
        assert!(entries == 1 && residual.len() == m * n);
    }
}

/// [`gemm_with`] for any micro-kernel (the tests also drive the AMX emulation through it).
fn gemm_micro<O: OutElem>(
    micro: Micro,
    a: &[&PackedA],
    b: &[&PackedB],
    ep: Epilogue,
    out: &mut [MaybeUninit<O>],
) {
    assert!(!a.is_empty());
    let (m, k, n) = (a[0].m, a[0].k, b[0].n);
    assert!(a.iter().all(|x| (x.m, x.k) == (m, k)) && b.iter().all(|x| (x.k, x.n) == (k, n)));
    check_shapes((a.len(), b.len()), (m, n), &ep, out);
    if m * n == 0 {
        return;
    }
    let (row_tiles, col_tiles) = (m.div_ceil(MC), n.div_ceil(NC));
    let per_entry = row_tiles * col_tiles;
    let dst = OutPtr(out.as_mut_ptr());
    // Row tiles vary fastest: rayon hands each thread a run of consecutive tasks, which then
    // share one column block of B (hot in L2) instead of streaming all of B per row tile
    // (linear_gemm's BERT-base bf16 rows, weights from memory: +2-5%).
    (0..a.len() * per_entry).into_par_iter().for_each(|t| {
        let (e, rest) = (t / per_entry, t % per_entry);
        let (pa, pb) = (a[e], b[if b.len() == 1 { 0 } else { e }]);
        // SAFETY: the entry's [m, n] block starts at e * m * n inside `out` (length asserted).
        let dst = unsafe { dst.add(e * m * n) };
        task(
            micro,
            pa,
            pb,
            rest % row_tiles,
            rest / row_tiles,
            ep,
            dst,
            n,
        );
    });
}

/// One product `a b` computed on the calling thread with the current backend, C row i written
/// at `out + i * ldo` (a block of a wider matrix). For callers that are themselves one of many
/// parallel tasks: the fused attention (`cpu::attention_bf16`) runs two per (batch, head).
///
/// # Safety
/// `out` is valid for writes of `(a.m - 1) * ldo + b.n` elements and no other thread touches
/// the elements this product writes (rows of `b.n` at stride `ldo`).
pub(crate) unsafe fn gemm_serial<O: OutElem>(
    a: &PackedA,
    b: &PackedB,
    ep: Epilogue,
    out: *mut O,
    ldo: usize,
) {
    let (m, n) = (a.m, b.n);
    assert!(a.k == b.k && ldo >= n && ep.bias.is_none_or(|bias| bias.len() == n));
    assert!(ep.residual.is_none_or(|r| r.len() == m * n));
    let micro = Backend::current().micro();
    for ti in 0..m.div_ceil(MC) {
        for tj in 0..n.div_ceil(NC) {
            task(micro, a, b, ti, tj, ep, OutPtr::<O>(out.cast()), ldo);
        }
    }
}

/// The products of one tile of C (module doc's k / panel / row loops): `acc` [rows, panels * 16]
/// (rows `ldc` apart) += A's packed rows (`kp` u16 apart from `a`) times `panels` packed B
/// panels (`panel_stride` apart from `b`).
///
/// # Safety
/// `a` holds `rows` rounded up to `micro.mr` rows of `kp` (k padded for the kernel); `b` holds
/// `panels` (rounded up to even for AMX, whose kernel reads two) panels of kp / 2 pair rows;
/// `acc` holds the rows of `a`, `ldc` >= 16 times the panels of `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_products(
    micro: Micro,
    a: *const u16,
    kp: usize,
    b: *const u16,
    panel_stride: usize,
    panels: usize,
    rows: usize,
    acc: *mut f32,
    ldc: usize,
) {
    let Micro {
        mr,
        nb: nb_max,
        kernel,
        ..
    } = micro;
    for k0 in (0..kp).step_by(KC) {
        let kpairs = KC.min(kp - k0) / 2;
        for jp in (0..panels).step_by(nb_max) {
            let nb = nb_max.min(panels - jp);
            for ir in (0..rows).step_by(mr) {
                // SAFETY: A rows ir + mr and columns k0 + 2 kpairs, B panels jp + nb (jp + 2 for
                // AMX) and pair rows k0 / 2 + kpairs, acc rows ir + mr and columns
                // (jp + nb) * 16 (jp + 2 for AMX) are inside the buffers (the contract above).
                unsafe {
                    kernel(MicroTile {
                        a: a.add(ir * kp + k0),
                        lda: kp,
                        b: b.add(jp * panel_stride + k0 * PANEL),
                        panel_stride,
                        kpairs,
                        c: acc.add(ir * ldc + jp * PANEL),
                        ldc,
                        nb,
                        fresh: k0 == 0,
                    });
                }
            }
        }
    }
}

/// One [MC, NC] tile of C (module doc); C's rows are `ldo` elements apart.
#[allow(clippy::too_many_arguments)]
fn task<O: OutElem>(
    micro: Micro,
    a: &PackedA,
    b: &PackedB,
    ti: usize,
    tj: usize,
    ep: Epilogue,
    out: OutPtr<O>,
    ldo: usize,
) {
    let (m, n, kp) = (a.m, b.n, a.kp);
    let (i0, p0) = (ti * MC, tj * NC_PANELS);
    let (rows, cols) = (MC.min(m - i0), NC.min(n - p0 * PANEL));
    let panels = cols.div_ceil(PANEL);
    if micro.tiles {
        // SAFETY: `Backend::Amx` is only chosen when usable (CPU, OS and permission checked).
        unsafe { amx::configure() };
    }
    // The thread's accumulator, not zeroed: the first k block's kernels write it (`fresh`)
    // before anything reads it.
    TASK_ACC.with_borrow_mut(|acc| {
        // SAFETY: A rows i0 + rows rounded up to mr <= a.mp (i0 and mr divide 32 or 64), kp
        // columns; B panels p0 + panels, rounded up to even for AMX, <= b.panels (an even
        // count); acc rows rounded up to mr <= MC (a multiple of every mr), NC >= those
        // panels' columns.
        unsafe {
            tile_products(
                micro,
                a.data.as_ptr().add(i0 * kp),
                kp,
                b.data.as_ptr().add(p0 * b.panel_stride()),
                b.panel_stride(),
                panels,
                rows,
                acc.as_mut_ptr(),
                NC,
            )
        };
        let j0 = p0 * PANEL;
        for r in 0..rows {
            let src = &mut acc[r * NC..r * NC + cols];
            // SAFETY: row i0 + r < m, columns j0 .. j0 + cols <= n <= ldo of this entry's
            // block; no other task writes this tile.
            let dst = unsafe { slice::from_raw_parts_mut(out.0.add((i0 + r) * ldo + j0), cols) };
            ep.row(src, (i0 + r, j0), n, dst);
        }
    });
}

thread_local! {
    /// A task's f32 accumulator [MC, NC], kept for the thread's next task.
    static TASK_ACC: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::new(vec![0.0; MC * NC]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `out` as the GEMM's output slots. The tests fill their outputs first (NaN, zeros) and
    /// read them after, so an element the GEMM failed to write shows.
    pub(super) fn slots<O>(out: &mut [O]) -> &mut [MaybeUninit<O>] {
        // SAFETY: the GEMM writes only initialised values into the slots.
        unsafe { &mut *(out as *mut [O] as *mut [MaybeUninit<O>]) }
    }

    /// A [r, c] operand over `data`: row-major, or (`transposed`) the same values stored
    /// column-major.
    pub(super) fn strided(data: &[f32], r: usize, c: usize, transposed: bool) -> Strided<'_, f32> {
        let (rs, cs) = if transposed { (1, r) } else { (c, 1) };
        Strided {
            data,
            offset: 0,
            rs,
            cs,
        }
    }

    /// Deterministic values in [-2, 2) with plenty of bits below bf16's 8.
    pub(super) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::Rng::new(seed);
        let t = crate::Tensor::rand_uniform(
            &[len],
            -2.0,
            2.0,
            crate::DType::F32,
            crate::Device::Cpu,
            &mut rng,
        )
        .unwrap();
        t.to_vec::<f32>().unwrap()
    }

    /// Every micro-kernel this CPU runs, by name, and the AMX kernel's emulation (its tile
    /// order and addressing, `amx::emulate`), which runs anywhere.
    pub(super) fn kernels() -> Vec<(&'static str, Micro)> {
        let mut all: Vec<_> = Backend::available()
            .into_iter()
            .map(|b| (b.name(), b.micro()))
            .collect();
        let emulated = Micro {
            kernel: amx::emulate,
            tiles: false,
            ..Backend::Amx.micro()
        };
        all.push(("amx-emulated", emulated));
        all
    }

    fn rounded(x: f32) -> f64 {
        bf16::from_bits(pack::round_bf16(x)).to_f64()
    }

    /// Checks `got` [m, n] against the f64 product of the bf16-rounded operands: the error may be
    /// f32 accumulation's alone, k * 2^-24 * sum |a b| (plus the epilogue's few roundings).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check(
        got: &[f32],
        a: &Strided<f32>,
        b: &Strided<f32>,
        (m, k, n): (usize, usize, usize),
        bias: Option<&[f32]>,
        gelu: bool,
        what: &str,
    ) {
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut abs) = (0f64, 0f64);
                for l in 0..k {
                    let p = rounded(a.at(i, l)) * rounded(b.at(l, j));
                    s += p;
                    abs += p.abs();
                }
                let mut bound = (k as f64 + 2.0) * 2f64.powi(-24) * abs + 1e-30;
                if let Some(bias) = bias {
                    s += bias[j] as f64;
                    bound += 2f64.powi(-23) * (s.abs() + bias[j].abs() as f64);
                }
                if gelu {
                    s = (s as f32).gelu() as f64;
                    bound = 2.0 * bound + 1e-6 * s.abs().max(1.0);
                }
                let g = got[i * n + j] as f64;
                assert!(
                    (g - s).abs() <= bound,
                    "{what} {m}x{k}x{n} [{i}, {j}]: got {g}, want {s} (bound {bound})"
                );
            }
        }
    }

    #[test]
    fn every_backend_every_transpose_and_odd_sizes() {
        let sizes = [
            (1, 1, 1),
            (15, 17, 33),
            (33, 15, 17),
            (17, 33, 1),
            (1, 1700, 15),  // several k blocks
            (1000, 33, 17), // several row tiles
            (17, 15, 1000), // several column tiles
        ];
        each_case(&sizes, 2, |micro, a, b, (m, k, n), what| {
            let (pa, pb) = (PackedA::pack(a, m, k), PackedB::pack(b, k, n));
            let mut out = vec![f32::NAN; m * n];
            gemm_micro(micro, &[&pa], &[&pb], Epilogue::default(), slots(&mut out));
            check(&out, &a, &b, (m, k, n), None, false, what);
        });
    }

    /// `f(micro, a, b, (m, k, n), what)` for every kernel, every size and all four transposes
    /// of fresh operands (entry s of `sizes` seeded from `seed_step * s`).
    pub(super) fn each_case(
        sizes: &[(usize, usize, usize)],
        seed_step: u64,
        f: impl Fn(Micro, Strided<f32>, Strided<f32>, (usize, usize, usize), &str),
    ) {
        for (name, micro) in kernels() {
            for (s, &(m, k, n)) in sizes.iter().enumerate() {
                let seed = seed_step * s as u64;
                let (av, bv) = (values(m * k, seed), values(k * n, seed + 1));
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let (a, b) = (strided(&av, m, k, ta), strided(&bv, k, n, tb));
                    f(micro, a, b, (m, k, n), &format!("{name} ta={ta} tb={tb}"));
                }
            }
        }
    }

    #[test]
    fn epilogue_batches_and_bf16_output() {
        let (m, k, n, batch) = (37, 70, 50, 3);
        let av = values(batch * m * k, 7);
        let bv = values(batch * k * n, 8);
        let bias = values(n, 9);
        // Row strides wider than the rows (a narrowed view) and an offset.
        let lda = k + 2;
        for (name, micro) in kernels() {
            let a: Vec<Strided<f32>> = (0..batch)
                .map(|e| Strided {
                    data: &av,
                    offset: e * m * k / 2,
                    rs: lda / 2,
                    cs: 1,
                })
                .collect();
            let b: Vec<Strided<f32>> = (0..batch)
                .map(|e| Strided {
                    data: &bv,
                    offset: e * k * n / 2,
                    rs: n,
                    cs: 1,
                })
                .collect();
            let pa: Vec<PackedA> = a.iter().map(|x| PackedA::pack(*x, m, k / 2)).collect();
            let pb: Vec<PackedB> = b.iter().map(|x| PackedB::pack(*x, k / 2, n)).collect();
            let (ra, rb): (Vec<&PackedA>, Vec<&PackedB>) =
                (pa.iter().collect(), pb.iter().collect());
            for gelu in [false, true] {
                let ep = Epilogue {
                    bias: Some(&bias),
                    gelu,
                    residual: None,
                };
                let mut out = vec![0f32; batch * m * n];
                gemm_micro(micro, &ra, &rb, ep, slots(&mut out));
                let mut out16 = vec![bf16::ZERO; batch * m * n];
                gemm_micro(micro, &ra, &rb, ep, slots(&mut out16));
                for e in 0..batch {
                    let what = format!("{name} entry {e} gelu={gelu}");
                    let got = &out[e * m * n..(e + 1) * m * n];
                    check(got, &a[e], &b[e], (m, k / 2, n), Some(&bias), gelu, &what);
                    let got16 = &out16[e * m * n..(e + 1) * m * n];
                    for (x, y) in got16.iter().zip(got) {
                        assert_eq!(*x, bf16::from_f32(*y), "{what}: bf16 output");
                    }
                }
            }
            // One B shared by the batch gives each entry's own product.
            let mut shared = vec![0f32; batch * m * n];
            gemm_micro(
                micro,
                &ra,
                &rb[..1],
                Epilogue::default(),
                slots(&mut shared),
            );
            for e in 0..batch {
                let got = &shared[e * m * n..(e + 1) * m * n];
                check(got, &a[e], &b[0], (m, k / 2, n), None, false, "shared B");
            }
        }
    }

    /// The AMX emulation adds each element's products in the portable kernel's order (pair by
    /// pair, even half first, k block by k block), so the two agree bit for bit: any slip in the
    /// tile addressing (a wrong A half, B panel, k step or C quadrant) shows as a difference.
    #[test]
    fn amx_emulation_equals_the_portable_kernel_bit_for_bit() {
        let (m, k, n) = (70, 1600, 83); // 3 row micro-tiles, 3 k blocks, an odd panel count
        let (av, bv) = (values(m * k, 40), values(k * n, 41));
        let a = Strided::rows(&av, k);
        let b = Strided {
            data: &bv,
            offset: 0,
            rs: 1,
            cs: k,
        };
        let (pa, pb) = (PackedA::pack(a, m, k), PackedB::pack(b, k, n));
        let run = |micro| {
            let mut out = vec![0f32; m * n];
            gemm_micro(micro, &[&pa], &[&pb], Epilogue::default(), slots(&mut out));
            out
        };
        let (_, emulated) = kernels().pop().expect("the emulation is listed last");
        let want = run(Backend::Portable.micro());
        assert!(run(emulated) == want, "AMX emulation vs portable");
    }

    #[test]
    fn reports_the_backends_of_this_cpu() {
        let all = Backend::available();
        assert_eq!(all.last(), Some(&Backend::Portable));
        assert!(all.contains(&Backend::current()));
        eprintln!(
            "bf16 GEMM backends here: {:?} (current {}); AMX {}",
            all,
            Backend::current().name(),
            if amx::cpu_has_amx() {
                "present"
            } else {
                "absent: its asm cannot run here; its emulation (amx::emulate) is tested instead"
            }
        );
    }
}
