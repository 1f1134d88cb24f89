/* Internal header shared by every C source: guards, includes, and the one C definition
 * of the scalar rounding / saturation rules that every ISA variant must reproduce. */
#ifndef RC_COMMON_H
#define RC_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "refcompress.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#define RC_X86 1
#else
#define RC_X86 0
#endif

/* The AVX-VNNI variant needs a compiler that knows the avxvnni target (GCC 11, clang 12):
 * an older one builds everything else and leaves that variant out (compiled mask), rather
 * than failing the whole extension. */
#if RC_X86 && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define RC_HAVE_AVX_VNNI 1
#else
#define RC_HAVE_AVX_VNNI 0
#endif

/* Round half to even, as np.rint and ONNX QuantizeLinear: nearbyint under the default
 * rounding mode (FE_TONEAREST), which neither NumPy nor this library ever changes. */
static inline float rc_round_half_even(float v) { return nearbyintf(v); }

/* The one rounding rule: round v half to even, saturate to [qmin, qmax] after adding z.
 * Clamping is done on the rounded float against [qmin - z, qmax - z] *before* adding z,
 * so that the addition happens on small exact integers and can never round.  NaN -> z. */
static inline int32_t rc_round_saturate(float v, int32_t z, int32_t qmin, int32_t qmax) {
    float r = rc_round_half_even(v);
    if (r != r) r = 0.0f;
    const float lo = (float)(qmin - z), hi = (float)(qmax - z);
    if (r < lo) r = lo;
    if (r > hi) r = hi;
    return (int32_t)r + z;
}

/* Quantize one value (ONNX QuantizeLinear): divide, then the rounding rule. */
static inline int32_t rc_quantize_one(float x, float scale, int32_t z, int32_t qmin, int32_t qmax) {
    return rc_round_saturate(x / scale, z, qmin, qmax);
}

/* Requantize by float scale (ONNX QLinearMatMul / QLinearConv, MLAS): float32(acc) * m in
 * float32 (one rounding each), then the rounding rule. */
static inline int32_t rc_requant_float_one(int32_t acc, float m, int32_t z, int32_t qmin, int32_t qmax) {
    return rc_round_saturate((float)acc * m, z, qmin, qmax);
}

static inline int32_t rc_sat_i32(int64_t v) {
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}

/* gemmlowp SaturatingRoundingDoublingHighMul: (a*b + nudge) / 2^31 truncated toward zero,
 * nudge = 2^30 (a*b >= 0) or 1 - 2^30 (a*b < 0).  For either sign that equals
 * floor((a*b + 2^30) / 2^31): round(a*b / 2^31) with ties toward +inf (-1.5 -> -1). */
static inline int32_t rc_srdhm(int32_t a, int32_t b) {
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    const int64_t ab = (int64_t)a * (int64_t)b;
    return (int32_t)((ab + ((int64_t)1 << 30)) >> 31);
}

/* gemmlowp RoundingDivideByPOT: x / 2^e rounded to nearest, ties away from zero. */
static inline int32_t rc_rdbpot(int32_t x, int e) {
    if (e <= 0) return x;
    const int32_t mask = (int32_t)(((int64_t)1 << e) - 1);
    const int32_t rem = x & mask;
    const int32_t thr = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (rem > thr ? 1 : 0);
}

/* Requantize by fixed-point multiplier (gemmlowp / TFLite MultiplyByQuantizedMultiplier):
 * x = sat32(acc * 2^max(shift,0)); y = rdbpot(srdhm(x, m0), max(-shift,0)) + z; saturate. */
static inline int32_t rc_requant_fixed_one(int32_t acc, int32_t m0, int32_t shift, int32_t z,
                                           int32_t qmin, int32_t qmax) {
    const int32_t x = shift > 0 ? rc_sat_i32((int64_t)acc * ((int64_t)1 << shift)) : acc;
    const int64_t y = (int64_t)rc_rdbpot(rc_srdhm(x, m0), shift > 0 ? 0 : -shift) + z;
    return y < qmin ? qmin : (y > qmax ? qmax : (int32_t)y);
}

/* Below this many elements a kernel runs on one thread: waking a team costs more. */
#define RC_MIN_PARALLEL_WORK 65536

/* Per-variant entry points (defined in the <family>_<isa>.c files). */
typedef struct {
    float *x;     /* read by quantize, written by dequantize */
    void *q;      /* written by quantize, read by dequantize */
    int qtype;
    int64_t outer, channels, inner;
    const float *scale;
    const int32_t *zero_point;
    int32_t qmin, qmax;
} rc_quant_args;

/* Quantize / dequantize the n contiguous elements starting at flat offset `base`, all of
 * which belong to one channel (scale s, zero point z). */
void rc_quantize_run_portable(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z);
void rc_dequantize_run_portable(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z);
#if RC_X86
void rc_quantize_run_avx2(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z);
void rc_dequantize_run_avx2(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z);
void rc_quantize_run_avx512(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z);
void rc_dequantize_run_avx512(const rc_quant_args *a, int64_t base, int64_t n, float s, int32_t z);
#endif
typedef void (*rc_quant_run_fn)(const rc_quant_args *, int64_t, int64_t, float, int32_t);
/* The quantize run for a kernel resolved to variant v (any RC_ISA_*): the widest of the
 * quantize variants that v's CPU runs.  Every run computes rc_quantize_one bit for bit, so
 * the choice is one of speed only (the int8 factored Linear quantizes float x with it). */
rc_quant_run_fn rc_quantize_run_for(int v);

/* Per-row symmetric int8 (rc_quantize_rows_f32), one row of k elements, xs = x * inv
 * (inv NULL: xs = x).  absmax returns the bits of max_j |xs_j|: the bits of |v| (sign
 * cleared) order as unsigned integers exactly as the values do, with NaN above +Inf above
 * every finite value, so the maximum is exact in any order and a NaN is never lost.
 * quant writes q_j = rc_quantize_one(xs_j, s, 0, -127, 127). */
uint32_t rc_row_absmax_portable(const float *x, const float *inv, int64_t k);
void rc_row_quant_portable(const float *x, const float *inv, int64_t k, float s, int8_t *q);
#if RC_X86
uint32_t rc_row_absmax_avx2(const float *x, const float *inv, int64_t k);
void rc_row_quant_avx2(const float *x, const float *inv, int64_t k, float s, int8_t *q);
uint32_t rc_row_absmax_avx512(const float *x, const float *inv, int64_t k);
void rc_row_quant_avx512(const float *x, const float *inv, int64_t k, float s, int8_t *q);
#endif

int rc_isa_resolve(int isa, int supported_mask);

#endif
