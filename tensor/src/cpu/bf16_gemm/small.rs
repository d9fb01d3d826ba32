//! The bf16 GEMM for small products: the demo's tiny BERT (hidden 128, FFN 512, 768 rows) and
//! attention's batches of [48, 32] x [32, 48] head products, where the general driver's per-call
//! costs (packing all of A in a pass of its own, a fresh zeroed [64, 192] accumulator per task,
//! rayon tasks finer than the work) cost more than the products themselves.
//!
//! Same micro-kernels, same packed layouts (`pack.rs`), same sums; what changes is who packs and
//! where the buffers live:
//!
//! ```text
//!   each thread keeps one Scratch (packed A block, packed B, accumulator), reused call to call
//!
//!   one B for every entry (a linear layer):      one B per entry (attention's [B, H] products):
//!     B packed once, shared (read-only)            task = one entry (rayon over entries):
//!     task = (entry, block of 32 or 64 rows):        B of the entry -> scratch
//!       A rows of the block -> scratch               A rows -> scratch, then as on the left
//!       for each 192-column tile of C:
//!         acc (scratch, rows x tile width; the first k block writes it)
//!         for k0 in 0..kp step 768 (KC), panel groups, micro rows: kernel(acc += A . B)
//!         epilogue: out rows = cast(gelu?(acc + bias) + residual)
//! ```
//!
//! k is padded to a whole pair (to 32 only for AMX, whose tiles are 16 pairs deep), rows to the
//! micro-kernel's height, B panels to an even count only for AMX (its kernel reads two).

use super::pack::{pack_a_block, pack_b_panel, Bf16Source, Strided, K_PAD, PANEL};
use super::{amx, check_shapes, tile_products, Backend, Epilogue, Micro, OutElem, MC, NC_PANELS};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Elements of B below which it is packed on the calling thread (a rayon split costs more).
const SERIAL_PACK: usize = 1 << 15;

