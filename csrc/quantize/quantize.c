/* Affine quantize / dequantize and dynamic per-row symmetric int8: argument checks,
 * dispatch, threading, and the portable variant.  The per-ISA runs live in
 * quantize_<isa>.c; all of them compute rc_quantize_one() (rc_common.h) element by element,
 * bit for bit. */
#include <string.h>

#include "../rc_common.h"

#define RC_QUANT_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512))

/* Each OpenMP work item is one block of at most this many elements of a single channel
 * row, so per-tensor (one long row) and per-channel (many rows) both spread over threads. */
#define RC_QUANT_BLOCK 8192

void rc_quantize_run_portable(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z) {
    const float *x = a->x + base;
    const int32_t lo = a->qmin, hi = a->qmax;
    switch (a->qtype) {
    case RC_INT8:   { int8_t *q = (int8_t *)a->q + base;
                      for (int64_t i = 0; i < n; ++i) q[i] = (int8_t)rc_quantize_one(x[i], s, z, lo, hi); } break;
    case RC_UINT8:  { uint8_t *q = (uint8_t *)a->q + base;
                      for (int64_t i = 0; i < n; ++i) q[i] = (uint8_t)rc_quantize_one(x[i], s, z, lo, hi); } break;
    case RC_INT16:  { int16_t *q = (int16_t *)a->q + base;
                      for (int64_t i = 0; i < n; ++i) q[i] = (int16_t)rc_quantize_one(x[i], s, z, lo, hi); } break;
    case RC_UINT16: { uint16_t *q = (uint16_t *)a->q + base;
                      for (int64_t i = 0; i < n; ++i) q[i] = (uint16_t)rc_quantize_one(x[i], s, z, lo, hi); } break;
    default: break;
    }
}

void rc_dequantize_run_portable(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z) {
    float *x = a->x + base;
    /* (q - z) is formed exactly in 64-bit integers, converted once to float, multiplied
     * once: the same two roundings as the NumPy reference. */
    switch (a->qtype) {
    case RC_INT8:   { const int8_t *q = (const int8_t *)a->q + base;
                      for (int64_t i = 0; i < n; ++i) x[i] = (float)((int64_t)q[i] - z) * s; } break;
    case RC_UINT8:  { const uint8_t *q = (const uint8_t *)a->q + base;
                      for (int64_t i = 0; i < n; ++i) x[i] = (float)((int64_t)q[i] - z) * s; } break;
    case RC_INT16:  { const int16_t *q = (const int16_t *)a->q + base;
                      for (int64_t i = 0; i < n; ++i) x[i] = (float)((int64_t)q[i] - z) * s; } break;
    case RC_UINT16: { const uint16_t *q = (const uint16_t *)a->q + base;
                      for (int64_t i = 0; i < n; ++i) x[i] = (float)((int64_t)q[i] - z) * s; } break;
    case RC_INT32:  { const int32_t *q = (const int32_t *)a->q + base;
                      for (int64_t i = 0; i < n; ++i) x[i] = (float)((int64_t)q[i] - z) * s; } break;
    default: break;
    }
}

static rc_quant_run_fn pick(int isa, int dequant) {
    switch (isa) {
#if RC_X86
    case RC_ISA_AVX2:   return dequant ? rc_dequantize_run_avx2 : rc_quantize_run_avx2;
    case RC_ISA_AVX512: return dequant ? rc_dequantize_run_avx512 : rc_quantize_run_avx512;
#endif
    default:            return dequant ? rc_dequantize_run_portable : rc_quantize_run_portable;
    }
}

rc_quant_run_fn rc_quantize_run_for(int v) {
    switch (v) {
    case RC_ISA_AVX512: case RC_ISA_AVX512_VNNI: case RC_ISA_AVX512_VBMI: return pick(RC_ISA_AVX512, 0);
    case RC_ISA_AVX2: case RC_ISA_AVX_VNNI: return pick(RC_ISA_AVX2, 0);
    default: return pick(RC_ISA_PORTABLE, 0);
    }
}

