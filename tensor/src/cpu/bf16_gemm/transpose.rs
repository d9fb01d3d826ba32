//! Packing A from a transposed f32 view (x^T in a weight gradient, q^T and probs^T in attention's
//! backward) through 16 x 16 register transposes, AVX-512. Packed A is row-major bf16 (`pack.rs`),
//! but a transposed view has A's columns along memory, so each packed row gathers one value from
//! every column: element by element that costs more than the product for attention's [48, 48]
//! heads. Here a block of 16 rows x 32 columns goes through registers instead:
//!
//! ```text
//!   column l of the block = 16 rows along memory (one zmm of f32)
//!   for pair q in 0..16:   P_q lane r = bf16(a(r, 2q)) | bf16(a(r, 2q + 1)) << 16    (u32)
//!   transpose P (16 x 16 u32: unpack 32, unpack 64, two 128-bit lane shuffles)
//!   T_r lane q = pair q of row r  ->  one 64-byte store: 32 bf16 of packed row r
//! ```
//!
//! B panels from a view with B's columns along memory (W^T in a training forward, k^T in
//! attention) take the same transpose: a panel column's 32 values round and narrow to 16 pairs
//! (one zmm of u32), 16 columns transpose to 16 pair rows of 64 bytes.
//!
//! The rounding is `pack::round_bf16` lane by lane (nearest even, NaN kept quiet), so the bytes
//! equal the scalar packing's.

use super::pack::Strided;
use std::arch::x86_64::*;

/// Rows of the packed block per transpose.
const ROWS: usize = 16;
/// Columns (k values) per transpose: 16 pairs.
const COLS: usize = 32;

/// Packs the part of rows `i0 .. i0 + rows` (columns `0 .. k`) of A that whole 16-row blocks
/// and whole pairs of columns cover, from a transposed view (`src.rs == 1`), into `dst` (row r
/// at `dst[r * kp ..]`). Returns (rows, columns) done: a multiple of 16 and k rounded down to
/// even, (0, 0) where the CPU lacks AVX-512.
pub(super) fn pack_blocks(
    src: Strided<f32>,
    i0: usize,
    rows: usize,
    k: usize,
    kp: usize,
    dst: &mut [u16],
) -> (usize, usize) {
    debug_assert_eq!(src.rs, 1);
    // Every whole pair: the last block may hold fewer than 16.
    let (rows_done, k_done) = (rows / ROWS * ROWS, k / 2 * 2);
    if crate::cpu::simd::simd_level() < 2 || rows_done == 0 || k_done == 0 {
        return (0, 0);
    }
    // The last element any block reads, and the last it writes, are inside the buffers.
    let last_read = src.offset + (k_done - 1) * src.cs + i0 + rows_done - 1;
    assert!(last_read < src.data.len() && (rows_done - 1) * kp + k_done <= dst.len());
    for r0 in (0..rows_done).step_by(ROWS) {
        for l0 in (0..k_done).step_by(COLS) {
            // SAFETY: avx512f is present (simd level 2); the block's reads
            // src.offset + l * cs + i0 + r (l < k_done, r < rows_done) and writes
            // (r0 + r) * kp + l0 .. + 32 are inside the buffers (asserted above).
            unsafe {
                block(
                    src.data.as_ptr().add(src.offset + l0 * src.cs + i0 + r0),
                    src.cs,
                    dst.as_mut_ptr().add(r0 * kp + l0),
                    kp,
                    (COLS / 2).min((k_done - l0) / 2),
                )
            };
        }
    }
    (rows_done, k_done)
}

/// Packs the k values of every column of one full B panel (16 columns from `j0`) from a view
/// with columns along memory (`src.rs == 1`: W^T, k^T) into `panel` (`pack.rs` layout): per 32
/// values, 16 columns of 16 pairs, transposed to 16 pair rows (the last block masked, an odd
/// k's last pair completed with a zero). Returns the k values done: k, or 0 where the CPU lacks
/// AVX-512.
pub(super) fn pack_panel_blocks(
    src: Strided<f32>,
    j0: usize,
    k: usize,
    panel: &mut [u16],
) -> usize {
    debug_assert_eq!(src.rs, 1);
    if crate::cpu::simd::simd_level() < 2 || k == 0 {
        return 0;
    }
    let last_read = src.offset + (j0 + ROWS - 1) * src.cs + k - 1;
    assert!(last_read < src.data.len() && k.div_ceil(2) * 2 * ROWS <= panel.len());
    for l0 in (0..k).step_by(COLS) {
        // SAFETY: avx512f is present (simd level 2); the reads src.offset + (j0 + c) * cs + l
        // (c < 16, l < k_done) and the writes l0 / 2 * 32 .. + 16 * 32 are inside the buffers
        // (asserted above).
        unsafe {
            panel_block(
                src.data.as_ptr().add(src.offset + j0 * src.cs + l0),
                src.cs,
                panel.as_mut_ptr().add(l0 / 2 * 2 * ROWS),
                COLS.min(k - l0),
            )
        };
    }
    k
}

