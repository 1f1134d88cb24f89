/* AVX2 + FMA transformer ops: 8 lanes, tails by vmaskmov (every lane runs the same
 * instruction sequence).  The operation sequence is the portable one of nnops.h with
 * a*b + c fused (one rounding instead of two), x^2 split exactly by vfmsub, and 2^k built
 * in the exponent bits (k in [-126, 0] wherever the result is kept). */
#include "nnops.h"
#if RC_X86
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#define V(c) _mm256_set1_ps(c)

static inline __m256i tail_mask(int64_t left) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int l = left >= 8 ? 8 : (int)left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(l), idx);
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline double hsum_pd(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
}

/* exp(d + dlo), d <= 0: 0 below RC_EXP_MIN (and for -inf), NaN for NaN. */
static inline __m256 exp8(__m256 d, __m256 dlo) {
    const __m256 flush = _mm256_cmp_ps(d, V(RC_EXP_MIN), _CMP_LT_OQ);
    const __m256 kf = _mm256_round_ps(_mm256_mul_ps(d, V(RC_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(kf, V(RC_EXP_C1), d);
    r = _mm256_fnmadd_ps(kf, V(RC_EXP_C2), r);
    r = _mm256_add_ps(r, dlo);
    __m256 p = V(RC_EXP_P7);
    p = _mm256_fmadd_ps(p, r, V(RC_EXP_P6));
    p = _mm256_fmadd_ps(p, r, V(RC_EXP_P5));
    p = _mm256_fmadd_ps(p, r, V(RC_EXP_P4));
    p = _mm256_fmadd_ps(p, r, V(RC_EXP_P3));
    p = _mm256_fmadd_ps(p, r, V(RC_EXP_P2));
    p = _mm256_fmadd_ps(p, r, V(1.0f));
    p = _mm256_fmadd_ps(p, r, V(1.0f));
    /* 2^k from its exponent bits; lanes outside [-126, 0] are flushed or NaN (p is NaN). */
    const __m256i k = _mm256_cvtps_epi32(kf);
    const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
    return _mm256_andnot_ps(flush, _mm256_mul_ps(p, scale));
}

static inline __m256 gelu8(__m256 x) {
    const __m256 sign = V(-0.0f);
    const __m256 a = _mm256_mul_ps(_mm256_andnot_ps(sign, x), V(RC_RSQRT2));
    const __m256 t = _mm256_div_ps(V(1.0f), _mm256_fmadd_ps(V(RC_AS_P), a, V(1.0f)));
    __m256 p = V(RC_AS_A5);
    p = _mm256_fmadd_ps(p, t, V(RC_AS_A4));
    p = _mm256_fmadd_ps(p, t, V(RC_AS_A3));
    p = _mm256_fmadd_ps(p, t, V(RC_AS_A2));
    p = _mm256_fmadd_ps(p, t, V(RC_AS_A1));
    p = _mm256_mul_ps(p, t);
    const __m256 hi = _mm256_mul_ps(x, x);
    const __m256 lo = _mm256_fmsub_ps(x, x, hi);
    const __m256 e = exp8(_mm256_mul_ps(hi, V(-0.5f)), _mm256_mul_ps(lo, V(-0.5f)));
    const __m256 q = _mm256_mul_ps(p, e);
    const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 w = _mm256_blendv_ps(_mm256_sub_ps(V(2.0f), q), q, neg);
    return _mm256_mul_ps(_mm256_mul_ps(V(0.5f), x), w);
}

void rc_gelu_run_avx2(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 a = gelu8(_mm256_loadu_ps(x + i)), b = gelu8(_mm256_loadu_ps(x + i + 8));
        _mm256_storeu_ps(y + i, a);
        _mm256_storeu_ps(y + i + 8, b);
    }
    for (; i < n; i += 8) {
        const __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, m, gelu8(_mm256_maskload_ps(x + i, m)));
    }
}

/* Loads and stores of the 8 lanes at i of a row of n: plain for full vectors, vmaskmov
 * (masked-off lanes read as 0) only for the tail -- vmaskmov is slow, and a masked store
 * does not forward to a later load. */
static inline __m256 ld(const float *p, int64_t i, int64_t n) {
    return i + 8 <= n ? _mm256_loadu_ps(p + i) : _mm256_maskload_ps(p + i, tail_mask(n - i));
}

static inline void st(float *p, int64_t i, int64_t n, __m256 v) {
    if (i + 8 <= n)
        _mm256_storeu_ps(p + i, v);
    else
        _mm256_maskstore_ps(p + i, tail_mask(n - i), v);
}

/* z = x + mask (or x) at lanes i..i+7 of a row of n; lanes past n are 0. */
static inline __m256 ld_z(const float *x, const float *mask, int64_t i, int64_t n) {
    const __m256 z = ld(x, i, n);
    return mask ? _mm256_add_ps(z, ld(mask, i, n)) : z;
}

void rc_softmax_row_avx2(const float *x, const float *mask, float *y, int64_t n) {
    __m256 vmax = V(-INFINITY), nan = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 mf = _mm256_castsi256_ps(tail_mask(n - i));
        const __m256 z = ld_z(x, mask, i, n);
        vmax = _mm256_blendv_ps(vmax, _mm256_max_ps(vmax, z), mf);
        nan = _mm256_or_ps(nan, _mm256_and_ps(mf, _mm256_cmp_ps(z, z, _CMP_UNORD_Q)));
    }
    const int has_nan = _mm256_movemask_ps(nan) != 0;
    const float mx = hmax(vmax);
    if (has_nan || mx == INFINITY || mx == -INFINITY) {
        const __m256 fill = V(mx == -INFINITY && !has_nan ? 0.0f : NAN);
        for (int64_t i = 0; i < n; i += 8) st(y, i, n, fill);
        return;
    }
    const __m256 vm = V(mx), zero = _mm256_setzero_ps();
    __m256 vsum = zero;
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(tail_mask(n - i)),
                                       exp8(_mm256_sub_ps(ld_z(x, mask, i, n), vm), zero));
        st(y, i, n, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    const __m256 inv = V(1.0f / hsum(vsum));
    for (int64_t i = 0; i < n; i += 8) st(y, i, n, _mm256_mul_ps(ld(y, i, n), inv));
}

