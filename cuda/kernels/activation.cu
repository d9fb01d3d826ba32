// activation.cu: GELU, erf form (torch.nn.functional.gelu, approximate='none'), its gradient, and
// the bias + GELU fusion of a Linear layer's output, as tensor/src/ops/activation.rs.
//
// Computes (in f32 whatever the storage type)
// - gelu_fwd_<t>: y = x Φ(x), Φ(x) = erfc(-x/√2) / 2 (erfc keeps the left tail accurate);
// - gelu_bwd_<t>: dx = dy (Φ(x) + x φ(x)), φ(x) = exp(-x²/2) / √(2π);
// - bias_gelu_fwd_<t>_<w>: y = gelu(x + b) with b broadcast over rows;
// - bias_gelu_bwd_<t>_<w>: dz = dy gelu'(x + b), the gradient of both x and (summed over rows, by
//   reduce.cu's sum_cols) b.
//
// Layout: x, y, dy, dx, dz contiguous, n elements; for the bias forms they are [n / h, h] and b has
// h elements of type w (x's type, or f32 for half x).
//
// Launch: 1-D grid-stride loops, 256 threads per block, any grid size.

#include "common.cuh"

#define FRAC_1_SQRT_2 0.70710678118654752440f
#define FRAC_1_SQRT_2PI 0.39894228040143267794f

__device__ __forceinline__ float gelu(float x) { return x * 0.5f * erfcf(-x * FRAC_1_SQRT_2); }

__device__ __forceinline__ float gelu_grad(float x) {
    const float cdf = 0.5f * erfcf(-x * FRAC_1_SQRT_2);
    return fmaf(x * FRAC_1_SQRT_2PI, expf(-0.5f * x * x), cdf);
}

template <typename T>
__device__ void gelu_fwd(const T* x, T* y, i64 n) {
    for (i64 i = global_thread(); i < n; i += global_threads()) y[i] = from_f32<T>(gelu(to_f32(x[i])));
}

template <typename T>
__device__ void gelu_bwd(const T* x, const T* dy, T* dx, i64 n) {
    for (i64 i = global_thread(); i < n; i += global_threads())
        dx[i] = from_f32<T>(to_f32(dy[i]) * gelu_grad(to_f32(x[i])));
}

template <typename T, typename W>
__device__ void bias_gelu_fwd(const T* x, const W* b, T* y, i64 n, i64 h) {
    for (i64 i = global_thread(); i < n; i += global_threads())
        y[i] = from_f32<T>(gelu(to_f32(x[i]) + to_f32(b[i % h])));
}

template <typename T, typename W>
__device__ void bias_gelu_bwd(const T* x, const W* b, const T* dy, T* dz, i64 n, i64 h) {
    for (i64 i = global_thread(); i < n; i += global_threads())
        dz[i] = from_f32<T>(to_f32(dy[i]) * gelu_grad(to_f32(x[i]) + to_f32(b[i % h])));
}

#define GELU_ENTRIES(T, NAME)                                                                       \
    extern "C" __global__ void gelu_fwd_##NAME(const T* x, T* y, i64 n) { gelu_fwd<T>(x, y, n); }  \
    extern "C" __global__ void gelu_bwd_##NAME(const T* x, const T* dy, T* dx, i64 n) {            \
        gelu_bwd<T>(x, dy, dx, n);                                                                 \
    }

#define BIAS_GELU_ENTRIES(T, TN, W, WN)                                                             \
    extern "C" __global__ void bias_gelu_fwd_##TN##_##WN(const T* x, const W* b, T* y, i64 n,       \
                                                         i64 h) {                                  \
        bias_gelu_fwd<T, W>(x, b, y, n, h);                                                        \
    }                                                                                              \
    extern "C" __global__ void bias_gelu_bwd_##TN##_##WN(const T* x, const W* b, const T* dy,       \
                                                         T* dz, i64 n, i64 h) {                    \
        bias_gelu_bwd<T, W>(x, b, dy, dz, n, h);                                                   \
    }

GELU_ENTRIES(float, f32)
GELU_ENTRIES(f16, f16)
GELU_ENTRIES(bf16, bf16)
BIAS_GELU_ENTRIES(float, f32, float, f32)
BIAS_GELU_ENTRIES(f16, f16, f16, f16)
BIAS_GELU_ENTRIES(bf16, bf16, bf16, bf16)
BIAS_GELU_ENTRIES(f16, f16, float, f32)
BIAS_GELU_ENTRIES(bf16, bf16, float, f32)
