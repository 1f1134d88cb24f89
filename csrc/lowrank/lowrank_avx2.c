/* AVX2 kernels of the factored Linear.  Panel GEMM: micro-tile MR x 32 as four ymm per
 * row (12 accumulators at MR = 3), one broadcast per row and four panel loads per k.
 * Batch 1: lowrank_gemv.h over 8-lane ymm vectors. */
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

static void gemm_avx2(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp,
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

/* ---- batch 1 (lowrank_gemv.h) ---- */
typedef __m256 lr_vec;
#define LR_W 8
/* Lane masks for maskload / maskstore: row k enables the first k lanes. */
static const int32_t lr_mask8[8][8] = {
    {0, 0, 0, 0, 0, 0, 0, 0},      {-1, 0, 0, 0, 0, 0, 0, 0},       {-1, -1, 0, 0, 0, 0, 0, 0},
    {-1, -1, -1, 0, 0, 0, 0, 0},   {-1, -1, -1, -1, 0, 0, 0, 0},    {-1, -1, -1, -1, -1, 0, 0, 0},
    {-1, -1, -1, -1, -1, -1, 0, 0}, {-1, -1, -1, -1, -1, -1, -1, 0},
};
static inline __m256i lr_mask(int k) { return _mm256_loadu_si256((const __m256i *)lr_mask8[k]); }
static inline lr_vec lr_zero(void) { return _mm256_setzero_ps(); }
static inline lr_vec lr_load(const float *p) { return _mm256_loadu_ps(p); }
static inline lr_vec lr_load_part(const float *p, int k) { return _mm256_maskload_ps(p, lr_mask(k)); }
static inline lr_vec lr_set1(float s) { return _mm256_set1_ps(s); }
static inline lr_vec lr_fma(lr_vec a, lr_vec b, lr_vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline lr_vec lr_add(lr_vec a, lr_vec b) { return _mm256_add_ps(a, b); }
static inline void lr_store(float *p, lr_vec a) { _mm256_storeu_ps(p, a); }
static inline void lr_store_part(float *p, lr_vec a, int k) { _mm256_maskstore_ps(p, lr_mask(k), a); }
/* Two rounds of hadd interleave the four rows; the add of the 128-bit halves leaves
 * [sum a0, sum a1, sum a2, sum a3]. */
static inline void lr_sum4(lr_vec a0, lr_vec a1, lr_vec a2, lr_vec a3, float *out) {
    const __m256 c = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(c), _mm256_extractf128_ps(c, 1)));
}
#include "lowrank_gemv.h"

const rc_lowrank_kernels rc_lowrank_avx2 = {gemm_avx2, lr_gemv_h, lr_gemv_y, 3};
#endif
