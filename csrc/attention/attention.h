/* Internal header of the fused attention family (csrc/attention/): the arguments of one
 * call and the per-ISA kernels of one (batch, head) pair. */
#ifndef RC_ATTENTION_H
#define RC_ATTENTION_H

#include "nnops/nnops.h"

typedef struct {
    const float *q, *k, *v, *mask; /* [B, S, H] x 3, [B, S] or NULL                        */
    float *ctx;                    /* [B, S, H]                                            */
    int64_t B, S, H, d;            /* batch, sequence, hidden, head width                  */
    float scale;
} rc_attn_args;

/* Keys are padded to a multiple of this in the scratch (the AVX-512 score loop's step). */
#define RC_ATTN_KPAD 32
/* Queries per block in the AVX-512 kernel (their scores / probabilities rows in scratch). */
#define RC_ATTN_QB 8

static inline int64_t rc_attn_width(int64_t S) { return (S + RC_ATTN_KPAD - 1) / RC_ATTN_KPAD * RC_ATTN_KPAD; }

/* Scratch floats of one thread: K^T [d][W], V packed [S][d] (within d*W), and RC_ATTN_QB
 * score rows of W, W = S padded. */
static inline int64_t rc_attn_scratch_floats(int64_t S, int64_t d) {
    return (2 * d + RC_ATTN_QB) * rc_attn_width(S);
}

/* One (batch b, head h) pair: reads the strided head slices, writes ctx's. */
typedef void (*rc_attn_head_fn)(const rc_attn_args *a, int64_t b, int64_t h, float *scratch);

void rc_attention_head_portable(const rc_attn_args *a, int64_t b, int64_t h, float *scratch);
#if RC_X86
void rc_attention_head_avx512(const rc_attn_args *a, int64_t b, int64_t h, float *scratch);
#endif

#endif
