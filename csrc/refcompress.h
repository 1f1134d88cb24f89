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
#define RC_ERR_NONFINITE 3  /* an input row holds NaN or Inf (rc_quantize_rows_f32)   */

/* ISA variants, also bit positions in the masks returned by the probes.  The codes are
 * fixed (callers store them); they are not the order of preference: AUTO prefers
 * portable < avx2 < avx512 < avx_vnni < avx512_vnni < avx512_vbmi (rc_isa_best). */
#define RC_ISA_AUTO -1
#define RC_ISA_PORTABLE 0
#define RC_ISA_AVX2 1
#define RC_ISA_AVX512 2
#define RC_ISA_AVX512_VNNI 3
#define RC_ISA_AVX512_VBMI 4  /* AVX-512 VNNI + VBMI (byte permutes); only qconv2d has it */
#define RC_ISA_AVX_VNNI 5     /* AVX2 + AVX-VNNI (256-bit VEX vpdpbusd), no AVX-512 needed */
#define RC_ISA_COUNT 6

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
int rc_isa_best(int mask);      /* the variant AUTO picks among those in mask, or -1   */

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

/* ---- dynamic per-row symmetric int8 quantization (per-token activations) ------------ *
 * One fused pass per row of x [M, K] (row-major), inv_smooth [K] or NULL:
 *   xs[i, j] = x[i, j] * inv_smooth[j]       one float32 multiply (xs = x when NULL)
 *   a[i]     = max_j |xs[i, j]|              exact (0 when K = 0)
 *   scale[i] = a[i] / 127                    one float32 division; 1 where it gives 0
 *   q[i, j]  = clamp(round_half_even(xs[i, j] / scale[i]), -127, 127)
 * i.e. q equals rc_quantize_f32(xs, [1, M, K], scale, zero point 0, [-127, 127]) exactly.
 * A row whose a[i] is NaN or Inf (NaN / Inf in x, or a product that overflows) gets
 * scale[i] = a[i] and a zero q row; the call then returns RC_ERR_NONFINITE with
 * *bad_row = the first such row (otherwise *bad_row = -1).  bad_row may be NULL. */
int rc_quantize_rows_f32(const float *x, const float *inv_smooth, long long M, long long K,
                         int8_t *q, float *scale, long long *bad_row, int isa, int threads);

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
#define RC_EPI_DEQUANT 3        /* out float32: float(acc + bias) * scale [* row_scale[m]]
                                   [+ fbias[n]], optional relu; each step one float32 rounding */

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
    const float *row_scale;   /* DEQUANT: [M] per-row factor (dynamic per-token activation
                                 scales), or NULL                                          */
    const float *fbias;       /* DEQUANT: [N] float bias added after the scaling, or NULL  */
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
/* rc_qgemm with these arguments `iters` times (iters >= 1), returning the last call's code:
 * the kernel's time per call without the caller's per-call cost (bench_qgemm --call-path). */
int rc_qgemm_repeat(long long iters, const void *a, int a_type, long long M, long long K, long long N,
                    int32_t a_zero_point, const void *packed, const int32_t *col_sums,
                    const int32_t *b_zero_point, int b_zero_point_per_col, const rc_epilogue *epi, void *c,
                    void *workspace, int isa, int threads);

/* ---- quantized convolution support ---------------------------------------------------- */

/* Per image, src[n] [rows, cols] -> dst[n] [cols, rows] (elem_bytes 1 or 4; NCHW <-> NHWC
 * with rows, cols = C, H*W or H*W, C): 16 x 16 tiles, OpenMP over the tiles of each image. */
int rc_transpose_images(const void *src, int elem_bytes, long long N, long long rows, long long cols, void *dst,
                        int threads);

