/* Sparse Linear (pruned weights): structure checks, the driver (work split, panels, threads),
 * dispatch, and the portable variant.  The ISA variants (sparse_<isa>.c) supply the three
 * kernels of rc_sparse_kernels; everything that decides *what* is computed lives here.
 *
 * Execution (docs/sparse_kernels.md):
 *  - small batches ("gather"): each output element is a dot product of a row's values with
 *    the x entries its indices select, vectorised along the row's entries;
 *  - larger batches ("panels"): x is transposed once into panels [in][width] of `width`
 *    batch lanes, so an entry (j, w) of row i is one broadcast-multiply-add of w with the
 *    contiguous panel row j into `width` accumulators held in registers;
 *  - threads take contiguous row ranges holding about equal numbers of entries. */
#include <stdlib.h>
#include <string.h>

#include "sparse.h"

#define RC_SPARSE_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512))
#define RC_SP_MAX_WIDTH 128 /* the widest panel of any variant (workspace bound): AVX-512's 2:4 panels */
#define RC_SP_MAX_PARTS 256
/* Column chunk of one packing work item. */
#define RC_SP_PACK_COLS 256
/* A row costs about this many entries' worth of work beyond its entries (its store and
 * loop overhead), so rows with few entries still count when balancing threads. */
#define RC_SP_ROW_COST 4
/* Batch 1 moves to two threads from this many entries: below it the team's start-up
 * (a few microseconds) costs more than half the product. */
#define RC_SP_MIN_PARALLEL_GEMV 16384

/* ---- structure checks ------------------------------------------------------------------ */

static const rc_sparse_kernels *pick(int v);

/* The checks run on the best variant this CPU has (they decide nothing numerical). */
static const rc_sparse_kernels *best_kernels(void) {
    return pick(rc_isa_resolve(RC_ISA_AUTO, RC_SPARSE_VARIANTS));
}

static int64_t ind_at(const void *ind, int itype, int64_t p) {
    switch (itype) {
    case RC_UINT8:  return ((const uint8_t *)ind)[p];
    case RC_UINT16: return ((const uint16_t *)ind)[p];
    default:        return ((const int32_t *)ind)[p];
    }
}

static int64_t iptr_at(const void *indptr, int bytes, int64_t r) {
    return bytes == 8 ? ((const int64_t *)indptr)[r] : (int64_t)((const int32_t *)indptr)[r];
}

int rc_csr_check(const void *indptr, int indptr_bytes, long long out_features, const void *indices,
                 int index_type, long long nnz, long long in_features, long long *where) {
    if (!indptr || !where || out_features < 0 || nnz < 0 || in_features < 0) return -1;
    if (indptr_bytes != 4 && indptr_bytes != 8) return -1;
    if (index_type != RC_UINT8 && index_type != RC_UINT16 && index_type != RC_INT32) return -1;
    if (nnz > 0 && !indices) return -1;
    *where = 0;
    if (iptr_at(indptr, indptr_bytes, 0) != 0) return RC_SPCHK_INDPTR_START;
    for (int64_t r = 0; r < out_features; ++r)
        if (iptr_at(indptr, indptr_bytes, r + 1) < iptr_at(indptr, indptr_bytes, r)) {
            *where = r;
            return RC_SPCHK_INDPTR_ORDER;
        }
    if (iptr_at(indptr, indptr_bytes, out_features) != nnz) {
        *where = out_features;
        return RC_SPCHK_INDPTR_END;
    }
    if (nnz == 0) return 0;
    /* Fast path: descents only at row starts, and min / max in range (vectorised scans). */
    int64_t lo, hi;
    const rc_sparse_kernels *k = best_kernels();
    const int64_t descents = k->scan_csr(indices, index_type, nnz, &lo, &hi);
    int64_t at_starts = 0;
    for (int64_t r = 0; r < out_features; ++r) {
        const int64_t s = iptr_at(indptr, indptr_bytes, r), e = iptr_at(indptr, indptr_bytes, r + 1);
        if (s > 0 && e > s) at_starts += ind_at(indices, index_type, s) <= ind_at(indices, index_type, s - 1);
    }
    if (descents == at_starts && lo >= 0 && hi < in_features) return 0;
    /* Slow path, only on bad input: the first offending entry in row order. */
    for (int64_t r = 0; r < out_features; ++r) {
        const int64_t s = iptr_at(indptr, indptr_bytes, r), e = iptr_at(indptr, indptr_bytes, r + 1);
        for (int64_t p = s; p < e; ++p) {
            const int64_t j = ind_at(indices, index_type, p);
            if (p > s && j <= ind_at(indices, index_type, p - 1)) {
                *where = p;
                return RC_SPCHK_INDEX_ORDER;
            }
            if (j < 0 || j >= in_features) {
                *where = p;
                return RC_SPCHK_INDEX_RANGE;
            }
        }
    }
    return 0; /* unreachable: the fast path's counts imply an offending entry */
}

int rc_nm_check(const uint8_t *indices, long long rows, long long row_len, int n, int m, long long *where) {
    if (!where || rows < 0 || row_len < 0 || n < 1 || m < n || m > 256 || row_len % n) return -1;
    const int64_t total = rows * row_len;
    if (total > 0 && !indices) return -1;
    *where = 0;
    if (!best_kernels()->scan_nm(indices, total, n, m)) return 0;
    for (int64_t p = 0; p < total; ++p) {
        if (p % n && indices[p] <= indices[p - 1]) {
            *where = p;
            return RC_SPCHK_INDEX_ORDER;
        }
        if (indices[p] >= m) {
            *where = p;
            return RC_SPCHK_INDEX_RANGE;
        }
    }
    return 0;
}

