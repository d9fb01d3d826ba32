//! The AMX micro-kernel: Intel's tile unit (Sapphire Rapids and later) holds eight 2-D registers
//! `tmm0..tmm7` of up to 16 rows x 64 bytes, and `tdpbf16ps` multiplies a bf16 A tile by a VNNI
//! bf16 B tile into an f32 C tile in one instruction (16 x 16 x 32 multiply-adds). Stable Rust
//! has no AMX intrinsics, so the tile instructions are written in `asm!`; the Rust code never
//! uses the tile registers, so they keep their values between the `asm!` blocks of one thread.
//!
//! ```text
//!   tile config (every tile 16 rows x 64 bytes)       one 32 x 32 micro-tile of C:
//!     tmm0..3  C, f32 [16, 16] each                          B panel j    B panel j+1
//!     tmm4,5   A, bf16 [16 rows, 32 k] (16 pairs)            tmm6 [16p,16c,2] tmm7
//!     tmm6,7   B, bf16 [16 pair rows, 16 cols x 2]    A rows  +-----------+-----------+
//!                                                     0..16   | tmm0      | tmm1      |
//!   tdpbf16ps C, A, B:                                tmm4    |           |           |
//!     C[i][c] += sum_p A[i][2p] B[p][2c]                      +-----------+-----------+
//!                    + A[i][2p+1] B[p][2c+1]          16..32  | tmm2      | tmm3      |
//!                                                     tmm5    |           |           |
//!                                                             +-----------+-----------+
//!   loop over k in steps of 32 (16 pairs):
//!     tileloadd tmm4/tmm5 <- A rows 0..16 / 16..32, 64 bytes at row stride lda
//!     tileloadd tmm6/tmm7 <- panels j, j+1: 16 pair rows of 64 bytes, contiguous (1 KiB)
//!     tdpbf16ps x 4: tmm0 += tmm4 tmm6, tmm1 += tmm4 tmm7, tmm2 += tmm5 tmm6, tmm3 += tmm5 tmm7
//!   C is loaded from (tilezero for the first k block) and stored back to the task's f32
//!   accumulator (row stride ldc).
//!
//! VNNI packing (`pack.rs`): a B tile is 16 k pairs x 16 columns of one panel, each row 64 bytes:
//!
//!   B [k, n] (k pairs down, columns across)        B tile (tmm6), row p = pair p:
//!        col c                                       byte 0        4               60
//!   2p   b(2p, c)    \  one pair: the two          [ b(2p,0) b(2p+1,0) | b(2p,1) b(2p+1,1) |
//!   2p+1 b(2p+1, c)  /  bf16 of column c,             ... | b(2p,15) b(2p+1,15) ]
//!                       side by side
//!   A tile (tmm4), row i: a(i, 32s) a(i, 32s+1) ... a(i, 32s+31) = pairs 0..16 of k step s
//!   so tdpbf16ps pairs A's halves (2p, 2p+1) with the same halves of B's column c.
//!
//! Around the kernel (`mod.rs`): a task owns a [64, 192] block of C in an f32 accumulator;
//! for each k block of 768 (24 k steps), for each 32-column pair of panels, for each 32-row
//! half: one call of this kernel. The tiles hold C only during one call, so there are no
//! tile-register spills and every k block re-reads the accumulator from L1/L2.
//! ```
//!
//! Linux hands out the tile data state only on request: `arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)` once per process ([`request_permission`]); without it the first tile
//! instruction faults. The caller (`mod.rs`) checks this kernel against the portable one once
//! before using it.

use super::MicroTile;
use std::arch::asm;
use std::arch::x86_64::__cpuid_count;

pub const MR: usize = 32;
/// Panels per micro-tile (always full: `PackedB` stores an even number of panels).
pub const NB: usize = 2;

/// The CPU reports AMX-TILE and AMX-BF16 and the OS enabled the tile state in XCR0.
pub fn cpu_has_amx() -> bool {
    let (leaf7, leaf1) = (__cpuid_count(7, 0), __cpuid_count(1, 0));
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let osxsave = leaf1.ecx & (1 << 27) != 0;
    if !(amx_tile && amx_bf16 && osxsave) {
        return false;
    }
    // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA).
    let (lo, _hi): (u32, u32);
    // SAFETY: xgetbv with ecx = 0 is valid when OSXSAVE is set (checked above).
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack));
    }
    lo & (0b11 << 17) == 0b11 << 17
}

/// Asks Linux for the tile data state; true when granted (or already held).
pub fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    // SAFETY: arch_prctl only changes this process's permitted xsave features.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

/// Palette 1, tiles 0..7 each 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_16x64() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // colsb
            c[48 + t] = 16; // rows
        }
        TileConfig(c)
    }
}

/// Loads the tile configuration on this thread (before the kernels of one task).
///
/// # Safety
/// The CPU has AMX and the permission was granted.
pub unsafe fn configure() {
    let cfg = TileConfig::all_16x64();
    // SAFETY: a valid palette-1 configuration (caller: AMX available).
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    }
}

