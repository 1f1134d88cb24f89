/* The AVX-512 depthwise kernel for stride 1 along W that reads the uint8 / int8 plane
 * itself, included (after its target pragma) by qconv_avx512.c (RC_DW_DOT = vpmaddwd +
 * vpaddd) and qconv_dw_avx512_vnni.c (RC_DW_DOT = vpdpwssd, the same sum in one
 * instruction: exact products, wrapping int32 accumulation).  The includer defines
 * RC_DW_DOT(acc, x, w) and RC_DW_RAW_FN (the function's name). */
#ifndef RC_DW_DOT
#error "define RC_DW_DOT and RC_DW_RAW_FN before including qconv_dw_raw_avx512.h"
#endif

/* Lanes l of the 32 columns j.. whose input column j + l - pw lies in [0, W). */
static inline __mmask32 dw_col_mask(int64_t j, int64_t pw, int64_t W) {
    const int64_t lo = pw - j > 0 ? pw - j : 0, hi = pw + W - j < 32 ? pw + W - j : 32;
    if (hi <= lo) return 0;
    return (__mmask32)(((1ull << hi) - 1u) & ~((1ull << lo) - 1u));
}

/* 32 values (x - zx) of input row a (0 when the row or the column is padding), as int16. */
static inline __m512i dw_row32(const uint8_t *plane, int64_t a, int64_t H, int64_t W, int64_t col, __mmask32 cm,
                               int int8_in, __m512i vzx) {
    if (a < 0 || a >= H || !cm) return _mm512_setzero_si512();
    /* masked lanes are not read; the address is formed as an integer (it may precede the row) */
    const void *p = (const void *)((uintptr_t)(plane + a * W) + (uintptr_t)col);
    const __m256i b = _mm256_maskz_loadu_epi8(cm, p);
    const __m512i v = int8_in ? _mm512_cvtepi8_epi16(b) : _mm512_cvtepu8_epi16(b);
    return _mm512_maskz_sub_epi16(cm, v, vzx);
}

/* Rows paired along kh: dword [r, col] of the buffer holds the int16 pair
 * ((x - zx)[r - ph][col - pw], (x - zx)[r - ph + dh][col - pw]), padding 0, so the taps
 * (kh, kw) and (kh + 1, kw) of 16 adjacent outputs are one plain 16-dword load at row
 * oh*sh + kh*dh, column ow + kw*dw, and one vpmaddwd against the broadcast weight pair
 * (w[kh][kw], w[kh+1][kw]) — no permutes.  A lone last kh pairs with weight 0.  Both
 * factors lie in [-255, 255], so each pair sum (<= 130050) is exact, as in dw_plane_pairs_k (qconv_avx512.c).
 * Building the buffer reads the uint8 / int8 plane directly (masked loads, zero- or
 * sign-extended), no int16 copy first.  Every field of d is read once into a local: the
 * uint8 output stores may alias anything, and would otherwise force reloads. */
