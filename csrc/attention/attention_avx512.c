/* AVX-512 fused attention for one (batch, head) pair.  K is transposed once into the
 * scratch (K^T [d][W], zero padded to W = S rounded up to 32), so that 16 keys' scores are
 * one zmm: blocks of RC_ATTN_QB = 8 queries x 32 keys accumulate in 16 registers over c
 * (one broadcast of q per query, one load of K^T per 16 keys); V is packed beside it.  The scores rows (W floats
 * each) stay in L1 through the softmax, which writes the unnormalised exp in place; then
 * P V runs over the keys with 8 queries x 32 value columns in 16 registers, and each output
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
    float *kt = scratch, *vp = scratch + d * W, *sc = scratch + 2 * d * W;
    /* K^T and a packed copy of V: the head's rows of v sit H floats apart, a stride that
     * maps them onto a few L1 sets (conflict misses at S = 116); packed, they stream. */
    for (int64_t j = 0; j < S; ++j)
        for (int64_t c = 0; c < d; ++c) {
            kt[c * W + j] = kb[j * H + c];
            vp[j * d + c] = vb[j * H + c];
        }
    for (int64_t c = 0; c < d; ++c)
        for (int64_t j = S; j < W; ++j) kt[c * W + j] = 0.0f;
    const __m512 vscale = _mm512_set1_ps(a->scale), zero = _mm512_setzero_ps();
    /* The next pair this thread runs (static schedule: the next in order): its q, k, v rows
     * are fetched from memory while this pair computes (they sit H floats apart, a stride
     * the hardware prefetchers follow poorly). */
    const int64_t heads = H / d, nb = h + 1 < heads ? b : b + 1, nh = h + 1 < heads ? h + 1 : 0;
    int pf = nb < a->B;
    const int64_t noff = nb * S * H + nh * d;

    for (int64_t i0 = 0; i0 < S; i0 += RC_ATTN_QB, pf = 0) {
        const int64_t nq = S - i0 < RC_ATTN_QB ? S - i0 : RC_ATTN_QB;
        /* query rows past nq repeat row i0: computed, never stored */
        const float *qr[RC_ATTN_QB];
        for (int64_t r = 0; r < RC_ATTN_QB; ++r) qr[r] = qb + (i0 + (r < nq ? r : 0)) * H;
#define RC_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
        /* ---- scores: z = fl(fl(q.k) * scale) (+ mask) for 8 queries x 32 keys at a time */
        for (int64_t jb = 0; jb < W; jb += 32) {
#define RC_DECL(r) __m512 s##r##a = zero, s##r##b = zero; const float *q##r = qr[r];
            RC_ROWS(RC_DECL)
            const float *kc = kt + jb;
            for (int64_t c = 0; c < d; ++c, kc += W) {
                const __m512 k0 = _mm512_loadu_ps(kc), k1 = _mm512_loadu_ps(kc + 16);
#define RC_FMA(r) { const __m512 bq = _mm512_set1_ps(q##r[c]); \
                    s##r##a = _mm512_fmadd_ps(bq, k0, s##r##a); s##r##b = _mm512_fmadd_ps(bq, k1, s##r##b); }
                RC_ROWS(RC_FMA)
            }
            const __mmask16 m0 = tail16(S - jb), m1 = tail16(S - jb - 16);
            const __m512 mk0 = mrow ? _mm512_maskz_loadu_ps(m0, mrow + jb) : zero;
            const __m512 mk1 = mrow ? _mm512_maskz_loadu_ps(m1, mrow + jb + 16) : zero;
#define RC_Z(acc, mk) (mrow ? _mm512_add_ps(_mm512_mul_ps(acc, vscale), mk) : _mm512_mul_ps(acc, vscale))
#define RC_STORE(r) _mm512_storeu_ps(sc + r * W + jb, RC_Z(s##r##a, mk0)); \
                    _mm512_storeu_ps(sc + r * W + jb + 16, RC_Z(s##r##b, mk1));
            RC_ROWS(RC_STORE)
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
        /* ---- P V: 8 queries x 32 value columns in 16 registers, keys in order */
        for (int64_t c0 = 0; c0 < d; c0 += 32) {
            const __mmask16 n0 = tail16(d - c0), n1 = tail16(d - c0 - 16);
#define RC_DECL2(r) __m512 o##r##a = zero, o##r##b = zero;
            RC_ROWS(RC_DECL2)
            const float *vj = vp + c0;
            if (pf && c0 == 0) /* the first block's P V also prefetches the next pair's rows */
                for (int64_t j = 0; j < S; ++j) {
                    const int64_t off = noff + j * H;
                    for (int64_t x = 0; x < d; x += 16) {
                        _mm_prefetch((const char *)(a->q + off + x), _MM_HINT_T1);
                        _mm_prefetch((const char *)(a->k + off + x), _MM_HINT_T1);
                        _mm_prefetch((const char *)(a->v + off + x), _MM_HINT_T1);
                    }
                }
            for (int64_t j = 0; j < S; ++j, vj += d) {
                const __m512 v0 = _mm512_maskz_loadu_ps(n0, vj), v1 = _mm512_maskz_loadu_ps(n1, vj + 16);
#define RC_PV(r) { const __m512 e = _mm512_set1_ps(sc[r * W + j]); \
                   o##r##a = _mm512_fmadd_ps(e, v0, o##r##a); o##r##b = _mm512_fmadd_ps(e, v1, o##r##b); }
                RC_ROWS(RC_PV)
            }
            float *o = cb + i0 * H + c0;
#define RC_OUT(r) if (r < nq) { const __m512 vi = _mm512_set1_ps(inv[r]); \
                      _mm512_mask_storeu_ps(o + r * H, n0, _mm512_mul_ps(o##r##a, vi)); \
                      _mm512_mask_storeu_ps(o + r * H + 16, n1, _mm512_mul_ps(o##r##b, vi)); }
            RC_ROWS(RC_OUT)
        }
    }
}
#endif
