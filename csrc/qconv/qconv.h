/* Internal interface of the quantized convolution drivers and their per-ISA parts. */
#ifndef RC_QCONV_H
#define RC_QCONV_H
#include "../qgemm/qgemm.h"

#define RC_QCONV_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512) | \
                           (1 << RC_ISA_AVX512_VNNI) | (1 << RC_ISA_AVX_VNNI))
/* depthwise alone has a VBMI variant (the Python side runs the other paths' VNNI code); it
 * has no AVX-VNNI one (the Python side runs AVX2's code for it, and AUTO picks AVX2 on a
 * CPU with AVX-VNNI but no AVX-512): its kernel choice tests v >= RC_ISA_AVX512, which
 * RC_ISA_AVX_VNNI's code would pass. */
#define RC_QDW_VARIANTS ((1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512) | \
                         (1 << RC_ISA_AVX512_VNNI) | (1 << RC_ISA_AVX512_VBMI))

/* Depthwise, NCHW throughout (no transposes).  Stride 1 along W on AVX-512: the kernel
 * reads the plane itself into a per-thread buffer of kh-paired rows (rc_dw_plane_raw_*).
 * Otherwise, per channel, the plane of (x - zx) is copied as int16 into a zero-padded
 * [PH, PW] buffer (padding contributes exactly 0), and each output row is accumulated tap
 * by tap along W. */
typedef struct {
    const int16_t *xp;      /* padded planes, [C, PH, PW]; raw: this thread's buffer */
    const int32_t *wz;      /* (w - zw[c]) as int32, [C, KH*KW]            */
    const rc_epilogue *epi;
    uint8_t *out;           /* NCHW output of this image                   */
    int out_bytes;
    int64_t C, PH, PW, KH, KW, sh, sw, dh, dw, OH, OW;
    /* the raw plane source, for the kernels that read it themselves (rc_dw_plane_raw_avx512) */
    const uint8_t *src;     /* this image, [C, H, W] uint8 or int8         */
    int int8_in;
    int32_t zx;
    int64_t H, W, ph, pw;
    /* the raw weights and their zero points (rc_dw_plane_vbmi3x3 splits the zero-point terms
     * off, as the direct kernel does) */
    const int8_t *w;        /* [C, KH*KW]                                  */
    const int32_t *zw;      /* [C] or [1]                                  */
    int zw_per_channel;
} rc_dw_args;

typedef void (*rc_dw_plane_fn)(const rc_dw_args *d, int64_t c);
void rc_dw_plane_portable(const rc_dw_args *d, int64_t c);
#if RC_X86
void rc_dw_plane_avx512(const rc_dw_args *d, int64_t c);
/* Stride 1 along W: builds its own row-pair buffer in xp (this thread's, as int32
 * [PH, PW]) straight from src, no int16 copy first. */
#define RC_DW_RAW_MAX_PAIRS 128
static inline int rc_dw_raw_ok(int64_t sw, int64_t KH, int64_t KW) {
    return sw == 1 && (KH + 1) / 2 * KW <= RC_DW_RAW_MAX_PAIRS;
}
void rc_dw_plane_raw_avx512(const rc_dw_args *d, int64_t c);
void rc_dw_plane_raw_avx512_vnni(const rc_dw_args *d, int64_t c);
/* 3x3, stride 1, no dilation, any padding: byte quads by vpermb, three taps per vpdpbusd,
 * straight from src (no buffer).  Other geometries run the VNNI kernels under VBMI. */
static inline int rc_dw_vbmi3x3_ok(int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw) {
    return KH == 3 && KW == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1;
}
void rc_dw_plane_vbmi3x3(const rc_dw_args *d, int64_t c);
#endif

/* Direct convolution, one image: C[OC, P] = W[OC, K] . X[K, P] straight from NCHW, or from NHWC
 * pixel rows (K = C * taps).
 * vpdpbusd takes the activations as its unsigned operand: uint8 as is, int8 flipped by
 * x ^ 0x80 (= x + 128, its zero point moving with it), so (x - zx) is unchanged. */
