/* AVX-512 kernels of the factored Linear.  Panel GEMM: micro-tile MR x 32 (two zmm per
 * row, 12 accumulators at MR = 6), one broadcast of A per row and two panel loads per k;
 * rows left over below 6 use the same code with a smaller compile-time MR (the switch
 * below instantiates each).  Batch 1: lowrank_gemv.h over 16-lane zmm vectors. */
#include "lowrank.h"

#if RC_X86
#pragma GCC target("avx512f,avx512vl,avx512dq,fma")
#include <immintrin.h>

static inline __attribute__((always_inline)) void tile(const int MR, int64_t K, const float *a, int64_t lda,
                                                       const float *b, const float *bias, float *c,
                                                       int64_t ldc, int64_t nv) {
    __m512 lo[6], hi[6];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
        const __m512 b0 = _mm512_loadu_ps(b + k * LR_NR), b1 = _mm512_loadu_ps(b + k * LR_NR + 16);
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
            const __m512 av = _mm512_set1_ps(a[i * lda + k]);
            lo[i] = _mm512_fmadd_ps(av, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(av, b1, hi[i]);
        }
    }
    if (nv == LR_NR) {
        const __m512 bl = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
        const __m512 bh = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
            _mm512_storeu_ps(c + i * ldc, _mm512_add_ps(lo[i], bl));
            _mm512_storeu_ps(c + i * ldc + 16, _mm512_add_ps(hi[i], bh));
        }
    } else {
        /* Partial last panel: masked loads / stores touch only the nv valid columns. */
        const __mmask16 ml = (__mmask16)(nv >= 16 ? 0xFFFF : (1u << nv) - 1);
        const __mmask16 mh = (__mmask16)(nv <= 16 ? 0 : (1u << (nv - 16)) - 1);
        const __m512 bl = bias ? _mm512_maskz_loadu_ps(ml, bias) : _mm512_setzero_ps();
        const __m512 bh = bias ? _mm512_maskz_loadu_ps(mh, bias + 16) : _mm512_setzero_ps();
        for (int i = 0; i < MR; ++i) {
            _mm512_mask_storeu_ps(c + i * ldc, ml, _mm512_add_ps(lo[i], bl));
            _mm512_mask_storeu_ps(c + i * ldc + 16, mh, _mm512_add_ps(hi[i], bh));
        }
    }
}

static void gemm_avx512(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp,
                        int64_t p0, int64_t p1, int64_t N, const float *bias, float *c, int64_t ldc) {
    for (int64_t p = p0; p < p1; ++p) {
        const float *b = bp + p * K * LR_NR;
        const int64_t col = p * LR_NR, nv = N - col < LR_NR ? N - col : LR_NR;
        const float *bi = bias ? bias + col : NULL;
        int64_t i = 0;
        for (; i + 6 <= rows; i += 6) tile(6, K, a + i * lda, lda, b, bi, c + i * ldc + col, ldc, nv);
        switch (rows - i) {
        case 5: tile(5, K, a + i * lda, lda, b, bi, c + i * ldc + col, ldc, nv); break;
        case 4: tile(4, K, a + i * lda, lda, b, bi, c + i * ldc + col, ldc, nv); break;
        case 3: tile(3, K, a + i * lda, lda, b, bi, c + i * ldc + col, ldc, nv); break;
        case 2: tile(2, K, a + i * lda, lda, b, bi, c + i * ldc + col, ldc, nv); break;
        case 1: tile(1, K, a + i * lda, lda, b, bi, c + i * ldc + col, ldc, nv); break;
        default: break;
        }
    }
}

/* ---- batch 1 (lowrank_gemv.h) ---- */
typedef __m512 lr_vec;
#define LR_W 16
static inline __mmask16 lr_mask(int k) { return (__mmask16)((1u << k) - 1); }
static inline lr_vec lr_zero(void) { return _mm512_setzero_ps(); }
static inline lr_vec lr_load(const float *p) { return _mm512_loadu_ps(p); }
static inline lr_vec lr_load_part(const float *p, int k) { return _mm512_maskz_loadu_ps(lr_mask(k), p); }
static inline lr_vec lr_set1(float s) { return _mm512_set1_ps(s); }
static inline lr_vec lr_fma(lr_vec a, lr_vec b, lr_vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline lr_vec lr_add(lr_vec a, lr_vec b) { return _mm512_add_ps(a, b); }
static inline void lr_store(float *p, lr_vec a) { _mm512_storeu_ps(p, a); }
static inline void lr_store_part(float *p, lr_vec a, int k) { _mm512_mask_storeu_ps(p, lr_mask(k), a); }
/* Fold each zmm to 8 lanes, then two rounds of hadd interleave the four rows and a last
 * add of the 128-bit halves leaves [sum a0, sum a1, sum a2, sum a3]. */
static inline void lr_sum4(lr_vec a0, lr_vec a1, lr_vec a2, lr_vec a3, float *out) {
    const __m256 b0 = _mm256_add_ps(_mm512_castps512_ps256(a0), _mm512_extractf32x8_ps(a0, 1));
    const __m256 b1 = _mm256_add_ps(_mm512_castps512_ps256(a1), _mm512_extractf32x8_ps(a1, 1));
    const __m256 b2 = _mm256_add_ps(_mm512_castps512_ps256(a2), _mm512_extractf32x8_ps(a2, 1));
    const __m256 b3 = _mm256_add_ps(_mm512_castps512_ps256(a3), _mm512_extractf32x8_ps(a3, 1));
    const __m256 c = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(c), _mm256_extractf128_ps(c, 1)));
}
#include "lowrank_gemv.h"

const rc_lowrank_kernels rc_lowrank_avx512 = {gemm_avx512, lr_gemv_h, lr_gemv_y, 6};
#endif
