/* The AVX-512 exp of the transformer ops, shared by every AVX-512 kernel that needs it
 * (csrc/nnops/nnops_avx512.c, csrc/attention/attention_avx512.c): include it after
 * `#pragma GCC target("avx512f,...")` and <immintrin.h>.  The operation sequence is
 * rc_exp_core's (nnops.h) with a*b + c fused and 2^k applied by vscalefps; its error bound
 * is refcompress.kernels.nnops.EXP_REL_ERROR. */
#ifndef RC_NNOPS_AVX512_H
#define RC_NNOPS_AVX512_H

#include "nnops.h"

/* exp(d + dlo), d <= 0: 0 below RC_EXP_MIN (and for -inf), NaN for NaN. */
static inline __m512 rc_exp16(__m512 d, __m512 dlo) {
    const __mmask16 flush = _mm512_cmp_ps_mask(d, _mm512_set1_ps(RC_EXP_MIN), _CMP_LT_OQ);
    const __m512 kf = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(RC_LOG2E)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(RC_EXP_C1), d);
    r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(RC_EXP_C2), r);
    r = _mm512_add_ps(r, dlo);
    __m512 p = _mm512_set1_ps(RC_EXP_P7);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(RC_EXP_P6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(RC_EXP_P5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(RC_EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(RC_EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(RC_EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_mask_mov_ps(_mm512_scalef_ps(p, kf), flush, _mm512_setzero_ps());
}

#endif