/// `values` (<= 32) values of 16 columns (column c at `src + c * cs`, along memory) -> the
/// ceil(values / 2) pair rows of a B panel at `dst` (pair row q at `dst + 32 q`: column c's
/// values 2q and 2q + 1, zero past `values`).
///
/// # Safety
/// avx512f; every read and write above is inside its buffer.
#[target_feature(enable = "avx512f")]
unsafe fn panel_block(src: *const f32, cs: usize, dst: *mut u16, values: usize) {
    let mask = |n: usize| ((1u32 << n.min(16)) - 1) as u16;
    let (lo_lanes, hi_lanes) = (mask(values), mask(values.saturating_sub(16)));
    let mut v = [_mm512_setzero_si512(); 16];
    for (c, x) in v.iter_mut().enumerate() {
        // SAFETY: the caller's contract (a masked load reads only its lanes).
        let (lo, hi) = unsafe {
            (
                _mm512_maskz_loadu_epi32(lo_lanes, src.add(c * cs) as *const _),
                _mm512_maskz_loadu_epi32(hi_lanes, src.add(c * cs + 16) as *const _),
            )
        };
        // 32 bf16 in order = 16 pairs (u32 lanes), the even value in the low half.
        let (lo, hi) = (
            _mm512_cvtepi32_epi16(round16(lo)),
            _mm512_cvtepi32_epi16(round16(hi)),
        );
        *x = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    let t = transpose(v);
    for (q, row) in t.iter().enumerate().take(values.div_ceil(2)) {
        // SAFETY: the caller's contract.
        unsafe { _mm512_storeu_si512(dst.add(q * 2 * ROWS) as *mut _, *row) };
    }
}

/// 16 lanes of f32 bits -> their bf16 bits in the low halves (`pack::round_bf16`).
#[target_feature(enable = "avx512f")]
fn round16(x: __m512i) -> __m512i {
    let hi = _mm512_srli_epi32(x, 16);
    let lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    let bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb);
    let rounded = _mm512_srli_epi32(_mm512_add_epi32(x, bias), 16);
    let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7fff_ffff));
    let nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
    let quiet = _mm512_or_si512(hi, _mm512_set1_epi32(0x0040));
    _mm512_mask_mov_epi32(rounded, nan, quiet)
}

/// One block of 16 rows x `pairs` (<= 16) pairs of columns: column l at `src + l * cs` (16 rows
/// along memory), packed row r at `dst + r * kp` (2 `pairs` u16).
///
/// # Safety
/// avx512f; every read and write above is inside its buffer.
#[target_feature(enable = "avx512f")]
unsafe fn block(src: *const f32, cs: usize, dst: *mut u16, kp: usize, pairs: usize) {
    let mut p = [_mm512_setzero_si512(); 16];
    for (q, v) in p.iter_mut().enumerate().take(pairs) {
        // SAFETY: the caller's contract.
        let (even, odd) = unsafe {
            (
                _mm512_loadu_si512(src.add(2 * q * cs) as *const _),
                _mm512_loadu_si512(src.add((2 * q + 1) * cs) as *const _),
            )
        };
        *v = _mm512_or_si512(round16(even), _mm512_slli_epi32(round16(odd), 16));
    }
    let t = transpose(p);
    let lanes = (1u32 << pairs) - 1;
    for (r, v) in t.iter().enumerate() {
        // SAFETY: the caller's contract (a masked store writes only its lanes).
        unsafe { _mm512_mask_storeu_epi32(dst.add(r * kp) as *mut _, lanes as u16, *v) };
    }
}

/// The 16 x 16 transpose of 32-bit lanes: `out[r]` lane q = `p[q]` lane r.
#[target_feature(enable = "avx512f")]
fn transpose(p: [__m512i; 16]) -> [__m512i; 16] {
    // Stage 1: interleave 32-bit lanes of row pairs (0, 1), (2, 3), ...
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(p[2 * i], p[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(p[2 * i], p[2 * i + 1]);
    }
    // Stage 2: interleave 64-bit lanes within groups of four rows.
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let b = 4 * g;
        u[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
        u[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
        u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
    }
    // Stages 3 and 4: 128-bit lanes across groups four apart, then eight apart.
    let mut v = [_mm512_setzero_si512(); 16];
    for h in 0..2 {
        for j in 0..4 {
            let (a, b) = (u[8 * h + j], u[8 * h + j + 4]);
            v[8 * h + j] = _mm512_shuffle_i32x4(a, b, 0x88);
            v[8 * h + j + 4] = _mm512_shuffle_i32x4(a, b, 0xdd);
        }
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..8 {
        out[j] = _mm512_shuffle_i32x4(v[j], v[j + 8], 0x88);
        out[j + 8] = _mm512_shuffle_i32x4(v[j], v[j + 8], 0xdd);
    }
    out
}
