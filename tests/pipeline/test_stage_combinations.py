"""Stage combinations the recipe validator accepts must run (or be refused before any
work), and every bundled recipe must run its stage sequence (on a tiny budget)."""

import glob
import os
from types import SimpleNamespace

import numpy as np
import pytest

from refcompress import lowrank, nn, quant
from refcompress.errors import ArgumentError
from refcompress.models import mlp_300_100, small_cnn
from refcompress.pipeline.compress import compress
from refcompress.pipeline.recipe import load_recipe, recipe_from_dict
from refcompress.pipeline.stages import fold_batchnorm_for_sharing

RECIPES = os.path.join(os.path.dirname(__file__), "..", "..", "refcompress", "pipeline", "recipes")


def _images(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    a, b = n // 2, 3 * n // 4
    return SimpleNamespace(X_train=X[:a], y_train=y[:a], X_val=X[a:b], y_val=y[a:b], X_test=X[b:], y_test=y[b:])


def _cnn():
    return small_cnn(rng=np.random.default_rng(0)).eval()


def _mlp():
    nn.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


def _run(model, stages, data=None):
    return compress(model, {"name": "t", "stage": stages}, data or _images(), repeats=1)


def _bad(stages, match, model=None):
    with pytest.raises(ArgumentError, match=match):
        if model is None:
            recipe_from_dict({"name": "t", "stage": stages}, "r.toml")
        else:
            _run(model, stages)


def _trained_bn(model, data):
    # BatchNorm statistics other than the initial ones, so that folding them matters
    nn.fit(model.train(), data.X_train, data.y_train, optimizer=nn.AdamW(list(model.parameters()), lr=1e-2),
           epochs=1, batch_size=16, progress=False)
    return model.eval()


@pytest.mark.parametrize("method", ["tucker2", "cp"])
def test_share_after_lowrank_on_a_model_with_batchnorm(method):
    # small_cnn: Conv, BN, ReLU, Conv, BN, ...; the factored conv '3' is followed by BN '4'
    d = _images()
    r = _run(_trained_bn(_cnn(), d), [
        {"kind": "lowrank", "method": method, "mac_fraction": 0.5, "layers": ["3"], "epochs": 0},
        {"kind": "quantize", "method": "share", "bits": 4, "epochs": 0},
        {"kind": "encode", "index_bits": 4}])
    shared = r.models[2]
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in shared.modules())
    factored = [m for m in shared.modules() if isinstance(m, (lowrank.Tucker2Conv2d, lowrank.CPConv2d))]
    assert len(factored) == 1
    assert all(isinstance(c, quant.SharedConv2d) for c in factored[0].children())  # each factor shared
    assert r.reports[3].stored_bytes < r.reports[1].stored_bytes


def test_batchnorm_after_a_factored_layer_folds_into_its_output_factor():
    d = _images()
    model = _trained_bn(_cnn(), d)
    lowrank.factorize(model, {"3": {"method": "tucker2", "ranks": [8, 8]}})
    folded = fold_batchnorm_for_sharing(model)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "ReLU", "Tucker2Conv2d", "ReLU", "MaxPool2d",
                                                 "Flatten", "Linear"]
    x = d.X_test[:5]
    np.testing.assert_allclose(folded(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def _tiny_budget(recipe):
    """The recipe with every stage's training cut to the least its validation allows."""
    raw = {"name": recipe.name, "stage": []}
    for s in recipe.stages:
        p = {k: v for k, v in s.params.items() if v is not None}
        if "epochs" in p:
            least = 0
            if s.kind == "distill" or (s.kind == "quantize" and p.get("method") == "qat"):
                least = 1
            if s.kind == "prune" and p.get("method") == "agp":
                least = 2
            p["epochs"] = least
        if s.kind == "prune" and "rounds" in p:
            p["rounds"] = 1
        raw["stage"].append({"kind": s.kind, **p})
    return recipe_from_dict(raw, recipe.source)


def _bundled():
    from refcompress.pipeline.transformer import is_transformer_recipe

    files = sorted(glob.glob(os.path.join(RECIPES, "*.toml")))
    assert files
    return [f for f in files if not is_transformer_recipe(f)]


@pytest.mark.parametrize("path", _bundled(), ids=os.path.basename)
def test_every_bundled_recipe_validates_and_runs_its_stages(path):
    recipe = load_recipe(path)
    name = os.path.basename(path)
    model = (small_cnn if "cnn" in name else mlp_300_100)(rng=np.random.default_rng(0))
    r = compress(model.eval(), _tiny_budget(recipe), _images(), repeats=1)
    assert len(r.reports) == len(recipe.stages) + 1
