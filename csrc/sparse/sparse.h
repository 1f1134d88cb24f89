/* Internal interface between the sparse-Linear driver (sparse.c) and its ISA variants.
 *
 * One problem description (rc_sparse_args) covers both storage formats; a row is a list of
 * (column, value) entries, and only the rule that turns an entry's stored index into a column
 * differs:
 *   CSR : col(p) = indices[indptr[i] + p]                       (uint8 / uint16 / int32)
 *   N:M : col(p) = (p / n) * m + indices[i * row_len + p]        (uint8 position in its group)
 * Every variant computes, for each output element, the float32 sum of the row's products
 * plus the bias in *some* order; the order differs per variant (partial sums, FMA or not),
 * which is why the tolerance is the order-independent bound gamma_k * sum |w||x| (docs). */
#ifndef RC_SPARSE_H
#define RC_SPARSE_H
#include "../rc_common.h"

#define RC_SP_CSR 0
#define RC_SP_NM 1

/* How an entry becomes a column: the `mode` argument of the always-inline row kernels, a
 * compile-time constant at every call so that each variant is specialised per index type. */
#define RC_SP_COL_U8 0
#define RC_SP_COL_U16 1
#define RC_SP_COL_I32 2
#define RC_SP_COL_NM_POW2 3 /* n and m powers of two: shifts instead of divide / multiply */
#define RC_SP_COL_NM_ANY 4

/* One case of a panel kernel's dispatch: FN(a, P, width, b0, nb, r0, r1, MODE) called with
 * a compile-time width W1, W2 or (otherwise) W3 and column mode MODE, so each (width,
 * mode) pair is its own inlined specialisation.  Expects a, P, width, b0, nb, r0, r1 in
 * scope. */
#define RC_SP_WIDTH_CASE(FN, MODE, W1, W2, W3)                                        \
    case MODE:                                                                       \
        if (width == (W1)) FN(a, P, W1, b0, nb, r0, r1, MODE);                       \
        else if (width == (W2)) FN(a, P, W2, b0, nb, r0, r1, MODE);                  \
        else FN(a, P, W3, b0, nb, r0, r1, MODE);                                     \
        break;
/* The same with two widths: W1, or (otherwise) W2. */
#define RC_SP_WIDTH_CASE2(FN, MODE, W1, W2)                                           \
    case MODE:                                                                       \
        if (width == (W1)) FN(a, P, W1, b0, nb, r0, r1, MODE);                       \
        else FN(a, P, W2, b0, nb, r0, r1, MODE);                                     \
        break;

typedef struct {
    const float *x; /* [batch, in], C-contiguous */
    int64_t batch, in, out;
    int format;     /* RC_SP_CSR or RC_SP_NM */
    int col_mode;   /* RC_SP_COL_*                                      */
    const void *indptr;
    int indptr_bytes; /* 4 or 8 */
    const void *indices;
    const float *values;
    int64_t row_len;  /* N:M: stored entries per row (in / m * n) */
    int64_t n, m;     /* N:M */
    int sn, sm;       /* N:M with powers of two: log2 n, log2 m */
    const float *bias; /* [out] or NULL */
    float *y;          /* [batch, out] */
    const uint16_t *bmask; /* CSR block-mask form: [out][nblk] masks, or NULL */
    int64_t nblk;          /* 16-column blocks per row: ceil(in / 16) */
    const void *tiles;     /* CSR row-tile headers (rc_csr_tiles_build), or NULL */
} rc_sparse_args;

/* Column block of the column-blocked panel kernels: a 128-column slice of a 64-lane panel
 * is 32 KB, the L1 data cache of the cores this was tuned on (docs/sparse_kernels.md). */
#define RC_SP_CB_COLS 128

/* Row tiles of a CSR weight for the column-blocked panels (rc_csr_tiles_build): for every tile
 * of RC_SP_TL_ROWS rows and every slice of `cols` columns (in the header), RC_SP_TL_ROWS / 4
 * blocks.  A block is 4 of the tile's rows, sorted by their entry count in the slice (largest
 * first; blocks take consecutive rows of that order, so their counts are about equal), each
 * with its count and the offset of its first entry in the slice from the tile's first entry.
 * Padding rows (past the weight's last row) have count 0 and row RC_SP_TL_ROWS, a scratch row.
 * 64 rows share a slice's panel rows (32 measured 1-8 % slower at density 0.1-0.3). */
