/* qgemm driver: packing, zero-point corrections, tiling over threads, dispatch, and the
 * portable variant.  The ISA variants (qgemm_<isa>.c) supply only the micro-tile and the
 * vector epilogue; everything that decides *what* is computed lives here once. */
#include <string.h>

#include "qgemm.h"

#define NR RC_QGEMM_NR
#define MR RC_QGEMM_MR
/* Rows of A per thread work item: MC * K4 bytes stay in L2 while all panels stream by. */
#define MC (MR * 16)

long long rc_qgemm_packed_size(long long K, long long N) {
    if (K < 0 || N < 0) return -1;
    return (long long)(rc_qgemm_k4(K) * rc_qgemm_npad(N));
}

long long rc_qgemm_workspace_size(long long M, long long K, long long N) {
    if (M < 0 || K < 0 || N < 0) return -1;
    /* packed A (K4 bytes a row), ra [M], zbp [Npad], colterm [Npad]; 64-byte aligned parts */
    const int64_t a = (M * rc_qgemm_k4(K) + 63) / 64 * 64;
    return (long long)(a + 4 * (M + 16) + 8 * (rc_qgemm_npad(N) + 16) + 256);
}

int rc_qgemm_pack_b(const int8_t *b, long long K, long long N, void *packed, int32_t *col_sums,
                    int threads) {
    if (K < 0 || N < 0 || (K * N > 0 && (!b || !packed)) || (N > 0 && !col_sums)) return RC_ERR_ARG;
    const int64_t K4 = rc_qgemm_k4(K), panels = rc_qgemm_npad(N) / NR;
    uint8_t *pk = (uint8_t *)packed;
    (void)threads;
#ifdef _OPENMP
    const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && K * N >= RC_MIN_PARALLEL_WORK)
#endif
    for (int64_t p = 0; p < panels; ++p) {
        uint8_t *dst = pk + p * K4 * NR;
        for (int64_t g = 0; g < K4 / 4; ++g)
            for (int64_t j = 0; j < NR; ++j)
                for (int64_t i = 0; i < 4; ++i) {
                    const int64_t k = 4 * g + i, n = p * NR + j;
                    /* b + 128 maps int8 to uint8 (the unsigned operand of vpdpbusd). */
                    dst[(g * NR + j) * 4 + i] = (k < K && n < N) ? (uint8_t)(b[k * N + n] + 128) : 0;
                }
        for (int64_t j = 0; j < NR && p * NR + j < N; ++j) {
            int64_t s = 0;
            for (int64_t k = 0; k < K; ++k) s += b[k * N + p * NR + j] + 128;
            col_sums[p * NR + j] = (int32_t)s; /* < 2^31 for any K the bound admits */
        }
    }
    return RC_OK;
}

/* ---- portable variant ------------------------------------------------------------------ */

void rc_epi_row_portable(const rc_epilogue *e, const int32_t *acc, int64_t m, int64_t n0, int64_t n,
                         void *out, int64_t ldo) {
    for (int64_t j = 0; j < n; ++j) rc_epi_store_one(e, (uint32_t)acc[j], m, n0 + j, out, ldo);
}

void rc_qgemm_tile_portable(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4, int64_t m0, int mr,
                            const uint8_t *bp, int64_t n0) {
    uint32_t acc[MR][NR];
    memset(acc, 0, sizeof acc);
    for (int64_t g = 0; g < K4 / 4; ++g) {
        const uint8_t *bg = bp + g * NR * 4;
        for (int r = 0; r < mr; ++r) {
            const int8_t *ar = a + (m0 + r) * K4 + 4 * g;
            for (int64_t j = 0; j < NR; ++j) {
                const uint8_t *bj = bg + 4 * j;
                acc[r][j] += (uint32_t)(ar[0] * bj[0] + ar[1] * bj[1] + ar[2] * bj[2] + ar[3] * bj[3]);
            }
        }
    }
    const int64_t nv = (x->N - n0 < NR) ? x->N - n0 : NR;
    for (int r = 0; r < mr; ++r) {
        const int64_t m = m0 + r;
        for (int64_t j = 0; j < nv; ++j) {
            const uint32_t v = acc[r][j] - (uint32_t)x->zbp[n0 + j] * (uint32_t)x->ra[m] + (uint32_t)x->colterm[n0 + j];
            rc_epi_store_one(x->epi, v, m, n0 + j, x->c, x->N);
        }
    }
}

/* ---- driver ----------------------------------------------------------------------------- */

