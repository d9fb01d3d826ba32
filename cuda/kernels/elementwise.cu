// elementwise.cu: elementwise maps with numpy broadcasting, as tensor/src/ops/elementwise.rs.
//
// Computes
// - map1: out = f(x, a, b) for a unary op code (neg, exp, log, sqrt, rsqrt, tanh, erf, relu,
//   sigmoid, abs, sqr, recip) or a scalar op (x+a, x-a, x*a, x/a, max(x,a), min(x,a), affine
//   x*a+b, powf x^a); f16/bf16 compute in f32 and round once, as the CPU does;
// - binary: out = a op b (add, sub, mul, div, maximum, minimum; NaN propagates in max/min), for
//   f32/f16/bf16 and for i64/u8 with the CPU's integer semantics (add/sub/mul wrap, div truncates
//   toward zero with i64::MIN / -1 wrapping to i64::MIN; the host rejects zero divisors, which
//   give 0 here);
// - compare: out = a cmp b as u8 1/0 (eq, ne, lt, le, gt, ge) for f32, f16, bf16, i64, u8;
// - where_w*: out = cond ? t : f, masked_fill_w*: out = mask ? value : x, copy_w*: out = x between
//   two strided layouts (operand 1 of the walk is the destination: a contiguous copy, or a slice
//   of a larger output for concatenation), all moving whole elements by width (8/16/32/64 bits),
//   so they serve every dtype.
//
// Layout: outputs are fresh contiguous row-major buffers of n elements (copy_w* writes through its
// walk instead). Three walks, chosen by the host (cuda/src/ops/elementwise.rs):
// - `_contig` (map1, binary, compare, where, masked_fill): every operand contiguous; 16-byte
//   vector loads and stores (common.cuh contig_packs: packs of 16 / sizeof(T) elements, the u8
//   side of compare / where / masked_fill moving the same count of bytes) when the host found
//   every pointer aligned for its pack, then a scalar tail; no index arithmetic beyond i * V;
// - `_rows` (binary, copy): a [rows, cols] walk whose operands step by 1 along a row and by
//   their own row stride between rows (0: broadcast along the leading dim, as a bias row; more
//   than cols: a slice of a wider buffer, as a concatenation); packs when every operand's rows
//   start 16-byte aligned (common.cuh row_packs), no division per element;
// - `_strided` (and compare_<t>, where_w*, masked_fill_w*, copy_w*): through a `Walk`
//   (common.cuh) whose strides already carry the broadcast (stride 0), one i64 div/mod per dim
//   and element.
// Op codes are the enums below; cuda/src/ops/elementwise.rs mirrors them (a CI test checks the
// numbers).
//
// Launch: `_contig` and `_strided`: 1-D grid-stride loops, 256 threads per block, any grid size.
// `_rows`: 2-D blocks of 256 threads (x over a row's units, y over rows), grid-stride both ways.

#include "common.cuh"

enum Map1Op {
    M_NEG = 0, M_EXP = 1, M_LOG = 2, M_SQRT = 3, M_RSQRT = 4, M_TANH = 5, M_ERF = 6, M_RELU = 7,
    M_SIGMOID = 8, M_ABS = 9, M_SQR = 10, M_RECIP = 11,
    M_ADD_SCALAR = 12, M_SUB_SCALAR = 13, M_MUL_SCALAR = 14, M_DIV_SCALAR = 15,
    M_MAXIMUM_SCALAR = 16, M_MINIMUM_SCALAR = 17, M_AFFINE = 18, M_POWF = 19
};

enum BinaryOp { B_ADD = 0, B_SUB = 1, B_MUL = 2, B_DIV = 3, B_MAXIMUM = 4, B_MINIMUM = 5 };

enum CmpOp { C_EQ = 0, C_NE = 1, C_LT = 2, C_LE = 3, C_GT = 4, C_GE = 5 };

// torch.maximum / torch.minimum: NaN if either operand is NaN.
__device__ __forceinline__ float maximum_nan(float x, float y) { return (x > y || x != x) ? x : y; }
__device__ __forceinline__ float minimum_nan(float x, float y) { return (x < y || x != x) ? x : y; }

