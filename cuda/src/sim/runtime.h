// runtime.h: the CUDA dialect of cuda/kernels/*.cu for the host compiler, and the runtime that
// executes a launch with CUDA's semantics on the CPU (the CUDA simulator, COTMAE_CUDA_SIM=1).
//
// Two parts, one file (embedded in the Rust crate by include_str!, see compile.rs):
// 1. The dialect, included at the top of every kernel file compiled by g++ (C++20): the qualifiers
//    (__global__, __device__, __shared__ as per-block `static thread_local` storage, ...), the
//    built-in variables (threadIdx, blockIdx, blockDim, gridDim: read from the running simulated
//    thread), vector types, barriers (__syncthreads, __syncthreads_or), warp shuffles and votes,
//    atomics (std::atomic_ref), explicitly rounded arithmetic and the bit casts. It defines
//    COTMAE_SIM, which common.cuh tests where it needs a twin of inline PTX.
// 2. The runtime (compiled once into its own library with COTMAE_SIM_RUNTIME_IMPL defined, loaded
//    before any kernel library): `cotmae_sim_launch` runs a grid. Blocks run one after another in
//    a seeded, varied order; the threads of a block are cooperative fibers (own stacks, a small
//    x86-64 context switch), resumed in a seeded random order, each running until it reaches a
//    barrier or exits, so __syncthreads is a real barrier and a missing one shows as a wrong
//    result. Warp shuffles and votes are barriers among the lanes of their mask. A thread that
//    exits counts as arrived at block barriers (as on hardware); a lane of a shuffle's mask that
//    exited, or a block where nothing can run and not every thread has exited (a deadlock), is
//    an error naming the kernel. A SIGSEGV/SIGBUS inside a launch (a kernel touching a guard page
//    of a simulated buffer, see memory.rs) jumps back to the launch, which reports the address
//    and whether it was a read or a write.
//
// Limits: x86-64 Linux only (the context switch, REG_ERR); one launch at a time per OS thread.

#define COTMAE_SIM 1

// Every system header comes first, before the macros below could reach into it.
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <atomic>
#include <type_traits>
#include <utility>
#ifdef COTMAE_SIM_RUNTIME_IMPL
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <vector>
#endif

// ---- qualifiers ---------------------------------------------------------------------------------

#ifdef COTMAE_SIM_SCAN
// The kernel-name scan (compile.rs) preprocesses a file with this marker in place of __global__.
#define __global__ COTMAE_SIM_KERNEL
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __restrict__ __restrict
// Shared memory is per block; a block's threads are fibers of one OS thread and blocks run one
// after another, so thread-local static storage is exactly one copy per running block.
#define __shared__ static thread_local

// ---- built-in types and variables ---------------------------------------------------------------

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };

// What a simulated thread knows of itself (constant for its lifetime).
struct cotmae_sim_thread {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    unsigned int lane;    // linear thread index % 32
};

extern "C" {
// The running simulated thread. `const`: the result never changes while one thread runs, so the
// compiler may keep it across a barrier.
const cotmae_sim_thread* cotmae_sim_self(void) __attribute__((const));
// Block barrier; returns the OR of every thread's `pred` (for __syncthreads_or).
int cotmae_sim_syncthreads(int pred);
// Warp barrier among the lanes of `mask`: each deposits `value`; returns the 32 lanes' values.
const uint64_t* cotmae_sim_warp_exchange(unsigned int mask, uint64_t value);
// The same with four words per lane: each deposits values[0..4]; returns [32][4] words.
const uint64_t* cotmae_sim_warp_exchange4(unsigned int mask, const uint64_t* values);
// Ends the launch with an error naming the kernel.
[[noreturn]] void cotmae_sim_fail(const char* what);
// The launch's dynamic shared memory.
void* cotmae_sim_dynamic_shared(void);
}

#define threadIdx (cotmae_sim_self()->thread_idx)
#define blockIdx (cotmae_sim_self()->block_idx)
#define blockDim (cotmae_sim_self()->block_dim)
#define gridDim (cotmae_sim_self()->grid_dim)
#define warpSize 32

// ---- barriers, shuffles, votes ------------------------------------------------------------------

