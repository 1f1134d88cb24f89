/* Internal interface of the quantized convolution drivers and their per-ISA parts. */
#ifndef RC_QCONV_H
#define RC_QCONV_H
#include "../qgemm/qgemm.h"

#define RC_QCONV_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512) | \
                           (1 << RC_ISA_AVX512_VNNI))

/* Depthwise, NCHW throughout (no transposes): per channel, the plane of (x - zx) is
 * copied as int16 into a zero-padded [PH, PW] buffer (padding contributes exactly 0), and
 * each output row is accumulated tap by tap along W. */
typedef struct {
    const int16_t *xp;      /* padded planes, [C, PH, PW]                 */
    const int32_t *wz;      /* (w - zw[c]) as int32, [C, KH*KW]            */
    const rc_epilogue *epi;
    uint8_t *out;           /* NCHW output of this image                   */
    int out_bytes;
    int64_t C, PH, PW, KH, KW, sh, sw, dh, dw, OH, OW;
} rc_dw_args;

typedef void (*rc_dw_plane_fn)(const rc_dw_args *d, int64_t c);
void rc_dw_plane_portable(const rc_dw_args *d, int64_t c);
#if RC_X86
void rc_dw_plane_avx512(const rc_dw_args *d, int64_t c);
#endif

/* The epilogue of channel c alone (its scale / multiplier / shift made per tensor; its
 * bias returned separately for the caller to add). */
static inline rc_epilogue rc_channel_epilogue(const rc_epilogue *e, int64_t c, int32_t *bias) {
    rc_epilogue k = *e;
    *bias = e->bias ? e->bias[c] : 0;
    k.bias = 0;
    if (e->per_channel) {
        if (k.scale) k.scale += c;
        if (k.multiplier) k.multiplier += c;
        if (k.shift) k.shift += c;
        k.per_channel = 0;
    }
    return k;
}
#endif
