/* int8 factored Linear: the two qgemm products of QuantizedLowRank in one call.
 *
 * Each block of rows runs both products back to back -- x rows packed, h_q = tiles of
 * v_q^T through the requantizing epilogue, h_q rows packed, y = tiles of u_q^T through the
 * dequantizing epilogue -- so h of a block is made and used while in L1/L2, and the fixed
 * cost of a call (Python, allocation, epilogue set-up) is paid once instead of twice.
 * The arithmetic is qgemm's own: its row packing, its zero-point corrections
 * (rc_qgemm_prep_cols, done once per layer by rc_lowrank_q8_prepare), its micro-tiles and
 * epilogues (rc_qgemm_pick), so the result is that of two rc_qgemm calls bit for bit.
 * On AVX-512 VNNI, given the signed copy of the factors, the block is lowrank_q8_vnni.c's:
 * the same values, with vpdpbusd's operands swapped (no row packing) and tiles shaped for
 * the short products (a y epilogue with a float bias or ReLU keeps qgemm's tiles). */
#include "lowrank_q8.h"

/* Rows per block, a multiple of the micro-tile's rows: a block's packed x (Q8_MB x n
 * bytes) and h stay in L1/L2 while the panels of both factors stream past. */
#define Q8_MB (RC_QGEMM_MR * 8)

static int64_t al64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

long long rc_lowrank_q8_cols_size(long long r, long long m) {
    if (r < 0 || m < 0) return -1;
    return 3 * (rc_qgemm_npad(r) + rc_qgemm_npad(m));
}

long long rc_lowrank_q8_signed_size(long long n, long long r, long long m) {
    if (n < 0 || r < 0 || m < 0) return -1;
    return rc_qgemm_packed_size(n, r) + rc_qgemm_packed_size(r, m);
}

/* start[j] = -z sum_k w[k, j] for the VNNI block, wrapping; col_sums hold sum_k (w + 128). */
static void prep_start(int64_t K, int64_t N, int32_t z, const int32_t *col_sums, int32_t *start) {
    for (int64_t j = 0; j < rc_qgemm_npad(N); ++j)
        start[j] = j < N ? (int32_t)(0u - (uint32_t)z * ((uint32_t)col_sums[j] - 128u * (uint32_t)K)) : 0;
}

int rc_lowrank_q8_prepare(long long n, long long r, long long m, int32_t x_zero_point, int32_t h_zero_point,
                          const int32_t *col_sums_v, const int32_t *col_sums_u, const void *packed_v,
                          const void *packed_u, int32_t *cols, void *signed_packed) {
    if (n < 1 || r < 1 || m < 1 || !col_sums_v || !col_sums_u || !cols) return RC_ERR_ARG;
    if (signed_packed && (!packed_v || !packed_u)) return RC_ERR_ARG;
    if (x_zero_point < 0 || x_zero_point > 255 || h_zero_point < 0 || h_zero_point > 255) return RC_ERR_ARG;
    const int32_t zero = 0; /* symmetric factors */
    const int64_t R = rc_qgemm_npad(r), M = rc_qgemm_npad(m);
    /* Both activations are uint8: the row packing flips them to int8, and their zero
     * points move with them (z - 128), as in rc_qgemm. */
    rc_qgemm_prep_cols(n, r, x_zero_point - 128, col_sums_v, &zero, 0, cols, cols + R);
    rc_qgemm_prep_cols(r, m, h_zero_point - 128, col_sums_u, &zero, 0, cols + 2 * R, cols + 2 * R + M);
    prep_start(n, r, x_zero_point, col_sums_v, cols + 2 * (R + M));
    prep_start(r, m, h_zero_point, col_sums_u, cols + 2 * (R + M) + R);
    if (signed_packed) { /* the packed bytes are w + 128: w as int8 is the byte ^ 0x80 */
        const int64_t sv = rc_qgemm_packed_size(n, r), su = rc_qgemm_packed_size(r, m);
        uint8_t *out = (uint8_t *)signed_packed;
        for (int64_t i = 0; i < sv; ++i) out[i] = ((const uint8_t *)packed_v)[i] ^ 0x80u;
        for (int64_t i = 0; i < su; ++i) out[sv + i] = ((const uint8_t *)packed_u)[i] ^ 0x80u;
    }
    return RC_OK;
}

