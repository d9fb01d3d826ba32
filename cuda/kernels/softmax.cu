// softmax.cu: softmax and log-softmax over the last dim with a fused scale and additive mask,
// softmax(x * scale + mask) (the attention-probability op), and their backward passes, as
// tensor/src/ops/softmax.rs. f16/bf16 are read and written in their storage type and computed in
// f32. A row whose shifted inputs are all -inf gives zeros (softmax) or -inf (log-softmax).
//
// Computes
// - softmax_fwd_<t>: z = mask ? fma(x, scale, m) : x * scale; y = exp(z - max z) / Σ exp(z - max z),
//   or, with `log`, y = z - (max z + log Σ exp(z - max z));
// - softmax_bwd_<t>: from the forward output y and dy: dx = scale * y * (dy - Σ dy·y), or, with
//   `log`, dx = scale * (dy - exp(y) * Σ dy).
//
// Layout: x, y, dy, dx contiguous, `rows` rows of `n`. The mask (optional, may be broadcast, e.g.
// [B,1,1,S] against [B,H,S,S]) is read in place: row r starts at the offset the walk `mrows` gives
// for r over x's row dims (operand 0 strides), and steps by `mask_last` (0 or 1) along the row.
//
// Launch: one block per row (grid.x = rows), block size a multiple of 32 up to 1024 (the caller
// picks about n/4, at least 32); three passes over the row (max, sum, write) read x from L1/L2.

#include "common.cuh"

template <typename T>
__device__ __forceinline__ float shifted(const T* xr, const T* mr, int mask_last, i64 k, float scale) {
    const float v = to_f32(xr[k]);
    return mr ? fmaf(v, scale, to_f32(mr[k * mask_last])) : v * scale;
}

// ANCHOR: softmax_fwd
template <typename T>
__device__ void softmax_fwd(const T* x, const T* mask, Walk mrows, int mask_last, i64 n, float scale,
                            int log, T* y) {
    __shared__ float smem[32];
    const i64 row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const T* mr = 0;
    if (mask) {
        i64 off[1];
        walk_offsets<1>(mrows, row, off);
        mr = mask + off[0];
    }
    const float neg_inf = __int_as_float(0xff800000);
    float mx = neg_inf;
    for (i64 k = threadIdx.x; k < n; k += blockDim.x) mx = fmaxf(mx, shifted(xr, mr, mask_last, k, scale));
    mx = block_reduce(mx, MaxOp(), neg_inf, smem);
    if (mx == neg_inf) {
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) yr[k] = from_f32<T>(log ? neg_inf : 0.0f);
        return;
    }
    float s = 0.0f;
    for (i64 k = threadIdx.x; k < n; k += blockDim.x) s += expf(shifted(xr, mr, mask_last, k, scale) - mx);
    s = block_reduce(s, SumOp(), 0.0f, smem);
    if (log) {
        const float lse = mx + logf(s);
        for (i64 k = threadIdx.x; k < n; k += blockDim.x)
            yr[k] = from_f32<T>(shifted(xr, mr, mask_last, k, scale) - lse);
    } else {
        const float inv = 1.0f / s;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x)
            yr[k] = from_f32<T>(expf(shifted(xr, mr, mask_last, k, scale) - mx) * inv);
    }
}
// ANCHOR_END: softmax_fwd

template <typename T>
__device__ void softmax_bwd(const T* y, const T* dy, i64 n, float scale, int log, T* dx) {
    __shared__ float smem[32];
    const i64 row = blockIdx.x;
    const T* yr = y + row * n;
    const T* gr = dy + row * n;
    T* dr = dx + row * n;
    float s = 0.0f;
    for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
        const float g = to_f32(gr[k]);
        s += log ? g : g * to_f32(yr[k]);
    }
    s = block_reduce(s, SumOp(), 0.0f, smem);
    for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
        const float yv = to_f32(yr[k]), g = to_f32(gr[k]);
        dr[k] = from_f32<T>(log ? scale * fmaf(-expf(yv), s, g) : scale * yv * (g - s));
    }
}

#define SOFTMAX_ENTRIES(T, NAME)                                                                    \
    extern "C" __global__ void softmax_fwd_##NAME(const T* x, const T* mask, Walk mrows,           \
                                                  int mask_last, i64 n, float scale, int log,      \
                                                  T* y) {                                          \
        softmax_fwd<T>(x, mask, mrows, mask_last, n, scale, log, y);                               \
    }                                                                                              \
    extern "C" __global__ void softmax_bwd_##NAME(const T* y, const T* dy, i64 n, float scale,     \
                                                  int log, T* dx) {                                \
        softmax_bwd<T>(y, dy, n, scale, log, dx);                                                  \
    }

SOFTMAX_ENTRIES(float, f32)
SOFTMAX_ENTRIES(f16, f16)
SOFTMAX_ENTRIES(bf16, bf16)
