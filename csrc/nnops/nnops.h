/* Internal header of the transformer-op family (csrc/nnops/): the float32 constants every
 * variant uses, the scalar (portable) forms of exp and GELU, and the per-ISA row entries.
 *
 * The error bounds in refcompress/kernels/nnops.py are derived for exactly these constants
 * and these operation sequences, taking each a*b + c as two roundings (the portable form);
 * the AVX2 / AVX-512 variants fuse them (one rounding), which only tightens the bound. */
#ifndef RC_NNOPS_H
#define RC_NNOPS_H

#include <string.h>

#include "rc_common.h"

/* exp(d) for d <= 0: k = rint(d log2 e), r = d - k C1 - k C2 (Cody & Waite: k C1 is exact,
 * C1 has 9 significant bits), exp(r) by its degree-7 Taylor polynomial (|r| <= 0.3466),
 * times 2^k.  Below RC_EXP_MIN the result is flushed to 0 (exp(-87) < 2^-125), which also
 * keeps 2^k a normal number. */
#define RC_EXP_MIN (-87.0f)
#define RC_LOG2E 1.44269504f
#define RC_EXP_C1 0.693359375f
#define RC_EXP_C2 (-2.12194440e-4f)
#define RC_EXP_P2 0.5f
#define RC_EXP_P3 0.166666667f   /* 1/3! */
#define RC_EXP_P4 0.0416666667f  /* 1/4! */
#define RC_EXP_P5 0.00833333333f /* 1/5! */
#define RC_EXP_P6 0.00138888889f /* 1/6! */
#define RC_EXP_P7 0.000198412698f /* 1/7! */

/* erfc(a) = t (A1 + t (A2 + t (A3 + t (A4 + t A5)))) exp(-a^2), t = 1 / (1 + P a), a >= 0
 * (Abramowitz & Stegun 7.1.26), a = |x| / sqrt 2. */
#define RC_AS_P 0.3275911f
#define RC_AS_A1 0.254829592f
#define RC_AS_A2 (-0.284496736f)
#define RC_AS_A3 1.421413741f
#define RC_AS_A4 (-1.453152027f)
#define RC_AS_A5 1.061405429f
#define RC_RSQRT2 0.707106781f

/* LayerNorm rows take the float32 fast path only inside these limits (otherwise the row is
 * computed in double throughout): |s| <= 2^100 keeps s - mean finite in float32, and
 * 2^-100 <= 1/sqrt(var + eps) <= 2^100 keeps the normalizer a normal float32. */
#define RC_LN_MAX_ABS 0x1p100f
#define RC_LN_INV_MIN 0x1p-100
#define RC_LN_INV_MAX 0x1p100

static inline float rc_bits_to_float(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static inline uint32_t rc_float_to_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* c ? a : b on the bits.  gcc will not if-convert a float ?: whose arms it computed (it
 * may not assume they cannot trap), which blocks vectorizing the loop; this it vectorizes. */
static inline float rc_select(int c, float a, float b) {
    const uint32_t m = 0u - (uint32_t)(c != 0);
    return rc_bits_to_float((rc_float_to_bits(a) & m) | (rc_float_to_bits(b) & ~m));
}

/* exp(d + dlo) for d <= 0 and |dlo| tiny (dlo: a low-order correction of d, 0 if none);
 * 0 below RC_EXP_MIN and for -inf, NaN for NaN.  Plain float operations and selects, no
 * branch, so that gcc vectorizes loops over it (the garbage computed for lanes that are
 * then flushed is never used, and never reaches a float -> int conversion). */
static inline float rc_exp_core(float d, float dlo) {
    /* rint by the 1.5 * 2^23 trick (|d log2 e| <= 126 where it matters): ties to even */
    const float kf = (d * RC_LOG2E + 12582912.0f) - 12582912.0f;
    float r = d - kf * RC_EXP_C1;
    r = r - kf * RC_EXP_C2;
    r = r + dlo;
    float p = RC_EXP_P7;
    p = p * r + RC_EXP_P6;
    p = p * r + RC_EXP_P5;
    p = p * r + RC_EXP_P4;
    p = p * r + RC_EXP_P3;
    p = p * r + RC_EXP_P2;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    float kc = rc_select(kf >= -126.0f, kf, -126.0f); /* NaN -> -126: a defined cast below */
    kc = rc_select(kc <= 0.0f, kc, 0.0f);
    const float e = p * rc_bits_to_float((uint32_t)((int32_t)kc + 127) << 23);
    return rc_select(d < RC_EXP_MIN, 0.0f, e); /* NaN d: e is NaN (p is) */
}

/* GELU of one float32 (portable form): x^2 = hi + lo exactly by Dekker's product (no FMA
 * needed), so the exponent -x^2/2 reaches exp without rounding.  Branch-free as above. */
static inline float rc_gelu_one(float x) {
    const float ax = fabsf(x);
    const float a = ax * RC_RSQRT2;
    const float t = 1.0f / (RC_AS_P * a + 1.0f);
    float p = RC_AS_A5;
    p = p * t + RC_AS_A4;
    p = p * t + RC_AS_A3;
    p = p * t + RC_AS_A2;
    p = p * t + RC_AS_A1;
    p = p * t;
    const float hi = x * x;
    const float c = 4097.0f * x; /* Veltkamp split: x = xh + xl, 12 + 12 bits */
    const float xh = c - (c - x), xl = x - xh;
    const float lo = ((xh * xh - hi) + 2.0f * xh * xl) + xl * xl; /* garbage only if flushed */
    const float q = p * rc_exp_core(hi * -0.5f, lo * -0.5f); /* erfc(|x| / sqrt 2) */
    const float w_pos = 2.0f - q;
    return (0.5f * x) * rc_select(x < 0.0f, q, w_pos);
}

/* Row kernels of one ISA variant. */
typedef void (*rc_gelu_run_fn)(const float *x, float *y, int64_t n);
typedef void (*rc_layer_norm_row_fn)(const float *x, const float *res, const float *w, const float *b,
                                     double eps, float *y, int64_t h);
typedef void (*rc_softmax_row_fn)(const float *x, const float *mask, float *y, int64_t n);

/* Shared by every variant: the rare LayerNorm row outside the fast path's limits, in
 * double; s is the row (x + residual already formed). */
void rc_layer_norm_row_double(const float *s, const float *w, const float *b, double mean, double inv,
                              float *y, int64_t h);

void rc_gelu_run_portable(const float *x, float *y, int64_t n);
void rc_layer_norm_row_portable(const float *x, const float *res, const float *w, const float *b,
                                double eps, float *y, int64_t h);
void rc_softmax_row_portable(const float *x, const float *mask, float *y, int64_t n);
#if RC_X86
void rc_gelu_run_avx2(const float *x, float *y, int64_t n);
void rc_layer_norm_row_avx2(const float *x, const float *res, const float *w, const float *b,
                            double eps, float *y, int64_t h);
void rc_softmax_row_avx2(const float *x, const float *mask, float *y, int64_t n);
void rc_gelu_run_avx512(const float *x, float *y, int64_t n);
void rc_layer_norm_row_avx512(const float *x, const float *res, const float *w, const float *b,
                              double eps, float *y, int64_t h);
void rc_softmax_row_avx512(const float *x, const float *mask, float *y, int64_t n);
#endif

#endif