/// C[32, 32] += A[32, 2 kpairs] B[2 kpairs, 32]; kpairs a positive multiple of 16.
///
/// # Safety
/// [`configure`] ran on this thread; `a` addresses 32 rows of `lda` u16s, `b` two panels
/// `panel_stride` apart, `c` 32 rows of `ldc` f32 with 32 each.
pub unsafe fn kernel(t: MicroTile) {
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
    debug_assert!(kpairs > 0 && kpairs.is_multiple_of(16));
    let (lda_bytes, ldc_bytes) = (lda * 2, ldc * 4);
    // SAFETY: the caller's contract; every tile row read or written is inside its buffer.
    unsafe {
        let a_lo = a;
        let a_hi = a.add(16 * lda);
        let b0 = b;
        let b1 = b.add(panel_stride);
        let c_lo = c;
        let c_hi = c.add(16 * ldc);
        // The tile registers keep their values from one asm! block to the next (module doc).
        if fresh {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nomem, nostack),
            );
        } else {
            asm!(
                "tileloadd tmm0, [{c_lo} + {ldc}*1]",
                "tileloadd tmm1, [{c_lo} + {ldc}*1 + 64]",
                "tileloadd tmm2, [{c_hi} + {ldc}*1]",
                "tileloadd tmm3, [{c_hi} + {ldc}*1 + 64]",
                c_lo = in(reg) c_lo,
                c_hi = in(reg) c_hi,
                ldc = in(reg) ldc_bytes,
                options(nostack, readonly),
            );
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a_lo} + {lda}*1]",
            "tileloadd tmm5, [{a_hi} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a_lo}, 64",
            "add {a_hi}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "sub {steps}, 1",
            "jnz 2b",
            "tilestored [{c_lo} + {ldc}*1], tmm0",
            "tilestored [{c_lo} + {ldc}*1 + 64], tmm1",
            "tilestored [{c_hi} + {ldc}*1], tmm2",
            "tilestored [{c_hi} + {ldc}*1 + 64], tmm3",
            a_lo = inout(reg) a_lo => _,
            a_hi = inout(reg) a_hi => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            steps = inout(reg) kpairs / 16 => _,
            c_lo = in(reg) c_lo,
            c_hi = in(reg) c_hi,
            lda = in(reg) lda_bytes,
            ldc = in(reg) ldc_bytes,
            s64 = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// What [`kernel`]'s instructions compute, one by one, in plain Rust over eight emulated tile
/// registers: the same addresses (A rows `lda` apart, 64 bytes per k step; B panels
/// `panel_stride` apart, 1 KiB per k step; C rows `ldc` apart, the second 16 columns 64 bytes
/// on), the same `tdpbf16ps` order (per pair: C += a(2p) b(2p, c), then += a(2p+1) b(2p+1, c)).
/// CPUs without AMX cannot run the `asm!`, so the tests run the whole GEMM driver through this
/// emulation to check the tile order, the addressing and the driver's promises to the kernel
/// (32 rows, two panels, kpairs a multiple of 16).
///
/// # Safety
/// As [`kernel`] (less the tile configuration).
#[cfg(test)]
pub unsafe fn emulate(t: MicroTile) {
    use half::bf16;
    let f = |bits: u16| bf16::from_bits(bits).to_f32();
    assert!(t.kpairs > 0 && t.kpairs.is_multiple_of(16));
    // tmm0..3: C [16 rows][16 f32]; tmm4,5: A [16 rows][32 bf16]; tmm6,7: B [16 pair rows][32].
    let mut c = [[[0f32; 16]; 16]; 4];
    let (mut a_t, mut b_t) = ([[[0u16; 32]; 16]; 2], [[[0u16; 32]; 16]; 2]);
    // SAFETY: the caller's contract: every row read or written is inside its buffer.
    unsafe {
        let c_rows = |tile: usize, r: usize| t.c.add((tile / 2 * 16 + r) * t.ldc + tile % 2 * 16);
        for (tile, ct) in c.iter_mut().enumerate() {
            for (r, row) in ct.iter_mut().enumerate() {
                if !t.fresh {
                    std::ptr::copy_nonoverlapping(c_rows(tile, r), row.as_mut_ptr(), 16);
                }
            }
        }
        for step in 0..t.kpairs / 16 {
            for (h, at) in a_t.iter_mut().enumerate() {
                for (r, row) in at.iter_mut().enumerate() {
                    let src = t.a.add((h * 16 + r) * t.lda + step * 32);
                    std::ptr::copy_nonoverlapping(src, row.as_mut_ptr(), 32);
                }
            }
            for (j, bt) in b_t.iter_mut().enumerate() {
                for (p, row) in bt.iter_mut().enumerate() {
                    let src = t.b.add(j * t.panel_stride + step * 512 + p * 32);
                    std::ptr::copy_nonoverlapping(src, row.as_mut_ptr(), 32);
                }
            }
            // tdpbf16ps tmm(2h + j), tmm(4 + h), tmm(6 + j).
            for (tile, ct) in c.iter_mut().enumerate() {
                let (at, bt) = (&a_t[tile / 2], &b_t[tile % 2]);
                for (row, arow) in ct.iter_mut().zip(at) {
                    for (col, v) in row.iter_mut().enumerate() {
                        for (p, brow) in bt.iter().enumerate() {
                            *v += f(arow[2 * p]) * f(brow[2 * col]);
                            *v += f(arow[2 * p + 1]) * f(brow[2 * col + 1]);
                        }
                    }
                }
            }
        }
        for (tile, ct) in c.iter().enumerate() {
            for (r, row) in ct.iter().enumerate() {
                std::ptr::copy_nonoverlapping(row.as_ptr(), c_rows(tile, r), 16);
            }
        }
    }
}