inline void __syncthreads() { cotmae_sim_syncthreads(0); }
inline int __syncthreads_or(int pred) { return cotmae_sim_syncthreads(pred != 0); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) { cotmae_sim_warp_exchange(mask, 0); }

inline float cotmae_sim_bit_cast_u32_f32(uint32_t v) {
    float f;
    memcpy(&f, &v, sizeof f);
    return f;
}

namespace cotmae_sim {

template <typename T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}

template <typename T> inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

// Lane `src`'s value, after checking it takes part in the exchange.
template <typename T> inline T read_lane(const uint64_t* all, unsigned int mask, int src) {
    if (!((mask >> src) & 1u)) cotmae_sim_fail("a warp shuffle reads a lane outside its mask");
    return from_bits<T>(all[src]);
}

}  // namespace cotmae_sim

template <typename T> inline T __shfl_sync(unsigned int mask, T v, int src, int width = 32) {
    const uint64_t* all = cotmae_sim_warp_exchange(mask, cotmae_sim::to_bits(v));
    const int lane = (int)cotmae_sim_self()->lane;
    return cotmae_sim::read_lane<T>(all, mask, (lane & ~(width - 1)) + (src & (width - 1)));
}

template <typename T> inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
    const uint64_t* all = cotmae_sim_warp_exchange(mask, cotmae_sim::to_bits(v));
    const int lane = (int)cotmae_sim_self()->lane, src = lane ^ lane_mask;
    // A source in a later group of `width` lanes reads the caller's own value.
    if ((src & ~(width - 1)) > (lane & ~(width - 1))) return v;
    return cotmae_sim::read_lane<T>(all, mask, src);
}

template <typename T> inline T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    const uint64_t* all = cotmae_sim_warp_exchange(mask, cotmae_sim::to_bits(v));
    const int lane = (int)cotmae_sim_self()->lane, src = lane + (int)delta;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) return v;
    return cotmae_sim::read_lane<T>(all, mask, src);
}

template <typename T> inline T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    const uint64_t* all = cotmae_sim_warp_exchange(mask, cotmae_sim::to_bits(v));
    const int lane = (int)cotmae_sim_self()->lane, src = lane - (int)delta;
    if (src < (lane & ~(width - 1))) return v;
    return cotmae_sim::read_lane<T>(all, mask, src);
}

inline unsigned int __ballot_sync(unsigned int mask, int pred) {
    const uint64_t* all = cotmae_sim_warp_exchange(mask, pred != 0);
    unsigned int bits = 0;
    for (int l = 0; l < 32; ++l)
        if (((mask >> l) & 1u) && all[l]) bits |= 1u << l;
    return bits;
}
inline int __any_sync(unsigned int mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned int mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// ---- tensor cores: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 --------------------------
// D = A B + C for one warp: A 16x16 (row-major), B 16x8 (column-major), C and D 16x8 f32, each
// spread over the 32 lanes as the PTX ISA's "Matrix Fragments for mma.m16n8k16 with floating point
// type" lays them out (g = lane / 4, t = lane % 4; the lower-numbered element in the low half of
// each 32-bit register):
//   A: a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9],
//      a[3] = A[g+8][2t+8, 2t+9];
//   B: b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g];
//   C, D: c[0], c[1] = C[g][2t, 2t+1], c[2], c[3] = C[g+8][2t, 2t+1].
// A warp collective: all 32 lanes must arrive (the instruction is .sync.aligned), and each lane's
// A and B registers are exchanged at that barrier; C stays with its lane. Each element of D is the
// sum of the 16 exact bf16 products and C, summed in double and rounded once to f32 (the hardware
// adds with f32-or-better precision in an unspecified order, so it may differ in the last bits).
inline float cotmae_sim_bf16_lo(uint32_t w) { return cotmae_sim_bit_cast_u32_f32(w << 16); }
inline float cotmae_sim_bf16_hi(uint32_t w) { return cotmae_sim_bit_cast_u32_f32(w & 0xffff0000u); }

// Where the fragment layouts put A[row][k] and B[k][col]: the lane, the register, the half.
inline float cotmae_sim_mma_a(const uint64_t* all, int row, int k) {
    const int lane = 4 * (row & 7) + ((k & 7) >> 1), reg = (row >> 3) + 2 * (k >> 3);
    const uint32_t w = (uint32_t)(all[4 * lane + (reg >> 1)] >> (32 * (reg & 1)));
    return (k & 1) ? cotmae_sim_bf16_hi(w) : cotmae_sim_bf16_lo(w);
}
inline float cotmae_sim_mma_b(const uint64_t* all, int k, int col) {
    const int lane = 4 * col + ((k & 7) >> 1), reg = k >> 3;
    const uint32_t w = (uint32_t)(all[4 * lane + 2] >> (32 * reg));
    return (k & 1) ? cotmae_sim_bf16_hi(w) : cotmae_sim_bf16_lo(w);
}

inline void cotmae_sim_mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
    // Words per lane: [a0 | a1 << 32, a2 | a3 << 32, b0 | b1 << 32, unused].
    const uint64_t mine[4] = {a[0] | (uint64_t)a[1] << 32, a[2] | (uint64_t)a[3] << 32,
                              b[0] | (uint64_t)b[1] << 32, 0};
    const uint64_t* all = cotmae_sim_warp_exchange4(0xffffffffu, mine);
    const int lane = (int)cotmae_sim_self()->lane, g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
        double s = (double)c[e];
        for (int k = 0; k < 16; ++k)
            s += (double)cotmae_sim_mma_a(all, row, k) * (double)cotmae_sim_mma_b(all, k, col);
        d[e] = (float)s;
    }
}

