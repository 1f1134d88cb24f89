/* Block im2col for rc_qconv2d: a byte permutation (and the exact xor flip), so one portable
 * version serves every ISA variant; the GEMM tiles that follow are the cost. */
#include <stdint.h>
#include <string.h>

#include "qconv.h"

/* Input row ih, columns [iw0, iw0 + span), as int8 [span, C] with each pixel's channel sum;
 * columns off the image (and a row off it) hold the zero point. */
static void window_row(const rc_patch_src *s, int64_t ih, int64_t iw0, int64_t span, int8_t *row, int32_t *sums) {
    const int64_t C = s->C;
    const int32_t pad_sum = (int32_t)C * s->pad;
    int64_t lo = iw0 < 0 ? 0 : iw0, hi = iw0 + span < s->W ? iw0 + span : s->W;
    if (ih < 0 || ih >= s->H || lo >= hi) lo = hi = iw0; /* all padding */
    if (lo > iw0) memset(row, (uint8_t)s->pad, (size_t)((lo - iw0) * C));
    if (iw0 + span > hi) memset(row + (hi - iw0) * C, (uint8_t)s->pad, (size_t)((iw0 + span - hi) * C));
    for (int64_t j = 0; j < span; ++j) sums[j] = pad_sum;
    if (lo >= hi) return;
    int8_t *dst = row + (lo - iw0) * C;
    if (s->nhwc) {
        const uint8_t *src = s->img + (ih * s->W + lo) * C;
        for (int64_t i = 0; i < (hi - lo) * C; ++i) dst[i] = (int8_t)(src[i] ^ s->flip);
    } else {
        rc_transpose_block(s->img + ih * s->W + lo, s->H * s->W, C, hi - lo, (uint8_t *)dst, C, s->flip);
    }
    for (int64_t j = lo - iw0; j < hi - iw0; ++j) {
        const int8_t *px = row + j * C;
        int32_t t = 0;
        for (int64_t c = 0; c < C; ++c) t += px[c];
        sums[j] = t;
    }
}

/* Points w->slot[kh] at a slot holding input row ih0 + kh*dh for every kh, laying out the
 * rows no slot holds in slots whose rows this output row does not need. */
static void window_rows(const rc_patch_src *s, rc_patch_window *w, int64_t ih0, int64_t iw0, int64_t span) {
    const int64_t KH = s->KH, C = s->C;
    if (w->iw0 != iw0 || w->span != span) {
        for (int64_t i = 0; i < KH; ++i) w->tag[i] = INT64_MIN;
        w->iw0 = iw0;
        w->span = span;
    }
    for (int64_t i = 0; i < KH; ++i) {
        if (w->tag[i] == INT64_MIN) continue;
        const int64_t d = w->tag[i] - ih0;
        if (!(d >= 0 && d % s->dh == 0 && d / s->dh < KH)) w->tag[i] = INT64_MIN;
    }
    int64_t free_at = 0;
    for (int64_t kh = 0; kh < KH; ++kh) {
        const int64_t ih = ih0 + kh * s->dh;
        int64_t i = 0;
        while (i < KH && w->tag[i] != ih) ++i;
        if (i == KH) {
            while (w->tag[free_at] != INT64_MIN) ++free_at; /* the rows needed are KH, the slots too */
            i = free_at;
            window_row(s, ih, iw0, span, w->rows + i * span * C, w->sums + i * span);
            w->tag[i] = ih;
        }
        w->slot[kh] = i;
    }
}

void rc_qconv_pack_block(const rc_patch_src *s, rc_patch_window *w, int64_t p0, int64_t p1, int8_t *ap,
                         int32_t *ra) {
    const int64_t C = s->C, K = s->KH * s->KW * C;
    const int full = s->OW <= RC_QCONV_BLOCK_ROWS;
    for (int64_t p = p0; p < p1;) {
        /* the block's pixels on output row oh: [ow0, ow0 + len); the window holds output
         * columns [owb, ...): all of the row, or (wide rows) just these */
        const int64_t oh = p / s->OW, ow0 = p % s->OW;
        const int64_t len = s->OW - ow0 < p1 - p ? s->OW - ow0 : p1 - p;
        const int64_t owb = full ? 0 : ow0;
        const int64_t span = ((full ? s->OW : len) - 1) * s->sw + (s->KW - 1) * s->dw + 1;
        window_rows(s, w, oh * s->sh - s->ph, owb * s->sw - s->pw, span);
        for (int64_t j = 0; j < len; ++j) {
            int8_t *dst = ap + (p - p0 + j) * s->K4;
            int32_t t = 0;
            for (int64_t kh = 0; kh < s->KH; ++kh) {
                const int8_t *row = w->rows + w->slot[kh] * span * C;
                const int32_t *sums = w->sums + w->slot[kh] * span;
                for (int64_t kw = 0; kw < s->KW; ++kw, dst += C) {
                    const int64_t at = (ow0 - owb + j) * s->sw + kw * s->dw;
                    memcpy(dst, row + at * C, (size_t)C);
                    t += sums[at];
                }
            }
            memset(dst, 0, (size_t)(s->K4 - K));
            ra[p - p0 + j] = t;
        }
        p += len;
    }
}
