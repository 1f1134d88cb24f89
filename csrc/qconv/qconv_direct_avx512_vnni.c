/* AVX-512 VNNI direct convolution, NCHW or NHWC in and out (rc_direct_args.nhwc): C[OC, P] = W[OC, K] . X[K, P] per image,
 * K = C for 1x1 (stride 1, no padding) and K = 9 C for 3x3 (stride 1, padding 1: the nine
 * taps are the image shifted by (kh - 1) rows and (kw - 1) columns, the zero point where
 * the shift reads padding).
 *
 * Lanes are pixels; each 32-bit lane holds 4 consecutive channels of one pixel
 * (vpdpbusd's unsigned operand).  A band of 64-pixel blocks is interleaved once, as
 * [C4/4][positions][4 channels], into a per-thread buffer; for 3x3 it carries a halo of at
 * least W + 1 pixels on each side, and the one copy serves the nine taps, which read it at
 * the offsets (kh - 1) W + (kw - 1) (the kw shifts are loads 4 bytes off, the kh shifts
 * row offsets).  Rows above and below the image are the zero point in the buffer; the lanes
 * whose kw = 0 / kw = 2 read wraps to the neighbouring row take the zero point by a
 * merge-masked load.  A micro-tile is 6 output channels x up to 4 vectors of 16 pixels =
 * 24 accumulators, each channel group adding 24 vpdpbusd against 6 broadcast int8 weight
 * quadruples.  vpdpbusd does not saturate, so every step is exact modulo 2^32. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <string.h>

#include "../qgemm/qgemm_epi_avx512.h"
#include "qconv.h"
#include "../rc_transpose_avx512.h"

#define MR RC_QCONV_DIRECT_MR
#define PB RC_QCONV_DIRECT_PB
_Static_assert(PB == 64, "pack64 and the 4-vector tile are written for 64-pixel blocks");

/* Interleave channels 4g..4g+3 of 64 pixels into 4 vectors of 16 lanes (c0, c1, c2, c3):
 * bytes then words interleave within each 128-bit lane (lane L of q_k holds pixels
 * 16L + 4k .. 16L + 4k + 3), then a 4 x 4 transpose of 128-bit lanes puts pixels
 * 16v .. 16v + 15 in vector v. */