// ---- atomics (one block runs at a time, but the read-modify-write is still indivisible) ---------

#define COTMAE_SIM_ATOMIC(NAME, T, EXPR)                                                            \
    inline T NAME(T* p, T v) { return EXPR; }
COTMAE_SIM_ATOMIC(atomicAdd, float, std::atomic_ref<float>(*p).fetch_add(v))
COTMAE_SIM_ATOMIC(atomicAdd, double, std::atomic_ref<double>(*p).fetch_add(v))
COTMAE_SIM_ATOMIC(atomicAdd, int, std::atomic_ref<int>(*p).fetch_add(v))
COTMAE_SIM_ATOMIC(atomicAdd, unsigned int, std::atomic_ref<unsigned int>(*p).fetch_add(v))
COTMAE_SIM_ATOMIC(atomicAdd, unsigned long long, std::atomic_ref<unsigned long long>(*p).fetch_add(v))
COTMAE_SIM_ATOMIC(atomicExch, int, std::atomic_ref<int>(*p).exchange(v))
COTMAE_SIM_ATOMIC(atomicExch, unsigned int, std::atomic_ref<unsigned int>(*p).exchange(v))
COTMAE_SIM_ATOMIC(atomicExch, unsigned long long, std::atomic_ref<unsigned long long>(*p).exchange(v))
#undef COTMAE_SIM_ATOMIC

template <typename T> inline T cotmae_sim_atomic_cas(T* p, T compare, T v) {
    std::atomic_ref<T>(*p).compare_exchange_strong(compare, v);
    return compare;  // the old value either way
}
inline int atomicCAS(int* p, int c, int v) { return cotmae_sim_atomic_cas(p, c, v); }
inline unsigned int atomicCAS(unsigned int* p, unsigned int c, unsigned int v) {
    return cotmae_sim_atomic_cas(p, c, v);
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
    return cotmae_sim_atomic_cas(p, c, v);
}
template <typename T> inline T cotmae_sim_atomic_max(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {}
    return old;
}
template <typename T> inline T cotmae_sim_atomic_min(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {}
    return old;
}
inline int atomicMax(int* p, int v) { return cotmae_sim_atomic_max(p, v); }
inline unsigned int atomicMax(unsigned int* p, unsigned int v) { return cotmae_sim_atomic_max(p, v); }
inline int atomicMin(int* p, int v) { return cotmae_sim_atomic_min(p, v); }
inline unsigned int atomicMin(unsigned int* p, unsigned int v) { return cotmae_sim_atomic_min(p, v); }

// ---- arithmetic: explicitly rounded operations, bit casts, integer helpers -----------------------
// Kernels are compiled with -ffp-contract=off, so each of these is exactly one IEEE operation in
// round-to-nearest-even, as on the GPU.

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

