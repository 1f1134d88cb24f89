/* AVX-512 (F, BW, VL, DQ) kernels of the sparse Linear: for batch 1, a row's entries 8 at a
 * time (values as a vector, x entries assembled from scalar loads); otherwise panels of 16
 * or 32 batch lanes (1 or 2 zmm per entry), with the x -> panel and accumulator -> y
 * transposes done 16 x 16 in registers.  64-lane panels (256 KB for in = 1024) were
 * measured slower: a panel row per entry then streams from L2 instead of L1/L2-near.
 * Float sums in a variant-specific order (partial sums, FMA): within the documented bound. */
#include <string.h>

#include "sparse.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

static inline __mmask16 tail16(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

#include "sparse_dot8.h"
#include "../rc_transpose_avx512.h"

AI void gather_rows(const rc_sparse_args *a, int64_t r0, int64_t r1, int mode) {
    for (int64_t i = r0; i < r1; ++i) {
        const rc_sp_row r = rc_sp_get_row(a, i);
        const float b = a->bias ? a->bias[i] : 0.0f;
        for (int64_t s = 0; s < a->batch; ++s) a->y[s * a->out + i] = rc_sp_dot_row8(a, a->x + s * a->in, r, mode) + b;
    }
}

/* ---- N:M with m <= 2n, batch 1 ------------------------------------------------------------ *
 * 16 consecutive entries of a row (n | 16) cover 16/n whole groups, S = 16 m / n <= 32
 * columns starting at col0: two x vectors hold all of them, and one vpermt2ps puts each
 * entry's x (index = its position in its group + m * its group within the step) into the
 * entry's lane, for one FMA with 16 values.  No scalar x loads (the general batch-1 kernel
 * spends one per entry); the selected lanes never go past S, so the masked upper load
 * never reads beyond the row's last group.  2:4, 1:2, 4:8, 8:16 and e.g. 4:6. */
static int nm_perm_ok(const rc_sparse_args *a) {
    return a->format == RC_SP_NM && 16 % a->n == 0 && 16 / a->n * a->m <= 32;
}

AI float nm_perm_dot(const rc_sparse_args *a, const float *x, rc_sp_row r, __m512i off, __mmask16 hmask,
                     int64_t step) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    const uint8_t *ind = (const uint8_t *)r.ind;
    int64_t p = 0, col0 = 0;
    for (; p + 32 <= r.n; p += 32, col0 += 2 * step) {
        const __m512i i0 = _mm512_add_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ind + p))), off);
        const __m512i i1 = _mm512_add_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ind + p + 16))), off);
        const __m512 x0 = _mm512_permutex2var_ps(_mm512_loadu_ps(x + col0), i0,
                                                 _mm512_maskz_loadu_ps(hmask, x + col0 + 16));
        const __m512 x1 = _mm512_permutex2var_ps(_mm512_loadu_ps(x + col0 + step), i1,
                                                 _mm512_maskz_loadu_ps(hmask, x + col0 + step + 16));
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(r.v + p), x0, s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(r.v + p + 16), x1, s1);
    }
    if (p + 16 <= r.n) {
        const __m512i i0 = _mm512_add_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ind + p))), off);
        const __m512 x0 = _mm512_permutex2var_ps(_mm512_loadu_ps(x + col0), i0,
                                                 _mm512_maskz_loadu_ps(hmask, x + col0 + 16));
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(r.v + p), x0, s0);
        p += 16;
    }
    float t = 0.0f;
    for (; p < r.n; ++p) t = __builtin_fmaf(r.v[p], x[rc_sp_col(a, r.ind, RC_SP_COL_NM_ANY, p)], t);
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) + t;
}

static void gather_nm_perm(const rc_sparse_args *a, int64_t r0, int64_t r1) {
    const int64_t step = 16 / a->n * a->m; /* columns per 16 entries */
    int32_t o[16];
    for (int l = 0; l < 16; ++l) o[l] = (int32_t)(l / a->n * a->m);
    const __m512i off = _mm512_loadu_si512(o);
    /* upper x vector: columns [col0 + 16, col0 + step) only; nothing when step <= 16 */
    const __mmask16 hmask = step > 16 ? (__mmask16)((1u << (step - 16)) - 1u) : 0;
    for (int64_t i = r0; i < r1; ++i) {
        const rc_sp_row r = rc_sp_get_row(a, i);
        const float b = a->bias ? a->bias[i] : 0.0f;
        for (int64_t s = 0; s < a->batch; ++s)
            a->y[s * a->out + i] = nm_perm_dot(a, a->x + s * a->in, r, off, hmask, step) + b;
    }
}

static void gather_avx512(const rc_sparse_args *a, int64_t r0, int64_t r1) {
    if (nm_perm_ok(a)) {
        gather_nm_perm(a, r0, r1);
        return;
    }
    switch (a->col_mode) {
    case RC_SP_COL_U8:      gather_rows(a, r0, r1, RC_SP_COL_U8); break;
    case RC_SP_COL_U16:     gather_rows(a, r0, r1, RC_SP_COL_U16); break;
    case RC_SP_COL_I32:     gather_rows(a, r0, r1, RC_SP_COL_I32); break;
    case RC_SP_COL_NM_POW2: gather_rows(a, r0, r1, RC_SP_COL_NM_POW2); break;
    default:                gather_rows(a, r0, r1, RC_SP_COL_NM_ANY); break;
    }
}

/* ---- block-mask form, batch 1 ------------------------------------------------------------- *
 * One 16-column block per step: the block's stored values expanded into the lanes of their
 * columns (vexpandps), times x loaded under the same mask (so unstored lanes are 0, never
 * 0 * inf), into one of two chains.  No gather and no per-entry index: the cost is per block,
 * which beats the per-entry gather once a row has more than a couple of entries per block. */
AI __m512 bmask_step(__m512 acc, unsigned m, const float **v, const float *xb) {
    const __mmask16 k = (__mmask16)m;
    const __m512 w = _mm512_maskz_expandloadu_ps(k, *v);
    *v += __builtin_popcount(m);
    return _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(k, xb), acc);
}

static void bmask_avx512(const rc_sparse_args *a, int64_t r0, int64_t r1) {
    const int64_t nblk = a->nblk;
    for (int64_t s = 0; s < a->batch; ++s) {
        const float *x = a->x + s * a->in;
        const float *v = a->values + rc_sp_indptr(a, r0); /* rows' values are consecutive */
        for (int64_t i = r0; i < r1; ++i) {
            const uint16_t *mk = a->bmask + i * nblk;
            __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
            int64_t b = 0;
            for (; b + 2 <= nblk; b += 2) {
                s0 = bmask_step(s0, mk[b], &v, x + 16 * b);
                s1 = bmask_step(s1, mk[b + 1], &v, x + 16 * b + 16);
            }
            if (b < nblk) s0 = bmask_step(s0, mk[b], &v, x + 16 * b);
            const float bias = a->bias ? a->bias[i] : 0.0f;
            a->y[s * a->out + i] = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) + bias;
        }
    }
}

