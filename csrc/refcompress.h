/* refcompress public C API.
 *
 * This file is read verbatim as the cffi cdef, so it holds declarations and plain
 * "#define NAME value" constants only (no #include, no #if).  C sources include
 * rc_common.h, which adds the include guards and standard headers around this file.
 *
 * Conventions: the caller owns all memory; arrays are C-contiguous; every kernel takes the
 * ISA variant to run (RC_ISA_*; RC_ISA_AUTO = best this CPU can run) and the number of
 * OpenMP threads (<= 0: the OpenMP default); kernels return RC_OK or an RC_ERR_* code.
 */

#define RC_OK 0
#define RC_ERR_ARG 1
#define RC_ERR_ISA 2

/* ISA variants, also bit positions in the masks returned by the probes. */
#define RC_ISA_AUTO -1
#define RC_ISA_PORTABLE 0
#define RC_ISA_AVX2 1
#define RC_ISA_AVX512 2
#define RC_ISA_AVX512_VNNI 3
#define RC_ISA_COUNT 4

/* Integer storage types of quantized tensors. */
#define RC_INT8 0
#define RC_UINT8 1
#define RC_INT16 2
#define RC_UINT16 3
#define RC_INT32 4

/* ---- probes ---------------------------------------------------------------------- */
int rc_cpu_isa_mask(void);      /* variants this CPU (and OS) can run                  */
int rc_compiled_isa_mask(void); /* variants compiled into this build                   */
int rc_has_openmp(void);        /* 1 if built with OpenMP                              */
int rc_max_threads(void);       /* OpenMP's default team size (1 without OpenMP)       */
int rc_is_sanitized(void);      /* 1 if built with AddressSanitizer + UBSan            */

/* ---- affine quantization (ONNX QuantizeLinear / DequantizeLinear) ------------------ *
 * x is viewed as [outer, channels, inner]; channel c uses scale[c], zero_point[c]
 * (per-tensor: channels = 1 with the whole tensor in inner).
 *   q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)   NaN -> zero_point
 *   x = (q - zero_point) * scale                                     (float32)       */
int rc_quantize_f32(const float *x, void *q, int qtype,
                    long long outer, long long channels, long long inner,
                    const float *scale, const int *zero_point,
                    int qmin, int qmax, int isa, int threads);
int rc_dequantize_f32(const void *q, int qtype, float *x,
                      long long outer, long long channels, long long inner,
                      const float *scale, const int *zero_point,
                      int isa, int threads);