/* Dense quantized convolution (a group's channels of an NCHW image are such a convolution
 * too), by the packed qgemm micro-tiles and epilogue over a block im2col: each thread takes
 * an exact share of every image's OH*OW output pixels, in blocks of at most 96 rows; a
 * block's patches are packed in (kh, kw, c) order straight from x into the thread's buffer
 * (K4 bytes a row, with row sums), its tiles run over every weight panel, then the next
 * block.  layout RC_LAYOUT_NCHW: x [N, C, H, W], each block's [rows, OC] results transposed
 * into out [N, OC, OH, OW]; RC_LAYOUT_NHWC: x [N, H, W, C], the tiles write out
 * [N, OH, OW, OC] in place.  Weights are packed by rc_qgemm_pack_b from w transposed to
 * [OC, KH, KW, C] and flattened to [KH*KW*C, OC].  rc_qconv2d_workspace_size(..., slots)
 * is the size of a workspace for up to `slots` threads (-1 for bad arguments); it grows
 * with C*KH*KW, OC and the window of one block's input rows, never with H*W.  rc_qconv2d
 * runs min(threads, what workspace_bytes holds) threads.  epi->row_scale is refused. */
#define RC_LAYOUT_NCHW 0
#define RC_LAYOUT_NHWC 1
long long rc_qconv2d_workspace_size(long long C, long long KH, long long KW, long long OW, long long stride_w,
                                    long long dil_w, long long OC, int out_bytes, int slots);
int rc_qconv2d(const void *x, int x_type, long long N, long long C, long long H, long long W,
               long long OC, long long KH, long long KW, long long stride_h, long long stride_w,
               long long pad_h, long long pad_w, long long dil_h, long long dil_w, int32_t x_zero_point,
               const void *packed, const int32_t *col_sums, const int32_t *w_zero_point,
               int w_zero_point_per_channel, const rc_epilogue *epi, void *out, void *workspace,
               long long workspace_bytes, int layout, int isa, int threads);

/* Direct dense convolution, NCHW (or NHWC) in and out, no transposes (AVX-512 VNNI only), for
 * groups 1, stride 1, dilation 1 and either a 1x1 kernel without padding (taps = 1) or a
 * 3x3 kernel with padding 1 (taps = 9; output H x W): per image
 * C[OC, P] = sum over taps t of W_t[OC, C] . X_t[C, P] (P = H*W, X_t the image shifted by
 * the tap, the zero point where it reads padding).  Weights w [OC, C, taps] are packed
 * once by rc_qconv_direct_pack into blocks of RC_QCONV_DIRECT_MR output channels:
 *   packed[b][t*C4/4 + g][r][i] = w[MR*b + r, 4g + i, t]   (int8; zero past OC and C)
 * with w_sums[o] = sum_{c,t} w[o, c, t].  layout RC_LAYOUT_NHWC: x [N, H, W, C] and out
 * [N, H, W, OC] (the input is interleaved from pixel rows by 16 x 16 dword transposes, and
 * each block's results are transposed out of a per-thread [OC, 64] stage).  Scratch:
 * rc_qconv_direct_workspace_size(C, H, W, OC, taps, layout, slots) bytes hold `slots`
 * per-thread buffers; the call runs at most that many threads (pass the same byte count as
 * workspace_bytes).  `stream` (1x1 only): 1 interleaves each
 * block of 64 pixels while the previous block's tiles run, prefetching ahead (for inputs
 * that stream from L3 or memory), 0 interleaves each band in a separate pass first, -1
 * chooses 1 when N*C*H*W exceeds 1 MiB (RC_DIRECT_STREAM_BYTES) for NCHW, 0 for NHWC; the
 * result is the same.  Returns
 * RC_ERR_ISA unless `isa` resolves to VNNI. */
#define RC_QCONV_DIRECT_MR 6
#define RC_QCONV_DIRECT_PB 64
long long rc_qconv_direct_packed_size(long long OC, long long C, int taps);
int rc_qconv_direct_pack(const int8_t *w, long long OC, long long C, int taps, int8_t *packed, int32_t *w_sums);
long long rc_qconv_direct_workspace_size(long long C, long long H, long long W, long long OC, int taps, int layout,
                                         int slots);