int rc_check_epilogue(const rc_epilogue *e) {
    if (!e) return RC_ERR_ARG;
    switch (e->kind) {
    case RC_EPI_INT32: return RC_OK;
    case RC_EPI_DEQUANT: return e->scale ? RC_OK : RC_ERR_ARG;
    case RC_EPI_REQUANT_FLOAT:
    case RC_EPI_REQUANT_FIXED:
        if (e->kind == RC_EPI_REQUANT_FLOAT ? !e->scale : (!e->multiplier || !e->shift)) return RC_ERR_ARG;
        if (e->out_type != RC_INT8 && e->out_type != RC_UINT8) return RC_ERR_ARG;
        {
            const int32_t lo = rc_out_min(e->out_type), hi = rc_out_max(e->out_type);
            if (e->qmin < lo || e->qmax > hi || e->qmin > e->qmax) return RC_ERR_ARG;
            if (e->out_zero_point < lo || e->out_zero_point > hi) return RC_ERR_ARG;
        }
        return RC_OK;
    default: return RC_ERR_ARG;
    }
}

void rc_qgemm_pick(int isa, rc_qgemm_tile_fn *tile, rc_epi_row_fn *row) {
    switch (isa) {
#if RC_X86
    case RC_ISA_AVX2: *tile = rc_qgemm_tile_avx2; *row = rc_epi_row_avx2; return;
#if RC_HAVE_AVX_VNNI
    case RC_ISA_AVX_VNNI: *tile = rc_qgemm_tile_avx_vnni; *row = rc_epi_row_avx2; return;
#endif
    case RC_ISA_AVX512: *tile = rc_qgemm_tile_avx512; *row = rc_epi_row_avx512; return;
    case RC_ISA_AVX512_VNNI: *tile = rc_qgemm_tile_avx512_vnni; *row = rc_epi_row_avx512; return;
#endif
    default: *tile = rc_qgemm_tile_portable; *row = rc_epi_row_portable; return;
    }
}

/* The three stages below share their work among the threads of an enclosing parallel region
 * (orphaned `omp for` loops, or the tiles' own split) and end at a barrier; called outside
 * one they run on the calling thread. */

int32_t rc_qgemm_pack_a_row(const uint8_t *src, int flip, int64_t K, int8_t *dst) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) {
        /* uint8 activations become signed by flipping the top bit (a - 128); their zero
         * point moves with them, so (a - za) and the product are unchanged. */
        const int8_t v8 = (int8_t)(flip ? (uint8_t)(src[k] ^ 0x80u) : src[k]);
        dst[k] = v8;
        s += v8;
    }
    for (int64_t k = K; k < rc_qgemm_k4(K); ++k) dst[k] = 0;
    return s;
}

rc_pack_a_row_fn rc_qgemm_pick_pack(int isa) {
#if RC_X86
    /* The AVX-512 packer needs only AVX-512BW, which both 512-bit variants have. */
    if (isa == RC_ISA_AVX512 || isa == RC_ISA_AVX512_VNNI) return rc_qgemm_pack_a_row_avx512;
#endif
    (void)isa;
    return rc_qgemm_pack_a_row;
}

void rc_qgemm_pack_a_rows(rc_pack_a_row_fn pack, const uint8_t *a, int flip, int64_t M, int64_t K, int8_t *ap,
                          int32_t *ra) {
    const int64_t K4 = rc_qgemm_k4(K);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t m = 0; m < M; ++m) ra[m] = pack(a + m * K, flip, K, ap + m * K4);
}

/* The zero-point terms of panel p (qgemm.h: zbp, colterm).  Under several threads
 * (`shared`) they are stored only where they differ from what the workspace holds: a
 * layer calls with the same weights and zero points every time, so after the first call
 * nothing is written and the lines stay shared in both cores' caches, where rewriting
 * them made every call pull each line across cores, once to write it and once to read it
 * in the other thread's tiles (two threads, C loop: 1 x 768 x 3072 10.4 -> 10.1 us,
 * 64 x 768 x 3072 156 -> 150 us).  One thread stores them plainly (the compare cost
 * 0.15 us of a 3 us 1 x 768 x 768 call). */
static void prep_panel(int64_t p, int64_t K, int64_t N, uint32_t uza, const int32_t *col_sums, const int32_t *zb,
                       int zb_per_col, uint32_t zb0, int shared, int32_t *zbp, int32_t *colterm) {
    const uint32_t uk = (uint32_t)K;
    const int64_t n0 = p * NR, nv = N - n0 < NR ? N - n0 : NR;
    int32_t zp[NR], ct[NR];
    const int32_t *cs = col_sums + n0;
    /* Straight loops over one panel's columns: under -fwrapv (Python's flag, which the
     * build now overrides) GCC 12 left the earlier single loop over all columns (index
     * select for zb, padding test per column) scalar, ~1.2 us of a 1 x 768 x 3072 call;
     * these loops vectorise with or without it. */
    if (zb_per_col)
        for (int64_t j = 0; j < nv; ++j) zp[j] = (int32_t)((uint32_t)zb[n0 + j] + 128u);
    else
        for (int64_t j = 0; j < nv; ++j) zp[j] = (int32_t)zb0;
    for (int64_t j = 0; j < nv; ++j) ct[j] = (int32_t)(uza * (uk * (uint32_t)zp[j] - (uint32_t)cs[j]));
    for (int64_t j = nv; j < NR; ++j) {
        zp[j] = (int32_t)zb0; /* padding columns: any zero point, a zero column term */
        ct[j] = 0;
    }
    if (!shared || memcmp(zbp + n0, zp, sizeof zp)) memcpy(zbp + n0, zp, sizeof zp);
    if (!shared || memcmp(colterm + n0, ct, sizeof ct)) memcpy(colterm + n0, ct, sizeof ct);
}

