// adamw.cu: one launch that applies an AdamW step to a whole list of f32 parameters (fp32 master
// weights) and their f32 moments, as nn/src/optim/adamw.rs, in the CPU's f32 operation order with
// explicitly rounded operations (no fused multiply-adds), so each element matches the CPU.
//
// Computes, per element, with the per-tensor scalars the host derives in f64 (Coefs in adamw.rs):
// - HF (transformers 4.17): m = m·b1 + (1-b1)·g; v = v·b2 + ((1-b2)·g)·g;
//   p = p + (-step·m) / (sqrt(v) + eps); then, with weight decay, p = p + (-lr·wd)·p;
// - torch (torch.optim.AdamW): p = p·(1 - lr·wd); m = m + (1-b1)·(g - m); v as above;
//   p = p + (-lr/bc1·m) / (sqrt(v)/sqrt(bc2) + eps).
// Gradients are f32, f16 or bf16 (read as f32). When a tensor has a `copy` pointer, the updated
// weight is also written there rounded to f16 or bf16 (the half model copy of mixed precision).
//
// Layout: `tensors` is a device table of AdamWTensor records (pointers and scalars, one per
// parameter; layout mirrored by cuda/src/ops/adamw.rs); `chunk_start[t]` is the first chunk of
// tensor t (a prefix sum, n_tensors + 1 entries); every buffer is contiguous.
//
// Launch: one block of 256 threads per chunk of ADAMW_CHUNK elements (grid.x = total chunks); a
// block finds its tensor by binary search over chunk_start.

#include "common.cuh"

#define ADAMW_CHUNK 16384
#define FLAG_TORCH 1
#define FLAG_DECAY 2
#define COPY_NONE 0
#define COPY_F16 1
#define COPY_BF16 2

struct AdamWTensor {
    u64 p, g, m, v, copy;
    i64 n;
    float b1, one_minus_b1, b2, one_minus_b2, eps, neg_step, bc2_sqrt, keep, neg_lr_wd;
    i32 flags;
    i32 copy_kind;
    i32 pad;
};

template <typename G>
__device__ void adamw(const AdamWTensor* tensors, const i64* chunk_start, int n_tensors) {
    const int t = chunk_owner(chunk_start, n_tensors, blockIdx.x);
    const AdamWTensor c = tensors[t];
    float* p = (float*)c.p;
    const G* g = (const G*)c.g;
    float* m = (float*)c.m;
    float* v = (float*)c.v;
    const i64 begin = (blockIdx.x - chunk_start[t]) * (i64)ADAMW_CHUNK;
    const i64 end = min(c.n, begin + ADAMW_CHUNK);
    for (i64 i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float gi = to_f32(g[i]);
        const float vv = __fadd_rn(__fmul_rn(v[i], c.b2), __fmul_rn(__fmul_rn(c.one_minus_b2, gi), gi));
        float pp, mm;
        if (c.flags & FLAG_TORCH) {
            pp = __fmul_rn(p[i], c.keep);
            mm = __fadd_rn(m[i], __fmul_rn(c.one_minus_b1, __fsub_rn(gi, m[i])));
            const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vv), c.bc2_sqrt), c.eps);
            pp = __fadd_rn(pp, __fdiv_rn(__fmul_rn(c.neg_step, mm), denom));
        } else {
            mm = __fadd_rn(__fmul_rn(m[i], c.b1), __fmul_rn(c.one_minus_b1, gi));
            const float denom = __fadd_rn(__fsqrt_rn(vv), c.eps);
            pp = __fadd_rn(p[i], __fdiv_rn(__fmul_rn(c.neg_step, mm), denom));
            if (c.flags & FLAG_DECAY) pp = __fadd_rn(pp, __fmul_rn(c.neg_lr_wd, pp));
        }
        m[i] = mm;
        v[i] = vv;
        p[i] = pp;
        if (c.copy_kind == COPY_F16) ((f16*)c.copy)[i] = from_f32<f16>(pp);
        else if (c.copy_kind == COPY_BF16) ((bf16*)c.copy)[i] = from_f32<bf16>(pp);
    }
}

#define ADAMW_ENTRY(G, NAME)                                                                        \
    extern "C" __global__ void adamw_##NAME(const AdamWTensor* tensors, const i64* chunk_start,    \
                                            int n_tensors) {                                       \
        adamw<G>(tensors, chunk_start, n_tensors);                                                 \
    }

ADAMW_ENTRY(float, f32)
ADAMW_ENTRY(f16, f16)
ADAMW_ENTRY(bf16, bf16)
