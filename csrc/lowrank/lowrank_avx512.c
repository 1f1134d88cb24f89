/* AVX-512 panel GEMM of the factored Linear: micro-tile MR x 32 (two zmm per row, 12
 * accumulators at MR = 6), one broadcast of A per row and two panel loads per k.
 * Rows left over below 6 use the same code with a smaller compile-time MR (the switch
 * below instantiates each), and MR = 1 (batch 1) keeps two accumulator sets over even /
 * odd k so that the FMA latency is hidden. */
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
    int64_t k = 0;
    if (MR == 1) {
        __m512 lo2 = _mm512_setzero_ps(), hi2 = _mm512_setzero_ps();
        for (; k + 1 < K; k += 2) {
            const __m512 a0 = _mm512_set1_ps(a[k]), a1 = _mm512_set1_ps(a[k + 1]);
            lo[0] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b + k * LR_NR), lo[0]);
            hi[0] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b + k * LR_NR + 16), hi[0]);
            lo2 = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b + (k + 1) * LR_NR), lo2);
            hi2 = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b + (k + 1) * LR_NR + 16), hi2);
        }
        lo[0] = _mm512_add_ps(lo[0], lo2);
        hi[0] = _mm512_add_ps(hi[0], hi2);
    }
    for (; k < K; ++k) {
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

void rc_lowrank_gemm_avx512(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp,
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
#endif
