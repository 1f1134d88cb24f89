/* AVX-512 VBMI + VNNI depthwise 3 x 3 kernel (stride 1, no dilation, any padding), straight
 * from the uint8 / int8 NCHW plane: no buffer, no int16 copy.
 *
 * Three taps of one kernel row are one vpdpbusd.  For 16 adjacent outputs ow0..ow0 + 15 and
 * input row r, one masked 32-byte load takes the 18 input bytes from column ow0 - pw (lanes
 * whose column is outside [0, W) keep the zero point), and one vpermb spreads them into 16
 * byte quads (x[j], x[j + 1], x[j + 2], x[j]) — dword i for output ow0 + i; vpdpbusd then
 * adds, per dword, the products with the broadcast weight quad (w[kh][0], w[kh][1],
 * w[kh][2], 0).  Padding rows use a vector of zero points.  So every tap reads the value
 * the reference's zero-padded image holds there.
 *
 * Zero points: vpdpbusd multiplies raw bytes (activations unsigned: uint8 as is, int8
 * flipped by x ^ 0x80 = x + 128 with zxu = zx + 128; weights the raw int8), so with the
 * nine taps t of a window,
 *     sum_t (x_t - zxu)(w_t - zw) = sum_t x_t w_t - zxu sum_t w_t - zw sum_t x_t + 9 zxu zw,
 * the per-channel constant  bias + zxu (9 zw - sum_t w_t)  starts each accumulator, and
 * only a channel with zw != 0 also sums its windows (one more vpdpbusd per row against
 * (1, 1, 1, 0)) for one vpmulld and subtraction.
 *
 * Exact: vpdpbusd (not vpdpbusds) adds its four 16-bit-exact products to the int32 lane
 * without saturation, i.e. modulo 2^32; so do vpaddd / vpsubd / vpmulld and the uint32
 * constant; the true result fits int32 (the K bound checked in Python), so the wrapped
 * arithmetic gives it exactly.  Then the shared epilogue: rc_requant16_apply and, for 64
 * requantized outputs, the exact saturating packs of rc_pack64 and one 64-byte store. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")
#include "../qgemm/qgemm_epi_avx512.h"
#include "qconv.h"

typedef struct {
    const uint8_t *plane;  /* this channel's [H, W] input  */
    uint8_t *out;          /* this channel's [OH, OW] output */
    int64_t H, W, OH, OW, ph, pw;
    __m512i vconst;        /* bias + zxu (9 zw - sum w), modulo 2^32 */
    __m512i wq[3];         /* per kernel row: (w0, w1, w2, 0) bytes, broadcast */
    __m512i zwv;           /* zw, broadcast */
    __m512i pad;           /* the zero point (unsigned scale) in every byte: a padding row's quads */
    __m256i vz;            /* the zero point as the input's byte: masked lanes of a load */
    __m512i idx;           /* vpermb: byte 4i + k <- i + k (k < 3), byte 4i + 3 <- i */
    rc_epilogue e;
    rc_requant16_params rq;
    int lean;              /* requantized output: rq and rc_pack64 */
} dwq_plane;

/* Lanes l < 18 whose column col + l lies in [0, W). */
static inline __mmask32 dwq_mask(int64_t col, int64_t W) {
    const int64_t lo = -col > 0 ? -col : 0, hi = W - col < 18 ? W - col : 18;
    if (hi <= lo) return 0;
    return (__mmask32)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

/* The 16 quads of input row `row` for outputs from column col + pw. */
static inline __m512i dwq_quads(const dwq_plane *p, const uint8_t *row, int64_t col, __mmask32 m, const int flip) {
    /* masked lanes are not read; the address is formed as an integer (it may precede the row) */
    const void *src = (const void *)((uintptr_t)row + (uintptr_t)col);
    __m256i b = _mm256_mask_loadu_epi8(p->vz, m, src);
    if (flip) b = _mm256_xor_si256(b, _mm256_set1_epi8((char)0x80));
    return _mm512_permutexvar_epi8(p->idx, _mm512_castsi256_si512(b));
}

/* The quads of input row r (a padding row: all zero points) for the strip's nv vectors. */
static inline __attribute__((always_inline)) void dwq_row(const dwq_plane *p, int64_t r, int64_t ow0,
                                                          const __mmask32 *m, __m512i *q, const int nv,
                                                          const int flip) {
    if (r < 0 || r >= p->H) {
        for (int v = 0; v < nv; ++v) q[v] = p->pad;
        return;
    }
    const uint8_t *row = p->plane + r * p->W;
    for (int v = 0; v < nv; ++v) q[v] = dwq_quads(p, row, ow0 + 16 * v - p->pw, m[v], flip);
}

/* Output columns [ow0, ow0 + 16 nv) of every output row.  Each input row's quads are made
 * once and kept for the three output rows that read them (a window of three rows in
 * registers).  `nv`, `flip` (int8 input) and `xs` (zw != 0: the window sums) are constants
 * after inlining. */
static inline __attribute__((always_inline)) void dwq_strip(const dwq_plane *pp, int64_t ow0, const int nv,
                                                            const int flip, const int xs) {
    /* a local copy: the uint8 output stores may alias anything the compiler cannot place,
     * and would otherwise force reloads of the constants */
    const dwq_plane p = *pp;
    const int64_t OW = p.OW;
    __mmask32 m[4];
    for (int v = 0; v < nv; ++v) m[v] = dwq_mask(ow0 + 16 * v - p.pw, p.W);
    const __m512i ones = _mm512_set1_epi32(0x00010101);
    const int64_t n = OW - ow0; /* valid outputs in this strip (may exceed 16 nv) */
    __m512i q0[4], q1[4], q2[4]; /* input rows oh - ph, oh - ph + 1, oh - ph + 2 */
    dwq_row(&p, -p.ph, ow0, m, q0, nv, flip);
    dwq_row(&p, 1 - p.ph, ow0, m, q1, nv, flip);
    for (int64_t oh = 0; oh < p.OH; ++oh) {
        dwq_row(&p, oh - p.ph + 2, ow0, m, q2, nv, flip);
        __m512i acc[4], s[4];
        for (int v = 0; v < nv; ++v) {
            acc[v] = _mm512_dpbusd_epi32(p.vconst, q0[v], p.wq[0]);
            acc[v] = _mm512_dpbusd_epi32(acc[v], q1[v], p.wq[1]);
            acc[v] = _mm512_dpbusd_epi32(acc[v], q2[v], p.wq[2]);
            if (xs) {
                s[v] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q0[v], ones);
                s[v] = _mm512_dpbusd_epi32(s[v], q1[v], ones);
                s[v] = _mm512_dpbusd_epi32(s[v], q2[v], ones);
                acc[v] = _mm512_sub_epi32(acc[v], _mm512_mullo_epi32(p.zwv, s[v]));
            }
            q0[v] = q1[v], q1[v] = q2[v];
        }
        if (p.lean) {
            __m512i q[4];
            for (int v = 0; v < 4; ++v) q[v] = v < nv ? rc_requant16_apply(&p.rq, acc[v]) : _mm512_setzero_si512();
            const __m512i b = rc_pack64(q[0], q[1], q[2], q[3], p.e.out_type);
            uint8_t *dst = p.out + oh * OW + ow0;
            if (n >= 64) _mm512_storeu_si512(dst, b);
            else _mm512_mask_storeu_epi8(dst, ((__mmask64)1 << n) - 1, b);
        } else {
            for (int v = 0; v < nv; ++v) rc_epi16(&p.e, acc[v], oh, ow0 + 16 * v, rc_mask16(n - 16 * v), p.out, OW);
        }
    }
}

