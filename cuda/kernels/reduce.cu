// reduce.cu: reductions over one axis of a contiguous tensor viewed as [outer, r, inner], as
// tensor/src/ops/reduce.rs (several reduced dims are first made adjacent by the caller).
//
// Computes, for every (o, j), over k in 0..r of x[o, k, j]:
// - sums: Σ x (OP_SUM) or Σ x² (OP_SUMSQ), accumulated in f64 whatever the dtype and rounded once
//   to the output dtype after dividing by `divisor` (1 for a sum, r for a mean), as the CPU does;
// - best: max / min value or the i64 index of the first max / min (OP_MAX, OP_MIN, OP_ARGMAX,
//   OP_ARGMIN); NaN counts as both the largest and the smallest value (it wins), equal values keep
//   the lowest index.
// - integer sums: Σ x of i64 or u8 input into i64, wrapping as the CPU (sum_int_<in>).
// Results are deterministic: each block combines in a fixed tree order, split partials in order
// (integer sums are exact, so their order does not matter at all).
//
// Entries: sum_{rows,cols,cols_packed}_<in>_<out> (out = in, or f32 for f16/bf16 in),
// sum_{rows,cols}_partials_<out>, best_{rows,cols,cols_packed}_<in>,
// best_{rows,cols}_partials_<in>, sum_int_<in>.
//
// Layout: x contiguous; outputs contiguous [outer, inner].
//
// Vector loads: `sum_rows`, `best_rows` and `sum_int` (inner == 1) read each row chunk as a
// scalar head up to the first 16-byte boundary (offset views), 16-byte packs, and a scalar tail
// (common.cuh chunk_packs); the pointer's own alignment decides, so no host flag is needed.
// `sum_cols_packed_` and `best_cols_packed_` entries (inner a multiple of the pack, x 16-byte
// aligned) give each thread one 16-byte pack of adjacent columns: grid.x = ceil(inner / (32 * V)).
//
// Launch: `_rows` entries handle inner == 1: grid (outer, splits), one block per (row, row
// chunk), 256 threads. `_cols` entries handle inner > 1: grid (ceil(inner / 32),
// min(outer, 65535), splits), block (32, 8): threadIdx.x walks columns (coalesced), threadIdx.y
// strides over the chunk's rows, blockIdx.y strides over outer. With splits > 1 each block writes
// a partial (f64 sum, or value + index) and a `_partials` kernel (one thread per output for cols,
// one block of 256 per output for rows) combines them in split order. `sum_int_` entries: one
// block of 256 threads per output (grid-stride over outputs, grid.x <= 65535), threads over r.

#include "common.cuh"

enum ReduceOp { OP_SUM = 0, OP_SUMSQ = 1, OP_MAX = 2, OP_MIN = 3, OP_ARGMAX = 4, OP_ARGMIN = 5 };

#define COL_TILE 32
#define COL_ROWS 8

// The chunk [begin, end) of 0..r that split s of `splits` covers.
__device__ __forceinline__ void split_range(i64 r, int s, int splits, i64* begin, i64* end) {
    const i64 per = (r + splits - 1) / splits;
    *begin = min(r, (i64)s * per);
    *end = min(r, *begin + per);
}

__device__ __forceinline__ double sum_term(float v, int op) {
    const double d = (double)v;
    return op == OP_SUMSQ ? d * d : d;
}

// ---- sums -----------------------------------------------------------------------------------

template <typename T, typename O>
__device__ void sum_rows(const T* x, i64 r, int splits, int op, double divisor, O* out, double* partial) {
    __shared__ double smem[32];
    const i64 row = blockIdx.x;
    const int s = blockIdx.y;
    i64 b, e;
    split_range(r, s, splits, &b, &e);
    // The chunk as a head up to the first 16-byte boundary, 16-byte packs and a tail.
    double acc = 0.0;
    chunk_packs(x + row * r, b, e, [&](i64, T v) { acc += sum_term(to_f32(v), op); });
    acc = block_reduce(acc, SumOp(), 0.0, smem);
    if (threadIdx.x == 0) {
        if (splits == 1) out[row] = from_f32<O>((float)(acc / divisor));
        else partial[row * splits + s] = acc;
    }
}

template <typename O>
__device__ void sum_rows_partials(const double* partial, int splits, double divisor, O* out) {
    __shared__ double smem[32];
    const i64 row = blockIdx.x;
    double acc = 0.0;
    for (int s = threadIdx.x; s < splits; s += blockDim.x) acc += partial[row * splits + s];
    acc = block_reduce(acc, SumOp(), 0.0, smem);
    if (threadIdx.x == 0) out[row] = from_f32<O>((float)(acc / divisor));
}