/* ---- sliced-ELLPACK form, batch 1 --------------------------------------------------------- *
 * A step is 16 rows' next entries: the 16 values as one vector, the 16 x entries assembled
 * from scalar loads (indices from four 64-bit loads split by shifts), one FMA into a vector
 * whose lane r is row r's sum; two chains.  No horizontal sum and no per-row loop exit: a
 * slice costs max-length steps, and its lanes have about equal lengths (sorted), so padding
 * is a few percent.  On Zen 4 this measured 0.22-0.26 ns per entry against the row form's
 * 0.48-0.56 on rows of 15-20 entries (where the row form's loop exits and horizontal sums
 * dominate) and 0.25-0.27 on long rows.  vgatherdps instead measured 0.39-0.42, masked
 * broadcast loads 0.30-0.34, and x entries stored through a buffer 0.32. */
AI __m512 sell_x16(const float *x, const rc_csr_sell *f, int64_t q, int mode) {
    int64_t c[16];
    if (mode == RC_SP_COL_U16) {
        const uint16_t *ind = (const uint16_t *)f->indices + q;
        for (int u = 0; u < 4; ++u) {
            uint64_t w;
            memcpy(&w, ind + 4 * u, 8);
            c[4 * u] = (int64_t)(w & 0xFFFF);
            c[4 * u + 1] = (int64_t)((w >> 16) & 0xFFFF);
            c[4 * u + 2] = (int64_t)((w >> 32) & 0xFFFF);
            c[4 * u + 3] = (int64_t)(w >> 48);
        }
    } else {
        const int32_t *ind = (const int32_t *)f->indices + q;
        for (int u = 0; u < 16; ++u) c[u] = ind[u];
    }
    const __m256 lo = _mm256_setr_ps(x[c[0]], x[c[1]], x[c[2]], x[c[3]], x[c[4]], x[c[5]], x[c[6]], x[c[7]]);
    const __m256 hi = _mm256_setr_ps(x[c[8]], x[c[9]], x[c[10]], x[c[11]], x[c[12]], x[c[13]], x[c[14]], x[c[15]]);
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

AI void sell_slices(const rc_sell_args *a, int64_t s0, int64_t s1, int mode) {
    const rc_csr_sell *f = a->f;
    float tmp[16] __attribute__((aligned(64)));
    for (int64_t s = s0; s < s1; ++s) {
        const int32_t *lens = f->lens + 16 * s;
        const int64_t q0 = f->off[s], full = lens[15], steps = lens[0]; /* lanes non-increasing */
        const float *v = f->values + q0;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        int64_t p = 0;
        for (; p + 2 <= full; p += 2) { /* every lane holds an entry */
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + 16 * p), sell_x16(a->x, f, q0 + 16 * p, mode), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + 16 * p + 16), sell_x16(a->x, f, q0 + 16 * p + 16, mode), acc1);
        }
        if (p < steps) {
            const __m512i len = _mm512_loadu_si512(lens);
            for (; p < steps; ++p) { /* the lanes still inside their row */
                const __mmask16 k = _mm512_cmpgt_epi32_mask(len, _mm512_set1_epi32((int)p));
                acc0 = _mm512_mask3_fmadd_ps(_mm512_loadu_ps(v + 16 * p), sell_x16(a->x, f, q0 + 16 * p, mode), acc0, k);
            }
        }
        _mm512_store_ps(tmp, _mm512_add_ps(acc0, acc1));
        const int32_t *rows = f->rows + 16 * s;
        for (int r = 0; r < 16; ++r) {
            const int32_t row = rows[r];
            if (row >= 0) a->y[row] = tmp[r] + (a->bias ? a->bias[row] : 0.0f);
        }
    }
}

static void sell_avx512(const rc_sell_args *a, int64_t s0, int64_t s1) {
    if (a->f->index_type == RC_UINT16) sell_slices(a, s0, s1, RC_SP_COL_U16);
    else sell_slices(a, s0, s1, RC_SP_COL_I32);
}

/* x rows [b0, b0 + nb), columns [j0, j1) -> panel[j][l]; lanes l >= nb are zero. */
static void pack_avx512(const rc_sparse_args *a, int64_t b0, int64_t nb, int64_t width, int64_t j0, int64_t j1,
                        float *panel) {
    __m512 r[16];
    for (int64_t l0 = 0; l0 < width; l0 += 16) {
        for (int64_t j = j0; j < j1; j += 16) {
            const int64_t nj = j1 - j < 16 ? j1 - j : 16;
            const __mmask16 m = tail16(nj);
            for (int q = 0; q < 16; ++q)
                r[q] = l0 + q < nb ? _mm512_maskz_loadu_ps(m, a->x + (b0 + l0 + q) * a->in + j) : _mm512_setzero_ps();
            rc_transpose16_ps(r);
            for (int64_t c = 0; c < nj; ++c) _mm512_store_ps(panel + (j + c) * width + l0, r[c]);
        }
    }
}

/* ---- panel rows ------------------------------------------------------------------------- */

#define FMA(acc, w, ptr) acc = _mm512_fmadd_ps(w, _mm512_load_ps(ptr), acc)