/// A thread's packing and accumulator buffers (grown as needed, never shrunk).
#[derive(Default)]
struct Scratch {
    a: Vec<u16>,
    b: Vec<u16>,
    acc: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` on this thread's scratch. `f` must not start rayon work (a task stolen while
/// waiting could borrow the same scratch).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// Packed B panels: panel j (columns 16j .. 16j + 16) at `data[j * stride ..]`.
#[derive(Clone, Copy)]
struct Panels<'a> {
    data: &'a [u16],
    stride: usize,
}

/// The shape of the packed operands for one micro-kernel.
#[derive(Clone, Copy)]
struct Padded {
    /// k rounded up to a whole pair (to 32 for AMX).
    kp: usize,
    /// B panels stored: ceil(n / 16), rounded up to even for AMX.
    panels: usize,
    /// Accumulator panels a tile of `t` panels needs: t, rounded up to even for AMX.
    group: usize,
}

impl Padded {
    fn new(micro: &Micro, k: usize, n: usize) -> Padded {
        // The AMX kernel (and its emulation, which runs without `tiles`) reads k in whole
        // tiles of 16 pairs and B panels two at a time; it alone has 32-row micro-tiles.
        let (k_to, group) = if micro.mr == amx::MR {
            (K_PAD, micro.nb)
        } else {
            (2, 1)
        };
        Padded {
            kp: k.max(1).next_multiple_of(k_to),
            panels: n.div_ceil(PANEL).max(1).next_multiple_of(group),
            group,
        }
    }
}

/// B [k, n] packed into `dst` (resized, zero padding) as `pad.panels` panels.
fn pack_b<T: Bf16Source>(src: Strided<T>, k: usize, n: usize, pad: Padded, dst: &mut Vec<u16>) {
    let stride = pad.kp * PANEL;
    dst.clear();
    dst.resize(pad.panels * stride, 0);
    let one = |(p, panel): (usize, &mut [u16])| {
        let j0 = p * PANEL;
        if j0 < n {
            pack_b_panel(src, j0, PANEL.min(n - j0), k, panel);
        }
    };
    if k * n < SERIAL_PACK {
        dst.chunks_exact_mut(stride).enumerate().for_each(one);
    } else {
        dst.par_chunks_exact_mut(stride).enumerate().for_each(one);
    }
}

/// `out[e]` (row-major [m, n]) = epilogue(`a[e]` `b[e]`) for every batch entry e, with the
/// current backend, the operands read in place (any strides) and packed by the tasks (module
/// doc). Every element of `out` is written (it may start uninitialised). `b` has one entry (shared by the batch) or one per entry. The same sums as
/// [`super::gemm`] up to the order of the f32 additions.
pub fn gemm_strided<TA: Bf16Source, TB: Bf16Source, O: OutElem>(
    a: &[Strided<TA>],
    b: &[Strided<TB>],
    mkn: (usize, usize, usize),
    ep: Epilogue,
    out: &mut [MaybeUninit<O>],
) {
    gemm_strided_micro(Backend::current().micro(), a, b, mkn, ep, out)
}

/// [`gemm_strided`] for any micro-kernel (the tests also drive the AMX emulation through it).
pub(super) fn gemm_strided_micro<TA: Bf16Source, TB: Bf16Source, O: OutElem>(
    micro: Micro,
    a: &[Strided<TA>],
    b: &[Strided<TB>],
    (m, k, n): (usize, usize, usize),
    ep: Epilogue,
    out: &mut [MaybeUninit<O>],
) {
    check_shapes((a.len(), b.len()), (m, n), &ep, out);
    if m * n == 0 {
        return;
    }
    let pad = Padded::new(&micro, k, n);
    let dims = Dims { m, k, n, pad };
    if b.len() == 1 {
        let mut packed = Vec::new();
        pack_b(b[0], k, n, pad, &mut packed);
        let panels = Panels {
            data: &packed,
            stride: pad.kp * PANEL,
        };
        let mc = row_block(a.len(), m);
        out.par_chunks_mut(m * n).zip(a).for_each(|(entry, &a)| {
            entry
                .par_chunks_mut(mc * n)
                .enumerate()
                .for_each(|(blk, rows)| {
                    with_scratch(|s| {
                        let (sa, acc) = (&mut s.a, &mut s.acc);
                        block(micro, a, blk * mc, panels, dims, ep, rows, sa, acc);
                    })
                })
        });
    } else {
        out.par_chunks_mut(m * n)
            .zip(a.par_iter().zip(b))
            .for_each(|(entry, (&a, &b))| {
                with_scratch(|s| {
                    pack_b(b, k, n, pad, &mut s.b);
                    let panels = Panels {
                        data: &s.b,
                        stride: pad.kp * PANEL,
                    };
                    let (sa, acc) = (&mut s.a, &mut s.acc);
                    for (blk, rows) in entry.chunks_mut(MC * n).enumerate() {
                        block(micro, a, blk * MC, panels, dims, ep, rows, sa, acc);
                    }
                })
            });
    }
}

/// Rows of C per task with a shared B: 64, or 32 when that leaves under 4 tasks per thread.
fn row_block(entries: usize, m: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads();
    if entries * m.div_ceil(MC) < tasks {
        MC / 2
    } else {
        MC
    }
}

/// One product's sizes and their padding.
#[derive(Clone, Copy)]
struct Dims {
    m: usize,
    k: usize,
    n: usize,
    pad: Padded,
}

/// Rows `i0 ..` of one entry's C (as many as `out` holds, `out.len() / n`), from A's rows packed
/// into `sa` and the packed `b`, accumulating in `acc` (module doc).
#[allow(clippy::too_many_arguments)]
fn block<TA: Bf16Source, O: OutElem>(
    micro: Micro,
    a: Strided<TA>,
    i0: usize,
    b: Panels,
    Dims { m, k, n, pad }: Dims,
    ep: Epilogue,
    out: &mut [MaybeUninit<O>],
    sa: &mut Vec<u16>,
    acc: &mut Vec<f32>,
) {
    let Micro { mr, tiles, .. } = micro;
    let rows = out.len() / n;
    debug_assert!(i0 + rows <= m);
    let (kp, mp) = (pad.kp, rows.next_multiple_of(mr));
    sa.clear();
    sa.resize(mp * kp, 0);
    pack_a_block(a, i0, rows, k, kp, sa);
    if tiles {
        // SAFETY: `Backend::Amx` is only chosen when usable (CPU, OS and permission checked).
        unsafe { amx::configure() };
    }
    let with_cols = n.div_ceil(PANEL);
    for p0 in (0..with_cols).step_by(NC_PANELS) {
        let tile = NC_PANELS.min(with_cols - p0);
        let ldc = tile.next_multiple_of(pad.group) * PANEL;
        if acc.len() < mp * ldc {
            acc.resize(mp * ldc, 0.0); // never zeroed again: the kernels write before adding
        }
        // SAFETY: `sa` holds mp * kp (rows rounded up to mr); B panels p0 + tile, rounded up to
        // even for AMX, <= pad.panels (even for AMX); acc holds mp rows of ldc, the tile's
        // panels rounded up the same way.
        unsafe {
            tile_products(
                micro,
                sa.as_ptr(),
                kp,
                b.data.as_ptr().add(p0 * b.stride),
                b.stride,
                tile,
                rows,
                acc.as_mut_ptr(),
                ldc,
            )
        };
        let j0 = p0 * PANEL;
        let cols = (tile * PANEL).min(n - j0);
        for r in 0..rows {
            let dst = &mut out[r * n + j0..r * n + j0 + cols];
            ep.row(&mut acc[r * ldc..r * ldc + cols], (i0 + r, j0), n, dst);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The small-product driver against the f64 product of the rounded operands (the checks of
    //! `bf16_gemm`'s own tests), for every kernel this CPU runs and the AMX emulation, and
    //! against the general driver ([`super::super::gemm_micro`]) bit for bit: both add the same
    //! products in the same order (the same k blocks, pairs in order), the zero padding adds zeros.
    use super::super::tests::{check, each_case, kernels, slots, values};
    use super::super::{gemm_micro, PackedA, PackedB};
    use super::*;
    use half::bf16;

    #[test]
    fn every_kernel_every_transpose_odd_sizes_equal_to_the_general_driver() {
        let sizes = [
            (1, 1, 1),
            (15, 17, 33),
            (33, 15, 17),
            (17, 33, 1),
            (48, 48, 32),  // an attention head: whole 16 x 32 transposed blocks
            (50, 75, 20),  // blocks and leftovers of the transposed packing
            (1, 600, 15),  // several k blocks
            (200, 33, 17), // several row blocks
            (17, 15, 400), // several column tiles
        ];
        each_case(&sizes, 3, |micro, a, b, (m, k, n), what| {
            let mut out = vec![f32::NAN; m * n];
            let ep = Epilogue::default();
            gemm_strided_micro(micro, &[a], &[b], (m, k, n), ep, slots(&mut out));
            let what = format!("{what} small");
            check(&out, &a, &b, (m, k, n), None, false, &what);
            let (pa, pb) = (PackedA::pack(a, m, k), PackedB::pack(b, k, n));
            let mut general = vec![0f32; m * n];
            gemm_micro(micro, &[&pa], &[&pb], ep, slots(&mut general));
            assert!(
                general == out,
                "{what} {m}x{k}x{n}: differs from the general driver"
            );
        });
    }

    #[test]
    fn batches_shared_or_per_entry_with_epilogue_and_bf16_output() {
        let (m, k, n, batch) = (37, 70, 50, 5);
        let av = values(batch * m * k, 17);
        let bv = values(batch * k * n, 18);
        let bias = values(n, 19);
        // Entries at offsets inside one buffer, A's rows wider than k (a narrowed view).
        let a: Vec<Strided<f32>> = (0..batch)
            .map(|e| Strided {
                data: &av,
                offset: e * m * k / 2,
                rs: k / 2 + 3,
                cs: 1,
            })
            .collect();
        let b: Vec<Strided<f32>> = (0..batch)
            .map(|e| Strided {
                data: &bv,
                offset: e * k * n / 2,
                rs: 1,
                cs: k / 2,
            })
            .collect();
        let kk = k / 2;
        for (name, micro) in kernels() {
            for gelu in [false, true] {
                let ep = Epilogue {
                    bias: Some(&bias),
                    gelu,
                    residual: None,
                };
                for shared in [false, true] {
                    let bs = if shared { &b[..1] } else { &b[..] };
                    let mut out = vec![0f32; batch * m * n];
                    gemm_strided_micro(micro, &a, bs, (m, kk, n), ep, slots(&mut out));
                    let mut out16 = vec![bf16::ZERO; batch * m * n];
                    gemm_strided_micro(micro, &a, bs, (m, kk, n), ep, slots(&mut out16));
                    for e in 0..batch {
                        let what = format!("{name} entry {e} gelu={gelu} shared={shared}");
                        let got = &out[e * m * n..(e + 1) * m * n];
                        let be = &bs[if shared { 0 } else { e }];
                        check(got, &a[e], be, (m, kk, n), Some(&bias), gelu, &what);
                        let got16 = &out16[e * m * n..(e + 1) * m * n];
                        for (x, y) in got16.iter().zip(got) {
                            assert_eq!(*x, bf16::from_f32(*y), "{what}: bf16 output");
                        }
                    }
                }
            }
        }
    }
}
