/* Internal header of the factored-Linear kernel family (csrc/lowrank/). */
#ifndef RC_LOWRANK_H
#define RC_LOWRANK_H

#include "rc_common.h"

#define LR_NR RC_LOWRANK_NR

/* C[rows, panels p0..p1) = A[rows, 0..K) @ B, B packed in panels of LR_NR columns
 * (panel p at bp + p * K * LR_NR, element [k][j]), plus bias[col] when bias != NULL.
 * N is the true column count (the last panel may be partial: only columns < N are
 * stored).  A is row-major with leading dimension lda, C with ldc. */
typedef void (*rc_lowrank_gemm_fn)(int64_t rows, int64_t K, const float *a, int64_t lda,
                                   const float *bp, int64_t p0, int64_t p1, int64_t N,
                                   const float *bias, float *c, int64_t ldc);

void rc_lowrank_gemm_portable(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp,
                              int64_t p0, int64_t p1, int64_t N, const float *bias, float *c, int64_t ldc);
#if RC_X86
void rc_lowrank_gemm_avx2(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp,
                          int64_t p0, int64_t p1, int64_t N, const float *bias, float *c, int64_t ldc);
void rc_lowrank_gemm_avx512(int64_t rows, int64_t K, const float *a, int64_t lda, const float *bp,
                            int64_t p0, int64_t p1, int64_t N, const float *bias, float *c, int64_t ldc);
#endif

#endif
