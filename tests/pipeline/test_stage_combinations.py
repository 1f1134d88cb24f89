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
from refcompress.nn.spec import register_module
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
        p = {k: s.params[k] for k in s.given}
        if s.kind not in ("encode", "quantize") or p.get("method") in ("share", "qat"):
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


def test_two_svd_stages_on_different_layers_factor_each_once():
    r = _run(_mlp(), [{"kind": "lowrank", "method": "svd", "rank": 4, "layers": ["1"], "epochs": 1},
                      {"kind": "lowrank", "method": "svd", "rank": 2, "layers": ["3"], "epochs": 1}])
    final = list(r.final)
    assert [type(m).__name__ for m in final][1:] == ["LowRankLinear", "ReLU", "LowRankLinear", "ReLU", "Linear"]
    assert final[1].rank == 4 and final[3].rank == 2
    assert r.reports[1].parameters > r.reports[2].parameters


def test_a_second_lowrank_stage_without_layers_factors_what_the_first_left():
    r = _run(_mlp(), [{"kind": "lowrank", "rank": 4, "layers": ["1"], "epochs": 0},
                      {"kind": "lowrank", "rank": 2, "epochs": 0}])
    ranks = [m.rank for m in r.final if isinstance(m, lowrank.LowRankLinear)]
    assert ranks[0] == 4 and all(x == 2 for x in ranks[1:]) and len(ranks) >= 2  # never a factor of a factor
    assert not any(isinstance(m, lowrank.LowRankLinear) for f in r.final for m in f.children())


def test_a_layer_factored_by_an_earlier_stage_is_refused():
    # visible from the layers lists: at validation
    _bad([{"kind": "lowrank", "rank": 4, "layers": ["1", "3"]}, {"kind": "lowrank", "rank": 2, "layers": ["3"]}],
         r"r.toml: stage 2 \(lowrank\) key 'layers': layer '3' is factored by stage 1 \(lowrank:svd\) already")
    _bad([{"kind": "lowrank", "method": "tucker2", "mac_fraction": 0.5, "layers": ["0"]},
          {"kind": "lowrank", "method": "cp", "mac_fraction": 0.5, "layers": ["0"]}],
         r"stage 2 \(lowrank\) key 'layers': layer '0' is factored by stage 1 \(lowrank:tucker2\) already")
    # the first stage factors every layer: at run time, before the second stage changes anything
    _bad([{"kind": "lowrank", "rank": 4, "epochs": 0}, {"kind": "lowrank", "rank": 2, "layers": ["3"], "epochs": 0}],
         r"stage 2 \(lowrank:svd\) key 'layers': layer '3' was factored by stage 1 \(lowrank:svd\) already",
         model=_mlp())


@register_module
class _MyLinear(nn.Linear):  # a user's Linear subclass (cloned through its spec)
    pass


def _my_mlp():
    nn.manual_seed(0)
    return nn.Sequential(nn.Flatten(), _MyLinear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_subclasses_of_linear_are_pruned_and_factored():
    r = _run(_my_mlp(), [{"kind": "prune", "method": "magnitude", "sparsity": 0.5, "layers": ["1"], "epochs": 1}])
    assert type(r.final[1]).__name__ == "SparseLinear"
    r = _run(_my_mlp(), [{"kind": "lowrank", "method": "svd", "rank": 4, "epochs": 1}])
    assert isinstance(r.final[1], lowrank.LowRankLinear) and r.final[1].rank == 4


def test_batchnorm_after_a_subclassed_layer_folds_for_sharing():
    nn.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), _MyLinear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    d = _images()
    _trained_bn(m, d)
    folded = fold_batchnorm_for_sharing(m)
    assert not any(isinstance(x, nn.BatchNorm1d) for x in folded.modules())
    np.testing.assert_allclose(folded(d.X_test), m.eval()(d.X_test), rtol=1e-4, atol=1e-5)


def test_a_shared_module_is_counted_once_in_the_reports_bytes():
    from refcompress.pipeline import metrics
    from refcompress.pipeline.compress import measure

    nn.manual_seed(0)
    lin = nn.Linear(64, 64)
    m = nn.Sequential(nn.Flatten(), lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(64, 10))
    rep = measure(m, _images(), "orig", repeats=1, latency=False)
    assert rep.stored_bytes == metrics.stored_bytes(m) == 4 * (64 * 64 + 64 + 64 * 10 + 10)