#define RC_SP_TL_ROWS 64
/* Slices of 128 columns (x 64 lanes: 32 KB, inside L1) from density 1/8; below it 256 (64 KB):
 * measured 8-15 % faster at density 0.2-0.5, level at 0.1 and 15 % slower at 0.05, where a
 * block's few entries per slice do not pay for its set-up (docs/sparse_kernels.md). */
#define RC_SP_TL_COLS_NARROW 128
#define RC_SP_TL_COLS_WIDE 256
#define RC_SP_TL_NARROW_DENSITY_INV 8
typedef struct {
    uint16_t row[4]; /* row within the tile */
    uint16_t cnt[4]; /* entries in the slice: cnt[0] >= cnt[1] >= cnt[2] >= cnt[3] */
    int32_t off[4];  /* first entry in the slice - indptr[tile's first row] */
} rc_sp_tl_blk;
/* The headers open with the weight they were built for, checked by every call that gets them:
 * headers of another weight would send the kernel past its arrays.  Then the slice width the
 * builder chose. */
#define RC_SP_TL_MAGIC 0x33544C4950534352ull /* "RCSPILT3": the 64-byte header, first entries at the end */
typedef struct {
    uint64_t magic;
    int64_t out, in, nnz;
    int64_t cols;        /* RC_SP_TL_COLS_NARROW or RC_SP_TL_COLS_WIDE */
    int64_t reserved[3]; /* 0: 64 bytes in all, so each 32-byte block sits in one cache line */
} rc_sp_tl_head;
static inline const rc_sp_tl_blk *rc_sp_tl_blocks(const void *tiles) {
    return (const rc_sp_tl_blk *)((const char *)tiles + sizeof(rc_sp_tl_head));
}

/* One row's entries: p in [0, n) indexes `ind` (element type by mode) and `v`. */
typedef struct {
    const void *ind;
    const float *v;
    int64_t n;
} rc_sp_row;

static inline int64_t rc_sp_indptr(const rc_sparse_args *a, int64_t i) {
    return a->indptr_bytes == 8 ? ((const int64_t *)a->indptr)[i] : (int64_t)((const int32_t *)a->indptr)[i];
}

static inline rc_sp_row rc_sp_get_row(const rc_sparse_args *a, int64_t i) {
    rc_sp_row r;
    int64_t start;
    if (a->format == RC_SP_NM) {
        start = i * a->row_len;
        r.n = a->row_len;
    } else {
        start = rc_sp_indptr(a, i);
        r.n = rc_sp_indptr(a, i + 1) - start;
    }
    const int isz = a->col_mode == RC_SP_COL_U16 ? 2 : (a->col_mode == RC_SP_COL_I32 ? 4 : 1);
    r.ind = (const uint8_t *)a->indices + start * isz;
    r.v = a->values + start;
    return r;
}

/* Column of entry p of a row (p counts from the row's first entry). */
static inline __attribute__((always_inline)) int64_t rc_sp_col(const rc_sparse_args *a, const void *ind,
                                                              int mode, int64_t p) {
    switch (mode) {
    case RC_SP_COL_U8:      return ((const uint8_t *)ind)[p];
    case RC_SP_COL_U16:     return ((const uint16_t *)ind)[p];
    case RC_SP_COL_I32:     return ((const int32_t *)ind)[p];
    case RC_SP_COL_NM_POW2: return ((p >> a->sn) << a->sm) + ((const uint8_t *)ind)[p];
    default:                return (p / a->n) * a->m + ((const uint8_t *)ind)[p];
    }
}

/* ---- structure scans (instantiated per ISA file, where the compiler vectorises them) ------ *
 * Over a whole CSR index array: the number of descents (p > 0 with ind[p] <= ind[p - 1];
 * a valid CSR has them only at row starts) and the smallest and largest index.  Counting
 * over the flat array instead of row by row keeps the loop long enough to vectorise. */