/* Width 16: one zmm per entry, four chains (FMA latency 4, one 512-bit FMA per cycle). */
AI void row16(const rc_sparse_args *a, const float *P, rc_sp_row r, int mode, float *out) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t p = 0;
    for (; p + 4 <= r.n; p += 4) {
        FMA(a0, _mm512_set1_ps(r.v[p]), P + rc_sp_col(a, r.ind, mode, p) * 16);
        FMA(a1, _mm512_set1_ps(r.v[p + 1]), P + rc_sp_col(a, r.ind, mode, p + 1) * 16);
        FMA(a2, _mm512_set1_ps(r.v[p + 2]), P + rc_sp_col(a, r.ind, mode, p + 2) * 16);
        FMA(a3, _mm512_set1_ps(r.v[p + 3]), P + rc_sp_col(a, r.ind, mode, p + 3) * 16);
    }
    for (; p < r.n; ++p) FMA(a0, _mm512_set1_ps(r.v[p]), P + rc_sp_col(a, r.ind, mode, p) * 16);
    _mm512_store_ps(out, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* Width 32: two zmm per entry, two entries in flight (4 chains). */
AI void row32(const rc_sparse_args *a, const float *P, rc_sp_row r, int mode, float *out) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    int64_t p = 0;
    for (; p + 2 <= r.n; p += 2) {
        const float *x0 = P + rc_sp_col(a, r.ind, mode, p) * 32, *x1 = P + rc_sp_col(a, r.ind, mode, p + 1) * 32;
        const __m512 w0 = _mm512_set1_ps(r.v[p]), w1 = _mm512_set1_ps(r.v[p + 1]);
        FMA(a0, w0, x0);
        FMA(a1, w0, x0 + 16);
        FMA(b0, w1, x1);
        FMA(b1, w1, x1 + 16);
    }
    if (p < r.n) {
        const float *x0 = P + rc_sp_col(a, r.ind, mode, p) * 32;
        const __m512 w0 = _mm512_set1_ps(r.v[p]);
        FMA(a0, w0, x0);
        FMA(a1, w0, x0 + 16);
    }
    _mm512_store_ps(out, _mm512_add_ps(a0, b0));
    _mm512_store_ps(out + 16, _mm512_add_ps(a1, b1));
}

/* Lanes [l0, l0 + 16) of the sums of rows [i0, i0 + rows) (tile[q][W], q < 16; rows past
 * `rows` are ignored) to y: transposed 16 x 16 so that each store writes 16 consecutive
 * outputs y[b, i0 .. i0 + 16). */
AI void store_chunk(const rc_sparse_args *a, const float *tile, const int64_t W, int64_t b0, int64_t nb, int64_t i0,
                    int64_t rows, int64_t l0) {
    __m512 t[16];
    const __mmask16 m = tail16(rows);
    const __m512 bias = a->bias ? _mm512_maskz_loadu_ps(m, a->bias + i0) : _mm512_setzero_ps();
    for (int q = 0; q < 16; ++q) t[q] = _mm512_load_ps(tile + q * W + l0);
    rc_transpose16_ps(t);
    const int64_t nl = nb - l0 < 16 ? nb - l0 : 16;
    for (int64_t l = 0; l < nl; ++l)
        _mm512_mask_storeu_ps(a->y + (b0 + l0 + l) * a->out + i0, m, _mm512_add_ps(t[l], bias));
}

/* All nb lanes of a tile's sums to y. */
AI void store_tile(const rc_sparse_args *a, const float *tile, const int64_t W, int64_t b0, int64_t nb, int64_t i0,
                   int64_t rows) {
    for (int64_t l0 = 0; l0 < nb; l0 += 16) store_chunk(a, tile, W, b0, nb, i0, rows, l0);
}

/* Rows in tiles of 16: each row's W sums go to tile[row][W], then to y by store_tile. */
AI void panel_rows(const rc_sparse_args *a, const float *P, const int64_t W, int64_t b0, int64_t nb,
                   int64_t r0, int64_t r1, int mode) {
    float tile[16 * 32] __attribute__((aligned(64)));
    memset(tile, 0, sizeof(tile)); /* rows past the last of a short tile are transposed too */
    for (int64_t i0 = r0; i0 < r1; i0 += 16) {
        const int64_t rows = r1 - i0 < 16 ? r1 - i0 : 16;
        for (int64_t q = 0; q < rows; ++q) {
            const rc_sp_row r = rc_sp_get_row(a, i0 + q);
            float *out = tile + q * W;
            if (W == 16) row16(a, P, r, mode, out);
            else row32(a, P, r, mode, out);
        }
        store_tile(a, tile, W, b0, nb, i0, rows);
    }
}

/* ---- column-blocked panel rows ------------------------------------------------------------ *
 * A tile of 32 rows walks the panel in slices of RC_SP_CB_COLS columns: every row of the
 * tile takes its entries inside the slice (its cursor moves on), adding into its W partial
 * sums kept in `tile`.  The slice (128 columns x 64 lanes = 32 KB) is read from L2 once per
 * tile and then hit in L1 by the other rows, instead of each entry pulling its 256-byte
 * panel row from L2.  W / 16 zmm per entry, two entries in flight.  A row's slice end: for
 * N:M with m dividing the slice a count (n / m * RC_SP_CB_COLS entries per slice), otherwise
 * 64 / 32 / 16 indices per step (cb_slice_end); the scalar scan it replaced (a compare and an
 * unpredictable exit branch per entry) made this kernel lose at batch 16 (2:4: 454 -> 666 us),
 * the count makes it win there (docs/sparse_kernels.md). */
AI void cb_entries(const rc_sparse_args *a, const float *P, const int64_t W, rc_sp_row r, int mode, int64_t p,
                   int64_t e, float *acc) {
    enum { NV_MAX = 4 };
    const int64_t NV = W / 16;
    __m512 s0[NV_MAX], s1[NV_MAX];
    for (int64_t u = 0; u < NV; ++u) {
        s0[u] = _mm512_load_ps(acc + 16 * u);
        s1[u] = _mm512_setzero_ps();
    }
    for (; p + 2 <= e; p += 2) {
        const float *x0 = P + rc_sp_col(a, r.ind, mode, p) * W, *x1 = P + rc_sp_col(a, r.ind, mode, p + 1) * W;
        const __m512 w0 = _mm512_set1_ps(r.v[p]), w1 = _mm512_set1_ps(r.v[p + 1]);
        for (int64_t u = 0; u < NV; ++u) {
            FMA(s0[u], w0, x0 + 16 * u);
            FMA(s1[u], w1, x1 + 16 * u);
        }
    }
    if (p < e) {
        const float *x0 = P + rc_sp_col(a, r.ind, mode, p) * W;
        const __m512 w0 = _mm512_set1_ps(r.v[p]);
        for (int64_t u = 0; u < NV; ++u) FMA(s0[u], w0, x0 + 16 * u);
    }
    for (int64_t u = 0; u < NV; ++u) _mm512_store_ps(acc + 16 * u, _mm512_add_ps(s0[u], s1[u]));
}

/* The first entry at or after e whose column is >= j1 (CSR: columns increase within a row):
 * the indices at their own width, 64 / 32 / 16 per step, compared with j1 - 1 in one
 * instruction; the columns < j1 form a prefix, so their count is the step's advance. */