template <typename To, typename From> inline To cotmae_sim_bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit casts keep the size");
    To t;
    memcpy(&t, &v, sizeof(To));
    return t;
}
inline float __int_as_float(int v) { return cotmae_sim_bit_cast<float>(v); }
inline float __uint_as_float(unsigned int v) { return cotmae_sim_bit_cast<float>(v); }
inline int __float_as_int(float v) { return cotmae_sim_bit_cast<int>(v); }
inline unsigned int __float_as_uint(float v) { return cotmae_sim_bit_cast<unsigned int>(v); }
inline double __longlong_as_double(long long v) { return cotmae_sim_bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return cotmae_sim_bit_cast<long long>(v); }

// f64 -> f32 rounding toward zero: round to nearest, then step one ulp toward zero when that
// moved away from zero (exact: the nearest float and its neighbour toward zero bracket d).
inline float __double2float_rz(double d) {
    float f = (float)d;
    if (d == d && fabs((double)f) > fabs(d)) f = nextafterf(f, 0.0f);
    return f;
}

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline int __clz(unsigned int v) { return v ? __builtin_clz(v) : 32; }
inline int __ffs(unsigned int v) { return __builtin_ffs((int)v); }

// CUDA's overloaded min / max of the integer and float types.
#define COTMAE_SIM_MINMAX(T)                                                                        \
    inline T min(T a, T b) { return b < a ? b : a; }                                               \
    inline T max(T a, T b) { return a < b ? b : a; }
COTMAE_SIM_MINMAX(int)
COTMAE_SIM_MINMAX(unsigned int)
COTMAE_SIM_MINMAX(long long)
COTMAE_SIM_MINMAX(unsigned long long)
#undef COTMAE_SIM_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- entry points -------------------------------------------------------------------------------

namespace cotmae_sim {

// Calls kernel `k` with its arguments read from `args` (pointers to each value, in the kernel's
// parameter order, as cuLaunchKernel takes them) through the kernel's own parameter types.
template <typename... A, size_t... I>
inline void invoke_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <typename... A> inline void invoke(void (*k)(A...), void** args) {
    invoke_with(k, args, std::index_sequence_for<A...>{});
}

}  // namespace cotmae_sim

// ---- the launch interface (shared with cuda/src/sim/launch.rs) ----------------------------------

extern "C" {
struct cotmae_sim_launch_params {
    const char* kernel;
    void (*entry)(void**);
    void** args;
    unsigned int grid[3];
    unsigned int block[3];
    unsigned int shared_bytes;
    unsigned int pad;
    uint64_t seed;
};

// code: 0 done, 1 memory fault (fault_address, fault_write), 2 error (message).
struct cotmae_sim_launch_result {
    int code;
    int fault_write;
    uint64_t fault_address;
    char message[512];
};

int cotmae_sim_launch(const cotmae_sim_launch_params* p, cotmae_sim_launch_result* r);
// Installs the fault handler (once per process; later calls do nothing). 0 on success.
int cotmae_sim_install_fault_handler(void);
}

// =================================================================================================
#ifdef COTMAE_SIM_RUNTIME_IMPL

// The context switch: saves the callee-saved registers, MXCSR and the x87 control word on the
// current stack, stores the stack pointer in *save, and resumes the context whose stack pointer is
// `next`. A new fiber's stack is prepared (prepare_stack) so that resuming it "returns" into
// cotmae_sim_fiber_start with r12 = its argument and r13 = its function.
extern "C" void cotmae_sim_switch(void** save, void* next);
extern "C" void cotmae_sim_fiber_start(void);
asm(R"(
    .text
    .p2align 4
    .globl cotmae_sim_switch
    .hidden cotmae_sim_switch
    .type cotmae_sim_switch, @function
cotmae_sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cotmae_sim_switch, .-cotmae_sim_switch

    .p2align 4
    .globl cotmae_sim_fiber_start
    .hidden cotmae_sim_fiber_start
    .type cotmae_sim_fiber_start, @function
cotmae_sim_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size cotmae_sim_fiber_start, .-cotmae_sim_fiber_start
)");

