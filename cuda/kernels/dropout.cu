// dropout.cu: inverted dropout and the random fills on the Philox4x32-10 stream of
// tensor/src/rng.rs, element for element the CPU's numbers (tensor/src/ops/dropout.rs, random.rs).
//
// Stream: a draw of n elements at counter block `offset` under `seed` uses blocks offset,
// offset+1, ...; uniform element i is word i % 4 of block offset + i / 4 mapped to [0, 1) with 24
// bits; normal element i uses words 0,1 (i even) or 2,3 (i odd) of block offset + i / 2
// (Box-Muller, cosine branch, in f64). The host reserves the blocks (Rng::reserve) and passes
// (seed, offset).
//
// Computes
// - philox_mask: out[i] = uniform_i < p ? below : 1 - below (bernoulli: below = 1; dropout's keep
//   mask: below = 0), p compared in f32;
// - dropout_fwd_<t>: keep[i] = uniform_i >= p; y = keep ? x * scale : 0 (an exact 0 whatever x
//   holds), scale = 1 / (1 - p) rounded to f32 by the host (0 for p = 1);
//   With a residual (a non-null pointer), y = (keep ? x * scale : 0) + residual, the dropped
//   value rounded to t before the add, as the CPU's dropout followed by add rounds (the residual
//   branch of BERT's output layers in one pass);
// - dropout_add_<t>_<r>: the same with a residual (and output) of another type r: under autocast
//   a bf16/f16 branch x added into the f32 hidden state, y = f32(round_t(keep ? x * scale : 0)) +
//   residual in f32 (torch's type promotion of a half + f32 add, with no separate cast);
// - dropout_apply_<t>: y = keep ? x * scale : 0 for a given mask (dropout's backward);
// - dropout_apply_<g>_<t>: the same from a gradient of type g (f32) into x's type t (half): the
//   backward of dropout_add_<t>_<r> for the branch, the product in f32 rounded once to t;
// - uniform_<t>: lo + (hi - lo) u in f64, rounded once to t; normal_<t>: mean + std z in f64.
//
// Layout: every buffer contiguous, n elements (the logical row-major order of the draw).
//
// Vector loads: dropout_fwd / dropout_add move each whole Philox block as packs of four elements
// when every pointer is 16-byte aligned; dropout_apply moves 16-byte packs of x (contig_packs).
//
// Launch: 1-D grid-stride loops, 256 threads per block; the mask, dropout and uniform kernels
// give each thread one Philox block (four elements), normal one block per two elements.

#include "common.cuh"

extern "C" __global__ void philox_mask(u8* out, i64 n, u64 seed, u64 offset, float p, u32 below) {
    const i64 blocks = (n + 3) / 4;
    for (i64 q = global_thread(); q < blocks; q += global_threads()) {
        const uint4 w = philox_block(seed, offset + (u64)q);
        const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const i64 i = 4 * q + j;
            if (i < n) out[i] = (u8)(word_to_unit(words[j]) < p ? below : 1u - below);
        }
    }
}

// One element of dropout (plus an optional residual): returns y, sets k.
template <typename T, typename R>
__device__ __forceinline__ R dropout_one(T x, const R* residual, i64 i, u32 word, float p, float scale, u8* k) {
    const bool kept = !(word_to_unit(word) < p);
    *k = kept ? 1 : 0;
    const T d = from_f32<T>(kept ? __fmul_rn(to_f32(x), scale) : 0.0f);
    return residual ? from_f32<R>(__fadd_rn(to_f32(d), to_f32(residual[i]))) : from_f32<R>(to_f32(d));
}

// `residual` may be null (plain dropout, R = T). The output has the residual's type R. A thread's
// Philox block covers four consecutive elements: when every pointer is 16-byte aligned, the
// whole blocks move as packs of four (x, residual and y in one 8- or 16-byte access each, the
// four keep bytes in one 4-byte store); the last n % 4 elements, and misaligned views, go one by
// one. The values are the same either way.
template <typename T, typename R>
__device__ void dropout_fwd(const T* x, const R* residual, R* y, u8* keep, i64 n, u64 seed, u64 offset, float p,
                            float scale) {
    const i64 blocks = (n + 3) / 4;
    const bool packs = aligned16(x) && aligned16(y) && aligned16(keep) && (!residual || aligned16(residual));
    for (i64 q = global_thread(); q < blocks; q += global_threads()) {
        const uint4 w = philox_block(seed, offset + (u64)q);
        const u32 words[4] = {w.x, w.y, w.z, w.w};
        if (packs && 4 * q + 4 <= n) {
            const VecPack<T, 4> xs = load_pack<4>(x, 4 * q);
            VecPack<R, 4> ys;
            VecPack<u8, 4> ks;
#pragma unroll
            for (int j = 0; j < 4; ++j) ys.v[j] = dropout_one(xs.v[j], residual, 4 * q + j, words[j], p, scale, &ks.v[j]);
            store_pack<4>(y, 4 * q, ys);
            store_pack<4>(keep, 4 * q, ks);
            continue;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const i64 i = 4 * q + j;
            if (i < n) y[i] = dropout_one(x[i], residual, i, words[j], p, scale, &keep[i]);
        }
    }
}

