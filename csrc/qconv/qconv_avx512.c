/* AVX-512 depthwise convolution rows: 16 channels per vector, exact int32 products of
 * (x - zx) (|.| <= 255) and (w - zw) (|.| <= 255) summed over at most KH*KW taps (the
 * caller's K bound), then the shared 16-lane epilogue. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#include "../qgemm/qgemm_epi_avx512.h"
#include "qconv.h"

#define RC_DW_MAX_PAIRS 64

/* Stride 1 along W with the dilated row window inside one 32-word load (dw <= 16): taps
 * are paired along kw for vpmaddwd.  For lane j and the pair (kw, kw + 1) one permute of
 * the 32 words loaded at row + kw*dw places (x[j + kw*dw], x[j + (kw+1)*dw]) in dword j,
 * and vpmaddwd against the broadcast pair (w[kw], w[kw+1]) adds their two products.  Both
 * factors are in [-255, 255] (int16), so each product is at most 65025 and the pair sum at
 * most 130050: vpmaddwd is exact (its only saturating case, two -32768 * -32768 products,
 * cannot occur).  An odd last tap pairs with weight 0.  The masked load reads only words
 * j + kw*dw .. j + (kw+1)*dw of valid lanes, all inside this padded row. */
static inline __attribute__((always_inline)) void dw_plane_pairs_k(const rc_dw_args *d, int64_t c,
                                                                   const int64_t KH, const int64_t KW) {
    int32_t bias;
    const rc_epilogue e = rc_channel_epilogue(d->epi, c, &bias);
    const int16_t *xp = d->xp + c * d->PH * d->PW;
    const int32_t *wz = d->wz + c * KH * KW;
    uint8_t *out = d->out + c * d->OH * d->OW * d->out_bytes;
    const int64_t KP = (KW + 1) / 2, dw = d->dw;
    int32_t wp[RC_DW_MAX_PAIRS];
    for (int64_t kh = 0; kh < KH; ++kh)
        for (int64_t q = 0; q < KP; ++q) {
            const int32_t w0 = wz[kh * KW + 2 * q];
            const int32_t w1 = 2 * q + 1 < KW ? wz[kh * KW + 2 * q + 1] : 0;
            wp[kh * KP + q] = (int32_t)(((uint32_t)(uint16_t)(int16_t)w1 << 16) | (uint16_t)(int16_t)w0);
        }
    /* word 2j <- j, word 2j+1 <- j + dw (or j again for a lone last tap, times weight 0) */
    int16_t ip[32], il[32];
    for (int j = 0; j < 16; ++j) {
        ip[2 * j] = il[2 * j] = il[2 * j + 1] = (int16_t)j;
        ip[2 * j + 1] = (int16_t)(j + dw);
    }
    const __m512i idx_pair = _mm512_loadu_si512(ip), idx_lone = _mm512_loadu_si512(il);
    const __m512i vbias = _mm512_set1_epi32(bias);
    /* two output rows per pass (independent chains for the vector units); a lone last
     * row recomputes the first one's inputs and is not stored */
    for (int64_t oh = 0; oh < d->OH; oh += 2) {
        const int two = oh + 1 < d->OH;
        const int64_t oh1 = two ? oh + 1 : oh;
        for (int64_t ow = 0; ow < d->OW; ow += 16) {
            const int64_t mv = d->OW - ow < 16 ? d->OW - ow : 16;
            const __mmask16 m = rc_mask16(mv);
            const __mmask32 lm_pair = (__mmask32)((1ull << (mv + dw)) - 1u);
            const __mmask32 lm_lone = (__mmask32)((1ull << mv) - 1u);
            __m512i acc0 = vbias, acc1 = vbias;
            for (int64_t kh = 0; kh < KH; ++kh) {
                const int16_t *row0 = xp + (oh * d->sh + kh * d->dh) * d->PW + ow;
                const int16_t *row1 = xp + (oh1 * d->sh + kh * d->dh) * d->PW + ow;
                for (int64_t q = 0; q < KP; ++q) {
                    const int lone = 2 * q + 1 >= KW;
                    const __mmask32 lm = lone ? lm_lone : lm_pair;
                    const __m512i idx = lone ? idx_lone : idx_pair;
                    const __m512i wv = _mm512_set1_epi32(wp[kh * KP + q]);
                    const __m512i x0 = _mm512_permutexvar_epi16(idx, _mm512_maskz_loadu_epi16(lm, row0 + 2 * q * dw));
                    const __m512i x1 = _mm512_permutexvar_epi16(idx, _mm512_maskz_loadu_epi16(lm, row1 + 2 * q * dw));
                    acc0 = _mm512_add_epi32(acc0, _mm512_madd_epi16(x0, wv));
                    acc1 = _mm512_add_epi32(acc1, _mm512_madd_epi16(x1, wv));
                }
            }
            rc_epi16(&e, acc0, oh, ow, m, out, d->OW);
            if (two) rc_epi16(&e, acc1, oh1, ow, m, out, d->OW);
        }
    }
}