__device__ __forceinline__ float map1(int op, float x, float a, float b) {
    switch (op) {
        case M_NEG: return -x;
        case M_EXP: return expf(x);
        case M_LOG: return logf(x);
        case M_SQRT: return sqrtf(x);
        case M_RSQRT: return 1.0f / sqrtf(x);
        case M_TANH: return tanhf(x);
        case M_ERF: return erff(x);
        case M_RELU: return x < 0.0f ? 0.0f : x;  // NaN passes through
        case M_SIGMOID: return 1.0f / (1.0f + expf(-x));
        case M_ABS: return fabsf(x);
        case M_SQR: return __fmul_rn(x, x);
        case M_RECIP: return 1.0f / x;
        case M_ADD_SCALAR: return __fadd_rn(x, a);
        case M_SUB_SCALAR: return __fsub_rn(x, a);
        case M_MUL_SCALAR: return __fmul_rn(x, a);
        case M_DIV_SCALAR: return x / a;
        case M_MAXIMUM_SCALAR: return maximum_nan(x, a);
        case M_MINIMUM_SCALAR: return minimum_nan(x, a);
        case M_AFFINE: return __fadd_rn(__fmul_rn(x, a), b);  // two roundings, as the CPU
        default: return powf(x, a);                          // M_POWF
    }
}

__device__ __forceinline__ float binary(int op, float x, float y) {
    switch (op) {
        case B_ADD: return __fadd_rn(x, y);
        case B_SUB: return __fsub_rn(x, y);
        case B_MUL: return __fmul_rn(x, y);
        case B_DIV: return x / y;
        case B_MAXIMUM: return maximum_nan(x, y);
        default: return minimum_nan(x, y);  // B_MINIMUM
    }
}

template <typename T> struct Map1Body {
    const T* x;
    T* out;
    int op;
    float a, b;
    template <int N> __device__ __forceinline__ void run(const i64 (&off)[3]) const {
        const VecPack<T, N> in = load_pack<N>(x, off[0]);
        VecPack<T, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.v[j] = from_f32<T>(map1(op, to_f32(in.v[j]), a, b));
        store_pack<N>(out, off[0], o);
    }
};

template <typename T>
__device__ void map1_strided(Walk w, const T* x, T* out, i64 n, int op, float a, float b) {
    for (i64 i = global_thread(); i < n; i += global_threads()) {
        i64 off[1];
        walk_offsets<1>(w, i, off);
        out[i] = from_f32<T>(map1(op, to_f32(x[off[0]]), a, b));
    }
}

// a op b in T: floats compute in f32 and round once; integers natively (wrapping).
__device__ __forceinline__ float apply_binary(int op, float x, float y) { return binary(op, x, y); }
__device__ __forceinline__ f16 apply_binary(int op, f16 x, f16 y) {
    return from_f32<f16>(binary(op, to_f32(x), to_f32(y)));
}
__device__ __forceinline__ bf16 apply_binary(int op, bf16 x, bf16 y) {
    return from_f32<bf16>(binary(op, to_f32(x), to_f32(y)));
}
__device__ __forceinline__ i64 apply_binary(int op, i64 x, i64 y) {
    switch (op) {
        case B_ADD: return (i64)((u64)x + (u64)y);
        case B_SUB: return (i64)((u64)x - (u64)y);
        case B_MUL: return (i64)((u64)x * (u64)y);
        case B_DIV: return y == 0 ? 0 : (y == -1 ? (i64)(0ull - (u64)x) : x / y);
        case B_MAXIMUM: return x > y ? x : y;
        default: return x < y ? x : y;  // B_MINIMUM
    }
}
__device__ __forceinline__ u8 apply_binary(int op, u8 x, u8 y) {
    const u32 a = x, b = y;
    switch (op) {
        case B_ADD: return (u8)(a + b);
        case B_SUB: return (u8)(a - b);
        case B_MUL: return (u8)(a * b);
        case B_DIV: return b == 0 ? 0 : (u8)(a / b);
        case B_MAXIMUM: return a > b ? x : y;
        default: return a < b ? x : y;  // B_MINIMUM
    }
}

// out = f(x, y) for N elements: x at off[0], y at off[1], out at off[2] (contig_packs gives all
// three the same offset). F is BinaryFn (out of type T) or CompareFn (out u8).
template <typename T, typename O, typename F> struct PairBody {
    const T* x;
    const T* y;
    O* out;
    F f;
    template <int N> __device__ __forceinline__ void run(const i64 (&off)[3]) const {
        const VecPack<T, N> xa = load_pack<N>(x, off[0]), ya = load_pack<N>(y, off[1]);
        VecPack<O, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.v[j] = f(xa.v[j], ya.v[j]);
        store_pack<N>(out, off[2], o);
    }
};

struct BinaryFn {
    int op;
    template <typename T> __device__ __forceinline__ T operator()(T x, T y) const { return apply_binary(op, x, y); }
};

