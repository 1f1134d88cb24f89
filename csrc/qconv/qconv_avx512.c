/* AVX-512 depthwise convolution rows: 16 channels per vector, exact int32 products of
 * (x - zx) (|.| <= 255) and (w - zw) (|.| <= 255) summed over at most KH*KW taps (the
 * caller's K bound), then the shared 16-lane epilogue. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#include "../qgemm/qgemm_epi_avx512.h"
#include "qconv.h"

/* One channel plane: 16 output columns per vector; each tap is a broadcast weight times
 * 16 widened inputs.  Stride 1 along W reads contiguous inputs; other strides gather. */
void rc_dw_plane_avx512(const rc_dw_args *d, int64_t c) {
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
#endif
