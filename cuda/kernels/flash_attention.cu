// flash_attention.cu: fused multi-head attention that never stores the [B, H, Sq, Sk] scores, with
// dropout on the probabilities drawn in-kernel from the same Philox draw as the CPU's dropout of
// the probs tensor, and the backward pass that recomputes the probabilities from the saved
// log-sum-exp (FlashAttention-2's algorithm, written for clarity on the CUDA cores).
//
// Computes (f32 math and accumulation whatever the storage type T)
// - z_ij = (q_i · k_j) * scale + mask_ij (fmaf when there is a mask), P_ij = softmax_j(z_ij);
//   dropout keeps (b, h, i, j) iff uniform element ((b*H + h)*Sq + i)*Sk + j of the draw (seed,
//   offset) is >= p, exactly the keep mask tensor/src/ops/dropout.rs draws for the contiguous
//   probs; Pd_ij = keep ? P_ij * drop_scale : 0 (no dropout: Pd = P);
// - flash_fwd_<t>: out_i = Σ_j Pd_ij v_j and lse_i = max_j z_ij + log Σ_j exp(z_ij - max) with an
//   online softmax over key tiles; a row whose z are all -inf gets out = 0 and lse = +inf (so
//   every recomputed P of it is exp(z - inf) = 0, as the CPU softmax gives zeros);
// - flash_delta_<t>: delta_i = Σ_d dO_id O_id (= Σ_j P_ij dP_ij, also with dropout);
// - flash_bwd_dq_<t>: dQ_i = scale Σ_j dS_ij k_j, dS_ij = P_ij (dP_ij - delta_i), P_ij =
//   exp(z_ij - lse_i), dP_ij = keep ? (dO_i · v_j) * drop_scale : 0;
// - flash_bwd_dkdv_<t>: dV_j = Σ_i Pd_ij dO_i, dK_j = scale Σ_i dS_ij q_i.
// The backward is two kernels (dQ by query tile, dK/dV by key tile) that each recompute P, so no
// atomics are needed and results are deterministic.
//
// Layout: q [B, H, Sq, D], k and v [B, H, Sk, D], dO [B, H, Sq, D] and the additive mask
// (broadcast to [B, H, Sq, Sk], stride 0 on broadcast dims) are read through element strides
// (FlashParams; pointers already at each operand's offset). out, dq, dk, dv are contiguous
// [B, H, S, D] of T; lse and delta contiguous [B, H, Sq] f32.
//
// Launch: FA_THREADS (128) threads = 4 warps per block, dynamic shared memory as the Rust wrapper
// computes it (above 48 KiB it opts in per function):
// - flash_fwd / flash_bwd_dq: grid (ceil(Sq / FA_BLOCK_Q), H, B); a block owns FA_BLOCK_Q = 16
//   query rows (FA_ROWS = 4 per warp) and streams key tiles of FA_BLOCK_K = 32 keys (one per lane
//   for the scores; for the products with V or K each lane owns head dims lane, lane+32, ...).
//   Shared: q (and dO) [16][D], k and v tiles [32][D+1] (padded: lane j reads row j).
// - flash_bwd_dkdv: grid (ceil(Sk / FA_BLOCK_K), H, B); a block owns 32 keys (FA_KEYS_PER_WARP =
//   8 per warp) and streams query tiles of FA_QUERY_TILE = 32 queries (one per lane). Shared: k, v
//   [32][D], q, dO [32][D+1], lse and delta [32].
// - flash_delta: one thread per row, grid-stride over B*H*Sq rows.
// D <= FA_MAX_HEAD_DIM = 128 (four head dims per lane); any Sq, Sk (the Rust side admits Sk <= 512).
//
// Expected H200 performance: every product runs as scalar f32 FMAs on the CUDA cores, fed from
// shared memory (about one shared load per FMA), so expect roughly 10-20% of the 67 TFLOP/s f32
// peak: ~0.3 ms for the forward of BERT-base attention (B 64, H 12, S 128, D 64; 3.2 GFLOP) and
// ~2.5x that for the backward. That is slower than cuBLAS's tensor-core GEMMs plus the fused
// masked softmax at S = 128; what this kernel saves is the [B, H, Sq, Sk] memory and its traffic
// (the probs tensor and the dropout mask are never stored). These kernels are the reference path;
// the bf16 tensor-core kernels (flash_tc_*, at the end of this file) are the fast one.

#include "common.cuh"

#define FA_THREADS 128
#define FA_WARPS 4
#define FA_ROWS 4
#define FA_BLOCK_Q 16
#define FA_BLOCK_K 32
#define FA_KEYS_PER_WARP 8
#define FA_QUERY_TILE 32  // queries per tile of flash_bwd_dkdv: one per lane, so the warp size
#define FA_MAX_HEAD_DIM 128
#define FA_DIMS_PER_LANE 4
#define FULL_MASK 0xffffffffu

static_assert(FA_WARPS * 32 == FA_THREADS, "a block is FA_WARPS warps");
static_assert(FA_WARPS * FA_ROWS == FA_BLOCK_Q, "the warps split the query tile");
static_assert(FA_WARPS * FA_KEYS_PER_WARP == FA_BLOCK_K, "the warps split the key tile");
static_assert(FA_BLOCK_K == 32 && FA_QUERY_TILE == 32, "one key (query) per lane");
static_assert(FA_DIMS_PER_LANE * 32 == FA_MAX_HEAD_DIM, "a lane owns head dims lane + 32 c");

// The sizes, strides and scalars of one call (Rust: cuda/src/ops/flash_attention.rs FlashParams,
// same field order). Strides are in elements over (b, h, row, d) for q, k, v, dO and over
// (b, h, i, j) for the mask.
struct FlashParams {
    i64 batch, heads, q_len, k_len, head_dim;
    i64 q_stride[4];
    i64 k_stride[4];
    i64 v_stride[4];
    i64 do_stride[4];
    i64 mask_stride[4];
    float scale;       // multiplies q · k
    float drop_p;      // dropout probability, compared in f32 (0: no dropout)
    float drop_scale;  // 1 / (1 - p) rounded to f32 (0 for p = 1)
    i32 has_mask;
    u64 seed;          // the Philox draw of the [B, H, Sq, Sk] probabilities
    u64 offset;
};

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

// Uniform element i of the draw at block `offset` (rng::uniform_at).
__device__ __forceinline__ float uniform_at(u64 seed, u64 offset, u64 i) {
    const uint4 w = philox_block(seed, offset + i / 4);
    const u32 r = (u32)(i & 3);
    const u32 word = r == 0 ? w.x : (r == 1 ? w.y : (r == 2 ? w.z : w.w));
    return word_to_unit(word);
}