static inline __attribute__((always_inline)) void dwq_run(const dwq_plane *p, const int flip, const int xs) {
    int64_t ow0 = 0;
    for (; ow0 + 64 <= p->OW; ow0 += 64) dwq_strip(p, ow0, 4, flip, xs);
    switch ((p->OW - ow0 + 15) / 16) {
    case 4: dwq_strip(p, ow0, 4, flip, xs); break;
    case 3: dwq_strip(p, ow0, 3, flip, xs); break;
    case 2: dwq_strip(p, ow0, 2, flip, xs); break;
    case 1: dwq_strip(p, ow0, 1, flip, xs); break;
    default: break;
    }
}

void rc_dw_plane_vbmi3x3(const rc_dw_args *d, int64_t c) {
    dwq_plane p;
    int32_t bias;
    p.e = rc_channel_epilogue(d->epi, c, &bias);
    p.lean = p.e.kind == RC_EPI_REQUANT_FLOAT || p.e.kind == RC_EPI_REQUANT_FIXED;
    if (p.lean) p.rq = rc_requant16_prepare(&p.e, 0, (__mmask16)0xFFFF);
    p.H = d->H, p.W = d->W, p.OH = d->OH, p.OW = d->OW, p.ph = d->ph, p.pw = d->pw;
    p.plane = d->src + c * d->H * d->W;
    p.out = d->out + c * d->OH * d->OW * d->out_bytes;
    const int flip = d->int8_in;
    const uint32_t zxu = (uint32_t)(flip ? d->zx + 128 : d->zx);
    const int32_t zw = d->zw[d->zw_per_channel ? c : 0];
    const int8_t *w = d->w + c * 9;
    uint32_t wsum = 0;
    for (int t = 0; t < 9; ++t) wsum += (uint32_t)(int32_t)w[t];
    for (int kh = 0; kh < 3; ++kh)
        p.wq[kh] = _mm512_set1_epi32((int32_t)((uint32_t)(uint8_t)w[3 * kh] | (uint32_t)(uint8_t)w[3 * kh + 1] << 8 |
                                               (uint32_t)(uint8_t)w[3 * kh + 2] << 16));
    p.vconst = _mm512_set1_epi32((int32_t)((uint32_t)bias + zxu * (9u * (uint32_t)zw - wsum)));
    p.zwv = _mm512_set1_epi32(zw);
    p.pad = _mm512_set1_epi8((char)(uint8_t)zxu);
    p.vz = _mm256_set1_epi8((char)(uint8_t)d->zx); /* uint8: zxu; int8: the byte that flips to zxu */
    uint8_t ix[64];
    for (int i = 0; i < 16; ++i) ix[4 * i] = ix[4 * i + 3] = (uint8_t)i, ix[4 * i + 1] = (uint8_t)(i + 1), ix[4 * i + 2] = (uint8_t)(i + 2);
    p.idx = _mm512_loadu_si512(ix);
    if (flip) {
        if (zw) dwq_run(&p, 1, 1);
        else dwq_run(&p, 1, 0);
    } else {
        if (zw) dwq_run(&p, 0, 1);
        else dwq_run(&p, 0, 0);
    }
}
#endif
