/* AVX2 + FMA kernels of the sparse Linear: for batch 1, a row's entries 8 at a time
 * (sparse_dot8.h: values as a vector, x entries from scalar loads -- faster than
 * vgatherdps); panels of 8 / 16 / 32 batch lanes (1, 2, 4 ymm per entry) otherwise, with the
 * x -> panel and accumulator -> y transposes done 8 x 8 in registers.  Float sums in a
 * variant-specific order: within the documented bound. */
#include <string.h>

#include "sparse.h"
#if RC_X86
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* Lane masks for maskload / maskstore: the first k lanes of row k. */
static const int32_t rc_mask8[9][8] = {
    {0, 0, 0, 0, 0, 0, 0, 0},         {-1, 0, 0, 0, 0, 0, 0, 0},         {-1, -1, 0, 0, 0, 0, 0, 0},
    {-1, -1, -1, 0, 0, 0, 0, 0},      {-1, -1, -1, -1, 0, 0, 0, 0},      {-1, -1, -1, -1, -1, 0, 0, 0},
    {-1, -1, -1, -1, -1, -1, 0, 0},   {-1, -1, -1, -1, -1, -1, -1, 0},   {-1, -1, -1, -1, -1, -1, -1, -1},
};

static inline __m256i mask8(int64_t k) {
    return _mm256_loadu_si256((const __m256i *)rc_mask8[k < 8 ? k : 8]);
}

#include "sparse_dot8.h"

AI void gather_rows(const rc_sparse_args *a, int64_t r0, int64_t r1, int mode) {
    for (int64_t i = r0; i < r1; ++i) {
        const rc_sp_row r = rc_sp_get_row(a, i);
        const float b = a->bias ? a->bias[i] : 0.0f;
        for (int64_t s = 0; s < a->batch; ++s) a->y[s * a->out + i] = rc_sp_dot_row8(a, a->x + s * a->in, r, mode) + b;
    }
}

static void gather_avx2(const rc_sparse_args *a, int64_t r0, int64_t r1) {
    switch (a->col_mode) {
    case RC_SP_COL_U8:      gather_rows(a, r0, r1, RC_SP_COL_U8); break;
    case RC_SP_COL_U16:     gather_rows(a, r0, r1, RC_SP_COL_U16); break;
    case RC_SP_COL_I32:     gather_rows(a, r0, r1, RC_SP_COL_I32); break;
    case RC_SP_COL_NM_POW2: gather_rows(a, r0, r1, RC_SP_COL_NM_POW2); break;
    default:                gather_rows(a, r0, r1, RC_SP_COL_NM_ANY); break;
    }
}

/* 8 x 8 transpose: r[q] lane l -> r[l] lane q. */
static inline void transpose8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int k = 0; k < 4; ++k) {
        r[k] = _mm256_permute2f128_ps(s[k], s[4 + k], 0x20);
        r[4 + k] = _mm256_permute2f128_ps(s[k], s[4 + k], 0x31);
    }
}

static void pack_avx2(const rc_sparse_args *a, int64_t b0, int64_t nb, int64_t width, int64_t j0, int64_t j1,
                      float *panel) {
    __m256 r[8];
    for (int64_t l0 = 0; l0 < width; l0 += 8) {
        for (int64_t j = j0; j < j1; j += 8) {
            const int64_t nj = j1 - j < 8 ? j1 - j : 8;
            const __m256i m = mask8(nj);
            for (int q = 0; q < 8; ++q)
                r[q] = l0 + q < nb ? _mm256_maskload_ps(a->x + (b0 + l0 + q) * a->in + j, m) : _mm256_setzero_ps();
            transpose8(r);
            for (int64_t c = 0; c < nj; ++c) _mm256_store_ps(panel + (j + c) * width + l0, r[c]);
        }
    }
}

#define FMA(acc, w, ptr) acc = _mm256_fmadd_ps(w, _mm256_load_ps(ptr), acc)

