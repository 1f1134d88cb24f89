"""Factored layers: forward equals the reconstructed dense layer, gradients check, specs
round-trip, layers are replaced by name, and bad inputs are refused."""

import json

import numpy as np
import pytest

from refcompress import nn
from refcompress import lowrank as lr
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.nn import functional as F


def _f64(module):
    return module.to(np.float64)


def _grad_check(layer, x, rng, eps=1e-6, n_probe=6):
    """Central differences of L = <forward(x), g> against backward, for x and every param."""
    layer.train()
    g = rng.standard_normal(layer(x).shape)
    layer.zero_grad()
    layer(x)
    dx = layer.backward(g)

    def loss():
        return float(np.sum(layer(x) * g))

    flat = x.reshape(-1)
    for idx in rng.choice(flat.size, n_probe, replace=False):
        old = flat[idx]
        flat[idx] = old + eps
        up = loss()
        flat[idx] = old - eps
        down = loss()
        flat[idx] = old
        assert dx.reshape(-1)[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-7)
    for name, p in layer.named_parameters():
        grad = p.grad.reshape(-1).copy()
        data = p.data.reshape(-1)
        for idx in rng.choice(data.size, min(n_probe, data.size), replace=False):
            old = data[idx]
            data[idx] = old + eps
            up = loss()
            data[idx] = old - eps
            down = loss()
            data[idx] = old
            assert grad[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-7), name


def test_low_rank_linear_gradients():
    rng = np.random.default_rng(0)
    layer = _f64(lr.LowRankLinear(7, 5, 3, rng=rng))
    _grad_check(layer, rng.standard_normal((4, 7)), rng)


def test_tucker2_conv_gradients():
    rng = np.random.default_rng(1)
    layer = _f64(lr.Tucker2Conv2d(4, 6, 3, (3, 2), stride=2, padding=1, rng=rng))
    _grad_check(layer, rng.standard_normal((2, 4, 7, 6)), rng)


def test_cp_conv_gradients():
    rng = np.random.default_rng(2)
    layer = _f64(lr.CPConv2d(4, 6, (3, 2), 5, stride=(1, 2), padding=(1, 0), dilation=(2, 1), rng=rng))
    _grad_check(layer, rng.standard_normal((2, 4, 9, 7)), rng)


@pytest.mark.parametrize("geom", [dict(stride=1, padding=0, dilation=1),
                                  dict(stride=2, padding=1, dilation=1),
                                  dict(stride=(2, 1), padding=(2, 1), dilation=(2, 1))])
@pytest.mark.parametrize("method", ["tucker2", "cp"])
def test_factored_conv_equals_reconstructed_kernel_conv(geom, method):
    rng = np.random.default_rng(3)
    conv = _f64(nn.Conv2d(6, 8, 3, rng=rng, **geom))
    layer = (lr.Tucker2Conv2d.from_conv(conv, (4, 3)) if method == "tucker2"
             else lr.CPConv2d.from_conv(conv, 7, n_iter=50))
    layer.eval()
    x = rng.standard_normal((3, 6, 11, 10))
    want = F.conv2d(x, layer.kernel(), conv.bias.data, conv.stride, conv.padding, conv.dilation)
    np.testing.assert_allclose(layer(x), want, atol=1e-10)
    np.testing.assert_allclose(layer.to_dense()(x), want, atol=1e-10)


def test_full_rank_factorisations_reproduce_the_layer():
    rng = np.random.default_rng(4)
    conv = _f64(nn.Conv2d(3, 4, 3, padding=1, rng=rng)).eval()
    x = rng.standard_normal((2, 3, 5, 5))
    np.testing.assert_allclose(lr.Tucker2Conv2d.from_conv(conv, (4, 3)).eval()(x), conv(x), atol=1e-10)
    lin = _f64(nn.Linear(9, 6, rng=rng)).eval()
    xl = rng.standard_normal((5, 9))
    np.testing.assert_allclose(lr.LowRankLinear.from_linear(lin, 6).eval()(xl), lin(xl), atol=1e-10)