#define RC_SP_SCAN_BODY(T)                                                                   \
    {                                                                                        \
        const T *ind = (const T *)indices;                                                   \
        T mn = ind[0], mx = ind[0];                                                          \
        int64_t total = 0;                                                                   \
        for (int64_t s = 1; s < nnz; s += 1 << 15) {                                         \
            const int64_t e = nnz - s < (1 << 15) ? nnz : s + (1 << 15);                     \
            uint16_t c = 0; /* narrow per-chunk counter: vectorises, cannot overflow */     \
            for (int64_t p = s; p < e; ++p) {                                                \
                const T v = ind[p];                                                          \
                mn = v < mn ? v : mn;                                                        \
                mx = v > mx ? v : mx;                                                        \
                c += v <= ind[p - 1];                                                        \
            }                                                                                \
            total += c;                                                                      \
        }                                                                                    \
        *lo = mn;                                                                            \
        *hi = mx;                                                                            \
        return total;                                                                        \
    }

static inline int64_t rc_sp_scan_csr(const void *indices, int itype, int64_t nnz, int64_t *lo, int64_t *hi) {
    if (nnz <= 0) {
        *lo = *hi = 0;
        return 0;
    }
    switch (itype) {
    case RC_UINT8:  RC_SP_SCAN_BODY(uint8_t)
    case RC_UINT16: RC_SP_SCAN_BODY(uint16_t)
    default:        RC_SP_SCAN_BODY(int32_t)
    }
}

/* N:M positions: 1 if any is >= m or not increasing within its group of n. */
static inline int rc_sp_scan_nm(const uint8_t *ind, int64_t total, int64_t n, int64_t m) {
    uint8_t mx = 0;
    for (int64_t p = 0; p < total; ++p) mx = ind[p] > mx ? ind[p] : mx;
    if (mx >= m) return 1;
    unsigned bad = 0;
    if (n == 2) {
        for (int64_t g = 0; g < total / 2; ++g) bad |= ind[2 * g + 1] <= ind[2 * g];
    } else if (n == 4) {
        for (int64_t g = 0; g < total / 4; ++g)
            bad |= (ind[4 * g + 1] <= ind[4 * g]) | (ind[4 * g + 2] <= ind[4 * g + 1]) | (ind[4 * g + 3] <= ind[4 * g + 2]);
    } else if (n > 1) {
        for (int64_t g = 0; g < total / n; ++g)
            for (int64_t q = 1; q < n; ++q) bad |= ind[g * n + q] <= ind[g * n + q - 1];
    }
    return bad != 0;
}

/* Block-mask form, batch 1, one row: the scalar definition (portable and AVX2 variants).
 * Bits of a block's mask are its stored columns in increasing order, and `v` walks the
 * row's values in the same order, so the sum is over exactly the stored entries. */
static inline float rc_sp_bmask_dot_scalar(const uint16_t *mk, int64_t nblk, const float *x, const float *v) {
    float s0 = 0.0f, s1 = 0.0f;
    for (int64_t b = 0; b < nblk; ++b) {
        unsigned m = mk[b];
        const float *xb = x + 16 * b;
        while (m) {
            s0 += *v++ * xb[__builtin_ctz(m)];
            m &= m - 1;
            if (!m) break;
            s1 += *v++ * xb[__builtin_ctz(m)];
            m &= m - 1;
        }
    }
    return s0 + s1;
}

static inline void rc_sp_bmask_rows_scalar(const rc_sparse_args *a, int64_t r0, int64_t r1) {
    for (int64_t s = 0; s < a->batch; ++s) {
        const float *v = a->values + rc_sp_indptr(a, r0); /* rows' values are consecutive */
        for (int64_t i = r0; i < r1; ++i) {
            const float b = a->bias ? a->bias[i] : 0.0f;
            a->y[s * a->out + i] = rc_sp_bmask_dot_scalar(a->bmask + i * a->nblk, a->nblk, a->x + s * a->in, v) + b;
            v += rc_sp_indptr(a, i + 1) - rc_sp_indptr(a, i);
        }
    }
}

/* Sliced-ELLPACK form, batch 1 (csrc/refcompress.h, rc_csr_sell): one call's arguments. */
typedef struct {
    const float *x;       /* [in] */
    const rc_csr_sell *f;
    const float *bias;    /* [out] or NULL */
    float *y;             /* [out] */
} rc_sell_args;

/* Column of slice entry q. */
static inline int64_t rc_sp_sell_col(const rc_csr_sell *f, int64_t q) {
    return f->index_type == RC_UINT16 ? (int64_t)((const uint16_t *)f->indices)[q]
                                      : (int64_t)((const int32_t *)f->indices)[q];
}

/* Slices [s0, s1), the scalar definition (portable and AVX2 variants): each lane's row summed
 * over its own entries only, in step order. */
