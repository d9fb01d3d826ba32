//! Packing for the bf16 GEMM: both operands are rounded to bf16 (round to nearest even, as
//! `half::bf16::from_f32` and torch's autocast cast) and laid out the way the micro-kernels read
//! them, once per product (A, the activations) or once per weight value (B, cached by the
//! inference `Linear`).
//!
//! ```text
//!  A [m, k] -> PackedA: row-major bf16 [mp, kp]          B [k, n] -> PackedB: VNNI pair panels
//!  mp = m rounded up to 32 rows, kp = k rounded up to 32  panel j = columns 16j .. 16j+16:
//!  (zeros in the padding: they add nothing)                 [kp/2 pair rows][16 columns][2]
//!                                                           pair row p, column c holds
//!  row i: a(i,0) a(i,1) a(i,2) a(i,3) ...                   ( b(2p, 16j+c), b(2p+1, 16j+c) )
//!         \pair 0/  \pair 1/                                = 64 bytes per pair row,
//!                                                             kp/2 * 64 bytes per panel,
//!                                                           panel count rounded up to even
//! ```
//!
//! The pair layout is what both `tdpbf16ps` (an AMX B tile is 16 pair rows of one panel) and
//! `vdpbf16ps` (one zmm is one pair row of one panel) multiply against a broadcast pair of A.
//! Sources are read through any strides (a transposed view costs no copy), as f32 or bf16.

use crate::cpu::simd::multiversion;
use half::bf16;
use rayon::prelude::*;

/// k is padded to a multiple of this (one AMX tile's depth: 16 pairs, 64 bytes of a row).
pub const K_PAD: usize = 32;
/// Rows of A are padded to a multiple of this (the AMX micro-tile's height).
pub const M_PAD: usize = 32;
/// Columns per B panel (one zmm of f32, one AMX tile's width).
pub const PANEL: usize = 16;

/// A matrix read in place: element (i, j) at `data[offset + i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Strided<'a, T> {
    /// A row-major matrix at the start of `data`: rows `rs` elements apart, columns adjacent.
    pub fn rows(data: &'a [T], rs: usize) -> Strided<'a, T> {
        Strided {
            data,
            offset: 0,
            rs,
            cs: 1,
        }
    }
}

impl<'a, T: Bf16Source> Strided<'a, T> {
    /// The same view, typed f32, when `T` is f32 (the register-transpose packing reads f32).
    fn as_f32(self) -> Option<Strided<'a, f32>> {
        T::as_f32(self.data).map(|data| Strided {
            data,
            offset: self.offset,
            rs: self.rs,
            cs: self.cs,
        })
    }
}

impl<T: Copy> Strided<'_, T> {
    #[inline(always)]
    pub(crate) fn at(&self, i: usize, j: usize) -> T {
        self.data[self.offset + i * self.rs + j * self.cs]
    }
}

/// The bits of x rounded to the nearest bf16, ties to even; NaN stays a (quiet) NaN.
/// Branch-free (a select, not a jump), so the packing loops vectorise.
#[inline(always)]
pub fn round_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet = (b >> 16) | 0x0040;
    (if nan { quiet } else { rounded }) as u16
}

/// `dst[i]` = the bf16 bits of `src[i]`: one packed row (inlined into the vectorised block
/// and panel functions below, which dispatch on the CPU's vector width once per call).
#[inline(always)]
fn round_row<T: Bf16Source>(src: &[T], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.bf16_bits();
    }
}

/// One VNNI pair row of a B panel from two rows of B: `dst[2c]` = the bf16 bits of `even[c]`,
/// `dst[2c + 1]` those of `odd[c]`.
#[inline(always)]
fn interleave_pair<T: Bf16Source>(even: &[T], odd: &[T], dst: &mut [u16]) {
    for ((d, &e), &o) in dst.chunks_exact_mut(2).zip(even).zip(odd) {
        d[0] = e.bf16_bits();
        d[1] = o.bf16_bits();
    }
}

/// Columns l and l + 1 of a block of A's rows (`even`, `odd`: each along memory, as in a
/// transposed view) into the packed rows: `dst[r * kp]` and `dst[r * kp + 1]` for row r
/// (inlined into the vectorised `pack_a_block`).
#[inline(always)]
fn spread_pair<T: Bf16Source>(even: &[T], odd: &[T], kp: usize, dst: &mut [u16]) {
    for ((d, &e), &o) in dst.chunks_mut(kp).zip(even).zip(odd) {
        d[0] = e.bf16_bits();
        d[1] = o.bf16_bits();
    }
}

