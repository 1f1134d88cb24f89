/* im2col for quantized convolution: a byte copy, so one portable version serves every
 * ISA (the compiler vectorises the contiguous runs; the GEMM that follows is the cost). */
#include <string.h>

#include "../rc_common.h"

int rc_im2col_u8(const uint8_t *x, long long C, long long H, long long W, long long KH, long long KW,
                 long long sh, long long sw, long long ph, long long pw, long long dh, long long dw,
                 uint8_t pad_value, uint8_t *out, int threads) {
    if (C < 0 || H < 0 || W < 0 || KH < 1 || KW < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || dh < 1 || dw < 1)
        return RC_ERR_ARG;
    const int64_t OH = (H + 2 * ph - dh * (KH - 1) - 1) / sh + 1;
    const int64_t OW = (W + 2 * pw - dw * (KW - 1) - 1) / sw + 1;
    if (OH <= 0 || OW <= 0) return RC_ERR_ARG;
    if (C * H * W > 0 && (!x || !out)) return RC_ERR_ARG;
    const int64_t K = C * KH * KW;
    (void)threads;
#ifdef _OPENMP
    const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && OH * OW * K >= RC_MIN_PARALLEL_WORK)
#endif
    for (int64_t oh = 0; oh < OH; ++oh) {
        for (int64_t ow = 0; ow < OW; ++ow) {
            uint8_t *row = out + (oh * OW + ow) * K;
            for (int64_t c = 0; c < C; ++c) {
                const uint8_t *xc = x + c * H * W;
                for (int64_t kh = 0; kh < KH; ++kh) {
                    const int64_t ih = oh * sh - ph + kh * dh;
                    uint8_t *dst = row + (c * KH + kh) * KW;
                    if (ih < 0 || ih >= H) {
                        memset(dst, pad_value, (size_t)KW);
                        continue;
                    }
                    for (int64_t kw = 0; kw < KW; ++kw) {
                        const int64_t iw = ow * sw - pw + kw * dw;
                        dst[kw] = (iw < 0 || iw >= W) ? pad_value : xc[ih * W + iw];
                    }
                }
            }
        }
    }
    return RC_OK;
}
