/* AVX-512 (F, DQ) transformer ops: 16 lanes, masked tails (every lane runs the same
 * instruction sequence, so a row's tail is computed exactly like its body).  The operation
 * sequence is the portable one of nnops.h with a*b + c fused (vfmadd: one rounding instead
 * of two), x^2 split exactly by vfmsub instead of Dekker's product, and 2^k applied by
 * vscalefps. */
#include "nnops.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#include <immintrin.h>

#include "nnops_avx512.h"

#define V(c) _mm512_set1_ps(c)

static inline __mmask16 tail_mask(int64_t left) {
    if (left <= 0) return 0;
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

static inline __m512 gelu16(__m512 x) {
    const __m512 a = _mm512_mul_ps(_mm512_abs_ps(x), V(RC_RSQRT2));
    const __m512 t = _mm512_div_ps(V(1.0f), _mm512_fmadd_ps(V(RC_AS_P), a, V(1.0f)));
    __m512 p = V(RC_AS_A5);
    p = _mm512_fmadd_ps(p, t, V(RC_AS_A4));
    p = _mm512_fmadd_ps(p, t, V(RC_AS_A3));
    p = _mm512_fmadd_ps(p, t, V(RC_AS_A2));
    p = _mm512_fmadd_ps(p, t, V(RC_AS_A1));
    p = _mm512_mul_ps(p, t);
    const __m512 hi = _mm512_mul_ps(x, x);
    const __m512 lo = _mm512_fmsub_ps(x, x, hi); /* x*x - hi, exact */
    const __m512 e = rc_exp16(_mm512_mul_ps(hi, V(-0.5f)), _mm512_mul_ps(lo, V(-0.5f)));
    const __m512 q = _mm512_mul_ps(p, e);
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 w = _mm512_mask_mov_ps(_mm512_sub_ps(V(2.0f), q), neg, q);
    return _mm512_mul_ps(_mm512_mul_ps(V(0.5f), x), w);
}

void rc_gelu_run_avx512(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) { /* two independent vectors per step */
        const __m512 a = gelu16(_mm512_loadu_ps(x + i)), b = gelu16(_mm512_loadu_ps(x + i + 16));
        _mm512_storeu_ps(y + i, a);
        _mm512_storeu_ps(y + i + 16, b);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* z = x + mask for lanes m of the 16 starting at i (masked-off lanes are 0). */
static inline __m512 load_z(const float *x, const float *mask, int64_t i, __mmask16 m) {
    const __m512 z = _mm512_maskz_loadu_ps(m, x + i);
    return mask ? _mm512_add_ps(z, _mm512_maskz_loadu_ps(m, mask + i)) : z;
}

/* Rows of up to 64 elements (BERT's sequence lengths) stay in four registers from the
 * exponentials to the scaling: no store and masked reload in between, which would stall
 * on store-to-load forwarding; z is recomputed from x and mask instead of reloaded. */
#define SM_SHORT 64

void rc_softmax_row_avx512(const float *x, const float *mask, float *y, int64_t n) {
    __m512 vmax = V(-INFINITY);
    __mmask16 nan = 0;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 z = load_z(x, mask, i, m);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, z);
        nan |= _mm512_mask_cmp_ps_mask(m, z, z, _CMP_UNORD_Q);
    }
    const float mx = _mm512_reduce_max_ps(vmax);
    if (nan || mx == INFINITY || mx == -INFINITY) {
        const __m512 fill = V(mx == -INFINITY && !nan ? 0.0f : NAN);
        for (int64_t i = 0; i < n; i += 16) _mm512_mask_storeu_ps(y + i, tail_mask(n - i), fill);
        return;
    }
    const __m512 vm = V(mx), zero = _mm512_setzero_ps();
    if (n <= SM_SHORT) {
        const __mmask16 m0 = tail_mask(n), m1 = tail_mask(n - 16), m2 = tail_mask(n - 32),
                        m3 = tail_mask(n - 48);
        /* lanes past n are masked off: exp of (0 - max) there is replaced by 0 */
        const __m512 e0 = _mm512_maskz_mov_ps(m0, rc_exp16(_mm512_sub_ps(load_z(x, mask, 0, m0), vm), zero));
        const __m512 e1 = n > 16 ? _mm512_maskz_mov_ps(m1, rc_exp16(_mm512_sub_ps(load_z(x, mask, 16, m1), vm), zero)) : zero;
        const __m512 e2 = n > 32 ? _mm512_maskz_mov_ps(m2, rc_exp16(_mm512_sub_ps(load_z(x, mask, 32, m2), vm), zero)) : zero;
        const __m512 e3 = n > 48 ? _mm512_maskz_mov_ps(m3, rc_exp16(_mm512_sub_ps(load_z(x, mask, 48, m3), vm), zero)) : zero;
        const float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(e0, e1), _mm512_add_ps(e2, e3)));
        const __m512 inv = V(1.0f / sum);
        _mm512_mask_storeu_ps(y, m0, _mm512_mul_ps(e0, inv));
        if (n > 16) _mm512_mask_storeu_ps(y + 16, m1, _mm512_mul_ps(e1, inv));
        if (n > 32) _mm512_mask_storeu_ps(y + 32, m2, _mm512_mul_ps(e2, inv));
        if (n > 48) _mm512_mask_storeu_ps(y + 48, m3, _mm512_mul_ps(e3, inv));
        return;
    }
    __m512 vsum = zero;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 e = rc_exp16(_mm512_sub_ps(load_z(x, mask, i, m), vm), zero);
        _mm512_mask_storeu_ps(y + i, m, e);
        vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
    }
    const __m512 inv = V(1.0f / _mm512_reduce_add_ps(vsum));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), inv));
    }
}

