/* The 16-lane epilogue shared by the AVX-512 qgemm variants (included after their target
 * pragma).  Lane for lane it computes rc_epi_store_one (qgemm.h); see the notes there. */
#ifndef RC_QGEMM_EPI_AVX512_H
#define RC_QGEMM_EPI_AVX512_H
#include <math.h>
#include <immintrin.h>

#include "qgemm.h"

static inline __mmask16 rc_mask16(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

static inline __m512 rc_param_ps(const float *p, int per_channel, int64_t n0, __mmask16 m) {
    return per_channel ? _mm512_maskz_loadu_ps(m, p + n0) : _mm512_set1_ps(p[0]);
}

static inline __m512i rc_param_epi32(const int32_t *p, int per_channel, int64_t n0, __mmask16 m) {
    return per_channel ? _mm512_maskz_loadu_epi32(m, p + n0) : _mm512_set1_epi32(p[0]);
}

/* gemmlowp fixed-point requantization on 16 lanes (per-lane multiplier and shift). */
static inline __m512i rc_fixed16(__m512i v, __m512i m0, __m512i shift) {
    const __m512i zero = _mm512_setzero_si512();
    const __m512i left = _mm512_max_epi32(shift, zero);
    const __m512i right = _mm512_max_epi32(_mm512_sub_epi32(zero, shift), zero);
    /* saturating left shift: where shifting back does not restore v, it overflowed */
    const __m512i sh = _mm512_sllv_epi32(v, left);
    const __mmask16 ovf = _mm512_cmpneq_epi32_mask(_mm512_srav_epi32(sh, left), v);
    const __mmask16 neg = _mm512_cmplt_epi32_mask(v, zero);
    __m512i x = _mm512_mask_blend_epi32(ovf, sh,
        _mm512_mask_blend_epi32(neg, _mm512_set1_epi32(INT32_MAX), _mm512_set1_epi32(INT32_MIN)));
    /* srdhm: floor((x*m0 + 2^30) / 2^31); only the low 32 bits of the 64-bit shift are kept,
     * which a logical shift gets right (the result fits in int32). */
    const __m512i half = _mm512_set1_epi64((int64_t)1 << 30);
    const __m512i pe = _mm512_srli_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, m0), half), 31);
    const __m512i po = _mm512_srli_epi64(_mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64(x, 32), _mm512_srli_epi64(m0, 32)), half), 31);
    __m512i h = _mm512_mask_blend_epi32((__mmask16)0xAAAA, pe, _mm512_slli_epi64(po, 32));
    /* x == m0 == INT32_MIN cannot occur (m0 > 0), so no saturation case here. */
    /* rdbpot by `right` */
    const __m512i mask = _mm512_sub_epi32(_mm512_sllv_epi32(_mm512_set1_epi32(1), right), _mm512_set1_epi32(1));
    const __m512i rem = _mm512_and_si512(h, mask);
    const __m512i thr = _mm512_add_epi32(_mm512_srai_epi32(mask, 1),
        _mm512_maskz_set1_epi32(_mm512_cmplt_epi32_mask(h, zero), 1));
    h = _mm512_srav_epi32(h, right);
    return _mm512_mask_add_epi32(h, _mm512_cmpgt_epi32_mask(rem, thr), h, _mm512_set1_epi32(1));
}

/* The requantization parameters of 16 columns n0.. as vectors, made once where a kernel
 * requantizes many vectors with the same parameters (a depthwise plane), then applied. */
typedef struct {
    int fixed;
    int nonfinite; /* a scale lane is NaN or +-inf: products may be NaN (0 * inf) */
    int unclamped; /* rc_pack64_unclamped may be used: see rc_requant16_prepare */
    __m512 scale, lo, hi;
    __m512i z, m0, shift, qmin, qmax;
} rc_requant16_params;