static inline __attribute__((always_inline)) void dw_plane_raw_k(const rc_dw_args *d, int64_t c,
                                                                 const int64_t KH, const int64_t KW) {
    int32_t bias;
    const rc_epilogue e = rc_channel_epilogue(d->epi, c, &bias);
    const int64_t PH = d->PH, PW = d->PW, dh = d->dh, dw = d->dw, sh = d->sh, KP = (KH + 1) / 2;
    const int64_t H = d->H, W = d->W, ph = d->ph, pw = d->pw, OH = d->OH, OW = d->OW;
    const int int8_in = d->int8_in;
    int32_t *q = (int32_t *)(void *)d->xp; /* this thread's buffer, [PH, PW] */
    const uint8_t *plane = d->src + c * H * W;
    const int32_t *wz = d->wz + c * KH * KW;
    uint8_t *out = d->out + c * OH * OW * d->out_bytes;
    const __m512i vzx = _mm512_set1_epi16((int16_t)d->zx);
    /* word 2i <- a[i], word 2i+1 <- b[i]: columns 0..15 (lo) and 16..31 (hi) as pairs */
    int16_t il[32], ih[32];
    for (int i = 0; i < 16; ++i) {
        il[2 * i] = (int16_t)i, il[2 * i + 1] = (int16_t)(32 + i);
        ih[2 * i] = (int16_t)(16 + i), ih[2 * i + 1] = (int16_t)(48 + i);
    }
    const __m512i idx_lo = _mm512_loadu_si512(il), idx_hi = _mm512_loadu_si512(ih);
    for (int64_t r = 0; r < PH; ++r) {
        int32_t *qr = q + r * PW;
        for (int64_t j = 0; j < PW; j += 32) {
            const __mmask32 cm = dw_col_mask(j, pw, W);
            const __m512i a = dw_row32(plane, r - ph, H, W, j - pw, cm, int8_in, vzx);
            const __m512i b = dw_row32(plane, r - ph + dh, H, W, j - pw, cm, int8_in, vzx);
            _mm512_mask_storeu_epi32(qr + j, rc_mask16(PW - j), _mm512_permutex2var_epi16(a, idx_lo, b));
            if (PW - j > 16)
                _mm512_mask_storeu_epi32(qr + j + 16, rc_mask16(PW - j - 16), _mm512_permutex2var_epi16(a, idx_hi, b));
        }
    }
    int32_t wp[RC_DW_RAW_MAX_PAIRS];
    for (int64_t p = 0; p < KP; ++p)
        for (int64_t kw = 0; kw < KW; ++kw) {
            const int32_t w0 = wz[2 * p * KW + kw];
            const int32_t w1 = 2 * p + 1 < KH ? wz[(2 * p + 1) * KW + kw] : 0;
            wp[p * KW + kw] = (int32_t)(((uint32_t)(uint16_t)(int16_t)w1 << 16) | (uint16_t)(int16_t)w0);
        }
    const __m512i vbias = _mm512_set1_epi32(bias);
    /* the requantizing kinds (int8 / uint8 out): parameters as vectors once per plane */
    const int lean = e.kind == RC_EPI_REQUANT_FLOAT || e.kind == RC_EPI_REQUANT_FIXED;
    rc_requant16_params rq;
    if (lean) rq = rc_requant16_prepare(&e, 0, (__mmask16)0xFFFF);
    for (int64_t oh = 0; oh < OH; ++oh) {
        const int32_t *row = q + oh * sh * PW;
        int64_t ow = 0;
        /* two 16-column vectors per pass: independent chains */
        for (; ow + 32 <= OW; ow += 32) {
            __m512i acc0 = vbias, acc1 = vbias;
            for (int64_t p = 0; p < KP; ++p)
                for (int64_t kw = 0; kw < KW; ++kw) {
                    const int32_t *s = row + 2 * p * dh * PW + ow + kw * dw;
                    const __m512i wv = _mm512_set1_epi32(wp[p * KW + kw]);
                    acc0 = RC_DW_DOT(acc0, _mm512_loadu_si512(s), wv);
                    acc1 = RC_DW_DOT(acc1, _mm512_loadu_si512(s + 16), wv);
                }
            if (lean) {
                _mm512_mask_cvtepi32_storeu_epi8(out + oh * OW + ow, (__mmask16)0xFFFF, rc_requant16_apply(&rq, acc0));
                _mm512_mask_cvtepi32_storeu_epi8(out + oh * OW + ow + 16, (__mmask16)0xFFFF,
                                                 rc_requant16_apply(&rq, acc1));
            } else {
                rc_epi16(&e, acc0, oh, ow, (__mmask16)0xFFFF, out, OW);
                rc_epi16(&e, acc1, oh, ow + 16, (__mmask16)0xFFFF, out, OW);
            }
        }
        for (; ow < OW; ow += 16) {
            const __mmask16 m = rc_mask16(OW - ow);
            __m512i acc = vbias;
            for (int64_t p = 0; p < KP; ++p)
                for (int64_t kw = 0; kw < KW; ++kw) {
                    const int32_t *s = row + 2 * p * dh * PW + ow + kw * dw;
                    acc = RC_DW_DOT(acc, _mm512_maskz_loadu_epi32(m, s), _mm512_set1_epi32(wp[p * KW + kw]));
                }
            if (lean) _mm512_mask_cvtepi32_storeu_epi8(out + oh * OW + ow, m, rc_requant16_apply(&rq, acc));
            else rc_epi16(&e, acc, oh, ow, m, out, OW);
        }
    }
}

void RC_DW_RAW_FN(const rc_dw_args *d, int64_t c) {
    if (d->KH == 3 && d->KW == 3) dw_plane_raw_k(d, c, 3, 3);
    else dw_plane_raw_k(d, c, d->KH, d->KW);
}