template <typename T>
__device__ void binary_strided(Walk w, const T* x, const T* y, T* out, i64 n, int op) {
    for (i64 i = global_thread(); i < n; i += global_threads()) {
        i64 off[2];
        walk_offsets<2>(w, i, off);
        out[i] = apply_binary(op, x[off[0]], y[off[1]]);
    }
}

// Comparison values: floats compare as f32 (exact for f16/bf16), integers natively.
__device__ __forceinline__ float cmp_value(float x) { return x; }
__device__ __forceinline__ float cmp_value(f16 x) { return to_f32(x); }
__device__ __forceinline__ float cmp_value(bf16 x) { return to_f32(x); }
__device__ __forceinline__ i64 cmp_value(i64 x) { return x; }
__device__ __forceinline__ u32 cmp_value(u8 x) { return x; }

template <typename T> __device__ __forceinline__ u8 compare(int op, T x, T y) {
    const auto a = cmp_value(x);
    const auto b = cmp_value(y);
    switch (op) {
        case C_EQ: return a == b;
        case C_NE: return a != b;
        case C_LT: return a < b;
        case C_LE: return a <= b;
        case C_GT: return a > b;
        default: return a >= b;  // C_GE
    }
}

template <typename T>
__device__ void compare_strided(Walk w, const T* x, const T* y, u8* out, i64 n, int op) {
    for (i64 i = global_thread(); i < n; i += global_threads()) {
        i64 off[2];
        walk_offsets<2>(w, i, off);
        out[i] = compare(op, x[off[0]], y[off[1]]);
    }
}

struct CompareFn {
    int op;
    template <typename T> __device__ __forceinline__ u8 operator()(T x, T y) const { return compare(op, x, y); }
};

template <typename W>
__device__ void where_strided(Walk w, const u8* cond, const W* t, const W* f, W* out, i64 n) {
    for (i64 i = global_thread(); i < n; i += global_threads()) {
        i64 off[3];
        walk_offsets<3>(w, i, off);
        out[i] = cond[off[0]] != 0 ? t[off[1]] : f[off[2]];
    }
}

// Contiguous cond, t, f and out: N condition bytes select N elements.
template <typename W> struct WhereBody {
    const u8* cond;
    const W* t;
    const W* f;
    W* out;
    template <int N> __device__ __forceinline__ void run(const i64 (&off)[3]) const {
        const VecPack<u8, N> c = load_pack<N>(cond, off[0]);
        const VecPack<W, N> ta = load_pack<N>(t, off[0]), fa = load_pack<N>(f, off[0]);
        VecPack<W, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.v[j] = c.v[j] != 0 ? ta.v[j] : fa.v[j];
        store_pack<N>(out, off[0], o);
    }
};

template <typename W>
__device__ void masked_fill_strided(Walk w, const W* x, const u8* mask, W value, W* out, i64 n) {
    for (i64 i = global_thread(); i < n; i += global_threads()) {
        i64 off[2];
        walk_offsets<2>(w, i, off);
        out[i] = mask[off[1]] != 0 ? value : x[off[0]];
    }
}

// Contiguous x, mask and out.
template <typename W> struct MaskedFillBody {
    const W* x;
    const u8* mask;
    W value;
    W* out;
    template <int N> __device__ __forceinline__ void run(const i64 (&off)[3]) const {
        const VecPack<W, N> xa = load_pack<N>(x, off[0]);
        const VecPack<u8, N> m = load_pack<N>(mask, off[0]);
        VecPack<W, N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.v[j] = m.v[j] != 0 ? value : xa.v[j];
        store_pack<N>(out, off[0], o);
    }
};

template <typename W>
__device__ void copy_strided(Walk w, const W* x, W* out, i64 n) {
    for (i64 i = global_thread(); i < n; i += global_threads()) {
        i64 off[2];
        walk_offsets<2>(w, i, off);
        out[off[1]] = x[off[0]];
    }
}

// x at off[0], out at off[1] (row_packs: a row-sliced source or destination).
template <typename W> struct CopyBody {
    const W* x;
    W* out;
    template <int N> __device__ __forceinline__ void run(const i64 (&off)[3]) const {
        store_pack<N>(out, off[1], load_pack<N>(x, off[0]));
    }
};

#define MAP1_ENTRIES(T, NAME)                                                                       \
    extern "C" __global__ void map1_##NAME##_contig(const T* x, T* out, i64 n, int aligned, int op, \
                                                    float a, float b) {                            \
        contig_packs<16 / (int)sizeof(T)>(n, aligned, Map1Body<T>{x, out, op, a, b});             \
    }                                                                                              \
    extern "C" __global__ void map1_##NAME##_strided(Walk w, const T* x, T* out, i64 n, int op,    \
                                                     float a, float b) {                           \
        map1_strided<T>(w, x, out, n, op, a, b);                                                   \
    }