static inline rc_requant16_params rc_requant16_prepare(const rc_epilogue *e, int64_t n0, __mmask16 m) {
    rc_requant16_params p;
    p.z = _mm512_set1_epi32(e->out_zero_point);
    p.fixed = e->kind != RC_EPI_REQUANT_FLOAT;
    if (!p.fixed) {
        p.scale = rc_param_ps(e->scale, e->per_channel, n0, m);
        /* |s| < inf is false for NaN and +-inf: only then can s * acc be NaN */
        p.nonfinite = _mm512_cmp_ps_mask(_mm512_abs_ps(p.scale), _mm512_set1_ps(INFINITY), _CMP_LT_OQ) != 0xFFFF;
        p.lo = _mm512_set1_ps((float)(e->qmin - e->out_zero_point));
        p.hi = _mm512_set1_ps((float)(e->qmax - e->out_zero_point));
        p.m0 = p.shift = p.qmin = p.qmax = _mm512_setzero_si512();
        /* The float rule needs no clamp of its own when [qmin, qmax] is the output type's
         * whole range and every |scale| < 1/2: then |acc * scale| < 2^30 converts to int32
         * exactly, and the saturating packs of rc_pack64_unclamped clamp as the rule does. */
        const int full = e->qmin == rc_out_min(e->out_type) && e->qmax == rc_out_max(e->out_type);
        p.unclamped = full && !p.nonfinite &&
                      _mm512_cmp_ps_mask(_mm512_abs_ps(p.scale), _mm512_set1_ps(0.5f), _CMP_LT_OQ) == 0xFFFF;
    } else {
        p.nonfinite = 0;
        p.unclamped = 0;
        p.scale = p.lo = p.hi = _mm512_setzero_ps();
        p.m0 = rc_param_epi32(e->multiplier, e->per_channel, n0, m);
        p.shift = rc_param_epi32(e->shift, e->per_channel, n0, m);
        p.qmin = _mm512_set1_epi32(e->qmin);
        p.qmax = _mm512_set1_epi32(e->qmax);
    }
    return p;
}

static inline __m512i rc_requant16_apply(const rc_requant16_params *p, __m512i v) {
    if (!p->fixed) {
        /* clamping before rounding gives the same as after it (lo and hi are integers and
         * rounding is monotone), and then one conversion rounds half to even (embedded
         * rounding, whatever MXCSR says) exactly inside int32.  NaN (a NaN or infinite
         * scale reaching the C API; the Python layer refuses them) becomes 0 first, as in
         * rc_round_saturate: max_ps alone would make it lo.  Finite scales (the flag,
         * set once per 16 columns) cannot make NaN, so they skip that step. */
        __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), p->scale);
        if (p->nonfinite) f = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(f, f, _CMP_ORD_Q), f);
        f = _mm512_min_ps(_mm512_max_ps(f, p->lo), p->hi);
        return _mm512_add_epi32(_mm512_cvt_roundps_epi32(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), p->z);
    }
    __m512i q = rc_fixed16(v, p->m0, p->shift);
    q = _mm512_add_epi32(q, p->z);
    q = _mm512_max_epi32(q, p->qmin);
    return _mm512_min_epi32(q, p->qmax);
}

/* The requantized values (int32 lanes in [qmin, qmax]) of 16 accumulators v that already
 * include the bias, for columns n0.. (the REQUANT_FLOAT / REQUANT_FIXED kinds). */
static inline __m512i rc_requant16(const rc_epilogue *e, __m512i v, int64_t n0, __mmask16 m) {
    const rc_requant16_params p = rc_requant16_prepare(e, n0, m);
    return rc_requant16_apply(&p, v);
}

/* The dequantization parameters of 16 columns n0.. (the DEQUANT kind), made once where a
 * kernel dequantizes many rows with the same columns, then applied. */
typedef struct {
    __m512 scale, fbias;
    int has_fbias, relu;
} rc_dequant16_params;

static inline rc_dequant16_params rc_dequant16_prepare(const rc_epilogue *e, int64_t n0, __mmask16 m) {
    rc_dequant16_params p;
    p.scale = rc_param_ps(e->scale, e->per_channel, n0, m);
    p.has_fbias = e->fbias != NULL;
    p.fbias = p.has_fbias ? _mm512_maskz_loadu_ps(m, e->fbias + n0) : _mm512_setzero_ps();
    p.relu = e->relu;
    return p;
}

/* float(v) * scale [* *row_scale] [+ fbias] [relu] of accumulators v that already include
 * the bias (row_scale: this row's factor, or NULL). */
static inline __m512 rc_dequant16_apply(const rc_dequant16_params *p, __m512i v, const float *row_scale) {
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), p->scale);
    if (row_scale) f = _mm512_mul_ps(f, _mm512_set1_ps(*row_scale));
    if (p->has_fbias) f = _mm512_add_ps(f, p->fbias);
    if (p->relu) f = _mm512_max_ps(f, _mm512_setzero_ps());
    return f;
}

/* Four requantized vectors (int32 lanes in [qmin, qmax], inside the output type) as 64
 * bytes in lane order: the saturating packs (vpackssdw, then vpackuswb / vpacksswb) are
 * exact on such values; they interleave 128-bit lanes, which one vpermd undoes. */