static int qtype_range(int qtype, int64_t *lo, int64_t *hi) {
    switch (qtype) {
    case RC_INT8:   *lo = INT8_MIN;  *hi = INT8_MAX;   return 1;
    case RC_UINT8:  *lo = 0;         *hi = UINT8_MAX;  return 1;
    case RC_INT16:  *lo = INT16_MIN; *hi = INT16_MAX;  return 1;
    case RC_UINT16: *lo = 0;         *hi = UINT16_MAX; return 1;
    case RC_INT32:  *lo = INT32_MIN; *hi = INT32_MAX;  return 1;
    default: return 0;
    }
}

/* Work item `it`: one block of at most RC_QUANT_BLOCK elements of one channel row. */
static inline void run_item(const rc_quant_args *a, rc_quant_run_fn fn, int64_t it, int64_t blocks_per_row) {
    const int64_t row = it / blocks_per_row, blk = it % blocks_per_row;
    const int64_t c = row % a->channels;
    const int64_t start = blk * RC_QUANT_BLOCK;
    const int64_t n = (a->inner - start < RC_QUANT_BLOCK) ? a->inner - start : RC_QUANT_BLOCK;
    fn(a, row * a->inner + start, n, a->scale[c], a->zero_point[c]);
}

static int run(rc_quant_args *a, rc_quant_run_fn fn, int threads) {
    const int64_t rows = a->outer * a->channels;
    const int64_t blocks_per_row = (a->inner + RC_QUANT_BLOCK - 1) / RC_QUANT_BLOCK;
    const int64_t items = rows * blocks_per_row;
    int nt = 1;
#ifdef _OPENMP
    if (rows * a->inner >= RC_MIN_PARALLEL_WORK) nt = (threads > 0) ? threads : omp_get_max_threads();
#endif
    (void)threads;
    if (nt == 1) { /* no parallel region at all: entering one, even of one thread, costs more
                    * than quantizing a batch-1 row */
        for (int64_t it = 0; it < items; ++it) run_item(a, fn, it, blocks_per_row);
        return RC_OK;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t it = 0; it < items; ++it) run_item(a, fn, it, blocks_per_row);
#endif
    return RC_OK;
}

static int check_common(const void *x, const void *q, int qtype, long long outer, long long channels,
                        long long inner, const float *scale, const int *zero_point) {
    int64_t lo, hi;
    if (!qtype_range(qtype, &lo, &hi)) return RC_ERR_ARG;
    if (outer < 0 || channels < 0 || inner < 0) return RC_ERR_ARG;
    if (outer * inner > 0 && (!x || !q)) return RC_ERR_ARG;
    if (!scale || !zero_point) return RC_ERR_ARG;
    for (long long c = 0; c < channels; ++c) {
        if (!(scale[c] > 0.0f) || isinf(scale[c])) return RC_ERR_ARG;
        if (zero_point[c] < lo || zero_point[c] > hi) return RC_ERR_ARG;
    }
    return RC_OK;
}

int rc_quantize_f32(const float *x, void *q, int qtype, long long outer, long long channels,
                    long long inner, const float *scale, const int *zero_point, int qmin, int qmax,
                    int isa, int threads) {
    int64_t lo, hi;
    int rc = check_common(x, q, qtype, outer, channels, inner, scale, zero_point);
    if (rc != RC_OK) return rc;
    /* int32 output is excluded: qmax - z is not exact in float32 near 2^31. */
    if (qtype == RC_INT32 || !qtype_range(qtype, &lo, &hi)) return RC_ERR_ARG;
    if (qmin < lo || qmax > hi || qmin > qmax) return RC_ERR_ARG;
    for (long long c = 0; c < channels; ++c)
        if (zero_point[c] < qmin || zero_point[c] > qmax) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_QUANT_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_quant_args a = {(float *)x, q, qtype, outer, channels, inner, scale, zero_point, qmin, qmax};
    return run(&a, pick(v, 0), threads);
}

