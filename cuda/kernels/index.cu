// index.cu: selecting and accumulating along one dim at i64 positions, as tensor/src/ops/index.rs
// (`index_select`, `gather`, `index_add`, `scatter_add`).
//
// Computes, for every element s (row-major) of a walked shape, with the id it uses
// id = ids[(s / inner) % k]:
// - gather_w<bits>: out[s] = src[off(s) + id * dim_stride], where off(s) is s's offset in `src`
//   with the indexed dim's stride set to 0. `index_select` is the slice form (inner = the product
//   of the dims after `dim`, k = the number of ids: every element of a slice uses the slice's id),
//   torch.gather the element form (inner = 1, k = n: element s uses ids[s]). Moves whole elements
//   by width, so it serves every dtype.
// - scatter_add_<t>: out[off_out(s) + id * dim_stride] += src[off_src(s)], the adjoint, with the
//   same two forms (`index_add`, torch.scatter_add). `out` holds the accumulation type: f32 for
//   f32/f16/bf16 sources (the caller widens the base and rounds the result back once, as the CPU
//   widens halves), f64, i64 (wrapping) and u8 (wrapping) otherwise. Accumulation uses atomics:
//   atomicAdd for f32/f64/i64 (i64 through the u64 add, which wraps like the CPU), a 32-bit CAS
//   loop on the enclosing word for u8. Integer sums are therefore exact and equal to the CPU's;
//   float sums into one element happen in an order that varies between runs, so they agree with
//   the CPU (which adds in index order) to rounding, not bit for bit.
// An id outside 0..dim_size is reported through the status word (common.cuh report_error) and the
// element is written as zero (gather) or skipped (scatter); the tensor ops check ids on the host
// first, so this only guards memory.
//
// Layout: `ids` contiguous [k]; `out` of gather contiguous [n] over the walked shape; `out` of
// scatter_add a contiguous buffer the walk's operand 1 addresses (dim stride 0 there too). Walk
// operands: gather (src), scatter_add (src, out); pointers already include their offsets.
//
// Contiguous slices (`gather_rows_w<bits>`, `scatter_add_rows_<t>`): `index_select` /
// `index_add` whose strided operand (the source) is contiguous walk the [outer, k, inner] shape
// as outer * k rows of `inner` elements: row q = (o, j) is row o * dim_size + ids[j] of the
// contiguous indexed [outer, dim_size, inner] operand. One division per row, none per element;
// a row's units are 16-byte packs (when `packs`: the host found both pointers 16-byte aligned
// and inner * sizeof a multiple of 16) then single elements. Scatter loads its source in packs
// and adds element by element with the same atomics. BERT's MLM head gathers the labelled rows
// of the [B·L, H] hidden states this way (and its backward scatters their gradient back).
//
// Launch: 1-D grid-stride loops over n, 256 threads per block, any grid size; the `_rows`
// entries 2-D blocks of 256 threads (x over a row's units, y over rows), grid-stride both ways.

#include "common.cuh"

__device__ __forceinline__ i64 pick(const i64* ids, i64 s, i64 inner, i64 k) { return ids[(s / inner) % k]; }

template <typename W>
__device__ void gather_kernel(Walk w, const W* src, const i64* ids, W* out, i64 n, i64 inner, i64 k,
                              i64 dim_stride, i64 dim_size, u32* status) {
    const W zero = 0;
    for (i64 s = global_thread(); s < n; s += global_threads()) {
        i64 off[1];
        walk_offsets<1>(w, s, off);
        const i64 id = pick(ids, s, inner, k);
        if (id < 0 || id >= dim_size) {
            report_error(status, ERR_INDEX_OUT_OF_RANGE, id);
            out[s] = zero;
        } else {
            out[s] = src[off[0] + id * dim_stride];
        }
    }
}

// The value a source element adds, in the accumulation type.
__device__ __forceinline__ float acc_value(float x) { return x; }
__device__ __forceinline__ float acc_value(f16 x) { return to_f32(x); }
__device__ __forceinline__ float acc_value(bf16 x) { return to_f32(x); }
__device__ __forceinline__ double acc_value(double x) { return x; }
__device__ __forceinline__ i64 acc_value(i64 x) { return x; }
__device__ __forceinline__ u8 acc_value(u8 x) { return x; }

