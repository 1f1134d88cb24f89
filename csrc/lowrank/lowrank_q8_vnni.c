/* AVX-512 VNNI block of the int8 factored Linear: qgemm's arithmetic with tiles shaped for
 * the two short products of a low-rank layer.
 *
 * qgemm's 6 x 64 tile spends, per output vector, a zero-point correction (two loads and a
 * vpmulld) and an epilogue that re-reads its parameters; with the second product's
 * K = r = 48..64 that is a large share of 12..16 vpdpbusd per accumulator, and with the
 * first product's N = r = 48 or 96 the last panel is a quarter zero padding.  Here:
 *   - the correction -zbp * ra[m] + colterm[n] (+ bias[n]) is the accumulators' starting
 *     value instead of a step after the loop (the factors are symmetric, so zbp is one
 *     constant and the row term one scalar per row);
 *   - the epilogue's parameters are made once per panel (rc_requant16_prepare,
 *     rc_dequant16_prepare) and applied to the registers of a finished tile;
 *   - a panel with 33..48 valid columns runs 8 x 48 tiles, 17..32 12 x 32, <= 16 12 x 16
 *     (the full panel 6 x 64: 24 accumulators), so padding columns cost nothing;
 *   - rows are packed 64 bytes at a time (flip the top bit, row sum by vpsadbw).
 * Every sum is the same int32 modulo 2^32 as qgemm's (vpdpbusd wraps, it does not saturate,
 * and the corrected value fits in int32), and the epilogue's vector operations are
 * qgemm's own (qgemm_epi_avx512.h), so the result equals the generic block's bit for bit. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <string.h>

#include "../qgemm/qgemm_epi_avx512.h"
#include "lowrank_q8.h"

/* rc_qgemm_pack_a_row for uint8 rows: dst = src ^ 0x80 as int8 (= src - 128), zero up to
 * K4; returns sum(src) - 128 K, the sum of the stored values (wrapping, as qgemm's). */
static int32_t pack_row(const uint8_t *src, int64_t K, int8_t *dst) {
    const __m512i flip = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    __m512i s = zero;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        const __m512i v = _mm512_loadu_si512(src + k);
        s = _mm512_add_epi64(s, _mm512_sad_epu8(v, zero));
        _mm512_storeu_si512(dst + k, _mm512_xor_si512(v, flip));
    }
    const int64_t K4 = rc_qgemm_k4(K);
    if (k < K4) {
        const __mmask64 in = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
        const __mmask64 out = K4 - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K4 - k)) - 1);
        const __m512i v = _mm512_maskz_loadu_epi8(in, src + k);
        s = _mm512_add_epi64(s, _mm512_sad_epu8(v, zero));
        _mm512_mask_storeu_epi8(dst + k, out, _mm512_maskz_mov_epi8(in, _mm512_xor_si512(v, flip)));
    }
    return (int32_t)((uint32_t)_mm512_reduce_add_epi64(s) - 128u * (uint32_t)K);
}

/* A panel's columns n0 .. n0 + 63 as a tile needs them: the accumulators' starting value
 * (colterm + bias, wrapping) and the epilogue's parameters, per vector of 16 columns. */
typedef struct {
    const rc_qgemm_ctx *x; /* ra, zbp, the output and its N */
    int64_t n0;
    __mmask16 mask[4];     /* 0 for a vector past N */
    __m512i init[4];
    rc_dequant16_params d[4]; /* DEQUANT */
    rc_requant16_params q[4]; /* REQUANT_FLOAT / REQUANT_FIXED */
} lq_panel;

static void lq_panel_prepare(lq_panel *P, const rc_qgemm_ctx *x, int64_t n0) {
    const rc_epilogue *e = x->epi;
    P->x = x;
    P->n0 = n0;
    for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + 16 * j;
        const __mmask16 m = n < x->N ? rc_mask16(x->N - n) : 0;
        P->mask[j] = m;
        P->init[j] = _mm512_loadu_si512(x->colterm + n);
        if (e->bias) P->init[j] = _mm512_add_epi32(P->init[j], _mm512_maskz_loadu_epi32(m, e->bias + n));
        if (e->kind == RC_EPI_DEQUANT) P->d[j] = rc_dequant16_prepare(e, n, m);
        else P->q[j] = rc_requant16_prepare(e, n, m);
    }
}

