// layer_norm.cu: LayerNorm over the last dim, forward and backward, as tensor/src/ops/layer_norm.rs
// (torch.native_layer_norm with a weight and bias of shape [n]). All statistics and sums are f32;
// x/y/dy/dx are f32, f16 or bf16 and the weight/bias (and their gradients) have x's dtype or f32
// (mixed precision: half activations, f32 parameters).
//
// Computes
// - layer_norm_fwd_<t>_<w>: mean = Σx / n, var = Σ(x - mean)² / n (two exact passes),
//   rstd = 1 / sqrt(var + eps), y = fma((x - mean) * rstd, w, b); saves mean and rstd per row
//   (NaN for n = 0, as the CPU);
// - layer_norm_bwd_dx_<t>_<w>: with g = dy·w and x̂ = (x - mean)·rstd,
//   dx = rstd·g - rstd·mean(g) - x̂·rstd·mean(g·x̂), in the CPU's operation order;
// - layer_norm_bwd_dwdb_<t>_<w> (+ _partials_<w>): dw = Σ_rows dy·x̂, db = Σ_rows dy.
// - layer_norm_bwd_fused_<t>_<w>: the backward in one pass over x and dy (n <= LN_FUSED_COLS *
//   1024): a block owns a run of rows, keeps its threads' columns of x, dy and w in registers for
//   a row, writes dx and adds dy·x̂ and dy into per-thread column sums, then writes its f32
//   partials [blocks, n]; `_partials_<w>` adds the blocks' partials in order.
//
// Layout: x, y, dy, dx contiguous [rows, n]; w, b, dw, db [n]; mean, rstd [rows] f32.
//
// Launch: forward and dx: one block per row (grid.x = rows), block a multiple of 32 up to 1024.
// dw/db: grid (ceil(n / 32), splits), block (32, 8): each block sums a chunk of rows for 32
// columns (coalesced) and writes f32 partials [splits, n]; when splits == 1 it writes dw/db
// directly, otherwise `_partials` (1-D grid-stride, one thread per column) adds the splits in
// order. Deterministic. Fused: grid (blocks), block a multiple of 32 with ceil(n / blockDim) <=
// LN_FUSED_COLS columns per thread (column k = threadIdx.x + c * blockDim.x); then `_partials`.

#include "common.cuh"

#define COL_TILE 32
#define COL_ROWS 8
#define LN_FUSED_COLS 8

template <typename T, typename W>
__device__ void layer_norm_fwd(const T* x, const W* w, const W* b, i64 n, float eps, T* y, float* mean,
                               float* rstd) {
    __shared__ float smem[32];
    const i64 row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const float inv_n = 1.0f / (float)n;
    float s = 0.0f;
    for (i64 k = threadIdx.x; k < n; k += blockDim.x) s += to_f32(xr[k]);
    const float mu = block_reduce(s, SumOp(), 0.0f, smem) * inv_n;
    float q = 0.0f;
    for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
        const float d = to_f32(xr[k]) - mu;
        q = fmaf(d, d, q);
    }
    const float var = block_reduce(q, SumOp(), 0.0f, smem) * inv_n;
    const float rs = 1.0f / sqrtf(var + eps);
    for (i64 k = threadIdx.x; k < n; k += blockDim.x)
        yr[k] = from_f32<T>(fmaf((to_f32(xr[k]) - mu) * rs, to_f32(w[k]), to_f32(b[k])));
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