void rc_qgemm_prep_cols(int64_t K, int64_t N, int32_t za_s, const int32_t *col_sums, const int32_t *zb,
                        int zb_per_col, int32_t *zbp, int32_t *colterm) {
    const int64_t panels = rc_qgemm_npad(N) / NR;
    const uint32_t zb0 = panels ? (uint32_t)zb[0] + 128u : 0;
    int shared = 0;
#ifdef _OPENMP
    shared = omp_get_num_threads() > 1;
#pragma omp for schedule(static)
#endif
    for (int64_t p = 0; p < panels; ++p)
        prep_panel(p, K, N, (uint32_t)za_s, col_sums, zb, zb_per_col, zb0, shared, zbp, colterm);
}

/* What one thread of nt computes: rows [r0, r1) of panels [p0, p1); by_panels is the
 * same for every thread of a call (the threads split the panels, not the rows). */
typedef struct {
    int64_t r0, r1, p0, p1;
    int by_panels;
} share;

/* Each thread takes an equal contiguous share of the rows (all panels), or of the panels
 * (all rows) when that makes the largest share over 3 % smaller (batch 1, and small odd M
 * against few panels).  Row shares are exact (M * t / nt), not whole 6-row tiles: a share
 * is cut into tiles of equal height (tile_row), so 256 rows on two threads are 128 + 128
 * rows in 22 tiles each, where whole-tile shares gave 126 and 130 (21 and 22 tiles).  Row shares
 * measured faster than panel shares of equal size (two threads, C loop: 1024^3 8 %,
 * 256 x 1024^2 9 %): each thread keeps its A rows and reads every panel once per row
 * block, as on one thread. */
static share share_of(int64_t M, int64_t panels, int t, int nt) {
    share s = {0, M, 0, panels, 0};
    if (nt > 1) {
        if ((panels + nt - 1) / nt * M * 32 < (M + nt - 1) / nt * panels * 31) {
            s.by_panels = 1;
            s.p0 = panels * t / nt;
            s.p1 = panels * (t + 1) / nt;
        } else {
            s.r0 = M * t / nt;
            s.r1 = M * (t + 1) / nt;
        }
    }
    return s;
}

/* Rows r0.. of a share cut into `tiles` tiles as equal as can be (heights h and h + 1,
 * the taller first): tile i starts at row r0 + tile_row(i). */
static inline int64_t tile_row(int64_t i, int64_t h, int64_t taller) {
    return i * h + (i < taller ? i : taller);
}

static void run_share(const rc_qgemm_ctx *x, rc_qgemm_tile_fn tile, const int8_t *ap, int64_t K4, const void *packed,
                      share s) {
    const int64_t rows = s.r1 - s.r0, tiles = (rows + MR - 1) / MR;
    if (tiles == 0 || s.p1 <= s.p0) return;
    const int64_t h = rows / tiles, taller = rows % tiles;
    /* Row blocks of at most MC / MR tiles, equal in tiles, outermost, so that a thread keeps
     * its A rows in L2 while it walks its panels. */
    const int64_t mblocks = (tiles + MC / MR - 1) / (MC / MR);
    for (int64_t mb = 0; mb < mblocks; ++mb) {
        const int64_t i0 = tiles * mb / mblocks, i1 = tiles * (mb + 1) / mblocks;
        for (int64_t p = s.p0; p < s.p1; ++p)
            for (int64_t i = i0; i < i1; ++i) {
                const int64_t m0 = s.r0 + tile_row(i, h, taller);
                tile(x, ap, K4, m0, (int)(tile_row(i + 1, h, taller) - tile_row(i, h, taller)),
                     (const uint8_t *)packed + p * K4 * NR, p * NR);
            }
    }
}

void rc_qgemm_run_tiles(const rc_qgemm_ctx *x, rc_qgemm_tile_fn tile, const int8_t *ap, int64_t M, int64_t K,
                        const void *packed) {
    int t = 0, nt = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    run_share(x, tile, ap, rc_qgemm_k4(K), packed, share_of(M, rc_qgemm_npad(x->N) / NR, t, nt));
#ifdef _OPENMP
    /* callers read the whole result next (qconv2d transposes it) */
#pragma omp barrier
#endif
}

