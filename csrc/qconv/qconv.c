/* Quantized convolution drivers: dense via the packed qgemm machinery with a block im2col
 * (NCHW or NHWC at the interface; a block of patch rows at a time, NHWC inside), depthwise
 * via a direct kernel (NCHW). */
#include <string.h>

#include "../qgemm/qgemm.h"
#include "qconv.h"

#define A64(n) (((n) + 63) / 64 * 64)

static int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
    return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

static int bad_geometry(long long C, long long H, long long W, long long KH, long long KW, long long sh,
                        long long sw, long long ph, long long pw, long long dh, long long dw) {
    /* Every argument at most 2^30 (far beyond any layer), so that what is formed from them
     * (in + 2 p, d (k - 1), OH * OW < 9 * 2^60) cannot overflow int64; KH * KW * C is
     * bounded by the workspace size function before it is formed. */
    const long long big = 1LL << 30;
    if (C > big || H > big || W > big || KH > big || KW > big || sh > big || sw > big || ph > big || pw > big ||
        dh > big || dw > big)
        return 1;
    return C < 1 || H < 1 || W < 1 || KH < 1 || KW < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || dh < 1 ||
           dw < 1 || out_size(H, KH, sh, ph, dh) < 1 || out_size(W, KW, sw, pw, dw) < 1;
}

static int out_bytes_of(const rc_epilogue *e) {
    return (e->kind == RC_EPI_REQUANT_FLOAT || e->kind == RC_EPI_REQUANT_FIXED) ? 1 : 4;
}


void rc_transpose_block(const uint8_t *src, int64_t ls, int64_t rows, int64_t cols, uint8_t *dst, int64_t ld,
                        uint8_t xor_mask) {
#if RC_X86
    /* Whole tiles only: a ragged last row or column of tiles is moved back to end at the
     * edge, overlapping the one before (those bytes are written twice, the same each time),
     * which beat scalar edges on the short, ragged blocks of rc_qconv2d. */
    if (rows >= 16 && cols >= 16) {
        for (int64_t c0 = 0; c0 < cols; c0 += 16)
            for (int64_t r0 = 0; r0 < rows; r0 += 16) {
                const int64_t c = c0 + 16 <= cols ? c0 : cols - 16, r = r0 + 16 <= rows ? r0 : rows - 16;
                rc_transpose_tile16(src + r * ls + c, ls, dst + c * ld + r, ld, xor_mask);
            }
        return;
    }
#endif
    for (int64_t c = 0; c < cols; ++c)
        for (int64_t r = 0; r < rows; ++r) dst[c * ld + r] = src[r * ls + c] ^ xor_mask;
}

/* [C, HW] -> [HW, C] for one image, flipping uint8 to int8 on the way in when asked.  16 x
 * 16 tiles (SSE2 on x86), scalar at the ragged edges (threads share the column strips, so
 * no tile may overlap another's). */
void rc_transpose_bytes(const uint8_t *src, int64_t rows, int64_t cols, uint8_t *dst, uint8_t xor_mask) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t c0 = 0; c0 < cols; c0 += 16)
        for (int64_t r0 = 0; r0 < rows; r0 += 16) {
#if RC_X86
            if (c0 + 16 <= cols && r0 + 16 <= rows) {
                rc_transpose_tile16(src + r0 * cols + c0, cols, dst + c0 * rows + r0, rows, xor_mask);
                continue;
            }
#endif
            for (int64_t c = c0; c < cols && c < c0 + 16; ++c)
                for (int64_t r = r0; r < rows && r < r0 + 16; ++r) dst[c * rows + r] = src[r * cols + c] ^ xor_mask;
        }
}

static void transpose_block4(const uint32_t *src, int64_t ls, int64_t rows, int64_t cols, uint32_t *dst,
                             int64_t ld) {
    for (int64_t c0 = 0; c0 < cols; c0 += 16)
        for (int64_t r0 = 0; r0 < rows; r0 += 16)
            for (int64_t c = c0; c < cols && c < c0 + 16; ++c)
                for (int64_t r = r0; r < rows && r < r0 + 16; ++r) dst[c * ld + r] = src[r * ls + c];
}

void rc_transpose_4(const uint32_t *src, int64_t rows, int64_t cols, uint32_t *dst) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t c0 = 0; c0 < cols; c0 += 16)
        transpose_block4(src + c0, cols, rows, cols - c0 < 16 ? cols - c0 : 16, dst + c0 * rows, rows);
}