long long rc_lowrank_q8_workspace_size(long long batch, long long n, long long r) {
    if (batch < 0 || n < 0 || r < 0) return -1;
    /* packed x rows, h_q, packed h_q rows, both row sums, x's codes when x is float
     * (64-byte aligned parts) */
    return (long long)(al64(batch * rc_qgemm_k4(n)) + al64(batch * r) + al64(batch * rc_qgemm_k4(r)) +
                       al64(8 * batch) + al64(batch * n) + 64);
}

/* All micro-tiles of rows [0, rows) of the packed A: panel by panel, so each panel is
 * reused by every row of the block while in cache. */
static void run_tiles(const rc_qgemm_ctx *c, rc_qgemm_tile_fn tile, const int8_t *ap, int64_t K4, int64_t rows,
                      const void *packed) {
    const int64_t panels = rc_qgemm_npad(c->N) / RC_QGEMM_NR;
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t m0 = 0; m0 < rows; m0 += RC_QGEMM_MR)
            tile(c, ap, K4, m0, (int)(rows - m0 < RC_QGEMM_MR ? rows - m0 : RC_QGEMM_MR),
                 (const uint8_t *)packed + p * K4 * RC_QGEMM_NR, p * RC_QGEMM_NR);
}

/* Rows [i0, i0 + rows): both products, h_q of the block made and used while in cache. */
void rc_lowrank_q8_block_generic(const rc_lowrank_q8_call *c, int64_t i0, int64_t rows) {
    int8_t *ap1 = c->a1 + i0 * c->K4n, *ap2 = c->a2 + i0 * c->K4r;
    uint8_t *hb = c->h + i0 * c->r;
    for (int64_t i = 0; i < rows; ++i)
        c->ra1[i0 + i] = c->pack(c->x + (i0 + i) * c->n, 1, c->n, ap1 + i * c->K4n);
    const rc_qgemm_ctx c1 = {c->epi_h, c->ra1 + i0, c->zbp1, c->ct1, hb, c->r};
    run_tiles(&c1, c->tile, ap1, c->K4n, rows, c->packed_v);
    for (int64_t i = 0; i < rows; ++i)
        c->ra2[i0 + i] = c->pack(hb + i * c->r, 1, c->r, ap2 + i * c->K4r);
    const rc_qgemm_ctx c2 = {c->epi_y, c->ra2 + i0, c->zbp2, c->ct2, c->y + i0 * c->m, c->m};
    run_tiles(&c2, c->tile, ap2, c->K4r, rows, c->packed_u);
}

/* A float x and how to quantize it (x NULL: the call's x is already uint8). */
typedef struct {
    const float *x;
    float scale;
    int32_t zero_point;
    rc_quant_run_fn run;
} q8_input;

/* Rows [i0, i1) in blocks of up to Q8_MB rows; a float x block is quantized into c->x just
 * before the block reads it, so its codes are still in L1 (a thread quantizes its own rows:
 * no extra pass, no extra team). */
static void run_rows(const rc_lowrank_q8_call *c, void (*block)(const rc_lowrank_q8_call *, int64_t, int64_t),
                     const q8_input *in, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i += Q8_MB) {
        const int64_t rows = i1 - i < Q8_MB ? i1 - i : Q8_MB;
        if (in->x) {
            const rc_quant_args qa = {(float *)in->x, (void *)c->x, RC_UINT8, 1, 1, rows * c->n, NULL, NULL, 0, 255};
            in->run(&qa, i * c->n, rows * c->n, in->scale, in->zero_point);
        }
        block(c, i, rows);
    }
}

