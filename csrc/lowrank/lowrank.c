/* Factored Linear y = U (V x) + b: packing, the thread plan, dispatch, and the portable
 * variant.  The ISA files (lowrank_<isa>.c) supply only the panel GEMM.
 *
 * Why one call: the intermediate h = x V^T of a block of rows is produced and consumed
 * while it is still in L1/L2 (row blocking), instead of going out to memory between two
 * BLAS calls, and the Python overhead is paid once. */
#include <string.h>

#include "lowrank.h"

#define LR_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512))
/* Rows per block: the block's h (LR_MB x rpad floats) stays in L1/L2 between the GEMMs. */
#define LR_MB 48

static int64_t pad_nr(int64_t v) { return (v + LR_NR - 1) / LR_NR * LR_NR; }

long long rc_lowrank_packed_size(long long n, long long r, long long m) {
    if (n < 0 || r < 0 || m < 0) return -1;
    return (long long)(n * pad_nr(r) + r * pad_nr(m));
}

long long rc_lowrank_workspace_size(long long batch, long long r) {
    if (batch < 0 || r < 0) return -1;
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

void rc_lowrank_gemm_portable(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp,
                              int64_t p0, int64_t p1, int64_t N, const float *bias, float *c, int64_t ldc) {
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

/* ---- driver ------------------------------------------------------------------------------ */

int rc_lowrank_f32(const float *x, long long batch, long long n, long long r, long long m,
                   const float *packed, const float *bias, float *y, void *workspace, int isa,
                   int threads) {
    if (batch < 0 || n < 1 || r < 1 || m < 1 || !packed || (batch > 0 && (!x || !y || !workspace)))
        return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, LR_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_lowrank_gemm_fn gemm = rc_lowrank_gemm_portable;
#if RC_X86
    if (v == RC_ISA_AVX512) gemm = rc_lowrank_gemm_avx512;
    else if (v == RC_ISA_AVX2) gemm = rc_lowrank_gemm_avx2;
#endif
    if (batch == 0) return RC_OK;
    const int64_t rpad = pad_nr(r), P1 = rpad / LR_NR, P2 = pad_nr(m) / LR_NR;
    const float *b1 = packed, *b2 = packed + n * rpad;
    float *h = (float *)workspace;
    int nt = 1;
#ifdef _OPENMP
    nt = threads > 0 ? threads : omp_get_max_threads();
    /* A team costs a few microseconds to wake: small problems stay on one thread. */
    if ((int64_t)batch * (n + m) * r < 4 * RC_MIN_PARALLEL_WORK) nt = 1;
#endif
    const int64_t blocks = (batch + LR_MB - 1) / LR_MB;
    if (nt == 1 || blocks >= 2 * nt) {
        /* Row blocks: each block's h is made and used while in cache; blocks are
         * independent, so threads need no barrier. */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
#endif
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t i0 = blk * LR_MB, rows = batch - i0 < LR_MB ? batch - i0 : LR_MB;
            gemm(rows, n, x + i0 * n, n, b1, 0, P1, rpad, NULL, h + i0 * rpad, rpad);
            gemm(rows, r, h + i0 * rpad, rpad, b2, 0, P2, m, bias, y + i0 * m, m);
        }
        return RC_OK;
    }
    /* Few rows: split the column panels of each GEMM across threads, with one barrier
     * between them (h of all rows is small here). */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const int64_t a0 = P1 * t / T, a1 = P1 * (t + 1) / T;
        if (a1 > a0) gemm(batch, n, x, n, b1, a0, a1, rpad, NULL, h, rpad);
#pragma omp barrier
        const int64_t c0 = P2 * t / T, c1 = P2 * (t + 1) / T;
        if (c1 > c0) gemm(batch, r, h, rpad, b2, c0, c1, m, bias, y, m);
    }
#endif
    return RC_OK;
}