static inline void rc_sp_sell_slices_scalar(const rc_sell_args *a, int64_t s0, int64_t s1) {
    const rc_csr_sell *f = a->f;
    for (int64_t s = s0; s < s1; ++s)
        for (int r = 0; r < RC_SP_SELL_C; ++r) {
            const int64_t row = f->rows[s * RC_SP_SELL_C + r];
            if (row < 0) continue;
            const int64_t n = f->lens[s * RC_SP_SELL_C + r], q0 = f->off[s] + r;
            float acc = 0.0f;
            for (int64_t p = 0; p < n; ++p)
                acc += f->values[q0 + RC_SP_SELL_C * p] * a->x[rc_sp_sell_col(f, q0 + RC_SP_SELL_C * p)];
            a->y[row] = acc + (a->bias ? a->bias[row] : 0.0f);
        }
}

/* The per-ISA kernels.  Panels: x rows [b0, b0 + nb) transposed to [in][width] floats
 * (64-byte aligned, lanes >= nb zero), so that one entry (j, w) is `acc += w * panel[j]`
 * over `width` batch lanes at once. */
typedef struct {
    /* y[b, i] for every b < batch and rows [r0, r1), vectorised along a row's entries. */
    void (*gather)(const rc_sparse_args *a, int64_t r0, int64_t r1);
    /* Columns [j0, j1) of x rows [b0, b0 + nb) into `panel` ([in][width]). */
    void (*pack)(const rc_sparse_args *a, int64_t b0, int64_t nb, int64_t width, int64_t j0, int64_t j1,
                 float *panel);
    /* y[b0 + l, i] for l < nb and rows [r0, r1), from one panel. */
    void (*panel)(const rc_sparse_args *a, const float *panel, int64_t width, int64_t b0, int64_t nb,
                  int64_t r0, int64_t r1);
    /* rc_sp_scan_csr / rc_sp_scan_nm compiled for the variant's ISA. */
    int64_t (*scan_csr)(const void *indices, int itype, int64_t nnz, int64_t *lo, int64_t *hi);
    int (*scan_nm)(const uint8_t *indices, int64_t total, int64_t n, int64_t m);
    int64_t min_width, max_width; /* panel widths are powers of two in [min, max] */
    int64_t gather_max_batch;     /* batches up to this run `gather`, larger ones panels */
    /* y[b, i] for every b < batch and rows [r0, r1) from the block-mask form (a->bmask). */
    void (*bmask)(const rc_sparse_args *a, int64_t r0, int64_t r1);
    /* Like `panel`, but walking the panel in slices of RC_SP_CB_COLS columns (rows in tiles of
     * 16, partial sums kept across slices) so that the slice stays in L1; NULL if the
     * variant has no such kernel.  Panels of up to cb_width lanes. */
    void (*panel_cb)(const rc_sparse_args *a, const float *panel, int64_t width, int64_t b0, int64_t nb,
                     int64_t r0, int64_t r1);
    int64_t cb_width;
    int64_t nm_cb_width; /* panel_cb's widest panel for 2:4 (0: none of its own) */
    /* y for the rows of slices [s0, s1) of the sliced-ELLPACK form (batch 1). */
    void (*sell)(const rc_sell_args *a, int64_t s0, int64_t s1);
    /* N:M with m dividing 16 and batches >= RC_SP_NMRV_MIN_BATCH (sparse.c): y for row blocks [blk0, blk1)
     * of 16 rows, rows in the vector lanes (no panels; NULL if the variant has none); buf:
     * 64-byte aligned scratch of 32 * row_len floats. */
    void (*nm_rowvec)(const rc_sparse_args *a, int64_t blk0, int64_t blk1, float *buf);
    /* Like panel_cb for CSR with a->tiles: rows [r0, r1) (r0 a multiple of RC_SP_TL_ROWS) from
     * one panel of up to cb_width lanes, 4 rows at a time; NULL if the variant has none. */
    void (*panel_tiles)(const rc_sparse_args *a, const float *panel, int64_t width, int64_t b0, int64_t nb,
                        int64_t r0, int64_t r1);
} rc_sparse_kernels;

extern const rc_sparse_kernels rc_sparse_portable;
#if RC_X86
extern const rc_sparse_kernels rc_sparse_avx2;
extern const rc_sparse_kernels rc_sparse_avx512;
#endif

#endif
