/* AVX-512 VNNI block of the int8 factored Linear: qgemm's arithmetic with tiles shaped for
 * the two short products of a low-rank layer, and the operands the other way round.
 *
 * qgemm feeds vpdpbusd the packed weights + 128 as its unsigned operand and the activations
 * flipped to int8 (a - 128) as the signed one, which costs a packing pass over the rows and
 * a per-row correction (zbp * row sum) in every accumulator.  The activations of a low-rank
 * layer are uint8 (x, and the requantized h) and both factors symmetric int8, so here the
 * activation bytes are the unsigned operand as they are and the weights (a copy of the
 * packed factors minus 128, rc_lowrank_q8_prepare) the signed one:
 *     C[m, n] = sum_k a[m, k] w[k, n] - za sum_k w[k, n],
 * the last term one start value per column (prepared per layer, bias included).  Rows of x
 * are read in place when n % 4 == 0 (copied into a zero-padded buffer otherwise), h_q is
 * written where the second product reads it.  Further:
 *   - the epilogue's parameters are made once per panel (rc_panel_prepare, which qgemm's
 *     tiles use too) and applied to the registers of a finished tile; a full panel of h_q
 *     whose requantization needs no clamp of its own is packed as qgemm's is
 *     (rc_pack64_unclamped);
 *   - a panel with 33..48 valid columns runs 8 x 48 tiles, 17..32 12 x 32, <= 16 12 x 16
 *     (the full panel 6 x 64: 24 accumulators), so padding columns cost nothing.
 * Every sum is the same int32 modulo 2^32 as qgemm's (vpdpbusd wraps, it does not saturate,
 * and the exact value fits in int32), and the epilogue's vector operations are qgemm's own
 * (qgemm_epi_avx512.h), so the result equals the generic block's bit for bit.  A block of
 * one row runs the generic block (qgemm's one-row tile splits K to hide the latency). */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <string.h>

#include "../qgemm/qgemm_epi_avx512.h"
#include "lowrank_q8.h"

/* The epilogues of one accumulator vector (already corrected, bias included): requantize
 * vector j of row m, or dequantize into o (no float bias, no ReLU: rc_lowrank_q8 sends
 * those to the generic block).  The tile shapes leave no vector without a valid column,
 * but the `!mask` tests stay: without them GCC 12 spills accumulators in the K loop. */
static inline __attribute__((always_inline)) void out_requant(const rc_panel *P, __m512i v, int64_t m, int j) {
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
        c##r##_0 = k0;                                                                        \
        if (nv > 1) c##r##_1 = k1;                                                            \
        if (nv > 2) c##r##_2 = k2;                                                            \
        if (nv > 3) c##r##_3 = k3;                                                            \
    }
/* av: four activation bytes of row r (unsigned), b0..b3: the signed weights */
#define LQ_STEP(r)                                                                            \
    if (mr > r) {                                                                             \
        int32_t w;                                                                            \
        memcpy(&w, ar + r * lda + 4 * g, 4);                                                  \
        const __m512i av = _mm512_set1_epi32(w);                                              \
        c##r##_0 = _mm512_dpbusd_epi32(c##r##_0, av, b0);                                       \
        if (nv > 1) c##r##_1 = _mm512_dpbusd_epi32(c##r##_1, av, b1);                           \
        if (nv > 2) c##r##_2 = _mm512_dpbusd_epi32(c##r##_2, av, b2);                           \
        if (nv > 3) c##r##_3 = _mm512_dpbusd_epi32(c##r##_3, av, b3);                           \
    }