int rc_qconv_direct(const void *x, int x_type, long long N, long long C, long long H, long long W, long long OC,
                    int taps, int32_t x_zero_point, const int8_t *packed, const int32_t *w_sums,
                    const int32_t *w_zero_point, int w_zero_point_per_channel, const rc_epilogue *epi,
                    void *out, void *workspace, long long workspace_bytes, int layout, int stream, int isa,
                    int threads);

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

/* ---- sparse Linear: pruned weights in CSR or N:M form (csrc/sparse/) ------------------- *
 *   y[b, i] = bias[i] + sum over the stored entries (j, w) of row i of  w * x[b, j]
 * x [batch, in] float32, y [batch, out] float32, bias [out] float32 or NULL.
 * CSR: indptr [out + 1] int32 or int64 (indptr_bytes 4 or 8), indices [nnz] of index_type
 *      RC_UINT8 / RC_UINT16 / RC_INT32 (strictly increasing within a row), values [nnz].
 * N:M: values and indices [out, in / m * n]; indices are uint8 positions 0..m-1 inside each
 *      group of m consecutive inputs, so entry p of a row is column (p / n) * m + indices[p].
 * The kernels trust the structure: check it once with rc_csr_check / rc_nm_check (O(nnz)),
 * which return 0 or an RC_SPCHK_* code with the offending position in *where.
 * Float sums, not bit-exact across variants: every variant's error is within
 * gamma_k * (sum |w||x| + |bias|) + k * 2^-149, k = nnz(row) + 1 (docs/sparse_kernels.md).
 * Scratch: rc_spmm_workspace_size(batch, in) bytes, any alignment (unused, may be NULL,
 * for batch 1).
 * bmask (CSR only, may be NULL): the block-mask form built once by rc_csr_bmask_build, for
 * every row and every 16-column block a 16-bit mask of the stored columns
 * (rc_csr_bmask_blocks(in) masks per row); with it batch 1 runs without gathers.  The values
 * stay the CSR values: in row order they are each block's stored values, lowest column first.
 * colblock: RC_SP_COLBLOCK_AUTO, _OFF or _ON: whether batches > 1 use column-blocked panels
 * (variants without that kernel ignore it; docs/sparse_kernels.md).
 * tiles (CSR only, may be NULL): the row-tile headers built once by rc_csr_tiles_build
 * (rc_csr_tiles_bytes(out, in) bytes, enough for either slice width): for every 64 rows and
 * slice of 128 columns (density >= 1/8) or 256 (below), the rows in blocks of 4 of about equal entry counts in the slice, with their counts and offsets; with
 * them the column-blocked panels run 4 rows at a time without finding slice ends.  They
 * describe the structure only (the values and indices are still read from the CSR arrays):
 * indptr and indices must not change after the build.  They open with the out, in and nnz
 * they were built for and the slice width, and end with indptr[64 t] of every tile t as built;
 * a call whose weight differs in any of these (or whose headers claim another width than its
 * density picks) returns RC_ERR_ARG, so another weight's tiles cannot send the kernel outside
 * the caller's nnz entries.  Edits of indptr inside a tile or of indices are not detected
 * (wrong results, or columns outside x: the caller's arrays are trusted, as without tiles).
 * rc_csr_tiles_bytes returns -1 for in >= 2^25 (offsets within a tile are int32) or a size
 * past int64; rc_csr_tiles_build (nnz = the length of indices) checks indptr (starts at 0,
 * non-decreasing, ends at nnz) and the indices (in range, increasing within a row) and
 * returns RC_ERR_ARG otherwise. */
#define RC_SPCHK_INDPTR_START 1 /* indptr[0] != 0                                      */
#define RC_SPCHK_INDPTR_ORDER 2 /* indptr[where + 1] < indptr[where]                   */
#define RC_SPCHK_INDPTR_END 3   /* indptr[out] != nnz                                  */
#define RC_SPCHK_INDEX_ORDER 4  /* indices[where] <= indices[where - 1] within a row   */
#define RC_SPCHK_INDEX_RANGE 5  /* indices[where] < 0 or >= in_features (N:M: >= m)   */
#define RC_SP_COLBLOCK_AUTO -1
#define RC_SP_COLBLOCK_OFF 0
#define RC_SP_COLBLOCK_ON 1

