/* AVX-512 VNNI qgemm micro-tile: vpdpbusd multiplies the packed unsigned weights (b + 128)
 * by a broadcast of four signed activations and adds the four products into each int32
 * lane, exactly (vpdpbusd does not saturate; only vpdpbusds does).  6 rows x 64 columns =
 * 24 independent accumulators hide the instruction's latency.  The accumulators start at
 * the zero-point correction and bias (rc_panel_start), so the finished tile goes straight
 * to the epilogue. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <string.h>

#include "qgemm_epi_avx512.h"

/* Accumulators are named variables, not an array: GCC keeps an indexed array of vectors
 * on the stack (a store per vpdpbusd), which halves throughput.  `mr` is a constant after
 * inlining, so the row guards fold away. */
#define RC_ROW_STEP(r)                                                                         \
    if (mr > r) {                                                                              \
        int32_t w;                                                                             \
        memcpy(&w, ar + r * K4 + 4 * g, 4);                                                    \
        const __m512i av = _mm512_set1_epi32(w);                                               \
        c##r##0 = _mm512_dpbusd_epi32(c##r##0, b0, av);                                        \
        c##r##1 = _mm512_dpbusd_epi32(c##r##1, b1, av);                                        \
        c##r##2 = _mm512_dpbusd_epi32(c##r##2, b2, av);                                        \
        c##r##3 = _mm512_dpbusd_epi32(c##r##3, b3, av);                                        \
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
    const int64_t groups = K4 / 4;
    for (int64_t g = 0; g < groups; ++g) {
        const uint8_t *bg = bp + g * 256;
        const __m512i b0 = _mm512_loadu_si512(bg), b1 = _mm512_loadu_si512(bg + 64);
        const __m512i b2 = _mm512_loadu_si512(bg + 128), b3 = _mm512_loadu_si512(bg + 192);
        RC_ROW_STEP(0) RC_ROW_STEP(1) RC_ROW_STEP(2) RC_ROW_STEP(3) RC_ROW_STEP(4) RC_ROW_STEP(5)
    }
    RC_ROW_OUT(0) RC_ROW_OUT(1) RC_ROW_OUT(2) RC_ROW_OUT(3) RC_ROW_OUT(4) RC_ROW_OUT(5)
}

/* One row (batch-1 inference, GEMV): four accumulators would leave vpdpbusd's latency
 * exposed, so even and odd K groups go to separate sets and are added at the end. */
static void tile_row(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4, int64_t m0,
                     const uint8_t *bp, int64_t n0) {
    rc_panel P;
    rc_panel_prepare(&P, x, n0);
    __m512i e0 = _mm512_setzero_si512(), e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0, o3 = e0;
    const int8_t *ar = a + m0 * K4;
    const int64_t groups = K4 / 4;
    int64_t g = 0;
    for (; g + 2 <= groups; g += 2) {
        const uint8_t *bg = bp + g * 256;
        int32_t w0, w1;
        memcpy(&w0, ar + 4 * g, 4);
        memcpy(&w1, ar + 4 * g + 4, 4);
        const __m512i av = _mm512_set1_epi32(w0), aw = _mm512_set1_epi32(w1);
        e0 = _mm512_dpbusd_epi32(e0, _mm512_loadu_si512(bg), av);
        e1 = _mm512_dpbusd_epi32(e1, _mm512_loadu_si512(bg + 64), av);
        e2 = _mm512_dpbusd_epi32(e2, _mm512_loadu_si512(bg + 128), av);
        e3 = _mm512_dpbusd_epi32(e3, _mm512_loadu_si512(bg + 192), av);
        o0 = _mm512_dpbusd_epi32(o0, _mm512_loadu_si512(bg + 256), aw);
        o1 = _mm512_dpbusd_epi32(o1, _mm512_loadu_si512(bg + 320), aw);
        o2 = _mm512_dpbusd_epi32(o2, _mm512_loadu_si512(bg + 384), aw);
        o3 = _mm512_dpbusd_epi32(o3, _mm512_loadu_si512(bg + 448), aw);
    }
    if (g < groups) {
        const uint8_t *bg = bp + g * 256;
        int32_t w0;
        memcpy(&w0, ar + 4 * g, 4);
        const __m512i av = _mm512_set1_epi32(w0);
        e0 = _mm512_dpbusd_epi32(e0, _mm512_loadu_si512(bg), av);
        e1 = _mm512_dpbusd_epi32(e1, _mm512_loadu_si512(bg + 64), av);
        e2 = _mm512_dpbusd_epi32(e2, _mm512_loadu_si512(bg + 128), av);
        e3 = _mm512_dpbusd_epi32(e3, _mm512_loadu_si512(bg + 192), av);
    }
    /* The start values are added last here: a one-row tile is short and waits on B from L3,
     * and its loads of the column terms (written by the other thread, under two) stalled
     * the chains' first vpdpbusd when they were the accumulators' start (1x768x3072 on two
     * threads 10 % slower); after the loop they overlap it. */
    rc_panel_row(&P, m0, _mm512_add_epi32(_mm512_add_epi32(e0, o0), rc_panel_start(&P, 0, m0)),
                 _mm512_add_epi32(_mm512_add_epi32(e1, o1), rc_panel_start(&P, 1, m0)),
                 _mm512_add_epi32(_mm512_add_epi32(e2, o2), rc_panel_start(&P, 2, m0)),
                 _mm512_add_epi32(_mm512_add_epi32(e3, o3), rc_panel_start(&P, 3, m0)));
}

void rc_qgemm_tile_avx512_vnni(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4, int64_t m0, int mr,
                               const uint8_t *bp, int64_t n0) {
    switch (mr) {
    case 6: tile(x, a, K4, m0, 6, bp, n0); break;
    case 5: tile(x, a, K4, m0, 5, bp, n0); break;
    case 4: tile(x, a, K4, m0, 4, bp, n0); break;
    case 3: tile(x, a, K4, m0, 3, bp, n0); break;
    case 2: tile(x, a, K4, m0, 2, bp, n0); break;
    default: tile_row(x, a, K4, m0, bp, n0); break;
    }
}
#endif
