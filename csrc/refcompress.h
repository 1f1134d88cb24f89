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

/* ---- int8 GEMM (qgemm) --------------------------------------------------------------- *
 * C[m, n] = sum_k (a[m, k] - za) * (b[k, n] - zb[n])  exactly in int32, then an epilogue.
 * a: [M, K] uint8 or int8 (RC_UINT8 / RC_INT8), row-major.  b: [K, N] int8, packed once by
 * rc_qgemm_pack_b into panels of RC_QGEMM_NR columns:
 *   packed[p][g][j][i] = b[4g + i, 64p + j] + 128   (uint8; zero padding past K and N)
 * with col_sums[n] = sum_k (b[k, n] + 128).  Scratch: rc_qgemm_workspace_size(M, K, N) bytes. */
#define RC_QGEMM_NR 64
#define RC_QGEMM_KGROUP 4

#define RC_EPI_INT32 0          /* out int32 [M, N]: acc + bias                           */
#define RC_EPI_REQUANT_FLOAT 1  /* out int8/uint8: sat(rint(float(acc + bias) * scale) + zo) */
#define RC_EPI_REQUANT_FIXED 2  /* out int8/uint8: sat(fixedpoint(acc + bias, M0, shift) + zo) */
#define RC_EPI_DEQUANT 3        /* out float32: float(acc + bias) * scale, optional relu     */

typedef struct {
    int kind;                 /* RC_EPI_*                                                  */
    const int32_t *bias;      /* [N] int32, or NULL                                        */
    const float *scale;       /* REQUANT_FLOAT multiplier / DEQUANT scale: [N] or [1]      */
    const int32_t *multiplier;/* REQUANT_FIXED: M0 in [2^30, 2^31): [N] or [1]             */
    const int32_t *shift;     /* REQUANT_FIXED: exponent, > 0 left, <= 0 right: [N] or [1] */
    int per_channel;          /* 1: scale / multiplier / shift have N entries              */
    int out_type;             /* RC_INT8 or RC_UINT8 for the requantizing epilogues        */
    int32_t out_zero_point;
    int32_t qmin, qmax;       /* saturation range of the requantized output (ReLU: qmin = zo) */
    int relu;                 /* DEQUANT: clamp below at 0                                 */
} rc_epilogue;

long long rc_qgemm_packed_size(long long K, long long N);
long long rc_qgemm_workspace_size(long long M, long long K, long long N);
int rc_qgemm_pack_b(const int8_t *b, long long K, long long N, void *packed, int32_t *col_sums,
                    int threads);
int rc_qgemm(const void *a, int a_type, long long M, long long K, long long N, int32_t a_zero_point,
             const void *packed, const int32_t *col_sums, const int32_t *b_zero_point,
             int b_zero_point_per_col, const rc_epilogue *epi, void *c, void *workspace,
             int isa, int threads);

/* Requantize an int32 matrix [M, N] alone (the same epilogue, per column or per tensor). */
int rc_requantize(const int32_t *acc, long long M, long long N, const rc_epilogue *epi, void *out,
                  int isa, int threads);

/* ---- benchmark support ------------------------------------------------------------- *
 * Runs `iters` rounds of 24 independent vpdpbusd (zmm) chains and returns the int8 ops
 * performed (2 per multiply-add), or -1 if AVX-512 VNNI cannot run: the measured peak
 * that benchmarks quote percentages of. */
long long rc_bench_vnni_peak(long long iters);

/* ---- quantized convolution support ---------------------------------------------------- *
 * im2col of one image's channels [C, H, W] (bytes: uint8 or int8) into rows of patches
 * out[P = OH * OW][C * KH * KW] in (c, kh, kw) order -- the order of a [OC, C, KH, KW]
 * weight flattened -- with out-of-image positions set to pad_value (the activation zero
 * point, so that padding contributes (z - z) = 0 to the product). */
int rc_im2col_u8(const uint8_t *x, long long C, long long H, long long W, long long KH, long long KW,
                 long long stride_h, long long stride_w, long long pad_h, long long pad_w,
                 long long dil_h, long long dil_w, uint8_t pad_value, uint8_t *out, int threads);

/* Dense (groups = 1) quantized convolution, NCHW in and out, NHWC inside: per image the
 * input is transposed to [H, W, C] and each output pixel's patch is packed straight into
 * qgemm's activation layout (no separate im2col pass), then the packed-weight micro-tiles
 * and epilogue run and the [OH*OW, OC] result is transposed back.  Weights are packed by
 * rc_qgemm_pack_b from w transposed to [OC, KH, KW, C] and flattened to [KH*KW*C, OC]. */
long long rc_qconv2d_workspace_size(long long C, long long H, long long W, long long KH, long long KW,
                                    long long OH, long long OW, long long OC, int out_bytes);
int rc_qconv2d(const void *x, int x_type, long long N, long long C, long long H, long long W,
               long long OC, long long KH, long long KW, long long stride_h, long long stride_w,
               long long pad_h, long long pad_w, long long dil_h, long long dil_w, int32_t x_zero_point,
               const void *packed, const int32_t *col_sums, const int32_t *w_zero_point,
               int w_zero_point_per_channel, const rc_epilogue *epi, void *out, void *workspace,
               int isa, int threads);

/* Depthwise quantized convolution (groups = C = OC), NCHW throughout: a direct kernel per
 * channel plane, 16 output columns per vector, exact int32 sums of (x - zx)(w - zw[c]).
 * w: [C, KH, KW]. */
long long rc_qdwconv2d_workspace_size(long long C, long long H, long long W, long long KH, long long KW,
                                      long long pad_h, long long pad_w);
int rc_qdwconv2d(const void *x, int x_type, long long N, long long C, long long H, long long W,
                 long long KH, long long KW, long long stride_h, long long stride_w, long long pad_h,
                 long long pad_w, long long dil_h, long long dil_w, int32_t x_zero_point, const int8_t *w,
                 const int32_t *w_zero_point, int w_zero_point_per_channel, const rc_epilogue *epi,
                 void *out, void *workspace, int isa, int threads);