// Each thread sums N adjacent columns (N = 1, or a 16-byte pack when inner % N == 0 and x is
// 16-byte aligned: `sum_cols_packed_`); per column the order of terms is the same either way.
template <typename T, typename O, int N>
__device__ void sum_cols(const T* x, i64 outer, i64 r, i64 inner, int splits, int op, double divisor, O* out,
                         double* partial) {
    __shared__ double smem[COL_ROWS][COL_TILE * N];
    const i64 j = ((i64)blockIdx.x * COL_TILE + threadIdx.x) * N;  // this thread's first column
    const int s = blockIdx.z;
    i64 b, e;
    split_range(r, s, splits, &b, &e);
    for (i64 o = blockIdx.y; o < outer; o += gridDim.y) {
        double acc[N];
#pragma unroll
        for (int c = 0; c < N; ++c) acc[c] = 0.0;
        if (j < inner)
            for (i64 k = b + threadIdx.y; k < e; k += COL_ROWS) {
                const VecPack<T, N> v = load_pack<N>(x, (o * r + k) * inner + j);
#pragma unroll
                for (int c = 0; c < N; ++c) acc[c] += sum_term(to_f32(v.v[c]), op);
            }
#pragma unroll
        for (int c = 0; c < N; ++c) smem[threadIdx.y][threadIdx.x * N + c] = acc[c];
        __syncthreads();
        if (threadIdx.y == 0 && j < inner) {
            for (int c = 0; c < N; ++c) {
                double t = 0.0;
#pragma unroll
                for (int y = 0; y < COL_ROWS; ++y) t += smem[y][threadIdx.x * N + c];
                if (splits == 1) out[o * inner + j + c] = from_f32<O>((float)(t / divisor));
                else partial[(o * splits + s) * inner + j + c] = t;
            }
        }
        __syncthreads();
    }
}

template <typename O>
__device__ void sum_cols_partials(const double* partial, i64 outer, i64 inner, int splits, double divisor, O* out) {
    for (i64 i = global_thread(); i < outer * inner; i += global_threads()) {
        const i64 o = i / inner, j = i - o * inner;
        double t = 0.0;
        for (int s = 0; s < splits; ++s) t += partial[(o * splits + s) * inner + j];
        out[i] = from_f32<O>((float)(t / divisor));
    }
}

// ---- max / min / argmax / argmin --------------------------------------------------------------

// A candidate: value and index; index -1 is "none yet".
struct Best {
    float v;
    i64 i;
};

// True when a beats b: NaN wins, then the larger (max) or smaller (min) value, then the lower index.
__device__ __forceinline__ bool beats(Best a, Best b, bool is_max) {
    if (b.i < 0) return a.i >= 0;
    if (a.i < 0) return false;
    const bool an = a.v != a.v, bn = b.v != b.v;
    if (an || bn) return an && bn ? a.i < b.i : an;
    if (a.v == b.v) return a.i < b.i;
    return is_max ? a.v > b.v : a.v < b.v;
}

__device__ __forceinline__ Best warp_best(Best a, bool is_max) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Best b;
        b.v = __shfl_xor_sync(0xffffffffu, a.v, o);
        b.i = __shfl_xor_sync(0xffffffffu, a.i, o);
        if (beats(b, a, is_max)) a = b;
    }
    return a;
}

__device__ __forceinline__ Best block_best(Best a, bool is_max, Best* smem) {
    a = warp_best(a, is_max);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) smem[warp] = a;
    __syncthreads();
    Best none;
    none.v = 0.0f;
    none.i = -1;
    a = lane < nwarps ? smem[lane] : none;
    return warp_best(a, is_max);
}

__device__ __forceinline__ bool is_max_op(int op) { return op == OP_MAX || op == OP_ARGMAX; }

// Writes a final candidate: the value (max/min) or the index (argmax/argmin).
template <typename T>
__device__ __forceinline__ void write_best(Best b, int op, i64 at, T* out_val, i64* out_idx) {
    if (op == OP_MAX || op == OP_MIN) out_val[at] = from_f32<T>(b.v);
    else out_idx[at] = b.i;
}

template <typename T>
__device__ void best_rows(const T* x, i64 r, int splits, int op, T* out_val, i64* out_idx, Best* partial) {
    __shared__ Best smem[32];
    const bool is_max = is_max_op(op);
    const i64 row = blockIdx.x;
    const int s = blockIdx.y;
    i64 b, e;
    split_range(r, s, splits, &b, &e);
    Best acc;
    acc.v = 0.0f;
    acc.i = -1;
    // 16-byte packs as sum_rows; `beats` is a total order (ties go to the lower index), so the
    // winner does not depend on which thread saw which element.
    chunk_packs(x + row * r, b, e, [&](i64 k, T v) {
        Best c;
        c.v = to_f32(v);
        c.i = k;
        if (beats(c, acc, is_max)) acc = c;
    });
    acc = block_best(acc, is_max, smem);
    if (threadIdx.x == 0) {
        if (splits == 1) write_best<T>(acc, op, row, out_val, out_idx);
        else partial[row * splits + s] = acc;
    }
}