void rc_layer_norm_row_avx512(const float *x, const float *res, const float *w, const float *b,
                              double eps, float *y, int64_t h) {
    /* s = x + res is re-formed in every pass (bit-identical) rather than stored and
     * reloaded, which would stall on store-to-load forwarding of masked stores. */
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t i = 0; i < h; i += 16) {
        const __m512 v = load_z(x, res, i, tail_mask(h - i));
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v)); /* tail lanes are 0 */
    }
    const double mean = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) / (double)h;
    const __m512d vmean = _mm512_set1_pd(mean);
    __m512d q0 = _mm512_setzero_pd(), q1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < h; i += 16) {
        const __mmask16 m = tail_mask(h - i);
        const __m512 v = load_z(x, res, i, m);
        const __m512d d0 = _mm512_maskz_sub_pd((__mmask8)m, _mm512_cvtps_pd(_mm512_castps512_ps256(v)), vmean);
        const __m512d d1 = _mm512_maskz_sub_pd((__mmask8)(m >> 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), vmean);
        q0 = _mm512_fmadd_pd(d0, d0, q0);
        q1 = _mm512_fmadd_pd(d1, d1, q1);
    }
    const double inv = 1.0 / sqrt(_mm512_reduce_add_pd(_mm512_add_pd(q0, q1)) / (double)h + eps);
    const float maxabs = _mm512_reduce_max_ps(vmax);
    if (!(maxabs <= RC_LN_MAX_ABS && inv >= RC_LN_INV_MIN && inv <= RC_LN_INV_MAX)) {
        if (res) /* the double path reads s from y */
            for (int64_t i = 0; i < h; i += 16) {
                const __mmask16 m = tail_mask(h - i);
                _mm512_mask_storeu_ps(y + i, m, load_z(x, res, i, m));
            }
        rc_layer_norm_row_double(res ? y : x, w, b, mean, inv, y, h);
        return;
    }
    const float mh = (float)mean, ml = (float)(mean - (double)mh);
    const __m512 vmh = V(mh), vml = V(ml), vinv = V((float)inv);
    for (int64_t i = 0; i < h; i += 16) {
        const __mmask16 m = tail_mask(h - i);
        const __m512 d = _mm512_sub_ps(_mm512_sub_ps(load_z(x, res, i, m), vmh), vml);
        const __m512 out = _mm512_fmadd_ps(_mm512_mul_ps(d, vinv), _mm512_maskz_loadu_ps(m, w + i),
                                           _mm512_maskz_loadu_ps(m, b + i));
        _mm512_mask_storeu_ps(y + i, m, out);
    }
}
#endif