/* The epilogues of one accumulator vector (already corrected, bias included): requantize
 * vector j of row m, or dequantize into o (no float bias, no ReLU: rc_lowrank_q8 sends
 * those to the generic block).  The tile shapes leave no vector without a valid column,
 * but the `!mask` tests stay: without them GCC 12 spills accumulators in the K loop. */
static inline __attribute__((always_inline)) void out_requant(const lq_panel *P, __m512i v, int64_t m, int j) {
    if (!P->mask[j]) return;
    _mm512_mask_cvtepi32_storeu_epi8((int8_t *)P->x->c + m * P->x->N + P->n0 + 16 * j, P->mask[j],
                                     rc_requant16_apply(&P->q[j], v));
}
static inline __attribute__((always_inline)) void out_dequant(float *o, __mmask16 mask, __m512 scale, __m512i v) {
    if (!mask) return;
    const rc_dequant16_params d = {scale, _mm512_setzero_ps(), 0, 0};
    const __m512 f = rc_dequant16_apply(&d, v, NULL);
    if (mask == 0xFFFF) _mm512_storeu_ps(o, f); /* a masked store is slower on Zen, even with all lanes on */
    else _mm512_mask_storeu_ps(o, mask, f);
}

/* Accumulators of up to 12 rows x 4 vectors, as named variables (see qgemm_avx512_vnni.c:
 * GCC spills an indexed array of vectors).  `mr` and `nv` are constants after inlining, so
 * every guard folds away and only mr x nv of them exist. */
#define LQ_DECL(r) __m512i c##r##_0 = zero, c##r##_1 = zero, c##r##_2 = zero, c##r##_3 = zero;
#define LQ_INIT(r)                                                                            \
    if (mr > r) {                                                                             \
        const __m512i rt = _mm512_set1_epi32((int32_t)(0u - zbp * (uint32_t)ra[m0 + r]));     \
        c##r##_0 = _mm512_add_epi32(k0, rt);                                                   \
        if (nv > 1) c##r##_1 = _mm512_add_epi32(k1, rt);                                       \
        if (nv > 2) c##r##_2 = _mm512_add_epi32(k2, rt);                                       \
        if (nv > 3) c##r##_3 = _mm512_add_epi32(k3, rt);                                       \
    }
#define LQ_STEP(r)                                                                            \
    if (mr > r) {                                                                             \
        int32_t w;                                                                            \
        memcpy(&w, ar + r * K4 + 4 * g, 4);                                                   \
        const __m512i av = _mm512_set1_epi32(w);                                              \
        c##r##_0 = _mm512_dpbusd_epi32(c##r##_0, b0, av);                                       \
        if (nv > 1) c##r##_1 = _mm512_dpbusd_epi32(c##r##_1, b1, av);                           \
        if (nv > 2) c##r##_2 = _mm512_dpbusd_epi32(c##r##_2, b2, av);                           \
        if (nv > 3) c##r##_3 = _mm512_dpbusd_epi32(c##r##_3, b3, av);                           \
    }