int rc_csr_check(const void *indptr, int indptr_bytes, long long out_features, const void *indices,
                 int index_type, long long nnz, long long in_features, long long *where);
int rc_nm_check(const uint8_t *indices, long long rows, long long row_len, int n, int m, long long *where);
long long rc_csr_bmask_blocks(long long in_features);
int rc_csr_bmask_build(const void *indptr, int indptr_bytes, long long out_features, const void *indices,
                       int index_type, long long in_features, uint16_t *bmask);
long long rc_csr_tiles_bytes(long long out_features, long long in_features);
int rc_csr_tiles_build(const void *indptr, int indptr_bytes, long long out_features, const void *indices,
                       int index_type, long long in_features, long long nnz, void *tiles);
long long rc_spmm_workspace_size(long long batch, long long in_features);
int rc_spmm_csr_f32(const float *x, long long batch, long long in_features, long long out_features,
                    const void *indptr, int indptr_bytes, const void *indices, int index_type,
                    const float *values, const float *bias, const uint16_t *bmask, const void *tiles,
                    int colblock, float *y, void *workspace, int isa, int threads);
int rc_spmm_nm_f32(const float *x, long long batch, long long in_features, long long out_features,
                   const float *values, const uint8_t *indices, int n, int m, const float *bias,
                   int colblock, float *y, void *workspace, int isa, int threads);

/* Sliced-ELLPACK form of a CSR weight for batch 1 (SELL-16-sigma; Kreutzer et al., SIAM J. Sci.
 * Comput. 36(5), 2014): rows sorted by length (longest first, then by row) inside windows of
 * RC_SP_SELL_WINDOW rows and cut into slices of RC_SP_SELL_C; slice s stores its rows' entries
 * step-major, entry p of lane r at [off[s] + RC_SP_SELL_C * p + r], so one step is a vector of
 * RC_SP_SELL_C rows and needs no horizontal sum.  Lanes past a row's length hold column 0 and
 * value 0 and are masked off (never 0 * inf).  Built once: rc_csr_sell_layout fills off, rows,
 * lens and returns the entry count (off[nslices]); rc_csr_sell_fill copies indices and / or
 * values into slice order (values again whenever they change: the form holds a copy). */
#define RC_SP_SELL_C 16
#define RC_SP_SELL_WINDOW 256
typedef struct {
    long long nslices;     /* ceil(out / RC_SP_SELL_C)                                      */
    const long long *off;  /* [nslices + 1] first entry of each slice                        */
    const int32_t *rows;   /* [nslices * C] output row of each lane, -1 past out_features    */
    const int32_t *lens;   /* [nslices * C] entries of each lane, non-increasing in a slice  */
    const void *indices;   /* [off[nslices]] RC_UINT16 or RC_INT32 columns, step-major       */
    int index_type;
    const float *values;   /* [off[nslices]] step-major                                      */
} rc_csr_sell;
long long rc_csr_sell_slices(long long out_features);
long long rc_csr_sell_layout(const void *indptr, int indptr_bytes, long long out_features, long long *off,
                             int32_t *rows, int32_t *lens);
int rc_csr_sell_fill(const void *indptr, int indptr_bytes, long long out_features, const void *indices,
                     int index_type, const float *values, const rc_csr_sell *layout, void *sell_indices,
                     int sell_index_type, float *sell_values);
int rc_spmv_csr_sell_f32(const float *x, long long in_features, long long out_features, const rc_csr_sell *sell,
                         const float *bias, float *y, int isa, int threads);