__device__ __forceinline__ void atomic_acc(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_acc(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_acc(i64* p, i64 v) { atomicAdd((u64*)p, (u64)v); }
// Bytes have no atomic add: compare-and-swap the aligned 32-bit word holding the byte (buffers
// are at least 256-byte aligned, so the word lies inside the allocation).
__device__ __forceinline__ void atomic_acc(u8* p, u8 v) {
    u32* word = (u32*)((u64)p & ~(u64)3);
    const u32 shift = (u32)((u64)p & 3) * 8;
    u32 old = *word, assumed;
    do {
        assumed = old;
        const u32 sum = ((assumed >> shift) + v) & 0xffu;
        old = atomicCAS(word, assumed, (assumed & ~(0xffu << shift)) | (sum << shift));
    } while (assumed != old);
}

template <typename T, typename A>
__device__ void scatter_add_kernel(Walk w, const T* src, const i64* ids, A* out, i64 n, i64 inner, i64 k,
                                   i64 dim_stride, i64 dim_size, u32* status) {
    for (i64 s = global_thread(); s < n; s += global_threads()) {
        i64 off[2];
        walk_offsets<2>(w, s, off);
        const i64 id = pick(ids, s, inner, k);
        if (id < 0 || id >= dim_size) {
            report_error(status, ERR_INDEX_OUT_OF_RANGE, id);
            continue;
        }
        atomic_acc(out + off[1] + id * dim_stride, acc_value(src[off[0]]));
    }
}

// ---- contiguous slices ----------------------------------------------------------------------

// Calls body.run<N>(w, x) for this thread's units of the walked rows: w is the unit's offset in
// the walked [outer * k, inner] operand, x its offset in the indexed one, or -1 when the row's id
// is out of range (reported once per thread and row).
template <int V, typename Body>
__device__ __forceinline__ void slice_rows(const i64* ids, i64 rows, i64 inner, i64 k, i64 dim_size, int packs,
                                           u32* status, const Body& body) {
    const i64 np = packs ? inner / V : 0;
    const i64 units = np + (inner - np * V);
    for (i64 q = (i64)blockIdx.y * blockDim.y + threadIdx.y; q < rows; q += (i64)gridDim.y * blockDim.y) {
        const i64 o = q / k, id = ids[q - o * k];
        const bool ok = id >= 0 && id < dim_size;
        if (!ok) report_error(status, ERR_INDEX_OUT_OF_RANGE, id);
        const i64 walked = q * inner, indexed = (o * dim_size + id) * inner;
        for (i64 u = (i64)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += (i64)gridDim.x * blockDim.x) {
            const i64 c = unit_col<V>(u, np);
            if (u < np) body.template run<V>(walked + c, ok ? indexed + c : -1);
            else body.template run<1>(walked + c, ok ? indexed + c : -1);
        }
    }
}

// index_select: out (walked) = src (indexed), zeros for a bad id.
template <typename W> struct SelectBody {
    const W* src;
    W* out;
    template <int N> __device__ __forceinline__ void run(i64 w, i64 x) const {
        VecPack<W, N> v;
        if (x < 0) {
#pragma unroll
            for (int j = 0; j < N; ++j) v.v[j] = (W)0;
        } else {
            v = load_pack<N>(src, x);
        }
        store_pack<N>(out, w, v);
    }
};

// index_add: out (indexed) += src (walked), nothing for a bad id.
template <typename T, typename A> struct AddBody {
    const T* src;
    A* out;
    template <int N> __device__ __forceinline__ void run(i64 w, i64 x) const {
        if (x < 0) return;
        const VecPack<T, N> v = load_pack<N>(src, w);
#pragma unroll
        for (int j = 0; j < N; ++j) atomic_acc(out + x + j, acc_value(v.v[j]));
    }
};

#define GATHER(W, BITS)                                                                             \
    extern "C" __global__ void gather_w##BITS(Walk w, const W* src, const i64* ids, W* out, i64 n,  \
                                              i64 inner, i64 k, i64 dim_stride, i64 dim_size,      \
                                              u32* status) {                                       \
        gather_kernel<W>(w, src, ids, out, n, inner, k, dim_stride, dim_size, status);              \
    }                                                                                              \
    extern "C" __global__ void gather_rows_w##BITS(const W* src, const i64* ids, W* out, i64 rows,  \
                                                   i64 inner, i64 k, i64 dim_size, int packs,      \
                                                   u32* status) {                                  \
        slice_rows<16 / (int)sizeof(W)>(ids, rows, inner, k, dim_size, packs, status,              \
                                        SelectBody<W>{src, out});                                  \
    }

#define SCATTER_ADD(T, A, NAME)                                                                     \
    extern "C" __global__ void scatter_add_##NAME(Walk w, const T* src, const i64* ids, A* out,     \
                                                  i64 n, i64 inner, i64 k, i64 dim_stride,         \
                                                  i64 dim_size, u32* status) {                     \
        scatter_add_kernel<T, A>(w, src, ids, out, n, inner, k, dim_stride, dim_size, status);      \
    }                                                                                              \
    extern "C" __global__ void scatter_add_rows_##NAME(const T* src, const i64* ids, A* out,        \
                                                       i64 rows, i64 inner, i64 k, i64 dim_size,   \
                                                       int packs, u32* status) {                   \
        slice_rows<16 / (int)sizeof(T)>(ids, rows, inner, k, dim_size, packs, status,              \
                                        AddBody<T, A>{src, out});                                  \
    }

GATHER(u8, 8)
GATHER(u16, 16)
GATHER(u32, 32)
GATHER(u64, 64)
SCATTER_ADD(float, float, f32)
SCATTER_ADD(f16, float, f16)
SCATTER_ADD(bf16, float, bf16)
SCATTER_ADD(double, double, f64)
SCATTER_ADD(i64, i64, i64)
SCATTER_ADD(u8, u8, u8)
