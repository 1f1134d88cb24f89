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
 * Both products read each weight once, so with 8- and 16-lane vectors they run at the rate
 * the core streams its cache, and read the weights as one sequential stream -- a row of v,
 * then the next; a panel of u^T, then the next: on Zen 5 one stream from L2 ran at 190-260
 * GB/s, four interleaved streams (four rows or four panels per pass, the earlier design,
 * which shared each load of x or h[k] between them) at 130-150 (docs/lowrank.md section 8,
 * "lr9").  4-lane vectors keep four rows per pass for h (see LR_HR). */
#ifndef RC_LOWRANK_GEMV_H
#define RC_LOWRANK_GEMV_H

#include "lowrank.h"

#define LR_AI static inline __attribute__((always_inline))

/* Rows per pass of the dot products, and accumulators per row.  Wide vectors are bound by
 * the cache's bandwidth, which one sequential stream uses best: one row at a time, four
 * accumulators.  4-lane vectors are bound by the load ports instead (two loads per FMA
 * with one row: the portable variant ran 1.3-1.4x slower so), so four rows share each load
 * of x, two accumulators each.  A row's sum is made in the same order whether its pass has
 * LR_HR rows or fewer (a block's last rows), so thread shares may cut anywhere. */
#define LR_HR (LR_W >= 8 ? 1 : 4)
#define LR_HA (LR_HR == 1 ? 4 : 2)

/* s[i] = the lanes of v[i, :] . x over n elements for the R <= LR_HR rows of v (row
 * stride n); the caller sums each vector's lanes. */
LR_AI void lr_dot_rows(const int R, const float *v, int64_t n, const float *x, lr_vec *s) {
    lr_vec a[LR_HR][LR_HA];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (int q = 0; q < LR_HA; ++q) a[i][q] = lr_zero();
    int64_t k = 0;
    for (; k + LR_HA * LR_W <= n; k += LR_HA * LR_W)
#pragma GCC unroll 4
        for (int q = 0; q < LR_HA; ++q) {
            const lr_vec xq = lr_load(x + k + q * LR_W);
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) a[i][q] = lr_fma(lr_load(v + i * n + k + q * LR_W), xq, a[i][q]);
        }
    for (; k + LR_W <= n; k += LR_W) {
        const lr_vec x0 = lr_load(x + k);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) a[i][0] = lr_fma(lr_load(v + i * n + k), x0, a[i][0]);
    }
    if (k < n) {
        const lr_vec x0 = lr_load_part(x + k, (int)(n - k));
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) a[i][1] = lr_fma(lr_load_part(v + i * n + k, (int)(n - k)), x0, a[i][1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
#if LR_HA == 4
        s[i] = lr_add(lr_add(a[i][0], a[i][1]), lr_add(a[i][2], a[i][3]));
#else
        s[i] = lr_add(a[i][0], a[i][1]);
#endif
}

/* h[j] = v[j, :] . x for j in [j0, j1): LR_HR rows per pass, the lanes summed four rows at
 * a time (one lr_sum4; a row's sum does not depend on its neighbours).  With one row per
 * pass the loop over a group's four rows is left rolled: GCC 12 inlining the four dot
 * loops one after another ran at ~150 GB/s, rolled at ~190. */
static void lr_gemv_h(const float *v, int64_t n, const float *x, int64_t j0, int64_t j1, float *h) {
    lr_vec s[4];
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) {
#pragma GCC unroll 1
        for (int i = 0; i < 4; i += LR_HR) lr_dot_rows(LR_HR, v + (j + i) * n, n, x, s + i);
        lr_sum4(s[0], s[1], s[2], s[3], h + j);
    }
    if (j < j1) {
        float t[4];
        for (int i = 0; i < 4; ++i) {
            if (j + i < j1) lr_dot_rows(1, v + (j + i) * n, n, x, s + i);
            else s[i] = lr_zero();
        }
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