static void transpose_out(const void *src, int64_t P, int64_t OC, void *dst, int bytes) {
    if (bytes == 1) rc_transpose_bytes((const uint8_t *)src, P, OC, (uint8_t *)dst, 0);
    else rc_transpose_4((const uint32_t *)src, P, OC, (uint32_t *)dst);
}

int rc_transpose_images(const void *src, int elem_bytes, long long N, long long rows, long long cols, void *dst,
                        int threads) {
    if (N < 0 || rows < 0 || cols < 0 || (elem_bytes != 1 && elem_bytes != 4)) return RC_ERR_ARG;
    if (N * rows * cols == 0) return RC_OK;
    if (!src || !dst) return RC_ERR_ARG;
    (void)threads;
#ifdef _OPENMP
    const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt) if (nt > 1 && N * rows * cols >= RC_MIN_PARALLEL_WORK)
#endif
    for (int64_t n = 0; n < N; ++n) {
        const int64_t at = n * rows * cols * elem_bytes;
        transpose_out((const uint8_t *)src + at, rows, cols, (uint8_t *)dst + at, elem_bytes);
    }
    return RC_OK;
}

/* ---- dense ------------------------------------------------------------------------------ */

/* a * b and a + b for workspace sizes, -1 when an operand is negative or the result would
 * pass 2^62 (far beyond any real buffer, so the size functions stay overflow-free) */
static int64_t size_mul(int64_t a, int64_t b) {
    return a < 0 || b < 0 || (b > 0 && a > ((int64_t)1 << 62) / b) ? -1 : a * b;
}
static int64_t size_add(int64_t a, int64_t b) {
    return a < 0 || b < 0 || a > ((int64_t)1 << 62) - b ? -1 : a + b;
}

/* One thread's slot of rc_qconv2d, 64-byte aligned parts: a block's packed patch rows and
 * their sums, the window (rc_patch_window: its rows, pixel sums, tags and slots), and the
 * block's [rows, OC] results before NCHW output transposes them.  -1 on overflow (the
 * arguments are at most 2^31 here, so rc_patch_span cannot overflow). */
static int64_t dense_slot_bytes(int64_t C, int64_t KH, int64_t KW, int64_t OW, int64_t sw, int64_t dw, int64_t OC,
                                int out_bytes) {
    const int64_t big = (int64_t)1 << 31; /* far beyond any layer */
    if (C > big || KH > big || KW > big || OW > big || sw > big || dw > big || OC > big) return -1;
    const int64_t BR = RC_QCONV_BLOCK_ROWS, span = rc_patch_span(OW, KW, sw, dw);
    /* -1 (overflow) must stay -1 through every step: (-1 + 3) / 4 would be 0 */
    const int64_t K = size_mul(size_mul(KH, KW), C);
    if (K < 0 || K > INT32_MAX) return -1; /* the int32 accumulators bound K far below this */
    const int64_t K4 = (K + 3) / 4 * 4;
    const int64_t win = size_mul(KH, span);
    const int64_t parts[6] = {size_mul(BR, K4), BR * 4, size_mul(win, C), size_mul(win, 4), size_mul(KH, 16),
                              size_mul(BR * out_bytes, OC)};
    int64_t total = 0;
    for (int i = 0; i < 6; ++i) {
        if (parts[i] < 0) return -1;
        total = size_add(total, size_add(parts[i], 63) / 64 * 64);
        if (total < 0) return -1;
    }
    return total;
}

/* The call's zero-point column terms zbp and colterm, [Npad] each, shared by the threads. */
static int64_t dense_shared_bytes(int64_t OC) { return 2 * A64(rc_qgemm_npad(OC) * 4); }

long long rc_qconv2d_workspace_size(long long C, long long KH, long long KW, long long OW, long long sw,
                                    long long dw, long long OC, int out_bytes, int slots) {
    if (C < 1 || KH < 1 || KW < 1 || OW < 1 || sw < 1 || dw < 1 || OC < 1 || slots < 1 ||
        (out_bytes != 1 && out_bytes != 4))
        return -1;
    const int64_t slot = dense_slot_bytes(C, KH, KW, OW, sw, dw, OC, out_bytes);
    return slot < 0 ? -1 : size_add(size_add(size_mul(slots, slot), dense_shared_bytes(OC)), 64);
}