AI int64_t cb_slice_end(const rc_sparse_args *a, rc_sp_row r, int mode, int64_t e, int64_t j1) {
    if (mode == RC_SP_COL_NM_POW2 || mode == RC_SP_COL_NM_ANY) {
        while (e < r.n && rc_sp_col(a, r.ind, mode, e) < j1) ++e;
        return e;
    }
    /* j1 >= RC_SP_CB_COLS > 0; clamped to the index type's range, which holds every column */
    const int64_t lim = j1 - 1;
    const int VL = mode == RC_SP_COL_U8 ? 64 : (mode == RC_SP_COL_U16 ? 32 : 16);
    while (e < r.n) {
        const int64_t left = r.n - e;
        const uint64_t m = left >= VL ? ~(uint64_t)0 >> (64 - VL) : ((uint64_t)1 << left) - 1;
        int cnt;
        if (mode == RC_SP_COL_U8)
            cnt = __builtin_popcountll(_mm512_mask_cmple_epu8_mask(
                m, _mm512_maskz_loadu_epi8(m, (const uint8_t *)r.ind + e), _mm512_set1_epi8((char)(lim < 255 ? lim : 255))));
        else if (mode == RC_SP_COL_U16)
            cnt = __builtin_popcount(_mm512_mask_cmple_epu16_mask(
                (__mmask32)m, _mm512_maskz_loadu_epi16((__mmask32)m, (const uint16_t *)r.ind + e),
                _mm512_set1_epi16((short)(lim < 65535 ? lim : 65535))));
        else
            cnt = __builtin_popcount(_mm512_mask_cmple_epi32_mask(
                (__mmask16)m, _mm512_maskz_loadu_epi32((__mmask16)m, (const int32_t *)r.ind + e),
                _mm512_set1_epi32((int32_t)(lim < INT32_MAX ? lim : INT32_MAX))));
        e += cnt;
        if (cnt < VL) break;
    }
    return e;
}

AI void cb_rows(const rc_sparse_args *a, const float *P, const int64_t W, int64_t b0, int64_t nb, int64_t r0,
                int64_t r1, int mode) {
    enum { TR = 32 }; /* rows per tile: two store tiles */
    float tile[TR * 64] __attribute__((aligned(64)));
    rc_sp_row rows_[TR];
    int64_t cur[TR];
    /* N:M with m dividing the slice: every row has exactly RC_SP_CB_COLS / m * n entries in
     * each slice (the last may be cut short by the row's end), so no scan for the slice end */
    const int64_t per = a->format == RC_SP_NM && RC_SP_CB_COLS % a->m == 0 ? RC_SP_CB_COLS / a->m * a->n : 0;
    for (int64_t i0 = r0; i0 < r1; i0 += TR) {
        const int64_t rows = r1 - i0 < TR ? r1 - i0 : TR;
        memset(tile, 0, sizeof(tile));
        for (int64_t q = 0; q < rows; ++q) {
            rows_[q] = rc_sp_get_row(a, i0 + q);
            cur[q] = 0;
        }
        for (int64_t j1 = RC_SP_CB_COLS; j1 - RC_SP_CB_COLS < a->in; j1 += RC_SP_CB_COLS) {
            for (int64_t q = 0; q < rows; ++q) {
                const rc_sp_row r = rows_[q];
                int64_t e = cur[q];
                if (per) e = r.n - e < per ? r.n : e + per;
                else e = cb_slice_end(a, r, mode, e, j1);
                if (e > cur[q]) cb_entries(a, P, W, r, mode, cur[q], e, tile + q * W);
                cur[q] = e;
            }
        }
        for (int64_t q0 = 0; q0 < rows; q0 += 16)
            store_tile(a, tile + q0 * W, W, b0, nb, i0 + q0, rows - q0 < 16 ? rows - q0 : 16);
    }
}

static void panel_avx512(const rc_sparse_args *a, const float *P, int64_t width, int64_t b0, int64_t nb,
                         int64_t r0, int64_t r1) {
    switch (a->col_mode) {
        RC_SP_WIDTH_CASE2(panel_rows, RC_SP_COL_U8, 16, 32)
        RC_SP_WIDTH_CASE2(panel_rows, RC_SP_COL_U16, 16, 32)
        RC_SP_WIDTH_CASE2(panel_rows, RC_SP_COL_I32, 16, 32)
        RC_SP_WIDTH_CASE2(panel_rows, RC_SP_COL_NM_POW2, 16, 32)
        RC_SP_WIDTH_CASE2(panel_rows, RC_SP_COL_NM_ANY, 16, 32)
    }
}

/* The next row block's values or positions (one contiguous range each: rows are stored one
 * after another), prefetched a share per batch pass while this block computes.  The
 * transpose reads them 16 rows at a time, 16 strided streams that the hardware prefetcher
 * did not follow: with the weights out of L2 (3072 x 768) that read cost ~20 % of the kernel
 * (measured by skipping it); the prefetch took batch 128-256 10-20 % faster. */
typedef struct {
    const char *p;    /* NULL when there is no next block */
    int64_t done, len; /* bytes */
} nmrv_pf;

AI void nmrv_prefetch(nmrv_pf *f, int64_t lines) {
    for (; lines > 0 && f->done < f->len; --lines, f->done += 64) _mm_prefetch(f->p + f->done, _MM_HINT_T0);
}

/* ---- column-blocked panels for 2:4: rows in registers ---------------------------------------- *
 * The x operand of every FMA is a panel row read from L1 as the FMA's memory operand, never
 * rearranged.  On Zen 5 two 512-bit FMAs and two loads issue per cycle, but a shuffle shares
 * issue with the FMAs: the row-vectorised kernel's FMA plus vpermps measured 0.18 ns against
 * 0.12 for the FMA alone, and dense OpenBLAS runs at 0.14 ns per FMA, so 2:4 at 1.6x dense
 * asks <= 0.175 ns per FMA of its own, everything included.  Here the limit is the loads: per
 * entry W/16 panel loads, a weight broadcast and 1/8 of a 64-bit position load (8 of a row's
 * positions, split by shifts), ~1.16 loads per FMA, 0.15 ns per FMA in L1 (W = 128).  R rows
 * share each pass over a slice of the panel (32 KB), their R x W/16 sums in registers (16
 * chains at W = 32..128), going through a tile between slices (1/32 of the FMAs' loads and
 * stores).  A tile's sums go to y 16 lanes per block call during the next tile: stored at
 * once, its W x 16 rows of y (same 4 KB offset) thrashed one L1 set (1024 x 128 batch 256:
 * 313 -> 229 us).  The next tile's weights are prefetched like the row-vectorised kernel's. */
