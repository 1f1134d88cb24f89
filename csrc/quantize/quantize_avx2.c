/* AVX2 runs of affine quantize / dequantize: 16 elements per step as two 8-lane halves,
 * scalar tail through rc_quantize_one.  Exactness as in the AVX-512 file; the saturating
 * packs never saturate because values are clamped into the type's range first. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx2,fma")
#include <immintrin.h>

static inline __m256i quant8(__m256 v, __m256 vs, __m256 vlo, __m256 vhi, __m256i vz) {
    __m256 r = _mm256_round_ps(_mm256_div_ps(v, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 nan = _mm256_cmp_ps(r, r, _CMP_UNORD_Q);
    r = _mm256_blendv_ps(r, _mm256_setzero_ps(), nan);
    r = _mm256_min_ps(_mm256_max_ps(r, vlo), vhi);
    return _mm256_add_epi32(_mm256_cvtps_epi32(r), vz);
}

void rc_quantize_run_avx2(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z) {
    const float *x = a->x + base;
    const __m256 vs = _mm256_set1_ps(s);
    const __m256 vlo = _mm256_set1_ps((float)(a->qmin - z)), vhi = _mm256_set1_ps((float)(a->qmax - z));
    const __m256i vz = _mm256_set1_epi32(z);
    const int qt = a->qtype;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i lo = quant8(_mm256_loadu_ps(x + i), vs, vlo, vhi, vz);
        const __m256i hi = quant8(_mm256_loadu_ps(x + i + 8), vs, vlo, vhi, vz);
        /* The 256-bit packs work per 128-bit lane; the permute restores element order. */
        const __m256i p16 = _mm256_permute4x64_epi64(
            (qt == RC_UINT16) ? _mm256_packus_epi32(lo, hi) : _mm256_packs_epi32(lo, hi), 0xD8);
        if (qt == RC_INT16 || qt == RC_UINT16) {
            _mm256_storeu_si256((__m256i *)((uint16_t *)a->q + base + i), p16);
        } else {
            const __m128i l = _mm256_castsi256_si128(p16), h = _mm256_extracti128_si256(p16, 1);
            const __m128i p8 = (qt == RC_UINT8) ? _mm_packus_epi16(l, h) : _mm_packs_epi16(l, h);
            _mm_storeu_si128((__m128i *)((uint8_t *)a->q + base + i), p8);
        }
    }
    if (i < n) rc_quantize_run_portable(a, base + i, n - i, s, z);
}

void rc_dequantize_run_avx2(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z) {
    float *x = a->x + base;
    const __m256 vs = _mm256_set1_ps(s);
    const __m256i vz = _mm256_set1_epi32(z);
    int64_t i = 0;
    if (a->qtype != RC_INT32) {
        for (; i + 8 <= n; i += 8) {
            const void *p = (const uint8_t *)a->q + (base + i) * ((a->qtype <= RC_UINT8) ? 1 : 2);
            __m256i qi;
            switch (a->qtype) {
            case RC_INT8:  qi = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); break;
            case RC_UINT8: qi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); break;
            case RC_INT16: qi = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)p)); break;
            default:       qi = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)); break;
            }
            const __m256 d = _mm256_cvtepi32_ps(_mm256_sub_epi32(qi, vz));
            _mm256_storeu_ps(x + i, _mm256_mul_ps(d, vs));
        }
    }
    if (i < n) rc_dequantize_run_portable(a, base + i, n - i, s, z);
}

/* ---- dynamic per-row symmetric int8: 8 / 16 lanes, scalar tails by the portable rule -- */

static inline __m256 xs8(const float *x, const float *inv, int64_t j) {
    const __m256 v = _mm256_loadu_ps(x + j);
    return inv ? _mm256_mul_ps(v, _mm256_loadu_ps(inv + j)) : v;
}

uint32_t rc_row_absmax_avx2(const float *x, const float *inv, int64_t k) {
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    int64_t j = 0;
    for (; j + 16 <= k; j += 16) {
        m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_castps_si256(xs8(x, inv, j)), abs_mask));
        m1 = _mm256_max_epu32(m1, _mm256_and_si256(_mm256_castps_si256(xs8(x, inv, j + 8)), abs_mask));
    }
    for (; j + 8 <= k; j += 8)
        m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_castps_si256(xs8(x, inv, j)), abs_mask));
    m0 = _mm256_max_epu32(m0, m1);
    __m128i h = _mm_max_epu32(_mm256_castsi256_si128(m0), _mm256_extracti128_si256(m0, 1));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
    const uint32_t m = (uint32_t)_mm_cvtsi128_si32(h);
    if (j == k) return m;
    const uint32_t t = rc_row_absmax_portable(x + j, inv ? inv + j : NULL, k - j);
    return m > t ? m : t;
}

void rc_row_quant_avx2(const float *x, const float *inv, int64_t k, float s, int8_t *q) {
    const __m256 vs = _mm256_set1_ps(s);
    const __m256 vlo = _mm256_set1_ps(-127.0f), vhi = _mm256_set1_ps(127.0f);
    const __m256i vz = _mm256_setzero_si256();
    int64_t j = 0;
    for (; j + 16 <= k; j += 16) {
        const __m256i lo = quant8(xs8(x, inv, j), vs, vlo, vhi, vz);
        const __m256i hi = quant8(xs8(x, inv, j + 8), vs, vlo, vhi, vz);
        /* values are already in [-127, 127]: the saturating packs only narrow */
        const __m256i p16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
        const __m128i p8 = _mm_packs_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1));
        _mm_storeu_si128((__m128i *)(q + j), p8);
    }
    if (j < k) rc_row_quant_portable(x + j, inv ? inv + j : NULL, k - j, s, q + j);
}
#endif