/* ---- factored (low-rank) Linear (csrc/lowrank/) ---------------------------------------- *
 *   h[b, j] = sum_k v[j, k] x[b, k]           (j < r)
 *   y[b, i] = bias[i] + sum_j u[i, j] h[b, j] (i < m)
 * x [batch, n], v [r, n], u [m, r], bias [m] or NULL, y [batch, m]: float32, row-major.
 * rc_lowrank_pack_f32 packs v^T and u^T once into rc_lowrank_packed_size(n, r, m) floats
 * (panels of RC_LOWRANK_NR columns, zero padded).  rc_lowrank_f32 takes both the packed
 * factors and v itself (kept alive with them): batch 1 reads v's rows directly (r dot
 * products), larger batches the panels, in row blocks whose h stays in cache between the
 * two products.  Float sums
 * in any order: every variant's error is within
 * gamma_n (|x||v|^T)|u|^T + gamma_{r+1} (|h||u|^T + |bias|), element-wise (docs/lowrank.md).
 * Scratch: rc_lowrank_workspace_size(batch, r) bytes; when that is 0 (batch 1, r <= 2048:
 * h lives on the stack) workspace may be NULL.  A batch-1 call puts 24 KB on the calling
 * thread's stack (h, and a copy of an x of up to 4096 floats that does not start a cache
 * line); v and the packed factors stream fastest from 64-byte-aligned addresses. */
#define RC_LOWRANK_NR 32
long long rc_lowrank_packed_size(long long n, long long r, long long m);
long long rc_lowrank_workspace_size(long long batch, long long r);
int rc_lowrank_pack_f32(const float *v, const float *u, long long n, long long r, long long m,
                        float *packed);
int rc_lowrank_f32(const float *x, long long batch, long long n, long long r, long long m, const float *v,
                   const float *packed, const float *bias, float *y, void *workspace, int isa,
                   int threads);
/* The threads a batch-1 rc_lowrank_f32 call with this `threads` argument runs on (its
 * rank split: 1 below 2 * 65536 factor elements r (n + m) or 8 rows of h per thread); -1
 * for a size below 1. */
int rc_lowrank_batch1_threads(long long n, long long r, long long m, int threads);

/* int8 factored Linear (QuantizedLowRank): the composition of two rc_qgemm calls in one,
 *   h_q = qgemm(x_q, v_q^T; za = x_zero_point, epilogue epi_h)  -> uint8 [batch, r]
 *   y   = qgemm(h_q, u_q^T; za = h_zero_point, epilogue epi_y)  -> float32 [batch, m]
 * with the same micro-tiles and epilogues, so the result is identical to the two calls.
 * v_q^T [n, r] and u_q^T [r, m] are packed by rc_qgemm_pack_b (zero point 0).  The
 * zero-point corrections of both products depend on the layer only: rc_lowrank_q8_prepare
 * computes them once into `cols` (rc_lowrank_q8_cols_size(r, m) int32) and, when
 * signed_packed is not NULL, a copy of both packed factors as signed weights
 * (rc_lowrank_q8_signed_size(n, r, m) bytes) for the AVX-512 VNNI block.  epi_h must write
 * uint8 (it is the second product's input); epi_y must write float32 (RC_EPI_DEQUANT,
 * without row_scale).  Row blocks run h then y while h is in cache; on AVX-512 VNNI, given
 * signed_packed, with the activations as vpdpbusd's unsigned operand (no row packing) and
 * tiles shaped for the short products (csrc/lowrank/lowrank_q8_vnni.c; without
 * signed_packed, or with an epi_y with fbias or relu, qgemm's tiles), the same values bit
 * for bit.  Scratch: rc_lowrank_q8_workspace_size. */
long long rc_lowrank_q8_cols_size(long long r, long long m);
long long rc_lowrank_q8_signed_size(long long n, long long r, long long m);
int rc_lowrank_q8_prepare(long long n, long long r, long long m, int32_t x_zero_point, int32_t h_zero_point,
                          const int32_t *col_sums_v, const int32_t *col_sums_u, const void *packed_v,
                          const void *packed_u, int32_t *cols, void *signed_packed);
