/* The measured int8 peak: independent vpdpbusd chains, nothing else.  Benchmarks divide
 * by it, so "% of peak" is measured on this machine rather than taken from a datasheet. */
#include "rc_common.h"

#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#include <immintrin.h>

/* Inline asm, because GCC 12 surrounds chains of _mm512_dpbusd_epi32 with register copies
 * and spills that would make the "peak" measure the compiler instead of the core. */
__attribute__((noinline)) static long long peak_loop(long long iters) {
    __m512i c0 = _mm512_set1_epi32(0);
    __m512i c1 = _mm512_set1_epi32(1);
    __m512i c2 = _mm512_set1_epi32(2);
    __m512i c3 = _mm512_set1_epi32(3);
    __m512i c4 = _mm512_set1_epi32(4);
    __m512i c5 = _mm512_set1_epi32(5);
    __m512i c6 = _mm512_set1_epi32(6);
    __m512i c7 = _mm512_set1_epi32(7);
    __m512i c8 = _mm512_set1_epi32(8);
    __m512i c9 = _mm512_set1_epi32(9);
    __m512i c10 = _mm512_set1_epi32(10);
    __m512i c11 = _mm512_set1_epi32(11);
    __m512i c12 = _mm512_set1_epi32(12);
    __m512i c13 = _mm512_set1_epi32(13);
    __m512i c14 = _mm512_set1_epi32(14);
    __m512i c15 = _mm512_set1_epi32(15);
    __m512i c16 = _mm512_set1_epi32(16);
    __m512i c17 = _mm512_set1_epi32(17);
    __m512i c18 = _mm512_set1_epi32(18);
    __m512i c19 = _mm512_set1_epi32(19);
    __m512i c20 = _mm512_set1_epi32(20);
    __m512i c21 = _mm512_set1_epi32(21);
    __m512i c22 = _mm512_set1_epi32(22);
    __m512i c23 = _mm512_set1_epi32(23);
    const __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x02020202);
    for (long long it = 0; it < iters; ++it) {
        /* two statements: an asm takes at most 30 operands ("+v" counts twice) */
        __asm__ volatile(
            "vpdpbusd %[b], %[a], %[c0]\n\t"
            "vpdpbusd %[b], %[a], %[c1]\n\t"
            "vpdpbusd %[b], %[a], %[c2]\n\t"
            "vpdpbusd %[b], %[a], %[c3]\n\t"
            "vpdpbusd %[b], %[a], %[c4]\n\t"
            "vpdpbusd %[b], %[a], %[c5]\n\t"
            "vpdpbusd %[b], %[a], %[c6]\n\t"
            "vpdpbusd %[b], %[a], %[c7]\n\t"
            "vpdpbusd %[b], %[a], %[c8]\n\t"
            "vpdpbusd %[b], %[a], %[c9]\n\t"
            "vpdpbusd %[b], %[a], %[c10]\n\t"
            "vpdpbusd %[b], %[a], %[c11]\n\t"
            : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4), [c5] "+v"(c5), [c6] "+v"(c6), [c7] "+v"(c7), [c8] "+v"(c8), [c9] "+v"(c9), [c10] "+v"(c10), [c11] "+v"(c11)
            : [a] "v"(a), [b] "v"(b));
        __asm__ volatile(
            "vpdpbusd %[b], %[a], %[c12]\n\t"
            "vpdpbusd %[b], %[a], %[c13]\n\t"
            "vpdpbusd %[b], %[a], %[c14]\n\t"
            "vpdpbusd %[b], %[a], %[c15]\n\t"
            "vpdpbusd %[b], %[a], %[c16]\n\t"
            "vpdpbusd %[b], %[a], %[c17]\n\t"
            "vpdpbusd %[b], %[a], %[c18]\n\t"
            "vpdpbusd %[b], %[a], %[c19]\n\t"
            "vpdpbusd %[b], %[a], %[c20]\n\t"
            "vpdpbusd %[b], %[a], %[c21]\n\t"
            "vpdpbusd %[b], %[a], %[c22]\n\t"
            "vpdpbusd %[b], %[a], %[c23]\n\t"
            : [c12] "+v"(c12), [c13] "+v"(c13), [c14] "+v"(c14), [c15] "+v"(c15), [c16] "+v"(c16), [c17] "+v"(c17), [c18] "+v"(c18), [c19] "+v"(c19), [c20] "+v"(c20), [c21] "+v"(c21), [c22] "+v"(c22), [c23] "+v"(c23)
            : [a] "v"(a), [b] "v"(b));
    }
    __m512i s = c0;
    s = _mm512_add_epi32(s, c1);
    s = _mm512_add_epi32(s, c2);
    s = _mm512_add_epi32(s, c3);
    s = _mm512_add_epi32(s, c4);
    s = _mm512_add_epi32(s, c5);
    s = _mm512_add_epi32(s, c6);
    s = _mm512_add_epi32(s, c7);
    s = _mm512_add_epi32(s, c8);
    s = _mm512_add_epi32(s, c9);
    s = _mm512_add_epi32(s, c10);
    s = _mm512_add_epi32(s, c11);
    s = _mm512_add_epi32(s, c12);
    s = _mm512_add_epi32(s, c13);
    s = _mm512_add_epi32(s, c14);
    s = _mm512_add_epi32(s, c15);
    s = _mm512_add_epi32(s, c16);
    s = _mm512_add_epi32(s, c17);
    s = _mm512_add_epi32(s, c18);
    s = _mm512_add_epi32(s, c19);
    s = _mm512_add_epi32(s, c20);
    s = _mm512_add_epi32(s, c21);
    s = _mm512_add_epi32(s, c22);
    s = _mm512_add_epi32(s, c23);
    volatile int sink = _mm512_reduce_add_epi32(s);
    (void)sink;
    return iters * 24LL * 64LL * 2LL;
}
#endif

long long rc_bench_vnni_peak(long long iters) {
#if RC_X86
    if (iters < 0) return -1;
    if (!(rc_cpu_isa_mask() & (1 << RC_ISA_AVX512_VNNI))) return -1;
    return peak_loop(iters);
#else
    (void)iters;
    return -1;
#endif
}