long long rc_csr_bmask_blocks(long long in_features) {
    return in_features < 0 ? -1 : (in_features + 15) / 16;
}

/* One pass over the (already checked) entries: bit j % 16 of block j / 16 of the row. */
int rc_csr_bmask_build(const void *indptr, int indptr_bytes, long long out_features, const void *indices,
                       int index_type, long long in_features, uint16_t *bmask) {
    if (!indptr || out_features < 0 || in_features < 0) return RC_ERR_ARG;
    if (indptr_bytes != 4 && indptr_bytes != 8) return RC_ERR_ARG;
    if (index_type != RC_UINT8 && index_type != RC_UINT16 && index_type != RC_INT32) return RC_ERR_ARG;
    const int64_t nblk = (in_features + 15) / 16;
    if (out_features * nblk > 0 && !bmask) return RC_ERR_ARG;
    if (iptr_at(indptr, indptr_bytes, out_features) > 0 && !indices) return RC_ERR_ARG;
    memset(bmask, 0, (size_t)(out_features * nblk) * sizeof(uint16_t));
    for (int64_t r = 0; r < out_features; ++r) {
        uint16_t *mk = bmask + r * nblk;
        const int64_t e = iptr_at(indptr, indptr_bytes, r + 1);
        for (int64_t p = iptr_at(indptr, indptr_bytes, r); p < e; ++p) {
            const int64_t j = ind_at(indices, index_type, p);
            if (j < 0 || j >= in_features) return RC_ERR_ARG; /* unchecked input: refuse, never write outside */
            mk[j >> 4] |= (uint16_t)(1u << (j & 15));
        }
    }
    return RC_OK;
}

/* ---- row tiles (column-blocked panels, CSR) ------------------------------------------------ *
 * The column-blocked panel kernel walks a tile's rows one at a time per slice; at density 0.1
 * (about 13 entries per row and 128-column slice) it was no faster than the plain panels.
 * Built once here: per tile and slice, the rows sorted by count and cut into blocks of 4, so
 * the kernel runs 4 rows' entries together (16 chains at 64 lanes) with no slice-end search
 * (docs/sparse_kernels.md has what each part was measured to give). */

/* Offsets within a tile are int32 (a tile holds at most RC_SP_TL_ROWS * in entries). */
#define RC_SP_TL_MAX_IN (INT32_MAX / RC_SP_TL_ROWS)

/* The slice width of a weight's tiles: a function of its shape and nnz only, so that a call can
 * check the width its headers claim (another width would send the kernel past the blocks).
 * out * in may pass int64 (rc_csr_tiles_bytes bounds out * in / 16), so the density is compared
 * in double: only which side of 1/8 it falls on matters, and both sides run correctly. */
static int64_t tl_cols(int64_t out, int64_t in, int64_t nnz) {
    return (double)RC_SP_TL_NARROW_DENSITY_INV * (double)nnz >= (double)out * (double)in ? RC_SP_TL_COLS_NARROW
                                                                                        : RC_SP_TL_COLS_WIDE;
}

/* Tiles of a weight with `out` rows (no overflow for any out >= 0). */
static int64_t tl_count(int64_t out) { return out / RC_SP_TL_ROWS + (out % RC_SP_TL_ROWS != 0); }

/* Bytes of the header and the blocks (sized for the narrow slices, the larger count: the
 * size does not depend on nnz), -1 past int64; the tiles' first-entry positions follow. */
static int64_t tl_blocks_end(int64_t out, int64_t in) {
    const int64_t tiles = tl_count(out);
    const int64_t slices = (in + RC_SP_TL_COLS_NARROW - 1) / RC_SP_TL_COLS_NARROW;
    int64_t n;
    if (__builtin_mul_overflow(tiles, slices, &n) ||
        __builtin_mul_overflow(n, (int64_t)(RC_SP_TL_ROWS / 4 * sizeof(rc_sp_tl_blk)), &n) ||
        __builtin_add_overflow(n, (int64_t)sizeof(rc_sp_tl_head), &n))
        return -1;
    return n;
}

/* After the blocks: indptr[64 t] for every tile t as built.  A block's offsets are from its
 * tile's first entry, which the kernel takes from the caller's indptr: a call compares the
 * two for every tile (O(out / 64)), so another weight of the same out, in and nnz, or an
 * indptr edited since, cannot send it outside [indptr[64 t], its tile's end as built), which
 * lies inside the nnz entries the header names. */
long long rc_csr_tiles_bytes(long long out_features, long long in_features) {
    if (out_features < 0 || in_features < 0 || in_features > RC_SP_TL_MAX_IN) return -1;
    int64_t n = tl_blocks_end(out_features, in_features);
    if (n < 0 || __builtin_add_overflow(n, tl_count(out_features) * (int64_t)sizeof(int64_t), &n)) return -1;
    return (long long)n;
}

