"""Module.to on deployment layers: their kernels and stored scales are float32, so casting a
model that holds one to another dtype is refused, naming the layer, and nothing is cast."""

import copy
import re

import numpy as np
import pytest

from refcompress import lowrank, nn, prune, quant
from refcompress.errors import DTypeError
from refcompress.pipeline.deep_compression import DeepCompressedConv2d
from refcompress.quant.w8a8 import W8A8Linear
from refcompress.quant.weight_sharing import SharedConv2d

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 16)).astype(np.float32)
XC = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)


def _mlp():
    return nn.Sequential(nn.Linear(16, 12, rng=np.random.default_rng(1)), nn.ReLU(),
                         nn.Linear(12, 8, rng=np.random.default_rng(2)))


def _half_pruned(model):
    for layer in (model[0], model[2]):
        layer.weight.data[:, ::2] = 0  # 2:4 as well as 50 % sparse
    return model


def _deep_compressed_conv():
    shared = SharedConv2d.from_conv(nn.Conv2d(3, 4, 3, rng=np.random.default_rng(3)), 3)
    return nn.Sequential(DeepCompressedConv2d.from_conv(shared, shared.codebook.data, shared.indices, index_bits=3))


BUILDERS = {  # name: (model, input, the path and class the error names)
    "static": (lambda: quant.quantize_static(_mlp(), [X]), X, "'0' (QuantizeStub)"),
    "dynamic": (lambda: quant.quantize_dynamic(_mlp()), X, "'0' (DynamicQuantizedLinear)"),
    "weight_only": (lambda: quant.quantize_weight_only(_mlp()), X, "'0' (WeightOnlyLinear)"),
    "sparse": (lambda: prune.to_sparse(_half_pruned(_mlp())), X, "'0' (SparseLinear)"),
    "nm": (lambda: prune.to_nm(_half_pruned(_mlp()), 2, 4), X, "'0' (NMLinear)"),
    "w8a8": (lambda: nn.Sequential(nn.Linear(16, 16), W8A8Linear.from_float(
        RNG.standard_normal((8, 16)).astype(np.float32), None, activation="static", calibration=X)),
        X, "'1' (W8A8Linear)"),
    "deep_compressed": (_deep_compressed_conv, XC, "'0' (DeepCompressedConv2d)"),
    "lowrank_int8": (lambda: lowrank.QuantizedLowRankLinear.from_lowrank(  # the model itself: no path
        lowrank.LowRankLinear(16, 8, 4, rng=np.random.default_rng(4)), X), X, "QuantizedLowRankLinear"),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_to_another_dtype_is_refused_and_casts_nothing(name):
    build, x, where = BUILDERS[name]
    model = build().eval()
    y = model(x)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(DTypeError, match=rf"dtype: {re.escape(where)} computes in float32 only .* got float64; "
                                         r"nothing was cast"):
        model.to(np.float64)
    after = model.state_dict()
    assert list(after) == list(state)
    for k, v in state.items():
        assert after[k].dtype == v.dtype, k
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    np.testing.assert_array_equal(model(x), y)
    # float32 is every deployment layer's own dtype: allowed, and changes nothing
    np.testing.assert_array_equal(model.to(np.float32)(x), y)


def test_float_layers_still_cast():
    """The training forms next to them (factored, shared-weight) keep following to()."""
    layer = lowrank.LowRankLinear(16, 8, 4, rng=np.random.default_rng(4)).to(np.float64)
    assert layer(X.astype(np.float64)).dtype == np.float64
    shared = SharedConv2d.from_conv(nn.Conv2d(3, 4, 3, rng=np.random.default_rng(3)), 3).to(np.float64)
    assert shared(XC.astype(np.float64)).dtype == np.float64