/* One entry: its weight times the panel row `pos` of the group at `base`, W / 16 FMAs. */
AI void nmrb_entry(__m512 *acc, const int64_t T, const char *base, float w, int64_t pos, const int64_t W) {
    const __m512 wv = _mm512_set1_ps(w);
    const float *xr = (const float *)(base + pos * W * 4);
    /* one register for the row's address: without this GCC keeps a pointer per 64-byte
     * offset as separate induction variables, spills them to xmm registers and moves them
     * back before every FMA (twice as slow) */
    __asm__("" : "+r"(xr));
#pragma GCC unroll 8
    for (int64_t t = 0; t < T; ++t) FMA(acc[t], wv, xr + 16 * t);
}

AI void nmrb_block(const float *P, const int64_t W, const int R, const float *const *v, const uint8_t *const *ix,
                   const int64_t n, const int64_t m, int64_t g0, int64_t g1, int first, float *tile) {
    enum { RMAX = 8, TMAX = 8 };
    const int64_t T = W / 16;
    __m512 acc[RMAX][TMAX];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int64_t t = 0; t < T; ++t)
            acc[r][t] = first ? _mm512_setzero_ps() : _mm512_load_ps(tile + r * W + 16 * t);
    /* groups [g0, g1) of R rows; their sums start from the tile unless this is the first slice */
    int64_t g = g0;
    if (8 % n == 0) { /* a row's positions of 8 / n groups in one 64-bit load, split by shifts */
        const int64_t G8 = 8 / n;
        for (; g + G8 <= g1; g += G8) {
            uint64_t q[RMAX];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) memcpy(&q[r], ix[r] + g * n, 8);
#pragma GCC unroll 8
            for (int64_t u = 0; u < G8; ++u) {
                const char *base = (const char *)(P + (g + u) * m * W);
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
                    for (int64_t e = 0; e < n; ++e)
                        nmrb_entry(acc[r], T, base, v[r][(g + u) * n + e], (int64_t)((q[r] >> (8 * (u * n + e))) & 255), W);
            }
        }
    }
    for (; g < g1; ++g) {
        const char *base = (const char *)(P + g * m * W);
        for (int r = 0; r < R; ++r)
            for (int64_t e = 0; e < n; ++e) nmrb_entry(acc[r], T, base, v[r][g * n + e], ix[r][g * n + e], W);
    }
    for (int r = 0; r < R; ++r)
        for (int64_t t = 0; t < T; ++t) _mm512_store_ps(tile + r * W + 16 * t, acc[r][t]);
}

AI void nmrb_rows(const rc_sparse_args *a, const float *P, const int64_t W, int64_t b0, int64_t nb, int64_t r0,
                  int64_t r1, const int64_t n, const int64_t m) {
    enum { TR = 16 }; /* rows per tile: one store tile, a multiple of every R */
    const int R = W == 128 ? 2 : (W == 64 ? 4 : 8);
    /* two tiles: the sums of one go to y 16 lanes per block call while the next computes */
    float tiles[2][TR * 128] __attribute__((aligned(64)));
    memset(tiles, 0, sizeof(tiles)); /* tile rows past a short tile's last block are transposed too */
    const int64_t K = a->row_len, groups = a->in / m;
    /* groups per slice: a slice of the panel is 32 KB, or one group when a group is wider */
    const int64_t gps = 8192 / W / m > 0 ? 8192 / W / m : 1;
    int64_t pend_i0 = -1, pend_rows = 0, pend_l0 = 0; /* the previous tile, lanes [pend_l0, nb) still to store */
    int cur = 0;
    for (int64_t i0 = r0; i0 < r1; i0 += TR, cur ^= 1) {
        const int64_t rows = r1 - i0 < TR ? r1 - i0 : TR;
        float *tile = tiles[cur];
        /* the next tile's weights (two contiguous ranges), a share per block call */
        const int64_t next = r1 - i0 - TR > 0 ? (r1 - i0 - TR < TR ? r1 - i0 - TR : TR) : 0;
        nmrv_pf pv = {next ? (const char *)(a->values + (i0 + TR) * K) : NULL, 0, next * K * 4};
        nmrv_pf pi = {next ? (const char *)a->indices + (i0 + TR) * K : NULL, 0, next * K};
        const int64_t calls = (groups + gps - 1) / gps * ((rows + R - 1) / R);
        const int64_t sv = (pv.len / 64 + calls) / calls, si = (pi.len / 64 + calls) / calls;
        for (int64_t g0 = 0; g0 < groups; g0 += gps) {
            const int64_t g1 = groups - g0 < gps ? groups : g0 + gps;
            for (int64_t q0 = 0; q0 < rows; q0 += R) {
                const float *v[8];
                const uint8_t *ix[8];
                for (int r = 0; r < R; ++r) { /* a short block repeats its last row; its sums are never stored */
                    const int64_t row = i0 + (q0 + r < rows ? q0 + r : rows - 1);
                    v[r] = a->values + row * K;
                    ix[r] = (const uint8_t *)a->indices + row * K;
                }
                nmrv_prefetch(&pv, sv);
                nmrv_prefetch(&pi, si);
                if (R == 2) nmrb_block(P, W, 2, v, ix, n, m, g0, g1, g0 == 0, tile + q0 * W);
                else if (R == 4) nmrb_block(P, W, 4, v, ix, n, m, g0, g1, g0 == 0, tile + q0 * W);
                else nmrb_block(P, W, 8, v, ix, n, m, g0, g1, g0 == 0, tile + q0 * W);
                if (pend_i0 >= 0 && pend_l0 < nb) {
                    store_chunk(a, tiles[cur ^ 1], W, b0, nb, pend_i0, pend_rows, pend_l0);
                    pend_l0 += 16;
                }
            }
        }
        if (pend_i0 >= 0)
            for (; pend_l0 < nb; pend_l0 += 16) store_chunk(a, tiles[cur ^ 1], W, b0, nb, pend_i0, pend_rows, pend_l0);
        pend_i0 = i0;
        pend_rows = rows;
        pend_l0 = 0;
    }
    if (pend_i0 >= 0) store_tile(a, tiles[cur ^ 1], W, b0, nb, pend_i0, pend_rows);
}

AI void nmrb_widths(const rc_sparse_args *a, const float *P, int64_t width, int64_t b0, int64_t nb, int64_t r0,
                    int64_t r1, const int64_t n, const int64_t m) {
    if (width == 16) nmrb_rows(a, P, 16, b0, nb, r0, r1, n, m);
    else if (width == 32) nmrb_rows(a, P, 32, b0, nb, r0, r1, n, m);
    else if (width == 64) nmrb_rows(a, P, 64, b0, nb, r0, r1, n, m);
    else nmrb_rows(a, P, 128, b0, nb, r0, r1, n, m);
}

