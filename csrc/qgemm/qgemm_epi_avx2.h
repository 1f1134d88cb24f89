/* The 8-lane epilogue shared by the 256-bit qgemm variants, AVX2 and AVX-VNNI (included
 * after their target pragma).  Lane for lane it computes rc_epi_store_one (qgemm.h). */
#ifndef RC_QGEMM_EPI_AVX2_H
#define RC_QGEMM_EPI_AVX2_H
#include <immintrin.h>

#include "qgemm.h"

/* gemmlowp fixed-point requantization on 8 lanes (per-lane multiplier and shift). */
static inline __attribute__((always_inline)) __m256i rc_fixed8(__m256i v, __m256i m0, __m256i shift) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256i left = _mm256_max_epi32(shift, zero);
    const __m256i right = _mm256_max_epi32(_mm256_sub_epi32(zero, shift), zero);
    const __m256i sh = _mm256_sllv_epi32(v, left);
    const __m256i ovf = _mm256_xor_si256(_mm256_cmpeq_epi32(_mm256_srav_epi32(sh, left), v),
                                         _mm256_set1_epi32(-1));
    const __m256i sat = _mm256_blendv_epi8(_mm256_set1_epi32(INT32_MAX), _mm256_set1_epi32(INT32_MIN),
                                           _mm256_cmpgt_epi32(zero, v));
    const __m256i x = _mm256_blendv_epi8(sh, sat, ovf);
    const __m256i half = _mm256_set1_epi64x((int64_t)1 << 30);
    const __m256i pe = _mm256_srli_epi64(_mm256_add_epi64(_mm256_mul_epi32(x, m0), half), 31);
    const __m256i po = _mm256_srli_epi64(_mm256_add_epi64(
        _mm256_mul_epi32(_mm256_srli_epi64(x, 32), _mm256_srli_epi64(m0, 32)), half), 31);
    __m256i h = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, right), one);
    const __m256i rem = _mm256_and_si256(h, mask);
    const __m256i thr = _mm256_add_epi32(_mm256_srai_epi32(mask, 1), _mm256_and_si256(_mm256_cmpgt_epi32(zero, h), one));
    h = _mm256_srav_epi32(h, right);
    return _mm256_add_epi32(h, _mm256_and_si256(_mm256_cmpgt_epi32(rem, thr), one));
}

/* 8 full lanes of the epilogue (tails go through the scalar rc_epi_store_one). */
static inline __attribute__((always_inline)) void rc_epi8(const rc_epilogue *e, __m256i v, int64_t row,
                                                          int64_t n0, void *out, int64_t ldo) {
    if (e->bias) v = _mm256_add_epi32(v, _mm256_loadu_si256((const __m256i *)(e->bias + n0)));
    const int64_t at = row * ldo + n0;
    if (e->kind == RC_EPI_INT32) {
        _mm256_storeu_si256((__m256i *)((int32_t *)out + at), v);
        return;
    }
    if (e->kind == RC_EPI_DEQUANT || e->kind == RC_EPI_REQUANT_FLOAT) {
        const __m256 s = e->per_channel ? _mm256_loadu_ps(e->scale + n0) : _mm256_set1_ps(e->scale[0]);
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), s);
        if (e->kind == RC_EPI_DEQUANT) {
            if (e->row_scale) f = _mm256_mul_ps(f, _mm256_set1_ps(e->row_scale[row]));
            if (e->fbias) f = _mm256_add_ps(f, _mm256_loadu_ps(e->fbias + n0));
            _mm256_storeu_ps((float *)out + at, e->relu ? _mm256_max_ps(f, _mm256_setzero_ps()) : f);
            return;
        }
        __m256 r = _mm256_round_ps(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q)); /* NaN -> 0, as rc_round_saturate */
        r = _mm256_max_ps(r, _mm256_set1_ps((float)(e->qmin - e->out_zero_point)));
        r = _mm256_min_ps(r, _mm256_set1_ps((float)(e->qmax - e->out_zero_point)));
        v = _mm256_add_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(e->out_zero_point));
    } else {
        const __m256i m0 = e->per_channel ? _mm256_loadu_si256((const __m256i *)(e->multiplier + n0))
                                          : _mm256_set1_epi32(e->multiplier[0]);
        const __m256i sh = e->per_channel ? _mm256_loadu_si256((const __m256i *)(e->shift + n0))
                                          : _mm256_set1_epi32(e->shift[0]);
        v = _mm256_add_epi32(rc_fixed8(v, m0, sh), _mm256_set1_epi32(e->out_zero_point));
        v = _mm256_min_epi32(_mm256_max_epi32(v, _mm256_set1_epi32(e->qmin)), _mm256_set1_epi32(e->qmax));
    }
    /* values are inside [qmin, qmax] of an 8-bit type: the packs cannot saturate */
    const __m256i p16 = _mm256_packs_epi32(v, v);                          /* per lane: 4 x i16 twice */
    const __m128i w = _mm256_castsi256_si128(_mm256_permute4x64_epi64(p16, 0x08)); /* 8 x i16 in order */
    const __m128i p8 = e->out_type == RC_UINT8 ? _mm_packus_epi16(w, w) : _mm_packs_epi16(w, w);
    _mm_storel_epi64((__m128i *)((int8_t *)out + at), p8);
}

/* Columns n.. of row m of a tile: 8 accumulators (sum_k a_s * b_u) get the zero-point
 * correction (qgemm.h: - zbp[n] * ra[m] + colterm[n]; ra_m = ra[m] broadcast) and go
 * through the epilogue, columns past N through the scalar one.  zbp and colterm are padded
 * to whole panels, so their 8-lane loads stay inside. */
static inline __attribute__((always_inline)) void rc_tile_out8(const rc_qgemm_ctx *x, __m256i acc, __m256i ra_m, int64_t m, int64_t n) {
    const __m256i zb = _mm256_loadu_si256((const __m256i *)(x->zbp + n));
    const __m256i ct = _mm256_loadu_si256((const __m256i *)(x->colterm + n));
    const __m256i v = _mm256_add_epi32(_mm256_sub_epi32(acc, _mm256_mullo_epi32(zb, ra_m)), ct);
    if (n + 8 <= x->N) {
        rc_epi8(x->epi, v, m, n, x->c, x->N);
    } else {
        int32_t tmp[8];
        _mm256_storeu_si256((__m256i *)tmp, v);
        for (int64_t t = 0; n + t < x->N; ++t) rc_epi_store_one(x->epi, (uint32_t)tmp[t], m, n + t, x->c, x->N);
    }
}
#endif