#define LQ_REQ(r)                                                                             \
    if (mr > r) {                                                                             \
        out_requant(P, c##r##_0, m0 + r, 0);                                                  \
        if (nv > 1) out_requant(P, c##r##_1, m0 + r, 1);                                      \
        if (nv > 2) out_requant(P, c##r##_2, m0 + r, 2);                                      \
        if (nv > 3) out_requant(P, c##r##_3, m0 + r, 3);                                      \
    }
/* The 64 bytes of row r through rc_pack64_unclamped (locals as for LQ_DEQ). */
#define LQ_REQ64(r)                                                                           \
    if (mr > r)                                                                               \
        _mm512_storeu_si512(out + (m0 + r) * ldo,                                             \
                            rc_pack64_unclamped(s0, s1, s2, s3, c##r##_0, c##r##_1, c##r##_2, c##r##_3, z, ot));
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

/* Rows [m0, m0 + mr) of A (row stride lda bytes, K4 of them read) x the first 16 nv
 * columns of panel bp, mr <= 12; `deq`: the panel's epilogue is DEQUANT (else requantizing). */
static inline __attribute__((always_inline)) void tile(const rc_panel *P, const uint8_t *a, int64_t lda,
                                                       int64_t K4, int64_t m0, const int mr, const int nv,
                                                       const int deq, const uint8_t *bp) {
    const __m512i zero = _mm512_setzero_si512();
    LQ_ROWS(LQ_DECL);
    {
        const __m512i k0 = P->init[0], k1 = P->init[1], k2 = P->init[2], k3 = P->init[3];
        LQ_ROWS(LQ_INIT)
    }
    const uint8_t *ar = a + m0 * lda;
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
    } else if (nv == 4 && P->unclamped) { /* a full panel: 64 bytes of h_q a row, no clamp */
        const __m512 s0 = P->q[0].scale, s1 = P->q[1].scale, s2 = P->q[2].scale, s3 = P->q[3].scale;
        const int32_t z = P->x->epi->out_zero_point;
        const int ot = P->x->epi->out_type;
        int8_t *const out = (int8_t *)P->x->c + P->n0;
        const int64_t ldo = P->x->N;
        LQ_ROWS(LQ_REQ64)
    } else {
        LQ_ROWS(LQ_REQ)
    }
}

/* One instance per (rows, vectors) shape -- 6 x 4, 8 x 3, 12 x 2 and 12 x 1 vectors of
 * 16 columns -- and epilogue (requantizing, or the plain dequantization). */
#define LQ_CASE(MR, NV, DEQ) case MR: tile(P, a, lda, K4, m0, MR, NV, DEQ, bp); break;
#define LQ_UPTO6(NV, DEQ) LQ_CASE(6, NV, DEQ) LQ_CASE(5, NV, DEQ) LQ_CASE(4, NV, DEQ) LQ_CASE(3, NV, DEQ) \
                          LQ_CASE(2, NV, DEQ) LQ_CASE(1, NV, DEQ)
#define LQ_UPTO8(NV, DEQ) LQ_CASE(8, NV, DEQ) LQ_CASE(7, NV, DEQ) LQ_UPTO6(NV, DEQ)
#define LQ_UPTO12(NV, DEQ) LQ_CASE(12, NV, DEQ) LQ_CASE(11, NV, DEQ) LQ_CASE(10, NV, DEQ) LQ_CASE(9, NV, DEQ) \
                           LQ_UPTO8(NV, DEQ)
#define LQ_TILE_FN(NV, DEQ, UPTO)                                                                           \
    static void tile_nv##NV##_##DEQ(const rc_panel *P, const uint8_t *a, int64_t lda, int64_t K4, int64_t m0, \
                                    int mr, const uint8_t *bp) {                                            \
        switch (mr) {                                                                                       \
        UPTO(NV, DEQ)                                                                                       \
        default: break; /* mr is 1 .. the shape's rows */                                                   \
        }                                                                                                   \
    }
/* All rows [0, rows) of one panel: the full tiles with their row count a constant of the
 * loop (no call and no switch per tile: with K = r = 64 a tile is only ~200 cycles of
 * vpdpbusd, and the per-tile dispatch cost ~2% of the product), then the remainder.  A
 * remainder of fewer than 12 accumulators after a full tile is merged with that tile and
 * the two run as halves (32 rows of 6 x 64 tiles: 6 6 6 6 4 4, not 6 6 6 6 6 2): so few
 * chains cannot hide vpdpbusd's latency, and a thread's share of the batch need not be a
 * multiple of the tile. */
#define LQ_RUN_FN(NV, DEQ, MR)                                                                              \
    static void run_nv##NV##_##DEQ(const rc_panel *P, const uint8_t *a, int64_t lda, int64_t K4,           \
                                   int64_t rows, const uint8_t *bp) {                                       \
        int64_t full = rows / MR;                                                                           \
        const int64_t rem = rows - full * MR;                                                               \
        if (full > 0 && rem > 0 && rem * NV < 12) --full;                                                   \
        int64_t m0 = 0;                                                                                     \
        for (; m0 < full * MR; m0 += MR) tile(P, a, lda, K4, m0, MR, NV, DEQ, bp);                          \
        if (rows - m0 > MR) { /* the merged pair: halves of at most MR rows each */                        \
            const int half = (int)((rows - m0 + 1) / 2);                                                    \
            tile_nv##NV##_##DEQ(P, a, lda, K4, m0, half, bp);                                               \
            m0 += half;                                                                                     \
        }                                                                                                   \
        if (m0 < rows) tile_nv##NV##_##DEQ(P, a, lda, K4, m0, (int)(rows - m0), bp);                        \
    }
#define LQ_SHAPES(DEQ)                                                                                      \
    LQ_TILE_FN(4, DEQ, LQ_UPTO6) LQ_TILE_FN(3, DEQ, LQ_UPTO8) LQ_TILE_FN(2, DEQ, LQ_UPTO12)                 \
    LQ_TILE_FN(1, DEQ, LQ_UPTO12) LQ_RUN_FN(4, DEQ, 6) LQ_RUN_FN(3, DEQ, 8) LQ_RUN_FN(2, DEQ, 12)          \
    LQ_RUN_FN(1, DEQ, 12)
LQ_SHAPES(0)
LQ_SHAPES(1)

typedef void (*lq_run_fn)(const rc_panel *, const uint8_t *, int64_t, int64_t, int64_t, const uint8_t *);

/* Every tile of rows [0, rows) of A (row stride lda, K4 bytes of each read), panel by panel
 * (each panel reused by all the block's rows while in cache), the tile shape chosen by the
 * panel's valid columns. */
static void run_tiles(const rc_qgemm_ctx *x, const uint8_t *a, int64_t lda, int64_t K4, int64_t rows,
                      const uint8_t *packed) {
    const int64_t panels = rc_qgemm_npad(x->N) / RC_QGEMM_NR;
    const int deq = x->epi->kind == RC_EPI_DEQUANT; /* then without fbias and relu */
    rc_panel P;
    for (int64_t p = 0; p < panels; ++p) {
        const int64_t n0 = p * RC_QGEMM_NR, valid = x->N - n0;
        rc_panel_prepare(&P, x, n0);
        const lq_run_fn f = valid > 48   ? (deq ? run_nv4_1 : run_nv4_0)
                            : valid > 32 ? (deq ? run_nv3_1 : run_nv3_0)
                            : valid > 16 ? (deq ? run_nv2_1 : run_nv2_0)
                                         : (deq ? run_nv1_1 : run_nv1_0);
        f(&P, a, lda, K4, rows, packed + p * K4 * RC_QGEMM_NR);
    }
}

/* Rows of K bytes (stride lda) as rows of K4 (the last group zero-padded: a zero activation
 * adds nothing, whatever the padding weights are). */
static void pad_rows(const uint8_t *src, int64_t lda, int64_t rows, int64_t K, uint8_t *dst) {
    const int64_t K4 = rc_qgemm_k4(K);
    for (int64_t i = 0; i < rows; ++i) {
        memcpy(dst + i * K4, src + i * lda, (size_t)K);
        memset(dst + i * K4 + K, 0, (size_t)(K4 - K));
    }
}

void rc_lowrank_q8_block_vnni(const rc_lowrank_q8_call *c, int64_t i0, int64_t rows) {
    if (rows == 1) {
        rc_lowrank_q8_block_generic(c, i0, rows);
        return;
    }
    const int64_t n = c->n, r = c->r, K4n = c->K4n, K4r = c->K4r;
    const uint8_t *a1 = c->x + i0 * n;
    int64_t ld1 = n;
    if (K4n != n) {
        pad_rows(a1, n, rows, n, (uint8_t *)c->a1 + i0 * K4n);
        a1 = (const uint8_t *)c->a1 + i0 * K4n, ld1 = K4n;
    }
    uint8_t *hb = c->h + i0 * r;
    const rc_qgemm_ctx c1 = {c->epi_h, NULL, NULL, c->s1, hb, r};
    run_tiles(&c1, a1, ld1, K4n, rows, c->sv);
    const uint8_t *a2 = hb;
    int64_t ld2 = r;
    if (K4r != r) {
        pad_rows(hb, r, rows, r, (uint8_t *)c->a2 + i0 * K4r);
        a2 = (const uint8_t *)c->a2 + i0 * K4r, ld2 = K4r;
    }
    const rc_qgemm_ctx c2 = {c->epi_y, NULL, NULL, c->s2, c->y + i0 * c->m, c->m};
    run_tiles(&c2, a2, ld2, K4r, rows, c->su);
}
#endif
