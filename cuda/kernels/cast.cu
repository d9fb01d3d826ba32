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
// Contiguous input with both pointers 16-byte aligned moves in packs of 16 / sizeof(src) elements:
// one 16-byte load, and the converted pack stored whole (16-byte stores, or one smaller aligned
// store when the destination type is narrower); the last n % pack elements go one by one.
//
// Launch: 1-D grid-stride loop, 256 threads per block, any grid size.

#include "common.cuh"

// N elements of T stored together, aligned to their size (at most 16 bytes).
template <typename T, int N>
struct __align__((N * sizeof(T)) < 16 ? (N * sizeof(T)) : 16) CastPack {
    T v[N];
};

template <typename S, typename D>
__device__ void cast_kernel(Walk w, const S* x, D* out, i64 n, int contiguous) {
    constexpr int PACK = 16 / (int)sizeof(S);
    if (contiguous && ((u64)(size_t)x & 15u) == 0 && ((u64)(size_t)out & 15u) == 0) {
        const i64 packs = n / PACK;
        const CastPack<S, PACK>* xp = reinterpret_cast<const CastPack<S, PACK>*>(x);
        CastPack<D, PACK>* op = reinterpret_cast<CastPack<D, PACK>*>(out);
        for (i64 i = global_thread(); i < packs; i += global_threads()) {
            const CastPack<S, PACK> a = xp[i];
            CastPack<D, PACK> b;
#pragma unroll
            for (int c = 0; c < PACK; ++c) b.v[c] = from_f64<D>(to_f64(a.v[c]));
            op[i] = b;
        }
        for (i64 i = packs * PACK + global_thread(); i < n; i += global_threads()) out[i] = from_f64<D>(to_f64(x[i]));
        return;
    }
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