int rc_csr_tiles_build(const void *indptr, int indptr_bytes, long long out_features, const void *indices,
                       int index_type, long long in_features, long long nnz, void *tiles) {
    if (!indptr || !tiles || out_features < 0 || nnz < 0) return RC_ERR_ARG;
    if (rc_csr_tiles_bytes(out_features, in_features) < 0) return RC_ERR_ARG;
    if (indptr_bytes != 4 && indptr_bytes != 8) return RC_ERR_ARG;
    if (index_type != RC_UINT8 && index_type != RC_UINT16 && index_type != RC_INT32) return RC_ERR_ARG;
    /* unchecked input: the loop below reads indices[indptr[i] .. indptr[i + 1]) */
    if (iptr_at(indptr, indptr_bytes, 0) != 0 || iptr_at(indptr, indptr_bytes, out_features) != nnz) return RC_ERR_ARG;
    for (int64_t i = 0; i < out_features; ++i)
        if (iptr_at(indptr, indptr_bytes, i + 1) < iptr_at(indptr, indptr_bytes, i)) return RC_ERR_ARG;
    if (nnz > 0 && !indices) return RC_ERR_ARG;
    const int64_t TR = RC_SP_TL_ROWS, ntl = tl_count(out_features);
    const int64_t cols = tl_cols(out_features, in_features, nnz), nsl = (in_features + cols - 1) / cols;
    *(rc_sp_tl_head *)tiles = (rc_sp_tl_head){RC_SP_TL_MAGIC, out_features, in_features, nnz, cols, {0, 0, 0}};
    rc_sp_tl_blk *blk = (rc_sp_tl_blk *)rc_sp_tl_blocks(tiles);
    int64_t *bases = (int64_t *)((char *)tiles + tl_blocks_end(out_features, in_features));
    for (int64_t t = 0; t < ntl; ++t) {
        const int64_t i0 = t * TR, rows = out_features - i0 < TR ? out_features - i0 : TR;
        const int64_t base = iptr_at(indptr, indptr_bytes, i0);
        bases[t] = base;
        int64_t cur[RC_SP_TL_ROWS], end[RC_SP_TL_ROWS];
        for (int64_t q = 0; q < rows; ++q) {
            cur[q] = iptr_at(indptr, indptr_bytes, i0 + q);
            end[q] = iptr_at(indptr, indptr_bytes, i0 + q + 1);
        }
        for (int64_t s = 0; s < nsl; ++s, blk += TR / 4) {
            const int64_t j1 = (s + 1) * cols;
            int cnt[RC_SP_TL_ROWS], ord[RC_SP_TL_ROWS];
            int32_t off[RC_SP_TL_ROWS];
            for (int64_t q = 0; q < TR; ++q) {
                int64_t e = q < rows ? cur[q] : 0;
                if (q < rows) {
                    off[q] = (int32_t)(cur[q] - base);
                    int64_t prev = -1;
                    for (; e < end[q]; ++e) {
                        const int64_t j = ind_at(indices, index_type, e);
                        /* unchecked input: refuse what would make a count or an address wrong */
                        if (j < 0 || j >= in_features || j <= prev) return RC_ERR_ARG;
                        if (j >= j1) break;
                        prev = j;
                    }
                    if (e > cur[q] && ind_at(indices, index_type, cur[q]) < s * cols) return RC_ERR_ARG;
                    cnt[q] = (int)(e - cur[q]);
                    cur[q] = e;
                } else {
                    off[q] = 0;
                    cnt[q] = 0;
                }
                ord[q] = (int)q;
            }
            for (int q = 1; q < TR; ++q) { /* insertion sort: count descending, then row */
                const int v = ord[q];
                int u = q;
                for (; u > 0 && cnt[ord[u - 1]] < cnt[v]; --u) ord[u] = ord[u - 1];
                ord[u] = v;
            }
            for (int b = 0; b < TR / 4; ++b)
                for (int r = 0; r < 4; ++r) {
                    const int q = ord[4 * b + r];
                    blk[b].row[r] = (uint16_t)(q < rows ? q : TR);
                    blk[b].cnt[r] = (uint16_t)cnt[q];
                    blk[b].off[r] = off[q];
                }
        }
        for (int64_t q = 0; q < rows; ++q)
            if (cur[q] != end[q]) return RC_ERR_ARG; /* entries past the last slice */
    }
    return RC_OK;
}

/* ---- sliced-ELLPACK form (batch 1) -------------------------------------------------------- *
 * Rows of similar length share a slice, so a slice's RC_SP_SELL_C lanes stay busy for about
 * the same number of steps (padding measured 4-5 % at 98 % sparsity with windows of 256 rows,
 * 40-47 % without sorting).  Sorting stays inside windows so that a slice's outputs land in a
 * few cache lines of y. */

long long rc_csr_sell_slices(long long out_features) {
    return out_features < 0 ? -1 : (out_features + RC_SP_SELL_C - 1) / RC_SP_SELL_C;
}

static int cmp_i64(const void *a, const void *b) {
    const int64_t u = *(const int64_t *)a, v = *(const int64_t *)b;
    return (u > v) - (u < v);
}

