/* Fused multi-head self-attention: argument checks, dispatch, OpenMP over (batch, head)
 * pairs, and the portable variant.  attention_avx512.c supplies the same pair kernel with
 * register-blocked AVX-512 loops. */
#include "attention.h"

#define RC_ATTN_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX512))

/* ---- portable variant ------------------------------------------------------------------- *
 * Per query: the S scores (dot products over c in order, then * scale, then + mask, each a
 * float32 rounding), max, exp by rc_exp_core, their float32 sum, then ctx = (sum_j e_j v_j)
 * * (1 / sum), the value rows accumulated in key order.  Scratch: S scores, d accumulators. */
void rc_attention_head_portable(const rc_attn_args *a, int64_t b, int64_t h, float *scratch) {
    const int64_t S = a->S, H = a->H, d = a->d;
    const float *qb = a->q + b * S * H + h * d, *kb = a->k + b * S * H + h * d, *vb = a->v + b * S * H + h * d;
    float *cb = a->ctx + b * S * H + h * d;
    const float *mrow = a->mask ? a->mask + b * S : NULL;
    float *sc = scratch, *acc = scratch + rc_attn_width(S);
    for (int64_t i = 0; i < S; ++i) {
        const float *qi = qb + i * H;
        float m = -INFINITY;
        int bad = 0;
        for (int64_t j = 0; j < S; ++j) {
            const float *kj = kb + j * H;
            float s = 0.0f;
            for (int64_t c = 0; c < d; ++c) s += qi[c] * kj[c];
            float z = s * a->scale;
            if (mrow) z += mrow[j];
            sc[j] = z;
            bad |= (z != z);
            m = z > m ? z : m;
        }
        float *out = cb + i * H;
        if (bad || m == INFINITY || m == -INFINITY) { /* NaN row / fully masked row */
            const float fill = m == -INFINITY && !bad ? 0.0f : NAN;
            for (int64_t c = 0; c < d; ++c) out[c] = fill;
            continue;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < S; ++j) {
            const float e = rc_exp_core(sc[j] - m, 0.0f);
            sc[j] = e;
            sum += e;
        }
        for (int64_t c = 0; c < d; ++c) acc[c] = 0.0f;
        for (int64_t j = 0; j < S; ++j) {
            const float e = sc[j], *vj = vb + j * H;
#ifdef _OPENMP
#pragma omp simd
#endif
            for (int64_t c = 0; c < d; ++c) acc[c] += e * vj[c];
        }
        const float inv = 1.0f / sum; /* sum >= 1: the maximum contributes exp(0) = 1 */
        for (int64_t c = 0; c < d; ++c) out[c] = acc[c] * inv;
    }
}

/* ---- dispatch ------------------------------------------------------------------------------ */

static int resolve_threads(int threads) {
#ifdef _OPENMP
    return threads > 0 ? threads : omp_get_max_threads();
#else
    (void)threads;
    return 1;
#endif
}

long long rc_attention_workspace_size(long long S, long long H, long long heads, int threads) {
    if (S < 1 || heads < 1 || H < heads || H % heads) return -1;
    return (long long)resolve_threads(threads) * rc_attn_scratch_floats(S, H / heads) * (long long)sizeof(float);
}

int rc_attention_f32(const float *q, const float *k, const float *v, const float *mask, float scale,
                     float *ctx, long long B, long long S, long long H, long long heads, void *workspace,
                     int isa, int threads) {
    if (B < 0 || S < 1 || heads < 1 || H < heads || H % heads) return RC_ERR_ARG;
    if (B > 0 && (!q || !k || !v || !ctx || !workspace)) return RC_ERR_ARG;
    const int v_isa = rc_isa_resolve(isa, RC_ATTN_VARIANTS);
    if (v_isa < 0) return RC_ERR_ISA;
    rc_attn_head_fn fn = rc_attention_head_portable;
#if RC_X86
    if (v_isa == RC_ISA_AVX512) fn = rc_attention_head_avx512;
#endif
    const rc_attn_args a = {q, k, v, mask, ctx, B, S, H, H / heads, scale};
    const int64_t pairs = B * heads, per = rc_attn_scratch_floats(S, H / heads);
    const int nt = resolve_threads(threads);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1 && pairs > 1 && pairs * S * S * (H / heads) >= RC_MIN_PARALLEL_WORK)
#endif
    {
#ifdef _OPENMP
        float *scratch = (float *)workspace + (int64_t)omp_get_thread_num() * per;
#pragma omp for schedule(static) /* contiguous: a pair can prefetch the next */
#else
        float *scratch = (float *)workspace;
#endif
        for (int64_t p = 0; p < pairs; ++p) fn(&a, p / heads, p % heads, scratch);
    }
    return RC_OK;
}
