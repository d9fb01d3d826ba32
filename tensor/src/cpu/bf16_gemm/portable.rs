//! The portable micro-kernel: plain Rust on the packed operands, for CPUs with neither AMX nor
//! AVX512-BF16. Each product of two bf16 values is exact in f32, so it computes what the SIMD
//! kernels compute up to the order of the f32 additions.
//!
//! Computes C[MR, nb * 16] += A[MR, 2 kpairs] B[2 kpairs, nb * 16] (C row stride `ldc`).

use super::pack::PANEL;
use super::MicroTile;
use half::bf16;

pub const MR: usize = 8;
/// Panels per micro-tile.
pub const NB: usize = 2;

/// # Safety
/// Every address of `t` is inside its buffer as [`MicroTile`] describes.
pub unsafe fn kernel(t: MicroTile) {
    let MicroTile {
        a,
        lda,
        b,
        panel_stride,
        kpairs,
        c,
        ldc,
        nb,
        fresh,
    } = t;
    let f = |bits: u16| bf16::from_bits(bits).to_f32();
    for i in 0..MR {
        for j in 0..nb * PANEL {
            let (panel, col) = (j / PANEL, j % PANEL);
            // SAFETY: in bounds by the contract above.
            unsafe {
                let bj = b.add(panel * panel_stride + 2 * col);
                let ai = a.add(i * lda);
                let mut s = if fresh { 0.0 } else { *c.add(i * ldc + j) };
                for p in 0..kpairs {
                    s += f(*ai.add(2 * p)) * f(*bj.add(p * 2 * PANEL));
                    s += f(*ai.add(2 * p + 1)) * f(*bj.add(p * 2 * PANEL + 1));
                }
                *c.add(i * ldc + j) = s;
            }
        }
    }
}
