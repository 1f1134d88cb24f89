/* Internal interface between the qgemm driver (qgemm.c) and its ISA variants. */
#ifndef RC_QGEMM_H
#define RC_QGEMM_H
#include "../rc_common.h"

#define RC_QGEMM_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512) | \
                           (1 << RC_ISA_AVX512_VNNI) | (1 << RC_ISA_AVX_VNNI))

/* Rows per micro-tile (the variants all use it, so one driver tiles for all of them). */
#define RC_QGEMM_MR 6

/* K rounded up to the 4-element groups of packed A and B; N up to whole 64-column panels. */
static inline int64_t rc_qgemm_k4(int64_t K) { return (K + 3) / 4 * 4; }
static inline int64_t rc_qgemm_npad(int64_t N) { return (N + RC_QGEMM_NR - 1) / RC_QGEMM_NR * RC_QGEMM_NR; }

/* Everything a micro-tile needs beyond the operands: the zero-point corrections and the
 * epilogue.  The exact result is
 *   C[m, n] = acc[m, n] - zbp[n] * ra[m] + colterm[n] (+ bias[n])
 * with acc = sum_k a_s[m, k] * b_u[k, n] (a_s signed, b_u = b + 128 unsigned),
 * ra[m] = sum_k a_s[m, k], zbp[n] = zb[n] + 128, colterm[n] = za_s * (K * zbp[n] - colsum[n]).
 * All of it is computed modulo 2^32: intermediates may wrap, the result fits in int32 (the
 * caller checked the K bound), so the wrapped arithmetic gives it exactly. */
typedef struct {
    const rc_epilogue *epi;
    const int32_t *ra;      /* [M]    */
    const int32_t *zbp;     /* [Npad] */
    const int32_t *colterm; /* [Npad] */
    void *c;
    int64_t N;              /* columns of C (its row stride) */
} rc_qgemm_ctx;

/* One micro-tile: rows [m0, m0 + mr) (mr <= RC_QGEMM_MR) of the packed A (row stride K4
 * bytes), panel p of packed B, written through the epilogue. */
typedef void (*rc_qgemm_tile_fn)(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4, int64_t m0,
                                 int mr, const uint8_t *bpanel, int64_t n0);
/* The epilogue alone over n values of row m starting at column n0 (acc already corrected). */
typedef void (*rc_epi_row_fn)(const rc_epilogue *e, const int32_t *acc, int64_t m, int64_t n0,
                              int64_t n, void *out, int64_t ldo);

void rc_qgemm_tile_portable(const rc_qgemm_ctx *, const int8_t *, int64_t, int64_t, int, const uint8_t *, int64_t);
void rc_epi_row_portable(const rc_epilogue *, const int32_t *, int64_t, int64_t, int64_t, void *, int64_t);
#if RC_X86
void rc_qgemm_tile_avx2(const rc_qgemm_ctx *, const int8_t *, int64_t, int64_t, int, const uint8_t *, int64_t);
void rc_epi_row_avx2(const rc_epilogue *, const int32_t *, int64_t, int64_t, int64_t, void *, int64_t);
#if RC_HAVE_AVX_VNNI
void rc_qgemm_tile_avx_vnni(const rc_qgemm_ctx *, const int8_t *, int64_t, int64_t, int, const uint8_t *, int64_t);
#endif
void rc_qgemm_tile_avx512(const rc_qgemm_ctx *, const int8_t *, int64_t, int64_t, int, const uint8_t *, int64_t);
void rc_qgemm_tile_avx512_vnni(const rc_qgemm_ctx *, const int8_t *, int64_t, int64_t, int, const uint8_t *, int64_t);
void rc_epi_row_avx512(const rc_epilogue *, const int32_t *, int64_t, int64_t, int64_t, void *, int64_t);
int32_t rc_qgemm_pack_a_row_avx512(const uint8_t *src, int flip, int64_t K, int8_t *dst);
#endif

/* One row of activations into the packed layout (no OpenMP): returns the row sum ra[m]. */
typedef int32_t (*rc_pack_a_row_fn)(const uint8_t *src, int flip, int64_t K, int8_t *dst);

/* Driver stages shared by qgemm and qconv2d (qgemm.c). */
int rc_check_epilogue(const rc_epilogue *e);
/* An activation type (RC_INT8 / RC_UINT8) and a zero point inside that type's range: the
 * kernels form z - 128, x - z and the like in int32 / int16, which a zero point outside
 * the range could overflow (Python checks it too; this guards the C entry points). */
/* The value range of an 8-bit output type (RC_INT8 / RC_UINT8). */
static inline int32_t rc_out_min(int type) { return type == RC_INT8 ? -128 : 0; }
static inline int32_t rc_out_max(int type) { return type == RC_INT8 ? 127 : 255; }
static inline int rc_activation_ok(int type, int32_t z) {
    return type == RC_UINT8 ? z >= 0 && z <= 255 : type == RC_INT8 && z >= -128 && z <= 127;
}
void rc_qgemm_pick(int isa, rc_qgemm_tile_fn *tile, rc_epi_row_fn *row);
/* The row packer of ISA variant `isa` (resolved): the same bytes and sum for every one. */
rc_pack_a_row_fn rc_qgemm_pick_pack(int isa);
void rc_qgemm_pack_a_rows(rc_pack_a_row_fn pack, const uint8_t *a, int flip, int64_t M, int64_t K, int8_t *ap,
                          int32_t *ra);
int32_t rc_qgemm_pack_a_row(const uint8_t *src, int flip, int64_t K, int8_t *dst);
void rc_qgemm_prep_cols(int64_t K, int64_t N, int32_t za_s, const int32_t *col_sums, const int32_t *zb,
                        int zb_per_col, int32_t *zbp, int32_t *colterm);
void rc_qgemm_run_tiles(const rc_qgemm_ctx *x, rc_qgemm_tile_fn tile, const int8_t *ap, int64_t M, int64_t K,
                        const void *packed);
void rc_qgemm_workspace_split(void *workspace, int64_t M, int64_t K, int64_t N, int8_t **ap, int32_t **ra,
                              int32_t **zbp, int32_t **colterm);

/* Scalar epilogue of one value (the definition the vector epilogues reproduce). */
static inline void rc_epi_store_one(const rc_epilogue *e, uint32_t acc, int64_t m, int64_t n,
                                    void *out, int64_t ldo) {
    if (e->bias) acc += (uint32_t)e->bias[n];
    const int32_t v = (int32_t)acc;
    const int64_t ch = e->per_channel ? n : 0;
    const int64_t at = m * ldo + n;
    switch (e->kind) {
    case RC_EPI_INT32: ((int32_t *)out)[at] = v; break;
    case RC_EPI_DEQUANT: {
        float f = (float)v * e->scale[ch];
        if (e->row_scale) f = f * e->row_scale[m];
        if (e->fbias) f = f + e->fbias[n];
        if (e->relu && !(f >= 0.0f)) f = 0.0f;
        ((float *)out)[at] = f;
    } break;
    default: {
        const int32_t q = e->kind == RC_EPI_REQUANT_FLOAT
            ? rc_requant_float_one(v, e->scale[ch], e->out_zero_point, e->qmin, e->qmax)
            : rc_requant_fixed_one(v, e->multiplier[ch], e->shift[ch], e->out_zero_point, e->qmin, e->qmax);
        if (e->out_type == RC_INT8) ((int8_t *)out)[at] = (int8_t)q;
        else ((uint8_t *)out)[at] = (uint8_t)q;
    } break;
    }
}
#endif
