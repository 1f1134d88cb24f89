/* AVX-512 (no VNNI) qgemm micro-tile and the 16-lane epilogue for standalone requantize.
 * Exact without VNNI: the four bytes of each lane are split into two int16 pairs
 * (k0, k2) and (k1, k3) and multiplied with vpmaddwd, whose pair sums cannot overflow
 * int32 -- unlike vpmaddubsw, which saturates to int16 and changes results. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#include <string.h>

#include "qgemm_epi_avx512.h"

/* Named accumulators (see the VNNI file for why not an array). */
#define RC_ROW_A(r)                                                                            \
    __m512i alo##r = _mm512_setzero_si512(), ahi##r = alo##r;                                  \
    if (mr > r) {                                                                              \
        int32_t w;                                                                             \
        memcpy(&w, ar + r * K4 + 4 * g, 4);                                                    \
        const __m512i av = _mm512_set1_epi32(w);                                               \
        alo##r = _mm512_srai_epi16(_mm512_slli_epi16(av, 8), 8); /* (a0, a2) sign-extended */  \
        ahi##r = _mm512_srai_epi16(av, 8);                       /* (a1, a3) sign-extended */  \
    }
#define RC_MADD(r, j)                                                                          \
    if (mr > r)                                                                                \
        c##r##j = _mm512_add_epi32(c##r##j, _mm512_add_epi32(_mm512_madd_epi16(blo, alo##r),  \
                                                               _mm512_madd_epi16(bhi, ahi##r)));
#define RC_COL(j)                                                                              \
    {                                                                                          \
        const __m512i b = _mm512_loadu_si512(bp + g * 256 + 64 * j);                           \
        const __m512i blo = _mm512_and_si512(b, lo8); /* (b0, b2) zero-extended */             \
        const __m512i bhi = _mm512_srli_epi16(b, 8);  /* (b1, b3) zero-extended */             \
        RC_MADD(0, j) RC_MADD(1, j) RC_MADD(2, j) RC_MADD(3, j) RC_MADD(4, j) RC_MADD(5, j)    \
    }
#define RC_ROW_OUT(r) \
    if (mr > r) rc_panel_row(&P, m0 + r, c##r##0, c##r##1, c##r##2, c##r##3);

static inline __attribute__((always_inline)) void tile(const rc_qgemm_ctx *x, const int8_t *a,
                                                       int64_t K4, int64_t m0, const int mr,
                                                       const uint8_t *bp, int64_t n0) {
    rc_panel P;
    rc_panel_prepare(&P, x, n0);
    const __m512i zero = _mm512_setzero_si512();
    RC_ROW_DECL(0) RC_ROW_DECL(1) RC_ROW_DECL(2) RC_ROW_DECL(3) RC_ROW_DECL(4) RC_ROW_DECL(5)
    const int8_t *ar = a + m0 * K4;
    const __m512i lo8 = _mm512_set1_epi32(0x00FF00FF);
    for (int64_t g = 0; g < K4 / 4; ++g) {
        RC_ROW_A(0) RC_ROW_A(1) RC_ROW_A(2) RC_ROW_A(3) RC_ROW_A(4) RC_ROW_A(5)
        RC_COL(0) RC_COL(1) RC_COL(2) RC_COL(3)
    }
    RC_ROW_OUT(0) RC_ROW_OUT(1) RC_ROW_OUT(2) RC_ROW_OUT(3) RC_ROW_OUT(4) RC_ROW_OUT(5)
}

void rc_qgemm_tile_avx512(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4, int64_t m0, int mr,
                          const uint8_t *bp, int64_t n0) {
    switch (mr) {
    case 6: tile(x, a, K4, m0, 6, bp, n0); break;
    case 5: tile(x, a, K4, m0, 5, bp, n0); break;
    case 4: tile(x, a, K4, m0, 4, bp, n0); break;
    case 3: tile(x, a, K4, m0, 3, bp, n0); break;
    case 2: tile(x, a, K4, m0, 2, bp, n0); break;
    default: tile(x, a, K4, m0, 1, bp, n0); break;
    }
}

void rc_epi_row_avx512(const rc_epilogue *e, const int32_t *acc, int64_t m, int64_t n0, int64_t n,
                       void *out, int64_t ldo) {
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mk = rc_mask16(n - j);
        rc_epi16(e, _mm512_maskz_loadu_epi32(mk, acc + j), m, n0 + j, mk, out, ldo);
    }
}
/* rc_qgemm_pack_a_row, 64 bytes at a time (the scalar loop ran at ~2 bytes a cycle: 4-7 % of
 * a 1-thread qgemm at the benchmark shapes).  The signed sum is taken as an unsigned one:
 * sum(x) = sum(x ^ 0x80) - 128 * K, and vpsadbw sums unsigned bytes exactly into 64-bit lanes. */
int32_t rc_qgemm_pack_a_row_avx512(const uint8_t *src, int flip, int64_t K, int8_t *dst) {
    const __m512i fm = _mm512_set1_epi8(flip ? (char)0x80 : 0), top = _mm512_set1_epi8((char)0x80);
    const __m512i zero = _mm512_setzero_si512();
    __m512i s = zero;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(src + k), fm);
        _mm512_storeu_si512(dst + k, x);
        s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_xor_si512(x, top), zero));
    }
    const int64_t K4 = rc_qgemm_k4(K);
    if (k < K4) {
        /* the last group's padding (K4 - K < 4 bytes) is stored as 0 and adds nothing */
        const int64_t n = K - k, n4 = K4 - k; /* n < 64, n4 <= 64 */
        const __mmask64 mk = n ? (~(__mmask64)0 >> (64 - n)) : 0;
        const __mmask64 mk4 = ~(__mmask64)0 >> (64 - n4);
        const __m512i x = _mm512_maskz_mov_epi8(mk, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, src + k), fm));
        _mm512_mask_storeu_epi8(dst + k, mk4, x);
        s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_maskz_mov_epi8(mk, _mm512_xor_si512(x, top)), zero));
    }
    return (int32_t)(uint32_t)((uint64_t)_mm512_reduce_add_epi64(s) - 128u * (uint64_t)K);
}
#endif
