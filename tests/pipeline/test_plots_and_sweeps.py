"""Plots write real PNGs; recipe grids run through an executor, process pool included."""

import concurrent.futures as cf
import multiprocessing
from types import SimpleNamespace

import numpy as np
import pytest

from refcompress import nn, prune
from refcompress.errors import ArgumentError
from refcompress.pipeline.compress import compress
from refcompress.pipeline.sweep import recipe_grid

PNG = b"\x89PNG\r\n\x1a\n"


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (500, 12)).astype(np.float32)
    y = X[:, :3].argmax(axis=1).astype(np.int64)
    d = SimpleNamespace(X_train=X[:300], y_train=y[:300], X_val=X[300:400], y_val=y[300:400],
                        X_test=X[400:], y_test=y[400:])
    nn.manual_seed(seed)
    m = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    nn.fit(m, d.X_train, d.y_train, optimizer=nn.AdamW(list(m.parameters()), lr=1e-2), epochs=10,
           batch_size=50, progress=False)
    return m.eval(), d


RECIPE = {"name": "g", "stage": [{"kind": "prune", "method": "magnitude", "sparsity": 0.5, "epochs": 1},
                                 {"kind": "quantize", "method": "share", "bits": 4, "epochs": 0},
                                 {"kind": "encode", "index_bits": 4}]}


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from refcompress.pipeline import plots

    model, d = _problem()
    result = compress(model, RECIPE, d, repeats=2)
    paths = [plots.pareto({"g": result}, tmp_path / "p.png"),
             plots.weight_histograms(model, result.final, tmp_path / "w.png"),
             plots.singular_values(model, tmp_path / "s.png", ranks={"0": 5})]
    sens = prune.sensitivity_analysis(model, lambda m: float(nn.evaluate(m, d.X_val, d.y_val)["accuracy"]),
                                      amounts=(0.5, 0.9))
    paths.append(plots.sensitivity_curves(sens, tmp_path / "c.png"))
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == PNG
    with pytest.raises(ArgumentError, match="results"):
        plots.pareto({}, tmp_path / "x.png")


def test_a_plot_that_fails_mid_write_keeps_the_old_png(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from refcompress.pipeline import plots

    model, _ = _problem()
    target = tmp_path / "s.png"
    plots.singular_values(model, target)
    old = target.read_bytes()

    def half_then_fail(self, f, **kwargs):
        f.write(PNG)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        plots.singular_values(model, target)
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]
    monkeypatch.undo()
    with pytest.raises(ArgumentError, match="path: .* is a directory"):
        plots.singular_values(model, tmp_path)


def test_recipe_grid_through_a_process_pool_matches_serial():
    model, d = _problem(1)
    grid = {"1.sparsity": [0.3, 0.8]}
    with cf.ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as ex:
        pooled = recipe_grid(model, RECIPE, grid, d, executor=ex)
    with cf.ThreadPoolExecutor(max_workers=1) as ex:
        serial = recipe_grid(model, RECIPE, grid, d, executor=ex)
    assert [p for p, _ in pooled] == [{"1.sparsity": 0.3}, {"1.sparsity": 0.8}]
    for (_, a), (_, b) in zip(pooled, serial):
        assert [r["stored_bytes"] for r in a] == [r["stored_bytes"] for r in b]
        assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
    assert pooled[1][1][-1]["stored_bytes"] < pooled[0][1][-1]["stored_bytes"]


def test_grid_keys_are_validated_before_any_work():
    model, d = _problem(2)
    with pytest.raises(ArgumentError, match="no key 'amount'"):
        recipe_grid(model, RECIPE, {"1.amount": [0.5]}, d)
    with pytest.raises(ArgumentError, match="stage number"):
        recipe_grid(model, RECIPE, {"9.sparsity": [0.5]}, d)
    with pytest.raises(ArgumentError, match="sparsity"):
        recipe_grid(model, RECIPE, {"1.sparsity": [1.5]}, d)


def test_grid_stage_numbers_start_at_one():
    model, d = _problem(3)
    with pytest.raises(ArgumentError, match="stage number"):
        recipe_grid(model, RECIPE, {"0.epochs": [1]}, d)
