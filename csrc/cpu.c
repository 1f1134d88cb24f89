/* CPU-feature probe and build facts: the only global knowledge the library has. */
#include "rc_common.h"

int rc_cpu_isa_mask(void) {
    int mask = 1 << RC_ISA_PORTABLE;
#if RC_X86 && defined(__GNUC__)
    /* __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 state. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        mask |= 1 << RC_ISA_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        mask |= 1 << RC_ISA_AVX512;
        if (__builtin_cpu_supports("avx512vnni")) {
            mask |= 1 << RC_ISA_AVX512_VNNI;
            if (__builtin_cpu_supports("avx512vbmi"))
                mask |= 1 << RC_ISA_AVX512_VBMI;
        }
    }
#endif
    return mask;
}

int rc_compiled_isa_mask(void) {
#if RC_X86 && defined(__GNUC__)
    return (1 << RC_ISA_PORTABLE) | (1 << RC_ISA_AVX2) | (1 << RC_ISA_AVX512) |
           (1 << RC_ISA_AVX512_VNNI) | (1 << RC_ISA_AVX512_VBMI);
#else
    return 1 << RC_ISA_PORTABLE;
#endif
}

int rc_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int rc_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int rc_is_sanitized(void) {
#if defined(RC_SANITIZE)
    return 1;
#else
    return 0;
#endif
}

/* Resolve a requested variant against the variants an op has (`supported_mask`) and what
 * this build and CPU can run.  AUTO picks the highest; an explicit request that cannot run
 * is an error (never a silent fallback). Returns the variant or -1. */
int rc_isa_resolve(int isa, int supported_mask) {
    const int runnable = supported_mask & rc_cpu_isa_mask() & rc_compiled_isa_mask();
    if (isa == RC_ISA_AUTO) {
        for (int v = RC_ISA_COUNT - 1; v >= 0; --v)
            if (runnable & (1 << v)) return v;
        return -1;
    }
    if (isa < 0 || isa >= RC_ISA_COUNT || !(runnable & (1 << isa))) return -1;
    return isa;
}