template <typename T, typename W>
__device__ void layer_norm_bwd_dx(const T* x, const W* w, const float* mean, const float* rstd, const T* dy,
                                  i64 n, T* dx) {
    __shared__ float smem[32];
    const i64 row = blockIdx.x;
    const T* xr = x + row * n;
    const T* gr = dy + row * n;
    T* dr = dx + row * n;
    const float mu = mean[row], rs = rstd[row];
    const float inv_n = 1.0f / (float)n;
    float sg = 0.0f, sgx = 0.0f;
    for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
        const float g = to_f32(gr[k]) * to_f32(w[k]);
        sg += g;
        sgx = fmaf(g, to_f32(xr[k]) - mu, sgx);
    }
    sg = block_reduce(sg, SumOp(), 0.0f, smem);
    sgx = block_reduce(sgx, SumOp(), 0.0f, smem);
    const float k1 = -(rs * rs * rs * sgx * inv_n);
    const float k2 = -(rs * sg * inv_n);
    for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
        const float xc = to_f32(xr[k]) - mu;
        dr[k] = from_f32<T>(fmaf(to_f32(gr[k]) * to_f32(w[k]), rs, fmaf(xc, k1, k2)));
    }
}

template <typename T, typename W>
__device__ void layer_norm_bwd_dwdb(const T* x, const float* mean, const float* rstd, const T* dy, i64 rows,
                                    i64 n, int splits, float* partial_w, float* partial_b, W* dw, W* db) {
    __shared__ float sw[COL_ROWS][COL_TILE];
    __shared__ float sb[COL_ROWS][COL_TILE];
    const i64 j = (i64)blockIdx.x * COL_TILE + threadIdx.x;
    const int s = blockIdx.y;
    const i64 per = (rows + splits - 1) / splits;
    const i64 r0 = min(rows, (i64)s * per), r1 = min(rows, r0 + per);
    float aw = 0.0f, ab = 0.0f;
    if (j < n)
        for (i64 r = r0 + threadIdx.y; r < r1; r += COL_ROWS) {
            const float d = to_f32(dy[r * n + j]);
            aw = fmaf(d, (to_f32(x[r * n + j]) - mean[r]) * rstd[r], aw);
            ab += d;
        }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && j < n) {
        float tw = 0.0f, tb = 0.0f;
#pragma unroll
        for (int y = 0; y < COL_ROWS; ++y) {
            tw += sw[y][threadIdx.x];
            tb += sb[y][threadIdx.x];
        }
        if (splits == 1) {
            dw[j] = from_f32<W>(tw);
            db[j] = from_f32<W>(tb);
        } else {
            partial_w[(i64)s * n + j] = tw;
            partial_b[(i64)s * n + j] = tb;
        }
    }
}

template <typename T, typename W>
__device__ void layer_norm_bwd_fused(const T* x, const W* w, const float* mean, const float* rstd, const T* dy,
                                     i64 rows, i64 n, i64 rows_per_block, T* dx, float* partial_w,
                                     float* partial_b) {
    __shared__ float smem[32];
    const i64 r0 = (i64)blockIdx.x * rows_per_block, r1 = min(rows, r0 + rows_per_block);
    const float inv_n = 1.0f / (float)n;
    float wv[LN_FUSED_COLS], aw[LN_FUSED_COLS], ab[LN_FUSED_COLS];
#pragma unroll
    for (int c = 0; c < LN_FUSED_COLS; ++c) {
        const i64 k = threadIdx.x + (i64)c * blockDim.x;
        wv[c] = k < n ? to_f32(w[k]) : 0.0f;
        aw[c] = ab[c] = 0.0f;
    }
    for (i64 row = r0; row < r1; ++row) {
        const T* xr = x + row * n;
        const T* gr = dy + row * n;
        const float mu = mean[row], rs = rstd[row];
        float xv[LN_FUSED_COLS], gv[LN_FUSED_COLS], sg = 0.0f, sgx = 0.0f;
#pragma unroll
        for (int c = 0; c < LN_FUSED_COLS; ++c) {
            const i64 k = threadIdx.x + (i64)c * blockDim.x;
            xv[c] = k < n ? to_f32(xr[k]) - mu : 0.0f;  // x - mean
            gv[c] = k < n ? to_f32(gr[k]) : 0.0f;
            const float g = gv[c] * wv[c];
            sg += g;
            sgx = fmaf(g, xv[c], sgx);
        }
        sg = block_reduce(sg, SumOp(), 0.0f, smem);
        sgx = block_reduce(sgx, SumOp(), 0.0f, smem);
        const float k1 = -(rs * rs * rs * sgx * inv_n);
        const float k2 = -(rs * sg * inv_n);
#pragma unroll
        for (int c = 0; c < LN_FUSED_COLS; ++c) {
            const i64 k = threadIdx.x + (i64)c * blockDim.x;
            if (k >= n) continue;
            dx[row * n + k] = from_f32<T>(fmaf(gv[c] * wv[c], rs, fmaf(xv[c], k1, k2)));
            aw[c] = fmaf(gv[c], xv[c] * rs, aw[c]);
            ab[c] += gv[c];
        }
    }
#pragma unroll
    for (int c = 0; c < LN_FUSED_COLS; ++c) {
        const i64 k = threadIdx.x + (i64)c * blockDim.x;
        if (k < n) {
            partial_w[(i64)blockIdx.x * n + k] = aw[c];
            partial_b[(i64)blockIdx.x * n + k] = ab[c];
        }
    }
}

