"""Review-3 fixes: the teacher cache with tuple / list batch inputs (two-input models),
and soft_target_loss using the plain kl_div formula at ordinary temperatures."""

import numpy as np
import pytest

from refcompress import nn
from refcompress.distill import Distiller, soft_target_loss
from refcompress.nn.losses import kl_div


class _TwoIn(nn.Module):
    """forward takes a tuple (x1, x2); counts its calls."""

    def __init__(self, d2, seed):
        super().__init__()
        r = np.random.default_rng(seed)
        self.a, self.b = nn.Linear(6, 3, rng=r), nn.Linear(d2, 3, rng=r)
        self.calls = 0

    def forward(self, xs):
        self.calls += 1
        x1, x2 = xs
        return self.a(x1) + self.b(x2)

    def backward(self, g):
        self.a.backward(g)
        self.b.backward(g)
        return None


def _fit_two_input(d2, cache, wrap=tuple, buffer=False):
    rng = np.random.default_rng(0)
    batches = [(wrap((rng.standard_normal((8, 6), np.float32), rng.standard_normal((8, d2), np.float32))),
                rng.integers(0, 3, 8)) for _ in range(3)]
    s, t = _TwoIn(d2, 0), _TwoIn(d2, 1)
    data = batches
    if buffer:                         # one pair of buffers refilled for every batch
        b1, b2 = np.empty((8, 6), np.float32), np.empty((8, d2), np.float32)

        class Loader:                  # batch order rotates by one each epoch
            epoch = 0

            def __iter__(self):
                k, Loader.epoch = Loader.epoch, Loader.epoch + 1
                for (x1, x2), y in batches[k % 3:] + batches[:k % 3]:
                    b1[...], b2[...] = x1, x2
                    yield (b1, b2), y
        data = Loader()
    Distiller(s, t, alpha=0.5, cache_teacher=cache).fit(data, epochs=3, lr=0.1, progress=False)
    return {k: v.copy() for k, v in s.state_dict().items()}, t.calls


@pytest.mark.parametrize("d2", [2, 6])           # unequal and equal input shapes
@pytest.mark.parametrize("wrap", [tuple, list])
def test_tuple_batches_train_and_hit_the_teacher_cache(d2, wrap):
    cached, n_cached = _fit_two_input(d2, True, wrap)
    fresh, n_fresh = _fit_two_input(d2, False, wrap)
    for k in cached:
        np.testing.assert_array_equal(cached[k], fresh[k])
    # 3 batches x 3 epochs (+1 prepare probe); cached: each batch once
    assert n_fresh == 10 and n_cached == 4


def test_tuple_batches_refilled_in_place_do_not_hit_stale_entries():
    # the same two buffer objects hold another batch at each position every epoch
    cached, n_cached = _fit_two_input(6, True, buffer=True)
    fresh, n_fresh = _fit_two_input(6, False, buffer=True)
    for k in cached:
        np.testing.assert_array_equal(cached[k], fresh[k])
    assert n_cached == n_fresh == 10


def test_uncacheable_batch_inputs_run_the_teacher_every_time():
    class DictIn(_TwoIn):
        def forward(self, xs):
            return super().forward((xs["a"], xs["b"]))
    rng = np.random.default_rng(0)
    batches = [({"a": rng.standard_normal((8, 6), np.float32), "b": rng.standard_normal((8, 2), np.float32)},
                rng.integers(0, 3, 8)) for _ in range(2)]
    s, t = DictIn(2, 0), DictIn(2, 1)
    Distiller(s, t, alpha=0.5).fit(batches, epochs=2, lr=0.1, progress=False)
    assert t.calls == 1 + 4


def _old_soft_target(s, t, T):
    """soft_target_loss as at 8b46435 (plain kl_div times T^2)."""
    value, grad = kl_div(s.astype(np.float64), t.astype(np.float64), temperature=T)
    T2 = T * T
    return value * T2, (grad * T2).astype(s.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0, 10.0, 20.0, 100.0])
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_ordinary_temperatures_are_bit_identical_to_the_plain_formula(dtype, T, scale):
    rng = np.random.default_rng(3)
    s = (rng.normal(size=(64, 10)) * scale).astype(dtype)
    t = (rng.normal(size=(64, 10)) * scale).astype(dtype)
    v, g = soft_target_loss(s, t, T)
    v0, g0 = _old_soft_target(s, t, T)
    assert v == v0
    np.testing.assert_array_equal(g, g0)
