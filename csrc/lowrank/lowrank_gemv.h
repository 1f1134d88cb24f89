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
 * documented bound (docs/lowrank.md section 7). */
#ifndef RC_LOWRANK_GEMV_H
#define RC_LOWRANK_GEMV_H

#include "lowrank.h"

#define LR_AI static inline __attribute__((always_inline))

/* h[0..R) (+)= v[0..R) . x over n elements, R <= 4 rows of v (row stride ld).  Four rows
 * per pass so that each load of x feeds four FMAs; two accumulators per row (eight chains
 * at R = 4) so that the FMA latency is hidden; one horizontal reduction for the four rows
 * at the end, added to h when `add` (a later chunk of the rows, see lr_gemv_h). */
LR_AI void lr_dot_rows(const int R, const float *v, int64_t ld, int64_t n, const float *x, float *h, int add) {
    lr_vec a[4][2];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) a[i][0] = a[i][1] = lr_zero();
    int64_t k = 0;
    for (; k + 2 * LR_W <= n; k += 2 * LR_W) {
        const lr_vec x0 = lr_load(x + k), x1 = lr_load(x + k + LR_W);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
            a[i][0] = lr_fma(lr_load(v + i * ld + k), x0, a[i][0]);
            a[i][1] = lr_fma(lr_load(v + i * ld + k + LR_W), x1, a[i][1]);
        }
    }
    if (k + LR_W <= n) {
        const lr_vec x0 = lr_load(x + k);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) a[i][0] = lr_fma(lr_load(v + i * ld + k), x0, a[i][0]);
        k += LR_W;
    }
    if (k < n) {
        const int rem = (int)(n - k);
        const lr_vec x0 = lr_load_part(x + k, rem);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) a[i][1] = lr_fma(lr_load_part(v + i * ld + k, rem), x0, a[i][1]);
    }
    float s[4];
    lr_sum4(lr_add(a[0][0], a[0][1]), lr_add(a[1][0], a[1][1]), lr_add(a[2][0], a[2][1]),
            lr_add(a[3][0], a[3][1]), s);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) h[i] = add ? h[i] + s[i] : s[i];
}

/* Elements of x per chunk: all rows are swept over one 4 KB chunk of x before the next.
 * 4 KB is one way of every L1 set, so the v rows streaming past do not evict x; with
 * whole rows of 12 KB they did, and the re-reads of x cost ~20% of the bandwidth
 * (n = 3072 on Zen 4: 94 -> 113 GB/s from L2 with chunks). */
#define LR_KC 1024

static void lr_gemv_h(const float *v, int64_t n, const float *x, int64_t j0, int64_t j1, float *h) {
    for (int64_t k0 = 0; k0 < n; k0 += LR_KC) {
        const int64_t kn = n - k0 < LR_KC ? n - k0 : LR_KC;
        const int add = k0 > 0;
        const float *vk = v + k0, *xk = x + k0;
        int64_t j = j0;
        for (; j + 4 <= j1; j += 4) lr_dot_rows(4, vk + j * n, n, kn, xk, h + j, add);
        switch (j1 - j) {
        case 3: lr_dot_rows(3, vk + j * n, n, kn, xk, h + j, add); break;
        case 2: lr_dot_rows(2, vk + j * n, n, kn, xk, h + j, add); break;
        case 1: lr_dot_rows(1, vk + j * n, n, kn, xk, h + j, add); break;
        default: break;
        }
    }
}

/* Vectors per panel row, and panels per pass: eight accumulators, each broadcast h[k]
 * feeding all of them, with the pass's NP panels read as NP sequential streams. */
#define LR_VP (LR_NR / LR_W)
#define LR_YP (LR_VP >= 8 ? 1 : 8 / LR_VP)

/* y over NP panels starting at panel p (column col = p * LR_NR).  A pass of fewer than
 * LR_YP panels (the last ones) has too few accumulators to hide the FMA latency, so it
 * keeps a second set over odd k. */
LR_AI void lr_panels_y(const int NP, const float *h, int64_t K, const float *b, int64_t col, int64_t N,
                       const float *bias, float *y) {
    const int KC = NP < LR_YP ? 2 : 1;
    lr_vec acc[LR_YP][LR_VP], acc2[LR_YP][LR_VP];
#pragma GCC unroll 8
    for (int pp = 0; pp < NP; ++pp)
#pragma GCC unroll 8
        for (int q = 0; q < LR_VP; ++q) acc[pp][q] = acc2[pp][q] = lr_zero();
    const int64_t ps = K * LR_NR; /* panel stride */
    int64_t k = 0;
    if (KC == 2) {
        for (; k + 2 <= K; k += 2) {
            const lr_vec h0 = lr_set1(h[k]), h1 = lr_set1(h[k + 1]);
#pragma GCC unroll 8
            for (int pp = 0; pp < NP; ++pp)
#pragma GCC unroll 8
                for (int q = 0; q < LR_VP; ++q) {
                    const float *bk = b + pp * ps + k * LR_NR + q * LR_W;
                    acc[pp][q] = lr_fma(h0, lr_load(bk), acc[pp][q]);
                    acc2[pp][q] = lr_fma(h1, lr_load(bk + LR_NR), acc2[pp][q]);
                }
        }
    }
    for (; k < K; ++k) {
        const lr_vec h0 = lr_set1(h[k]);
#pragma GCC unroll 8
        for (int pp = 0; pp < NP; ++pp)
#pragma GCC unroll 8
            for (int q = 0; q < LR_VP; ++q)
                acc[pp][q] = lr_fma(h0, lr_load(b + pp * ps + k * LR_NR + q * LR_W), acc[pp][q]);
    }
#pragma GCC unroll 8
    for (int pp = 0; pp < NP; ++pp)
#pragma GCC unroll 8
        for (int q = 0; q < LR_VP; ++q) {
            const int64_t c0 = col + pp * LR_NR + q * LR_W, valid = N - c0;
            if (valid <= 0) continue;
            lr_vec s = KC == 2 ? lr_add(acc[pp][q], acc2[pp][q]) : acc[pp][q];
            if (valid >= LR_W) {
                if (bias) s = lr_add(s, lr_load(bias + c0));
                lr_store(y + c0, s);
            } else {
                if (bias) s = lr_add(s, lr_load_part(bias + c0, (int)valid));
                lr_store_part(y + c0, s, (int)valid);
            }
        }
}

static void lr_gemv_y(const float *h, int64_t K, const float *bp, int64_t p0, int64_t p1, int64_t N,
                      const float *bias, float *y) {
    int64_t p = p0;
    for (; p + LR_YP <= p1; p += LR_YP) lr_panels_y(LR_YP, h, K, bp + p * K * LR_NR, p * LR_NR, N, bias, y);
    for (; p < p1; ++p) lr_panels_y(1, h, K, bp + p * K * LR_NR, p * LR_NR, N, bias, y);
}

#undef LR_AI
#endif