def test_nm_layers_deploy_as_csr_once_a_later_prune_makes_csr_smaller():
    from refcompress import prune

    r = _run(_mlp(), [{"kind": "prune", "method": "nm", "n": 2, "m": 4, "epochs": 1},
                      {"kind": "prune", "method": "magnitude", "sparsity": 0.9, "epochs": 1}])
    kinds = {type(m).__name__ for m in r.final.modules()}
    assert "NMLinear" not in kinds and "SparseLinear" in kinds
    assert r.reports[2].stored_bytes < r.reports[1].stored_bytes
    # while N:M is the smaller form (the nm stage itself, a finetune after it) the layers stay N:M
    r = _run(_mlp(), [{"kind": "prune", "method": "nm", "n": 2, "m": 4, "epochs": 1}, {"kind": "finetune", "epochs": 1}])
    assert all(isinstance(m, prune.NMLinear) for m in list(r.final)[1::2])


def test_svd_then_tucker2_factors_each_layer_once():
    r = _run(_cnn(), [{"kind": "lowrank", "method": "svd", "rank": 2, "epochs": 0},
                      {"kind": "lowrank", "method": "tucker2", "mac_fraction": 0.5, "epochs": 0}])
    kinds = [type(m).__name__ for m in r.final]
    assert kinds.count("Tucker2Conv2d") == 2 and kinds[-1] == "LowRankLinear"


def test_svd_with_mac_fraction_keeps_that_fraction_of_a_linears_macs():
    r = _run(_mlp(), [{"kind": "lowrank", "method": "svd", "mac_fraction": 0.5, "epochs": 0}])
    first = r.final[1]  # Linear(64, 32): rank int(0.5 * 64 * 32 / 96) = 10
    assert type(first).__name__ == "LowRankLinear" and first.rank == 10


def test_keys_a_method_would_ignore_are_refused_at_validation():
    for key, value in (("rank", 2), ("energy", 0.9), ("param_fraction", 0.5)):
        for method in ("tucker2", "cp"):
            _bad([{"kind": "lowrank", "method": method, key: value}],
                 rf"stage 1 \(lowrank\) key '{key}': method '{method}' chooses its ranks by .* set mac_fraction")
    for method in ("weight_only", "dynamic"):
        _bad([{"kind": "quantize", "method": method, "layer_bits": {"1": 4}}],
             rf"stage 1 \(quantize\) key 'layer_bits': method '{method}' quantizes every layer .* method 'static'")
    _bad([{"kind": "quantize", "method": "dynamic", "bits": 4}],
         r"stage 1 \(quantize\) key 'bits': method 'dynamic' is int8 \(bits = 8\), got 4")
    for method in ("static", "weight_only", "dynamic"):
        for key, value in (("epochs", 3), ("lr", 1e-3), ("batch_size", 8)):
            _bad([{"kind": "quantize", "method": method, key: value}],
                 rf"stage 1 \(quantize\) key '{key}': method '{method}' converts the model without training it")
    _bad([{"kind": "lowrank", "rank": 2}, {"kind": "quantize", "method": "factored", "epochs": 1}],
         r"stage 2 \(quantize\) key 'epochs': method 'factored' converts the model without training it")
    # what they still accept
    recipe_from_dict({"stage": [{"kind": "quantize", "method": "static", "layer_bits": {"1": 4}}]})
    recipe_from_dict({"stage": [{"kind": "quantize", "method": "share", "epochs": 1, "lr": 1e-4}]})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_at_validation(value):
    _bad([{"kind": "prune", "sparsity": value}], r"r.toml: stage 1 \(prune\) key 'sparsity': expected a finite number")
    _bad([{"kind": "finetune", "lr": value}], r"stage 1 \(finetune\) key 'lr': expected a finite number")
    _bad([{"kind": "distill", "temperature": value}], r"stage 1 \(distill\) key 'temperature': expected a finite")


def test_recipe_grid_points_keep_defaults_as_defaults():
    # a grid over a static quantization's bits must not set its (unused) default epochs
    from refcompress.pipeline.sweep import _variants

    rec = recipe_from_dict({"stage": [{"kind": "quantize", "method": "static"}]})
    points = list(_variants(rec, {"1.bits": [8, 6]}))
    assert [r.stages[0]["bits"] for _, r in points] == [8, 6]


