/* Transformer ops (GELU, LayerNorm with optional residual, masked softmax): argument
 * checks, dispatch, OpenMP over rows, and the portable variant.  The ISA files
 * (nnops_<isa>.c) supply the same three row kernels with vector instructions. */
#include "nnops.h"

#define RC_NNOPS_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512))
/* GELU work items: blocks of this many elements (one long array spreads over threads). */
#define RC_GELU_BLOCK 8192

/* ---- portable variant ------------------------------------------------------------------- */

void rc_gelu_run_portable(const float *x, float *y, int64_t n) {
#ifdef _OPENMP
#pragma omp simd
#endif
    for (int64_t i = 0; i < n; ++i) y[i] = rc_gelu_one(x[i]);
}

void rc_layer_norm_row_double(const float *s, const float *w, const float *b, double mean, double inv,
                              float *y, int64_t h) {
    for (int64_t j = 0; j < h; ++j)
        y[j] = (float)(((double)s[j] - mean) * inv * (double)w[j] + (double)b[j]);
}

void rc_layer_norm_row_portable(const float *x, const float *res, const float *w, const float *b,
                                double eps, float *y, int64_t h) {
    const float *s = x;
    double sum = 0.0;
    float maxabs = 0.0f;
    if (res) { /* s = x + residual, one float32 add, kept in y */
        for (int64_t j = 0; j < h; ++j) y[j] = x[j] + res[j];
        s = y;
    }
    /* Sums in any order (omp simd): the bound needs only gamma_H in double. */
#ifdef _OPENMP
#pragma omp simd reduction(+ : sum) reduction(max : maxabs)
#endif
    for (int64_t j = 0; j < h; ++j) {
        sum += (double)s[j];
        const float a = fabsf(s[j]);
        maxabs = a > maxabs ? a : maxabs;
    }
    const double mean = sum / (double)h;
    double ss = 0.0;
#ifdef _OPENMP
#pragma omp simd reduction(+ : ss)
#endif
    for (int64_t j = 0; j < h; ++j) {
        const double d = (double)s[j] - mean;
        ss += d * d;
    }
    const double inv = 1.0 / sqrt(ss / (double)h + eps);
    if (!(maxabs <= RC_LN_MAX_ABS && inv >= RC_LN_INV_MIN && inv <= RC_LN_INV_MAX)) {
        rc_layer_norm_row_double(s, w, b, mean, inv, y, h);
        return;
    }
    /* mean = mh + ml in two floats, so that s - mean keeps its accuracy in float32 */
    const float mh = (float)mean, ml = (float)(mean - (double)mh), invf = (float)inv;
    for (int64_t j = 0; j < h; ++j) {
        const float d = (s[j] - mh) - ml;
        y[j] = (d * invf) * w[j] + b[j];
    }
}

void rc_softmax_row_portable(const float *x, const float *mask, float *y, int64_t n) {
    float m = -INFINITY;
    int bad = 0;
    for (int64_t j = 0; j < n; ++j) {
        const float z = mask ? x[j] + mask[j] : x[j];
        y[j] = z;
        bad |= (z != z);
        m = z > m ? z : m;
    }
    if (bad || m == INFINITY) { /* as the reference: NaN in, NaN out (inf - inf) */
        for (int64_t j = 0; j < n; ++j) y[j] = NAN;
        return;
    }
    if (m == -INFINITY) { /* fully masked row: defined as zeros */
        for (int64_t j = 0; j < n; ++j) y[j] = 0.0f;
        return;
    }
    float sum = 0.0f; /* any order (omp simd): the bound is gamma_{n-1} for positive terms */
#ifdef _OPENMP
#pragma omp simd reduction(+ : sum)
#endif
    for (int64_t j = 0; j < n; ++j) {
        const float e = rc_exp_core(y[j] - m, 0.0f);
        y[j] = e;
        sum += e;
    }
    const float inv = 1.0f / sum; /* sum >= 1: the maximum contributes exp(0) = 1 exactly */
    for (int64_t j = 0; j < n; ++j) y[j] *= inv;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

#ifdef _OPENMP
#define RC_NT(threads) ((threads) > 0 ? (threads) : omp_get_max_threads())
#endif

int rc_gelu_f32(const float *x, float *y, long long n, int isa, int threads) {
    if (n < 0 || (n > 0 && (!x || !y))) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_NNOPS_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_gelu_run_fn fn = rc_gelu_run_portable;
#if RC_X86
    if (v == RC_ISA_AVX2) fn = rc_gelu_run_avx2;
    if (v == RC_ISA_AVX512) fn = rc_gelu_run_avx512;
#endif
    const int64_t items = (n + RC_GELU_BLOCK - 1) / RC_GELU_BLOCK;
    (void)threads;
#ifdef _OPENMP
    const int nt = RC_NT(threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n >= RC_MIN_PARALLEL_WORK)
#endif
    for (int64_t it = 0; it < items; ++it) {
        const int64_t start = it * RC_GELU_BLOCK;
        const int64_t len = n - start < RC_GELU_BLOCK ? n - start : RC_GELU_BLOCK;
        fn(x + start, y + start, len);
    }
    return RC_OK;
}

int rc_layer_norm_f32(const float *x, const float *residual, const float *weight, const float *bias,
                      double eps, float *y, long long rows, long long h, int isa, int threads) {
    if (rows < 0 || h < 1 || !(eps > 0.0) || !(eps <= 1.7976931348623157e308)) return RC_ERR_ARG;
    if (!weight || !bias || (rows > 0 && (!x || !y))) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_NNOPS_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_layer_norm_row_fn fn = rc_layer_norm_row_portable;
#if RC_X86
    if (v == RC_ISA_AVX2) fn = rc_layer_norm_row_avx2;
    if (v == RC_ISA_AVX512) fn = rc_layer_norm_row_avx512;
#endif
    (void)threads;
#ifdef _OPENMP
    const int nt = RC_NT(threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && rows * h >= RC_MIN_PARALLEL_WORK)
#endif
    for (int64_t r = 0; r < rows; ++r)
        fn(x + r * h, residual ? residual + r * h : NULL, weight, bias, eps, y + r * h, h);
    return RC_OK;
}

int rc_softmax_f32(const float *x, const float *mask, long long mask_rows, long long mask_div,
                   float *y, long long rows, long long n, int isa, int threads) {
    if (rows < 0 || n < 1 || (rows > 0 && (!x || !y))) return RC_ERR_ARG;
    if (mask && (mask_rows < 1 || mask_div < 1)) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_NNOPS_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_softmax_row_fn fn = rc_softmax_row_portable;
#if RC_X86
    if (v == RC_ISA_AVX2) fn = rc_softmax_row_avx2;
    if (v == RC_ISA_AVX512) fn = rc_softmax_row_avx512;
#endif
    (void)threads;
#ifdef _OPENMP
    const int nt = RC_NT(threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && rows * n >= RC_MIN_PARALLEL_WORK)
#endif
    for (int64_t r = 0; r < rows; ++r) {
        const float *mr = mask ? mask + ((r / mask_div) % mask_rows) * n : NULL;
        fn(x + r * n, mr, y + r * n, n);
    }
    return RC_OK;
}
