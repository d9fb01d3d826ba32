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
// Vector loads: each kernel checks its own pointers; when all are 16-byte aligned (and h is a
// multiple of the pack, for the bias forms) it moves packs of 16 / sizeof(t) elements
// (common.cuh contig_packs: 16-byte loads and stores of x, dy and y; the f32 bias of a half x
// read as the matching 32 bytes), one `% h` per pack for the bias column, then a scalar tail;
// otherwise element by element. The values are the same either way.
//
// Launch: 1-D grid-stride loops, 256 threads per block, any grid size (a grid sized for n
// elements covers n / pack packs too).

#include "common.cuh"

#define FRAC_1_SQRT_2 0.70710678118654752440f
#define FRAC_1_SQRT_2PI 0.39894228040143267794f

__device__ __forceinline__ float gelu(float x) { return x * 0.5f * erfcf(-x * FRAC_1_SQRT_2); }

__device__ __forceinline__ float gelu_grad(float x) {
    const float cdf = 0.5f * erfcf(-x * FRAC_1_SQRT_2);
    return fmaf(x * FRAC_1_SQRT_2PI, expf(-0.5f * x * x), cdf);
}

// One pack of N elements at off[0] (contig_packs): y = gelu(x).
template <typename T> struct GeluFwdBody {
    const T* x;
    T* y;
    template <int N> __device__ __forceinline__ void run(const i64 (&off)[3]) const {
        const VecPack<T, N> a = load_pack<N>(x, off[0]);
        VecPack<T, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.v[j] = from_f32<T>(gelu(to_f32(a.v[j])));
        store_pack<N>(y, off[0], o);
    }
};

// dx = dy gelu'(x + b), b = 0 (no bias) or the bias at the pack's column off[0] % h: one
// division per pack (h is a multiple of the pack when packs are used, so a pack is in one row).
template <typename T, typename W> struct GeluBwdBody {
    const T* x;
    const W* b;
    const T* dy;
    T* dx;
    i64 h;
    template <int N> __device__ __forceinline__ void run(const i64 (&off)[3]) const {
        const VecPack<T, N> a = load_pack<N>(x, off[0]), g = load_pack<N>(dy, off[0]);
        VecPack<W, N> bias{};
        if (b) bias = load_pack<N>(b, off[0] % h);
        VecPack<T, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) {
            const float z = b ? to_f32(a.v[j]) + to_f32(bias.v[j]) : to_f32(a.v[j]);
            o.v[j] = from_f32<T>(to_f32(g.v[j]) * gelu_grad(z));
        }
        store_pack<N>(dx, off[0], o);
    }
};

// y = gelu(x + b), the bias at the pack's column off[0] % h.
template <typename T, typename W> struct BiasGeluFwdBody {
    const T* x;
    const W* b;
    T* y;
    i64 h;
    template <int N> __device__ __forceinline__ void run(const i64 (&off)[3]) const {
        const VecPack<T, N> a = load_pack<N>(x, off[0]);
        const VecPack<W, N> bias = load_pack<N>(b, off[0] % h);
        VecPack<T, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.v[j] = from_f32<T>(gelu(to_f32(a.v[j]) + to_f32(bias.v[j])));
        store_pack<N>(y, off[0], o);
    }
};

// Packs of V = 16 / sizeof(T) when every pointer is 16-byte aligned and (for a bias) the row
// length h is a multiple of V, so a pack never crosses a row and the bias pack is aligned too.
template <typename T> __device__ __forceinline__ int gelu_packs(const void* p0, const void* p1, const void* p2,
                                                                const void* p3, i64 h) {
    constexpr int V = 16 / (int)sizeof(T);
    return aligned16(p0) && aligned16(p1) && aligned16(p2) && aligned16(p3) && h % V == 0;
}

template <typename T>
__device__ void gelu_fwd(const T* x, T* y, i64 n) {
    const int packs = gelu_packs<T>(x, y, x, x, 16 / (int)sizeof(T));
    contig_packs<16 / (int)sizeof(T)>(n, packs, GeluFwdBody<T>{x, y});
}

template <typename T>
__device__ void gelu_bwd(const T* x, const T* dy, T* dx, i64 n) {
    const int packs = gelu_packs<T>(x, dy, dx, x, 16 / (int)sizeof(T));
    contig_packs<16 / (int)sizeof(T)>(n, packs, GeluBwdBody<T, T>{x, nullptr, dy, dx, 1});
}

template <typename T, typename W>
__device__ void bias_gelu_fwd(const T* x, const W* b, T* y, i64 n, i64 h) {
    const int packs = gelu_packs<T>(x, b, y, x, h);
    contig_packs<16 / (int)sizeof(T)>(n, packs, BiasGeluFwdBody<T, W>{x, b, y, h});
}

template <typename T, typename W>
__device__ void bias_gelu_bwd(const T* x, const W* b, const T* dy, T* dz, i64 n, i64 h) {
    const int packs = gelu_packs<T>(x, b, dy, dz, h);
    contig_packs<16 / (int)sizeof(T)>(n, packs, GeluBwdBody<T, W>{x, b, dy, dz, h});
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