/// Element types an operand may be read from.
pub trait Bf16Source: Copy + Send + Sync {
    fn bf16_bits(self) -> u16;
    /// The slice as f32 when it is (the register-transpose packing reads f32).
    fn as_f32(_data: &[Self]) -> Option<&[f32]> {
        None
    }
}

impl Bf16Source for f32 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        round_bf16(self)
    }
    fn as_f32(data: &[f32]) -> Option<&[f32]> {
        Some(data)
    }
}

impl Bf16Source for bf16 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// A [m, k] as row-major bf16 bits [mp, kp] (module doc).
pub struct PackedA {
    pub data: Vec<u16>,
    pub m: usize,
    pub k: usize,
    pub mp: usize,
    pub kp: usize,
}

impl PackedA {
    pub fn pack<T: Bf16Source>(src: Strided<T>, m: usize, k: usize) -> PackedA {
        let (mp, kp) = (round_up(m.max(1), M_PAD), round_up(k.max(1), K_PAD));
        let mut data = vec![0u16; mp * kp];
        data.par_chunks_mut(M_PAD * kp)
            .enumerate()
            .for_each(|(blk, chunk)| {
                let i0 = blk * M_PAD;
                let rows = M_PAD.min(m.saturating_sub(i0));
                if rows == 0 {
                    return; // m = 0: one block of zeros
                }
                pack_a_block(src, i0, rows, k, kp, chunk);
            });
        PackedA { data, m, k, mp, kp }
    }
}

/// B [k, n] in VNNI pair panels (module doc). Cached per weight by the inference `Linear`.
pub struct PackedB {
    pub data: Vec<u16>,
    pub k: usize,
    pub n: usize,
    pub kp: usize,
    /// Panels stored (ceil(n / 16) rounded up to even).
    pub panels: usize,
}

impl PackedB {
    pub fn pack<T: Bf16Source>(src: Strided<T>, k: usize, n: usize) -> PackedB {
        let kp = round_up(k.max(1), K_PAD);
        let panels = round_up(n.div_ceil(PANEL).max(1), 2);
        let mut data = vec![0u16; panels * kp * PANEL];
        data.par_chunks_mut(kp * PANEL)
            .enumerate()
            .for_each(|(p, panel)| {
                let j0 = p * PANEL;
                let cols = PANEL.min(n.saturating_sub(j0));
                if cols == 0 {
                    return; // the padding panel of an odd panel count: zeros
                }
                pack_b_panel(src, j0, cols, k, panel);
            });
        PackedB {
            data,
            k,
            n,
            kp,
            panels,
        }
    }

    /// u16s from one panel to the next.
    pub fn panel_stride(&self) -> usize {
        self.kp * PANEL
    }
}

multiversion! {
    /// Rows `i0 .. i0 + rows` of A into `chunk` (rows of `kp`, zero padding already there).
    pub(crate) fn pack_a_block<T: Bf16Source>(
        src: Strided<'_, T>,
        i0: usize,
        rows: usize,
        k: usize,
        kp: usize,
        chunk: &mut [u16],
    ) {
        if src.cs == 1 || k == 1 {
            for r in 0..rows {
                let row = &mut chunk[r * kp..r * kp + k];
                let start = src.offset + (i0 + r) * src.rs;
                if src.cs == 1 {
                    round_row(&src.data[start..start + k], row);
                } else {
                    row[0] = src.data[start].bf16_bits();
                }
            }
        } else if src.rs == 1 {
            // A transposed view (x^T in a weight gradient, q^T and probs^T in attention):
            // whole 16-row blocks of an f32 view through register transposes
            // (`transpose.rs`), the rest two columns at a time, filling adjacent halves of
            // each row.
            let (rows_t, k_t) = match src.as_f32() {
                Some(view) => super::transpose::pack_blocks(view, i0, rows, k, kp, chunk),
                None => (0, 0),
            };
            let column = |l: usize| {
                let start = src.offset + l * src.cs + i0;
                &src.data[start..start + rows]
            };
            for l in (0..k.saturating_sub(1)).step_by(2) {
                let r0 = if l < k_t { rows_t } else { 0 };
                if r0 == rows {
                    continue;
                }
                spread_pair(
                    &column(l)[r0..],
                    &column(l + 1)[r0..],
                    kp,
                    &mut chunk[r0 * kp + l..],
                );
            }
            if k % 2 == 1 {
                for (r, x) in column(k - 1).iter().enumerate() {
                    chunk[r * kp + k - 1] = x.bf16_bits();
                }
            }
        } else {
            for l in 0..k {
                for r in 0..rows {
                    chunk[r * kp + l] = src.at(i0 + r, l).bf16_bits();
                }
            }
        }
    }
}