// Dropout's factor for probability (b, h, i, j): drop_scale if kept, 0 if dropped, 1 without
// dropout.
__device__ __forceinline__ float keep_factor(const FlashParams& p, i64 bh, i64 i, i64 j) {
    if (p.drop_p <= 0.0f) return 1.0f;
    const u64 idx = (u64)((bh * p.q_len + i) * p.k_len + j);
    return uniform_at(p.seed, p.offset, idx) < p.drop_p ? 0.0f : p.drop_scale;
}

// z_ij = (q_i · k_j) * scale + mask_ij for a valid (i, j); -inf outside the matrix.
template <typename T>
__device__ __forceinline__ float logit(const FlashParams& p, const T* mask, i64 b, i64 h, i64 i, i64 j,
                                       float dot) {
    if (i >= p.q_len || j >= p.k_len) return neg_inf();
    if (!p.has_mask) return dot * p.scale;
    const i64 m = b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] + j * p.mask_stride[3];
    return fmaf(dot, p.scale, to_f32(mask[m]));
}

// dst[r * ld + d] = src[(row0 + r) * row_stride + d * d_stride] in f32 for r < n_rows, d < D;
// rows at or past `rows` (the operand's length) are zero. All threads of the block take part.
template <typename T>
__device__ void load_rows(float* dst, int ld, const T* src, i64 row_stride, i64 d_stride, i64 row0,
                          i64 rows, int n_rows, int D) {
    for (int e = threadIdx.x; e < n_rows * D; e += blockDim.x) {
        const int r = e / D, d = e - r * D;
        dst[r * ld + d] = row0 + r < rows ? to_f32(src[(row0 + r) * row_stride + d * d_stride]) : 0.0f;
    }
}

// Σ_d a[d] b[d] over two shared rows.
__device__ __forceinline__ float dot_rows(const float* a, const float* b, int D) {
    float s = 0.0f;
    for (int d = 0; d < D; ++d) s = fmaf(a[d], b[d], s);
    return s;
}

// ---- forward --------------------------------------------------------------------------------