template <typename W>
__device__ void layer_norm_bwd_dwdb_partials(const float* partial_w, const float* partial_b, i64 n, int splits,
                                             W* dw, W* db) {
    for (i64 j = global_thread(); j < n; j += global_threads()) {
        float tw = 0.0f, tb = 0.0f;
        for (int s = 0; s < splits; ++s) {
            tw += partial_w[(i64)s * n + j];
            tb += partial_b[(i64)s * n + j];
        }
        dw[j] = from_f32<W>(tw);
        db[j] = from_f32<W>(tb);
    }
}

#define LN_ENTRIES(T, TN, W, WN)                                                                    \
    extern "C" __global__ void layer_norm_fwd_##TN##_##WN(const T* x, const W* w, const W* b, i64 n, \
                                                          float eps, T* y, float* mean,            \
                                                          float* rstd) {                           \
        layer_norm_fwd<T, W>(x, w, b, n, eps, y, mean, rstd);                                      \
    }                                                                                              \
    extern "C" __global__ void layer_norm_bwd_dx_##TN##_##WN(const T* x, const W* w,                \
                                                             const float* mean, const float* rstd, \
                                                             const T* dy, i64 n, T* dx) {          \
        layer_norm_bwd_dx<T, W>(x, w, mean, rstd, dy, n, dx);                                      \
    }                                                                                              \
    extern "C" __global__ void layer_norm_bwd_dwdb_##TN##_##WN(                                     \
        const T* x, const float* mean, const float* rstd, const T* dy, i64 rows, i64 n, int splits, \
        float* partial_w, float* partial_b, W* dw, W* db) {                                        \
        layer_norm_bwd_dwdb<T, W>(x, mean, rstd, dy, rows, n, splits, partial_w, partial_b, dw, db); \
    }                                                                                              \
    extern "C" __global__ void layer_norm_bwd_fused_##TN##_##WN(                                    \
        const T* x, const W* w, const float* mean, const float* rstd, const T* dy, i64 rows, i64 n, \
        i64 rows_per_block, T* dx, float* partial_w, float* partial_b) {                           \
        layer_norm_bwd_fused<T, W>(x, w, mean, rstd, dy, rows, n, rows_per_block, dx, partial_w,   \
                                   partial_b);                                                     \
    }

#define LN_PARTIALS(W, WN)                                                                          \
    extern "C" __global__ void layer_norm_bwd_dwdb_partials_##WN(const float* partial_w,            \
                                                                 const float* partial_b, i64 n,    \
                                                                 int splits, W* dw, W* db) {       \
        layer_norm_bwd_dwdb_partials<W>(partial_w, partial_b, n, splits, dw, db);                  \
    }

LN_ENTRIES(float, f32, float, f32)
LN_ENTRIES(f16, f16, f16, f16)
LN_ENTRIES(bf16, bf16, bf16, bf16)
LN_ENTRIES(f16, f16, float, f32)
LN_ENTRIES(bf16, bf16, float, f32)
LN_PARTIALS(float, f32)
LN_PARTIALS(f16, f16)
LN_PARTIALS(bf16, bf16)