/* 3x3 (the common case) with the loop bounds known, so the tap loops unroll and the
 * weight pairs stay in registers; any other kernel size runs the same code generically. */
static void dw_plane_pairs(const rc_dw_args *d, int64_t c) {
    if (d->KH == 3 && d->KW == 3) dw_plane_pairs_k(d, c, 3, 3);
    else dw_plane_pairs_k(d, c, d->KH, d->KW);
}

/* One channel plane: 16 output columns per vector; each tap is a broadcast weight times
 * 16 widened inputs.  Stride 1 along W reads contiguous inputs; other strides gather. */
void rc_dw_plane_avx512(const rc_dw_args *d, int64_t c) {
    if (d->sw == 1 && d->dw <= 16 && d->KH * ((d->KW + 1) / 2) <= RC_DW_MAX_PAIRS) {
        dw_plane_pairs(d, c);
        return;
    }
    int32_t bias;
    const rc_epilogue e = rc_channel_epilogue(d->epi, c, &bias);
    const int16_t *xp = d->xp + c * d->PH * d->PW;
    const int32_t *wz = d->wz + c * d->KH * d->KW;
    uint8_t *out = d->out + c * d->OH * d->OW * d->out_bytes;
    const __m512i vbias = _mm512_set1_epi32(bias);
    const __m512i lanes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32((int32_t)d->sw));
    for (int64_t oh = 0; oh < d->OH; ++oh)
        for (int64_t ow = 0; ow < d->OW; ow += 16) {
            const __mmask16 m = rc_mask16(d->OW - ow);
            __m512i acc = vbias;
            for (int64_t kh = 0; kh < d->KH; ++kh) {
                const int16_t *row = xp + (oh * d->sh + kh * d->dh) * d->PW + ow * d->sw;
                for (int64_t kw = 0; kw < d->KW; ++kw) {
                    __m512i xv;
                    if (d->sw == 1) {
                        xv = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, row + kw * d->dw));
                    } else {
                        /* 16-bit gather: 32-bit gather of the containing words, sign-extend the low half */
                        const __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, lanes,
                                                                      (const int *)(const void *)(row + kw * d->dw), 2);
                        xv = _mm512_srai_epi32(_mm512_slli_epi32(g, 16), 16);
                    }
                    acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(xv, _mm512_set1_epi32(wz[kh * d->KW + kw])));
                }
            }
            rc_epi16(&e, acc, oh, ow, m, out, d->OW);
        }
}
/* ---- stride 1 along W, straight from the uint8 / int8 plane (qconv_dw_raw_avx512.h) ---- */

#define RC_DW_DOT(acc, x, w) _mm512_add_epi32((acc), _mm512_madd_epi16((x), (w)))
#define RC_DW_RAW_FN rc_dw_plane_raw_avx512
#include "qconv_dw_raw_avx512.h"
#endif