template <typename T>
__device__ void best_rows_partials(const Best* partial, int splits, int op, T* out_val, i64* out_idx) {
    __shared__ Best smem[32];
    const bool is_max = is_max_op(op);
    const i64 row = blockIdx.x;
    Best acc;
    acc.v = 0.0f;
    acc.i = -1;
    for (int s = threadIdx.x; s < splits; s += blockDim.x) {
        const Best c = partial[row * splits + s];
        if (beats(c, acc, is_max)) acc = c;
    }
    acc = block_best(acc, is_max, smem);
    if (threadIdx.x == 0) write_best<T>(acc, op, row, out_val, out_idx);
}

// Each thread follows N adjacent columns (N = 1, or a 16-byte pack when inner % N == 0 and x is
// 16-byte aligned: `best_cols_packed_`), as sum_cols.
template <typename T, int N>
__device__ void best_cols(const T* x, i64 outer, i64 r, i64 inner, int splits, int op, T* out_val, i64* out_idx,
                          Best* partial) {
    __shared__ Best smem[COL_ROWS][COL_TILE * N];
    const bool is_max = is_max_op(op);
    const i64 j = ((i64)blockIdx.x * COL_TILE + threadIdx.x) * N;  // this thread's first column
    const int s = blockIdx.z;
    i64 b, e;
    split_range(r, s, splits, &b, &e);
    for (i64 o = blockIdx.y; o < outer; o += gridDim.y) {
        Best acc[N];
#pragma unroll
        for (int c = 0; c < N; ++c) {
            acc[c].v = 0.0f;
            acc[c].i = -1;
        }
        if (j < inner)
            for (i64 k = b + threadIdx.y; k < e; k += COL_ROWS) {
                const VecPack<T, N> v = load_pack<N>(x, (o * r + k) * inner + j);
#pragma unroll
                for (int c = 0; c < N; ++c) {
                    Best cand;
                    cand.v = to_f32(v.v[c]);
                    cand.i = k;
                    if (beats(cand, acc[c], is_max)) acc[c] = cand;
                }
            }
#pragma unroll
        for (int c = 0; c < N; ++c) smem[threadIdx.y][threadIdx.x * N + c] = acc[c];
        __syncthreads();
        if (threadIdx.y == 0 && j < inner) {
            for (int c = 0; c < N; ++c) {
                const int col = threadIdx.x * N + c;
                Best t = smem[0][col];
                for (int y = 1; y < COL_ROWS; ++y)
                    if (beats(smem[y][col], t, is_max)) t = smem[y][col];
                if (splits == 1) write_best<T>(t, op, o * inner + j + c, out_val, out_idx);
                else partial[(o * splits + s) * inner + j + c] = t;
            }
        }
        __syncthreads();
    }
}

template <typename T>
__device__ void best_cols_partials(const Best* partial, i64 outer, i64 inner, int splits, int op, T* out_val,
                                   i64* out_idx) {
    const bool is_max = is_max_op(op);
    for (i64 i = global_thread(); i < outer * inner; i += global_threads()) {
        const i64 o = i / inner, j = i - o * inner;
        Best t = partial[(o * splits) * inner + j];
        for (int s = 1; s < splits; ++s) {
            const Best c = partial[(o * splits + s) * inner + j];
            if (beats(c, t, is_max)) t = c;
        }
        write_best<T>(t, op, i, out_val, out_idx);
    }
}

// ---- integer sums ---------------------------------------------------------------------------

// Σ x over k into an i64, wrapping (u64 arithmetic is two's complement addition, which is
// associative: the result is exact and equals the CPU's whatever the combine order). A row of
// inner == 1 is contiguous and read in 16-byte packs (common.cuh chunk_packs); otherwise the
// block's threads stride over k.
template <typename T>
__device__ void sum_int(const T* x, i64 outer, i64 r, i64 inner, i64* out) {
    __shared__ u64 smem[32];
    for (i64 i = blockIdx.x; i < outer * inner; i += gridDim.x) {
        const i64 o = i / inner, j = i - o * inner;
        u64 acc = 0;
        if (inner == 1) chunk_packs(x + o * r, 0, r, [&](i64, T v) { acc += (u64)(i64)v; });
        else
            for (i64 k = threadIdx.x; k < r; k += blockDim.x) acc += (u64)(i64)x[(o * r + k) * inner + j];
        acc = block_reduce(acc, SumOp(), (u64)0, smem);
        if (threadIdx.x == 0) out[i] = (i64)acc;
    }
}