int rc_qconv2d(const void *x, int x_type, long long N, long long C, long long H, long long W, long long OC,
               long long KH, long long KW, long long sh, long long sw, long long ph, long long pw,
               long long dh, long long dw, int32_t x_zero_point, const void *packed, const int32_t *col_sums,
               const int32_t *w_zero_point, int w_zp_per_channel, const rc_epilogue *epi, void *out,
               void *workspace, long long workspace_bytes, int layout, int isa, int threads) {
    if (N < 0 || OC < 1 || bad_geometry(C, H, W, KH, KW, sh, sw, ph, pw, dh, dw)) return RC_ERR_ARG;
    if (layout != RC_LAYOUT_NCHW && layout != RC_LAYOUT_NHWC) return RC_ERR_ARG;
    if (!rc_activation_ok(x_type, x_zero_point) || rc_check_epilogue(epi) != RC_OK) return RC_ERR_ARG;
    /* rows are the pixels of one block here, so a per-row scale has no meaning */
    if (epi->row_scale) return RC_ERR_ARG;
    if (N == 0) return RC_OK;
    if (!x || !packed || !col_sums || !w_zero_point || !out || !workspace) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_QCONV_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    rc_qgemm_tile_fn tile;
    rc_epi_row_fn row;
    rc_qgemm_pick(v, &tile, &row);
    (void)row;

    const int64_t OH = out_size(H, KH, sh, ph, dh), OW = out_size(W, KW, sw, pw, dw);
    const int bytes = out_bytes_of(epi);
    /* -1 also when KH * KW * C would pass the int32 bound: checked before K is formed */
    const int64_t slot = dense_slot_bytes(C, KH, KW, OW, sw, dw, OC, bytes), shared = dense_shared_bytes(OC);
    if (slot < 0) return RC_ERR_ARG;
    const int64_t P = OH * OW, K = KH * KW * C, K4 = rc_qgemm_k4(K), panels = rc_qgemm_npad(OC) / RC_QGEMM_NR;
    const int64_t room = workspace_bytes - 64 - shared, slots = room >= slot ? room / slot : 0;
    if (slots < 1) return RC_ERR_ARG;
    uint8_t *base = (uint8_t *)workspace + ((64 - ((uintptr_t)workspace & 63)) & 63);
    int32_t *zbp = (int32_t *)(void *)base;
    int32_t *colterm = (int32_t *)(void *)(base + A64(rc_qgemm_npad(OC) * 4));
    const int flip = x_type == RC_UINT8;
    const int32_t za_s = flip ? x_zero_point - 128 : x_zero_point;
    const int nhwc = layout == RC_LAYOUT_NHWC;
    const int64_t BR = RC_QCONV_BLOCK_ROWS, span = rc_patch_span(OW, KW, sw, dw);
    const rc_patch_src src0 = {NULL, nhwc, (uint8_t)(flip ? 0x80 : 0), (int8_t)za_s, C, H, W, KH, KW, sh, sw, ph,
                               pw, dh, dw, OW, K4};
    int nt = 1;
#ifdef _OPENMP
    nt = threads > 0 ? threads : omp_get_max_threads();
#else
    (void)threads;
#endif
    if (nt > slots) nt = (int)slots;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1 && N * P * K * OC >= RC_MIN_PARALLEL_WORK)
