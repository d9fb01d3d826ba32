// cross_entropy.cu: fused cross-entropy over rows of class logits (log-softmax + negative
// log-likelihood, mean over the rows whose target is not ignore_index), forward and backward, as
// tensor/src/ops/loss.rs. With every row ignored the loss and its gradient are 0. Logits are f32,
// f16 or bf16 and computed in f32; the row losses and their mean in f64.
//
// Computes
// - ce_fwd_<t>: per row, lse = max + log Σ exp(x - max) (-inf for an all -inf row) and, for a valid
//   row, loss_r = lse - x[target] (f64); a target outside 0..c other than ignore_index is reported
//   through the status word (common.cuh report_error) and the row counts as ignored;
// - ce_mean_<t>: loss = Σ loss_r / n_valid rounded to the logits' dtype (0 when n_valid = 0);
// - ce_count: n_valid, the number of rows whose target is valid;
// - ce_bwd_<t>: dx = coef (exp(x - lse) - onehot(target)) for valid rows, 0 for the others, with
//   coef = grad / n_valid, grad = (grad_dev ? *grad_dev : 1) * grad_host (f64, rounded to f32).
//
// Layout: logits / dx contiguous [rows, c]; targets i64 [rows]; lse f32 [rows]; row_loss f64
// [rows]; n_valid one i32.
//
// Launch: ce_fwd and ce_bwd one block per row (grid.x = rows), block a multiple of 32 up to 1024;
// ce_mean and ce_count a single block of 1024 threads.

#include "common.cuh"

__device__ __forceinline__ bool target_valid(i64 t, i64 c, i64 ignore) { return t != ignore && t >= 0 && t < c; }

template <typename T>
__device__ void ce_fwd(const T* logits, const i64* targets, i64 c, i64 ignore, float* lse, double* row_loss,
                       u32* status) {
    __shared__ float smem[32];
    const i64 row = blockIdx.x;
    const T* xr = logits + row * c;
    const float neg_inf = __int_as_float(0xff800000);
    float mx = neg_inf;
    for (i64 k = threadIdx.x; k < c; k += blockDim.x) mx = fmaxf(mx, to_f32(xr[k]));
    mx = block_reduce(mx, MaxOp(), neg_inf, smem);
    float l = neg_inf;
    if (mx != neg_inf) {
        float s = 0.0f;
        for (i64 k = threadIdx.x; k < c; k += blockDim.x) s += expf(to_f32(xr[k]) - mx);
        s = block_reduce(s, SumOp(), 0.0f, smem);
        l = mx + logf(s);
    }
    if (threadIdx.x == 0) {
        const i64 t = targets[row];
        lse[row] = l;
        if (t != ignore && !target_valid(t, c, ignore)) report_error(status, ERR_TARGET_OUT_OF_RANGE, t);
        row_loss[row] = target_valid(t, c, ignore) ? (double)l - (double)to_f32(xr[t]) : 0.0;
    }
}

template <typename T>
__device__ void ce_mean(const double* row_loss, const i64* targets, i64 rows, i64 c, i64 ignore, T* loss) {
    __shared__ double ssum[32];
    __shared__ i64 scount[32];
    double s = 0.0;
    i64 n = 0;
    for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {
        s += row_loss[r];
        n += target_valid(targets[r], c, ignore) ? 1 : 0;
    }
    s = block_reduce(s, SumOp(), 0.0, ssum);
    n = block_reduce(n, SumOp(), (i64)0, scount);
    if (threadIdx.x == 0) loss[0] = from_f32<T>(n == 0 ? 0.0f : (float)(s / (double)n));
}

extern "C" __global__ void ce_count(const i64* targets, i64 rows, i64 c, i64 ignore, i32* n_valid) {
    __shared__ i64 scount[32];
    i64 n = 0;
    for (i64 r = threadIdx.x; r < rows; r += blockDim.x) n += target_valid(targets[r], c, ignore) ? 1 : 0;
    n = block_reduce(n, SumOp(), (i64)0, scount);
    if (threadIdx.x == 0) n_valid[0] = (i32)n;
}

template <typename T>
__device__ void ce_bwd(const T* logits, const i64* targets, const float* lse, i64 c, i64 ignore,
                       const i32* n_valid, const float* grad_dev, double grad_host, T* dx) {
    const i64 row = blockIdx.x;
    const T* xr = logits + row * c;
    T* dr = dx + row * c;
    const i64 t = targets[row];
    const i32 nv = n_valid[0];
    if (!target_valid(t, c, ignore) || nv == 0) {
        for (i64 k = threadIdx.x; k < c; k += blockDim.x) dr[k] = from_f32<T>(0.0f);
        return;
    }
    const double grad = (grad_dev ? (double)grad_dev[0] : 1.0) * grad_host;
    const float coef = (float)(grad / (double)nv);
    const float l = lse[row];
    for (i64 k = threadIdx.x; k < c; k += blockDim.x) {
        float g = coef * expf(to_f32(xr[k]) - l);
        if (k == t) g = g - coef;
        dr[k] = from_f32<T>(g);
    }
}

#define CE_ENTRIES(T, NAME)                                                                         \
    extern "C" __global__ void ce_fwd_##NAME(const T* logits, const i64* targets, i64 c, i64 ignore, \
                                             float* lse, double* row_loss, u32* status) {          \
        ce_fwd<T>(logits, targets, c, ignore, lse, row_loss, status);                              \
    }                                                                                              \
    extern "C" __global__ void ce_mean_##NAME(const double* row_loss, const i64* targets, i64 rows, \
                                              i64 c, i64 ignore, T* loss) {                        \
        ce_mean<T>(row_loss, targets, rows, c, ignore, loss);                                      \
    }                                                                                              \
    extern "C" __global__ void ce_bwd_##NAME(const T* logits, const i64* targets, const float* lse, \
                                             i64 c, i64 ignore, const i32* n_valid,                \
                                             const float* grad_dev, double grad_host, T* dx) {     \
        ce_bwd<T>(logits, targets, lse, c, ignore, n_valid, grad_dev, grad_host, dx);              \
    }

CE_ENTRIES(float, f32)
CE_ENTRIES(f16, f16)
CE_ENTRIES(bf16, bf16)