template <typename T>
__device__ void flash_fwd(const T* q, const T* k, const T* v, const T* mask, T* out, float* lse,
                          FlashParams p) {
    DYNAMIC_SHARED(float, smem);
    const int D = (int)p.head_dim, ldk = D + 1;
    float* q_s = smem;                         // [FA_BLOCK_Q][D]
    float* k_s = q_s + FA_BLOCK_Q * D;         // [FA_BLOCK_K][D + 1]
    float* v_s = k_s + FA_BLOCK_K * ldk;       // [FA_BLOCK_K][D + 1]
    const i64 b = blockIdx.z, h = blockIdx.y, bh = b * p.heads + h;
    const i64 q0 = (i64)blockIdx.x * FA_BLOCK_Q;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T* qb = q + b * p.q_stride[0] + h * p.q_stride[1];
    const T* kb = k + b * p.k_stride[0] + h * p.k_stride[1];
    const T* vb = v + b * p.v_stride[0] + h * p.v_stride[1];
    load_rows(q_s, D, qb, p.q_stride[2], p.q_stride[3], q0, p.q_len, FA_BLOCK_Q, D);

    float m[FA_ROWS], l[FA_ROWS], acc[FA_ROWS][FA_DIMS_PER_LANE];
#pragma unroll
    for (int r = 0; r < FA_ROWS; ++r) {
        m[r] = neg_inf();
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < FA_DIMS_PER_LANE; ++c) acc[r][c] = 0.0f;
    }
    const int row_base = warp * FA_ROWS;  // this warp's first row within the tile

    for (i64 k0 = 0; k0 < p.k_len; k0 += FA_BLOCK_K) {
        __syncthreads();  // the previous tile is no longer read (and q_s is written)
        load_rows(k_s, ldk, kb, p.k_stride[2], p.k_stride[3], k0, p.k_len, FA_BLOCK_K, D);
        load_rows(v_s, ldk, vb, p.v_stride[2], p.v_stride[3], k0, p.k_len, FA_BLOCK_K, D);
        __syncthreads();
        const i64 j = k0 + lane;
        // Scores of this lane's key against the warp's rows.
        float pe[FA_ROWS];
#pragma unroll
        for (int r = 0; r < FA_ROWS; ++r) {
            const i64 i = q0 + row_base + r;
            const float z = logit(p, mask, b, h, i, j, dot_rows(q_s + (row_base + r) * D, k_s + lane * ldk, D));
            const float m_new = fmaxf(m[r], warp_reduce(z, MaxOp()));
            const float base = m_new == neg_inf() ? 0.0f : m_new;  // a row all -inf so far
            const float alpha = expf(m[r] - base);
            const float e = expf(z - base);
            l[r] = fmaf(l[r], alpha, warp_reduce(e, SumOp()));
            m[r] = m_new;
#pragma unroll
            for (int c = 0; c < FA_DIMS_PER_LANE; ++c) acc[r][c] *= alpha;
            pe[r] = (i < p.q_len && j < p.k_len) ? e * keep_factor(p, bh, i, j) : 0.0f;
        }
        // acc_r[d] += Σ_jj pe_r[jj] v[jj][d], lane owning d = lane + 32 c.
        for (int jj = 0; jj < FA_BLOCK_K; ++jj) {
            float vd[FA_DIMS_PER_LANE];
#pragma unroll
            for (int c = 0; c < FA_DIMS_PER_LANE; ++c) {
                const int d = lane + 32 * c;
                vd[c] = d < D ? v_s[jj * ldk + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < FA_ROWS; ++r) {
                const float pj = __shfl_sync(FULL_MASK, pe[r], jj);
#pragma unroll
                for (int c = 0; c < FA_DIMS_PER_LANE; ++c) acc[r][c] = fmaf(pj, vd[c], acc[r][c]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < FA_ROWS; ++r) {
        const i64 i = q0 + row_base + r;
        if (i >= p.q_len) continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        T* o = out + (bh * p.q_len + i) * D;
#pragma unroll
        for (int c = 0; c < FA_DIMS_PER_LANE; ++c) {
            const int d = lane + 32 * c;
            if (d < D) o[d] = from_f32<T>(acc[r][c] * inv);
        }
        if (lane == 0) lse[bh * p.q_len + i] = l[r] > 0.0f ? m[r] + logf(l[r]) : pos_inf();
    }
}

// ---- backward -------------------------------------------------------------------------------

// delta[row] = Σ_d dO[row][d] O[row][d] for the B*H*Sq rows (O contiguous, dO strided), one
// thread per row, summed in the order dot_rows sums dP_ij = dO_i · v_j: where the softmax is
// one-hot (O_i = v_j exactly), dP_ij - delta_i is then exactly 0, as dS is in exact arithmetic;
// a differently ordered sum would leave rounding noise there, which dQ and dK multiply by |k|
// and |q| (a relative gradient error of 5e-3 at logits near 1e4, found on the simulator).
template <typename T>
__device__ void flash_delta(const T* out, const T* d_out, float* delta, FlashParams p) {
    const i64 rows = p.batch * p.heads * p.q_len, D = p.head_dim;
    for (i64 row = global_thread(); row < rows; row += global_threads()) {
        const i64 i = row % p.q_len, bh = row / p.q_len, h = bh % p.heads, b = bh / p.heads;
        const T* g = d_out + b * p.do_stride[0] + h * p.do_stride[1] + i * p.do_stride[2];
        float s = 0.0f;
        for (i64 d = 0; d < D; ++d) s = fmaf(to_f32(g[d * p.do_stride[3]]), to_f32(out[row * D + d]), s);
        delta[row] = s;
    }
}

template <typename T>
__device__ void flash_bwd_dq(const T* q, const T* k, const T* v, const T* mask, const T* d_out,
                             const float* lse, const float* delta, T* dq, FlashParams p) {
    DYNAMIC_SHARED(float, smem);
    const int D = (int)p.head_dim, ldk = D + 1;
    float* q_s = smem;                         // [FA_BLOCK_Q][D]
    float* g_s = q_s + FA_BLOCK_Q * D;         // dO, [FA_BLOCK_Q][D]
    float* k_s = g_s + FA_BLOCK_Q * D;         // [FA_BLOCK_K][D + 1]
    float* v_s = k_s + FA_BLOCK_K * ldk;       // [FA_BLOCK_K][D + 1]
    const i64 b = blockIdx.z, h = blockIdx.y, bh = b * p.heads + h;
    const i64 q0 = (i64)blockIdx.x * FA_BLOCK_Q;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T* kb = k + b * p.k_stride[0] + h * p.k_stride[1];
    const T* vb = v + b * p.v_stride[0] + h * p.v_stride[1];
    load_rows(q_s, D, q + b * p.q_stride[0] + h * p.q_stride[1], p.q_stride[2], p.q_stride[3], q0,
              p.q_len, FA_BLOCK_Q, D);
    load_rows(g_s, D, d_out + b * p.do_stride[0] + h * p.do_stride[1], p.do_stride[2], p.do_stride[3],
              q0, p.q_len, FA_BLOCK_Q, D);
    const int row_base = warp * FA_ROWS;
    float row_lse[FA_ROWS], row_delta[FA_ROWS], acc[FA_ROWS][FA_DIMS_PER_LANE];
#pragma unroll
    for (int r = 0; r < FA_ROWS; ++r) {
        const i64 i = q0 + row_base + r;
        row_lse[r] = i < p.q_len ? lse[bh * p.q_len + i] : pos_inf();
        row_delta[r] = i < p.q_len ? delta[bh * p.q_len + i] : 0.0f;
#pragma unroll
        for (int c = 0; c < FA_DIMS_PER_LANE; ++c) acc[r][c] = 0.0f;
    }

    for (i64 k0 = 0; k0 < p.k_len; k0 += FA_BLOCK_K) {
        __syncthreads();
        load_rows(k_s, ldk, kb, p.k_stride[2], p.k_stride[3], k0, p.k_len, FA_BLOCK_K, D);
        load_rows(v_s, ldk, vb, p.v_stride[2], p.v_stride[3], k0, p.k_len, FA_BLOCK_K, D);
        __syncthreads();
        const i64 j = k0 + lane;
        float ds[FA_ROWS];
#pragma unroll
        for (int r = 0; r < FA_ROWS; ++r) {
            const i64 i = q0 + row_base + r;
            const float z = logit(p, mask, b, h, i, j, dot_rows(q_s + (row_base + r) * D, k_s + lane * ldk, D));
            const float prob = expf(z - row_lse[r]);
            ds[r] = 0.0f;
            if (prob > 0.0f) {
                const float dp = dot_rows(g_s + (row_base + r) * D, v_s + lane * ldk, D) * keep_factor(p, bh, i, j);
                ds[r] = prob * (dp - row_delta[r]);
            }
        }
        for (int jj = 0; jj < FA_BLOCK_K; ++jj) {
            float kd[FA_DIMS_PER_LANE];
#pragma unroll
            for (int c = 0; c < FA_DIMS_PER_LANE; ++c) {
                const int d = lane + 32 * c;
                kd[c] = d < D ? k_s[jj * ldk + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < FA_ROWS; ++r) {
                const float dsj = __shfl_sync(FULL_MASK, ds[r], jj);
#pragma unroll
                for (int c = 0; c < FA_DIMS_PER_LANE; ++c) acc[r][c] = fmaf(dsj, kd[c], acc[r][c]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < FA_ROWS; ++r) {
        const i64 i = q0 + row_base + r;
        if (i >= p.q_len) continue;
        T* o = dq + (bh * p.q_len + i) * D;
#pragma unroll
        for (int c = 0; c < FA_DIMS_PER_LANE; ++c) {
            const int d = lane + 32 * c;
            if (d < D) o[d] = from_f32<T>(acc[r][c] * p.scale);
        }
    }
}

template <typename T>
__device__ void flash_bwd_dkdv(const T* q, const T* k, const T* v, const T* mask, const T* d_out,
                               const float* lse, const float* delta, T* dk, T* dv, FlashParams p) {
    DYNAMIC_SHARED(float, smem);
    const int D = (int)p.head_dim, ldq = D + 1;
    float* k_s = smem;                         // [FA_BLOCK_K][D]
    float* v_s = k_s + FA_BLOCK_K * D;         // [FA_BLOCK_K][D]
    float* q_s = v_s + FA_BLOCK_K * D;         // [FA_QUERY_TILE][D + 1]
    float* g_s = q_s + FA_QUERY_TILE * ldq;    // dO, [FA_QUERY_TILE][D + 1]
    float* lse_s = g_s + FA_QUERY_TILE * ldq;  // [FA_QUERY_TILE]
    float* delta_s = lse_s + FA_QUERY_TILE;    // [FA_QUERY_TILE]
    const i64 b = blockIdx.z, h = blockIdx.y, bh = b * p.heads + h;
    const i64 k0 = (i64)blockIdx.x * FA_BLOCK_K;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T* qb = q + b * p.q_stride[0] + h * p.q_stride[1];
    const T* gb = d_out + b * p.do_stride[0] + h * p.do_stride[1];
    load_rows(k_s, D, k + b * p.k_stride[0] + h * p.k_stride[1], p.k_stride[2], p.k_stride[3], k0,
              p.k_len, FA_BLOCK_K, D);
    load_rows(v_s, D, v + b * p.v_stride[0] + h * p.v_stride[1], p.v_stride[2], p.v_stride[3], k0,
              p.k_len, FA_BLOCK_K, D);
    const int key_base = warp * FA_KEYS_PER_WARP;  // this warp's first key within the tile
    float dk_acc[FA_KEYS_PER_WARP][FA_DIMS_PER_LANE], dv_acc[FA_KEYS_PER_WARP][FA_DIMS_PER_LANE];
#pragma unroll
    for (int t = 0; t < FA_KEYS_PER_WARP; ++t)
#pragma unroll
        for (int c = 0; c < FA_DIMS_PER_LANE; ++c) dk_acc[t][c] = dv_acc[t][c] = 0.0f;

    for (i64 i0 = 0; i0 < p.q_len; i0 += FA_QUERY_TILE) {
        __syncthreads();
        load_rows(q_s, ldq, qb, p.q_stride[2], p.q_stride[3], i0, p.q_len, FA_QUERY_TILE, D);
        load_rows(g_s, ldq, gb, p.do_stride[2], p.do_stride[3], i0, p.q_len, FA_QUERY_TILE, D);
        if (threadIdx.x < FA_QUERY_TILE) {
            const i64 i = i0 + threadIdx.x;
            lse_s[threadIdx.x] = i < p.q_len ? lse[bh * p.q_len + i] : pos_inf();
            delta_s[threadIdx.x] = i < p.q_len ? delta[bh * p.q_len + i] : 0.0f;
        }
        __syncthreads();
        // This lane's query i against the warp's keys: Pd (for dV) and dS (for dK).
        const i64 i = i0 + lane;
        float pd[FA_KEYS_PER_WARP], ds[FA_KEYS_PER_WARP];
#pragma unroll
        for (int t = 0; t < FA_KEYS_PER_WARP; ++t) {
            const i64 j = k0 + key_base + t;
            const float* kr = k_s + (key_base + t) * D;
            const float z = logit(p, mask, b, h, i, j, dot_rows(q_s + lane * ldq, kr, D));
            const float prob = expf(z - lse_s[lane]);
            pd[t] = ds[t] = 0.0f;
            if (prob > 0.0f) {
                const float keep = keep_factor(p, bh, i, j);
                const float dp = dot_rows(g_s + lane * ldq, v_s + (key_base + t) * D, D) * keep;
                pd[t] = prob * keep;
                ds[t] = prob * (dp - delta_s[lane]);
            }
        }
        // dV_t[d] += Σ_ii pd_t[ii] dO[ii][d], dK_t[d] += Σ_ii ds_t[ii] q[ii][d].
        for (int ii = 0; ii < FA_QUERY_TILE; ++ii) {
            float qd[FA_DIMS_PER_LANE], gd[FA_DIMS_PER_LANE];
#pragma unroll
            for (int c = 0; c < FA_DIMS_PER_LANE; ++c) {
                const int d = lane + 32 * c;
                qd[c] = d < D ? q_s[ii * ldq + d] : 0.0f;
                gd[c] = d < D ? g_s[ii * ldq + d] : 0.0f;
            }
#pragma unroll
            for (int t = 0; t < FA_KEYS_PER_WARP; ++t) {
                const float pdi = __shfl_sync(FULL_MASK, pd[t], ii);
                const float dsi = __shfl_sync(FULL_MASK, ds[t], ii);
#pragma unroll
                for (int c = 0; c < FA_DIMS_PER_LANE; ++c) {
                    dv_acc[t][c] = fmaf(pdi, gd[c], dv_acc[t][c]);
                    dk_acc[t][c] = fmaf(dsi, qd[c], dk_acc[t][c]);
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < FA_KEYS_PER_WARP; ++t) {
        const i64 j = k0 + key_base + t;
        if (j >= p.k_len) continue;
        T* ko = dk + (bh * p.k_len + j) * D;
        T* vo = dv + (bh * p.k_len + j) * D;
#pragma unroll
        for (int c = 0; c < FA_DIMS_PER_LANE; ++c) {
            const int d = lane + 32 * c;
            if (d < D) {
                ko[d] = from_f32<T>(dk_acc[t][c] * p.scale);
                vo[d] = from_f32<T>(dv_acc[t][c]);
            }
        }
    }
}

#define FLASH_ENTRIES(T, NAME)                                                                      \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                       \
        flash_fwd_##NAME(const T* q, const T* k, const T* v, const T* mask, T* out, float* lse,    \
                         FlashParams p) {                                                          \
        flash_fwd<T>(q, k, v, mask, out, lse, p);                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                       \
        flash_delta_##NAME(const T* out, const T* d_out, float* delta, FlashParams p) {            \
        flash_delta<T>(out, d_out, delta, p);                                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                       \
        flash_bwd_dq_##NAME(const T* q, const T* k, const T* v, const T* mask, const T* d_out,     \
                            const float* lse, const float* delta, T* dq, FlashParams p) {          \
        flash_bwd_dq<T>(q, k, v, mask, d_out, lse, delta, dq, p);                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                       \
        flash_bwd_dkdv_##NAME(const T* q, const T* k, const T* v, const T* mask, const T* d_out,   \
                              const float* lse, const float* delta, T* dk, T* dv, FlashParams p) { \
        flash_bwd_dkdv<T>(q, k, v, mask, d_out, lse, delta, dk, dv, p);                            \
    }

FLASH_ENTRIES(float, f32)
FLASH_ENTRIES(f16, f16)
FLASH_ENTRIES(bf16, bf16)

// ==== bf16 tensor-core kernels ==================================================================
//
// The same three passes for bf16 operands with every product on the tensor cores
// (mma_bf16_m16n8k16: bf16 inputs, f32 accumulation; FlashAttention-2's tiling). The f32-math
// kernels above stay as the reference path (cuda/src/ops/flash_attention.rs FlashPath).
// - flash_tc_fwd_bf16: S = Q Kᵀ per 16x8 tile, the online softmax on S's fragments (each lane
//   holds rows g and g+8, columns 2t, 2t+1 of each 8-key tile; row max and sum over the 4 lanes
//   of a group by shuffles), then O += P V with P's fragments reused as the A operand (rounded to
//   bf16, as FlashAttention-2 does); l sums the unrounded f32 probabilities.
// - flash_tc_bwd_dq_bf16: S = Q Kᵀ and dP = dO Vᵀ, dS = P (dP keep - delta), dQ += dS K.
// - flash_tc_bwd_dkdv_bf16: the transposed products per key tile, Sᵀ = K Qᵀ and dPᵀ = V dOᵀ,
//   then dV += Pdᵀ dO and dK += dSᵀ Q.
// Dropout: when Sk % 4 == 0 (every row of the [B, H, Sq, Sk] draw starts on a Philox block),
// each Philox call gives the 4 keep decisions of one block (4 consecutive keys of one row) and
// lanes trade words by shuffles, so a lane makes one call per 4 decisions it needs; otherwise
// each decision takes its own call (keep_factor). Either way the draws equal the CPU's.
//
// Layout in shared memory (bf16 bits): tiles of rows [TC_TILE][ld] with ld = Dp + 8 (Dp = D
// rounded up to 16, zero-padded; the 8 extra halves shift rows across banks), and transposed
// tiles [Dp][TC_TILE + 8] for the operands read as B with the key (or query) index as k.
// Launch: TC_THREADS (128) = 4 warps; each warp owns 16 rows of the block's TC_TILE = 64 (queries
// for fwd and dQ: grid (ceil(Sq / 64), H, B); keys for dK/dV: grid (ceil(Sk / 64), H, B)) and
// streams tiles of 64 keys (queries). D <= FA_MAX_HEAD_DIM; shared memory per block (D = 128):
// 52 KiB fwd, 86 KiB dQ, 104.5 KiB dK/dV (D = 64: 27, 45, 54.5 KiB; opt-in above 48 KiB).
//
// Expected H100/H200 performance (unmeasured): the products reach the bf16 tensor cores; loads
// from global memory are 16-byte vectors when an operand's rows are contiguous and 16-byte
// aligned. At B 64, H 12, S 128, D 64 the forward is 3.2 GFLOP, i.e. tens of microseconds at
// 30-50% of the ~990 TFLOP/s dense bf16 peak.

#define TC_THREADS 128
#define TC_TILE 64
#define TC_NT_KEYS (TC_TILE / 8)            // 8-wide n-tiles of a 64-key (query) tile
#define TC_NT_DIMS (FA_MAX_HEAD_DIM / 8)    // 8-wide n-tiles of the largest head dim
#define TC_LDT (TC_TILE + 8)

static_assert(TC_THREADS / 32 * 16 == TC_TILE, "each warp owns 16 rows of the tile");

__device__ __forceinline__ u16* tc_smem_u16(void* p) { return static_cast<u16*>(p); }

// Rows [row0, row0 + TC_TILE) of a strided [S, D] bf16 operand into shared memory, zero past the
// operand's `rows` or past D (up to Dp): row-major at dst[r * ld + d] when `dst` is given, and
// transposed at dst_t[d * TC_LDT + r] when `dst_t` is. Contiguous 16-byte-aligned rows move as uint4.
__device__ void tc_load_tile(u16* dst, int ld, u16* dst_t, const bf16* src, i64 row_stride,
                             i64 d_stride, i64 row0, i64 rows, int D, int Dp) {
    const bool vec = d_stride == 1 && D % 8 == 0 && row_stride % 8 == 0 &&
                     ((u64)(size_t)src & 15u) == 0;
    if (vec) {
        const int chunks = Dp / 8;
        for (int e = threadIdx.x; e < TC_TILE * chunks; e += blockDim.x) {
            const int r = e / chunks, d0 = (e - r * chunks) * 8;
            uint4 w = {0u, 0u, 0u, 0u};
            if (row0 + r < rows && d0 < D) w = *reinterpret_cast<const uint4*>(src + (row0 + r) * row_stride + d0);
            if (dst) *reinterpret_cast<uint4*>(dst + r * ld + d0) = w;
            if (dst_t) {
                const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
                for (int c = 0; c < 8; ++c) dst_t[(d0 + c) * TC_LDT + r] = (u16)(words[c >> 1] >> (16 * (c & 1)));
            }
        }
        return;
    }
    for (int e = threadIdx.x; e < TC_TILE * Dp; e += blockDim.x) {
        const int r = e / Dp, d = e - r * Dp;
        const u16 x = row0 + r < rows && d < D ? src[(row0 + r) * row_stride + d * d_stride].bits : (u16)0;
        if (dst) dst[r * ld + d] = x;
        if (dst_t) dst_t[d * TC_LDT + r] = x;
    }
}

// The A fragment of rows [r0, r0 + 16), columns [k0, k0 + 16) of a row-major shared tile.
__device__ __forceinline__ void tc_frag_a(u32 (&a)[4], const u16* x, int ld, int r0, int k0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u16* p = x + (r0 + g) * ld + k0 + 2 * t;
    a[0] = *reinterpret_cast<const u32*>(p);
    a[1] = *reinterpret_cast<const u32*>(p + 8 * ld);
    a[2] = *reinterpret_cast<const u32*>(p + 8);
    a[3] = *reinterpret_cast<const u32*>(p + 8 * ld + 8);
}

// The B fragment of B[k][n] = y[n][k] for n in [n0, n0 + 8), k in [k0, k0 + 16): y row-major
// with the n index as its row (a K tile for Q Kᵀ, a transposed V tile for P V, ...).
__device__ __forceinline__ void tc_frag_b(u32 (&b)[2], const u16* y, int ld, int n0, int k0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u16* p = y + (n0 + g) * ld + k0 + 2 * t;
    b[0] = *reinterpret_cast<const u32*>(p);
    b[1] = *reinterpret_cast<const u32*>(p + 8);
}

// The A fragment of k-step kk from accumulator fragments c[2kk], c[2kk + 1] (16 rows x 16
// columns of a product): the C layout of two adjacent 8-column tiles is A's layout, rounded to bf16.
__device__ __forceinline__ void tc_frag_a_from_c(u32 (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack_bf16x2(from_f32<bf16>(c0[0]), from_f32<bf16>(c0[1]));
    a[1] = pack_bf16x2(from_f32<bf16>(c0[2]), from_f32<bf16>(c0[3]));
    a[2] = pack_bf16x2(from_f32<bf16>(c1[0]), from_f32<bf16>(c1[1]));
    a[3] = pack_bf16x2(from_f32<bf16>(c1[2]), from_f32<bf16>(c1[3]));
}

// acc[nt] += X[r0.., :] Y[n-tile nt, :]ᵀ over the padded head dim: the scores of a warp's 16 rows
// against a 64-row tile (x, y row-major with ld).
__device__ __forceinline__ void tc_scores(float (&acc)[TC_NT_KEYS][4], const u16* x, const u16* y, int ld,
                                          int r0, int Dp) {
#pragma unroll
    for (int nt = 0; nt < TC_NT_KEYS; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
    for (int k0 = 0; k0 < Dp; k0 += 16) {
        u32 a[4];
        tc_frag_a(a, x, ld, r0, k0);
#pragma unroll
        for (int nt = 0; nt < TC_NT_KEYS; ++nt) {
            u32 b[2];
            tc_frag_b(b, y, ld, nt * 8, k0);
            mma_bf16_m16n8k16(acc[nt], a, b);
        }
    }
}

// out[nt] += P yt over the 64-wide k dimension: P in C fragments (16 x 64), yt a transposed tile
// [Dp][TC_LDT] (B[k][n] = yt[n][k]); only the n-tiles below Dp.
__device__ __forceinline__ void tc_accumulate(float (&out)[TC_NT_DIMS][4], const float (&pc)[TC_NT_KEYS][4],
                                              const u16* yt, int Dp) {
#pragma unroll
    for (int kk = 0; kk < TC_NT_KEYS / 2; ++kk) {
        u32 a[4];
        tc_frag_a_from_c(a, pc[2 * kk], pc[2 * kk + 1]);
#pragma unroll
        for (int nt = 0; nt < TC_NT_DIMS; ++nt) {
            if (nt * 8 >= Dp) break;
            u32 b[2];
            tc_frag_b(b, yt, TC_LDT, nt * 8, kk * 16);
            mma_bf16_m16n8k16(out[nt], a, b);
        }
    }
}

__device__ __forceinline__ u32 uint4_word(uint4 w, int i) {
    return i == 0 ? w.x : (i == 1 ? w.y : (i == 2 ? w.z : w.w));
}

// Dropout factors of a lane's C fragment of n-tile `nt` of a 64x64 tile where the fragment's
// rows are queries (fwd, dQ): kf[e] for element e (rows i_row[e >> 1], key k_col0 + (e & 1)).
// Fast path (Sk % 4 == 0): the lane pair (t even, t odd) covers keys c4..c4+3 of rows r0 and r1;
// the even lane draws row r0's block, the odd lane row r1's, and each hands the other the two
// words it needs.
__device__ __forceinline__ void tc_keep_rows(float (&kf)[4], const FlashParams& p, i64 bh, const i64 (&i_row)[2],
                                             i64 j0) {
    if (p.drop_p <= 0.0f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) kf[e] = 1.0f;
        return;
    }
    if (p.k_len % 4 == 0) {
        const int t = threadIdx.x & 3;
        const i64 c4 = j0 & ~(i64)3, i = i_row[t & 1];
        const uint4 w = philox_block(p.seed, p.offset + (u64)((bh * p.q_len + i) * p.k_len + c4) / 4);
        const int mine = (t & 1) * 2;  // the words of this lane's keys in its block
        const u32 give0 = uint4_word(w, 2 - mine), give1 = uint4_word(w, 3 - mine);
        const u32 got0 = __shfl_xor_sync(FULL_MASK, give0, 1), got1 = __shfl_xor_sync(FULL_MASK, give1, 1);
        const u32 own0 = uint4_word(w, mine), own1 = uint4_word(w, mine + 1);
        // Row r0's words: own for the even lane, received for the odd one; row r1's the reverse.
        const u32 words[4] = {(t & 1) ? got0 : own0, (t & 1) ? got1 : own1, (t & 1) ? own0 : got0,
                              (t & 1) ? own1 : got1};
#pragma unroll
        for (int e = 0; e < 4; ++e) kf[e] = word_to_unit(words[e]) < p.drop_p ? 0.0f : p.drop_scale;
        return;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) kf[e] = keep_factor(p, bh, i_row[e >> 1], j0 + (e & 1));
}

// The same for the transposed tiles of dK/dV, where the fragment's rows are keys j_row[0..2]
// (rows g, g+8) and its columns queries i0, i0 + 1. Fast path: the 4 lanes with the same t and
// g = 4m..4m+3 need 4 blocks (queries i0, i0+1 x key groups of rows g and g+8); lane m' draws one
// and three xor shuffles hand each lane its word of the other three.
__device__ __forceinline__ void tc_keep_cols(float (&kf)[4], const FlashParams& p, i64 bh, const i64 (&j_row)[2],
                                             i64 i0) {
    if (p.drop_p <= 0.0f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) kf[e] = 1.0f;
        return;
    }
    if (p.k_len % 4 == 0) {
        const int r = ((threadIdx.x & 31) >> 2) & 3;  // g % 4: this lane's key within its group of 4
        // Block r: query i0 + (r & 1), the key group of row (r >> 1) (g or g+8).
        const i64 i = i0 + (r & 1), c4 = j_row[r >> 1] & ~(i64)3;
        const uint4 w = philox_block(p.seed, p.offset + (u64)((bh * p.q_len + i) * p.k_len + c4) / 4);
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            // Sender r' gives word r' ^ s of its block; this lane gets word r of block r ^ s.
            const u32 give = uint4_word(w, r ^ s);
            const u32 got = s == 0 ? give : __shfl_xor_sync(FULL_MASK, give, 4 * s);
            const int blk = r ^ s;  // element (row blk >> 1, query blk & 1)
            kf[2 * (blk >> 1) + (blk & 1)] = word_to_unit(got) < p.drop_p ? 0.0f : p.drop_scale;
        }
        return;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) kf[e] = keep_factor(p, bh, i0 + (e & 1), j_row[e >> 1]);
}

struct TcGeometry {
    int D, Dp, ld;
};
__device__ __forceinline__ TcGeometry tc_geometry(const FlashParams& p) {
    TcGeometry g;
    g.D = (int)p.head_dim;
    g.Dp = (g.D + 15) & ~15;
    g.ld = g.Dp + 8;
    return g;
}

// Writes a warp's 16 x Dp accumulator rows (times `mul`) to dst[row][d] (contiguous [S, D]) for
// rows < n.
__device__ __forceinline__ void tc_store_rows(bf16* dst, const float (&acc)[TC_NT_DIMS][4], const float (&mul)[2],
                                              i64 row0, i64 n, int D) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nt = 0; nt < TC_NT_DIMS; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const i64 row = row0 + g + 8 * (e >> 1);
            const int d = nt * 8 + 2 * t + (e & 1);
            if (row < n && d < D) dst[row * D + d] = from_f32<bf16>(acc[nt][e] * mul[e >> 1]);
        }
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
    flash_tc_fwd_bf16(const bf16* q, const bf16* k, const bf16* v, const bf16* mask, bf16* out, float* lse,
                      FlashParams p) {
    DYNAMIC_SHARED(uint4, tc_smem);
    const TcGeometry G = tc_geometry(p);
    u16* q_s = tc_smem_u16(tc_smem);          // [64][ld]
    u16* k_s = q_s + TC_TILE * G.ld;        // [64][ld]
    u16* vt_s = k_s + TC_TILE * G.ld;       // [Dp][TC_LDT]
    const i64 b = blockIdx.z, h = blockIdx.y, bh = b * p.heads + h;
    const i64 q0 = (i64)blockIdx.x * TC_TILE;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int r0 = warp * 16;
    const bf16* kb = k + b * p.k_stride[0] + h * p.k_stride[1];
    const bf16* vb = v + b * p.v_stride[0] + h * p.v_stride[1];
    tc_load_tile(q_s, G.ld, nullptr, q + b * p.q_stride[0] + h * p.q_stride[1], p.q_stride[2], p.q_stride[3], q0,
                 p.q_len, G.D, G.Dp);
    const i64 i_row[2] = {q0 + r0 + g, q0 + r0 + g + 8};
    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f}, o[TC_NT_DIMS][4];
#pragma unroll
    for (int nt = 0; nt < TC_NT_DIMS; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[nt][e] = 0.0f;

    for (i64 k0 = 0; k0 < p.k_len; k0 += TC_TILE) {
        __syncthreads();  // the previous tiles are no longer read
        tc_load_tile(k_s, G.ld, nullptr, kb, p.k_stride[2], p.k_stride[3], k0, p.k_len, G.D, G.Dp);
        // V only transposed: the B operand of P V has the keys along k.
        tc_load_tile(nullptr, G.ld, vt_s, vb, p.v_stride[2], p.v_stride[3], k0, p.k_len, G.D, G.Dp);
        __syncthreads();
        float s[TC_NT_KEYS][4];
        tc_scores(s, q_s, k_s, G.ld, r0, G.Dp);
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float mx = neg_inf();
#pragma unroll
            for (int nt = 0; nt < TC_NT_KEYS; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float z = logit(p, mask, b, h, i_row[rr], k0 + nt * 8 + 2 * t + e, s[nt][2 * rr + e]);
                    s[nt][2 * rr + e] = z;
                    mx = fmaxf(mx, z);
                }
            mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
            const float m_new = fmaxf(m[rr], mx);
            const float base = m_new == neg_inf() ? 0.0f : m_new;  // a row all -inf so far
            const float alpha = expf(m[rr] - base);
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < TC_NT_KEYS; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float pe = expf(s[nt][2 * rr + e] - base);
                    s[nt][2 * rr + e] = pe;
                    sum += pe;
                }
            sum += __shfl_xor_sync(FULL_MASK, sum, 1);
            sum += __shfl_xor_sync(FULL_MASK, sum, 2);
            l[rr] = fmaf(l[rr], alpha, sum);
            m[rr] = m_new;
#pragma unroll
            for (int nt = 0; nt < TC_NT_DIMS; ++nt) {
                o[nt][2 * rr] *= alpha;
                o[nt][2 * rr + 1] *= alpha;
            }
        }
#pragma unroll
        for (int nt = 0; nt < TC_NT_KEYS; ++nt) {
            float kf[4];
            tc_keep_rows(kf, p, bh, i_row, k0 + nt * 8 + 2 * t);
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] *= kf[e];
        }
        tc_accumulate(o, s, vt_s, G.Dp);
    }
    const float inv[2] = {l[0] > 0.0f ? 1.0f / l[0] : 0.0f, l[1] > 0.0f ? 1.0f / l[1] : 0.0f};
    tc_store_rows(out + bh * p.q_len * G.D, o, inv, q0 + r0, p.q_len, G.D);
    if (t == 0)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr)
            if (i_row[rr] < p.q_len) lse[bh * p.q_len + i_row[rr]] = l[rr] > 0.0f ? m[rr] + logf(l[rr]) : pos_inf();
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
    flash_tc_bwd_dq_bf16(const bf16* q, const bf16* k, const bf16* v, const bf16* mask, const bf16* d_out,
                         const float* lse, const float* delta, bf16* dq, FlashParams p) {
    DYNAMIC_SHARED(uint4, tc_smem);
    const TcGeometry G = tc_geometry(p);
    u16* q_s = tc_smem_u16(tc_smem);          // [64][ld]
    u16* g_s = q_s + TC_TILE * G.ld;        // dO, [64][ld]
    u16* k_s = g_s + TC_TILE * G.ld;        // [64][ld]
    u16* v_s = k_s + TC_TILE * G.ld;        // [64][ld]
    u16* kt_s = v_s + TC_TILE * G.ld;       // K transposed, [Dp][TC_LDT]
    const i64 b = blockIdx.z, h = blockIdx.y, bh = b * p.heads + h;
    const i64 q0 = (i64)blockIdx.x * TC_TILE;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int r0 = warp * 16;
    const bf16* kb = k + b * p.k_stride[0] + h * p.k_stride[1];
    const bf16* vb = v + b * p.v_stride[0] + h * p.v_stride[1];
    tc_load_tile(q_s, G.ld, nullptr, q + b * p.q_stride[0] + h * p.q_stride[1], p.q_stride[2], p.q_stride[3], q0,
                 p.q_len, G.D, G.Dp);
    tc_load_tile(g_s, G.ld, nullptr, d_out + b * p.do_stride[0] + h * p.do_stride[1], p.do_stride[2],
                 p.do_stride[3], q0, p.q_len, G.D, G.Dp);
    const i64 i_row[2] = {q0 + r0 + g, q0 + r0 + g + 8};
    float row_lse[2], row_delta[2], acc[TC_NT_DIMS][4];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        row_lse[rr] = i_row[rr] < p.q_len ? lse[bh * p.q_len + i_row[rr]] : pos_inf();
        row_delta[rr] = i_row[rr] < p.q_len ? delta[bh * p.q_len + i_row[rr]] : 0.0f;
    }
#pragma unroll
    for (int nt = 0; nt < TC_NT_DIMS; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;

    for (i64 k0 = 0; k0 < p.k_len; k0 += TC_TILE) {
        __syncthreads();
        tc_load_tile(k_s, G.ld, kt_s, kb, p.k_stride[2], p.k_stride[3], k0, p.k_len, G.D, G.Dp);
        tc_load_tile(v_s, G.ld, nullptr, vb, p.v_stride[2], p.v_stride[3], k0, p.k_len, G.D, G.Dp);
        __syncthreads();
        float s[TC_NT_KEYS][4], dp[TC_NT_KEYS][4];
        tc_scores(s, q_s, k_s, G.ld, r0, G.Dp);
        tc_scores(dp, g_s, v_s, G.ld, r0, G.Dp);
#pragma unroll
        for (int nt = 0; nt < TC_NT_KEYS; ++nt) {
            const i64 j0 = k0 + nt * 8 + 2 * t;
            float kf[4];
            tc_keep_rows(kf, p, bh, i_row, j0);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int rr = e >> 1;
                const float z = logit(p, mask, b, h, i_row[rr], j0 + (e & 1), s[nt][e]);
                const float prob = expf(z - row_lse[rr]);
                s[nt][e] = prob > 0.0f ? prob * (dp[nt][e] * kf[e] - row_delta[rr]) : 0.0f;  // dS
            }
        }
        tc_accumulate(acc, s, kt_s, G.Dp);
    }
    const float mul[2] = {p.scale, p.scale};
    tc_store_rows(dq + bh * p.q_len * G.D, acc, mul, q0 + r0, p.q_len, G.D);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
    flash_tc_bwd_dkdv_bf16(const bf16* q, const bf16* k, const bf16* v, const bf16* mask, const bf16* d_out,
                           const float* lse, const float* delta, bf16* dk, bf16* dv, FlashParams p) {
    DYNAMIC_SHARED(uint4, tc_smem);
    const TcGeometry G = tc_geometry(p);
    u16* k_s = tc_smem_u16(tc_smem);          // [64][ld]
    u16* v_s = k_s + TC_TILE * G.ld;        // [64][ld]
    u16* q_s = v_s + TC_TILE * G.ld;        // [64][ld]
    u16* g_s = q_s + TC_TILE * G.ld;        // dO, [64][ld]
    u16* qt_s = g_s + TC_TILE * G.ld;       // Q transposed, [Dp][TC_LDT]
    u16* gt_s = qt_s + G.Dp * TC_LDT;       // dO transposed, [Dp][TC_LDT]
    float* lse_s = reinterpret_cast<float*>(gt_s + G.Dp * TC_LDT);  // [64]
    float* delta_s = lse_s + TC_TILE;                                // [64]
    const i64 b = blockIdx.z, h = blockIdx.y, bh = b * p.heads + h;
    const i64 k0 = (i64)blockIdx.x * TC_TILE;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int r0 = warp * 16;
    const bf16* qb = q + b * p.q_stride[0] + h * p.q_stride[1];
    const bf16* gb = d_out + b * p.do_stride[0] + h * p.do_stride[1];
    tc_load_tile(k_s, G.ld, nullptr, k + b * p.k_stride[0] + h * p.k_stride[1], p.k_stride[2], p.k_stride[3], k0,
                 p.k_len, G.D, G.Dp);
    tc_load_tile(v_s, G.ld, nullptr, v + b * p.v_stride[0] + h * p.v_stride[1], p.v_stride[2], p.v_stride[3], k0,
                 p.k_len, G.D, G.Dp);
    const i64 j_row[2] = {k0 + r0 + g, k0 + r0 + g + 8};
    float dk_acc[TC_NT_DIMS][4], dv_acc[TC_NT_DIMS][4];
#pragma unroll
    for (int nt = 0; nt < TC_NT_DIMS; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk_acc[nt][e] = dv_acc[nt][e] = 0.0f;

    for (i64 i0 = 0; i0 < p.q_len; i0 += TC_TILE) {
        __syncthreads();
        tc_load_tile(q_s, G.ld, qt_s, qb, p.q_stride[2], p.q_stride[3], i0, p.q_len, G.D, G.Dp);
        tc_load_tile(g_s, G.ld, gt_s, gb, p.do_stride[2], p.do_stride[3], i0, p.q_len, G.D, G.Dp);
        if (threadIdx.x < TC_TILE) {
            const i64 i = i0 + threadIdx.x;
            lse_s[threadIdx.x] = i < p.q_len ? lse[bh * p.q_len + i] : pos_inf();
            delta_s[threadIdx.x] = i < p.q_len ? delta[bh * p.q_len + i] : 0.0f;
        }
        __syncthreads();
        // Sᵀ (keys x queries) and dPᵀ, then Pdᵀ (into st) and dSᵀ (into dpt).
        float st[TC_NT_KEYS][4], dpt[TC_NT_KEYS][4];
        tc_scores(st, k_s, q_s, G.ld, r0, G.Dp);
        tc_scores(dpt, v_s, g_s, G.ld, r0, G.Dp);
#pragma unroll
        for (int nt = 0; nt < TC_NT_KEYS; ++nt) {
            const int c = nt * 8 + 2 * t;  // this lane's first query within the tile
            float kf[4];
            tc_keep_cols(kf, p, bh, j_row, i0 + c);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int ci = c + (e & 1);
                const float z = logit(p, mask, b, h, i0 + ci, j_row[e >> 1], st[nt][e]);
                const float prob = expf(z - lse_s[ci]);
                const bool live = prob > 0.0f;
                st[nt][e] = live ? prob * kf[e] : 0.0f;
                dpt[nt][e] = live ? prob * (dpt[nt][e] * kf[e] - delta_s[ci]) : 0.0f;
            }
        }
        tc_accumulate(dv_acc, st, gt_s, G.Dp);
        tc_accumulate(dk_acc, dpt, qt_s, G.Dp);
    }
    const float one[2] = {1.0f, 1.0f}, mul[2] = {p.scale, p.scale};
    tc_store_rows(dk + bh * p.k_len * G.D, dk_acc, mul, k0 + r0, p.k_len, G.D);
    tc_store_rows(dv + bh * p.k_len * G.D, dv_acc, one, k0 + r0, p.k_len, G.D);
}
