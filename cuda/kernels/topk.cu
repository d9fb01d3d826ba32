// topk.cu: the k largest (or, with `ascending`, smallest) elements of each row and their indices,
// as tensor/src/ops/topk.rs (torch.topk / torch.sort(stable=True)): largest first (smallest first
// when ascending), NaN counting as the largest either way, equal values by lower index first. With
// k = n it is a stable sort of the row.
//
// Computes it so: each element becomes a 64-bit key, (order-preserving bits of the value) << 32 |
// (2^32 - 1 - index), so one unsigned comparison orders by value and then by index (-0 counts as
// +0; NaN maps to the top); ascending flips the value bits (smallest value on top, NaN at the
// bottom) and keeps the index part, so the same descending selection yields the ascending order
// with ties still by lower index. A block keeps the best `cap` keys of its row in shared memory
// (cap = a power of two >= k): it bitonic-sorts the first `cap` elements descending, then for each
// further chunk of `cap` elements sorts the chunk ascending next to them (the 2·cap keys then form
// a bitonic sequence) and bitonic-merges all 2·cap descending, keeping the top half. Padding keys
// are 0 and sort last (a real key never is 0: its index part is at least 1 since index < 2^32 - 1).
//
// Layout: x contiguous [rows, n] with n < 2^32 - 1; values (x's dtype) and indices (i64)
// contiguous [rows, k]. Values are re-read from x at the chosen index, so they are bit-identical
// to the input.
//
// Launch: one block per row (grid.x = rows), min(cap, 1024) threads, dynamic shared memory
// 2·cap·8 bytes; cap <= 2048 (the host rejects larger k).

#include "common.cuh"

__device__ __forceinline__ u32 order_bits(float v) {
    if (v != v) return 0xffffffffu;
    if (v == 0.0f) v = 0.0f;  // -0 sorts with +0
    const u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ u64 sort_key(float v, i64 idx, bool ascending) {
    const u32 bits = ascending ? ~order_bits(v) : order_bits(v);
    return ((u64)bits << 32) | (u64)(0xffffffffu - (u32)idx);
}

__device__ __forceinline__ i64 key_index(u64 key) { return (i64)(0xffffffffu - (u32)(key & 0xffffffffu)); }

// One compare-exchange pass over keys[0..len): pairs (lo, lo + stride) inside bitonic blocks of
// `size`; a block sorts descending when (lo & size) == 0 XOR `flip`.
__device__ __forceinline__ void bitonic_pass(u64* keys, int len, int size, int stride, bool flip) {
    for (int p = threadIdx.x; p < len / 2; p += blockDim.x) {
        const int lo = 2 * p - (p & (stride - 1));
        const int hi = lo + stride;
        const bool desc = ((lo & size) == 0) != flip;
        const u64 a = keys[lo], b = keys[hi];
        if (desc ? a < b : a > b) {
            keys[lo] = b;
            keys[hi] = a;
        }
    }
    __syncthreads();
}

// Sorts keys[0..len) (len a power of two) descending, or ascending with `flip`.
__device__ void bitonic_sort(u64* keys, int len, bool flip) {
    for (int size = 2; size <= len; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) bitonic_pass(keys, len, size, stride, flip);
}

template <typename T>
__device__ void load_keys(const T* xr, i64 n, i64 start, int cap, bool ascending, u64* keys) {
    for (int j = threadIdx.x; j < cap; j += blockDim.x) {
        const i64 i = start + j;
        keys[j] = i < n ? sort_key(to_f32(xr[i]), i, ascending) : 0ull;
    }
    __syncthreads();
}

template <typename T>
__device__ void topk(const T* x, i64 n, int k, int cap, bool ascending, T* values, i64* indices) {
    DYNAMIC_SHARED(u64, keys);
    const i64 row = blockIdx.x;
    const T* xr = x + row * n;
    load_keys(xr, n, 0, cap, ascending, keys);
    bitonic_sort(keys, cap, false);
    for (i64 start = cap; start < n; start += cap) {
        load_keys(xr, n, start, cap, ascending, keys + cap);
        bitonic_sort(keys + cap, cap, true);
        for (int stride = cap; stride > 0; stride >>= 1) bitonic_pass(keys, 2 * cap, 2 * cap, stride, false);
    }
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        const i64 i = key_index(keys[j]);
        values[row * k + j] = xr[i];
        indices[row * k + j] = i;
    }
}

#define TOPK_ENTRY(T, NAME)                                                                         \
    extern "C" __global__ void topk_##NAME(const T* x, i64 n, int k, int cap, int ascending,       \
                                           T* values, i64* indices) {                              \
        topk<T>(x, n, k, cap, ascending != 0, values, indices);                                    \
    }

TOPK_ENTRY(float, f32)
TOPK_ENTRY(f16, f16)
TOPK_ENTRY(bf16, bf16)