#endif
    {
        int t = 0, team = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        team = omp_get_num_threads();
#endif
        rc_qgemm_prep_cols(K, OC, za_s, col_sums, w_zero_point, w_zp_per_channel, zbp, colterm);
        uint8_t *mine = base + shared + t * slot;
        int8_t *ap = (int8_t *)mine;
        int32_t *ra = (int32_t *)(void *)(mine + A64(BR * K4));
        rc_patch_window win;
        win.rows = (int8_t *)ra + A64(BR * 4);
        win.sums = (int32_t *)(void *)(win.rows + A64(KH * span * C));
        win.tag = (int64_t *)(void *)((uint8_t *)win.sums + A64(KH * span * 4));
        win.slot = win.tag + KH;
        uint8_t *stage = (uint8_t *)win.tag + A64(KH * 16);
        /* This thread's exact share of each image's pixels, cut as qgemm cuts a row share:
         * into tiles of equal height (6 or fewer rows), grouped into blocks of at most
         * BR / MR tiles equal in tiles. */
        const int64_t r0 = P * t / team, rows = P * (t + 1) / team - r0;
        const int64_t tiles = (rows + RC_QGEMM_MR - 1) / RC_QGEMM_MR;
        const int64_t h = tiles ? rows / tiles : 0, taller = tiles ? rows % tiles : 0;
        const int64_t mblocks = (tiles + BR / RC_QGEMM_MR - 1) / (BR / RC_QGEMM_MR);
#define TILE_ROW(i) ((i) * h + ((i) < taller ? (i) : taller))
        for (int64_t n = 0; n < N && tiles > 0; ++n) {
            rc_patch_src src = src0;
            src.img = (const uint8_t *)x + n * C * H * W;
            win.span = 0;
            win.iw0 = 0; /* unread while span is 0; set so that no checker sees it undefined */
            uint8_t *out_n = (uint8_t *)out + n * OC * P * bytes;
            for (int64_t mb = 0; mb < mblocks; ++mb) {
                const int64_t i0 = tiles * mb / mblocks, i1 = tiles * (mb + 1) / mblocks;
                const int64_t b0 = r0 + TILE_ROW(i0), b1 = r0 + TILE_ROW(i1);
                rc_qconv_pack_block(&src, &win, b0, b1, ap, ra);
                const rc_qgemm_ctx ctx = {epi, ra, zbp, colterm, nhwc ? out_n + b0 * OC * bytes : stage, OC};
                for (int64_t p = 0; p < panels; ++p)
                    for (int64_t i = i0; i < i1; ++i)
                        tile(&ctx, ap, K4, TILE_ROW(i) - TILE_ROW(i0), (int)(TILE_ROW(i + 1) - TILE_ROW(i)),
                             (const uint8_t *)packed + p * K4 * RC_QGEMM_NR, p * RC_QGEMM_NR);
                /* NCHW: the block's [rows, OC] results into columns [b0, b1) of [OC, P] */
                if (nhwc) continue;
                if (bytes == 1) rc_transpose_block(stage, OC, b1 - b0, OC, out_n + b0, P, 0);
                else transpose_block4((const uint32_t *)(void *)stage, OC, b1 - b0, OC, (uint32_t *)(void *)out_n + b0, P);
            }
        }
#undef TILE_ROW
    }
    return RC_OK;
}

/* ---- depthwise -------------------------------------------------------------------------- */

long long rc_qdwconv2d_workspace_size(long long C, long long H, long long W, long long KH, long long KW,
                                      long long pad_h, long long pad_w) {
    /* padded planes [C, H + 2 pad_h, W + 2 pad_w] (int16, or int32 row pairs for the
     * AVX-512 stride-1 kernel) and int32 weights [C, KH*KW] */
    return A64(C * (H + 2 * pad_h) * (W + 2 * pad_w) * 4) + A64(C * KH * KW * 4) + 64;
}

void rc_dw_plane_portable(const rc_dw_args *d, int64_t c) {
    int32_t bias;
    const rc_epilogue e = rc_channel_epilogue(d->epi, c, &bias);
    const int16_t *xp = d->xp + c * d->PH * d->PW;
    const int32_t *wz = d->wz + c * d->KH * d->KW;
    uint8_t *out = d->out + c * d->OH * d->OW * d->out_bytes;
    for (int64_t oh = 0; oh < d->OH; ++oh)
        for (int64_t ow = 0; ow < d->OW; ++ow) {
            uint32_t acc = (uint32_t)bias;
            for (int64_t kh = 0; kh < d->KH; ++kh)
                for (int64_t kw = 0; kw < d->KW; ++kw)
                    acc += (uint32_t)((int32_t)xp[(oh * d->sh + kh * d->dh) * d->PW + ow * d->sw + kw * d->dw] *
                                      wz[kh * d->KW + kw]);
            rc_epi_store_one(&e, acc, oh, ow, out, d->OW);
        }
}