#define SUM_ENTRIES(T, TN, O, ON)                                                                   \
    extern "C" __global__ void sum_rows_##TN##_##ON(const T* x, i64 r, int splits, int op,         \
                                                    double divisor, O* out, double* partial) {     \
        sum_rows<T, O>(x, r, splits, op, divisor, out, partial);                                   \
    }                                                                                              \
    extern "C" __global__ void sum_cols_##TN##_##ON(const T* x, i64 outer, i64 r, i64 inner,       \
                                                    int splits, int op, double divisor, O* out,    \
                                                    double* partial) {                             \
        sum_cols<T, O, 1>(x, outer, r, inner, splits, op, divisor, out, partial);                  \
    }                                                                                              \
    extern "C" __global__ void sum_cols_packed_##TN##_##ON(const T* x, i64 outer, i64 r, i64 inner, \
                                                           int splits, int op, double divisor,     \
                                                           O* out, double* partial) {              \
        sum_cols<T, O, 16 / (int)sizeof(T)>(x, outer, r, inner, splits, op, divisor, out, partial); \
    }

#define PARTIAL_ENTRIES(O, ON)                                                                      \
    extern "C" __global__ void sum_rows_partials_##ON(const double* partial, int splits,            \
                                                      double divisor, O* out) {                    \
        sum_rows_partials<O>(partial, splits, divisor, out);                                       \
    }                                                                                              \
    extern "C" __global__ void sum_cols_partials_##ON(const double* partial, i64 outer, i64 inner,  \
                                                      int splits, double divisor, O* out) {        \
        sum_cols_partials<O>(partial, outer, inner, splits, divisor, out);                         \
    }

#define BEST_ENTRIES(T, NAME)                                                                       \
    extern "C" __global__ void best_rows_##NAME(const T* x, i64 r, int splits, int op, T* out_val,  \
                                                i64* out_idx, Best* partial) {                     \
        best_rows<T>(x, r, splits, op, out_val, out_idx, partial);                                 \
    }                                                                                              \
    extern "C" __global__ void best_rows_partials_##NAME(const Best* partial, int splits, int op,   \
                                                         T* out_val, i64* out_idx) {               \
        best_rows_partials<T>(partial, splits, op, out_val, out_idx);                              \
    }                                                                                              \
    extern "C" __global__ void best_cols_##NAME(const T* x, i64 outer, i64 r, i64 inner, int splits, \
                                                int op, T* out_val, i64* out_idx, Best* partial) { \
        best_cols<T, 1>(x, outer, r, inner, splits, op, out_val, out_idx, partial);                \
    }                                                                                              \
    extern "C" __global__ void best_cols_packed_##NAME(const T* x, i64 outer, i64 r, i64 inner,     \
                                                       int splits, int op, T* out_val,             \
                                                       i64* out_idx, Best* partial) {              \
        best_cols<T, 16 / (int)sizeof(T)>(x, outer, r, inner, splits, op, out_val, out_idx, partial); \
    }                                                                                              \
    extern "C" __global__ void best_cols_partials_##NAME(const Best* partial, i64 outer, i64 inner, \
                                                         int splits, int op, T* out_val,           \
                                                         i64* out_idx) {                           \
        best_cols_partials<T>(partial, outer, inner, splits, op, out_val, out_idx);                \
    }

// Sums keep the input dtype, or widen half inputs to an f32 result (bias gradients of mixed
// precision layers).
SUM_ENTRIES(float, f32, float, f32)
SUM_ENTRIES(f16, f16, f16, f16)
SUM_ENTRIES(bf16, bf16, bf16, bf16)
SUM_ENTRIES(f16, f16, float, f32)
SUM_ENTRIES(bf16, bf16, float, f32)
PARTIAL_ENTRIES(float, f32)
PARTIAL_ENTRIES(f16, f16)
PARTIAL_ENTRIES(bf16, bf16)
BEST_ENTRIES(float, f32)
BEST_ENTRIES(f16, f16)
BEST_ENTRIES(bf16, bf16)
#define SUM_INT_ENTRY(T, NAME)                                                                      \
    extern "C" __global__ void sum_int_##NAME(const T* x, i64 outer, i64 r, i64 inner, i64* out) { \
        sum_int<T>(x, outer, r, inner, out);                                                       \
    }

SUM_INT_ENTRY(i64, i64)
SUM_INT_ENTRY(u8, u8)
