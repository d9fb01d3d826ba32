// common.cuh: the prelude every kernel file starts with (`#include "common.cuh"`; the Rust loader,
// cuda/src/nvrtc.rs, pastes this text in place of that line before NVRTC compiles the file, so no
// header search path is involved and no system header is needed).
//
// What it holds:
// - fixed-width integer names and the 16-bit float storage types `f16` and `bf16` (bit patterns in a
//   2-byte struct), with exact conversions to f32 and round-to-nearest-even conversions back (the
//   same rounding as the `half` crate on the CPU, NaN kept quiet with its sign), and the f64 path
//   every cast takes (to_f64 / from_f64: Rust `as` semantics for the integer types);
// - `Walk`: up to MAX_DIMS dims of a row-major logical shape with one stride set per operand (up to
//   three), which maps a logical element index to each operand's element offset (strided kernels);
// - warp and block reductions (block size a multiple of 32, at most 1024 threads);
// - Philox4x32-10, the counter-based generator of tensor/src/rng.rs (same constants, same word order);
// - `mma_bf16_m16n8k16`: one warp's bf16 tensor-core product (inline PTX; emulated by the simulator);
// - `chunk_owner`: the tensor a block works on in a multi-tensor launch (adamw.cu, loss_scale.cu);
// - `report_error`: how a kernel flags bad input (an index out of range) to the host through the
//   device status word that the Gpu owns (read back by Gpu::check_status).

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;
typedef unsigned long long u64;

struct __align__(2) f16 { u16 bits; };
struct __align__(2) bf16 { u16 bits; };

// Dynamic shared memory (the launch's `shared_bytes`) as an array `NAME` of T: the `extern
// __shared__` array on the GPU, the launch's buffer in the simulator.
#ifndef COTMAE_SIM
#define DYNAMIC_SHARED(T, NAME) extern __shared__ T NAME[]
#else
#define DYNAMIC_SHARED(T, NAME) T* const NAME = static_cast<T*>(cotmae_sim_dynamic_shared())
#endif

// ---- conversions ----------------------------------------------------------------------------

__device__ __forceinline__ float to_f32(float x) { return x; }
#ifndef COTMAE_SIM
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
#else
// The simulator's twin of cvt.f32.f16 (exact): subnormals normalised, NaN quieted, sign kept.
__device__ __forceinline__ float to_f32(f16 x) {
    const u32 sign = (u32)(x.bits & 0x8000u) << 16, exp = (x.bits >> 10) & 0x1fu, man = x.bits & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (man ? 0x00400000u | (man << 13) : 0u));
    if (exp != 0) return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0) return __uint_as_float(sign);
    int e = 113;  // a subnormal: shift the leading one up to the implicit bit
    u32 m = man;
    while (!(m & 0x400u)) { m <<= 1; --e; }
    return __uint_as_float(sign | ((u32)e << 23) | ((m & 0x3ffu) << 13));
}
#endif
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
#ifndef COTMAE_SIM
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
    return h;
}
#else
// The simulator's twin of cvt.rn.f16.f32: round to nearest, ties to even, overflow to infinity,
// NaN quiet with its sign and top payload bits (the `half` crate's f16::from_f32).
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
    const u32 u = __float_as_uint(x), sign = (u >> 16) & 0x8000u, exp = (u >> 23) & 0xffu;
    const u32 man = u & 0x7fffffu;
    f16 h;
    if (exp == 0xffu) {
        h.bits = (u16)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u));
        return h;
    }
    const int e = (int)exp - 127 + 15;  // the f16 exponent field
    if (e >= 0x1f) {
        h.bits = (u16)(sign | 0x7c00u);
        return h;
    }
    u32 full, shift;  // the significand with its implicit one, and the bits to drop
    u32 base;         // what the kept bits are added to
    if (e <= 0) {
        if (e < -10) {  // below half the smallest subnormal: rounds to zero
            h.bits = (u16)sign;
            return h;
        }
        full = man | 0x800000u;
        shift = (u32)(14 - e);
        base = sign;
    } else {
        full = man;
        shift = 13u;
        base = sign | ((u32)e << 10);
    }
    u32 kept = full >> shift;
    const u32 rest = full & ((1u << shift) - 1u), half_ulp = 1u << (shift - 1u);
    if (rest > half_ulp || (rest == half_ulp && (kept & 1u))) ++kept;  // may carry into the exponent
    h.bits = (u16)(base + kept);
    return h;
}
#endif
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    u32 u = __float_as_uint(x);
    bf16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        b.bits = (u16)((u >> 16) | 0x40u);  // quiet NaN, sign kept
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);     // round to nearest, ties to even
        b.bits = (u16)(u >> 16);
    }
    return b;
}

