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

/* Round half to even, as np.rint and ONNX QuantizeLinear: nearbyint under the default
 * rounding mode (FE_TONEAREST), which neither NumPy nor this library ever changes. */
static inline float rc_round_half_even(float v) { return nearbyintf(v); }

/* Quantize one value: the scalar definition every SIMD variant is tested against.
 * Clamping is done on the rounded float against [qmin - z, qmax - z] *before* adding z,
 * so that the addition happens on small exact integers and can never round. */
static inline int32_t rc_quantize_one(float x, float scale, int32_t z, int32_t qmin, int32_t qmax) {
    float r = rc_round_half_even(x / scale);
    if (r != r) r = 0.0f; /* NaN quantizes as 0.0, i.e. to the zero point */
    const float lo = (float)(qmin - z), hi = (float)(qmax - z);
    if (r < lo) r = lo;
    if (r > hi) r = hi;
    return (int32_t)r + z;
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

int rc_isa_resolve(int isa, int supported_mask);

#endif
