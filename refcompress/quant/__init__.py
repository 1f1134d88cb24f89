"""Quantization: specs, qparams, observers, packing (and, on top, PTQ / QAT of models).

The arithmetic is refcompress.kernels (ONNX QuantizeLinear / DequantizeLinear; integer
GEMM with exact requantization); this package chooses parameters and transforms models.
See docs/quantization.md.
"""

from .adaround import adaround
from .awq import AWQResult, awq, awq_scales
from .gptq import GPTQResult, gptq
from .smoothquant import (AbsMaxAccumulator, fold_into_layernorm, fold_into_weight, smooth_activations,
                          smoothquant_scales)
from .equalization import bias_correction, equalization_scales, equalize_pair
from .lsq import lsq_backward, lsq_forward, lsq_init_step
from .observers import (
    HistogramKLObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
)
from .packing import pack_bits, packed_nbytes, unpack_bits
from .rotation import hadamard_matrix, hadamard_order, hadamard_rotate, random_signs
from .qparams import QParams, calibrate, choose_qparams, dequantize, fake_quantize, quantize, tensor_minmax
from .spec import ACT_UINT8, WEIGHT_INT8, QuantSpec
from . import convert, modules, qat
from .convert import (cross_layer_equalize, fold_batchnorm, quantize_dynamic, quantize_static,
                      quantize_weight_only, quantize_weights_corrected)
from .qat import (FakeQuantize, QATInputLinear, convert_qat, convert_qat_linears, prepare_qat,
                  prepare_qat_linears, w8a8_from_qat)
from .weight_sharing import SharedConv2d, SharedLinear, SharedWeights, centroid_gradients, kmeans_share

__all__ = [
    "AWQResult",
    "awq",
    "awq_scales",
    "GPTQResult",
    "gptq",
    "AbsMaxAccumulator",
    "fold_into_layernorm",
    "fold_into_weight",
    "smooth_activations",
    "smoothquant_scales",
    "convert",
    "convert_qat",
    "convert_qat_linears",
    "cross_layer_equalize",
    "FakeQuantize",
    "fold_batchnorm",
    "modules",
    "prepare_qat",
    "prepare_qat_linears",
    "QATInputLinear",
    "w8a8_from_qat",
    "qat",
    "quantize_dynamic",
    "quantize_static",
    "quantize_weight_only",
    "quantize_weights_corrected",
    "adaround",
    "bias_correction",
    "hadamard_matrix",
    "hadamard_order",
    "hadamard_rotate",
    "random_signs",
    "equalization_scales",
    "equalize_pair",
    "ACT_UINT8",
    "HistogramKLObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "QParams",
    "QuantSpec",
    "SharedConv2d",
    "SharedLinear",
    "SharedWeights",
    "WEIGHT_INT8",
    "calibrate",
    "centroid_gradients",
    "choose_qparams",
    "dequantize",
    "fake_quantize",
    "kmeans_share",
    "lsq_backward",
    "lsq_forward",
    "lsq_init_step",
    "pack_bits",
    "packed_nbytes",
    "quantize",
    "tensor_minmax",
    "unpack_bits",
]