namespace {

constexpr size_t PAGE = 4096;
constexpr size_t STACK_BYTES = 256 * 1024;        // per simulated thread, plus a guard page
constexpr size_t MAX_THREADS = 1024;
constexpr size_t MAX_DYNAMIC_SHARED = 227 * 1024;  // the opt-in maximum of sm_90

enum State { READY, AT_BLOCK_BARRIER, AT_WARP_BARRIER, EXITED };

struct Fiber {
    cotmae_sim_thread self;
    void* sp;
    State state;
    int pred;           // __syncthreads_or: the thread's predicate, then the block's OR
    unsigned int gen;   // the warp generation whose values it reads
};

struct Warp {
    uint64_t values[2][32];
    uint64_t wide[2][32][4];  // cotmae_sim_warp_exchange4's words
    unsigned int arrived;  // lanes waiting at the current warp barrier
    unsigned int mask;     // that barrier's mask
    unsigned int gen;
};

// The fiber stacks of one OS thread, reused by every launch it runs.
struct Stacks {
    char* base = nullptr;
    size_t count = 0;
    bool reserve(size_t n) {
        if (n <= count) return true;
        if (base) munmap(base, count * (STACK_BYTES + PAGE));
        base = nullptr;
        count = 0;
        const size_t len = n * (STACK_BYTES + PAGE);
        void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return false;
        base = (char*)p;
        for (size_t i = 0; i < n; ++i) mprotect(base + i * (STACK_BYTES + PAGE), PAGE, PROT_NONE);
        count = n;
        return true;
    }
    char* top(size_t i) const { return base + (i + 1) * (STACK_BYTES + PAGE); }
    bool contains(uintptr_t a) const {
        return base && a >= (uintptr_t)base && a < (uintptr_t)(base + count * (STACK_BYTES + PAGE));
    }
};

// Dynamic shared memory of one OS thread: MAX_DYNAMIC_SHARED bytes ending at a guard page.
struct DynamicShared {
    char* end = nullptr;
    bool init() {
        if (end) return true;
        const size_t len = MAX_DYNAMIC_SHARED + PAGE;
        void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return false;
        end = (char*)p + MAX_DYNAMIC_SHARED;
        mprotect(end, PAGE, PROT_NONE);
        return true;
    }
};

struct Launch {
    const cotmae_sim_launch_params* p;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<unsigned int> runnable;
    void* scheduler_sp = nullptr;
    Fiber* current = nullptr;
    size_t threads = 0, at_block = 0, exited = 0;
    int block_or = 0;
    uint64_t rng = 0;
    char* dynamic_shared = nullptr;
    bool failed = false;
    char message[512] = {0};
    uint3 block;
};

thread_local Launch* tl_launch = nullptr;
thread_local Stacks tl_stacks;
thread_local DynamicShared tl_shared;
thread_local sigjmp_buf tl_jump;
thread_local volatile sig_atomic_t tl_armed = 0;
thread_local volatile uintptr_t tl_fault_address = 0;
thread_local volatile int tl_fault_write = 0;
thread_local bool tl_altstack = false;

uint64_t next_random(uint64_t& s) {  // splitmix64
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t gcd(uint64_t a, uint64_t b) {
    while (b) {
        const uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

void yield_to_scheduler(Fiber* f) { cotmae_sim_switch(&f->sp, tl_launch->scheduler_sp); }

// The launch fails with `what` (the first failure is kept) and the fiber never resumes.
[[noreturn]] void fail(const char* what) {
    Launch* L = tl_launch;
    if (!L->failed) {
        L->failed = true;
        snprintf(L->message, sizeof L->message, "%s (block (%u, %u, %u), thread (%u, %u, %u))",
                 what, L->block.x, L->block.y, L->block.z, L->current->self.thread_idx.x,
                 L->current->self.thread_idx.y, L->current->self.thread_idx.z);
    }
    yield_to_scheduler(L->current);
    __builtin_unreachable();
}

// Releases the block barrier once every thread has arrived or exited.
void maybe_release_block(Launch* L) {
    if (L->at_block == 0 || L->at_block + L->exited < L->threads) return;
    for (size_t i = 0; i < L->threads; ++i) {
        Fiber& f = L->fibers[i];
        if (f.state == AT_BLOCK_BARRIER) {
            f.state = READY;
            f.pred = L->block_or;
            L->runnable.push_back((unsigned int)i);
        }
    }
    L->at_block = 0;
    L->block_or = 0;
}

// Errors when a lane of the pending warp barrier of warp `w` has exited.
void check_warp_lanes(Launch* L, size_t w, unsigned int mask) {
    for (unsigned int l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        const size_t t = w * 32 + l;
        if (t >= L->threads) fail("a warp operation's mask names a lane the block does not have");
        if (L->fibers[t].state == EXITED) fail("a warp operation's mask names a lane that has exited");
    }
}

void fiber_main(void* arg) {
    Fiber* f = (Fiber*)arg;
    Launch* L = tl_launch;
    L->p->entry(L->p->args);
    f->state = EXITED;
    ++L->exited;
    // An exited lane fails a warp barrier its lanes are waiting at.
    const size_t w = (size_t)(f - L->fibers.data()) / 32;
    const Warp& warp = L->warps[w];
    if (warp.arrived && ((warp.mask >> f->self.lane) & 1u))
        fail("a thread exited while lanes of its warp wait for it at a warp operation");
    maybe_release_block(L);
    yield_to_scheduler(f);
    __builtin_unreachable();
}

void prepare_stack(Fiber& f, char* top) {
    uint64_t* sp = (uint64_t*)(((uintptr_t)top - 16) & ~(uintptr_t)15) - 8;
    uint32_t csr[2] = {0, 0};
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(*(uint16_t*)&csr[1]));
    memcpy(&sp[0], csr, 8);                      // MXCSR, x87 control word
    sp[1] = 0;                                    // r15
    sp[2] = 0;                                    // r14
    sp[3] = (uint64_t)(uintptr_t)&fiber_main;     // r13: the function
    sp[4] = (uint64_t)(uintptr_t)&f;              // r12: its argument
    sp[5] = 0;                                    // rbx
    sp[6] = 0;                                    // rbp
    sp[7] = (uint64_t)(uintptr_t)&cotmae_sim_fiber_start;
    f.sp = sp;
}

// Runs one block to completion; false when the launch failed.
bool run_block(Launch* L, uint3 b) {
    const cotmae_sim_launch_params* p = L->p;
    L->block = b;
    L->at_block = L->exited = 0;
    L->block_or = 0;
    L->runnable.clear();
    for (Warp& w : L->warps) {
        w.arrived = 0;
        w.mask = 0;
        w.gen = 0;
    }
    size_t i = 0;
    for (unsigned int z = 0; z < p->block[2]; ++z)
        for (unsigned int y = 0; y < p->block[1]; ++y)
            for (unsigned int x = 0; x < p->block[0]; ++x, ++i) {
                Fiber& f = L->fibers[i];
                f.self.thread_idx = {x, y, z};
                f.self.block_idx = b;
                f.self.block_dim = {p->block[0], p->block[1], p->block[2]};
                f.self.grid_dim = {p->grid[0], p->grid[1], p->grid[2]};
                f.self.lane = (unsigned int)(i % 32);
                f.state = READY;
                f.pred = 0;
                f.gen = 0;
                prepare_stack(f, tl_stacks.top(i));
                L->runnable.push_back((unsigned int)i);
            }
    if (p->shared_bytes) memset(L->dynamic_shared, 0xFF, p->shared_bytes);
    while (L->exited < L->threads) {
        if (L->runnable.empty()) {
            snprintf(L->message, sizeof L->message,
                     "deadlock: in block (%u, %u, %u), %zu threads wait at __syncthreads, %zu at a "
                     "warp operation and %zu have exited, and none can go on",
                     b.x, b.y, b.z, L->at_block, L->threads - L->at_block - L->exited, L->exited);
            L->failed = true;
            return false;
        }
        const size_t k = next_random(L->rng) % L->runnable.size();
        Fiber* f = &L->fibers[L->runnable[k]];
        L->runnable[k] = L->runnable.back();
        L->runnable.pop_back();
        L->current = f;
        cotmae_sim_switch(&L->scheduler_sp, f->sp);
        if (L->failed) return false;
    }
    return true;
}

struct sigaction previous_segv, previous_bus;

void on_fault(int sig, siginfo_t* info, void* context) {
    if (tl_armed) {
        tl_armed = 0;
        tl_fault_address = (uintptr_t)info->si_addr;
        const ucontext_t* uc = (const ucontext_t*)context;
        tl_fault_write = sig == SIGSEGV && (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
        siglongjmp(tl_jump, 1);
    }
    // Not a simulated kernel's fault: hand it to whoever handled it before.
    struct sigaction* prev = sig == SIGSEGV ? &previous_segv : &previous_bus;
    if (prev->sa_flags & SA_SIGINFO) {
        prev->sa_sigaction(sig, info, context);
    } else if (prev->sa_handler == SIG_DFL || prev->sa_handler == SIG_IGN) {
        signal(sig, SIG_DFL);  // the instruction faults again, with the default action
    } else {
        prev->sa_handler(sig);
    }
}

// Signals run on an alternate stack, so a fiber that overflows its stack is still caught.
bool ensure_altstack() {
    if (tl_altstack) return true;
    stack_t current;
    if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE) &&
        current.ss_size >= 16384) {
        tl_altstack = true;
        return true;
    }
    const size_t len = 64 * 1024;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    stack_t s;
    s.ss_sp = p;
    s.ss_size = len;
    s.ss_flags = 0;
    if (sigaltstack(&s, nullptr) != 0) return false;
    tl_altstack = true;  // kept for the thread's life (a few per process)
    return true;
}

}  // namespace

extern "C" const cotmae_sim_thread* cotmae_sim_self(void) { return &tl_launch->current->self; }

extern "C" int cotmae_sim_syncthreads(int pred) {
    Launch* L = tl_launch;
    Fiber* f = L->current;
    f->state = AT_BLOCK_BARRIER;
    ++L->at_block;
    L->block_or |= pred;
    maybe_release_block(L);
    yield_to_scheduler(f);
    return f->pred;
}

namespace {

// The calling lane's warp, after checking `mask` for a warp barrier.
Warp& warp_of_caller(unsigned int mask) {
    Launch* L = tl_launch;
    Fiber* f = L->current;
    const size_t w = (size_t)(f - L->fibers.data()) / 32;
    Warp& warp = L->warps[w];
    if (!((mask >> f->self.lane) & 1u)) fail("a warp operation's mask leaves out the calling lane");
    if (warp.arrived && warp.mask != mask)
        fail("lanes of one warp wait at warp operations with different masks");
    check_warp_lanes(L, w, mask);
    return warp;
}

// The calling lane arrives at the warp barrier of `mask` (its values already deposited) and
// resumes once every lane of the mask has; returns the generation whose values it reads.
unsigned int arrive_at_warp_barrier(Warp& warp, unsigned int mask) {
    Launch* L = tl_launch;
    Fiber* f = L->current;
    const size_t w = (size_t)(f - L->fibers.data()) / 32;
    warp.mask = mask;
    warp.arrived |= 1u << f->self.lane;
    f->gen = warp.gen;
    f->state = AT_WARP_BARRIER;
    if ((warp.arrived & mask) == mask) {
        for (unsigned int l = 0; l < 32; ++l)
            if ((mask >> l) & 1u) {
                L->fibers[w * 32 + l].state = READY;
                L->runnable.push_back((unsigned int)(w * 32 + l));
            }
        warp.arrived = 0;
        ++warp.gen;
    }
    yield_to_scheduler(f);
    return f->gen;
}

}  // namespace

extern "C" const uint64_t* cotmae_sim_warp_exchange4(unsigned int mask, const uint64_t* values) {
    Warp& warp = warp_of_caller(mask);
    memcpy(warp.wide[warp.gen & 1][tl_launch->current->self.lane], values, 4 * sizeof(uint64_t));
    return &warp.wide[arrive_at_warp_barrier(warp, mask) & 1][0][0];
}

extern "C" const uint64_t* cotmae_sim_warp_exchange(unsigned int mask, uint64_t value) {
    Warp& warp = warp_of_caller(mask);
    warp.values[warp.gen & 1][tl_launch->current->self.lane] = value;
    return warp.values[arrive_at_warp_barrier(warp, mask) & 1];
}

extern "C" void cotmae_sim_fail(const char* what) { fail(what); }

extern "C" void* cotmae_sim_dynamic_shared(void) { return tl_launch->dynamic_shared; }

extern "C" int cotmae_sim_install_fault_handler(void) {
    static std::atomic<int> state{0};  // 0 not yet, 1 installing, 2 done
    int expected = 0;
    if (!state.compare_exchange_strong(expected, 1)) {
        while (state.load() != 2) {}
        return 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    const int r = sigaction(SIGSEGV, &sa, &previous_segv) | sigaction(SIGBUS, &sa, &previous_bus);
    state.store(2);
    return r;
}

extern "C" int cotmae_sim_launch(const cotmae_sim_launch_params* p, cotmae_sim_launch_result* r) {
    r->code = 0;
    r->fault_write = 0;
    r->fault_address = 0;
    r->message[0] = 0;
    const size_t threads = (size_t)p->block[0] * p->block[1] * p->block[2];
    const uint64_t blocks = (uint64_t)p->grid[0] * p->grid[1] * p->grid[2];
    if (threads == 0 || threads > MAX_THREADS || p->shared_bytes > MAX_DYNAMIC_SHARED) {
        r->code = 2;
        snprintf(r->message, sizeof r->message, "launch shape outside the device's limits");
        return 2;
    }
    if (blocks == 0) return 0;
    if (!ensure_altstack() || !tl_stacks.reserve(MAX_THREADS) || !tl_shared.init()) {
        r->code = 2;
        snprintf(r->message, sizeof r->message, "could not map the simulator's stacks");
        return 2;
    }
    Launch L;
    L.p = p;
    L.threads = threads;
    L.fibers.resize(threads);
    L.warps.resize((threads + 31) / 32);
    L.rng = p->seed;
    L.dynamic_shared = tl_shared.end - ((p->shared_bytes + 15) / 16) * 16;
    tl_launch = &L;
    // Blocks in a varied order: i -> (a * i + c) mod blocks with a coprime to blocks.
    uint64_t a = next_random(L.rng) % blocks, c = next_random(L.rng) % blocks;
    if (a == 0) a = 1;
    while (gcd(a, blocks) != 1) ++a;
    if (sigsetjmp(tl_jump, 1) != 0) {
        // A fault inside the kernel: on_fault jumped here from the fiber.
        tl_launch = nullptr;
        const uintptr_t addr = tl_fault_address;
        if (tl_stacks.contains(addr)) {
            r->code = 2;
            snprintf(r->message, sizeof r->message,
                     "a simulated thread overflowed its %zu KiB stack (fault at 0x%lx)",
                     STACK_BYTES / 1024, (unsigned long)addr);
        } else if (addr >= (uintptr_t)tl_shared.end && addr < (uintptr_t)tl_shared.end + PAGE) {
            r->code = 2;
            snprintf(r->message, sizeof r->message,
                     "out-of-bounds %s of dynamic shared memory (%lu bytes past the end of its %u "
                     "bytes)",
                     tl_fault_write ? "write" : "read",
                     (unsigned long)(addr - (uintptr_t)tl_shared.end), p->shared_bytes);
        } else {
            r->code = 1;
            r->fault_address = addr;
            r->fault_write = tl_fault_write;
        }
        return r->code;
    }
    tl_armed = 1;
    for (uint64_t i = 0; i < blocks; ++i) {
        const uint64_t lin = (uint64_t)(((unsigned __int128)a * i + c) % blocks);
        const uint3 b = {(unsigned int)(lin % p->grid[0]),
                         (unsigned int)((lin / p->grid[0]) % p->grid[1]),
                         (unsigned int)(lin / ((uint64_t)p->grid[0] * p->grid[1]))};
        if (!run_block(&L, b)) {
            tl_armed = 0;
            tl_launch = nullptr;
            r->code = 2;
            memcpy(r->message, L.message, sizeof r->message);
            return 2;
        }
    }
    tl_armed = 0;
    tl_launch = nullptr;
    return 0;
}

#endif  // COTMAE_SIM_RUNTIME_IMPL