/* ---- column-blocked panels from row tiles (CSR) -------------------------------------------- *
 * The tiles (rc_csr_tiles_build) give, per 64 rows and slice (128 or 256 columns, by density:
 * the 128-column slice of a 64-lane panel stays in L1), blocks of 4 rows with
 * about equal entry counts in the slice: the 4 rows' W / 16 sums each stay in registers (16
 * chains at 64 lanes) while their entries are taken together, in phases of 4, 3, 2 and 1 rows
 * as the rows (sorted by count) run out.  No slice end is searched, and the sums go through
 * the tile once per block and slice instead of once per row and slice.  Per entry: its index,
 * its value broadcast and W / 16 panel rows, all loads.  A tile's sums go to y during the next
 * tile, a 16 x 16 chunk per block: stored at once, a tile's 64 lanes x 32 rows of y (the
 * tiles' height then; 4 KB apart in the benchmark's layers) thrashed one L1 set, 20-25 % of
 * the kernel at density 0.1. */
AI void tl_phase(const rc_sparse_args *a, const float *P, const int64_t W, const int R, const float *const *v,
                 const char *const *ix, int mode, int64_t k0, int64_t k1, __m512 (*acc)[4]) {
    const int64_t T = W / 16;
    const int isz = mode == RC_SP_COL_U8 ? 1 : (mode == RC_SP_COL_U16 ? 2 : 4);
    int64_t k = k0;
    /* 4 entries per row and step: their indices from one 64-bit (uint16) or 32-bit (uint8) load
     * split by shifts, their values from one 128-bit load spread by in-lane shuffles, instead of
     * 4 index loads and 4 broadcasts.  The load ports are this loop's limit (two loads a cycle,
     * docs/sparse_kernels.md): 6 loads per 4 FMAs became 4.5, measured 1.10-1.17x faster at
     * density 0.1-0.3.  int32 indices (in > 65536) keep one load per entry. */
    if (isz <= 2) {
        for (; k + 4 <= k1; k += 4) {
            uint64_t q[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                if (isz == 2) memcpy(&q[r], ix[r] + k * 2, 8);
                else {
                    uint32_t t4;
                    memcpy(&t4, ix[r] + k, 4);
                    q[r] = t4;
                }
            }
            __m512 v4[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) v4[r] = _mm512_broadcast_f32x4(_mm_loadu_ps(v[r] + k));
#pragma GCC unroll 4
            for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r) {
                    const __m512 w = u == 0   ? _mm512_shuffle_ps(v4[r], v4[r], 0x00)
                                     : u == 1 ? _mm512_shuffle_ps(v4[r], v4[r], 0x55)
                                     : u == 2 ? _mm512_shuffle_ps(v4[r], v4[r], 0xAA)
                                              : _mm512_shuffle_ps(v4[r], v4[r], 0xFF);
                    const uint64_t col = isz == 2 ? (q[r] >> (16 * u)) & 0xFFFF : (q[r] >> (8 * u)) & 0xFF;
                    const float *xr = P + col * W;
#pragma GCC unroll 4
                    for (int64_t t = 0; t < T; ++t) FMA(acc[r][t], w, xr + 16 * t);
                }
        }
    }
    for (; k < k1; ++k) {
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const __m512 w = _mm512_set1_ps(v[r][k]);
            const float *xr = P + rc_sp_col(a, ix[r] + k * isz, mode, 0) * W;
#pragma GCC unroll 4
            for (int64_t t = 0; t < T; ++t) FMA(acc[r][t], w, xr + 16 * t);
        }
    }
}

AI void tl_rows(const rc_sparse_args *a, const float *P, const int64_t W, int64_t b0, int64_t nb, int64_t r0,
                int64_t r1, int mode) {
    enum { TR = RC_SP_TL_ROWS };
    /* two tiles: the sums of one go to y a 16 x 16 chunk per block while the next computes
     * (row TR of each: the padding rows' scratch) */
    float tiles[2][(TR + 1) * 64] __attribute__((aligned(64)));
    const int64_t cols = ((const rc_sp_tl_head *)a->tiles)->cols; /* checked by rc_spmm_csr_f32 */
    const int64_t T = W / 16, nsl = (a->in + cols - 1) / cols;
    const int isz = mode == RC_SP_COL_U8 ? 1 : (mode == RC_SP_COL_U16 ? 2 : 4);
    const int64_t lchunks = (nb + 15) / 16;
    int64_t pend_i0 = -1, pend_rows = 0, pend_c = 0, pend_n = 0; /* chunks [pend_c, pend_n) of the previous tile */
    int cur = 0;
    for (int64_t i0 = r0; i0 < r1; i0 += TR, cur ^= 1) {
        const int64_t rows = a->out - i0 < TR ? a->out - i0 : TR;
        float *tile = tiles[cur];
        const float *prev = tiles[cur ^ 1];
        const rc_sp_tl_blk *blk = rc_sp_tl_blocks(a->tiles) + i0 / TR * nsl * (TR / 4);
        const int64_t base = rc_sp_indptr(a, i0);
        memset(tile, 0, sizeof(tiles[0]));
        for (int64_t s = 0; s < nsl; ++s)
            for (int b = 0; b < TR / 4; ++b, ++blk) {
                __m512 acc[4][4];
                const float *v[4];
                const char *ix[4];
#pragma GCC unroll 4
                for (int r = 0; r < 4; ++r) {
                    float *tr = tile + blk->row[r] * W;
                    for (int64_t t = 0; t < T; ++t) acc[r][t] = _mm512_load_ps(tr + 16 * t);
                    v[r] = a->values + base + blk->off[r];
                    ix[r] = (const char *)a->indices + (base + blk->off[r]) * isz;
                }
                const int64_t c0 = blk->cnt[0], c1 = blk->cnt[1], c2 = blk->cnt[2], c3 = blk->cnt[3];
                tl_phase(a, P, W, 4, v, ix, mode, 0, c3, acc);
                tl_phase(a, P, W, 3, v, ix, mode, c3, c2, acc);
                tl_phase(a, P, W, 2, v, ix, mode, c2, c1, acc);
                tl_phase(a, P, W, 1, v, ix, mode, c1, c0, acc);
#pragma GCC unroll 4
                for (int r = 0; r < 4; ++r) {
                    float *tr = tile + blk->row[r] * W;
                    for (int64_t t = 0; t < T; ++t) _mm512_store_ps(tr + 16 * t, acc[r][t]);
                }
                if (pend_c < pend_n) {
                    const int64_t q0 = pend_c / lchunks * 16;
                    store_chunk(a, prev + q0 * W, W, b0, nb, pend_i0 + q0, pend_rows - q0 < 16 ? pend_rows - q0 : 16,
                                pend_c % lchunks * 16);
                    ++pend_c;
                }
            }
        for (; pend_c < pend_n; ++pend_c) {
            const int64_t q0 = pend_c / lchunks * 16;
            store_chunk(a, prev + q0 * W, W, b0, nb, pend_i0 + q0, pend_rows - q0 < 16 ? pend_rows - q0 : 16,
                        pend_c % lchunks * 16);
        }
        pend_i0 = i0;
        pend_rows = rows;
        pend_c = 0;
        pend_n = (rows + 15) / 16 * lchunks;
    }
    for (; pend_c < pend_n; ++pend_c) {
        const int64_t q0 = pend_c / lchunks * 16;
        store_chunk(a, tiles[cur ^ 1] + q0 * W, W, b0, nb, pend_i0 + q0, pend_rows - q0 < 16 ? pend_rows - q0 : 16,
                    pend_c % lchunks * 16);
    }
}