// One pack of N elements at off[0] (contig_packs): y = keep ? x * scale : 0.
template <typename T, typename O> struct ApplyBody {
    const T* x;
    const u8* keep;
    O* y;
    float scale;
    template <int N> __device__ __forceinline__ void run(const i64 (&off)[3]) const {
        const VecPack<T, N> xs = load_pack<N>(x, off[0]);
        const VecPack<u8, N> ks = load_pack<N>(keep, off[0]);
        VecPack<O, N> ys;
#pragma unroll
        for (int j = 0; j < N; ++j) ys.v[j] = from_f32<O>(ks.v[j] != 0 ? __fmul_rn(to_f32(xs.v[j]), scale) : 0.0f);
        store_pack<N>(y, off[0], ys);
    }
};

// y has type O (x's type T, or the half type of dropout_add_<t>_<r>'s branch). Packs of
// 16 / sizeof(T) elements when every pointer is 16-byte aligned (common.cuh contig_packs).
template <typename T, typename O>
__device__ void dropout_apply(const T* x, const u8* keep, O* y, i64 n, float scale) {
    const int packs = aligned16(x) && aligned16(keep) && aligned16(y);
    contig_packs<16 / (int)sizeof(T)>(n, packs, ApplyBody<T, O>{x, keep, y, scale});
}

template <typename T>
__device__ void uniform_fill(T* out, i64 n, u64 seed, u64 offset, double lo, double hi) {
    const i64 blocks = (n + 3) / 4;
    for (i64 q = global_thread(); q < blocks; q += global_threads()) {
        const uint4 w = philox_block(seed, offset + (u64)q);
        const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const i64 i = 4 * q + j;
            if (i < n) out[i] = from_f64<T>(lo + (hi - lo) * (double)word_to_unit(words[j]));
        }
    }
}

template <typename T>
__device__ void normal_fill(T* out, i64 n, u64 seed, u64 offset, double mean, double std) {
    const i64 blocks = (n + 1) / 2;
    for (i64 q = global_thread(); q < blocks; q += global_threads()) {
        const uint4 w = philox_block(seed, offset + (u64)q);
        const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const i64 i = 2 * q + j;
            if (i < n) {
                // u1 in (0, 1] so the log is finite; u2 in [0, 1).
                const double u1 = ((double)words[2 * j] + 1.0) / 4294967296.0;
                const double u2 = (double)words[2 * j + 1] / 4294967296.0;
                const double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
                out[i] = from_f64<T>(mean + std * z);
            }
        }
    }
}

#define DROPOUT_ENTRIES(T, NAME)                                                                    \
    extern "C" __global__ void dropout_fwd_##NAME(const T* x, const T* residual, T* y, u8* keep,    \
                                                  i64 n, u64 seed, u64 offset, float p,            \
                                                  float scale) {                                   \
        dropout_fwd<T, T>(x, residual, y, keep, n, seed, offset, p, scale);                           \
    }                                                                                              \
    extern "C" __global__ void dropout_apply_##NAME(const T* x, const u8* keep, T* y, i64 n,       \
                                                    float scale) {                                 \
        dropout_apply<T, T>(x, keep, y, n, scale);                                                    \
    }                                                                                              \
    extern "C" __global__ void uniform_##NAME(T* out, i64 n, u64 seed, u64 offset, double lo,      \
                                              double hi) {                                         \
        uniform_fill<T>(out, n, seed, offset, lo, hi);                                             \
    }                                                                                              \
    extern "C" __global__ void normal_##NAME(T* out, i64 n, u64 seed, u64 offset, double mean,     \
                                             double std) {                                         \
        normal_fill<T>(out, n, seed, offset, mean, std);                                           \
    }

DROPOUT_ENTRIES(float, f32)
DROPOUT_ENTRIES(f16, f16)
DROPOUT_ENTRIES(bf16, bf16)

// Mixed types: a half branch T added into a residual R (f32), and its backward from an R gradient.
#define DROPOUT_MIXED_ENTRIES(T, TN, R, RN)                                                         \
    extern "C" __global__ void dropout_add_##TN##_##RN(const T* x, const R* residual, R* y,         \
                                                       u8* keep, i64 n, u64 seed, u64 offset,      \
                                                       float p, float scale) {                     \
        dropout_fwd<T, R>(x, residual, y, keep, n, seed, offset, p, scale);                        \
    }                                                                                              \
    extern "C" __global__ void dropout_apply_##RN##_##TN(const R* dy, const u8* keep, T* dx, i64 n, \
                                                         float scale) {                            \
        dropout_apply<R, T>(dy, keep, dx, n, scale);                                               \
    }

DROPOUT_MIXED_ENTRIES(f16, f16, float, f32)
DROPOUT_MIXED_ENTRIES(bf16, bf16, float, f32)