def test_low_rank_linear_eval_uses_the_kernel_and_matches_training_path():
    rng = np.random.default_rng(5)
    lin = nn.Linear(40, 30, rng=rng)
    layer = lr.LowRankLinear.from_linear(lin, 8)
    x = rng.standard_normal((2, 3, 40)).astype(np.float32)
    y_train = layer.train()(x)
    y_eval = layer.eval()(x)
    assert y_eval.shape == (2, 3, 30) and y_eval.dtype == np.float32
    np.testing.assert_allclose(y_eval, y_train, rtol=1e-5, atol=1e-5)
    # an assigned new array (what optimizers do) is repacked
    layer.second.weight.data = layer.second.weight.data * np.float32(2)
    np.testing.assert_allclose(layer(x), 2 * y_train - layer.second.bias.data, rtol=1e-5, atol=1e-5)
    # so is a new bias array, or first factor, also in a 2-D call (the branch without reshapes)
    x2 = x.reshape(6, 40)
    y2 = layer(x2)
    layer.second.bias.data = layer.second.bias.data + np.float32(1)
    np.testing.assert_allclose(layer(x2), y2 + 1, rtol=1e-5, atol=1e-5)
    layer.first.weight.data = -layer.first.weight.data
    np.testing.assert_allclose(layer(x2), -y2 + 2 * layer.second.bias.data - 1, rtol=1e-5, atol=1e-5)
    # a layer without bias, and the bias Parameter given to it later
    nobias = lr.LowRankLinear(40, 30, 8, bias=False, rng=rng)
    want = nobias.train()(x2)
    np.testing.assert_allclose(nobias.eval()(x2), want, rtol=1e-5, atol=1e-5)
    nobias.second.bias = nn.Parameter(np.ones(30, np.float32))
    np.testing.assert_allclose(nobias(x2), want + 1, rtol=1e-5, atol=1e-5)
    # factors replaced by other layers (prune.to_sparse puts SparseLinear there) run their
    # own forwards in eval mode, not the dense kernel
    y2 = layer(x2)
    layer.first = nn.Sequential(layer.first)
    np.testing.assert_allclose(layer(x2), y2, rtol=1e-5, atol=1e-5)


def test_data_aware_from_linear_reduces_output_error():
    rng = np.random.default_rng(6)
    lin = _f64(nn.Linear(32, 20, rng=rng))
    x = rng.standard_normal((400, 32)) * np.geomspace(5, 0.01, 32)
    plain = lr.LowRankLinear.from_linear(lin, 5).eval()
    aware = lr.LowRankLinear.from_linear(lin, 5, x=x, damping=1e-6).eval()
    ref = lin.eval()(x)
    assert np.linalg.norm(aware(x) - ref) < np.linalg.norm(plain(x) - ref)


def test_spec_and_state_dict_round_trip():
    rng = np.random.default_rng(7)
    model = nn.Sequential(lr.Tucker2Conv2d(3, 4, 3, (2, 2), padding=1, rng=rng), nn.ReLU(),
                          lr.CPConv2d(4, 4, 3, 3, rng=rng), nn.Flatten(),
                          lr.LowRankLinear(4 * 3 * 3, 5, 2, rng=rng))
    spec = json.loads(json.dumps(nn.to_spec(model)))
    clone = nn.from_spec(spec)
    clone.load_state_dict(model.state_dict())
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(clone.eval()(x), model.eval()(x))
    assert "4.first.weight" in model.state_dict() and "2.vertical.weight" in model.state_dict()