long long rc_csr_sell_layout(const void *indptr, int indptr_bytes, long long out_features, long long *off,
                             int32_t *rows, int32_t *lens) {
    if (!indptr || out_features < 0 || out_features >= INT32_MAX || !off || (out_features > 0 && (!rows || !lens)))
        return -1;
    if (indptr_bytes != 4 && indptr_bytes != 8) return -1;
    const int64_t C = RC_SP_SELL_C, nsl = (out_features + C - 1) / C;
    int64_t key[RC_SP_SELL_WINDOW];
    for (int64_t w0 = 0; w0 < nsl * C; w0 += RC_SP_SELL_WINDOW) {
        const int64_t w1 = w0 + RC_SP_SELL_WINDOW < nsl * C ? w0 + RC_SP_SELL_WINDOW : nsl * C;
        /* longest first, then by row: key = (INT32_MAX - len) << 32 | row; lanes past the last
         * row have length 0 and sort last */
        for (int64_t i = w0; i < w1; ++i) {
            int64_t len = 0;
            if (i < out_features) {
                len = iptr_at(indptr, indptr_bytes, i + 1) - iptr_at(indptr, indptr_bytes, i);
                if (len < 0 || len >= INT32_MAX) return -1;
            }
            key[i - w0] = ((int64_t)(INT32_MAX - len) << 32) | i;
        }
        qsort(key, (size_t)(w1 - w0), sizeof(int64_t), cmp_i64);
        for (int64_t i = w0; i < w1; ++i) {
            const int64_t row = key[i - w0] & 0xFFFFFFFF, len = INT32_MAX - (key[i - w0] >> 32);
            rows[i] = row < out_features ? (int32_t)row : -1;
            lens[i] = (int32_t)len;
        }
    }
    off[0] = 0;
    for (int64_t s = 0; s < nsl; ++s) off[s + 1] = off[s] + C * (int64_t)lens[s * C]; /* lane 0 is the longest */
    return off[nsl];
}

int rc_csr_sell_fill(const void *indptr, int indptr_bytes, long long out_features, const void *indices,
                     int index_type, const float *values, const rc_csr_sell *layout, void *sell_indices,
                     int sell_index_type, float *sell_values) {
    if (!indptr || out_features < 0 || !layout || (indptr_bytes != 4 && indptr_bytes != 8)) return RC_ERR_ARG;
    if (index_type != RC_UINT8 && index_type != RC_UINT16 && index_type != RC_INT32) return RC_ERR_ARG;
    if (sell_index_type != RC_UINT16 && sell_index_type != RC_INT32) return RC_ERR_ARG;
    const int64_t C = RC_SP_SELL_C, nsl = layout->nslices;
    if (nsl != (out_features + C - 1) / C || !layout->off || (nsl > 0 && (!layout->rows || !layout->lens)))
        return RC_ERR_ARG;
    const int64_t total = layout->off[nsl];
    if (total > 0 && ((sell_indices && !indices) || (sell_values && !values))) return RC_ERR_ARG;
    /* padding lanes: column 0, value 0 */
    if (sell_indices) memset(sell_indices, 0, (size_t)total * (sell_index_type == RC_UINT16 ? 2 : 4));
    if (sell_values) memset(sell_values, 0, (size_t)total * sizeof(float));
    for (int64_t s = 0; s < nsl; ++s)
        for (int64_t r = 0; r < C; ++r) {
            const int64_t row = layout->rows[s * C + r];
            if (row < 0) continue;
            const int64_t start = iptr_at(indptr, indptr_bytes, row), n = layout->lens[s * C + r];
            /* refuse a layout that does not fit its slice or its row: never write outside */
            if (row >= out_features || n != iptr_at(indptr, indptr_bytes, row + 1) - start ||
                layout->off[s] + C * n > layout->off[s + 1])
                return RC_ERR_ARG;
            for (int64_t p = 0; p < n; ++p) {
                const int64_t q = layout->off[s] + C * p + r;
                if (sell_values) sell_values[q] = values[start + p];
                if (!sell_indices) continue;
                const int64_t j = ind_at(indices, index_type, start + p);
                if (sell_index_type == RC_UINT16) {
                    if (j < 0 || j > 65535) return RC_ERR_ARG;
                    ((uint16_t *)sell_indices)[q] = (uint16_t)j;
                } else {
                    ((int32_t *)sell_indices)[q] = (int32_t)j;
                }
            }
        }
    return RC_OK;
}

/* ---- portable variant -------------------------------------------------------------------- */

/* Four partial sums break the add latency chain (the sum order is not the reference's,
 * which the tolerance allows). */
static inline __attribute__((always_inline)) float dot_row_portable(const rc_sparse_args *a, const float *x,
                                                                    rc_sp_row r, int mode) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int64_t p = 0;
    for (; p + 4 <= r.n; p += 4) {
        s0 += r.v[p] * x[rc_sp_col(a, r.ind, mode, p)];
        s1 += r.v[p + 1] * x[rc_sp_col(a, r.ind, mode, p + 1)];
        s2 += r.v[p + 2] * x[rc_sp_col(a, r.ind, mode, p + 2)];
        s3 += r.v[p + 3] * x[rc_sp_col(a, r.ind, mode, p + 3)];
    }
    for (; p < r.n; ++p) s0 += r.v[p] * x[rc_sp_col(a, r.ind, mode, p)];
    return (s0 + s1) + (s2 + s3);
}

static inline __attribute__((always_inline)) void gather_rows_portable(const rc_sparse_args *a, int64_t r0,
                                                                       int64_t r1, int mode) {
    for (int64_t i = r0; i < r1; ++i) {
        const rc_sp_row r = rc_sp_get_row(a, i);
        const float b = a->bias ? a->bias[i] : 0.0f;
        for (int64_t s = 0; s < a->batch; ++s)
            a->y[s * a->out + i] = dot_row_portable(a, a->x + s * a->in, r, mode) + b;
    }
}

