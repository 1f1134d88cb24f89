/* CPU-feature probe and build facts: the only global knowledge the library has. */
#include "rc_common.h"

int rc_cpu_isa_mask(void) {
    int mask = 1 << RC_ISA_PORTABLE;
#if RC_X86 && defined(__GNUC__)
    /* __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 state. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        mask |= 1 << RC_ISA_AVX2;
        /* AVX-VNNI is CPUID.(EAX=7,ECX=1):EAX[4]; VEX-encoded, so it needs only the AVX state
         * that the avx2 test above has already found the OS saving. */
#if RC_HAVE_AVX_VNNI
        if (__builtin_cpu_supports("avxvnni")) mask |= 1 << RC_ISA_AVX_VNNI;
#endif
    }
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
           (1 << RC_ISA_AVX512_VNNI) | (1 << RC_ISA_AVX512_VBMI) | (RC_HAVE_AVX_VNNI << RC_ISA_AVX_VNNI);
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

/* AUTO's order of preference, best first.  Not the codes' order: avx_vnni came last but
 * ranks below the 512-bit VNNI variants (half their width) and above plain AVX-512, whose
 * exact byte products take two vpmaddwd, two unpacks and two adds where vpdpbusd takes one
 * instruction (docs/kernels.md has the measured qgemm speeds). */
static const int rc_isa_preference[RC_ISA_COUNT] = {
    RC_ISA_AVX512_VBMI, RC_ISA_AVX512_VNNI, RC_ISA_AVX_VNNI, RC_ISA_AVX512, RC_ISA_AVX2, RC_ISA_PORTABLE,
};

int rc_isa_best(int mask) {
    for (int i = 0; i < RC_ISA_COUNT; ++i)
        if (mask & (1 << rc_isa_preference[i])) return rc_isa_preference[i];
    return -1;
}

/* Resolve a requested variant against the variants an op has (`supported_mask`) and what
 * this build and CPU can run.  AUTO picks the best (rc_isa_best); an explicit request that
 * cannot run is an error (never a silent fallback). Returns the variant or -1. */
int rc_isa_resolve(int isa, int supported_mask) {
    const int runnable = supported_mask & rc_cpu_isa_mask() & rc_compiled_isa_mask();
    if (isa == RC_ISA_AUTO) return rc_isa_best(runnable);
    if (isa < 0 || isa >= RC_ISA_COUNT || !(runnable & (1 << isa))) return -1;
    return isa;
}
