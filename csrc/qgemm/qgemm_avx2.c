/* AVX2 qgemm micro-tile (exact, no VNNI) and the row epilogue of standalone requantize
 * (both over qgemm_epi_avx2.h, shared with the AVX-VNNI variant).  Products use vpmaddwd on
 * int16 pairs as in the AVX-512 file (never the saturating vpmaddubsw).  A 64-column panel
 * is processed as two 32-column halves so that 2 rows x 4 vectors of accumulators plus
 * operands fit in 16 ymm registers. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx2,fma")
#include <string.h>

#include "qgemm_epi_avx2.h"

void rc_epi_row_avx2(const rc_epilogue *e, const int32_t *acc, int64_t m, int64_t n0, int64_t n,
                     void *out, int64_t ldo) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) rc_epi8(e, _mm256_loadu_si256((const __m256i *)(acc + j)), m, n0 + j, out, ldo);
    for (; j < n; ++j) rc_epi_store_one(e, (uint32_t)acc[j], m, n0 + j, out, ldo);
}

/* Rows [m0, m0 + rows) (rows <= 2) x columns [n0 + 32h, n0 + 32h + 32) of the panel. */
static inline __attribute__((always_inline)) void half_tile(const rc_qgemm_ctx *x, const int8_t *a,
                                                            int64_t K4, int64_t m0, const int rows,
                                                            const uint8_t *bp, int64_t n0, int h) {
    __m256i acc[2][4];
    for (int r = 0; r < 2; ++r)
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_setzero_si256();
    const __m256i lo8 = _mm256_set1_epi32(0x00FF00FF);
    for (int64_t g = 0; g < K4 / 4; ++g) {
        __m256i alo[2], ahi[2];
        for (int r = 0; r < rows; ++r) {
            int32_t w;
            memcpy(&w, a + (m0 + r) * K4 + 4 * g, 4);
            const __m256i av = _mm256_set1_epi32(w);
            alo[r] = _mm256_srai_epi16(_mm256_slli_epi16(av, 8), 8);
            ahi[r] = _mm256_srai_epi16(av, 8);
        }
        for (int j = 0; j < 4; ++j) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(bp + g * 256 + h * 128 + 32 * j));
            const __m256i blo = _mm256_and_si256(b, lo8), bhi = _mm256_srli_epi16(b, 8);
            for (int r = 0; r < rows; ++r)
                acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_add_epi32(_mm256_madd_epi16(blo, alo[r]),
                                                                          _mm256_madd_epi16(bhi, ahi[r])));
        }
    }
    for (int r = 0; r < rows; ++r) {
        const __m256i ra = _mm256_set1_epi32(x->ra[m0 + r]);
        for (int j = 0; j < 4; ++j) {
            const int64_t n = n0 + 32 * h + 8 * j;
            if (n >= x->N) break;
            rc_tile_out8(x, acc[r][j], ra, m0 + r, n);
        }
    }
}

void rc_qgemm_tile_avx2(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4, int64_t m0, int mr,
                        const uint8_t *bp, int64_t n0) {
    for (int h = 0; h < 2; ++h) {
        if (n0 + 32 * h >= x->N) break;
        int r = 0;
        for (; r + 2 <= mr; r += 2) half_tile(x, a, K4, m0 + r, 2, bp, n0, h);
        if (r < mr) half_tile(x, a, K4, m0 + r, 1, bp, n0, h);
    }
}
#endif
