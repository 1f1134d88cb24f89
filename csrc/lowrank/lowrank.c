/* Factored Linear y = U (V x) + b: packing, the thread plan, dispatch, and the portable
 * variant.  The ISA files (lowrank_<isa>.c) supply only the kernels of rc_lowrank_kernels.
 *
 * Why one call: the intermediate h = x V^T of a block of rows is produced and consumed
 * while it is still in L1/L2 (row blocking), instead of going out to memory between two
 * BLAS calls, and the Python overhead is paid once.
 *
 * Batch 1 is a route of its own: h = V x as r dot products over V's original rows (the
 * packed V^T panels would need a broadcast per element of x), then y = U h over the packed
 * U^T panels, each read as one sequential stream (lowrank_gemv.h).  Both are memory-bound
 * GEMVs. */
#include <string.h>

#include "lowrank.h"

#define LR_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512))
/* Rows per block: the block's h (LR_MB x rpad floats) stays in L1/L2 between the GEMMs. */
#define LR_MB 48
/* Batch 1 splits the rank across threads only above this many factor elements (r (n + m),
 * 512 KB of floats) and with at least LR_GEMV_MIN_ROWS rows of h per thread.  A thread's
 * half must stream for longer than the team's start, barrier and join cost.  The C call
 * alone on Zen 5, one thread against two (median of 11 rounds of 1000 calls): 96-128 K
 * elements 0.99-1.03x (1024 x 1024 r = 64: 2.65 vs 2.70 us), 150-160 K 0.87-0.92x, 180 K
 * 0.74x, 256 K 0.46x (there each core's L2 holds its half) -- docs/lowrank.md section 8,
 * "lr10". */
#define LR_GEMV_MIN_WORK (2 * RC_MIN_PARALLEL_WORK)
#define LR_GEMV_MIN_ROWS 8
/* Batch 1 keeps h (at most this many floats, 8 KB) on the stack: the caller then needs no
 * workspace, which saves a batch-1 Python call ~0.1 us of its ~1.2 us fixed cost. */
#define LR_H1_STACK 2048
/* Batch 1 copies an x of at most this many floats (16 KB) that does not start a cache line
 * to one that does: NumPy's arrays start 16 bytes past one, and every 64-byte load of the
 * dot products then touched two lines (docs/lowrank.md section 8, "lr9": 1024 x 1024,
 * r = 64, 2.9 -> 2.1 us for both products from L2). */
#define LR_X1_STACK 4096

static int64_t pad_nr(int64_t v) { return (v + LR_NR - 1) / LR_NR * LR_NR; }

long long rc_lowrank_packed_size(long long n, long long r, long long m) {
    if (n < 0 || r < 0 || m < 0) return -1;
    return (long long)(n * pad_nr(r) + r * pad_nr(m));
}

long long rc_lowrank_workspace_size(long long batch, long long r) {
    if (batch < 0 || r < 0) return -1;
    if (batch == 1 && pad_nr(r) <= LR_H1_STACK) return 0;
    return (long long)(batch * pad_nr(r) * (int64_t)sizeof(float) + 64);
}

/* Panel layout of B [K, N] (row-major, ldb): out[p][k][j] = B[k, p*NR + j], 0 past N. */
static void pack_panels(const float *b, int64_t K, int64_t N, int64_t sk, int64_t sn, float *out) {
    const int64_t panels = pad_nr(N) / LR_NR;
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t k = 0; k < K; ++k)
            for (int64_t j = 0; j < LR_NR; ++j) {
                const int64_t col = p * LR_NR + j;
                out[(p * K + k) * LR_NR + j] = col < N ? b[k * sk + col * sn] : 0.0f;
            }
}

int rc_lowrank_pack_f32(const float *v, const float *u, long long n, long long r, long long m,
                        float *packed) {
    if (n < 0 || r < 0 || m < 0 || (n * r > 0 && !v) || (r * m > 0 && !u) || !packed) return RC_ERR_ARG;
    /* first GEMM: B1 = V^T [n, r], B1[k, j] = v[j, k] (stride 1 along k, n along j) */
    pack_panels(v, n, r, 1, n, packed);
    /* second GEMM: B2 = U^T [r, m], B2[j, i] = u[i, j] */
    pack_panels(u, r, m, 1, r, packed + n * pad_nr(r));
    return RC_OK;
}

/* ---- portable variant --------------------------------------------------------------------- */

