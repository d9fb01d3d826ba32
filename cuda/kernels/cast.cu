// cast.cu: dtype conversion of a (possibly strided) tensor into a fresh contiguous buffer, as
// tensor/src/ops/cast.rs: every value goes through f64, `dst = from_f64(src as f64)`.
//
// Computes, for each pair of types among f32, f64, f16, bf16, i64, u8 (common.cuh's to_f64 and
// from_f64):
// - to a float type: round to nearest even (f64 -> f16/bf16 exactly once: f64 is first rounded to
//   f32 with round-to-odd, which makes the second rounding exact);
// - to i64 / u8: truncation toward zero, saturating at the type's range, NaN -> 0 (Rust `as`).
//
// Layout: `cast_<src>_<dst>(walk, x, out, n, contiguous)`: when `contiguous` is set the input is
// read as a flat array (the walk is ignored), otherwise through the walk (one operand). The output
// is contiguous row-major. (Same-dtype entries exist; elementwise.cu's copy_w* copies by width.)
//
// Launch: 1-D grid-stride loop, 256 threads per block, any grid size.

#include "common.cuh"

template <typename S, typename D>
__device__ void cast_kernel(Walk w, const S* x, D* out, i64 n, int contiguous) {
    for (i64 i = global_thread(); i < n; i += global_threads()) {
        i64 off[1];
        if (contiguous) {
            off[0] = i;
        } else {
            walk_offsets<1>(w, i, off);
        }
        out[i] = from_f64<D>(to_f64(x[off[0]]));
    }
}

#define CAST(S, SN, D, DN)                                                                         \
    extern "C" __global__ void cast_##SN##_##DN(Walk w, const S* x, D* out, i64 n, int contiguous) { \
        cast_kernel<S, D>(w, x, out, n, contiguous);                                               \
    }

#define CAST_FROM(S, SN)                                                                           \
    CAST(S, SN, float, f32)                                                                        \
    CAST(S, SN, double, f64)                                                                       \
    CAST(S, SN, f16, f16)                                                                          \
    CAST(S, SN, bf16, bf16)                                                                        \
    CAST(S, SN, i64, i64)                                                                          \
    CAST(S, SN, u8, u8)

CAST_FROM(float, f32)
CAST_FROM(double, f64)
CAST_FROM(f16, f16)
CAST_FROM(bf16, bf16)
CAST_FROM(i64, i64)
CAST_FROM(u8, u8)
