"""The seam between NumPy reference and C kernels.

Each op is one public function here (validate once, then dispatch to the reference or a C
variant); ``use`` / ``set_backend`` choose the backend, ``available`` reports what was
built and what this CPU runs.  See docs/kernels.md.
"""

from ._registry import (
    BACKENDS,
    Op,
    available,
    dispatch,
    get_backend,
    get_num_threads,
    ops,
    register,
    runnable_isas,
    selected_variant,
    set_backend,
    set_num_threads,
    use,
    variants,
)
from .qgemm import Dequantize, PackedWeights, Requantize, pack_weights, qgemm, quantize_multiplier, requantize
from .qconv import PackedConvWeights, conv_output_size, pack_conv_weights, qconv2d
from .quantize import dequantize, quantize, quantize_rows
from .lowrank import (PackedLowRank, QuantizedLowRank, lowrank_batch1_threads, lowrank_error_bound,
                      lowrank_linear, lowrank_linear_q8, pack_lowrank)

__all__ = [
    "PackedLowRank",
    "QuantizedLowRank",
    "lowrank_batch1_threads",
    "lowrank_error_bound",
    "lowrank_linear",
    "lowrank_linear_q8",
    "pack_lowrank",
    "Dequantize",
    "PackedConvWeights",
    "conv_output_size",
    "pack_conv_weights",
    "qconv2d",
    "PackedWeights",
    "Requantize",
    "pack_weights",
    "qgemm",
    "quantize_multiplier",
    "requantize",
    "BACKENDS",
    "Op",
    "available",
    "dequantize",
    "dispatch",
    "get_backend",
    "get_num_threads",
    "ops",
    "quantize",
    "quantize_rows",
    "register",
    "runnable_isas",
    "selected_variant",
    "set_backend",
    "set_num_threads",
    "use",
    "variants",
]

# Sparse Linear layers from pruned weights (CSR and N:M): see docs/sparse_kernels.md.
from .sparse import (CSR, NM, PackedCSR, PackedNM, csr_from_dense, csr_to_dense, nm_from_dense,  # noqa: E402
                     nm_to_dense, pack_csr, pack_nm, spmm_csr, spmm_nm)

__all__ += ["CSR", "NM", "PackedCSR", "PackedNM", "csr_from_dense", "csr_to_dense", "nm_from_dense", "nm_to_dense",
            "pack_csr", "pack_nm", "spmm_csr", "spmm_nm"]

# Transformer ops (GELU, LayerNorm with residual, masked softmax): see docs/kernels.md.
from .nnops import gelu, layer_norm, softmax  # noqa: E402

__all__ += ["gelu", "layer_norm", "softmax"]

# Fused multi-head self-attention (inference): see docs/kernels.md.
from .attention import attention, attention_error_bound  # noqa: E402

__all__ += ["attention", "attention_error_bound"]
