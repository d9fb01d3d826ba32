// loss_scale.cu: the gradient side of fp16 dynamic loss scaling, as nn/src/loss_scale.rs
// (LossScaler::unscale, torch's _amp_foreach_non_finite_check_and_unscale_): one launch over a
// list of gradients multiplies each by inv_scale into an f32 gradient and flags any inf/NaN.
//
// Computes, per element: found |= the input is not finite (checked before scaling, as the CPU);
// dst = f32(src) * inv_scale, or * factor[0] when `factor` is not null (a factor computed on the
// device, grad_norm.cu clip_factor; a factor of 1 leaves in-place gradients untouched and skips
// them). f32 gradients may be unscaled in place (dst == src); f16/bf16
// gradients (of the half model copy) are written to f32 buffers for the f32 master weights.
//
// Layout: `tensors` is a device table of UnscaleTensor records {src, dst, n} (mirrored by
// cuda/src/ops/loss_scale.rs); `chunk_start` the prefix sum of chunks per tensor (common.cuh
// chunk_owner); `found_inf` one u32 the caller zeroes, set to 1 when anything was not finite.
//
// Launch: one block of 256 threads per chunk of UNSCALE_CHUNK elements (grid.x = total chunks).

#include "common.cuh"

#define UNSCALE_CHUNK 16384

struct UnscaleTensor {
    u64 src, dst;
    i64 n;
};

__device__ __forceinline__ bool not_finite(float x) { return (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u; }

template <typename G>
__device__ void unscale(const UnscaleTensor* tensors, const i64* chunk_start, int n_tensors, float inv_scale,
                        const float* factor, u32* found_inf) {
    const int t = chunk_owner(chunk_start, n_tensors, blockIdx.x);
    const UnscaleTensor c = tensors[t];
    if (factor != nullptr) {
        inv_scale = *factor;
        if (inv_scale == 1.0f && c.src == c.dst) return;  // the whole block: nothing to change
    }
    const G* src = (const G*)c.src;
    float* dst = (float*)c.dst;
    const i64 begin = (blockIdx.x - chunk_start[t]) * (i64)UNSCALE_CHUNK;
    const i64 end = min(c.n, begin + UNSCALE_CHUNK);
    bool bad = false;
    for (i64 i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float x = to_f32(src[i]);
        bad |= not_finite(x);
        dst[i] = __fmul_rn(x, inv_scale);
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) *found_inf = 1u;
}

#define UNSCALE_ENTRY(G, NAME)                                                                      \
    extern "C" __global__ void unscale_##NAME(const UnscaleTensor* tensors, const i64* chunk_start, \
                                              int n_tensors, float inv_scale, const float* factor, \
                                              u32* found_inf) {                                    \
        unscale<G>(tensors, chunk_start, n_tensors, inv_scale, factor, found_inf);                 \
    }

UNSCALE_ENTRY(float, f32)
UNSCALE_ENTRY(f16, f16)
UNSCALE_ENTRY(bf16, bf16)
