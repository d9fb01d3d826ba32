// embedding.cu: rows of an embedding table gathered by i64 ids, and the backward scatter-add, as
// tensor/src/ops/index.rs (`embedding`, `embedding_backward`).
//
// Computes
// - embedding_fwd_w<bits>: out[i, :] = table[ids[i], :], copying whole elements by width (so any
//   dtype); an id outside 0..v is reported through the status word (common.cuh report_error) and
//   its row is written as zeros;
// - embedding_bwd_<t>: dtable[ids[i], :] += dy[i, :] into an f32 table the caller has zeroed
//   (f16/bf16 gradients widen to f32 there; the caller rounds the table back). Accumulation uses
//   f32 atomics, so the order of additions into a row used by several ids varies between runs
//   (the sums agree to f32 rounding, not bit for bit). Out-of-range ids are reported and skipped.
//
// Layout: table / dtable contiguous [v, h]; ids contiguous [n_ids]; out / dy contiguous [n_ids, h].
//
// Launch: one block per id (grid-stride over ids: grid.x = min(n_ids, 65535)), threads over h;
// 128 threads per block.

#include "common.cuh"

template <typename W>
__device__ void embedding_fwd(const W* table, const i64* ids, W* out, i64 n_ids, i64 h, i64 v, u32* status) {
    for (i64 i = blockIdx.x; i < n_ids; i += gridDim.x) {
        const i64 id = ids[i];
        const bool ok = id >= 0 && id < v;
        if (!ok && threadIdx.x == 0) report_error(status, ERR_INDEX_OUT_OF_RANGE, id);
        const W zero = 0;
        for (i64 j = threadIdx.x; j < h; j += blockDim.x) out[i * h + j] = ok ? table[id * h + j] : zero;
    }
}

template <typename T>
__device__ void embedding_bwd(const i64* ids, const T* dy, float* dtable, i64 n_ids, i64 h, i64 v, u32* status) {
    for (i64 i = blockIdx.x; i < n_ids; i += gridDim.x) {
        const i64 id = ids[i];
        if (id < 0 || id >= v) {
            if (threadIdx.x == 0) report_error(status, ERR_INDEX_OUT_OF_RANGE, id);
            continue;
        }
        for (i64 j = threadIdx.x; j < h; j += blockDim.x) atomicAdd(&dtable[id * h + j], to_f32(dy[i * h + j]));
    }
}

#define EMB_FWD(W, BITS)                                                                            \
    extern "C" __global__ void embedding_fwd_w##BITS(const W* table, const i64* ids, W* out,       \
                                                     i64 n_ids, i64 h, i64 v, u32* status) {       \
        embedding_fwd<W>(table, ids, out, n_ids, h, v, status);                                    \
    }

#define EMB_BWD(T, NAME)                                                                            \
    extern "C" __global__ void embedding_bwd_##NAME(const i64* ids, const T* dy, float* dtable,     \
                                                    i64 n_ids, i64 h, i64 v, u32* status) {        \
        embedding_bwd<T>(ids, dy, dtable, n_ids, h, v, status);                                    \
    }

EMB_FWD(u8, 8)
EMB_FWD(u16, 16)
EMB_FWD(u32, 32)
EMB_FWD(u64, 64)
EMB_BWD(float, f32)
EMB_BWD(f16, f16)
EMB_BWD(bf16, bf16)