static void panel_tiles_avx512(const rc_sparse_args *a, const float *P, int64_t width, int64_t b0, int64_t nb,
                               int64_t r0, int64_t r1) {
    switch (a->col_mode) {
        RC_SP_WIDTH_CASE(tl_rows, RC_SP_COL_U8, 16, 32, 64)
        RC_SP_WIDTH_CASE(tl_rows, RC_SP_COL_U16, 16, 32, 64)
        RC_SP_WIDTH_CASE(tl_rows, RC_SP_COL_I32, 16, 32, 64)
    default: break; /* tiles are built for CSR only */
    }
}

static void panel_cb_avx512(const rc_sparse_args *a, const float *P, int64_t width, int64_t b0, int64_t nb,
                            int64_t r0, int64_t r1) {
    if (a->format == RC_SP_NM && a->n == 2 && a->m == 4) {
        nmrb_widths(a, P, width, b0, nb, r0, r1, 2, 4);
        return;
    }
    switch (a->col_mode) {
        RC_SP_WIDTH_CASE(cb_rows, RC_SP_COL_U8, 16, 32, 64)
        RC_SP_WIDTH_CASE(cb_rows, RC_SP_COL_U16, 16, 32, 64)
        RC_SP_WIDTH_CASE(cb_rows, RC_SP_COL_I32, 16, 32, 64)
        RC_SP_WIDTH_CASE(cb_rows, RC_SP_COL_NM_POW2, 16, 32, 64)
        RC_SP_WIDTH_CASE(cb_rows, RC_SP_COL_NM_ANY, 16, 32, 64)
    }
}

/* ---- N:M with m dividing 16, batch >= RC_SP_NMRV_MIN_BATCH: rows in the lanes ------------- *
 * Sixteen output rows share a vector.  Their entries are transposed (16 x 16 in registers) into
 * a small buffer, slot-major: slot p holds the 16 rows' p-th values and, as int32, the column
 * of each inside its 16-column chunk ((p / n) * m % 16 + position).  Then for each chunk of 16
 * input columns a batch row's 16 x entries are one load, and an entry slot is one vpermps
 * (each lane picks its row's column) and one FMA into a vector of 16 rows' sums, stored as is
 * to y[b, i0 .. i0 + 16).  No broadcast and no panel: per FMA one shuffle, and loads only of
 * x (one per 16 columns and batch row) and of the buffer (shared by 8 batch rows).  The
 * panel kernels need a broadcast and a panel load per FMA.  On 2:4 (kernel alone, one thread,
 * min of 15-21 calls, alternating with the panel kernel in one process, Zen 4): batch 256
 * 3.76-3.95 against 5.0-5.4 ms (1024 x 1024), 8.7 against 13-17 ms (3072 x 768).  With the
 * next block's weights prefetched (nmrv_pf) it beats the panels from batch 2 (sparse.c,
 * RC_SP_NMRV_MIN_BATCH).
 * A row block is transposed whole into the caller's workspace (128 bytes per entry of a row
 * and thread); spans of 256 columns through 32 KB on the stack instead, partial sums going
 * through y between spans, measured ~10 % slower (Zen 4; on Zen 5 spans with the sums
 * through y or through a tile after the buffer measured 1.1x faster to 1.2x slower). */
#define RC_SP_NMRV_NB 8     /* batch rows sharing one pass over the buffer */

/* Slots [slot, slot + ns) against x columns [c, c + 16) of NB batch rows. */
AI void nmrv_chunk(const float *bv, const int32_t *bp, int64_t slot, const int64_t ns, const float *xc, int64_t ld,
                   __mmask16 cm, const int NB, __m512 *acc) {
    __m512 xv[RC_SP_NMRV_NB];
    for (int b = 0; b < NB; ++b) xv[b] = _mm512_maskz_loadu_ps(cm, xc + b * ld);
    int64_t k = 0;
    /* Even and odd slots go to two sets of sums: with one set, every batch row's sum is one FMA
     * chain, eight chains in all, and on Zen 5 (two 512-bit FMAs per cycle) that left the loop
     * waiting on FMA latency; two sets measured 3-5 % faster (docs/sparse_kernels.md). */
    for (; k + 2 <= ns; k += 2) {
        const __m512 w0 = _mm512_load_ps(bv + 16 * (slot + k)), w1 = _mm512_load_ps(bv + 16 * (slot + k + 1));
        const __m512i p0 = _mm512_load_si512(bp + 16 * (slot + k)), p1 = _mm512_load_si512(bp + 16 * (slot + k + 1));
        for (int b = 0; b < NB; ++b) acc[b] = _mm512_fmadd_ps(w0, _mm512_permutexvar_ps(p0, xv[b]), acc[b]);
        for (int b = 0; b < NB; ++b) acc[NB + b] = _mm512_fmadd_ps(w1, _mm512_permutexvar_ps(p1, xv[b]), acc[NB + b]);
    }
    if (k < ns) {
        const __m512 w = _mm512_load_ps(bv + 16 * (slot + k));
        const __m512i p = _mm512_load_si512(bp + 16 * (slot + k));
        for (int b = 0; b < NB; ++b) acc[b] = _mm512_fmadd_ps(w, _mm512_permutexvar_ps(p, xv[b]), acc[b]);
    }
}

/* All columns for NB batch rows from b0, then the bias; PC slots per full 16-column chunk (a
 * constant where it can be: the slot loop then unrolls completely). */