/* Width 8: one ymm per entry, four chains. */
AI void row8(const rc_sparse_args *a, const float *P, rc_sp_row r, int mode, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t p = 0;
    for (; p + 4 <= r.n; p += 4) {
        FMA(a0, _mm256_set1_ps(r.v[p]), P + rc_sp_col(a, r.ind, mode, p) * 8);
        FMA(a1, _mm256_set1_ps(r.v[p + 1]), P + rc_sp_col(a, r.ind, mode, p + 1) * 8);
        FMA(a2, _mm256_set1_ps(r.v[p + 2]), P + rc_sp_col(a, r.ind, mode, p + 2) * 8);
        FMA(a3, _mm256_set1_ps(r.v[p + 3]), P + rc_sp_col(a, r.ind, mode, p + 3) * 8);
    }
    for (; p < r.n; ++p) FMA(a0, _mm256_set1_ps(r.v[p]), P + rc_sp_col(a, r.ind, mode, p) * 8);
    _mm256_store_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

/* Width 16: two ymm per entry, two entries in flight. */
AI void row16(const rc_sparse_args *a, const float *P, rc_sp_row r, int mode, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    int64_t p = 0;
    for (; p + 2 <= r.n; p += 2) {
        const float *x0 = P + rc_sp_col(a, r.ind, mode, p) * 16, *x1 = P + rc_sp_col(a, r.ind, mode, p + 1) * 16;
        const __m256 w0 = _mm256_set1_ps(r.v[p]), w1 = _mm256_set1_ps(r.v[p + 1]);
        FMA(a0, w0, x0);
        FMA(a1, w0, x0 + 8);
        FMA(b0, w1, x1);
        FMA(b1, w1, x1 + 8);
    }
    if (p < r.n) {
        const float *x0 = P + rc_sp_col(a, r.ind, mode, p) * 16;
        const __m256 w0 = _mm256_set1_ps(r.v[p]);
        FMA(a0, w0, x0);
        FMA(a1, w0, x0 + 8);
    }
    _mm256_store_ps(out, _mm256_add_ps(a0, b0));
    _mm256_store_ps(out + 8, _mm256_add_ps(a1, b1));
}

/* Width 32: four ymm per entry, two entries in flight (8 chains). */
AI void row32(const rc_sparse_args *a, const float *P, rc_sp_row r, int mode, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t p = 0;
    for (; p + 2 <= r.n; p += 2) {
        const float *x0 = P + rc_sp_col(a, r.ind, mode, p) * 32, *x1 = P + rc_sp_col(a, r.ind, mode, p + 1) * 32;
        const __m256 w0 = _mm256_set1_ps(r.v[p]), w1 = _mm256_set1_ps(r.v[p + 1]);
        FMA(a0, w0, x0);
        FMA(a1, w0, x0 + 8);
        FMA(a2, w0, x0 + 16);
        FMA(a3, w0, x0 + 24);
        FMA(b0, w1, x1);
        FMA(b1, w1, x1 + 8);
        FMA(b2, w1, x1 + 16);
        FMA(b3, w1, x1 + 24);
    }
    if (p < r.n) {
        const float *x0 = P + rc_sp_col(a, r.ind, mode, p) * 32;
        const __m256 w0 = _mm256_set1_ps(r.v[p]);
        FMA(a0, w0, x0);
        FMA(a1, w0, x0 + 8);
        FMA(a2, w0, x0 + 16);
        FMA(a3, w0, x0 + 24);
    }
    _mm256_store_ps(out, _mm256_add_ps(a0, b0));
    _mm256_store_ps(out + 8, _mm256_add_ps(a1, b1));
    _mm256_store_ps(out + 16, _mm256_add_ps(a2, b2));
    _mm256_store_ps(out + 24, _mm256_add_ps(a3, b3));
}

/* Rows in tiles of 8, transposed 8 x 8 so each store writes 8 consecutive outputs. */
AI void panel_rows(const rc_sparse_args *a, const float *P, const int64_t W, int64_t b0, int64_t nb,
                   int64_t r0, int64_t r1, int mode) {
    float tile[8 * 32] __attribute__((aligned(32)));
    memset(tile, 0, sizeof(tile));
    __m256 t[8];
    for (int64_t i0 = r0; i0 < r1; i0 += 8) {
        const int64_t rows = r1 - i0 < 8 ? r1 - i0 : 8;
        for (int64_t q = 0; q < rows; ++q) {
            const rc_sp_row r = rc_sp_get_row(a, i0 + q);
            float *out = tile + q * W;
            if (W == 8) row8(a, P, r, mode, out);
            else if (W == 16) row16(a, P, r, mode, out);
            else row32(a, P, r, mode, out);
        }
        const __m256i m = mask8(rows);
        const __m256 bias = a->bias ? _mm256_maskload_ps(a->bias + i0, m) : _mm256_setzero_ps();
        for (int64_t l0 = 0; l0 < nb; l0 += 8) {
            for (int q = 0; q < 8; ++q) t[q] = _mm256_load_ps(tile + q * W + l0);
            transpose8(t);
            const int64_t nl = nb - l0 < 8 ? nb - l0 : 8;
            for (int64_t l = 0; l < nl; ++l)
                _mm256_maskstore_ps(a->y + (b0 + l0 + l) * a->out + i0, m, _mm256_add_ps(t[l], bias));
        }
    }
}

static void panel_avx2(const rc_sparse_args *a, const float *P, int64_t width, int64_t b0, int64_t nb,
                       int64_t r0, int64_t r1) {
    switch (a->col_mode) {
        RC_SP_WIDTH_CASE(panel_rows, RC_SP_COL_U8, 8, 16, 32)
        RC_SP_WIDTH_CASE(panel_rows, RC_SP_COL_U16, 8, 16, 32)
        RC_SP_WIDTH_CASE(panel_rows, RC_SP_COL_I32, 8, 16, 32)
        RC_SP_WIDTH_CASE(panel_rows, RC_SP_COL_NM_POW2, 8, 16, 32)
        RC_SP_WIDTH_CASE(panel_rows, RC_SP_COL_NM_ANY, 8, 16, 32)
    }
}

static int64_t scan_csr_avx2(const void *indices, int itype, int64_t nnz, int64_t *lo, int64_t *hi) {
    return rc_sp_scan_csr(indices, itype, nnz, lo, hi);
}

static int scan_nm_avx2(const uint8_t *indices, int64_t total, int64_t n, int64_t m) {
    return rc_sp_scan_nm(indices, total, n, m);
}

/* AVX2 has no expand: the block-mask form runs the scalar bit walk (compiled for AVX2). */
static void bmask_avx2(const rc_sparse_args *a, int64_t r0, int64_t r1) { rc_sp_bmask_rows_scalar(a, r0, r1); }

/* The sliced-ELLPACK form likewise runs its scalar definition here (pack_csr's "auto" picks it
 * only for AVX-512, where it was measured; forced, it is correct and tested). */
static void sell_avx2(const rc_sell_args *a, int64_t s0, int64_t s1) { rc_sp_sell_slices_scalar(a, s0, s1); }

const rc_sparse_kernels rc_sparse_avx2 = {gather_avx2, pack_avx2, panel_avx2, scan_csr_avx2, scan_nm_avx2, 8, 32, 1,
                                          bmask_avx2, NULL, 0, 0, sell_avx2, NULL, NULL};
#endif