int rc_qdwconv2d(const void *x, int x_type, long long N, long long C, long long H, long long W, long long KH,
                 long long KW, long long sh, long long sw, long long ph, long long pw, long long dh, long long dw,
                 int32_t x_zero_point, const int8_t *w, const int32_t *w_zero_point, int w_zp_per_channel,
                 const rc_epilogue *epi, void *out, void *workspace, int isa, int threads) {
    if (N < 0 || bad_geometry(C, H, W, KH, KW, sh, sw, ph, pw, dh, dw)) return RC_ERR_ARG;
    if (!rc_activation_ok(x_type, x_zero_point) || rc_check_epilogue(epi) != RC_OK) return RC_ERR_ARG;
    if (N == 0) return RC_OK;
    if (!x || !w || !w_zero_point || !out || !workspace) return RC_ERR_ARG;
    const int v = rc_isa_resolve(isa, RC_QDW_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
    /* one direct kernel per vector width; VNNI fuses the stride-1 kernel's multiply-adds;
     * VBMI runs 3x3 / stride 1 as byte quads (other geometries: the VNNI kernels) */
    rc_dw_plane_fn plane = rc_dw_plane_portable;
    int raw = 0; /* the kernel reads the uint8 / int8 plane itself */
#if RC_X86
    if (v >= RC_ISA_AVX512) {
        plane = rc_dw_plane_avx512;
        if (rc_dw_raw_ok(sw, KH, KW))
            plane = v >= RC_ISA_AVX512_VNNI ? rc_dw_plane_raw_avx512_vnni : rc_dw_plane_raw_avx512, raw = 1;
        if (v == RC_ISA_AVX512_VBMI && rc_dw_vbmi3x3_ok(KH, KW, sh, sw, dh, dw)) plane = rc_dw_plane_vbmi3x3, raw = 1;
    }
#endif
    const int64_t OH = out_size(H, KH, sh, ph, dh), OW = out_size(W, KW, sw, pw, dw);
    const int64_t PH = H + 2 * ph, PW = W + 2 * pw, T = KH * KW, HW = H * W;
    const int bytes = out_bytes_of(epi);
    int16_t *xp = (int16_t *)workspace;
    int32_t *wz = (int32_t *)((uint8_t *)workspace + A64(C * PH * PW * 4));
    for (int64_t i = 0; i < C * T; ++i) wz[i] = (int32_t)w[i] - w_zero_point[w_zp_per_channel ? i / T : 0];
    (void)threads;
#ifdef _OPENMP
    /* at most C threads: the raw kernel's per-thread buffers live in the C plane slots */
    const int nt0 = threads > 0 ? threads : omp_get_max_threads();
    const int nt = nt0 < C ? nt0 : (int)C;
#pragma omp parallel num_threads(nt) if (nt > 1 && N * OH * OW * C * T >= RC_MIN_PARALLEL_WORK)
#endif
    if (raw) {
        /* threads over (image, channel) planes, each building its row-pair buffer in its
         * own plane slot (L1-resident, reused plane after plane) */
#ifdef _OPENMP
        int16_t *mine = xp + (int64_t)omp_get_thread_num() * PH * PW * 2;
#pragma omp for schedule(static)
#else
        int16_t *mine = xp;
#endif
        for (int64_t i = 0; i < N * C; ++i) {
            const int64_t n = i / C;
            const rc_dw_args d = {mine, wz, epi, (uint8_t *)out + n * C * OH * OW * bytes, bytes,
                                  C, PH, PW, KH, KW, sh, sw, dh, dw, OH, OW,
                                  (const uint8_t *)x + n * C * HW, x_type == RC_INT8, x_zero_point, H, W, ph, pw,
                                  w, w_zero_point, w_zp_per_channel};
            plane(&d, i - n * C);
        }
    } else {
        for (int64_t n = 0; n < N; ++n) {
            const rc_dw_args d = {xp, wz, epi, (uint8_t *)out + n * C * OH * OW * bytes, bytes,
                                  C, PH, PW, KH, KW, sh, sw, dh, dw, OH, OW,
                                  (const uint8_t *)x + n * C * HW, x_type == RC_INT8, x_zero_point, H, W, ph, pw,
                                  w, w_zero_point, w_zp_per_channel};
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t c = 0; c < C; ++c) {
                /* this channel's padded plane of (x - zx); the padding is 0 = (zx - zx) */
                int16_t *dst = xp + c * PH * PW;
                const uint8_t *src = (const uint8_t *)x + (n * C + c) * HW;
                for (int64_t i = 0; i < ph * PW; ++i) dst[i] = 0;
                for (int64_t i = (ph + H) * PW; i < PH * PW; ++i) dst[i] = 0;
                for (int64_t h = 0; h < H; ++h) {
                    int16_t *r = dst + (ph + h) * PW;
                    for (int64_t j = 0; j < pw; ++j) r[j] = r[pw + W + j] = 0;
                    if (x_type == RC_UINT8)
                        for (int64_t j = 0; j < W; ++j) r[pw + j] = (int16_t)((int32_t)src[h * W + j] - x_zero_point);
                    else
                        for (int64_t j = 0; j < W; ++j) r[pw + j] = (int16_t)((int32_t)(int8_t)src[h * W + j] - x_zero_point);
                }
                plane(&d, c);
            }
        }
    }
    return RC_OK;
}