#define BINARY_ENTRIES(T, NAME)                                                                     \
    extern "C" __global__ void binary_##NAME##_contig(const T* x, const T* y, T* out, i64 n,       \
                                                      int aligned, int op) {                       \
        const PairBody<T, T, BinaryFn> body{x, y, out, BinaryFn{op}};                              \
        contig_packs<16 / (int)sizeof(T)>(n, aligned, body);                                       \
    }                                                                                              \
    extern "C" __global__ void binary_##NAME##_rows(const T* x, const T* y, T* out, i64 rows,      \
                                                    i64 cols, i64 x_row, i64 y_row, int aligned,    \
                                                    int op) {                                       \
        const i64 row_stride[3] = {x_row, y_row, cols};                                            \
        const PairBody<T, T, BinaryFn> body{x, y, out, BinaryFn{op}};                              \
        row_packs<16 / (int)sizeof(T)>(rows, cols, row_stride, aligned, body);                     \
    }                                                                                              \
    extern "C" __global__ void binary_##NAME##_strided(Walk w, const T* x, const T* y, T* out,     \
                                                       i64 n, int op) {                            \
        binary_strided<T>(w, x, y, out, n, op);                                                    \
    }

MAP1_ENTRIES(float, f32)
MAP1_ENTRIES(f16, f16)
MAP1_ENTRIES(bf16, bf16)
BINARY_ENTRIES(float, f32)
BINARY_ENTRIES(f16, f16)
BINARY_ENTRIES(bf16, bf16)
BINARY_ENTRIES(i64, i64)
BINARY_ENTRIES(u8, u8)

#define COMPARE_ENTRY(T, NAME)                                                                   \
    extern "C" __global__ void compare_##NAME(Walk w, const T* x, const T* y, u8* out, i64 n,    \
                                              int op) {                                          \
        compare_strided<T>(w, x, y, out, n, op);                                                 \
    }                                                                                            \
    extern "C" __global__ void compare_##NAME##_contig(const T* x, const T* y, u8* out, i64 n,   \
                                                       int aligned, int op) {                    \
        const PairBody<T, u8, CompareFn> body{x, y, out, CompareFn{op}};                         \
        contig_packs<16 / (int)sizeof(T)>(n, aligned, body);                                     \
    }

COMPARE_ENTRY(float, f32)
COMPARE_ENTRY(f16, f16)
COMPARE_ENTRY(bf16, bf16)
COMPARE_ENTRY(i64, i64)
COMPARE_ENTRY(u8, u8)

#define WIDTH_ENTRIES(W, BITS)                                                                      \
    extern "C" __global__ void where_w##BITS(Walk w, const u8* cond, const W* t, const W* f,       \
                                              W* out, i64 n) {                                      \
        where_strided<W>(w, cond, t, f, out, n);                                                    \
    }                                                                                               \
    extern "C" __global__ void masked_fill_w##BITS(Walk w, const W* x, const u8* mask, W value,    \
                                                    W* out, i64 n) {                                \
        masked_fill_strided<W>(w, x, mask, value, out, n);                                          \
    }                                                                                               \
    extern "C" __global__ void copy_w##BITS(Walk w, const W* x, W* out, i64 n) {                   \
        copy_strided<W>(w, x, out, n);                                                              \
    }                                                                                               \
    extern "C" __global__ void where_w##BITS##_contig(const u8* cond, const W* t, const W* f,       \
                                                      W* out, i64 n, int aligned) {                 \
        contig_packs<16 / (int)sizeof(W)>(n, aligned, WhereBody<W>{cond, t, f, out});               \
    }                                                                                               \
    extern "C" __global__ void masked_fill_w##BITS##_contig(const W* x, const u8* mask, W value,    \
                                                            W* out, i64 n, int aligned) {           \
        contig_packs<16 / (int)sizeof(W)>(n, aligned, MaskedFillBody<W>{x, mask, value, out});      \
    }                                                                                               \
    extern "C" __global__ void copy_w##BITS##_rows(const W* x, W* out, i64 rows, i64 cols,          \
                                                   i64 x_row, i64 out_row, int aligned) {           \
        const i64 row_stride[3] = {x_row, out_row, 0};                                              \
        row_packs<16 / (int)sizeof(W)>(rows, cols, row_stride, aligned, CopyBody<W>{x, out});       \
    }

WIDTH_ENTRIES(u8, 8)
WIDTH_ENTRIES(u16, 16)
WIDTH_ENTRIES(u32, 32)
WIDTH_ENTRIES(u64, 64)