long long rc_lowrank_q8_workspace_size(long long batch, long long n, long long r);
int rc_lowrank_q8(const uint8_t *x, long long batch, long long n, long long r, long long m,
                  const void *packed_v, const void *packed_u, const int32_t *cols, const void *signed_packed,
                  const rc_epilogue *epi_h, const rc_epilogue *epi_y, float *y, void *workspace, int isa,
                  int threads);
/* The same from float32 x [batch, n]: each row block is first quantized to uint8 codes,
 * x_q = saturate(round_half_even(x / x_scale) + x_zero_point) (rc_quantize_f32's rule, bit
 * for bit), in the workspace, by the thread that then multiplies it.  x_zero_point must be
 * the one given to rc_lowrank_q8_prepare (its corrections depend on it). */
int rc_lowrank_q8_f32(const float *x, float x_scale, int32_t x_zero_point, long long batch, long long n,
                      long long r, long long m, const void *packed_v, const void *packed_u, const int32_t *cols,
                      const void *signed_packed, const rc_epilogue *epi_h, const rc_epilogue *epi_y, float *y,
                      void *workspace, int isa, int threads);

/* ---- transformer element-wise / row ops, float32 (csrc/nnops/) ------------------------- *
 * The NumPy definitions are refcompress.kernels.nnops (erf by A&S 7.1.26, GELU in its erf
 * form, LayerNorm, softmax); these kernels match them within the element-wise bounds
 * derived there (docs/kernels.md).  y may be the same buffer as x.
 *
 * gelu: y[i] = x/2 (1 + erf(x / sqrt 2)) for n elements, erfc(|x|/sqrt 2) = P(t) exp(-x^2/2)
 *   (A&S 7.1.26) with a polynomial exp (no libm call per element).
 * layer_norm: rows of h elements, s = x (+ residual, one float32 add, when not NULL),
 *   y = (s - mean) / sqrt(var + eps) * weight + bias; mean and the two-pass (biased)
 *   variance are accumulated in double.
 * softmax: rows of n elements, z = x + mask (one float32 add; mask NULL: z = x), mask row
 *   of x row r = (r / mask_div) % mask_rows;  y = exp(z - max z) / sum exp(z - max z).
 *   A row whose z are all -inf gives zeros; a row with a NaN or a +inf gives NaN. */
int rc_gelu_f32(const float *x, float *y, long long n, int isa, int threads);
int rc_layer_norm_f32(const float *x, const float *residual, const float *weight, const float *bias,
                      double eps, float *y, long long rows, long long h, int isa, int threads);
int rc_softmax_f32(const float *x, const float *mask, long long mask_rows, long long mask_div,
                   float *y, long long rows, long long n, int isa, int threads);

/* ---- fused multi-head self-attention, float32 (csrc/attention/) ------------------------ *
 * q, k, v, ctx [B, S, H] row-major, heads interleaved (head h is columns h*d .. h*d + d - 1,
 * d = H / heads); mask: NULL or an additive [B, S] applied to the keys.  For every b, h, i:
 *   z_j = fl(fl(<q[b,i,h], k[b,j,h]>) * scale) (+ mask[b, j], one float32 add)
 *   ctx[b, i, h] = sum_j exp(z_j - max z) v[b, j, h] / sum_j exp(z_j - max z)
 * (the softmax semantics of rc_softmax_f32: a row whose z are all -inf gives zeros, a row
 * with a NaN or a +inf gives NaN).  OpenMP over (batch, head) pairs; each pair's K is
 * transposed into the per-thread scratch: rc_attention_workspace_size(S, H, heads, threads)
 * bytes (any alignment), threads resolved as in the call.  The NumPy definition and the
 * element-wise error bound are refcompress.kernels.attention (docs/kernels.md). */
long long rc_attention_workspace_size(long long S, long long H, long long heads, int threads);
int rc_attention_f32(const float *q, const float *k, const float *v, const float *mask, float scale,
                     float *ctx, long long B, long long S, long long H, long long heads, void *workspace,
                     int isa, int threads);
