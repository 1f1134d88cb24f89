"""Metrics on small models whose counts are computed by hand."""

import time

import numpy as np
import pytest

from refcompress import nn
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.models import mlp_300_100, small_cnn
from refcompress.pipeline import (accuracy, count_macs, count_parameters, measure_latency,
                                  register_mac_counter, stored_bytes)


def test_count_parameters_counts_parameters_not_buffers():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    # 3*4 + 4, BN weight + bias 2*4, 4*2
    assert count_parameters(m) == 16 + 8 + 8
    assert count_parameters(mlp_300_100()) == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_stored_bytes_counts_every_state_array_at_its_dtype():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    # Linear 16 float32; BN weight, bias, running_mean, running_var 4 float32 each; one int64
    assert stored_bytes(m) == 16 * 4 + 16 * 4 + 8
    assert stored_bytes(m.to(np.float64)) == 16 * 8 + 16 * 8 + 8


def test_linear_macs():
    assert count_macs(nn.Linear(3, 4), (3,)) == 12
    # a [T, in] sample: one in*out product per row
    assert count_macs(nn.Linear(3, 4), (5, 3)) == 5 * 12
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    assert count_macs(m, (3, 4)) == 12 * 5 + 5 * 2
    assert count_macs(m, (3, 4), per_layer=True) == {"1": 60, "3": 10}


@pytest.mark.parametrize("cin,cout,k,stride,pad,dil,groups,hw,out_hw", [
    (2, 4, 3, 1, 0, 1, 1, 6, 4),
    (2, 4, 3, 2, 1, 1, 1, 7, 4),
    (4, 6, 3, 1, 1, 1, 2, 5, 5),
    (3, 3, 3, 1, 2, 2, 3, 5, 5),   # depthwise, dilated
    (2, 2, (1, 3), 1, 0, 1, 1, 4, None),
])
def test_conv_macs(cin, cout, k, stride, pad, dil, groups, hw, out_hw):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups)
    kh, kw = (k, k) if isinstance(k, int) else k
    if out_hw is None:
        oh, ow = hw - kh + 1, hw - kw + 1
    else:
        oh = ow = out_hw
    expected = oh * ow * cout * (cin // groups) * kh * kw
    assert count_macs(conv, (cin, hw, hw)) == expected


def test_conv_macs_equal_the_multiplications_of_a_naive_convolution():
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False).eval()
    x = rng.random((1, 4, 5, 5), dtype=np.float32)
    xp = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    w = conv.weight.data.astype(np.float64)
    out = np.zeros((6, 3, 3))
    mults = 0
    for o in range(6):
        g = o // 3
        for c in range(2):
            for oy in range(3):
                for ox in range(3):
                    for ky in range(3):
                        for kx in range(3):
                            out[o, oy, ox] += w[o, c, ky, kx] * xp[2 * g + c, 2 * oy + ky, 2 * ox + kx]
                            mults += 1  # padded taps count: the layer multiplies them too
    np.testing.assert_allclose(conv(x)[0], out, rtol=1e-5, atol=1e-6)
    assert count_macs(conv, (4, 5, 5)) == mults == 6 * 2 * 9 * 9


def test_reference_model_macs():
    assert count_macs(mlp_300_100(), (1, 8, 8)) == 64 * 300 + 300 * 100 + 100 * 10
    assert count_macs(small_cnn(), (1, 8, 8), per_layer=True) == {
        "0": 8 * 8 * 16 * 1 * 9, "3": 8 * 8 * 32 * 16 * 9, "8": 512 * 10}


def test_count_macs_restores_mode_and_removes_hooks():
    m = small_cnn().train()
    count_macs(m, (1, 8, 8))
    assert m.training
    assert all(not mod._forward_hooks for mod in m.modules())


@nn.register_module
class _Scale(nn.Module):
    def forward(self, x):
        return x * np.float32(2)


def test_registered_counter_for_a_custom_layer():
    m = nn.Sequential(nn.Linear(3, 4), _Scale())
    assert count_macs(m, (3,)) == 12
    register_mac_counter(_Scale, lambda mod, inputs, out: out.size)
    assert count_macs(m, (3,), per_layer=True) == {"0": 12, "1": 4}