void rc_layer_norm_row_avx2(const float *x, const float *res, const float *w, const float *b,
                            double eps, float *y, int64_t h) {
    /* s = x + res is re-formed in every pass (bit-identical) rather than stored and reloaded */
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t i = 0; i < h; i += 8) {
        const __m256 v = ld_z(x, res, i, h);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, absmask));
    }
    const double mean = hsum_pd(_mm256_add_pd(s0, s1)) / (double)h;
    const __m256d vmean = _mm256_set1_pd(mean);
    __m256d q0 = _mm256_setzero_pd(), q1 = _mm256_setzero_pd();
    for (int64_t i = 0; i < h; i += 8) {
        const __m256i m = tail_mask(h - i);
        const __m256 v = ld_z(x, res, i, h);
        const __m256d m0 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(m)));
        const __m256d m1 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1)));
        const __m256d d0 = _mm256_and_pd(m0, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), vmean));
        const __m256d d1 = _mm256_and_pd(m1, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), vmean));
        q0 = _mm256_fmadd_pd(d0, d0, q0);
        q1 = _mm256_fmadd_pd(d1, d1, q1);
    }
    const double inv = 1.0 / sqrt(hsum_pd(_mm256_add_pd(q0, q1)) / (double)h + eps);
    const float maxabs = hmax(vmax);
    if (!(maxabs <= RC_LN_MAX_ABS && inv >= RC_LN_INV_MIN && inv <= RC_LN_INV_MAX)) {
        if (res) /* the double path reads s from y */
            for (int64_t i = 0; i < h; i += 8) st(y, i, h, ld_z(x, res, i, h));
        rc_layer_norm_row_double(res ? y : x, w, b, mean, inv, y, h);
        return;
    }
    const float mh = (float)mean, ml = (float)(mean - (double)mh);
    const __m256 vmh = V(mh), vml = V(ml), vinv = V((float)inv);
    for (int64_t i = 0; i < h; i += 8) {
        const __m256 d = _mm256_sub_ps(_mm256_sub_ps(ld_z(x, res, i, h), vmh), vml);
        st(y, i, h, _mm256_fmadd_ps(_mm256_mul_ps(d, vinv), ld(w, i, h), ld(b, i, h)));
    }
}
#endif
