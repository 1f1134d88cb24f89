/* The batch-1 row kernel shared by the AVX2 and AVX-512 variants (included by each after
 * its `#pragma GCC target`, so it is compiled once per ISA).  Needs <immintrin.h>. */
#ifndef RC_SPARSE_DOT8_H
#define RC_SPARSE_DOT8_H
#include <string.h>

#include "sparse.h"

#define RC_SP_AI static inline __attribute__((always_inline))

/* Columns of entries [p, p + 8) into general registers.  Narrow indices come from one or
 * two 64-bit loads split by shifts: on Zen 4 the batch-1 product is bound by load-port
 * slots (one x load per entry is unavoidable), so index loads are batched and values are
 * loaded 8 at a time.  (vgatherdps was measured ~25% slower here: it is microcoded at
 * about one element per cycle.) */
RC_SP_AI void rc_sp_cols8(const rc_sparse_args *a, const void *ind, int mode, int64_t p, const int64_t nm_off[8],
                          int64_t c[8]) {
    if (mode == RC_SP_COL_U16) {
        uint64_t w0, w1;
        memcpy(&w0, (const uint16_t *)ind + p, 8);
        memcpy(&w1, (const uint16_t *)ind + p + 4, 8);
        for (int u = 0; u < 4; ++u) {
            c[u] = (int64_t)((w0 >> (16 * u)) & 0xFFFF);
            c[4 + u] = (int64_t)((w1 >> (16 * u)) & 0xFFFF);
        }
    } else if (mode == RC_SP_COL_U8 || mode == RC_SP_COL_NM_POW2) {
        uint64_t w;
        memcpy(&w, (const uint8_t *)ind + p, 8);
        /* N:M with p % 8 == 0 and n, m powers of two: the group of entry p + u is
         * (p >> sn) + (u >> sn), so its first column is base + nm_off[u]. */
        const int64_t base = mode == RC_SP_COL_NM_POW2 ? (p >> a->sn) << a->sm : 0;
        for (int u = 0; u < 8; ++u) c[u] = (int64_t)((w >> (8 * u)) & 0xFF) + base + nm_off[u];
    } else {
        for (int u = 0; u < 8; ++u) c[u] = rc_sp_col(a, ind, mode, p + u);
    }
}

/* Batch-1 dot product of a row: 8 entries per step as a ymm of values times a ymm of x
 * entries assembled from scalar loads; two chains; scalar FMAs for the tail. */
RC_SP_AI float rc_sp_dot_row8(const rc_sparse_args *a, const float *x, rc_sp_row r, int mode) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t c[8], nm_off[8];
    for (int u = 0; u < 8; ++u) nm_off[u] = mode == RC_SP_COL_NM_POW2 ? ((int64_t)u >> a->sn) << a->sm : 0;
    int64_t p = 0;
    for (; p + 16 <= r.n; p += 16) {
        rc_sp_cols8(a, r.ind, mode, p, nm_off, c);
        const __m256 x0 = _mm256_setr_ps(x[c[0]], x[c[1]], x[c[2]], x[c[3]], x[c[4]], x[c[5]], x[c[6]], x[c[7]]);
        rc_sp_cols8(a, r.ind, mode, p + 8, nm_off, c);
        const __m256 x1 = _mm256_setr_ps(x[c[0]], x[c[1]], x[c[2]], x[c[3]], x[c[4]], x[c[5]], x[c[6]], x[c[7]]);
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(r.v + p), x0, s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(r.v + p + 8), x1, s1);
    }
    float t0 = 0.0f, t1 = 0.0f;
    for (; p + 2 <= r.n; p += 2) {
        t0 = __builtin_fmaf(r.v[p], x[rc_sp_col(a, r.ind, mode, p)], t0);
        t1 = __builtin_fmaf(r.v[p + 1], x[rc_sp_col(a, r.ind, mode, p + 1)], t1);
    }
    if (p < r.n) t0 = __builtin_fmaf(r.v[p], x[rc_sp_col(a, r.ind, mode, p)], t0);
    const __m256 sv = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(sv), _mm256_extractf128_ps(sv, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h) + (t0 + t1);
}

#endif