static int lowrank_q8(const uint8_t *x, const q8_input *in, long long batch, long long n, long long r, long long m,
                      const void *packed_v, const void *packed_u, const int32_t *cols, const void *signed_packed,
                      const rc_epilogue *epi_h, const rc_epilogue *epi_y, float *y, void *workspace, int isa,
                      int threads) {
    if (batch < 0 || n < 1 || r < 1 || m < 1 || !packed_v || !packed_u || !cols) return RC_ERR_ARG;
    if (rc_check_epilogue(epi_h) != RC_OK || rc_check_epilogue(epi_y) != RC_OK) return RC_ERR_ARG;
    /* h_q is the second product's uint8 input; y is float32, and a per-row factor would be
     * indexed by the row within a block, so the epilogue may not have one. */
    if ((epi_h->kind != RC_EPI_REQUANT_FLOAT && epi_h->kind != RC_EPI_REQUANT_FIXED) || epi_h->out_type != RC_UINT8 ||
        epi_y->kind != RC_EPI_DEQUANT || epi_y->row_scale)
        return RC_ERR_ARG;
    if (batch > 0 && ((!x && !in->x) || !y || !workspace)) return RC_ERR_ARG;
    if (in->x && (!(in->scale > 0.0f) || isinf(in->scale) || in->zero_point < 0 || in->zero_point > 255))
        return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_QGEMM_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_qgemm_tile_fn tile;
    rc_epi_row_fn row;
    rc_qgemm_pick(v, &tile, &row);
    (void)row;
    if (batch == 0) return RC_OK;

    const int64_t K4n = rc_qgemm_k4(n), K4r = rc_qgemm_k4(r), R = rc_qgemm_npad(r), M = rc_qgemm_npad(m);
    uint8_t *ws = (uint8_t *)workspace;
    int8_t *a1 = (int8_t *)ws;
    uint8_t *h = ws + al64(batch * K4n);
    int8_t *a2 = (int8_t *)(h + al64(batch * r));
    int32_t *ra1 = (int32_t *)((uint8_t *)a2 + al64(batch * K4r));
    q8_input qin = *in;
    if (qin.x) { /* the codes go to the workspace's last part; the blocks read them as x */
        x = (uint8_t *)ra1 + al64(8 * batch);
        qin.run = rc_quantize_run_for(v);
    }
    const uint8_t *sv = (const uint8_t *)signed_packed;
    const rc_lowrank_q8_call c = {x, n, r, m, K4n, K4r, packed_v, packed_u, cols, cols + R, cols + 2 * R,
                                  cols + 2 * R + M, sv, sv ? sv + rc_qgemm_packed_size(n, r) : NULL,
                                  cols + 2 * (R + M), cols + 2 * (R + M) + R, epi_h, epi_y, tile, rc_qgemm_pick_pack(v), a1, a2, h,
                                  ra1, ra1 + batch, y};

    int nt = 1;
#ifdef _OPENMP
    nt = threads > 0 ? threads : omp_get_max_threads();
    if ((int64_t)batch * r * (n + m) < RC_MIN_PARALLEL_WORK) nt = 1;
#endif
    void (*block)(const rc_lowrank_q8_call *, int64_t, int64_t) = rc_lowrank_q8_block_generic;
#if RC_X86
    if (v == RC_ISA_AVX512_VNNI && sv && !epi_y->fbias && !epi_y->relu) block = rc_lowrank_q8_block_vnni;
#endif
    const int64_t tiles = (batch + RC_QGEMM_MR - 1) / RC_QGEMM_MR;
    if (nt > tiles) nt = (int)tiles;
    if (nt == 1) { /* no team to wake */
        run_rows(&c, block, &qin, 0, batch);
        return RC_OK;
    }
    /* Each thread one contiguous, equal share of the rows (whole blocks per thread gave,
     * on two threads, 36 / 28 rows at batch 64 and 144 / 112 at batch 256; whole 6-row
     * tiles 30 / 34 at batch 64).  The VNNI block runs any row count without a short last
     * tile; the generic one ends a share with one of qgemm's partial tiles. */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        run_rows(&c, block, &qin, batch * t / T, batch * (t + 1) / T);
    }
#endif
    return RC_OK;
}

int rc_lowrank_q8(const uint8_t *x, long long batch, long long n, long long r, long long m,
                  const void *packed_v, const void *packed_u, const int32_t *cols, const void *signed_packed,
                  const rc_epilogue *epi_h, const rc_epilogue *epi_y, float *y, void *workspace, int isa,
                  int threads) {
    const q8_input none = {NULL, 0.0f, 0, NULL};
    return lowrank_q8(x, &none, batch, n, r, m, packed_v, packed_u, cols, signed_packed, epi_h, epi_y, y,
                      workspace, isa, threads);
}

int rc_lowrank_q8_f32(const float *x, float x_scale, int32_t x_zero_point, long long batch, long long n,
                      long long r, long long m, const void *packed_v, const void *packed_u, const int32_t *cols,
                      const void *signed_packed, const rc_epilogue *epi_h, const rc_epilogue *epi_y, float *y,
                      void *workspace, int isa, int threads) {
    if (batch > 0 && !x) return RC_ERR_ARG;
    const q8_input in = {x, x_scale, x_zero_point, NULL};
    return lowrank_q8(NULL, &in, batch, n, r, m, packed_v, packed_u, cols, signed_packed, epi_h, epi_y, y,
                      workspace, isa, threads);
}