/* ---- direct: 1x1 without padding, 3x3 with padding 1 (stride 1, groups 1) ------------------- */

#define CD_MR RC_QCONV_DIRECT_MR
#define CD_PB RC_QCONV_DIRECT_PB

long long rc_qconv_direct_packed_size(long long OC, long long C, int taps) {
    if (OC < 0 || C < 0 || (taps != 1 && taps != 9)) return -1;
    return (OC + CD_MR - 1) / CD_MR * CD_MR * ((C + 3) / 4 * 4) * taps;
}

int rc_qconv_direct_pack(const int8_t *w, long long OC, long long C, int taps, int8_t *packed, int32_t *w_sums) {
    if (OC < 1 || C < 1 || (taps != 1 && taps != 9) || !w || !packed || !w_sums) return RC_ERR_ARG;
    const int64_t G = (C + 3) / 4, blocks = (OC + CD_MR - 1) / CD_MR;
    for (int64_t b = 0; b < blocks; ++b)
        for (int64_t t = 0; t < taps; ++t)
            for (int64_t g = 0; g < G; ++g)
                for (int64_t r = 0; r < CD_MR; ++r)
                    for (int64_t i = 0; i < 4; ++i) {
                        const int64_t o = b * CD_MR + r, c = 4 * g + i;
                        packed[((b * taps * G + t * G + g) * CD_MR + r) * 4 + i] =
                            (o < OC && c < C) ? w[(o * C + c) * taps + t] : 0;
                    }
    for (int64_t o = 0; o < OC; ++o) {
        int64_t s = 0;
        for (int64_t k = 0; k < C * taps; ++k) s += w[o * C * taps + k];
        w_sums[o] = (int32_t)(uint32_t)s; /* used modulo 2^32 */
    }
    return RC_OK;
}

/* One thread's scratch, 64-byte aligned parts: the interleaved band, each position's
 * channel sum, a block's nine-tap sums, and (NHWC) a block's [OC, PB] results of up to 4
 * bytes each. */
static int64_t cd_slot_bytes(int64_t C, int64_t H, int64_t W, int64_t OC, int taps, int nhwc) {
    const int64_t L = rc_direct_positions(rc_direct_band_blocks(C, H * W, W, taps), W, taps);
    return A64((C + 3) / 4 * 4 * L) + A64(L * 4) + A64(CD_PB * 4) + (nhwc ? OC * CD_PB * 4 : 0);
}

long long rc_qconv_direct_workspace_size(long long C, long long H, long long W, long long OC, int taps, int layout,
                                         int slots) {
    if (C < 1 || H < 1 || W < 1 || OC < 1 || slots < 1 || (taps != 1 && taps != 9) ||
        (layout != RC_LAYOUT_NCHW && layout != RC_LAYOUT_NHWC))
        return -1;
    return slots * cd_slot_bytes(C, H, W, OC, taps, layout == RC_LAYOUT_NHWC) + 64;
}