#define LQ_REQ(r)                                                                             \
    if (mr > r) {                                                                             \
        out_requant(P, c##r##_0, m0 + r, 0);                                                  \
        if (nv > 1) out_requant(P, c##r##_1, m0 + r, 1);                                      \
        if (nv > 2) out_requant(P, c##r##_2, m0 + r, 2);                                      \
        if (nv > 3) out_requant(P, c##r##_3, m0 + r, 3);                                      \
    }
/* The dequantizing one reads the panel into locals first: stores through `out` could
 * alias *P, which would then be read again after every store. */
#define LQ_DEQ(r)                                                                             \
    if (mr > r) {                                                                             \
        float *o = out + (m0 + r) * ldo;                                                      \
        out_dequant(o, q0, s0, c##r##_0);                                                     \
        if (nv > 1) out_dequant(o + 16, q1, s1, c##r##_1);                                    \
        if (nv > 2) out_dequant(o + 32, q2, s2, c##r##_2);                                    \
        if (nv > 3) out_dequant(o + 48, q3, s3, c##r##_3);                                    \
    }
#define LQ_ROWS(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11)

/* Rows [m0, m0 + mr) x the first 16 nv columns of panel bp, mr <= 12; `deq`: the panel's
 * epilogue is DEQUANT (else requantizing). */
static inline __attribute__((always_inline)) void tile(const lq_panel *P, const int8_t *a, int64_t K4,
                                                       int64_t m0, const int mr, const int nv,
                                                       const int deq, const uint8_t *bp) {
    const __m512i zero = _mm512_setzero_si512();
    LQ_ROWS(LQ_DECL);
    {
        const int32_t *ra = P->x->ra;
        const uint32_t zbp = (uint32_t)P->x->zbp[0];
        const __m512i k0 = P->init[0], k1 = P->init[1], k2 = P->init[2], k3 = P->init[3];
        LQ_ROWS(LQ_INIT)
    }
    const int8_t *ar = a + m0 * K4;
    const int64_t groups = K4 / 4;
    for (int64_t g = 0; g < groups; ++g) {
        const uint8_t *bg = bp + g * 4 * RC_QGEMM_NR;
        const __m512i b0 = _mm512_loadu_si512(bg);
        const __m512i b1 = nv > 1 ? _mm512_loadu_si512(bg + 64) : zero;
        const __m512i b2 = nv > 2 ? _mm512_loadu_si512(bg + 128) : zero;
        const __m512i b3 = nv > 3 ? _mm512_loadu_si512(bg + 192) : zero;
        LQ_ROWS(LQ_STEP)
    }
    if (deq) {
        const __mmask16 q0 = P->mask[0], q1 = P->mask[1], q2 = P->mask[2], q3 = P->mask[3];
        const __m512 s0 = P->d[0].scale, s1 = P->d[1].scale, s2 = P->d[2].scale, s3 = P->d[3].scale;
        float *const out = (float *)P->x->c + P->n0;
        const int64_t ldo = P->x->N;
        LQ_ROWS(LQ_DEQ)
    } else {
        LQ_ROWS(LQ_REQ)
    }
}

/* One instance per (rows, vectors) shape -- 6 x 4, 8 x 3, 12 x 2 and 12 x 1 vectors of
 * 16 columns -- and epilogue (requantizing, or the plain dequantization); a lone row goes
 * to qgemm's own one-row tile, which splits K to hide the latency. */
#define LQ_CASE(MR, NV, DEQ) case MR: tile(P, a, K4, m0, MR, NV, DEQ, bp); break;
#define LQ_UPTO6(NV, DEQ) LQ_CASE(6, NV, DEQ) LQ_CASE(5, NV, DEQ) LQ_CASE(4, NV, DEQ) LQ_CASE(3, NV, DEQ) \
                          LQ_CASE(2, NV, DEQ)
#define LQ_UPTO8(NV, DEQ) LQ_CASE(8, NV, DEQ) LQ_CASE(7, NV, DEQ) LQ_UPTO6(NV, DEQ)
#define LQ_UPTO12(NV, DEQ) LQ_CASE(12, NV, DEQ) LQ_CASE(11, NV, DEQ) LQ_CASE(10, NV, DEQ) LQ_CASE(9, NV, DEQ) \
                           LQ_UPTO8(NV, DEQ)
#define LQ_TILE_FN(NV, DEQ, UPTO)                                                                           \
    static void tile_nv##NV##_##DEQ(const lq_panel *P, const int8_t *a, int64_t K4, int64_t m0, int mr,     \
                                    const uint8_t *bp) {                                                    \
        switch (mr) {                                                                                       \
        UPTO(NV, DEQ)                                                                                       \
        default: rc_qgemm_tile_avx512_vnni(P->x, a, K4, m0, mr, bp, P->n0);                                 \
        }                                                                                                   \
    }
/* All rows [0, rows) of one panel: the full tiles with their row count a constant of the
 * loop (no call and no switch per tile: with K = r = 64 a tile is only ~200 cycles of
 * vpdpbusd, and the per-tile dispatch cost ~2% of the product), then the remainder. */
#define LQ_RUN_FN(NV, DEQ, MR)                                                                              \
    static void run_nv##NV##_##DEQ(const lq_panel *P, const int8_t *a, int64_t K4, int64_t rows,           \
                                   const uint8_t *bp) {                                                     \
        int64_t m0 = 0;                                                                                     \
        for (; m0 + MR <= rows; m0 += MR) tile(P, a, K4, m0, MR, NV, DEQ, bp);                             \
        if (m0 < rows) tile_nv##NV##_##DEQ(P, a, K4, m0, (int)(rows - m0), bp);                             \
    }
#define LQ_SHAPES(DEQ)                                                                                      \
    LQ_TILE_FN(4, DEQ, LQ_UPTO6) LQ_TILE_FN(3, DEQ, LQ_UPTO8) LQ_TILE_FN(2, DEQ, LQ_UPTO12)                 \
    LQ_TILE_FN(1, DEQ, LQ_UPTO12) LQ_RUN_FN(4, DEQ, 6) LQ_RUN_FN(3, DEQ, 8) LQ_RUN_FN(2, DEQ, 12)          \
    LQ_RUN_FN(1, DEQ, 12)
LQ_SHAPES(0)
LQ_SHAPES(1)

typedef void (*lq_run_fn)(const lq_panel *, const int8_t *, int64_t, int64_t, const uint8_t *);

/* Every tile of rows [0, rows) of packed A, panel by panel (each panel reused by all the
 * block's rows while in cache), the tile shape chosen by the panel's valid columns. */
static void run_tiles(const rc_qgemm_ctx *x, const int8_t *a, int64_t K4, int64_t rows, const void *packed) {
    const int64_t panels = rc_qgemm_npad(x->N) / RC_QGEMM_NR;
    if (rows == 1) { /* a lone row: qgemm's one-row tile, nothing to prepare per panel */
        for (int64_t p = 0; p < panels; ++p)
            rc_qgemm_tile_avx512_vnni(x, a, K4, 0, 1, (const uint8_t *)packed + p * K4 * RC_QGEMM_NR, p * RC_QGEMM_NR);
        return;
    }
    const int deq = x->epi->kind == RC_EPI_DEQUANT; /* then without fbias and relu */
    lq_panel P;
    for (int64_t p = 0; p < panels; ++p) {
        const int64_t n0 = p * RC_QGEMM_NR, valid = x->N - n0;
        const uint8_t *bp = (const uint8_t *)packed + p * K4 * RC_QGEMM_NR;
        lq_panel_prepare(&P, x, n0);
        const lq_run_fn f = valid > 48   ? (deq ? run_nv4_1 : run_nv4_0)
                            : valid > 32 ? (deq ? run_nv3_1 : run_nv3_0)
                            : valid > 16 ? (deq ? run_nv2_1 : run_nv2_0)
                                         : (deq ? run_nv1_1 : run_nv1_0);
        f(&P, a, K4, rows, bp);
    }
}

void rc_lowrank_q8_block_vnni(const rc_lowrank_q8_call *c, int64_t i0, int64_t rows) {
    int8_t *ap1 = c->a1 + i0 * c->K4n, *ap2 = c->a2 + i0 * c->K4r;
    uint8_t *hb = c->h + i0 * c->r;
    for (int64_t i = 0; i < rows; ++i) c->ra1[i0 + i] = pack_row(c->x + (i0 + i) * c->n, c->n, ap1 + i * c->K4n);
    const rc_qgemm_ctx c1 = {c->epi_h, c->ra1 + i0, c->zbp1, c->ct1, hb, c->r};
    run_tiles(&c1, ap1, c->K4n, rows, c->packed_v);
    for (int64_t i = 0; i < rows; ++i) c->ra2[i0 + i] = pack_row(hb + i * c->r, c->r, ap2 + i * c->K4r);
    const rc_qgemm_ctx c2 = {c->epi_y, c->ra2 + i0, c->zbp2, c->ct2, c->y + i0 * c->m, c->m};
    run_tiles(&c2, ap2, c->K4r, rows, c->packed_u);
}
#endif
