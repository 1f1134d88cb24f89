/* A 16 x 16 transpose of 32-bit elements in sixteen zmm registers, r[q] lane l -> r[l] lane q
 * (unpacks, then 128-bit lane shuffles).  A pure permutation: integer data cast to __m512
 * goes through bit for bit.  Include after the file's `#pragma GCC target` with AVX-512F. */
#ifndef RC_TRANSPOSE_AVX512_H
#define RC_TRANSPOSE_AVX512_H
#include <immintrin.h>

static inline void rc_transpose16_ps(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* u[4i + k]: rows 4i..4i+3, column k of each 128-bit lane */
    for (int i = 0; i < 4; ++i) {
        const __m512d t0 = _mm512_castps_pd(t[4 * i]), t1 = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d t2 = _mm512_castps_pd(t[4 * i + 2]), t3 = _mm512_castps_pd(t[4 * i + 3]);
        u[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    for (int k = 0; k < 4; ++k) {
        const __m512 s0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88), s1 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);
        const __m512 s2 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88), s3 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
        r[k] = _mm512_shuffle_f32x4(s0, s2, 0x88);
        r[8 + k] = _mm512_shuffle_f32x4(s0, s2, 0xDD);
        r[4 + k] = _mm512_shuffle_f32x4(s1, s3, 0x88);
        r[12 + k] = _mm512_shuffle_f32x4(s1, s3, 0xDD);
    }
}

#endif