static void gemm_portable(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp, int64_t p0,
                          int64_t p1, int64_t N, const float *bias, float *c, int64_t ldc) {
    for (int64_t p = p0; p < p1; ++p) {
        const float *b = bp + p * K * LR_NR;
        const int64_t nv = N - p * LR_NR < LR_NR ? N - p * LR_NR : LR_NR;
        for (int64_t i0 = 0; i0 < rows; i0 += 4) {
            const int mr = rows - i0 < 4 ? (int)(rows - i0) : 4;
            float acc[4][LR_NR];
            memset(acc, 0, sizeof acc);
            for (int64_t k = 0; k < K; ++k) {
                const float *bk = b + k * LR_NR;
                for (int i = 0; i < mr; ++i) {
                    const float av = a[(i0 + i) * lda + k];
                    for (int j = 0; j < LR_NR; ++j) acc[i][j] += av * bk[j];
                }
            }
            for (int i = 0; i < mr; ++i) {
                float *ci = c + (i0 + i) * ldc + p * LR_NR;
                for (int64_t j = 0; j < nv; ++j) ci[j] = bias ? acc[i][j] + bias[p * LR_NR + j] : acc[i][j];
            }
        }
    }
}

/* Batch 1 (lowrank_gemv.h) over GCC / Clang generic vectors of 4 floats: SSE2 on any
 * x86-64, NEON on AArch64, scalar code elsewhere -- no ISA assumption in the source. */
typedef float lr_vec __attribute__((vector_size(16)));
#define LR_W 4
static inline lr_vec lr_zero(void) { return (lr_vec){0.0f, 0.0f, 0.0f, 0.0f}; }
static inline lr_vec lr_load(const float *p) {
    lr_vec a;
    memcpy(&a, p, sizeof a); /* no alignment assumed */
    return a;
}
static inline lr_vec lr_load_part(const float *p, int k) {
    lr_vec a = lr_zero();
    memcpy(&a, p, (size_t)k * sizeof(float));
    return a;
}
static inline lr_vec lr_set1(float s) { return (lr_vec){s, s, s, s}; }
static inline lr_vec lr_fma(lr_vec a, lr_vec b, lr_vec c) { return a * b + c; }
static inline lr_vec lr_add(lr_vec a, lr_vec b) { return a + b; }
static inline void lr_store(float *p, lr_vec a) { memcpy(p, &a, sizeof a); }
static inline void lr_store_part(float *p, lr_vec a, int k) { memcpy(p, &a, (size_t)k * sizeof(float)); }
static inline void lr_sum4(lr_vec a0, lr_vec a1, lr_vec a2, lr_vec a3, float *out) {
    out[0] = (a0[0] + a0[1]) + (a0[2] + a0[3]);
    out[1] = (a1[0] + a1[1]) + (a1[2] + a1[3]);
    out[2] = (a2[0] + a2[1]) + (a2[2] + a2[3]);
    out[3] = (a3[0] + a3[1]) + (a3[2] + a3[3]);
}
#include "lowrank_gemv.h"

const rc_lowrank_kernels rc_lowrank_portable = {gemm_portable, lr_gemv_h, lr_gemv_y, 4};

/* ---- driver ------------------------------------------------------------------------------ */

static const rc_lowrank_kernels *pick(int v) {
#if RC_X86
    if (v == RC_ISA_AVX512) return &rc_lowrank_avx512;
    if (v == RC_ISA_AVX2) return &rc_lowrank_avx2;
#endif
    return &rc_lowrank_portable;
}

/* Batch 1: h = V x, then y = U h.  With T > 1 threads, thread t makes the h rows of its
 * slice of the rank and, after one barrier, the y columns of its share of the U^T panels.
 * Every h and y element is summed in the same order whatever T is (a row of h, a panel of
 * y, is one thread's, made by the same code): the result does not depend on the thread
 * count. */
static int batch1_team(int64_t n, int64_t r, int64_t m, int nt) {
    if (nt <= 1) return 1;
    /* r (n + m) <= LR_GEMV_MIN_WORK, without forming a product that could overflow */
    if (n <= LR_GEMV_MIN_WORK && m <= LR_GEMV_MIN_WORK && r <= LR_GEMV_MIN_WORK / (n + m)) return 1;
    const int64_t cap = r / LR_GEMV_MIN_ROWS;
    return cap < 1 ? 1 : (int)(nt < cap ? nt : cap);
}

int rc_lowrank_batch1_threads(long long n, long long r, long long m, int threads) {
    if (n < 1 || r < 1 || m < 1) return -1;
    int nt = 1;
#ifdef _OPENMP
    nt = threads > 0 ? threads : omp_get_max_threads();
#endif
    (void)threads;
    return batch1_team(n, r, m, nt);
}

static void run_batch1(const rc_lowrank_kernels *kr, const float *x, int64_t n, int64_t r, int64_t m,
                       const float *v, const float *b2, const float *bias, float *y, float *h, int nt) {
    const int64_t P2 = pad_nr(m) / LR_NR;
    const int T = batch1_team(n, r, m, nt);
    if (T <= 1) {
        kr->gemv_h(v, n, x, 0, r, h);
        kr->gemv_y(h, r, b2, 0, P2, m, bias, y);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num(), nth = omp_get_num_threads();
        const int64_t j0 = r * t / nth, j1 = r * (t + 1) / nth;
        kr->gemv_h(v, n, x, j0, j1, h);
#pragma omp barrier
        const int64_t c0 = P2 * t / nth, c1 = P2 * (t + 1) / nth;
        if (c1 > c0) kr->gemv_y(h, r, b2, c0, c1, m, bias, y);
    }
#endif
}