static void gather_portable(const rc_sparse_args *a, int64_t r0, int64_t r1) {
    switch (a->col_mode) {
    case RC_SP_COL_U8:      gather_rows_portable(a, r0, r1, RC_SP_COL_U8); break;
    case RC_SP_COL_U16:     gather_rows_portable(a, r0, r1, RC_SP_COL_U16); break;
    case RC_SP_COL_I32:     gather_rows_portable(a, r0, r1, RC_SP_COL_I32); break;
    case RC_SP_COL_NM_POW2: gather_rows_portable(a, r0, r1, RC_SP_COL_NM_POW2); break;
    default:                gather_rows_portable(a, r0, r1, RC_SP_COL_NM_ANY); break;
    }
}

static void pack_portable(const rc_sparse_args *a, int64_t b0, int64_t nb, int64_t width, int64_t j0,
                          int64_t j1, float *panel) {
    for (int64_t l = 0; l < width; ++l) {
        const float *xr = a->x + (b0 + l) * a->in;
        for (int64_t j = j0; j < j1; ++j) panel[j * width + l] = l < nb ? xr[j] : 0.0f;
    }
}

/* W accumulators over the batch lanes; with W a constant the lane loop becomes SSE code. */
static inline __attribute__((always_inline)) void panel_rows_portable(const rc_sparse_args *a, const float *P,
                                                                      const int64_t W, int64_t b0, int64_t nb,
                                                                      int64_t r0, int64_t r1, int mode) {
    float acc[32];
    for (int64_t i = r0; i < r1; ++i) {
        const rc_sp_row r = rc_sp_get_row(a, i);
        for (int64_t l = 0; l < W; ++l) acc[l] = 0.0f;
        for (int64_t p = 0; p < r.n; ++p) {
            const float w = r.v[p];
            const float *xr = P + rc_sp_col(a, r.ind, mode, p) * W;
            for (int64_t l = 0; l < W; ++l) acc[l] += w * xr[l];
        }
        const float b = a->bias ? a->bias[i] : 0.0f;
        for (int64_t l = 0; l < nb; ++l) a->y[(b0 + l) * a->out + i] = acc[l] + b;
    }
}

static void panel_portable(const rc_sparse_args *a, const float *P, int64_t width, int64_t b0, int64_t nb,
                           int64_t r0, int64_t r1) {
    switch (a->col_mode) {
        RC_SP_WIDTH_CASE(panel_rows_portable, RC_SP_COL_U8, 8, 16, 32)
        RC_SP_WIDTH_CASE(panel_rows_portable, RC_SP_COL_U16, 8, 16, 32)
        RC_SP_WIDTH_CASE(panel_rows_portable, RC_SP_COL_I32, 8, 16, 32)
        RC_SP_WIDTH_CASE(panel_rows_portable, RC_SP_COL_NM_POW2, 8, 16, 32)
    default:
        if (width == 8) panel_rows_portable(a, P, 8, b0, nb, r0, r1, RC_SP_COL_NM_ANY);
        else if (width == 16) panel_rows_portable(a, P, 16, b0, nb, r0, r1, RC_SP_COL_NM_ANY);
        else panel_rows_portable(a, P, 32, b0, nb, r0, r1, RC_SP_COL_NM_ANY);
        break;
    }
}

static void bmask_portable(const rc_sparse_args *a, int64_t r0, int64_t r1) { rc_sp_bmask_rows_scalar(a, r0, r1); }

static int64_t scan_csr_portable(const void *indices, int itype, int64_t nnz, int64_t *lo, int64_t *hi) {
    return rc_sp_scan_csr(indices, itype, nnz, lo, hi);
}

static int scan_nm_portable(const uint8_t *indices, int64_t total, int64_t n, int64_t m) {
    return rc_sp_scan_nm(indices, total, n, m);
}

static void sell_portable(const rc_sell_args *a, int64_t s0, int64_t s1) { rc_sp_sell_slices_scalar(a, s0, s1); }

const rc_sparse_kernels rc_sparse_portable = {gather_portable, pack_portable, panel_portable, scan_csr_portable,
                                              scan_nm_portable, 8, 32, 1, bmask_portable, NULL, 0, 0, sell_portable,
                                              NULL, NULL};

/* ---- driver -------------------------------------------------------------------------------- */

long long rc_spmm_workspace_size(long long batch, long long in_features) {
    if (batch < 0 || in_features < 0) return -1;
    /* Panels hold the batch rounded up to the panel widths (< RC_SP_MAX_WIDTH extra lanes),
     * plus alignment slack. */
    return (long long)((batch + RC_SP_MAX_WIDTH) * in_features * (int64_t)sizeof(float) + 128);
}

static const rc_sparse_kernels *pick(int v) {
    switch (v) {
#if RC_X86
    case RC_ISA_AVX2:   return &rc_sparse_avx2;
    case RC_ISA_AVX512: return &rc_sparse_avx512;
#endif
    default:            return &rc_sparse_portable;
    }
}