def test_factored_linear_macs_in_eval_mode_and_after_pruning_a_factor():
    # In eval mode a LowRankLinear runs both factors in one fused kernel call, so its
    # children's hooks never fire: it is counted as one layer, (n + m) r per row, in both
    # modes (it once counted 0 in eval mode).  With a factor made sparse it runs the
    # factors, which are counted by their own rules; the int8 form counts as the float one.
    from refcompress import lowrank, prune

    m = nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 10))
    lowrank.factorize(m, {"0": {"rank": 20}})
    want = {"0": (64 + 300) * 20, "2": 300 * 10}
    assert count_macs(m.eval(), (64,), per_layer=True) == want
    assert count_macs(m.train(), (64,), per_layer=True) == want
    assert count_macs(m.eval(), (7, 64)) == 7 * sum(want.values())
    x = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32)
    q = nn.Sequential(lowrank.QuantizedLowRankLinear.from_lowrank(m[0], x), nn.ReLU(), m[2])
    assert count_macs(q, (64,), per_layer=True) == want
    m[0].first = prune.SparseLinear.from_dense(m[0].first.weight.data)
    assert count_macs(m.eval(), (64,), per_layer=True) == {"0.first": 64 * 20, "0.second": 20 * 300, "2": 3000}


def test_count_macs_bad_arguments():
    with pytest.raises(DTypeError, match="model"):
        count_macs("m", (3,))
    with pytest.raises(ArgumentError, match="input_shape"):
        count_macs(nn.Linear(3, 4), ())
    with pytest.raises(ArgumentError, match=r"input_shape\[0\]"):
        count_macs(nn.Linear(3, 4), (0,))
    with pytest.raises(DTypeError, match="cls"):
        register_mac_counter(int, len)
    with pytest.raises(DTypeError, match="fn"):
        register_mac_counter(_Scale, 3)


class _Sleepy(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(self.training)
        time.sleep(0.002)
        return x


def test_measure_latency_is_a_median_in_eval_mode():
    m = _Sleepy().train()
    t = measure_latency(m, np.zeros((1, 2), np.float32), repeats=5, warmup=2)
    assert 0.002 <= t < 1.0
    assert m.calls == [False] * 7
    assert m.training


def test_measure_latency_bad_arguments():
    with pytest.raises(ArgumentError, match="repeats"):
        measure_latency(nn.ReLU(), np.zeros((1, 2), np.float32), repeats=0)
    with pytest.raises(ArgumentError, match="warmup"):
        measure_latency(nn.ReLU(), np.zeros((1, 2), np.float32), warmup=-1)
    with pytest.raises(DTypeError, match="x"):
        measure_latency(nn.ReLU(), "x")


def _identity_classifier():
    lin = nn.Linear(3, 3, bias=False)
    lin.weight.data = np.eye(3, dtype=np.float32)
    return lin


def test_accuracy_is_the_fraction_of_correct_argmax():
    X = np.array([[1, 0, 0], [0, 2, 1], [0, 0, 3], [5, 1, 0]], np.float32)
    y = np.array([0, 1, 1, 0])
    assert accuracy(_identity_classifier(), X, y) == 0.75
    assert accuracy(_identity_classifier(), X, y, batch_size=1) == 0.75


def test_accuracy_bad_arguments():
    X = np.zeros((4, 3), np.float32)
    with pytest.raises(DTypeError, match="y"):
        accuracy(_identity_classifier(), X, np.zeros(4, np.float32))
    with pytest.raises(ShapeError, match="y"):
        accuracy(_identity_classifier(), X, np.zeros(3, np.int64))
    with pytest.raises(ShapeError, match="y"):
        accuracy(_identity_classifier(), X, np.zeros((4, 1), np.int64))
    with pytest.raises(ShapeError, match="X"):
        accuracy(_identity_classifier(), X[:0], np.zeros(0, np.int64))
    with pytest.raises(DTypeError, match="model"):
        accuracy(None, X, np.zeros(4, np.int64))


def test_spearman_known_values_and_ties():
    from refcompress.pipeline.metrics import spearman
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: ranks (1.5, 1.5, 3) vs (1, 2, 3) -> r = sqrt(3)/2
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)
    with pytest.raises(ArgumentError, match="constant"):
        spearman([1, 1, 1], [1, 2, 3])


def test_embedding_fidelity_identity_and_perturbation():
    from refcompress.pipeline.metrics import embedding_fidelity
    rng = np.random.default_rng(0)
    e = rng.normal(size=(20, 8))
    same = embedding_fidelity(e, 3.0 * e)     # scale does not change a cosine
    assert same["min_cos"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    noisy = embedding_fidelity(e, e + 0.5 * rng.normal(size=e.shape))
    assert noisy["min_cos"] < noisy["mean_cos"] < 1.0 and noisy["spearman"] < 1.0
    with pytest.raises(ShapeError, match="compressed"):
        embedding_fidelity(e, e[:5])
    with pytest.raises(ArgumentError, match="all zeros"):
        embedding_fidelity(e, np.zeros_like(e))


def test_stored_bytes_counts_a_shared_module_once():
    """The state dict lists a module used twice under both paths (as PyTorch); its arrays
    are stored once."""
    lin = nn.Linear(3, 3)
    shared = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(shared.state_dict()) == 4
    assert stored_bytes(shared) == stored_bytes(nn.Sequential(lin)) == (9 + 3) * 4
