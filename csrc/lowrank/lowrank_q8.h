/* Internal interface of the int8 factored Linear (lowrank_q8.c) and its AVX-512 VNNI block
 * kernel (lowrank_q8_vnni.c). */
#ifndef RC_LOWRANK_Q8_H
#define RC_LOWRANK_Q8_H

#include "../qgemm/qgemm.h"

/* One call's operands, shared by its row blocks.  zbp* / ct* are the zero-point corrections
 * of the two products (rc_lowrank_q8_prepare): both factors are symmetric, so every entry
 * of zbp1 and zbp2 is 128 (0 + the packing's offset). */
typedef struct {
    const uint8_t *x;
    int64_t n, r, m, K4n, K4r;
    const void *packed_v, *packed_u;
    const int32_t *zbp1, *ct1, *zbp2, *ct2;
    /* The VNNI block's operands (NULL without them): the factors' packed panels minus 128
     * (signed weights) and both products' start values -za sum_k w[k, n] per column. */
    const uint8_t *sv, *su;
    const int32_t *s1, *s2;
    const rc_epilogue *epi_h, *epi_y;
    rc_qgemm_tile_fn tile;
    rc_pack_a_row_fn pack; /* qgemm's row packer for the variant */
    int8_t *a1, *a2; /* packed x rows, packed h_q rows */
    uint8_t *h;
    int32_t *ra1, *ra2;
    float *y;
} rc_lowrank_q8_call;

/* Rows [i0, i0 + rows) of the call with qgemm's row packing and micro-tiles. */
void rc_lowrank_q8_block_generic(const rc_lowrank_q8_call *c, int64_t i0, int64_t rows);
#if RC_X86
/* The same on AVX-512 VNNI (needs sv, su, s1, s2): the same values as the generic block,
 * bit for bit, with the operands swapped and micro-tiles shaped for the short products. */
void rc_lowrank_q8_block_vnni(const rc_lowrank_q8_call *c, int64_t i0, int64_t rows);
#endif

#endif