multiversion! {
    /// Columns `j0 .. j0 + cols` of B (at most one panel) into `panel` (zero padding there).
    pub(crate) fn pack_b_panel<T: Bf16Source>(
        src: Strided<'_, T>,
        j0: usize,
        cols: usize,
        k: usize,
        panel: &mut [u16],
    ) {
        // Element (l, c) of the panel sits at pair row l / 2, column c, half l % 2.
        let slot = |l: usize, c: usize| (l / 2) * 2 * PANEL + 2 * c + (l & 1);
        if src.rs == 1 {
            // W^T views (the linear layer in training), k^T in attention: each column
            // is along memory, so its pairs (rows 2p, 2p + 1) are adjacent. A full panel
            // of an f32 view goes through register transposes (`transpose.rs`); otherwise
            // round each column in one vector pass, then move each pair (32 bits) to its
            // pair row.
            let view = src.as_f32().filter(|_| cols == PANEL);
            let full = view.is_some_and(|v| {
                super::transpose::pack_panel_blocks(v, j0, k, panel) == k
            });
            if !full {
                let mut column = vec![0u16; 2 * k.div_ceil(2)];
                for c in 0..cols {
                    let start = src.offset + (j0 + c) * src.cs;
                    round_row(&src.data[start..start + k], &mut column[..k]);
                    let rows = panel.chunks_exact_mut(2 * PANEL);
                    for (pair_row, pair) in rows.zip(column.chunks_exact(2)) {
                        pair_row[2 * c..2 * c + 2].copy_from_slice(pair);
                    }
                }
            }
        } else if src.cs == 1 {
            // Row-major B (W in dx = g W, g in dW = x^T g): two rows of the panel's
            // columns interleave into one pair row.
            let row = |l: usize| {
                let start = src.offset + l * src.rs + j0;
                &src.data[start..start + cols]
            };
            for (p, pair) in panel.chunks_exact_mut(2 * PANEL).take(k / 2).enumerate() {
                interleave_pair(row(2 * p), row(2 * p + 1), &mut pair[..2 * cols]);
            }
            if k % 2 == 1 {
                for (c, x) in row(k - 1).iter().enumerate() {
                    panel[slot(k - 1, c)] = x.bf16_bits();
                }
            }
        } else {
            for l in 0..k {
                for c in 0..cols {
                    panel[slot(l, c)] = src.at(l, j0 + c).bf16_bits();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_half() {
        let xs = [
            0.0f32,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0, // exactly between two bf16: ties to even (down)
            1.0 + 3.0 / 256.0, // between, ties to even (up)
            std::f32::consts::PI,
            -2.7182817,
            f32::MAX, // rounds to inf, as half does
            f32::MIN_POSITIVE,
            1e-40, // subnormal
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for x in xs {
            assert_eq!(round_bf16(x), bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(bf16::from_bits(round_bf16(f32::NAN)).is_nan());
    }

    /// A transposed f32 view packs to the same bytes as the row-major matrix: whole 16 x 32
    /// blocks through the register transposes (`transpose.rs`), the leftover rows and columns
    /// two at a time, with ties, NaN, infinities and subnormals among the values.
    #[test]
    fn transposed_a_packs_like_row_major_through_the_register_transposes() {
        let specials = [
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e-40,
            -0.0,
            f32::MAX,
        ];
        for (m, k) in [(16, 32), (48, 48), (50, 75), (33, 64), (15, 100), (64, 31)] {
            let value = |i: usize, l: usize| {
                let x = ((i * 7919 + l * 104_729) % 2003) as f32 / 97.0 - 10.0;
                if (i + 3 * l).is_multiple_of(29) {
                    specials[(i + l) % specials.len()]
                } else {
                    x * (1.0 + 1.0 / 3.0)
                }
            };
            let row_major: Vec<f32> = (0..m * k).map(|e| value(e / k, e % k)).collect();
            // Column-major with 5 spare rows per column and an offset: A = (a view of) x^T.
            let ld = m + 5;
            let mut col_major = vec![-7.0f32; 3 + k * ld];
            for i in 0..m {
                for l in 0..k {
                    col_major[3 + l * ld + i] = value(i, l);
                }
            }
            let want = PackedA::pack(Strided::rows(&row_major, k), m, k);
            let got = PackedA::pack(
                Strided {
                    data: &col_major,
                    offset: 3,
                    rs: 1,
                    cs: ld,
                },
                m,
                k,
            );
            assert!(got.data == want.data, "{m}x{k}");
            // The same matrices as B [m, k]: W^T-like (columns along memory) packs like
            // row-major B, full panels through the transposes.
            let want = PackedB::pack(Strided::rows(&row_major, k), m, k);
            let col_major_t: Vec<f32> = (0..m * k).map(|e| value(e % m, e / m)).collect();
            let got = PackedB::pack(
                Strided {
                    data: &col_major_t,
                    offset: 0,
                    rs: 1,
                    cs: m,
                },
                m,
                k,
            );
            assert!(got.data == want.data, "B {m}x{k}");
        }
    }

    #[test]
    fn packs_pairs_into_panels_with_zero_padding() {
        // B [3, 17] row-major: b(l, j) = 100 l + j, exactly representable in bf16.
        let (k, n) = (3, 17);
        let b: Vec<f32> = (0..k * n).map(|i| (100 * (i / n) + i % n) as f32).collect();
        let src = Strided::rows(&b, n);
        let p = PackedB::pack(src, k, n);
        assert_eq!((p.kp, p.panels), (32, 2));
        let get = |panel: usize, pair: usize, c: usize, h: usize| {
            bf16::from_bits(p.data[panel * p.panel_stride() + pair * 32 + 2 * c + h]).to_f32()
        };
        assert_eq!(get(0, 0, 5, 0), 5.0);
        assert_eq!(get(0, 0, 5, 1), 105.0);
        assert_eq!(get(0, 1, 5, 0), 205.0);
        assert_eq!(get(0, 1, 5, 1), 0.0); // k padding
        assert_eq!(get(1, 0, 0, 1), 116.0); // column 16
        assert_eq!(get(1, 0, 1, 0), 0.0); // n padding
                                          // The same matrix read through a transposed view packs identically.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let src_t = Strided {
            data: &bt,
            offset: 0,
            rs: 1,
            cs: k,
        };
        assert_eq!(PackedB::pack(src_t, k, n).data, p.data);
        // And through a view with no unit stride (every other element of a wider buffer), the
        // generic walk.
        let wide: Vec<f32> = b.iter().flat_map(|&x| [x, -1.0]).collect();
        let src_w = Strided {
            data: &wide,
            offset: 0,
            rs: 2 * n,
            cs: 2,
        };
        assert_eq!(PackedB::pack(src_w, k, n).data, p.data);
        assert_eq!(
            PackedA::pack(src_w, k, n).data,
            PackedA::pack(src, k, n).data
        );
        // Even k and a row offset take the pair loop without the odd last row.
        let src_2 = Strided {
            data: &b,
            offset: n,
            rs: n,
            cs: 1,
        };
        let p2 = PackedB::pack(src_2, 2, n);
        assert_eq!(
            bf16::from_bits(p2.data[p2.panel_stride() + 1]).to_f32(),
            216.0
        );
        assert_eq!(bf16::from_bits(p2.data[2 * 5]).to_f32(), 105.0);
        // A: rows padded to 32, k to 32.
        let a = PackedA::pack(src, k, n);
        assert_eq!((a.mp, a.kp), (32, 32));
        assert_eq!(bf16::from_bits(a.data[2 * 32 + 16]).to_f32(), 216.0);
        assert_eq!(a.data[2 * 32 + 17], 0);
        let a_t = PackedA::pack(src_t, k, n);
        assert_eq!(a_t.data, a.data);
    }
}