def test_layers_a_stage_cannot_act_on_are_refused_before_any_work():
    _bad([{"kind": "lowrank", "rank": 2, "layers": []}], r"stage 1 \(lowrank\) key 'layers': expected at least one")
    _bad([{"kind": "prune", "layers": []}], r"stage 1 \(prune\) key 'layers': expected at least one")
    _bad([{"kind": "lowrank", "rank": 2, "layers": ["2"]}],
         r"stage 1 \(lowrank\) key 'layers': method 'svd' factors Linear layers; \['2'\] are not", _mlp())
    _bad([{"kind": "lowrank", "rank": 2, "layers": ["0"]}], r"method 'svd' factors Linear layers; \['0'\]", _cnn())
    _bad([{"kind": "lowrank", "method": "cp", "mac_fraction": 0.5, "layers": ["8"]}],
         r"method 'cp' factors ungrouped Conv2d layers; \['8'\] are not", _cnn())
    _bad([{"kind": "prune", "method": "magnitude", "layers": ["2"]}],
         r"stage 1 \(prune\) key 'layers': \['2'\] are not Linear / Conv2d layers", _mlp())
    _bad([{"kind": "prune", "method": "structured", "layers": ["1"]}], r"\['1'\] are not Linear / Conv2d", _cnn())


@pytest.mark.parametrize("kind", ["finetune", "distill"])
def test_nm_layers_stay_nm_after_a_later_training_stage(kind):
    from refcompress.prune.sparse_layers import NMLinear

    r = _run(_mlp(), [{"kind": "prune", "method": "nm", "n": 2, "m": 4, "epochs": 0},
                      {"kind": kind, "epochs": 1}])
    assert [type(m) for m in r.final if type(m).__name__.endswith("Linear")] == [NMLinear] * 3


def test_share_of_a_layer_pruned_to_nothing_names_the_stage_and_layer():
    with pytest.warns(RuntimeWarning, match="layer '3' loses all of its weights"):
        _bad([{"kind": "prune", "method": "magnitude", "sparsity": 1.0, "layers": ["3"], "epochs": 0},
              {"kind": "quantize", "method": "share", "bits": 4, "epochs": 0}],
             r"stage 2 \(quantize\): method 'share': layer '3' has no nonzero weights left to share", _mlp())


@pytest.mark.parametrize("grid,match", [
    ({"1.sparsity": 0.9}, r"key '1.sparsity': expected a non-empty list of values to try, got 0.9 \(for one value"),
    ({"1.sparsity": []}, r"key '1.sparsity': expected a non-empty list of values to try, got \[\]"),
    ({"1.method": "nm"}, r"key '1.method': expected a non-empty list .* got 'nm'"),
    (["1.sparsity"], r"grid: expected a dict .* got list"),
    ({"1.sparsity": [float("nan")]}, r"stage 1 \(prune\) key 'sparsity': expected a finite number")])
def test_recipe_grid_refuses_malformed_grids_before_any_work(grid, match):
    from refcompress.pipeline.sweep import recipe_grid

    class NoWork:
        def submit(self, *a):
            raise AssertionError("a trial was submitted")

    rec = {"name": "t", "stage": [{"kind": "prune", "method": "magnitude", "sparsity": 0.5, "epochs": 0}]}
    with pytest.raises(ArgumentError, match=match):
        recipe_grid(_mlp(), rec, grid, _images(), executor=NoWork())



def test_a_grid_point_that_sets_method_drops_the_keys_the_new_method_does_not_take():
    from refcompress.pipeline.sweep import _variants

    r = recipe_from_dict({"name": "t", "stage": [{"kind": "prune", "method": "magnitude", "sparsity": 0.5},
                                                 {"kind": "quantize", "method": "qat", "epochs": 1}]})
    pts = list(_variants(r, {"2.method": ["static", "qat"]}))
    assert [p for p, _ in pts] == [{"2.method": "static"}, {"2.method": "qat"}]
    assert "epochs" not in pts[0][1].stages[1].given and pts[1][1].stages[1]["epochs"] == 1
    r = recipe_from_dict({"name": "t", "stage": [{"kind": "quantize", "method": "static", "per_channel": False}]})
    pts = list(_variants(r, {"1.method": ["static", "share"]}))
    assert pts[0][1].stages[0]["per_channel"] is False and pts[1][1].stages[0]["per_channel"] is True
    # a key the point sets itself is kept, and refused if the method cannot use it
    r = recipe_from_dict({"name": "t", "stage": [{"kind": "quantize", "method": "qat", "epochs": 1}]})
    with pytest.raises(ArgumentError, match=r"key 'epochs': method 'static' converts the model without training"):
        list(_variants(r, {"1.method": ["static"], "1.epochs": [3]}))