typedef struct {
    const uint8_t *x;       /* this image, [C, P] (NHWC: [P, C])                   */
    int flip;               /* int8 input: xor 0x80 while packing                  */
    int32_t zxu;            /* the activation zero point on the unsigned scale     */
    const int8_t *wpk;      /* rc_qconv_direct_pack layout                             */
    const int32_t *wsum;    /* [OC] sum_c w[o, c]                                  */
    const int32_t *zw;      /* [OC] or [1]                                         */
    int zw_per_channel;
    int any_zw;             /* some zw != 0: the per-pixel channel sums are needed */
    const rc_epilogue *epi;
    uint8_t *out;           /* this image, [OC, P] (NHWC: [P, OC]), out_bytes each */
    int64_t C, P, OC;
    int64_t W;              /* image width (the 3x3 taps' row shift)               */
    int taps;               /* 1 (1x1) or 9 (3x3, padding 1)                       */
    int stream;             /* 1x1: interleave block by block (rc_qconv_direct)    */
    /* NHWC: x is [P, C] and out [P, OC]; the tiles write a block's [OC, PB] results
     * into `stage` (this thread's), then they are transposed into out */
    int nhwc;
    uint8_t *stage;
} rc_direct_args;

/* The pixel blocks [b0, b1) (a band) x output-channel blocks [ob0, ob1).  `pack`:
 * interleave the band (3x3: with its halo) into xb first, and, some zw != 0, each
 * position's channel sum into chs; 0 when xb already holds this band.  xb: C4 *
 * rc_direct_positions(b1 - b0, W, taps) bytes (group stride 4 * positions), chs: as many
 * int32 as positions, xsum: RC_QCONV_DIRECT_PB int32 (3x3: the block's nine-tap sums).
 *
 * Bands hold up to RC_DIRECT_BAND_BYTES (L2; at least one block).  The 3x3 halo (a
 * multiple of 64 pixels, at least W + 1; none for 1x1) covers every tap's row and column
 * shift, and the 16 extra positions make the group stride an odd number of cache lines,
 * so the channel groups a tile reads do not compete for the same L1 sets. */
#define RC_DIRECT_BAND_BYTES (256 * 1024)
/* A batch whose input is larger than this (a core's L2 on the machines measured) streams
 * from L3 or memory: the 1x1 kernel then interleaves each block during the tiles of the one
 * before, prefetching ahead (rc_qconv_direct's `stream` = -1).  Below it the input is taken to be cache-resident and the
 * separate band interleave is faster (1x1 256->64 @56: N = 1, 0.8 MB, ~5 % slower
 * interleaving block by block; N = 8, 6.4 MB, 8-14 % faster). */
#define RC_DIRECT_STREAM_BYTES (1024 * 1024)
static inline int64_t rc_direct_halo(int64_t W, int taps) { return taps == 1 ? 0 : (W + 1 + 63) / 64 * 64; }
static inline int64_t rc_direct_positions(int64_t blocks, int64_t W, int taps) {
    return RC_QCONV_DIRECT_PB * blocks + 2 * rc_direct_halo(W, taps) + 16;
}
static inline int64_t rc_direct_band_blocks(int64_t C, int64_t P, int64_t W, int taps) {
    const int64_t C4 = (C + 3) / 4 * 4, pblocks = (P + RC_QCONV_DIRECT_PB - 1) / RC_QCONV_DIRECT_PB;
    const int64_t nb = (RC_DIRECT_BAND_BYTES / C4 - 2 * rc_direct_halo(W, taps) - 16) / RC_QCONV_DIRECT_PB;
    return nb < 1 ? 1 : nb > pblocks ? pblocks : nb;
}
#if RC_X86
void rc_qconv_direct_band_avx512_vnni(const rc_direct_args *a, int64_t b0, int64_t b1, int64_t ob0, int64_t ob1,
                                      int pack, uint8_t *xb, int32_t *chs, int32_t *xsum);
#endif

#if RC_X86
#include <emmintrin.h>
/* A full 16 x 16 byte tile by the perfect shuffle: interleaving the bytes of register i
 * with register i + 8 (low halves into 2i, high halves into 2i + 1) four times transposes
 * the tile.  SSE2 (the x86-64 baseline); a pure byte permutation, so every ISA variant
 * shares it. */
static inline void rc_transpose_tile16(const uint8_t *src, int64_t ls, uint8_t *dst, int64_t ld, uint8_t xor_mask) {
    const __m128i fl = _mm_set1_epi8((char)xor_mask);
    __m128i r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(src + i * ls)), fl);
    for (int s = 0; s < 4; ++s) {
        for (int i = 0; i < 8; ++i) {
            t[2 * i] = _mm_unpacklo_epi8(r[i], r[i + 8]);
            t[2 * i + 1] = _mm_unpackhi_epi8(r[i], r[i + 8]);
        }
        for (int i = 0; i < 16; ++i) r[i] = t[i];
    }
    for (int j = 0; j < 16; ++j) _mm_storeu_si128((__m128i *)(void *)(dst + j * ld), r[j]);
}
#endif

