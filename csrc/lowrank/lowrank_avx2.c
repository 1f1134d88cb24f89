/* AVX2 panel GEMM of the factored Linear: micro-tile MR x 32 as four ymm per row (12
 * accumulators at MR = 3), one broadcast per row and four panel loads per k. */
#include "lowrank.h"

#if RC_X86
#pragma GCC target("avx2,fma")
#include <immintrin.h>

static inline __attribute__((always_inline)) void tile(const int MR, int64_t K, const float *a, int64_t lda,
                                                       const float *b, const float *bias, float *c,
                                                       int64_t ldc, int64_t nv) {
    __m256 acc[3][4];
#pragma GCC unroll 3
    for (int i = 0; i < MR; ++i)
        for (int q = 0; q < 4; ++q) acc[i][q] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
        const float *bk = b + k * LR_NR;
        const __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);
        const __m256 b2 = _mm256_loadu_ps(bk + 16), b3 = _mm256_loadu_ps(bk + 24);
#pragma GCC unroll 3
        for (int i = 0; i < MR; ++i) {
            const __m256 av = _mm256_broadcast_ss(a + i * lda + k);
            acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
            acc[i][2] = _mm256_fmadd_ps(av, b2, acc[i][2]);
            acc[i][3] = _mm256_fmadd_ps(av, b3, acc[i][3]);
        }
    }
    if (nv == LR_NR) {
        for (int i = 0; i < MR; ++i)
            for (int q = 0; q < 4; ++q)
                _mm256_storeu_ps(c + i * ldc + 8 * q,
                                 bias ? _mm256_add_ps(acc[i][q], _mm256_loadu_ps(bias + 8 * q)) : acc[i][q]);
    } else {
        /* Partial last panel: spill the tile and copy the valid columns. */
        float tmp[LR_NR];
        for (int i = 0; i < MR; ++i) {
            for (int q = 0; q < 4; ++q) _mm256_storeu_ps(tmp + 8 * q, acc[i][q]);
            for (int64_t j = 0; j < nv; ++j) c[i * ldc + j] = bias ? tmp[j] + bias[j] : tmp[j];
        }
    }
}

void rc_lowrank_gemm_avx2(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp,
                          int64_t p0, int64_t p1, int64_t N, const float *bias, float *c, int64_t ldc) {
    for (int64_t p = p0; p < p1; ++p) {
        const float *b = bp + p * K * LR_NR;
        const int64_t col = p * LR_NR, nv = N - col < LR_NR ? N - col : LR_NR;
        const float *bi = bias ? bias + col : NULL;
        int64_t i = 0;
        for (; i + 3 <= rows; i += 3) tile(3, K, a + i * lda, lda, b, bi, c + i * ldc + col, ldc, nv);
        if (rows - i == 2) tile(2, K, a + i * lda, lda, b, bi, c + i * ldc + col, ldc, nv);
        else if (rows - i == 1) tile(1, K, a + i * lda, lda, b, bi, c + i * ldc + col, ldc, nv);
    }
}
#endif