/* Rows [i0, i0 + rows) in blocks of LR_MB: both GEMMs of a block while its h is in cache. */
static void row_blocks(const rc_lowrank_kernels *kr, const float *x, int64_t i0, int64_t rows, int64_t n,
                       int64_t r, int64_t m, const float *b1, const float *b2, const float *bias, float *y,
                       float *h) {
    const int64_t rpad = pad_nr(r), P1 = rpad / LR_NR, P2 = pad_nr(m) / LR_NR;
    for (int64_t i = i0; i < i0 + rows; i += LR_MB) {
        const int64_t nb = i0 + rows - i < LR_MB ? i0 + rows - i : LR_MB;
        kr->gemm(nb, n, x + i * n, n, b1, 0, P1, rpad, NULL, h + i * rpad, rpad);
        kr->gemm(nb, r, h + i * rpad, rpad, b2, 0, P2, m, bias, y + i * m, m);
    }
}

int rc_lowrank_f32(const float *x, long long batch, long long n, long long r, long long m, const float *v,
                   const float *packed, const float *bias, float *y, void *workspace, int isa, int threads) {
    if (batch < 0 || n < 1 || r < 1 || m < 1 || !packed || (batch > 0 && (!x || !v || !y)))
        return RC_ERR_ARG;
    if (batch > 0 && !workspace && rc_lowrank_workspace_size(batch, r) > 0) return RC_ERR_ARG;
    const int iv = rc_isa_resolve(isa, LR_VARIANTS);
    if (iv < 0) return RC_ERR_ISA;
    const rc_lowrank_kernels *kr = pick(iv);
    if (batch == 0) return RC_OK;
    const int64_t rpad = pad_nr(r), P1 = rpad / LR_NR, P2 = pad_nr(m) / LR_NR;
    const float *b1 = packed, *b2 = packed + n * rpad;
    float *h = (float *)workspace;
    int nt = 1;
#ifdef _OPENMP
    nt = threads > 0 ? threads : omp_get_max_threads();
#endif
    if (batch == 1) {
        /* Whenever the size function says 0 bytes, h lives here: a caller's workspace of
         * that documented size may be empty. */
        float h1[LR_H1_STACK] __attribute__((aligned(64)));
        float x1[LR_X1_STACK] __attribute__((aligned(64)));
        if (((uintptr_t)x & 63) != 0 && n <= LR_X1_STACK) {
            memcpy(x1, x, (size_t)n * sizeof(float));
            x = x1;
        }
        run_batch1(kr, x, n, r, m, v, b2, bias, y, rc_lowrank_workspace_size(1, r) == 0 ? h1 : h, nt);
        return RC_OK;
    }
    /* A team costs a few microseconds to wake: small problems stay on one thread. */
    if ((int64_t)batch * (n + m) * r < 4 * RC_MIN_PARALLEL_WORK) nt = 1;
    /* Row blocks: each block's h is made and used while in cache; blocks are independent,
     * so threads need no barrier.  One thread runs them without a parallel region (an
     * OpenMP region costs ~0.7 us even with a team of one). */
    if (nt == 1) {
        row_blocks(kr, x, 0, batch, n, r, m, b1, b2, bias, y, h);
        return RC_OK;
    }
    if ((batch + LR_MB - 1) / LR_MB >= 2 * nt) {
        /* Each thread one contiguous share of the micro-tiles (not of the 48-row blocks:
         * at batch 256 on two threads, blocks gave 144 and 112 rows). */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num(), T = omp_get_num_threads();
            const int64_t mr = kr->gemm_rows, tiles = (batch + mr - 1) / mr;
            const int64_t i0 = tiles * t / T * mr, i1 = tiles * (t + 1) / T * mr;
            row_blocks(kr, x, i0, (i1 < batch ? i1 : batch) - i0, n, r, m, b1, b2, bias, y, h);
        }
#endif
        return RC_OK;
    }
    /* Few rows: split the column panels of each GEMM across threads, with one barrier
     * between them (h of all rows is small here). */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const int64_t a0 = P1 * t / T, a1 = P1 * (t + 1) / T;
        if (a1 > a0) kr->gemm(batch, n, x, n, b1, a0, a1, rpad, NULL, h, rpad);
#pragma omp barrier
        const int64_t c0 = P2 * t / T, c1 = P2 * (t + 1) / T;
        if (c1 > c0) kr->gemm(batch, r, h, rpad, b2, c0, c1, m, bias, y, m);
    }
#endif
    return RC_OK;
}