/* The epilogue of channel c alone (its scale / multiplier / shift made per tensor; its
 * bias returned separately for the caller to add). */
static inline rc_epilogue rc_channel_epilogue(const rc_epilogue *e, int64_t c, int32_t *bias) {
    rc_epilogue k = *e;
    *bias = e->bias ? e->bias[c] : 0;
    k.bias = 0;
    if (e->per_channel) {
        if (k.scale) k.scale += c;
        if (k.multiplier) k.multiplier += c;
        if (k.shift) k.shift += c;
        k.per_channel = 0;
    }
    return k;
}
/* ---- the im2col + qgemm route (rc_qconv2d) -------------------------------------------------- *
 * Each thread takes an exact share of every image's P = OH*OW output pixels and cuts it into
 * blocks of at most RC_QCONV_BLOCK_ROWS rows (the qgemm driver's MC: 16 six-row tiles,
 * their packed rows (a 3x3 64-channel patch row is 576 bytes, 54 KB a block) staying in L2
 * while every weight panel streams past them).  A block's patches are packed into the
 * thread's own buffer, its tiles run over all panels, then the next block: no more than a
 * block of the patch matrix ever exists, and no barrier between blocks. */
#define RC_QCONV_BLOCK_ROWS (RC_QGEMM_MR * 16)

/* Where a block's patches come from: one image, NCHW [C, H, W] or NHWC [H, W, C]. */
typedef struct {
    const uint8_t *img;
    int nhwc;
    uint8_t flip;           /* 0x80: uint8 input, made int8 by x ^ 0x80 (its zero point with it) */
    int8_t pad;             /* the (flipped) zero point: padding contributes (z - z) = 0 */
    int64_t C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OW, K4;
} rc_patch_src;

/* A thread's window: KH input rows at a time as int8 [span, C] (padding filled in), each
 * pixel's channel sum beside it, tagged with the row they hold so that a later output row
 * reuses them.  When a whole output row fits a block (OW <= RC_QCONV_BLOCK_ROWS) every
 * window row spans the output row's full input columns, so each input row is laid out once
 * per thread and image (stride 1: a 3x3 patch row shares all three input rows with its
 * neighbours); wider rows are cut into segments of at most a block, each with its own
 * columns.  rows: [KH, span, C] bytes; sums: [KH, span]; tag, slot: [KH] each. */
typedef struct {
    int8_t *rows;
    int32_t *sums;
    int64_t *tag;           /* the input row slot i holds (INT64_MIN: none)             */
    int64_t *slot;          /* the slot holding the current output row's kh-th input row */
    int64_t iw0, span;      /* the columns every slot holds (span 0: nothing held yet)   */
} rc_patch_window;

/* The widest window row: the input columns of up to min(OW, RC_QCONV_BLOCK_ROWS)
 * consecutive output pixels of one output row. */
static inline int64_t rc_patch_span(int64_t OW, int64_t KW, int64_t sw, int64_t dw) {
    const int64_t L = OW < RC_QCONV_BLOCK_ROWS ? OW : RC_QCONV_BLOCK_ROWS;
    return (L - 1) * sw + (KW - 1) * dw + 1;
}

/* The patches of output pixels [p0, p1) of s->img in (kh, kw, c) order as packed qgemm rows
 * (K4 bytes each, zero beyond K) into ap, their row sums into ra (im2col.c): a patch is
 * KH*KW copies of C bytes from the window and its sum KH*KW lookups.  Set w->span = 0 before
 * the first block of each image. */
void rc_qconv_pack_block(const rc_patch_src *s, rc_patch_window *w, int64_t p0, int64_t p1, int8_t *ap,
                         int32_t *ra);

/* src [rows, cols] (row stride ls) -> dst [cols, rows] (row stride ld), bytes xor xor_mask
 * (qconv.c; no OpenMP: the caller's thread alone). */
void rc_transpose_block(const uint8_t *src, int64_t ls, int64_t rows, int64_t cols, uint8_t *dst, int64_t ld,
                        uint8_t xor_mask);

#endif