// Through f64, as the CPU casts (tensor/src/ops/cast.rs): exact widening, then one rounding.
__device__ __forceinline__ double to_f64(float x) { return (double)x; }
__device__ __forceinline__ double to_f64(double x) { return x; }
__device__ __forceinline__ double to_f64(f16 x) { return (double)to_f32(x); }
__device__ __forceinline__ double to_f64(bf16 x) { return (double)to_f32(x); }
__device__ __forceinline__ double to_f64(i64 x) { return (double)x; }
__device__ __forceinline__ double to_f64(u8 x) { return (double)x; }

// f64 -> f32 rounding to odd: truncate, then set the last bit when inexact. Rounding that result
// to a format with at least two fewer mantissa bits (f16, bf16) equals rounding the f64 directly.
__device__ __forceinline__ float f64_to_f32_odd(double d) {
    float t = __double2float_rz(d);
    if ((double)t != d && d == d) t = __uint_as_float(__float_as_uint(t) | 1u);
    return t;
}

template <typename D> __device__ __forceinline__ D from_f64(double d);
template <> __device__ __forceinline__ float from_f64<float>(double d) { return (float)d; }
template <> __device__ __forceinline__ double from_f64<double>(double d) { return d; }
template <> __device__ __forceinline__ f16 from_f64<f16>(double d) { return from_f32<f16>(f64_to_f32_odd(d)); }
template <> __device__ __forceinline__ bf16 from_f64<bf16>(double d) { return from_f32<bf16>(f64_to_f32_odd(d)); }
template <> __device__ __forceinline__ i64 from_f64<i64>(double d) {
    if (d != d) return 0;
    if (d >= 9223372036854775808.0) return 0x7fffffffffffffffLL;
    if (d < -9223372036854775808.0) return (i64)0x8000000000000000ULL;
    return (i64)d;
}
template <> __device__ __forceinline__ u8 from_f64<u8>(double d) {
    if (d != d || d <= 0.0) return 0;
    if (d >= 255.0) return 255;
    return (u8)(u32)d;
}

// ---- strided walks --------------------------------------------------------------------------

#define MAX_DIMS 8

// A logical shape (row-major, `rank` dims) and, for each of up to three operands, its element
// strides over that shape (0 on a broadcast dim). Operand pointers already include their offsets.
struct Walk {
    i64 shape[MAX_DIMS];
    i64 stride[3][MAX_DIMS];
    i32 rank;
    i32 pad;
};

// Element offsets of logical index `i` for the first N operands. A walk of rank <= 1 (what
// Walk::new merges contiguous operands, and any operands that step uniformly, into) takes no
// division.
template <int N>
__device__ __forceinline__ void walk_offsets(const Walk& w, i64 i, i64 (&off)[N]) {
    if (w.rank <= 1) {
#pragma unroll
        for (int k = 0; k < N; ++k) off[k] = w.rank == 1 ? i * w.stride[k][0] : 0;
        return;
    }
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = w.rank - 1; d >= 0; --d) {
        i64 s = w.shape[d];
        i64 q = i / s;
        i64 r = i - q * s;
#pragma unroll
        for (int k = 0; k < N; ++k) off[k] += r * w.stride[k][d];
        i = q;
    }
}

// Grid-stride loop bounds.
__device__ __forceinline__ i64 global_thread() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 global_threads() { return (i64)gridDim.x * blockDim.x; }

// ---- reductions -----------------------------------------------------------------------------

