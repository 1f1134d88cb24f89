"""The reference models: architecture, determinism, and a short training run."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from refcompress import nn
from refcompress.data import load_digits
from refcompress.errors import ArgumentError, DTypeError
from refcompress.models import REFERENCE_MODELS, mlp_300_100, small_cnn, train_reference


def _x(n=3):
    return np.random.default_rng(0).random((n, 1, 8, 8), dtype=np.float32)


def test_mlp_architecture():
    m = mlp_300_100().eval()
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    assert shapes == {"1.weight": (300, 64), "1.bias": (300,), "3.weight": (100, 300), "3.bias": (100,),
                      "5.weight": (10, 100), "5.bias": (10,)}
    assert sum(p.size for p in m.parameters()) == 50_610
    out = m(_x())
    assert out.shape == (3, 10) and out.dtype == np.float32
    np.testing.assert_array_equal(m(_x().reshape(3, 64)), out)


def test_small_cnn_architecture():
    m = small_cnn().eval()
    sd = m.state_dict()
    assert sd["0.weight"].shape == (16, 1, 3, 3) and sd["3.weight"].shape == (32, 16, 3, 3)
    assert sd["8.weight"].shape == (10, 512)
    assert sd["1.running_mean"].shape == (16,) and sd["4.running_var"].shape == (32,)
    assert sum(p.size for p in m.parameters()) == 10_026
    assert m(_x()).shape == (3, 10)


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_builders_are_deterministic_per_generator(name):
    build = REFERENCE_MODELS[name]
    a = build(rng=np.random.default_rng(4)).state_dict()
    b = build(rng=np.random.default_rng(4)).state_dict()
    c = build(rng=np.random.default_rng(5)).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    assert nn.from_spec(nn.to_spec(build())).state_dict().keys() == a.keys()


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize("name,floor", [("mlp_300_100", 0.85), ("small_cnn", 0.80)])
def test_short_training_learns_and_is_reproducible(digits, name, floor):
    nn.manual_seed(11)
    before = nn.init.get_rng().bit_generator.state
    model, acc = train_reference(name, seed=3, epochs=2, data=digits)
    assert nn.init.get_rng().bit_generator.state == before  # the shared generator is untouched
    assert not model.training
    assert isinstance(acc, float) and floor <= acc <= 1.0
    pred = model(digits.X_test).argmax(axis=1)
    assert acc == pytest.approx(np.mean(pred == digits.y_test))
    again, acc2 = train_reference(name, seed=3, epochs=2, data=digits)
    assert acc2 == acc
    np.testing.assert_array_equal(again(digits.X_test), model(digits.X_test))


def test_flat_data_is_accepted(digits):
    model, acc = train_reference("mlp_300_100", seed=0, epochs=1, data=digits.as_flat())
    assert acc > 0.5


def test_bad_arguments(digits):
    with pytest.raises(ArgumentError, match="name"):
        train_reference("resnet50")
    with pytest.raises(ArgumentError, match="seed"):
        train_reference("mlp_300_100", seed=-1)
    with pytest.raises(ArgumentError, match="epochs"):
        train_reference("mlp_300_100", epochs=0, data=digits)
    with pytest.raises(ArgumentError, match="threads"):
        train_reference("mlp_300_100", threads=0, data=digits)
    with pytest.raises(DTypeError, match="data"):
        train_reference("mlp_300_100", data=(digits.X_train, digits.y_train))
    with pytest.raises(DTypeError, match="rng"):
        mlp_300_100(rng=0)
    with pytest.raises(DTypeError, match="rng"):
        small_cnn(rng="seed")
