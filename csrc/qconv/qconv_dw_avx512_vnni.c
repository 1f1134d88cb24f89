/* AVX-512 VNNI depthwise kernel (stride 1 along W): qconv_dw_raw_avx512.h with vpdpwssd
 * fusing each vpmaddwd and its vpaddd. */
#include "../rc_common.h"
#if RC_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include "../qgemm/qgemm_epi_avx512.h"
#include "qconv.h"

#define RC_DW_DOT(acc, x, w) _mm512_dpwssd_epi32((acc), (x), (w))
#define RC_DW_RAW_FN rc_dw_plane_raw_avx512_vnni
#include "qconv_dw_raw_avx512.h"
#endif
