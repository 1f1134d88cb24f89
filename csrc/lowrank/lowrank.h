/* Internal header of the factored-Linear kernel family (csrc/lowrank/). */
#ifndef RC_LOWRANK_H
#define RC_LOWRANK_H

#include "rc_common.h"

#define LR_NR RC_LOWRANK_NR

/* The per-ISA kernels; lowrank.c decides what is computed where, these only compute. */
typedef struct {
    /* C[rows, panels p0..p1) = A[rows, 0..K) @ B, B packed in panels of LR_NR columns
     * (panel p at bp + p * K * LR_NR, element [k][j]), plus bias[col] when bias != NULL.
     * N is the true column count (the last panel may be partial: only columns < N are
     * stored).  A is row-major with leading dimension lda, C with ldc. */
    void (*gemm)(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp, int64_t p0,
                 int64_t p1, int64_t N, const float *bias, float *c, int64_t ldc);
    /* Batch 1, first product: h[j] = sum_k v[j, k] x[k] for j in [j0, j1), v row-major
     * [*, n] -- the caller's unpacked factor, whose rows are contiguous dot operands. */
    void (*gemv_h)(const float *v, int64_t n, const float *x, int64_t j0, int64_t j1, float *h);
    /* Batch 1, second product: y[col] = bias[col] + sum_k h[k] B[k, col] for the columns
     * of panels p0..p1) of B [K, N], packed as for gemm (bias may be NULL). */
    void (*gemv_y)(const float *h, int64_t K, const float *bp, int64_t p0, int64_t p1, int64_t N,
                   const float *bias, float *y);
    /* Rows of gemm's micro-tile: thread shares of the rows start at multiples of it. */
    int64_t gemm_rows;
} rc_lowrank_kernels;

extern const rc_lowrank_kernels rc_lowrank_portable;
#if RC_X86
extern const rc_lowrank_kernels rc_lowrank_avx2;
extern const rc_lowrank_kernels rc_lowrank_avx512;
#endif

#endif
