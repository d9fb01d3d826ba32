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
// (the probs tensor and the dropout mask are never stored). A tensor-core (mma.sync) version of the
// same tiling is the next step.

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
