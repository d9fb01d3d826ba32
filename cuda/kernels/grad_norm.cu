// grad_norm.cu: the squared global L2 norm of a list of gradients, for gradient clipping as
// nn/src/clip.rs (total_norm, torch's clip_grad_norm_): one launch over every gradient of a model.
//
// Computes: for each chunk of GRAD_NORM_CHUNK elements of one gradient, the sum of the squares of
// its elements in f64 (each element read as f32, widened exactly to f64, squared and added with
// explicitly rounded f64 operations, as the CPU's sum_sq), written to partial[chunk]. The host adds
// the partials in chunk order, so the result depends only on the gradients' lengths, not on timing.
//
// Layout: `tensors` is a device table of GradNormTensor records {g, n} (mirrored by
// cuda/src/ops/grad_norm.rs); `chunk_start` the prefix sum of chunks per tensor (common.cuh
// chunk_owner); `partial` one double per chunk. Every gradient is contiguous.
//
// Launch: one block of 256 threads per chunk of GRAD_NORM_CHUNK elements (grid.x = total chunks);
// 32 doubles of static shared memory for the block reduction.
//
// clip_factor, for clipping without a wait for the GPU: one thread adds the partials in chunk
// order (the host's order), writes the total norm sqrt(sum) to norm[0] and the factor of
// nn/src/clip.rs to factor[0]: f32(max_norm / (total + 1e-6)) when that is below 1 and the total
// is finite, else 1 (the gradients stay as they are). Launch: one block of one thread.

#include "common.cuh"

#define GRAD_NORM_CHUNK 16384

struct GradNormTensor {
    u64 g;
    i64 n;
};

template <typename G>
__device__ void sum_squares(const GradNormTensor* tensors, const i64* chunk_start, int n_tensors, double* partial) {
    __shared__ double smem[32];
    const int t = chunk_owner(chunk_start, n_tensors, blockIdx.x);
    const GradNormTensor c = tensors[t];
    const G* g = (const G*)c.g;
    const i64 begin = (blockIdx.x - chunk_start[t]) * (i64)GRAD_NORM_CHUNK;
    const i64 end = min(c.n, begin + GRAD_NORM_CHUNK);
    double acc = 0.0;
    for (i64 i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const double x = (double)to_f32(g[i]);
        acc = __dadd_rn(acc, __dmul_rn(x, x));
    }
    acc = block_reduce(acc, SumOp(), 0.0, smem);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

#define GRAD_NORM_ENTRY(G, NAME)                                                                    \
    extern "C" __global__ void sum_squares_##NAME(const GradNormTensor* tensors, const i64* chunk_start, \
                                                  int n_tensors, double* partial) {                \
        sum_squares<G>(tensors, chunk_start, n_tensors, partial);                                  \
    }

GRAD_NORM_ENTRY(float, f32)
GRAD_NORM_ENTRY(f16, f16)
GRAD_NORM_ENTRY(bf16, bf16)

extern "C" __global__ void clip_factor(const double* partial, i64 n, double max_norm, double* norm, float* factor) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double sum = 0.0;
    for (i64 i = 0; i < n; ++i) sum = __dadd_rn(sum, partial[i]);
    const double total = sqrt(sum);
    norm[0] = total;
    const double coef = max_norm / (total + 1e-6);
    const bool finite = total - total == 0.0;
    factor[0] = (finite && coef < 1.0) ? (float)coef : 1.0f;
}