AI void nmrv_batch(const rc_sparse_args *a, const float *bv, const int32_t *bp, const int64_t PC, int64_t b0,
                   const int NB, int64_t i0, __mmask16 rows_m) {
    __m512 acc[2 * RC_SP_NMRV_NB];
    for (int b = 0; b < 2 * NB; ++b) acc[b] = _mm512_setzero_ps();
    int64_t slot = 0, c = 0;
    const int64_t in = a->in;
    const float *xb = a->x + b0 * in;
    for (; c + 16 <= in; c += 16, slot += PC) nmrv_chunk(bv, bp, slot, PC, xb + c, in, (__mmask16)0xFFFF, NB, acc);
    if (c < in) nmrv_chunk(bv, bp, slot, (in - c) / a->m * a->n, xb + c, in, tail16(in - c), NB, acc);
    const __m512 bias = a->bias ? _mm512_maskz_loadu_ps(rows_m, a->bias + i0) : _mm512_setzero_ps();
    for (int b = 0; b < NB; ++b)
        _mm512_mask_storeu_ps(a->y + (b0 + b) * a->out + i0, rows_m, _mm512_add_ps(_mm512_add_ps(acc[b], acc[NB + b]), bias));
}

/* Batch rows in passes of 8, then one of 4, 2 and 1 for the rest (a pass loads each slot's
 * values and positions once for its rows). */
AI void nmrv_rows(const rc_sparse_args *a, const float *bv, const int32_t *bp, const int64_t PC, int64_t i0,
                  __mmask16 rows_m, nmrv_pf *pv, nmrv_pf *pi) {
    const int64_t rest = a->batch % RC_SP_NMRV_NB;
    const int64_t passes = a->batch / RC_SP_NMRV_NB + (rest >> 2) + ((rest >> 1) & 1) + (rest & 1);
    const int64_t sv = (pv->len / 64 + passes) / passes, si = (pi->len / 64 + passes) / passes;
    int64_t b0 = 0;
    for (; b0 + RC_SP_NMRV_NB <= a->batch; b0 += RC_SP_NMRV_NB) {
        nmrv_prefetch(pv, sv);
        nmrv_prefetch(pi, si);
        nmrv_batch(a, bv, bp, PC, b0, RC_SP_NMRV_NB, i0, rows_m);
    }
    for (int nb = 4; nb >= 1; nb /= 2)
        if (a->batch - b0 >= nb) {
            nmrv_prefetch(pv, sv);
            nmrv_prefetch(pi, si);
            if (nb == 4) nmrv_batch(a, bv, bp, PC, b0, 4, i0, rows_m);
            else if (nb == 2) nmrv_batch(a, bv, bp, PC, b0, 2, i0, rows_m);
            else nmrv_batch(a, bv, bp, PC, b0, 1, i0, rows_m);
            b0 += nb;
        }
}

/* Row blocks [blk0, blk1) of 16 rows (the last may be short).  buf: 64-byte aligned room for
 * 32 * row_len floats, a whole row block transposed (values, then column indices). */
static void nm_rowvec_avx512(const rc_sparse_args *a, int64_t blk0, int64_t blk1, float *buf) {
    float *bv = buf;
    int32_t *bp = (int32_t *)(buf + 16 * a->row_len);
    const int64_t n = a->n, m = a->m, K = a->row_len, per_chunk = 16 / m * n;
    /* (blocking the batch, so that x stays in L2, measured slower on Zen 4, where every block
     * transposes the weights again; with the prefetch, batch blocks of 128 measured level on
     * Zen 5 at batch 256) */
    for (int64_t blk = blk0; blk < blk1; ++blk) {
        const int64_t i0 = 16 * blk, rows = a->out - i0 < 16 ? a->out - i0 : 16;
        const __mmask16 rows_m = tail16(rows);
        for (int64_t j = 0; j < K; j += 16) { /* 16 rows x 16 entries, transposed */
            const int64_t nj = K - j < 16 ? K - j : 16;
            const __mmask16 em = tail16(nj);
            __m512 r[16], pr[16]; /* values; positions widened to int32 (transposed as bits) */
            for (int q = 0; q < 16; ++q) {
                const int64_t off = (i0 + q) * K + j;
                r[q] = q < rows ? _mm512_maskz_loadu_ps(em, a->values + off) : _mm512_setzero_ps();
                pr[q] = _mm512_castsi512_ps(_mm512_cvtepu8_epi32(
                    q < rows ? _mm_maskz_loadu_epi8(em, (const uint8_t *)a->indices + off) : _mm_setzero_si128()));
            }
            rc_transpose16_ps(r);
            rc_transpose16_ps(pr);
            for (int64_t u = 0; u < nj; ++u) {
                _mm512_store_ps(bv + 16 * (j + u), r[u]);
                /* column inside its 16-column chunk: ((j + u) / n) * m % 16 + position */
                const int32_t base = (int32_t)((((j + u) / n) * m) & 15);
                _mm512_store_si512(bp + 16 * (j + u), _mm512_add_epi32(_mm512_castps_si512(pr[u]), _mm512_set1_epi32(base)));
            }
        }
        const int64_t next = blk + 1 < blk1 ? (a->out - i0 - 16 < 16 ? a->out - i0 - 16 : 16) : 0;
        nmrv_pf pv = {next ? (const char *)(a->values + (i0 + 16) * K) : NULL, 0, next * K * 4};
        nmrv_pf pi = {next ? (const char *)a->indices + (i0 + 16) * K : NULL, 0, next * K};
        if (per_chunk == 8) nmrv_rows(a, bv, bp, 8, i0, rows_m, &pv, &pi); /* 2:4, 4:8, 1:2 */
        else if (per_chunk == 4) nmrv_rows(a, bv, bp, 4, i0, rows_m, &pv, &pi);
        else nmrv_rows(a, bv, bp, per_chunk, i0, rows_m, &pv, &pi);
    }
}

static int64_t scan_csr_avx512(const void *indices, int itype, int64_t nnz, int64_t *lo, int64_t *hi) {
    return rc_sp_scan_csr(indices, itype, nnz, lo, hi);
}

static int scan_nm_avx512(const uint8_t *indices, int64_t total, int64_t n, int64_t m) {
    return rc_sp_scan_nm(indices, total, n, m);
}

const rc_sparse_kernels rc_sparse_avx512 = {gather_avx512, pack_avx512, panel_avx512, scan_csr_avx512, scan_nm_avx512,
                                            16, 32, 1, bmask_avx512, panel_cb_avx512, 64, 128,
                                            sell_avx512, nm_rowvec_avx512, panel_tiles_avx512};
#endif