/* (rc_pack64_words: the second pack and the vpermd, from the two vectors of int16 words) */
static inline __m512i rc_pack64_words(__m512i w01, __m512i w23, int out_type) {
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i b = out_type == RC_UINT8 ? _mm512_packus_epi16(w01, w23) : _mm512_packs_epi16(w01, w23);
    return _mm512_permutexvar_epi32(idx, b);
}
static inline __m512i rc_pack64(__m512i q0, __m512i q1, __m512i q2, __m512i q3, int out_type) {
    return rc_pack64_words(_mm512_packs_epi32(q0, q1), _mm512_packs_epi32(q2, q3), out_type);
}

/* The float rule on 64 accumulators (four vectors, bias included, scales s0..s3 of
 * parameters with `unclamped` set) as 64 bytes in lane order: t = round_half_even(acc * scale) is exact
 * in int32 (|acc * scale| < 2^30), vpackssdw saturates it to int16, the zero point is added
 * with int16 saturation, and vpackuswb / vpacksswb saturate to the output type.  Every
 * saturation lands where clamp(t + z, qmin, qmax) does when [qmin, qmax] is the type's range
 * (|t| >= 32767 leaves t + z outside it on the same side; z is inside it), so the bytes
 * equal rc_pack64 of rc_requant16_apply's values; 19 vector operations for 64 outputs
 * instead of 29. */
static inline __m512i rc_pack64_unclamped(__m512 s0, __m512 s1, __m512 s2, __m512 s3, __m512i v0, __m512i v1,
                                          __m512i v2, __m512i v3, int32_t z, int out_type) {
    const int r = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512i t0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(v0), s0), r);
    const __m512i t1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(v1), s1), r);
    const __m512i t2 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(v2), s2), r);
    const __m512i t3 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(v3), s3), r);
    const __m512i z16 = _mm512_set1_epi16((short)z);
    const __m512i w01 = _mm512_adds_epi16(_mm512_packs_epi32(t0, t1), z16);
    const __m512i w23 = _mm512_adds_epi16(_mm512_packs_epi32(t2, t3), z16);
    return rc_pack64_words(w01, w23, out_type);
}

/* Store 16 lanes (mask m) of corrected accumulators v for row `row`, columns n0.. */
static inline void rc_epi16(const rc_epilogue *e, __m512i v, int64_t row, int64_t n0, __mmask16 m,
                            void *out, int64_t ldo) {
    if (e->bias) v = _mm512_add_epi32(v, _mm512_maskz_loadu_epi32(m, e->bias + n0));
    const int64_t at = row * ldo + n0;
    switch (e->kind) {
    case RC_EPI_INT32:
        _mm512_mask_storeu_epi32((int32_t *)out + at, m, v);
        return;
    case RC_EPI_DEQUANT: {
        const rc_dequant16_params p = rc_dequant16_prepare(e, n0, m);
        _mm512_mask_storeu_ps((float *)out + at, m, rc_dequant16_apply(&p, v, e->row_scale ? e->row_scale + row : NULL));
        return;
    }
    default:
        _mm512_mask_cvtepi32_storeu_epi8((int8_t *)out + at, m, rc_requant16(e, v, n0, m));
        return;
    }
}

/* A panel's columns n0 .. n0 + 63 as a tile needs them: the accumulators' starting value
 * (colterm + bias, wrapping) and the epilogue's parameters, per vector of 16 columns, made
 * once per tile (per vector they were a quarter of a K = 768 tile's time). */
typedef struct {
    const rc_qgemm_ctx *x; /* colterm (the start values), the output and its N */
    int64_t n0;
    __mmask16 mask[4];     /* 0 for a vector past N */
    int full;              /* all 64 columns valid */
    int unclamped;         /* full, and every q[j].unclamped (rc_pack64_unclamped) */
    __m512i init[4];
    rc_dequant16_params d[4]; /* DEQUANT */
    rc_requant16_params q[4]; /* REQUANT_FLOAT / REQUANT_FIXED */
} rc_panel;

static inline __attribute__((always_inline)) void rc_panel_prepare(rc_panel *P, const rc_qgemm_ctx *x, int64_t n0) {
    const rc_epilogue *e = x->epi;
    P->x = x;
    P->n0 = n0;
    P->full = x->N - n0 >= 64;
    for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + 16 * j;
        const __mmask16 m = n < x->N ? rc_mask16(x->N - n) : 0;
        P->mask[j] = m;
        P->init[j] = _mm512_loadu_si512(x->colterm + n);
        if (e->bias) P->init[j] = _mm512_add_epi32(P->init[j], _mm512_maskz_loadu_epi32(m, e->bias + n));
        if (e->kind == RC_EPI_DEQUANT) P->d[j] = rc_dequant16_prepare(e, n, m);
        else if (e->kind != RC_EPI_INT32) P->q[j] = rc_requant16_prepare(e, n, m);
    }
    P->unclamped = P->full && e->kind != RC_EPI_INT32 && e->kind != RC_EPI_DEQUANT && P->q[0].unclamped &&
                   P->q[1].unclamped && P->q[2].unclamped && P->q[3].unclamped;
}