int rc_qconv_direct(const void *x, int x_type, long long N, long long C, long long H, long long W, long long OC,
                    int taps, int32_t x_zero_point, const int8_t *packed, const int32_t *w_sums,
                    const int32_t *w_zero_point, int w_zp_per_channel, const rc_epilogue *epi, void *out,
                    void *workspace, long long workspace_bytes, int layout, int stream, int isa, int threads) {
    if (N < 0 || C < 1 || H < 1 || W < 1 || OC < 1 || (taps != 1 && taps != 9)) return RC_ERR_ARG;
    if (layout != RC_LAYOUT_NCHW && layout != RC_LAYOUT_NHWC) return RC_ERR_ARG;
    if (!rc_activation_ok(x_type, x_zero_point) || rc_check_epilogue(epi) != RC_OK) return RC_ERR_ARG;
    /* rows are output channels here, so per-row scales and a per-column float bias have no
     * meaning (qconv2d's Dequantize takes neither) */
    if (epi->row_scale || epi->fbias) return RC_ERR_ARG;
    if (N == 0) return RC_OK;
    if (!x || !packed || !w_sums || !w_zero_point || !out || !workspace) return RC_ERR_ARG;
    const int64_t P = H * W;
    const int v = rc_isa_resolve(isa, RC_QCONV_VARIANTS);
    if (v < 0) return RC_ERR_ISA;
#if RC_X86
    if (v != RC_ISA_AVX512_VNNI) return RC_ERR_ISA;
    const int nhwc = layout == RC_LAYOUT_NHWC;
    const int64_t slot = cd_slot_bytes(C, H, W, OC, taps, nhwc);
    const int64_t slots = workspace_bytes > 64 ? (workspace_bytes - 64) / slot : 0;
    if (slots < 1) return RC_ERR_ARG;
    uint8_t *base = (uint8_t *)workspace + ((64 - ((uintptr_t)workspace & 63)) & 63);
    const int bytes = out_bytes_of(epi);
    int any_zw = 0;
    for (int64_t o = 0; o < (w_zp_per_channel ? OC : 1); ++o) any_zw |= w_zero_point[o] != 0;
    const int flip = x_type == RC_INT8;
    const int32_t zxu = flip ? x_zero_point + 128 : x_zero_point;
    /* NHWC keeps the band pass on streamed inputs too: its reads are whole pixel rows in
     * address order, and it measured faster than the block-by-block interleave there
     * (1x1 256->64 @56, N = 8, one thread: 1.72 against 1.88-1.91 ms) */
    const int streamed = stream < 0 ? !nhwc && N * C * P > RC_DIRECT_STREAM_BYTES : stream != 0;
    const int64_t pblocks = (P + CD_PB - 1) / CD_PB, oblocks = (OC + CD_MR - 1) / CD_MR;
    int nt = 1;
#ifdef _OPENMP
    nt = threads > 0 ? threads : omp_get_max_threads();
#endif
    if (nt > slots) nt = (int)slots;
    /* Work items are (image, band of pixel blocks, share of the output-channel blocks).
     * 3x3: as few bands per image as the buffer allows (each band is interleaved once with
     * its halo), more when the images alone do not spread evenly over the threads.  The OC
     * blocks are split only when the bands alone give fewer than 4 items per thread (1x1,
     * one block per band) or fewer than one (3x3). */
    const int64_t most = rc_direct_band_blocks(C, P, W, taps);
    int64_t bands = (pblocks + most - 1) / most;
    while ((N * bands) % nt != 0 && bands < pblocks && N * bands < 4 * nt) ++bands;
    const int64_t want = nt;
    int64_t split = (want + N * bands - 1) / (N * bands);
    if (split > oblocks) split = oblocks;
    if (split < 1) split = 1;
    const int64_t items = N * bands * split;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1 && N * P * C * OC >= RC_MIN_PARALLEL_WORK)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        uint8_t *xb = base + tid * slot;
        const int64_t L = rc_direct_positions(most, W, taps);
        int32_t *chs = (int32_t *)(void *)(xb + A64((C + 3) / 4 * 4 * L));
        int32_t *xsum = (int32_t *)(void *)((uint8_t *)chs + A64(L * 4));
        uint8_t *stage = nhwc ? (uint8_t *)xsum + A64(CD_PB * 4) : NULL;
        int64_t have = -1; /* the (image, band) this thread's buffer holds */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t it = 0; it < items; ++it) {
            const int64_t n = it / (bands * split), band = it / split % bands, s = it % split;
            const rc_direct_args a = {(const uint8_t *)x + n * C * P, flip, zxu, packed, w_sums, w_zero_point,
                                  w_zp_per_channel, any_zw, epi, (uint8_t *)out + n * OC * P * bytes, C, P, OC,
                                  W, taps, streamed, nhwc, stage};
            const int64_t key = n * bands + band, ob0 = s * oblocks / split, ob1 = (s + 1) * oblocks / split;
            rc_qconv_direct_band_avx512_vnni(&a, band * pblocks / bands, (band + 1) * pblocks / bands, ob0, ob1,
                                             key != have, xb, chs, xsum);
            have = key;
        }
    }
    return RC_OK;
#else
    (void)threads; (void)workspace_bytes; (void)stream; (void)layout;
    return RC_ERR_ISA;
#endif
}
