"""Public test helpers: hypothesis strategies and checkers against the reference semantics.

Another project tests its own kernel against refcompress's definition in one line::

    from refcompress.testing import check_quantize
    check_quantize(my_quantize)          # raises AssertionError with a minimal failing case

Requires the ``hypothesis`` package (``pip install "refcompress[test]"``).
"""

from .asserts import assert_bitwise_equal, assert_exact
from .checks import (check_dequantize, check_qconv2d, check_qgemm, check_quantize, check_quantize_rows,
                     check_requantize)
from . import strategies

__all__ = [
    "assert_bitwise_equal",
    "assert_exact",
    "check_dequantize",
    "check_qconv2d",
    "check_qgemm",
    "check_requantize",
    "check_quantize",
    "check_quantize_rows",
    "strategies",
]


def kernel_variants(op_name: str) -> list[tuple[str, str | None]]:
    """Every way ``op_name`` can run here: ``("numpy", None)`` and ``("c", isa)`` for each
    C variant this build and CPU run.  Tests parametrize over it so that every variant is
    checked in one pytest run (``with kernels.use(backend, isa=isa): ...``)."""
    from ..kernels import variants

    return [("numpy", None)] + [("c", v) for v in variants(op_name)]


__all__.append("kernel_variants")

# Sparse Linear kernels (CSR, N:M): checkers against the documented per-element bound.
from .sparse import (  # noqa: E402
    assert_within_error_bound,
    check_spmm_csr,
    check_spmm_nm,
    spmm_csr_error_bound,
    spmm_nm_error_bound,
)

__all__ += ["assert_within_error_bound", "check_spmm_csr", "check_spmm_nm", "spmm_csr_error_bound",
            "spmm_nm_error_bound"]

# Transformer ops (GELU, LayerNorm, masked softmax): checkers against the derived bounds.
from .nnops import check_gelu, check_layer_norm, check_softmax  # noqa: E402

__all__ += ["check_gelu", "check_layer_norm", "check_softmax"]

# Fused multi-head attention: checker against the derived element-wise bound.
from .attention import check_attention  # noqa: E402

__all__ += ["check_attention"]

# Synthetic layers with transformer-like outlier inputs, for layer-wise methods.
from .layers import OUTLIER_CHANNELS, outlier_layer  # noqa: E402

__all__ += ["OUTLIER_CHANNELS", "outlier_layer"]