int rc_dequantize_f32(const void *q, int qtype, float *x, long long outer, long long channels,
                      long long inner, const float *scale, const int *zero_point, int isa,
                      int threads) {
    int rc = check_common(x, q, qtype, outer, channels, inner, scale, zero_point);
    if (rc != RC_OK) return rc;
    const int v = rc_isa_resolve(isa, RC_QUANT_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_quant_args a = {x, (void *)q, qtype, outer, channels, inner, scale, zero_point, 0, 0};
    return run(&a, pick(v, 1), threads);
}

/* ---- dynamic per-row symmetric int8 ---------------------------------------------------- */

#define RC_ROWQ_QMAX 127
#define RC_ABS_MASK 0x7fffffffu
#define RC_INF_BITS 0x7f800000u

static inline uint32_t f32_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static inline float bits_f32(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

uint32_t rc_row_absmax_portable(const float *x, const float *inv, int64_t k) {
    uint32_t m = 0;
    if (inv) {
        for (int64_t j = 0; j < k; ++j) {
            const uint32_t b = f32_bits(x[j] * inv[j]) & RC_ABS_MASK;
            m = b > m ? b : m;
        }
    } else {
        for (int64_t j = 0; j < k; ++j) {
            const uint32_t b = f32_bits(x[j]) & RC_ABS_MASK;
            m = b > m ? b : m;
        }
    }
    return m;
}

void rc_row_quant_portable(const float *x, const float *inv, int64_t k, float s, int8_t *q) {
    if (inv) {
        for (int64_t j = 0; j < k; ++j)
            q[j] = (int8_t)rc_quantize_one(x[j] * inv[j], s, 0, -RC_ROWQ_QMAX, RC_ROWQ_QMAX);
    } else {
        for (int64_t j = 0; j < k; ++j)
            q[j] = (int8_t)rc_quantize_one(x[j], s, 0, -RC_ROWQ_QMAX, RC_ROWQ_QMAX);
    }
}

/* The symmetric scale of a row with finite maximum a: a / 127 (one float32 division), and
 * 1 where that is 0 (a = 0, or a <= 63 * 2^-149 so small that the quotient underflows) --
 * then every q of the row is 0. */
static inline float row_scale(float a) {
    const float s = a / (float)RC_ROWQ_QMAX;
    return s == 0.0f ? 1.0f : s;
}

typedef uint32_t (*rc_row_absmax_fn)(const float *, const float *, int64_t);
typedef void (*rc_row_quant_fn)(const float *, const float *, int64_t, float, int8_t *);

int rc_quantize_rows_f32(const float *x, const float *inv_smooth, long long M, long long K,
                         int8_t *q, float *scale, long long *bad_row, int isa, int threads) {
    if (bad_row) *bad_row = -1;
    if (M < 0 || K < 0) return RC_ERR_ARG;
    if (M > 0 && !scale) return RC_ERR_ARG;
    if (M > 0 && K > 0 && (!x || !q)) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_QUANT_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    if (K == 0) { /* empty rows: a = 0 */
        for (long long i = 0; i < M; ++i) scale[i] = 1.0f;
        return RC_OK;
    }
    rc_row_absmax_fn absmax = rc_row_absmax_portable;
    rc_row_quant_fn quant = rc_row_quant_portable;
#if RC_X86
    if (v == RC_ISA_AVX2) { absmax = rc_row_absmax_avx2; quant = rc_row_quant_avx2; }
    if (v == RC_ISA_AVX512) { absmax = rc_row_absmax_avx512; quant = rc_row_quant_avx512; }
#endif
    int nonfinite = 0;
    (void)threads;
#ifdef _OPENMP
    const int nt = (threads > 0) ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && M * K >= RC_MIN_PARALLEL_WORK) \
    reduction(| : nonfinite)
#endif
    for (long long i = 0; i < M; ++i) {
        const float *xi = x + i * K;
        int8_t *qi = q + i * K;
        /* Pass 1 reads the row, pass 2 re-forms x * inv bit-identically while the row is
         * still in L1: xs is never stored. */
        const uint32_t ab = absmax(xi, inv_smooth, K);
        if (ab >= RC_INF_BITS) { /* NaN or Inf: refused by the caller */
            scale[i] = bits_f32(ab);
            memset(qi, 0, (size_t)K);
            nonfinite = 1;
            continue;
        }
        const float s = row_scale(bits_f32(ab));
        scale[i] = s;
        quant(xi, inv_smooth, K, s, qi);
    }
    if (!nonfinite) return RC_OK;
    if (bad_row) {
        for (long long i = 0; i < M; ++i) {
            if (!isfinite(scale[i])) {
                *bad_row = i;
                break;
            }
        }
    }
    return RC_ERR_NONFINITE;
}
