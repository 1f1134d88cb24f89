/* AVX-512 fused attention for one (batch, head) pair.  K is transposed once into the
 * scratch (K^T [d][W], zero padded to W = S rounded up to 32), so that 16 keys' scores are
 * one zmm: blocks of RC_ATTN_QB = 4 queries x 32 keys accumulate in 8 registers over c
 * (one broadcast of q per query, one load of K^T per 16 keys).  The scores rows (W floats
 * each) stay in L1 through the softmax, which writes the unnormalised exp in place; then
 * P V runs over the keys with 4 queries x 32 value columns in 8 registers, and each output
 * row is scaled by 1 / sum once.  Operation sequence: the portable one with the dot
 * products' a*b + c fused; scale and mask stay two roundings (mul, then add), as the
 * definition says. */
#include "attention/attention.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#include <immintrin.h>

#include "nnops/nnops_avx512.h"

static inline __mmask16 tail16(int64_t left) {
    if (left <= 0) return 0;
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

void rc_attention_head_avx512(const rc_attn_args *a, int64_t b, int64_t h, float *scratch) {
    const int64_t S = a->S, H = a->H, d = a->d, W = rc_attn_width(S);
    const float *qb = a->q + b * S * H + h * d, *kb = a->k + b * S * H + h * d, *vb = a->v + b * S * H + h * d;
    float *cb = a->ctx + b * S * H + h * d;
    const float *mrow = a->mask ? a->mask + b * S : NULL;
    float *kt = scratch, *sc = scratch + d * W;
    for (int64_t j = 0; j < S; ++j)
        for (int64_t c = 0; c < d; ++c) kt[c * W + j] = kb[j * H + c];
    for (int64_t c = 0; c < d; ++c)
        for (int64_t j = S; j < W; ++j) kt[c * W + j] = 0.0f;
    const __m512 vscale = _mm512_set1_ps(a->scale), zero = _mm512_setzero_ps();

    for (int64_t i0 = 0; i0 < S; i0 += RC_ATTN_QB) {
        const int64_t nq = S - i0 < RC_ATTN_QB ? S - i0 : RC_ATTN_QB;
        /* rows past nq repeat the last query: computed, never stored */
        const float *q0 = qb + i0 * H, *q1 = qb + (i0 + (nq > 1 ? 1 : 0)) * H,
                    *q2 = qb + (i0 + (nq > 2 ? 2 : 0)) * H, *q3 = qb + (i0 + (nq > 3 ? 3 : 0)) * H;
        /* ---- scores: z = fl(fl(q.k) * scale) (+ mask) for 4 queries x 32 keys at a time */
        for (int64_t jb = 0; jb < W; jb += 32) {
            __m512 a00 = zero, a01 = zero, a10 = zero, a11 = zero, a20 = zero, a21 = zero, a30 = zero,
                   a31 = zero;
            const float *kc = kt + jb;
            for (int64_t c = 0; c < d; ++c, kc += W) {
                const __m512 k0 = _mm512_loadu_ps(kc), k1 = _mm512_loadu_ps(kc + 16);
                const __m512 b0 = _mm512_set1_ps(q0[c]), b1 = _mm512_set1_ps(q1[c]);
                const __m512 b2 = _mm512_set1_ps(q2[c]), b3 = _mm512_set1_ps(q3[c]);
                a00 = _mm512_fmadd_ps(b0, k0, a00);
                a01 = _mm512_fmadd_ps(b0, k1, a01);
                a10 = _mm512_fmadd_ps(b1, k0, a10);
                a11 = _mm512_fmadd_ps(b1, k1, a11);
                a20 = _mm512_fmadd_ps(b2, k0, a20);
                a21 = _mm512_fmadd_ps(b2, k1, a21);
                a30 = _mm512_fmadd_ps(b3, k0, a30);
                a31 = _mm512_fmadd_ps(b3, k1, a31);
            }
            const __mmask16 m0 = tail16(S - jb), m1 = tail16(S - jb - 16);
            const __m512 mk0 = mrow ? _mm512_maskz_loadu_ps(m0, mrow + jb) : zero;
            const __m512 mk1 = mrow ? _mm512_maskz_loadu_ps(m1, mrow + jb + 16) : zero;
#define RC_Z(acc, mk) (mrow ? _mm512_add_ps(_mm512_mul_ps(acc, vscale), mk) : _mm512_mul_ps(acc, vscale))
            _mm512_storeu_ps(sc + 0 * W + jb, RC_Z(a00, mk0));
            _mm512_storeu_ps(sc + 0 * W + jb + 16, RC_Z(a01, mk1));
            _mm512_storeu_ps(sc + 1 * W + jb, RC_Z(a10, mk0));
            _mm512_storeu_ps(sc + 1 * W + jb + 16, RC_Z(a11, mk1));
            _mm512_storeu_ps(sc + 2 * W + jb, RC_Z(a20, mk0));
            _mm512_storeu_ps(sc + 2 * W + jb + 16, RC_Z(a21, mk1));
            _mm512_storeu_ps(sc + 3 * W + jb, RC_Z(a30, mk0));
            _mm512_storeu_ps(sc + 3 * W + jb + 16, RC_Z(a31, mk1));
#undef RC_Z
        }
        /* ---- softmax of each row in place: exp(z - max), their sum; special rows */
        float inv[RC_ATTN_QB];
        for (int64_t r = 0; r < RC_ATTN_QB; ++r) {
            float *row = sc + r * W;
            __m512 vmax = _mm512_set1_ps(-INFINITY);
            __mmask16 nan = 0;
            for (int64_t j = 0; j < S; j += 16) {
                const __mmask16 m = tail16(S - j);
                const __m512 z = _mm512_loadu_ps(row + j);
                vmax = _mm512_mask_max_ps(vmax, m, vmax, z);
                nan |= _mm512_mask_cmp_ps_mask(m, z, z, _CMP_UNORD_Q);
            }
            const float mx = _mm512_reduce_max_ps(vmax);
            if (nan || mx == INFINITY || mx == -INFINITY) {
                /* P V of a zero row is 0 (fully masked), of a NaN row NaN */
                const __m512 fill = _mm512_set1_ps(mx == -INFINITY && !nan ? 0.0f : NAN);
                for (int64_t j = 0; j < S; j += 16) _mm512_mask_storeu_ps(row + j, tail16(S - j), fill);
                inv[r] = mx == -INFINITY && !nan ? 0.0f : NAN;
                continue;
            }
            const __m512 vm = _mm512_set1_ps(mx);
            __m512 vsum = zero;
            for (int64_t j = 0; j < S; j += 16) {
                const __mmask16 m = tail16(S - j);
                const __m512 e = _mm512_maskz_mov_ps(m, rc_exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j), vm), zero));
                _mm512_storeu_ps(row + j, e);
                vsum = _mm512_add_ps(vsum, e);
            }
            inv[r] = 1.0f / _mm512_reduce_add_ps(vsum); /* sum >= 1: the max gives exp(0) = 1 */
        }
        /* ---- P V: 4 queries x 32 value columns in 8 registers, keys in order */
        for (int64_t c0 = 0; c0 < d; c0 += 32) {
            const __mmask16 n0 = tail16(d - c0), n1 = tail16(d - c0 - 16);
            __m512 a00 = zero, a01 = zero, a10 = zero, a11 = zero, a20 = zero, a21 = zero, a30 = zero,
                   a31 = zero;
            const float *vj = vb + c0;
            for (int64_t j = 0; j < S; ++j, vj += H) {
                const __m512 v0 = _mm512_maskz_loadu_ps(n0, vj), v1 = _mm512_maskz_loadu_ps(n1, vj + 16);
                const __m512 e0 = _mm512_set1_ps(sc[j]), e1 = _mm512_set1_ps(sc[W + j]);
                const __m512 e2 = _mm512_set1_ps(sc[2 * W + j]), e3 = _mm512_set1_ps(sc[3 * W + j]);
                a00 = _mm512_fmadd_ps(e0, v0, a00);
                a01 = _mm512_fmadd_ps(e0, v1, a01);
                a10 = _mm512_fmadd_ps(e1, v0, a10);
                a11 = _mm512_fmadd_ps(e1, v1, a11);
                a20 = _mm512_fmadd_ps(e2, v0, a20);
                a21 = _mm512_fmadd_ps(e2, v1, a21);
                a30 = _mm512_fmadd_ps(e3, v0, a30);
                a31 = _mm512_fmadd_ps(e3, v1, a31);
            }
            float *o = cb + i0 * H + c0;
            _mm512_mask_storeu_ps(o, n0, _mm512_mul_ps(a00, _mm512_set1_ps(inv[0])));
            _mm512_mask_storeu_ps(o + 16, n1, _mm512_mul_ps(a01, _mm512_set1_ps(inv[0])));
            if (nq > 1) {
                _mm512_mask_storeu_ps(o + H, n0, _mm512_mul_ps(a10, _mm512_set1_ps(inv[1])));
                _mm512_mask_storeu_ps(o + H + 16, n1, _mm512_mul_ps(a11, _mm512_set1_ps(inv[1])));
            }
            if (nq > 2) {
                _mm512_mask_storeu_ps(o + 2 * H, n0, _mm512_mul_ps(a20, _mm512_set1_ps(inv[2])));
                _mm512_mask_storeu_ps(o + 2 * H + 16, n1, _mm512_mul_ps(a21, _mm512_set1_ps(inv[2])));
            }
            if (nq > 3) {
                _mm512_mask_storeu_ps(o + 3 * H, n0, _mm512_mul_ps(a30, _mm512_set1_ps(inv[3])));
                _mm512_mask_storeu_ps(o + 3 * H + 16, n1, _mm512_mul_ps(a31, _mm512_set1_ps(inv[3])));
            }
        }
    }
}
#endif