def test_factorize_replaces_layers_by_name_and_fine_tunes():
    rng = np.random.default_rng(8)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, rng=rng), nn.ReLU(),
                          nn.Conv2d(6, 6, 3, padding=1, rng=rng), nn.Flatten(),
                          nn.Linear(6 * 16, 10, rng=rng))
    old = lr.factorize(model, {"0": {"method": "cp", "rank": 4, "n_iter": 30},
                               "2": {"ranks": (3, 3)}, "4": {"energy": 0.5}})
    assert set(old) == {"0", "2", "4"}
    assert isinstance(model[0], lr.CPConv2d) and isinstance(model[2], lr.Tucker2Conv2d)
    assert isinstance(model[4], lr.LowRankLinear)
    x = rng.standard_normal((32, 2, 4, 4)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    opt = nn.SGD(model.parameters(), lr=0.05)
    hist = nn.fit(model, x, y, optimizer=opt, epochs=15, batch_size=32, progress=False)
    assert hist.loss[-1] < hist.loss[0]
    dense_names = lr.to_dense(model)
    assert set(dense_names) == {"0", "2", "4"} and isinstance(model[4], nn.Linear)


def test_bad_plans_and_layers_are_refused_and_leave_the_model_untouched():
    rng = np.random.default_rng(9)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2, rng=rng), nn.Flatten(), nn.Linear(4, 3, rng=rng))
    with pytest.raises(ArgumentError, match="groups"):
        lr.factorize(model, {"2": {"rank": 2}, "0": {"ranks": (2, 2)}})
    assert isinstance(model[2], nn.Linear)  # nothing swapped
    with pytest.raises(ArgumentError, match="groups"):
        lr.CPConv2d.from_conv(model[0], 2)
    with pytest.raises(ArgumentError, match="target"):
        lr.factorize(model, {"7": {"rank": 1}})
    with pytest.raises(ArgumentError, match="rank"):
        lr.factorize(model, {"2": {"rank": 4}})
    with pytest.raises(ArgumentError, match="method"):
        lr.decompose(model[2], "cp", rank=1)
    with pytest.raises(DTypeError, match="layer"):
        lr.decompose(nn.ReLU())
    with pytest.raises(ShapeError, match="weight"):
        lr.tucker2(np.ones((3, 3, 3)), (1, 1))
    with pytest.raises(ArgumentError, match="ranks"):
        lr.tucker2(np.ones((3, 2, 3, 3)), (1, 3))
    with pytest.raises(ArgumentError, match="rank"):
        lr.LowRankLinear(4, 3, 0)


def test_tucker2_from_conv_refuses_impossible_ranks_and_installs_full_factors():
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(2, 8, 1, rng=rng)  # 1x1, S = 2: at most rank 2 on both modes
    with pytest.raises(ArgumentError, match="ranks"):
        lr.Tucker2Conv2d.from_conv(conv, (4, 2))
    stem = nn.Conv2d(3, 64, 3, padding=1, rng=rng)
    ranks = lr.tucker2_ranks_for_macs(stem.weight.shape, 0.5, (32, 32), (32, 32))
    layer = lr.Tucker2Conv2d.from_conv(stem, ranks)
    # every parameter has the configured shape: state_dict reloads into a fresh layer and
    # backward runs
    clone = nn.from_spec(nn.to_spec(layer))
    clone.load_state_dict(layer.state_dict())
    layer.train()
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = layer(x)
    assert layer.backward(np.ones_like(y)).shape == x.shape
    np.testing.assert_array_equal(clone.eval()(x), layer.eval()(x))


def test_factors_of_another_shape_are_refused_when_installed():
    from refcompress.lowrank.layers import _set
    lin = nn.Linear(4, 3)
    with pytest.raises(ShapeError, match=r"expected the parameter's shape \(3, 4\), got \(2, 4\)"):
        _set(lin.weight, np.zeros((2, 4)))
    _set(lin.weight, np.ones((3, 4)))
    assert lin.weight.data.dtype == np.float32 and lin.weight.data.sum() == 12


def test_plan_keys_the_method_does_not_take_are_refused_by_name():
    # {"rank": 2} is a Linear's key; a conv's Tucker-2 takes "ranks" (was Python's TypeError)
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, rng=rng), nn.Flatten(), nn.Linear(8, 3, rng=rng))
    with pytest.raises(ArgumentError, match=r"plan\['0'\]: unknown keys \['rank'\] for a Conv2d factored by "
                                            r"'tucker2'; accepted keys: \['method', 'ranks', 'n_iter'\]"):
        lr.factorize(model, {"2": {"rank": 2}, "0": {"rank": 2}})
    assert isinstance(model[2], nn.Linear)  # nothing swapped
    with pytest.raises(ArgumentError, match=r"plan\['0'\]: missing keys \['rank'\] for a Conv2d factored by 'cp'"):
        lr.factorize(model, {"0": {"method": "cp"}})
    with pytest.raises(ArgumentError, match=r"kwargs: unknown keys \['ranks'\] for a Linear factored by 'svd'"):
        lr.decompose(model[2], ranks=(1, 1))
    lr.factorize(model, {"0": {"ranks": (2, 2)}, "2": {"rank": 2}})
    assert isinstance(model[0], lr.Tucker2Conv2d) and isinstance(model[2], lr.LowRankLinear)