void rc_qgemm_workspace_split(void *workspace, int64_t M, int64_t K, int64_t N, int8_t **ap, int32_t **ra,
                              int32_t **zbp, int32_t **colterm) {
    uint8_t *ws = (uint8_t *)workspace;
    *ap = (int8_t *)ws;
    *ra = (int32_t *)(ws + (M * rc_qgemm_k4(K) + 63) / 64 * 64);
    *zbp = *ra + M + 16;
    *colterm = *zbp + rc_qgemm_npad(N) + 16;
}

int rc_qgemm(const void *a, int a_type, long long M, long long K, long long N, int32_t a_zero_point,
             const void *packed, const int32_t *col_sums, const int32_t *b_zero_point,
             int b_zero_point_per_col, const rc_epilogue *epi, void *c, void *workspace, int isa,
             int threads) {
    if (M < 0 || K < 0 || N < 0 || !rc_activation_ok(a_type, a_zero_point)) return RC_ERR_ARG;
    if (rc_check_epilogue(epi) != RC_OK || !b_zero_point) return RC_ERR_ARG;
    if (M * N == 0) return RC_OK;
    if (!c || !workspace || (K > 0 && (!a || !packed || !col_sums))) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_QGEMM_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_qgemm_tile_fn tile;
    rc_epi_row_fn row;
    rc_qgemm_pick(v, &tile, &row);
    const rc_pack_a_row_fn pack = rc_qgemm_pick_pack(v);
    int8_t *ap;
    int32_t *ra, *zbp, *colterm;
    rc_qgemm_workspace_split(workspace, M, K, N, &ap, &ra, &zbp, &colterm);
    const int flip = a_type == RC_UINT8;
    const int32_t za_s = flip ? a_zero_point - 128 : a_zero_point;
    const rc_qgemm_ctx x = {epi, ra, zbp, colterm, c, N};
    (void)threads;
#ifdef _OPENMP
    const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt) if (nt > 1 && M * K * N >= RC_MIN_PARALLEL_WORK)
#endif
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t K4 = rc_qgemm_k4(K), panels = rc_qgemm_npad(N) / NR;
        const share s = share_of(M, panels, t, nt);
        /* One barrier a call: a thread packs the A rows its own tiles read (a row share) or
         * makes the column terms of its own panels (a panel share) and waits only for the
         * stage the others share with it.  The region's end joins the threads. */
        if (!s.by_panels) {
            for (int64_t m = s.r0; m < s.r1; ++m)
                ra[m] = pack((const uint8_t *)a + m * K, flip, K, ap + m * K4);
            rc_qgemm_prep_cols(K, N, za_s, col_sums, b_zero_point, b_zero_point_per_col, zbp, colterm);
        } else {
            rc_qgemm_pack_a_rows(pack, (const uint8_t *)a, flip, M, K, ap, ra);
            const uint32_t zb0 = (uint32_t)b_zero_point[0] + 128u;
            for (int64_t p = s.p0; p < s.p1; ++p)
                prep_panel(p, K, N, (uint32_t)za_s, col_sums, b_zero_point, b_zero_point_per_col, zb0, nt > 1, zbp,
                           colterm);
        }
        run_share(&x, tile, ap, K4, packed, s);
    }
    return RC_OK;
}

int rc_qgemm_repeat(long long iters, const void *a, int a_type, long long M, long long K, long long N,
                    int32_t a_zero_point, const void *packed, const int32_t *col_sums,
                    const int32_t *b_zero_point, int b_zero_point_per_col, const rc_epilogue *epi, void *c,
                    void *workspace, int isa, int threads) {
    if (iters < 1) return RC_ERR_ARG;
    int rc = RC_OK;
    for (long long i = 0; i < iters; ++i)
        rc = rc_qgemm(a, a_type, M, K, N, a_zero_point, packed, col_sums, b_zero_point, b_zero_point_per_col, epi,
                      c, workspace, isa, threads);
    return rc;
}

int rc_requantize(const int32_t *acc, long long M, long long N, const rc_epilogue *epi, void *out,
                  int isa, int threads) {
    if (M < 0 || N < 0 || rc_check_epilogue(epi) != RC_OK) return RC_ERR_ARG;
    if (M * N == 0) return RC_OK;
    if (!acc || !out) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_QGEMM_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_qgemm_tile_fn tile;
    rc_epi_row_fn row;
    rc_qgemm_pick(v, &tile, &row);
    (void)tile;
#ifdef _OPENMP
    const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && M * N >= RC_MIN_PARALLEL_WORK)
#endif
    for (int64_t m = 0; m < M; ++m) row(epi, acc + m * N, m, 0, N, out, N);
    return RC_OK;
}
