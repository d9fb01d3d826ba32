//! The AVX512-BF16 micro-kernel: `vdpbf16ps` multiplies 16 pairs of bf16 by 16 pairs and adds
//! each pair's two products into one f32 lane. One pair row of a B panel (16 columns x 2, see
//! `pack.rs`) is one zmm; a pair of A (a(i, 2p), a(i, 2p + 1)) is broadcast to all 16 lanes.
//!
//! ```text
//!  VNNI pair row p of B panel j (one 64-byte zmm load):
//!    lane c (0..16) = ( b(2p, 16j + c), b(2p+1, 16j + c) )     two bf16 = 32 bits
//!  A row i, pair p (one 32-bit broadcast):
//!    every lane     = ( a(i, 2p), a(i, 2p+1) )
//!  vdpbf16ps acc, a, b:  acc lane c += a(i,2p) b(2p,c) + a(i,2p+1) b(2p+1,c)   (f32)
//!
//!  registers of one 8 x 48 micro-tile (NB = 3 panels):
//!                 panel j     panel j+1   panel j+2        b0..b2: 3 zmm of B (pair row p)
//!    row 0    [ acc00     | acc01     | acc02     ]        a:      1 zmm (broadcast pair)
//!    ...                                                   acc:    24 zmm of f32 sums
//!    row 7    [ acc70     | acc71     | acc72     ]        = 28 of the 32 zmm registers
//!
//!  loop order:
//!    acc = C tile (loaded: it holds the previous k blocks' sums; zeros for the first block)
//!    for p in pairs:                         NB loads of B (contiguous, 64 B apart per p)
//!      for i in 0..8:                        1 broadcast of A (row i, lda apart)
//!        for j in 0..NB: acc[i][j] = vdpbf16ps(acc[i][j], a, b[j])
//!    C tile = acc (stored)
//! ```
//!
//! Each step issues 24 `vdpbf16ps` (768 multiply-adds) for 3 loads and 8 broadcasts, so the
//! FMA ports, not memory, bound it. Narrower tiles (nb 1 or 2, the last panels of C) are
//! separate monomorphised copies (`tile::<N>`).

use super::pack::PANEL;
use super::MicroTile;
use std::arch::x86_64::*;

pub const MR: usize = 8;
/// Panels per full micro-tile.
pub const NB: usize = 3;

/// C[8, nb * 16] += A[8, 2 kpairs] B[2 kpairs, nb * 16], nb in 1..=3.
///
/// # Safety
/// The CPU has avx512f and avx512bf16; the addresses of `t` as [`MicroTile`] describes.
pub unsafe fn kernel(t: MicroTile) {
    // SAFETY: forwarded contract.
    unsafe {
        match t.nb {
            1 => tile::<1>(t),
            2 => tile::<2>(t),
            _ => tile::<3>(t),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const N: usize>(t: MicroTile) {
    let MicroTile {
        a,
        lda,
        b,
        panel_stride,
        kpairs,
        c,
        ldc,
        fresh,
        ..
    } = t;
    // SAFETY: the caller's contract: every address below is inside its buffer.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); N]; MR];
        if !fresh {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(c.add(i * ldc + j * PANEL));
                }
            }
        }
        for p in 0..kpairs {
            let mut bv = [_mm512_setzero_si512(); N];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(b.add(j * panel_stride + p * 2 * PANEL) as *const _);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let pair = (a.add(i * lda + 2 * p) as *const i32).read_unaligned();
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                for (v, bj) in row.iter_mut().zip(&bv) {
                    *v = _mm512_dpbf16_ps(*v, av, std::mem::transmute::<__m512i, __m512bh>(*bj));
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(i * ldc + j * PANEL), *v);
            }
        }
    }
}