/* Start value of row m's vector j: colterm + bias - zbp * ra[m] (wrapping int32), so the
 * finished accumulator is the corrected value; made before the K loop, off its chains. */
static inline __m512i rc_panel_start(const rc_panel *P, int j, int64_t m) {
    const __m512i zb = _mm512_loadu_si512(P->x->zbp + P->n0 + 16 * j);
    return _mm512_sub_epi32(P->init[j], _mm512_mullo_epi32(zb, _mm512_set1_epi32(P->x->ra[m])));
}

/* The four named accumulators of a 6 x 64 tile's row r (c<r>0 .. c<r>3), at their start
 * values when the tile has that row; expects `zero`, `mr`, `m0` and the tile's rc_panel `P`
 * in scope (the qgemm AVX-512 and VNNI tiles). */
#define RC_ROW_DECL(r) __m512i c##r##0 = zero, c##r##1 = zero, c##r##2 = zero, c##r##3 = zero;              \
    if (mr > r) {                                                                              \
        c##r##0 = rc_panel_start(&P, 0, m0 + r);                                               \
        c##r##1 = rc_panel_start(&P, 1, m0 + r);                                               \
        c##r##2 = rc_panel_start(&P, 2, m0 + r);                                               \
        c##r##3 = rc_panel_start(&P, 3, m0 + r);                                               \
    }

/* A plain store where all 16 lanes are valid: a masked store is slower on Zen, even with
 * every lane on. */
static inline void rc_store16(void *o, __mmask16 m, __m512i v) {
    if (m == 0xFFFF) _mm512_storeu_si512(o, v);
    else if (m) _mm512_mask_storeu_epi32(o, m, v);
}

/* Row m of a tile (four corrected accumulators, bias included) through the epilogue. */
static inline __attribute__((always_inline)) void rc_panel_row(const rc_panel *P, int64_t m, __m512i v0,
                                                               __m512i v1, __m512i v2, __m512i v3) {
    const rc_epilogue *e = P->x->epi;
    const int64_t at = m * P->x->N + P->n0;
    switch (e->kind) {
    case RC_EPI_INT32: {
        int32_t *o = (int32_t *)P->x->c + at;
        rc_store16(o, P->mask[0], v0);
        rc_store16(o + 16, P->mask[1], v1);
        rc_store16(o + 32, P->mask[2], v2);
        rc_store16(o + 48, P->mask[3], v3);
        return;
    }
    case RC_EPI_DEQUANT: {
        float *o = (float *)P->x->c + at;
        const float *rs = e->row_scale ? e->row_scale + m : NULL;
        rc_store16(o, P->mask[0], _mm512_castps_si512(rc_dequant16_apply(&P->d[0], v0, rs)));
        rc_store16(o + 16, P->mask[1], _mm512_castps_si512(rc_dequant16_apply(&P->d[1], v1, rs)));
        rc_store16(o + 32, P->mask[2], _mm512_castps_si512(rc_dequant16_apply(&P->d[2], v2, rs)));
        rc_store16(o + 48, P->mask[3], _mm512_castps_si512(rc_dequant16_apply(&P->d[3], v3, rs)));
        return;
    }
    default: {
        int8_t *o = (int8_t *)P->x->c + at;
        if (P->unclamped) {
            _mm512_storeu_si512(o, rc_pack64_unclamped(P->q[0].scale, P->q[1].scale, P->q[2].scale, P->q[3].scale, v0, v1,
                                                       v2, v3, e->out_zero_point, e->out_type));
            return;
        }
        const __m512i q0 = rc_requant16_apply(&P->q[0], v0);
        if (P->full) {
            _mm512_storeu_si512(o, rc_pack64(q0, rc_requant16_apply(&P->q[1], v1), rc_requant16_apply(&P->q[2], v2),
                                             rc_requant16_apply(&P->q[3], v3), e->out_type));
            return;
        }
        _mm512_mask_cvtepi32_storeu_epi8(o, P->mask[0], q0);
        if (P->mask[1]) _mm512_mask_cvtepi32_storeu_epi8(o + 16, P->mask[1], rc_requant16_apply(&P->q[1], v1));
        if (P->mask[2]) _mm512_mask_cvtepi32_storeu_epi8(o + 32, P->mask[2], rc_requant16_apply(&P->q[2], v2));
        if (P->mask[3]) _mm512_mask_cvtepi32_storeu_epi8(o + 48, P->mask[3], rc_requant16_apply(&P->q[3], v3));
        return;
    }
    }
}
#endif
