/* AVX-VNNI qgemm micro-tile: the VEX-encoded 256-bit vpdpbusd, for CPUs that have it
 * without AVX-512 (Intel Alder Lake and later client cores; Zen 5 has both).  Like the
 * AVX-512 VNNI tile it multiplies the packed unsigned weights (b + 128) by a broadcast of
 * four signed activations and adds the four products into each int32 lane, exactly
 * (vpdpbusd does not saturate; only vpdpbusds does).  The zero-point correction and the
 * epilogue are the AVX2 variant's (qgemm_epi_avx2.h).
 *
 * Registers: VEX has no embedded broadcast and takes only the signed operand from memory,
 * so the B vectors and the broadcast A rows both live in ymm registers, 16 in all.  A
 * pass covers rows x (8 * nv) columns of the panel with rows * nv accumulators:
 * 6 x 2 (12 chains, + 2 B + 1 A), 5 x 2, 4 x 2, 3 x 4 (12, + 3 A + 1 B), 2 x 4, and one row
 * as 1 x 8 (the whole panel, 8 chains).  Enough independent chains to cover vpdpbusd's
 * latency at two per cycle needs rows * nv >= 8 or so; fewer only at 2 rows and below. */
#include "../rc_common.h"
#if RC_HAVE_AVX_VNNI
#pragma GCC target("avx2,fma,avxvnni")
#include <string.h>

#include "qgemm_epi_avx2.h"

/* Named accumulators (an indexed array of vectors stays on the stack: see the AVX-512 VNNI
 * file).  `mr` and `nv` are constants after inlining, so the guards fold away and unused
 * accumulators vanish. */
#define RC_ACC_ROW(r)                                                                          \
    __m256i c##r##0 = zero, c##r##1 = zero, c##r##2 = zero, c##r##3 = zero, c##r##4 = zero,    \
            c##r##5 = zero, c##r##6 = zero, c##r##7 = zero;
#define RC_BCAST(r)                                                                            \
    __m256i a##r = zero;                                                                       \
    if (mr > r) {                                                                              \
        int32_t w;                                                                             \
        memcpy(&w, ar + r * K4 + 4 * g, 4);                                                    \
        a##r = _mm256_set1_epi32(w);                                                           \
    }
#define RC_DP(r, j) \
    if (mr > r && nv > j) c##r##j = _mm256_dpbusd_avx_epi32(c##r##j, b##j, a##r);
#define RC_LOADB(j) \
    const __m256i b##j = nv > j ? _mm256_loadu_si256((const __m256i *)(bg + 32 * j)) : zero;
#define RC_OUT(r, j)                                                                           \
    if (mr > r && nv > j && n + 8 * j < x->N) rc_tile_out8(x, c##r##j, ra##r, m0 + r, n + 8 * j);
#define RC_OUT_ROW(r)                                                                          \
    if (mr > r) {                                                                              \
        const __m256i ra##r = _mm256_set1_epi32(x->ra[m0 + r]);                                \
        RC_OUT(r, 0) RC_OUT(r, 1) RC_OUT(r, 2) RC_OUT(r, 3)                                    \
        RC_OUT(r, 4) RC_OUT(r, 5) RC_OUT(r, 6) RC_OUT(r, 7)                                    \
    }

/* Rows [m0, m0 + mr) x columns [n, n + 8 nv) of the panel whose packed bytes start at bp
 * (the pass's first column is n - n0 of the panel: `col`). */
static inline __attribute__((always_inline)) void pass(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4,
                                                       int64_t m0, const int mr, const int nv,
                                                       const uint8_t *bp, int64_t col, int64_t n) {
    const __m256i zero = _mm256_setzero_si256();
    RC_ACC_ROW(0) RC_ACC_ROW(1) RC_ACC_ROW(2) RC_ACC_ROW(3) RC_ACC_ROW(4) RC_ACC_ROW(5)
    const int8_t *ar = a + m0 * K4;
    const int64_t groups = K4 / 4;
    for (int64_t g = 0; g < groups; ++g) {
        const uint8_t *bg = bp + g * RC_QGEMM_NR * 4 + 4 * col;
        if (nv <= 2) {
            /* few columns, many rows: the B vectors stay, each row's broadcast is used at once */
            RC_LOADB(0) RC_LOADB(1)
#define RC_ROW2(r) { RC_BCAST(r) RC_DP(r, 0) RC_DP(r, 1) }
            RC_ROW2(0) RC_ROW2(1) RC_ROW2(2) RC_ROW2(3) RC_ROW2(4) RC_ROW2(5)
#undef RC_ROW2
        } else {
            /* many columns, few rows: the broadcasts stay, each B vector is used at once */
            RC_BCAST(0) RC_BCAST(1) RC_BCAST(2) RC_BCAST(3) RC_BCAST(4) RC_BCAST(5)
#define RC_COLN(j) { RC_LOADB(j) RC_DP(0, j) RC_DP(1, j) RC_DP(2, j) RC_DP(3, j) RC_DP(4, j) RC_DP(5, j) }
            RC_COLN(0) RC_COLN(1) RC_COLN(2) RC_COLN(3) RC_COLN(4) RC_COLN(5) RC_COLN(6) RC_COLN(7)
#undef RC_COLN
        }
    }
    RC_OUT_ROW(0) RC_OUT_ROW(1) RC_OUT_ROW(2) RC_OUT_ROW(3) RC_OUT_ROW(4) RC_OUT_ROW(5)
}

/* The panel's columns in passes of 8 * nv, those wholly past N skipped. */
static inline __attribute__((always_inline)) void panel(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4,
                                                        int64_t m0, const int mr, const int nv,
                                                        const uint8_t *bp, int64_t n0) {
    for (int64_t col = 0; col < RC_QGEMM_NR && n0 + col < x->N; col += 8 * nv)
        pass(x, a, K4, m0, mr, nv, bp, col, n0 + col);
}

void rc_qgemm_tile_avx_vnni(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4, int64_t m0, int mr,
                            const uint8_t *bp, int64_t n0) {
    switch (mr) {
    case 6: panel(x, a, K4, m0, 6, 2, bp, n0); break;
    case 5: panel(x, a, K4, m0, 5, 2, bp, n0); break;
    case 4: panel(x, a, K4, m0, 4, 2, bp, n0); break;
    case 3: panel(x, a, K4, m0, 3, 4, bp, n0); break;
    case 2: panel(x, a, K4, m0, 2, 4, bp, n0); break;
    default: panel(x, a, K4, m0, 1, 8, bp, n0); break;
    }
}
#endif
