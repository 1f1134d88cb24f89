/* The batch-1 route of the factored Linear (rc_lowrank_kernels.gemv_h / gemv_y), written
 * once over a small vector vocabulary and compiled once per ISA: each variant file
 * (lowrank.c, lowrank_avx2.c, lowrank_avx512.c) defines, after its `#pragma GCC target`,
 *
 *   lr_vec, LR_W                 the vector type and its float lanes (LR_NR % LR_W == 0)
 *   lr_zero() lr_load(p) lr_set1(s) lr_fma(a, b, c) = a * b + c, lr_add(a, b), lr_store(p, a)
 *   lr_load_part(p, k)           the first k < LR_W lanes, the others 0 (reads k floats only)
 *   lr_store_part(p, a, k)       writes the first k < LR_W lanes only
 *   lr_sum4(a0, a1, a2, a3, out) out[i] = the sum of ai's lanes
 *
 * and then includes this file.  Float sums in a variant-specific order: within the
 * documented bound (docs/lowrank.md section 7).
 *
 * Both products read each weight once, so they run at the rate the core streams its cache.
 * Each reads the weights as one sequential stream -- a row of v, then the next; a panel of
 * u^T, then the next: on Zen 5 one stream from L2 ran at 190-260 GB/s, four interleaved
 * streams (four rows or four panels per pass, the earlier design, which shared each load
 * of x or h between them) at 125-145 (docs/lowrank.md section 8, "lr9"). */
#ifndef RC_LOWRANK_GEMV_H
#define RC_LOWRANK_GEMV_H

#include "lowrank.h"

#define LR_AI static inline __attribute__((always_inline))

/* The lanes of v . x over n elements, one row v: four accumulators, so that the FMA
 * latency is hidden, added in a fixed order at the end (the caller sums the lanes). */
LR_AI lr_vec lr_dot_row(const float *v, int64_t n, const float *x) {
    lr_vec a0 = lr_zero(), a1 = lr_zero(), a2 = lr_zero(), a3 = lr_zero();
    int64_t k = 0;
    for (; k + 4 * LR_W <= n; k += 4 * LR_W) {
        a0 = lr_fma(lr_load(v + k), lr_load(x + k), a0);
        a1 = lr_fma(lr_load(v + k + LR_W), lr_load(x + k + LR_W), a1);
        a2 = lr_fma(lr_load(v + k + 2 * LR_W), lr_load(x + k + 2 * LR_W), a2);
        a3 = lr_fma(lr_load(v + k + 3 * LR_W), lr_load(x + k + 3 * LR_W), a3);
    }
    for (; k + LR_W <= n; k += LR_W) a0 = lr_fma(lr_load(v + k), lr_load(x + k), a0);
    if (k < n) a1 = lr_fma(lr_load_part(v + k, (int)(n - k)), lr_load_part(x + k, (int)(n - k)), a1);
    return lr_add(lr_add(a0, a1), lr_add(a2, a3));
}

/* h[j] = v[j, :] . x for j in [j0, j1): rows one after another, their lanes summed four
 * rows at a time (one lr_sum4; a row's sum does not depend on its neighbours).  The row
 * loop is left rolled: with the four rows' dot loops inlined one after another this ran at
 * ~150 GB/s, rolled at ~190 (GCC 12). */
static void lr_gemv_h(const float *v, int64_t n, const float *x, int64_t j0, int64_t j1, float *h) {
    lr_vec s[4];
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) {
        for (int i = 0; i < 4; ++i) s[i] = lr_dot_row(v + (j + i) * n, n, x);
        lr_sum4(s[0], s[1], s[2], s[3], h + j);
    }
    if (j < j1) {
        float t[4];
        for (int i = 0; i < 4; ++i) s[i] = j + i < j1 ? lr_dot_row(v + (j + i) * n, n, x) : lr_zero();
        lr_sum4(s[0], s[1], s[2], s[3], t);
        for (int i = 0; j + i < j1; ++i) h[j + i] = t[i];
    }
}

/* Vectors per panel row, and k steps per pass: eight accumulators in all (LR_VP * LR_YK),
 * each broadcast h[k] feeding one row of the panel. */
#define LR_VP (LR_NR / LR_W)
#define LR_YK (LR_VP >= 8 ? 1 : 8 / LR_VP)

/* y over panel p (columns p * LR_NR ..): k steps LR_YK at a time into LR_YK sets of sums,
 * added in a fixed order at the end, so a column's sum does not depend on which thread
 * makes the panel. */
LR_AI void lr_panel_y(const float *h, int64_t K, const float *b, int64_t col, int64_t N, const float *bias,
                      float *y) {
    lr_vec acc[LR_YK][LR_VP];
#pragma GCC unroll 8
    for (int s = 0; s < LR_YK; ++s)
#pragma GCC unroll 8
        for (int q = 0; q < LR_VP; ++q) acc[s][q] = lr_zero();
    int64_t k = 0;
    for (; k + LR_YK <= K; k += LR_YK)
#pragma GCC unroll 8
        for (int s = 0; s < LR_YK; ++s) {
            const lr_vec hk = lr_set1(h[k + s]);
#pragma GCC unroll 8
            for (int q = 0; q < LR_VP; ++q)
                acc[s][q] = lr_fma(hk, lr_load(b + (k + s) * LR_NR + q * LR_W), acc[s][q]);
        }
    for (; k < K; ++k) { /* into the first set: constant indices keep acc in registers */
        const lr_vec hk = lr_set1(h[k]);
#pragma GCC unroll 8
        for (int q = 0; q < LR_VP; ++q) acc[0][q] = lr_fma(hk, lr_load(b + k * LR_NR + q * LR_W), acc[0][q]);
    }
#pragma GCC unroll 8
    for (int q = 0; q < LR_VP; ++q) {
        const int64_t c0 = col + q * LR_W, valid = N - c0;
        if (valid <= 0) continue;
        lr_vec sum = acc[0][q];
#pragma GCC unroll 8
        for (int s = 1; s < LR_YK; ++s) sum = lr_add(sum, acc[s][q]);
        if (valid >= LR_W) {
            if (bias) sum = lr_add(sum, lr_load(bias + c0));
            lr_store(y + c0, sum);
        } else {
            if (bias) sum = lr_add(sum, lr_load_part(bias + c0, (int)valid));
            lr_store_part(y + c0, sum, (int)valid);
        }
    }
}

static void lr_gemv_y(const float *h, int64_t K, const float *bp, int64_t p0, int64_t p1, int64_t N,
                      const float *bias, float *y) {
    for (int64_t p = p0; p < p1; ++p) lr_panel_y(h, K, bp + p * K * LR_NR, p * LR_NR, N, bias, y);
}

#undef LR_AI
#endif
