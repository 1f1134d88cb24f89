"""Schedules: Zhu & Gupta's cubic AGP formula, the geometric iterative schedule, AGP inside
nn.fit, and the iterative prune -> fine-tune loop with its accuracy-drop budget."""

import numpy as np
import pytest

from refcompress import nn, prune as P
from refcompress.errors import ArgumentError


def mlp(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(6, 16, rng=rng), nn.ReLU(), nn.Linear(16, 3, rng=rng))


def test_agp_formula_points():
    # s_t = s_f + (s_i - s_f)(1 - k/n)^3
    assert P.agp_sparsity(0, 0.9, 10) == 0.0
    assert P.agp_sparsity(5, 0.9, 10) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert P.agp_sparsity(10, 0.9, 10) == pytest.approx(0.9)
    assert P.agp_sparsity(99, 0.9, 10) == pytest.approx(0.9)
    # start step, frequency (held between pruning steps), initial sparsity
    assert P.agp_sparsity(3, 0.8, 4, start_step=4) == 0.0
    assert P.agp_sparsity(4, 0.8, 4, start_step=4, initial_sparsity=0.2) == pytest.approx(0.2)
    assert P.agp_sparsity(9, 0.8, 4, start_step=4, frequency=2, initial_sparsity=0.2) == \
        pytest.approx(0.8 + (0.2 - 0.8) * (1 - 2 / 4) ** 3)
    s = [P.agp_sparsity(t, 0.95, 20) for t in range(25)]
    steps = np.diff(s[:21])
    assert np.all(steps > 0) and np.all(np.diff(steps) < 0)  # fast first, slow near the end


def test_agp_bad_input():
    with pytest.raises(ArgumentError, match="final_sparsity"):
        P.agp_sparsity(0, 1.2, 10)
    with pytest.raises(ArgumentError, match="initial_sparsity"):
        P.agp_sparsity(0, 0.5, 10, initial_sparsity=0.6)
    with pytest.raises(ArgumentError, match="n_steps"):
        P.agp_sparsity(0, 0.5, 0)


def test_geometric_schedule():
    s = P.geometric_sparsities(0.96, 4)
    assert s[-1] == 0.96
    survivors = 1 - np.array([0.0] + s)
    # every round keeps the same fraction (0.04^(1/4)) of the previous round's survivors
    np.testing.assert_allclose(survivors[1:] / survivors[:-1], np.full(4, 0.04 ** 0.25), rtol=1e-12)


def test_cubic_schedule_is_agp_per_round():
    s = P.cubic_sparsities(0.95, 5)
    assert s == pytest.approx([0.95 - 0.95 * (1 - r / 5) ** 3 for r in range(1, 6)])
    assert s[-1] == 0.95 and np.all(np.diff(np.diff(s)) < 0)


def _data(seed=0, n=96):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    return X, y


def test_agp_pruner_in_fit_reaches_final_sparsity_monotonically():
    X, y = _data()
    m = mlp()
    pruner = P.AGPPruner(m, 0.8, n_steps=6, frequency=2, scope="global")
    seen = []
    step = pruner.step_fn()

    def recording(model, batch):
        out = step(model, batch)
        seen.append(P.model_sparsity(model))
        return out

    nn.fit(m, X, y, optimizer=nn.SGD(m.parameters(), lr=0.05, momentum=0.9), epochs=5,
           batch_size=16, step_fn=recording, progress=False)
    assert seen[-1] == pytest.approx(0.8, abs=0.01)
    assert np.all(np.diff(seen) >= 0)
    assert pruner.sparsity_ == pytest.approx(0.8)


def test_iterative_prune_runs_the_schedule_and_stops_on_budget():
    X, y = _data()
    m = mlp()
    nn.fit(m, X, y, optimizer=nn.AdamW(m.parameters(), lr=1e-2), epochs=10, progress=False)
    calls = []

    def fine_tune(model, r):
        calls.append(r)
        nn.fit(model, X, y, optimizer=nn.AdamW(model.parameters(), lr=1e-2), epochs=2, progress=False)

    def evaluate(model):
        return nn.evaluate(model, X, y)["accuracy"]

    res = P.iterative_prune(m, fine_tune, evaluate, sparsities=P.geometric_sparsities(0.6, 3))
    assert calls == [0, 1, 2] and res.stopped_by == "schedule"
    assert [h["sparsity"] for h in res.history] == pytest.approx(P.geometric_sparsities(0.6, 3), abs=0.01)
    assert P.model_sparsity(m) == pytest.approx(0.6, abs=0.01)

    # a budget that the second round breaks: that round is undone, weights and masks included
    scores = iter([0.95, 0.90, 0.70])
    m2 = mlp(1)
    after_round0 = {}

    def snapshot(model, r):
        if r == 0:
            after_round0.update(state=model.state_dict(), mask=P.get_mask(model[0]).copy())

    res = P.iterative_prune(m2, snapshot, lambda model: next(scores),
                            sparsities=[0.3, 0.6], max_drop=0.1)
    assert res.stopped_by == "budget"
    assert [h["kept"] for h in res.history] == [True, False]
    assert res.final["target"] == 0.3
    assert P.model_sparsity(m2) == pytest.approx(0.3, abs=0.01)
    np.testing.assert_array_equal(P.get_mask(m2[0]), after_round0["mask"])
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(v, after_round0["state"][k])


def test_iterative_prune_with_han_quality_is_monotone():
    m = mlp()
    res = P.iterative_prune(m, lambda model, r: None, lambda model: 1.0, qualities=[0.5, 1.0, 1.5],
                            scope="layer")
    s = [h["sparsity"] for h in res.history]
    assert s[0] > 0 and np.all(np.diff(s) > 0)


def test_iterative_prune_bad_input():
    m = mlp()
    f = lambda model, r=None: 1.0  # noqa: E731
    with pytest.raises(ArgumentError, match="sparsities, qualities"):
        P.iterative_prune(m, f, f)
    with pytest.raises(ArgumentError, match="non-decreasing"):
        P.iterative_prune(m, f, f, sparsities=[0.5, 0.2])
    with pytest.raises(ArgumentError, match=r"sparsities\[1\]"):
        P.iterative_prune(m, f, f, sparsities=[0.5, 1.2])


def test_fit_restoring_an_earlier_epoch_keeps_the_current_masks():
    # AGP raises the sparsity every epoch; early stopping restores an epoch saved before the
    # last raises.  The restored weights must still respect the (final) masks.
    X, y = _data(0, 128)
    Xv, yv = _data(1, 64)
    m = mlp()
    pruner = P.AGPPruner(m, 0.95, n_steps=12, frequency=4)  # one raise per epoch
    hist = nn.fit(m, X, y, optimizer=nn.SGD(m.parameters(), lr=0.05, momentum=0.9), epochs=12,
                  batch_size=32, step_fn=pruner.step_fn(), progress=False,
                  validation_data=(Xv, yv), patience=2, monitor="val_acc", restore_best=True)
    assert hist.stopped_early or hist.best_epoch < len(hist.val_acc) - 1  # a stale restore
    for _, layer in P.masked_layers(m):
        assert np.all(layer.weight.data[~P.get_mask(layer)] == 0)


def test_a_round_dropping_exactly_the_budget_is_kept():
    m = mlp()
    res = P.iterative_prune(m, lambda model, r: None, lambda model: 0.96, sparsities=[0.5],
                            max_drop=0.01, baseline=0.97)  # drop 0.97 - 0.96 == 0.01
    assert res.stopped_by == "schedule" and res.history[0]["kept"]
    assert P.model_sparsity(m) == pytest.approx(0.5, abs=0.01)