struct SumOp {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Reduces `v` over the block; every thread gets the result. `smem` holds 32 values of T. The
// combine order depends only on the block size, so results are deterministic.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity, T* smem) {
    v = warp_reduce(v, op);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    __syncthreads();  // smem may still be read by a previous call
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = lane < nwarps ? smem[lane] : identity;
    v = warp_reduce(v, op);
    return v;
}

// ---- Philox4x32-10 (tensor/src/rng.rs) ------------------------------------------------------

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const u32 hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        const u32 hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        uint4 n;
        n.x = hi1 ^ c.y ^ k.x;
        n.y = lo1;
        n.z = hi0 ^ c.w ^ k.y;
        n.w = lo0;
        c = n;
        k.x += 0x9E3779B9u;
        k.y += 0xBB67AE85u;
    }
    return c;
}

// The four words of counter block `block` under `seed`.
__device__ __forceinline__ uint4 philox_block(u64 seed, u64 block) {
    uint4 c;
    c.x = (u32)block;
    c.y = (u32)(block >> 32);
    c.z = 0u;
    c.w = 0u;
    uint2 k;
    k.x = (u32)seed;
    k.y = (u32)(seed >> 32);
    return philox4x32_10(c, k);
}

// A 32-bit word to a float in [0, 1) with 24 random bits (rng::word_to_unit).
__device__ __forceinline__ float word_to_unit(u32 w) { return (float)(w >> 8) * (1.0f / 16777216.0f); }

// ---- tensor cores ---------------------------------------------------------------------------

// Two bf16 in one 32-bit register (`lo` in the low half), the element pair of an mma fragment.
__device__ __forceinline__ u32 pack_bf16x2(bf16 lo, bf16 hi) { return (u32)lo.bits | ((u32)hi.bits << 16); }

// d += A B on one warp's tile: A 16x16 bf16 (row-major), B 16x8 bf16 (column-major), d 16x8 f32,
// each held in the fragments of PTX's mma.m16n8k16 (g = lane / 4, t = lane % 4):
//   a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]
//   d[0], d[1] = D[g][2t, 2t+1], d[2], d[3] = D[g+8][2t, 2t+1]
// (pairs packed by pack_bf16x2). All 32 lanes of the warp must call it together. Needs sm_80 or
// newer; the simulator emulates the instruction (runtime.h, cotmae_sim_mma_m16n8k16_bf16).
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
#ifndef COTMAE_SIM
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();  // the Rust side only launches tensor-core kernels on sm_80+
#endif
#else
    cotmae_sim_mma_m16n8k16_bf16(d, a, b, d);
#endif
}

// ---- multi-tensor launches ------------------------------------------------------------------