/* Row r at which the cumulative cost (entries + RC_SP_ROW_COST per row) reaches `target`. */
static int64_t split_row(const rc_sparse_args *a, int64_t target) {
    int64_t lo = 0, hi = a->out;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        const int64_t cost = (a->format == RC_SP_NM ? mid * a->row_len : rc_sp_indptr(a, mid)) + RC_SP_ROW_COST * mid;
        if (cost < target) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int64_t pow2_at_least(int64_t v, int64_t lo) {
    int64_t w = lo;
    while (w < v) w *= 2;
    return w;
}

/* Column blocking pays where an entry's panel row no longer stays near the core and a row has
 * enough entries per column slice to amortise the slice walk: measured (1024 x 1024, AVX-512)
 * 1.2x faster at density 1/2, 1.08x at 0.3, 0.8x at 0.1 (docs/sparse_kernels.md).  CSR from
 * batch 64 (at 16 it lost while the slice end was a scalar scan).  N:M (density n / m) from
 * batch 16: with m dividing the slice a row's entries per slice are counted, not scanned, and
 * 2:4 measured 1.04-1.09x faster than plain panels at batch 16 (N:M with m dividing 16 runs
 * the row-vectorised kernel instead on AVX-512). */
#define RC_SP_CB_MIN_BATCH 64
#define RC_SP_NM_CB_MIN_BATCH 16
/* N:M (m dividing 16) runs the row-vectorised kernel from this batch on (AVX-512; batch 1 is
 * the gather kernel).  Since that kernel prefetches the next row block's weights it beats the
 * panels at every batch measured, 2-256 (on Zen 5, 2:4: batch 2 1.6-2.0x, 16 1.5-2.3x, 64
 * 1.2-1.5x, 96 1.6-2.0x; docs/sparse_kernels.md); before, it lost to the column-blocked panels
 * below batch 128. */
#define RC_SP_NMRV_MIN_BATCH 2
/* ... except 2:4 at batches [RC_SP_NMRB_MIN_BATCH, RC_SP_NMRB_END_BATCH) where a variant has a
 * 2:4 panel kernel of its own (nm_cb_width): AVX-512's register-blocked panels measured
 * 1.05-1.17x faster than the row-vectorised kernel at batch 64 and level to 1.05x at 128 on
 * Zen 5, but slower at 16 and level or slower at 256 (docs/sparse_kernels.md). */
#define RC_SP_NMRB_MIN_BATCH 64
#define RC_SP_NMRB_END_BATCH 256
static int is_24(const rc_sparse_args *a) { return a->format == RC_SP_NM && a->n == 2 && a->m == 4; }
static int want_colblock(const rc_sparse_args *a, int64_t nnz, int colblock) {
    if (colblock != RC_SP_COLBLOCK_AUTO) return colblock == RC_SP_COLBLOCK_ON;
    const int64_t from = a->format == RC_SP_NM ? RC_SP_NM_CB_MIN_BATCH : RC_SP_CB_MIN_BATCH;
    return a->batch >= from && 4 * nnz >= a->out * a->in;
}

/* CSR with row tiles (AVX-512) from batch 64 and density 1/32 (8 entries per row and 256-column
 * slice): against the kernels "auto" took before, measured 1.05-1.2x faster at density 0.05-0.5
 * and batch 64-256 (3072 x 768 at 0.2 and batch 64 5 % slower), but 0.85-0.67x at density 0.02,
 * where a block's few entries do not pay for its set-up (docs/sparse_kernels.md). */
#define RC_SP_TL_MIN_BATCH 64
#define RC_SP_TL_MIN_DENSITY_INV 32
static int want_tiles(const rc_sparse_args *a, const rc_sparse_kernels *k, int64_t nnz, int colblock) {
    if (!a->tiles || !k->panel_tiles || colblock == RC_SP_COLBLOCK_OFF) return 0;
    if (colblock == RC_SP_COLBLOCK_ON) return 1;
    return a->batch >= RC_SP_TL_MIN_BATCH && RC_SP_TL_MIN_DENSITY_INV * nnz >= a->out * a->in;
}

static int run(const rc_sparse_args *a, int isa, void *workspace, int threads, int colblock) {
    const int v = rc_isa_resolve(isa, RC_SPARSE_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    const rc_sparse_kernels *k = pick(v);
    if (a->batch == 0 || a->out == 0) return RC_OK;
    const int64_t nnz = a->format == RC_SP_NM ? a->out * a->row_len : rc_sp_indptr(a, a->out);
    if (nnz == 0) { /* y = bias: no product to form, nothing to pack */
        for (int64_t s = 0; s < a->batch; ++s)
            for (int64_t i = 0; i < a->out; ++i) a->y[s * a->out + i] = a->bias ? a->bias[i] : 0.0f;
        return RC_OK;
    }
    int nt = 1;
#ifdef _OPENMP
    nt = threads > 0 ? threads : omp_get_max_threads();
#endif
    (void)threads;
    const int gemv = a->batch <= k->gather_max_batch;
    if (gemv ? nnz * a->batch < RC_SP_MIN_PARALLEL_GEMV : nnz * a->batch + a->batch * a->in < RC_MIN_PARALLEL_WORK)
        nt = 1;
    if (nt > RC_SP_MAX_PARTS) nt = RC_SP_MAX_PARTS;
    if (nt > a->out) nt = (int)a->out;
    int64_t bounds[RC_SP_MAX_PARTS + 1];
    const int64_t total_cost = nnz + RC_SP_ROW_COST * a->out;
    bounds[0] = 0;
    for (int t = 1; t < nt; ++t) bounds[t] = split_row(a, total_cost * t / nt);
    bounds[nt] = a->out;

    if (gemv) {
        void (*row_kernel)(const rc_sparse_args *, int64_t, int64_t) = a->bmask ? k->bmask : k->gather;
        if (nt == 1) { /* no team at all: even a one-thread parallel region costs ~1 us */
            row_kernel(a, 0, a->out);
            return RC_OK;
        }
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(nt) if (nt > 1)
#endif
        for (int t = 0; t < nt; ++t) row_kernel(a, bounds[t], bounds[t + 1]);
        return RC_OK;
    }

    const int nm_panels = k->nm_cb_width && is_24(a) && a->batch >= RC_SP_NMRB_MIN_BATCH && a->batch < RC_SP_NMRB_END_BATCH;
    if (a->format == RC_SP_NM && k->nm_rowvec && a->batch >= RC_SP_NMRV_MIN_BATCH && 16 % a->m == 0 &&
        colblock == RC_SP_COLBLOCK_AUTO && !nm_panels) {
        /* rows in the vector lanes: threads take contiguous blocks of 16 rows (every row has the
         * same number of entries) */
        if (!workspace) return RC_ERR_ARG;
        const int64_t nblk = (a->out + 15) / 16;
        if (nt > nblk) nt = (int)nblk;
        /* a whole row block per thread in the workspace (rc_spmm_workspace_size bytes, any
         * alignment): 32 * row_len <= 32 * in floats each, and the workspace holds
         * (batch + RC_SP_MAX_WIDTH) * in >= 130 * in (batch >= RC_SP_NMRV_MIN_BATCH = 2), so
         * at least 4 threads fit (8 for n <= m / 2); more are capped */
        const int64_t per = 32 * a->row_len; /* floats per thread, a multiple of 16 */
        const int64_t have = (int64_t)((rc_spmm_workspace_size(a->batch, a->in) - 64) / (long long)sizeof(float));
        if ((int64_t)nt * per > have) nt = (int)(have / per);
        float *wb = (float *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
        if (nt <= 1) {
            k->nm_rowvec(a, 0, nblk, wb);
            return RC_OK;
        }
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(nt)
#endif
        for (int t = 0; t < nt; ++t) k->nm_rowvec(a, nblk * t / nt, nblk * (t + 1) / nt, wb + t * per);
        return RC_OK;
    }

    if (!workspace) return RC_ERR_ARG;
    float *base = (float *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
    /* Blocks of max_width batch lanes, then one narrower block for the rest. */
    const int tl = want_tiles(a, k, nnz, colblock);
    const int cb = tl || (k->panel_cb && want_colblock(a, nnz, colblock));
    const int64_t W = cb && k->nm_cb_width && is_24(a) ? k->nm_cb_width : (cb ? k->cb_width : k->max_width);
    if (tl) /* a tile's rows go to one thread: its blocks mix them */
        for (int t = 1; t < nt; ++t) {
            const int64_t r = (bounds[t] + RC_SP_TL_ROWS / 2) / RC_SP_TL_ROWS * RC_SP_TL_ROWS;
            bounds[t] = r < bounds[t - 1] ? bounds[t - 1] : (r > a->out ? a->out : r);
        }
    void (*panel_kernel)(const rc_sparse_args *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t) =
        tl ? k->panel_tiles : (cb ? k->panel_cb : k->panel);
    const int64_t nfull = a->batch / W, rem = a->batch % W;
    const int64_t tail_w = rem ? pow2_at_least(rem, k->min_width) : 0;
    const int64_t nblocks = nfull + (rem > 0);
    const int64_t nj = (a->in + RC_SP_PACK_COLS - 1) / RC_SP_PACK_COLS;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t it = 0; it < nblocks * nj; ++it) {
            const int64_t blk = it / nj, jc = it % nj;
            const int64_t j0 = jc * RC_SP_PACK_COLS;
            const int64_t j1 = a->in - j0 < RC_SP_PACK_COLS ? a->in : j0 + RC_SP_PACK_COLS;
            const int64_t w = blk < nfull ? W : tail_w, nb = blk < nfull ? W : rem;
            k->pack(a, blk * W, nb, w, j0, j1, base + blk * W * a->in);
        }
        /* (the omp for's barrier: every panel is complete before any row reads it) */
#ifdef _OPENMP
#pragma omp for schedule(static, 1)
#endif
        for (int t = 0; t < nt; ++t)
            for (int64_t blk = 0; blk < nblocks; ++blk) {
                const int64_t w = blk < nfull ? W : tail_w, nb = blk < nfull ? W : rem;
                panel_kernel(a, base + blk * W * a->in, w, blk * W, nb, bounds[t], bounds[t + 1]);
            }
    }
    return RC_OK;
}

int rc_spmv_csr_sell_f32(const float *x, long long in_features, long long out_features, const rc_csr_sell *sell,
                         const float *bias, float *y, int isa, int threads) {
    if (in_features < 0 || out_features < 0 || !sell || !sell->off) return RC_ERR_ARG;
    const int64_t C = RC_SP_SELL_C, nsl = sell->nslices;
    if (nsl != (out_features + C - 1) / C || (nsl > 0 && (!sell->rows || !sell->lens || !y))) return RC_ERR_ARG;
    if (sell->index_type != RC_UINT16 && sell->index_type != RC_INT32) return RC_ERR_ARG;
    const int64_t total = sell->off[nsl];
    if (total > 0 && (!x || !sell->indices || !sell->values || in_features == 0)) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_SPARSE_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    const rc_sparse_kernels *k = pick(v);
    const rc_sell_args a = {x, sell, bias, y};
    int nt = 1;
#ifdef _OPENMP
    nt = threads > 0 ? threads : omp_get_max_threads();
#endif
    (void)threads;
    if (total < RC_SP_MIN_PARALLEL_GEMV) nt = 1;
    if (nt > RC_SP_MAX_PARTS) nt = RC_SP_MAX_PARTS;
    if (nt > nsl) nt = (int)nsl;
    if (nt <= 1) { /* no team at all: even a one-thread parallel region costs ~1 us */
        k->sell(&a, 0, nsl);
        return RC_OK;
    }
    /* contiguous slice ranges of about equal entries (padding included) + RC_SP_ROW_COST per row */
    int64_t bounds[RC_SP_MAX_PARTS + 1];
    const int64_t cost_all = total + RC_SP_ROW_COST * C * nsl;
    bounds[0] = 0;
    for (int t = 1; t < nt; ++t) {
        const int64_t target = cost_all * t / nt;
        int64_t lo = 0, hi = nsl;
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (sell->off[mid] + RC_SP_ROW_COST * C * mid < target) lo = mid + 1;
            else hi = mid;
        }
        bounds[t] = lo;
    }
    bounds[nt] = nsl;
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(nt)
#endif
    for (int t = 0; t < nt; ++t) k->sell(&a, bounds[t], bounds[t + 1]);
    return RC_OK;
}

static int is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

static int log2i(int64_t v) {
    int s = 0;
    while (((int64_t)1 << s) < v) ++s;
    return s;
}

int rc_spmm_csr_f32(const float *x, long long batch, long long in_features, long long out_features,
                    const void *indptr, int indptr_bytes, const void *indices, int index_type,
                    const float *values, const float *bias, const uint16_t *bmask, const void *tiles,
                    int colblock, float *y, void *workspace, int isa, int threads) {
    if (batch < 0 || in_features < 0 || out_features < 0 || !indptr) return RC_ERR_ARG;
    if (indptr_bytes != 4 && indptr_bytes != 8) return RC_ERR_ARG;
    int mode;
    switch (index_type) {
    case RC_UINT8:  mode = RC_SP_COL_U8; break;
    case RC_UINT16: mode = RC_SP_COL_U16; break;
    case RC_INT32:  mode = RC_SP_COL_I32; break;
    default: return RC_ERR_ARG;
    }
    if (batch * out_features > 0 && !y) return RC_ERR_ARG;
    if (batch * in_features > 0 && !x) return RC_ERR_ARG;
    const int64_t nnz = iptr_at(indptr, indptr_bytes, out_features);
    if (nnz < 0 || (nnz > 0 && (!indices || !values))) return RC_ERR_ARG;
    if (colblock < RC_SP_COLBLOCK_AUTO || colblock > RC_SP_COLBLOCK_ON) return RC_ERR_ARG;
    if (tiles) {
        const rc_sp_tl_head *h = (const rc_sp_tl_head *)tiles;
        if (h->magic != RC_SP_TL_MAGIC || h->out != out_features || h->in != in_features || h->nnz != nnz ||
            h->cols != tl_cols(out_features, in_features, nnz) || rc_csr_tiles_bytes(out_features, in_features) < 0)
            return RC_ERR_ARG;
        const int64_t *bases = (const int64_t *)((const char *)tiles + tl_blocks_end(out_features, in_features));
        for (int64_t t = 0; t < tl_count(out_features); ++t)
            if (bases[t] != iptr_at(indptr, indptr_bytes, t * RC_SP_TL_ROWS)) return RC_ERR_ARG;
    }
    rc_sparse_args a = {x, batch, in_features, out_features, RC_SP_CSR, mode, indptr, indptr_bytes,
                        indices, values, 0, 0, 0, 0, 0, bias, y, bmask, (in_features + 15) / 16, tiles};
    return run(&a, isa, workspace, threads, colblock);
}

int rc_spmm_nm_f32(const float *x, long long batch, long long in_features, long long out_features,
                   const float *values, const uint8_t *indices, int n, int m, const float *bias,
                   int colblock, float *y, void *workspace, int isa, int threads) {
    if (batch < 0 || in_features < 0 || out_features < 0) return RC_ERR_ARG;
    if (n < 1 || m < n || m > 256 || in_features % m) return RC_ERR_ARG;
    const int64_t row_len = in_features / m * n;
    if (batch * out_features > 0 && !y) return RC_ERR_ARG;
    if (batch * in_features > 0 && !x) return RC_ERR_ARG;
    if (out_features * row_len > 0 && (!values || !indices)) return RC_ERR_ARG;
    const int pow2 = is_pow2(n) && is_pow2(m);
    rc_sparse_args a = {x, batch, in_features, out_features, RC_SP_NM,
                        pow2 ? RC_SP_COL_NM_POW2 : RC_SP_COL_NM_ANY, NULL, 8, indices, values, row_len,
                        n, m, pow2 ? log2i(n) : 0, pow2 ? log2i(m) : 0, bias, y, NULL, 0, NULL};
    if (colblock < RC_SP_COLBLOCK_AUTO || colblock > RC_SP_COLBLOCK_ON) return RC_ERR_ARG;
    return run(&a, isa, workspace, threads, colblock);
}
