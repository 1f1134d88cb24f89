"""Low-rank and tensor decomposition: factored layers that are trained further.

* :mod:`.svd`        truncated SVD of a Linear (Denton et al. 2014), Eckart-Young error;
* :mod:`.ranks`      rank by count, energy, parameter budget, EVBMF (Nakajima et al. 2013),
                     and a global allocator of one parameter budget across layers;
* :mod:`.data_aware` the output-error-optimal factors from calibration inputs (whitened SVD);
* :mod:`.tucker`     Tucker-2 of a conv kernel, HOSVD + HOOI (Kim et al. 2016);
* :mod:`.cp`         CP by ALS with damping and line search (Lebedev et al. 2015);
* :mod:`.layers`     LowRankLinear, Tucker2Conv2d, CPConv2d (forward / backward / specs), and
                     QuantizedLowRankLinear (LowRankLinear's int8 inference form);
* :mod:`.surgery`    replace layers of a model by name.

See docs/lowrank.md.
"""

from .cp import CP, cp_als, cp_conv_macs, cp_rank_bound, cp_rank_for_macs, cp_reconstruct, khatri_rao
from .data_aware import calibration_gram, output_error, whitened_svd
from .layers import CPConv2d, LowRankLinear, QuantizedLowRankLinear, Tucker2Conv2d
from .ranks import allocate_ranks, evbmf, rank_by_budget, rank_by_energy, rank_by_vbmf, select_rank
from .surgery import decompose, factorize, replace_layers, to_dense
from .svd import check_rank, low_rank_params, max_useful_rank, svd_residual, truncated_svd
from .tucker import (Tucker2, check_tucker2_ranks, clamp_tucker2_ranks, conv_macs, tucker2, tucker2_macs,
                     tucker2_ranks_for_macs, tucker2_ranks_vbmf, tucker2_reconstruct)

__all__ = [
    "truncated_svd", "svd_residual", "low_rank_params", "max_useful_rank", "check_rank",
    "rank_by_energy", "rank_by_budget", "evbmf", "rank_by_vbmf", "select_rank", "allocate_ranks",
    "whitened_svd", "output_error", "calibration_gram",
    "Tucker2", "tucker2", "tucker2_reconstruct", "tucker2_ranks_vbmf", "tucker2_macs",
    "tucker2_ranks_for_macs", "conv_macs", "check_tucker2_ranks", "clamp_tucker2_ranks",
    "CP", "cp_als", "cp_reconstruct", "khatri_rao", "cp_conv_macs", "cp_rank_for_macs", "cp_rank_bound",
    "LowRankLinear", "QuantizedLowRankLinear", "Tucker2Conv2d", "CPConv2d",
    "decompose", "factorize", "replace_layers", "to_dense",
]