// Multi-tensor launches give each tensor a run of chunks; chunk_start[t] (a prefix sum) is tensor
// t's first. The tensor that owns `chunk` is the last t with chunk_start[t] <= chunk.
__device__ __forceinline__ int chunk_owner(const i64* chunk_start, int n_tensors, i64 chunk) {
    int lo = 0, hi = n_tensors - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (chunk_start[mid] <= chunk) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// ---- error reporting ------------------------------------------------------------------------

// Error codes written to status[0] (cuda/src/gpu.rs KernelFault names them).
#define ERR_INDEX_OUT_OF_RANGE 1u
#define ERR_TARGET_OUT_OF_RANGE 2u

// Records the first error of the stream's current run: status[0] = code, status[1..3] = the
// offending value (low, high word). Later errors keep the first one.
__device__ __forceinline__ void report_error(u32* status, u32 code, i64 value) {
    if (atomicCAS(status, 0u, code) == 0u) {
        status[1] = (u32)value;
        status[2] = (u32)((u64)value >> 32);
    }
}

// ---- packed (16-byte vector) walks ------------------------------------------------------------

// N elements of T moved by one load or store, aligned to their size (at most 16 bytes): with
// N = 16 / sizeof(T) a 16-byte vector access, with N = 1 a plain scalar one.
template <typename T, int N>
struct __align__((N * sizeof(T)) < 16 ? (N * sizeof(T)) : 16) VecPack {
    T v[N];
};

template <int N, typename T> __device__ __forceinline__ VecPack<T, N> load_pack(const T* p, i64 i) {
    return *reinterpret_cast<const VecPack<T, N>*>(p + i);
}
template <int N, typename T> __device__ __forceinline__ void store_pack(T* p, i64 i, const VecPack<T, N>& v) {
    *reinterpret_cast<VecPack<T, N>*>(p + i) = v;
}

// Whether a pointer is 16-byte aligned (kernels that decide their packs themselves).
__device__ __forceinline__ bool aligned16(const void* p) { return ((u64)(size_t)p & 15u) == 0; }

// A contiguous walk of n elements for a `Body` whose `template <int N> run(const i64 (&off)[3])`
// handles N elements from each operand's offset: the first (n / V) * V elements in packs of V
// (when `packs` is set: the host checked every pointer's alignment), the rest one at a time. No
// division per element.
template <int V, typename Body>
__device__ __forceinline__ void contig_packs(i64 n, int packs, const Body& body) {
    const i64 np = packs ? n / V : 0;
    for (i64 p = global_thread(); p < np; p += global_threads()) {
        const i64 off[3] = {p * V, p * V, p * V};
        body.template run<V>(off);
    }
    for (i64 i = np * V + global_thread(); i < n; i += global_threads()) {
        const i64 off[3] = {i, i, i};
        body.template run<1>(off);
    }
}

// This thread's share of the contiguous run x[b..e), walked by a block's threads (threadIdx.x):
// a scalar head up to the first 16-byte boundary (offset views start anywhere), whole 16-byte
// packs of V = 16 / sizeof(T) elements, and a scalar tail. Calls f(k, x[k]) for each k it reads.
// The pointer's own alignment decides, so no host flag is needed; which thread reads an element
// changes with the alignment, so callers combine in an order-free way (or accept the rounding).
template <typename T, typename F>
__device__ __forceinline__ void chunk_packs(const T* x, i64 b, i64 e, const F& f) {
    constexpr int V = 16 / (int)sizeof(T);
    const i64 head = min(e - b, (i64)((16u - ((u64)(size_t)(x + b) & 15u)) & 15u) / (i64)sizeof(T));
    const i64 kb = b + head, packs = (e - kb) / V, kt = kb + packs * V;
    for (i64 k = b + threadIdx.x; k < kb; k += blockDim.x) f(k, x[k]);
    for (i64 p = threadIdx.x; p < packs; p += blockDim.x) {
        const i64 k0 = kb + p * V;
        const VecPack<T, V> v = load_pack<V>(x, k0);
#pragma unroll
        for (int j = 0; j < V; ++j) f(k0 + j, v.v[j]);
    }
    for (i64 k = kt + threadIdx.x; k < e; k += blockDim.x) f(k, x[k]);
}

// The first column of unit u of a row walked as np packs of V then single elements.
template <int V>
__device__ __forceinline__ i64 unit_col(i64 u, i64 np) { return u < np ? u * V : np * V + (u - np); }

// A [rows, cols] walk in which every operand steps by one element along a row and by
// row_stride[k] elements between rows (0: a row broadcast along the leading dim; more than cols:
// a slice of a wider buffer). Each row's cols / V packs (when `packs` is set: the host checked
// that every operand's rows start 16-byte aligned) then its cols % V single elements are the
// row's units; threadIdx.x / blockIdx.x walk units, threadIdx.y / blockIdx.y walk rows (2-D
// grid, any size), so no division per element.
template <int V, typename Body>
__device__ __forceinline__ void row_packs(i64 rows, i64 cols, const i64 (&row_stride)[3], int packs,
                                          const Body& body) {
    const i64 np = packs ? cols / V : 0;
    const i64 units = np + (cols - np * V);
    for (i64 r = (i64)blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.y * blockDim.y) {
        for (i64 u = (i64)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += (i64)gridDim.x * blockDim.x) {
            const i64 c = unit_col<V>(u, np);
            const i64 off[3] = {r * row_stride[0] + c, r * row_stride[1] + c, r * row_stride[2] + c};
            if (u < np) body.template run<V>(off);
            else body.template run<1>(off);
        }
    }
}