static inline __attribute__((always_inline)) void interleave64(const __m512i r[4], uint8_t *dst) {
    const __m512i t0 = _mm512_unpacklo_epi8(r[0], r[1]), t1 = _mm512_unpackhi_epi8(r[0], r[1]);
    const __m512i t2 = _mm512_unpacklo_epi8(r[2], r[3]), t3 = _mm512_unpackhi_epi8(r[2], r[3]);
    const __m512i q0 = _mm512_unpacklo_epi16(t0, t2), q1 = _mm512_unpackhi_epi16(t0, t2);
    const __m512i q2 = _mm512_unpacklo_epi16(t1, t3), q3 = _mm512_unpackhi_epi16(t1, t3);
    const __m512i a0 = _mm512_shuffle_i32x4(q0, q1, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i a1 = _mm512_shuffle_i32x4(q0, q1, _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i a2 = _mm512_shuffle_i32x4(q2, q3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i a3 = _mm512_shuffle_i32x4(q2, q3, _MM_SHUFFLE(3, 2, 3, 2));
    _mm512_storeu_si512(dst, _mm512_shuffle_i32x4(a0, a2, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_si512(dst + 64, _mm512_shuffle_i32x4(a0, a2, _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_storeu_si512(dst + 128, _mm512_shuffle_i32x4(a1, a3, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_si512(dst + 192, _mm512_shuffle_i32x4(a1, a3, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Channels c..c+3 at the flat positions s..s+63 of the plane.  Lanes off the plane (`ok`
 * clear: the 3x3 halo's rows above and below the image, and past its end) hold the zero
 * point, so a tap reading them adds (zx - zx) * w = 0 like the reference's padding.
 * Chunks whose 64 reads leave the plane copy the part inside it into a zeroed line first,
 * so no read leaves it.  Channels past C are 0 in both operands, so they add nothing. */
static inline __attribute__((always_inline)) void pack64(const uint8_t *x, int64_t P, int64_t c, int64_t C, int64_t s,
                                                         __mmask64 ok, __m512i zpad, __m512i fl, uint8_t *dst) {
    __m512i r[4];
    for (int i = 0; i < 4; ++i) {
        if (c + i >= C) {
            r[i] = _mm512_setzero_si512();
            continue;
        }
        const uint8_t *row = x + (c + i) * P;
        __m512i v;
        if (s >= 0 && s + 64 <= P) {
            v = _mm512_loadu_si512(row + s);
        } else {
            /* the part inside the plane, copied into a zeroed line */
            uint8_t tmp[64] = {0};
            const int64_t lo = s < 0 ? -s : 0, hi = s + 64 > P ? P - s : 64;
            if (hi > lo) memcpy(tmp + lo, row + s + lo, (size_t)(hi - lo));
            v = _mm512_loadu_si512(tmp);
        }
        r[i] = _mm512_mask_blend_epi8(ok, zpad, _mm512_xor_si512(v, fl));
    }
    interleave64(r, dst);
}

/* The exact value of output channels [o0, o0 + mr) at the pixels p0.. from acc = sum_k w * xu:
 *   sum_k (w - zw)(xu - zxu) = acc - zxu * wsum[o] - zw[o] * xsum[p] + K * zw[o] * zxu
 * (K = taps * C), every term taken modulo 2^32; the result fits int32 (K bound).  Then the
 * channel's epilogue, and the row stored (pixels past P masked off).  One out-of-line copy
 * for every tile shape: it runs once per tile, and inlined 48 times it pushed the
 * requantization itself out of line.  The bias goes into the row term, so the epilogues
 * run without it. */
static __attribute__((noinline)) void finish(const rc_direct_args *a, const __m512i acc[MR][4], int mr,
                                             const int32_t *xsum, int64_t p0, int64_t o0) {
    const rc_epilogue *epi = a->epi;
    const int requant = epi->kind == RC_EPI_REQUANT_FLOAT || epi->kind == RC_EPI_REQUANT_FIXED;
    const int64_t np = a->P - p0 < PB ? a->P - p0 : PB;
    /* NCHW: rows of out; NHWC: rows of the block's stage, transposed into out afterwards */
    uint8_t *const dst = a->stage ? a->stage : a->out;
    const int64_t ldo = a->stage ? PB : a->P, col = a->stage ? 0 : p0;
    /* a per-tensor requantization is prepared once for the tile, a per-channel one per row */
    rc_requant16_params rq;
    if (requant && !epi->per_channel) rq = rc_requant16_prepare(epi, 0, 0xFFFF);
    __m512i xs[4];
    if (a->any_zw)
        for (int j = 0; j < 4; ++j) xs[j] = _mm512_loadu_si512(xsum + 16 * j);
    for (int r = 0; r < mr; ++r) {
        const int64_t o = o0 + r;
        const int32_t bias = epi->bias ? epi->bias[o] : 0;
        const int32_t zwo = a->zw[a->zw_per_channel ? o : 0];
        const uint32_t rowterm = (uint32_t)a->zxu * ((uint32_t)(a->C * a->taps) * (uint32_t)zwo - (uint32_t)a->wsum[o]) +
                                 (uint32_t)bias;
        const __m512i rt = _mm512_set1_epi32((int32_t)rowterm), zv = _mm512_set1_epi32(zwo);
        __m512i v[4];
        for (int j = 0; j < 4; ++j) {
            v[j] = _mm512_add_epi32(acc[r][j], rt);
            if (a->any_zw) v[j] = _mm512_sub_epi32(v[j], _mm512_mullo_epi32(zv, xs[j]));
        }
        if (requant) {
            if (epi->per_channel) {
                int32_t unused;
                const rc_epilogue e = rc_channel_epilogue(epi, o, &unused);
                rq = rc_requant16_prepare(&e, 0, 0xFFFF);
            }
            /* the 64 bytes of the row in one store (rc_pack64) */
            __m512i b;
            if (rq.unclamped) {
                b = rc_pack64_unclamped(rq.scale, rq.scale, rq.scale, rq.scale, v[0], v[1], v[2], v[3],
                                        epi->out_zero_point, epi->out_type);
            } else {
                __m512i q[4];
                for (int j = 0; j < 4; ++j) q[j] = rc_requant16_apply(&rq, v[j]);
                b = rc_pack64(q[0], q[1], q[2], q[3], epi->out_type);
            }
            /* a plain store for a full block (a masked byte store is slow on some cores) */
            if (np >= 64) _mm512_storeu_si512(dst + o * ldo + col, b);
            else _mm512_mask_storeu_epi8(dst + o * ldo + col, ((__mmask64)1 << np) - 1, b);
            continue;
        }
        int32_t unused;
        const rc_epilogue e = rc_channel_epilogue(epi, o, &unused);
        for (int j = 0; j < 4 && 16 * j < np; ++j) rc_epi16(&e, v[j], o, col + 16 * j, rc_mask16(np - 16 * j), dst, ldo);
    }
}

/* Accumulators are named variables (an indexed array of vectors would live on the stack,
 * see qgemm_avx512_vnni.c); `mr`, `nv` and `taps` are constants after inlining, so the
 * guards fold. */
#define C_DECL(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = c##r##0, c##r##2 = c##r##0, c##r##3 = c##r##0
#define C_STEP(r)                                                                              \
    if (mr > r) {                                                                              \
        int32_t w;                                                                             \
        memcpy(&w, wg + 4 * r, 4);                                                             \
        const __m512i wv = _mm512_set1_epi32(w);                                               \
        if (nv > 0) c##r##0 = _mm512_dpbusd_epi32(c##r##0, x0, wv);                            \
        if (nv > 1) c##r##1 = _mm512_dpbusd_epi32(c##r##1, x1, wv);                            \
        if (nv > 2) c##r##2 = _mm512_dpbusd_epi32(c##r##2, x2, wv);                            \
        if (nv > 3) c##r##3 = _mm512_dpbusd_epi32(c##r##3, x3, wv);                            \
    }
#define C_SAVE(r) \
    if (mr > r) { acc[r][0] = c##r##0; acc[r][1] = c##r##1; acc[r][2] = c##r##2; acc[r][3] = c##r##3; }

/* One tap over every channel group: vector v of the block reads 16 quadruples at
 * xt + g S + 64 v; the kw = 0 / kw = 2 taps (`kind` 0 / 2) take the zero point in the
 * lanes whose read wraps to the neighbouring row (masks k0v / k2v clear). */
#define T_LOAD(v, kind)                                                                       \
    (nv > v ? ((kind) == 1 ? _mm512_loadu_si512(xg + 64 * v)                                  \
                           : _mm512_mask_loadu_epi32(zpv, (kind) == 0 ? k0##v : k2##v, xg + 64 * v)) \
            : _mm512_setzero_si512())
#define T_TAP(xt, kind)                                                                       \
    for (int64_t g = 0; g < G; ++g, wg += MR * 4) {                                           \
        const uint8_t *xg = (xt) + g * S;                                                     \
        const __m512i x0 = T_LOAD(0, kind), x1 = T_LOAD(1, kind);                             \
        const __m512i x2 = T_LOAD(2, kind), x3 = T_LOAD(3, kind);                             \
        C_STEP(0) C_STEP(1) C_STEP(2) C_STEP(3) C_STEP(4) C_STEP(5)                           \
    }

/* Output channels [o0, o0 + mr) over the nv vectors of the block at p0, whose first pixel
 * sits at xc in the band buffer (group stride S bytes). */
static inline __attribute__((always_inline)) void tile(const rc_direct_args *a, const uint8_t *xc, int64_t S,
                                                       const __mmask16 k0[4], const __mmask16 k2[4],
                                                       const int32_t *xsum, int64_t p0, int64_t o0,
                                                       const int taps, const int mr, const int nv, const int8_t *wb) {
    C_DECL(0); C_DECL(1); C_DECL(2); C_DECL(3); C_DECL(4); C_DECL(5);
    const int64_t G = (a->C + 3) / 4;
    const int8_t *wg = wb; /* taps in (kh, kw) order, each over every group */
    const __mmask16 k00 = k0[0], k01 = k0[1], k02 = k0[2], k03 = k0[3];
    const __mmask16 k20 = k2[0], k21 = k2[1], k22 = k2[2], k23 = k2[3];
    const __m512i zpv = _mm512_set1_epi8((char)(uint8_t)a->zxu);
    if (taps == 1) {
        T_TAP(xc, 1)
    } else {
        for (int kh = 0; kh < 3; ++kh) {
            const uint8_t *xr = xc + 4 * (kh - 1) * a->W;
            T_TAP(xr - 4, 0)
            T_TAP(xr, 1)
            T_TAP(xr + 4, 2)
        }
    }
    __m512i acc[MR][4];
    C_SAVE(0) C_SAVE(1) C_SAVE(2) C_SAVE(3) C_SAVE(4) C_SAVE(5)
    finish(a, acc, mr, xsum, p0, o0);
}

#define TILE_NV(taps, mr)                                                                     \
    switch (nv) {                                                                             \
    case 4: tile(a, xc, S, k0, k2, xs, p0, o0, taps, mr, 4, wb); break;                     \
    case 3: tile(a, xc, S, k0, k2, xs, p0, o0, taps, mr, 3, wb); break;                     \
    case 2: tile(a, xc, S, k0, k2, xs, p0, o0, taps, mr, 2, wb); break;                     \
    default: tile(a, xc, S, k0, k2, xs, p0, o0, taps, mr, 1, wb); break;                    \
    }
#define TILE_MR(taps)                                                                         \
    switch (a->OC - o0 < MR ? a->OC - o0 : MR) {                                              \
    case 6: TILE_NV(taps, 6) break;                                                           \
    case 5: TILE_NV(taps, 5) break;                                                           \
    case 4: TILE_NV(taps, 4) break;                                                           \
    case 3: TILE_NV(taps, 3) break;                                                           \
    case 2: TILE_NV(taps, 2) break;                                                           \
    default: TILE_NV(taps, 1) break;                                                          \
    }

/* NHWC: channel groups [g0, g1) of the 64 pixels from flat position s, from the pixel rows
 * [P, C]: 16 groups (64 bytes) of 16 pixels at a time, one dword transpose each.  The
 * byte-masked loads stop at the last channel (channels past C are 0, as in pack64), and
 * pixels off the plane hold the zero point. */
static inline __attribute__((always_inline)) void pack_nhwc(const rc_direct_args *a, int64_t s, int64_t g0,
                                                            int64_t g1, uint8_t *dst, int64_t S) {
    const int64_t C = a->C, P = a->P;
    const __m512i fl = _mm512_set1_epi8(a->flip ? (char)0x80 : 0);
    const __m512i zpad = _mm512_set1_epi8((char)(uint8_t)a->zxu);
    for (int64_t g = g0; g < g1; g += 16) {
        const int64_t ng = g1 - g < 16 ? g1 - g : 16, nc = C - 4 * g < 4 * ng ? C - 4 * g : 4 * ng;
        const __mmask64 cm = nc >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << nc) - 1;
        const __m512i flm = _mm512_maskz_mov_epi8(cm, fl), zpm = _mm512_maskz_mov_epi8(cm, zpad);
        for (int v = 0; v < 4; ++v) {
            __m512 r[16];
            for (int j = 0; j < 16; ++j) {
                const int64_t p = s + 16 * v + j;
                r[j] = _mm512_castsi512_ps(
                    p >= 0 && p < P ? _mm512_xor_si512(_mm512_maskz_loadu_epi8(cm, a->x + p * C + 4 * g), flm) : zpm);
            }
            rc_transpose16_ps(r);
            for (int k = 0; k < ng; ++k) _mm512_storeu_si512(dst + (g + k) * S + 64 * v, _mm512_castps_si512(r[k]));
        }
    }
}

/* NHWC: the stage's rows [o0, o1) x the block's np pixels into out [P, OC] at pixel p0
 * (16 x 16 byte tiles, scalar at the ragged edges; 4-byte results scalar). */
static void stage_out(const rc_direct_args *a, int64_t p0, int64_t np, int64_t o0, int64_t o1) {
    const rc_epilogue *epi = a->epi;
    const int64_t OC = a->OC;
    if (epi->kind == RC_EPI_REQUANT_FLOAT || epi->kind == RC_EPI_REQUANT_FIXED) {
        uint8_t *out = a->out + p0 * OC;
        int64_t o = o0;
        for (; o + 16 <= o1; o += 16) {
            int64_t j = 0;
            for (; j + 16 <= np; j += 16) rc_transpose_tile16(a->stage + o * PB + j, PB, out + j * OC + o, OC, 0);
            for (; j < np; ++j)
                for (int64_t r = o; r < o + 16; ++r) out[j * OC + r] = a->stage[r * PB + j];
        }
        for (; o < o1; ++o)
            for (int64_t j = 0; j < np; ++j) out[j * OC + o] = a->stage[o * PB + j];
        return;
    }
    const uint32_t *st = (const uint32_t *)(const void *)a->stage;
    uint32_t *out = (uint32_t *)(void *)a->out + p0 * OC;
    for (int64_t j = 0; j < np; ++j)
        for (int64_t o = o0; o < o1; ++o) out[j * OC + o] = st[o * PB + j];
}

/* Channel groups [g0, g1) of the 64 pixels from flat position s, interleaved at dst (group
 * stride S; see pack64).  Lines wholly inside the plane with all four channels present
 * (every chunk but an image's last, C a multiple of 4) skip pack64's blend and copy. */
static inline __attribute__((always_inline)) void pack_groups(const rc_direct_args *a, int64_t s, int64_t g0,
                                                              int64_t g1, uint8_t *dst, int64_t S) {
    if (a->nhwc) {
        pack_nhwc(a, s, g0, g1, dst, S);
        return;
    }
    const __m512i fl = _mm512_set1_epi8(a->flip ? (char)0x80 : 0);
    const __m512i zpad = _mm512_set1_epi8((char)(uint8_t)a->zxu);
    const int64_t P = a->P, lo = s < 0 ? -s : 0, hi = s + 64 > P ? P - s : 64;
    const __mmask64 in = hi <= lo ? 0 : ((hi - lo >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (hi - lo)) - 1)) << lo);
    int64_t g = g0;
    if (in == ~(__mmask64)0) {
        const int64_t gf = a->C / 4 < g1 ? a->C / 4 : g1;
        const uint8_t *row = a->x + s + 4 * g * P;
        for (; g < gf; ++g, row += 4 * P) {
            __m512i r[4];
            for (int i = 0; i < 4; ++i) r[i] = _mm512_xor_si512(_mm512_loadu_si512(row + i * P), fl);
            interleave64(r, dst + g * S);
        }
    }
    for (; g < g1; ++g) pack64(a->x, P, 4 * g, a->C, s, in, zpad, fl, dst + g * S);
}

/* Prefetch the input lines of channel groups [g0, g1) (clipped to the channels) at the 64
 * pixels from s (clipped to the plane); `hint` is a _MM_HINT_* constant after inlining. */
static inline __attribute__((always_inline)) void prefetch_groups(const rc_direct_args *a, int64_t s, int64_t g0,
                                                                  int64_t g1, const int hint) {
    if (s >= a->P || a->nhwc) return; /* NHWC: the pixel rows are read in order */
    const int64_t e = s + 63 < a->P ? s + 63 : a->P - 1; /* the chunk may straddle two lines */
    for (int64_t c = 4 * g0; c < 4 * g1 && c < a->C; ++c) {
        if (hint == _MM_HINT_T0) {
            _mm_prefetch((const char *)(a->x + c * a->P + s), _MM_HINT_T0);
            _mm_prefetch((const char *)(a->x + c * a->P + e), _MM_HINT_T0);
        } else {
            _mm_prefetch((const char *)(a->x + c * a->P + s), _MM_HINT_T1);
            _mm_prefetch((const char *)(a->x + c * a->P + e), _MM_HINT_T1);
        }
    }
}

/* The output-channel blocks [ob0, ob1) over one pixel block, one function per kernel size
 * (each holds its 24 tile shapes; one function with both spills the loop's operands).
 * `next` (1x1 on a streamed input, else NULL): after the tile of each output-channel block
 * the next share of the channel groups of the following pixel block (pixels from next_s) is
 * interleaved into `next`; the share after that is prefetched into L1 and the same share
 * of the block after next into L2.  So the input's reads overlap the tiles' vpdpbusd
 * instead of stalling a separate interleave pass. */
#define TILES(name, taps)                                                                     \
    static __attribute__((noinline)) void name(const rc_direct_args *a, const uint8_t *xc, int64_t S, \
                                               const __mmask16 k0[4], const __mmask16 k2[4],   \
                                               const int32_t *xs, int64_t p0, int64_t nv, int64_t ob0, \
                                               int64_t ob1, uint8_t *next, int64_t next_s) {   \
        const int64_t G = (a->C + 3) / 4, nob = ob1 - ob0;                                    \
        for (int64_t ob = ob0; ob < ob1; ++ob) {                                              \
            const int64_t o0 = ob * MR;                                                       \
            const int8_t *wb = a->wpk + ob * MR * ((a->C + 3) / 4 * 4) * (taps);            \
            TILE_MR(taps)                                                                     \
            if (next) {                                                                       \
                const int64_t g0 = (ob - ob0) * G / nob, g1 = (ob - ob0 + 1) * G / nob;       \
                const int64_t g2 = (ob - ob0 + 2) * G / nob;                                  \
                pack_groups(a, next_s, g0, g1, next, S);                                      \
                prefetch_groups(a, next_s, g1, g2 < G ? g2 : G, _MM_HINT_T0);                 \
                prefetch_groups(a, next_s + PB, g0, g1, _MM_HINT_T1);                         \
            }                                                                                 \
        }                                                                                     \
    }
TILES(tiles1, 1)
TILES(tiles9, 9)

/* Each position's channel sum for the n positions at xb (vpdpbusd against ones; padded
 * channels are 0). */
static void channel_sums(const uint8_t *xb, int64_t S, int64_t G, int64_t n, int32_t *chs) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t q = 0; q < n; q += 16) {
        __m512i sum = _mm512_setzero_si512();
        for (int64_t g = 0; g < G; ++g) sum = _mm512_dpbusd_epi32(sum, _mm512_loadu_si512(xb + g * S + 4 * q), ones);
        _mm512_storeu_si512(chs + q, sum);
    }
}

void rc_qconv_direct_band_avx512_vnni(const rc_direct_args *a, int64_t b0, int64_t b1, int64_t ob0, int64_t ob1,
                                      int pack, uint8_t *xb, int32_t *chs, int32_t *xsum) {
    const int64_t W = a->W, P = a->P, G = (a->C + 3) / 4;
    const int64_t halo = rc_direct_halo(W, a->taps), L = rc_direct_positions(b1 - b0, W, a->taps), S = 4 * L;
    const int64_t q0 = b0 * PB - halo; /* the pixel at buffer position 0 */
    const int64_t chunks = (b1 - b0) + 2 * halo / PB;
    /* 1x1 on a streamed input interleaves the band's first block here and each following
     * one during the tiles of the block before it (tiles1's `next`); otherwise the whole
     * band (3x3: with its halo) is interleaved here */
    const int lazy = pack && a->taps == 1 && a->stream;
    if (lazy) {
        pack_groups(a, q0, 0, G, xb, S);
        if (a->any_zw) channel_sums(xb, S, G, PB, chs);
    } else if (pack) {
        /* every position the band's taps read, the zero point off the image */
        const __m512i fl = _mm512_set1_epi8(a->flip ? (char)0x80 : 0);
        const __m512i zpad = _mm512_set1_epi8((char)(uint8_t)a->zxu);
        for (int64_t k = 0; a->nhwc && k < chunks; ++k) pack_nhwc(a, q0 + 64 * k, 0, G, xb + 256 * k, S);
        for (int64_t g = 0; !a->nhwc && g < G; ++g)
            for (int64_t k = 0; k < chunks; ++k) {
                const int64_t s = q0 + 64 * k;
                const int64_t lo = s < 0 ? -s : 0, hi = s + 64 > P ? P - s : 64;
                const __mmask64 in =
                    hi <= lo ? 0 : ((hi - lo >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (hi - lo)) - 1)) << lo);
                pack64(a->x, P, 4 * g, a->C, s, in, zpad, fl, xb + g * S + 256 * k);
            }
        if (a->any_zw) channel_sums(xb, S, G, 64 * chunks, chs);
    }
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t p0 = b * PB, np = P - p0 < PB ? P - p0 : PB, nv = (np + 15) / 16, pos = p0 - q0;
        const uint8_t *xc = xb + 4 * pos;
        const int32_t *xs = chs + pos;
        /* 3x3: lanes with a left (kw = 0) / right (kw = 2) neighbour in their row */
        __mmask16 k0[4] = {0, 0, 0, 0}, k2[4] = {0, 0, 0, 0};
        if (a->taps == 9) {
            int64_t col = p0 % W;
            for (int j = 0; j < 64; ++j, col = col + 1 == W ? 0 : col + 1) {
                if (col > 0) k0[j / 16] |= (__mmask16)(1u << (j % 16));
                if (col < W - 1) k2[j / 16] |= (__mmask16)(1u << (j % 16));
            }
        }
        if (a->any_zw && a->taps == 9) {
            /* each pixel's channel sum over the nine taps, C zxu where a tap reads padding */
            const __m512i czx = _mm512_set1_epi32((int32_t)((uint32_t)a->C * (uint32_t)a->zxu));
            for (int v = 0; v < 4; ++v) {
                __m512i sum = _mm512_setzero_si512();
                for (int kh = 0; kh < 3; ++kh) {
                    const int32_t *r = xs + 16 * v + (kh - 1) * W;
                    sum = _mm512_add_epi32(sum, _mm512_mask_loadu_epi32(czx, k0[v], r - 1));
                    sum = _mm512_add_epi32(sum, _mm512_loadu_si512(r));
                    sum = _mm512_add_epi32(sum, _mm512_mask_loadu_epi32(czx, k2[v], r + 1));
                }
                _mm512_storeu_si512(xsum + 16 * v, sum);
            }
            xs = xsum;
        }
        if (a->taps == 1) {
            uint8_t *next = lazy && b + 1 < b1 ? xb + 4 * (pos + PB) : NULL;
            tiles1(a, xc, S, k0, k2, xs, p0, nv, ob0, ob1, next, p0 + PB);
            if (next && a->any_zw) channel_sums(next, S, G, PB, chs + pos + PB);
        } else {
            tiles9(a, xc, S, k0, k2, xs, p0, nv, ob0, ob1, NULL, 0);
        }
        if (a->nhwc) stage_out(a, p0, np, ob0 * MR, ob1 * MR < a->OC ? ob1 * MR : a->OC);
    }
}
#endif
