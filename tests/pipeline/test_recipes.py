"""Recipes: validation before any work, and compress() end to end on a tiny problem."""

from types import SimpleNamespace

import numpy as np
import pytest

from refcompress import nn
from refcompress.errors import ArgumentError
from refcompress.pipeline.compress import compress
from refcompress.pipeline.deep_compression import DeepCompressedLinear
from refcompress.pipeline.recipe import load_recipe, recipe_from_dict


def _bad(stages, match):
    with pytest.raises(ArgumentError, match=match):
        recipe_from_dict({"name": "t", "stage": stages}, "r.toml")


def test_validation_names_file_stage_key_and_expectation():
    _bad([{"kind": "shrink"}], r"r.toml: stage 1 key 'kind': expected one of")
    _bad([{"kind": "prune", "sparsity": 1.5}], r"stage 1 \(prune\) key 'sparsity': expected a number in \[0, 1\], got 1.5")
    _bad([{"kind": "prune", "amount": 0.5}], r"stage 1 \(prune\) key 'amount': unknown key")
    _bad([{"kind": "quantize"}, {"kind": "quantize", "method": "share"}], "a model is quantized once")
    _bad([{"kind": "encode"}], "needs an earlier quantize stage with method = 'share'")
    _bad([{"kind": "quantize"}, {"kind": "finetune"}], "ends the float model")
    _bad([{"kind": "quantize", "method": "weight_only"}, {"kind": "finetune"}], "ends the float model")
    _bad([{"kind": "quantize", "method": "share"}, {"kind": "encode"}, {"kind": "prune"}], "ends the float model")
    _bad([{"kind": "quantize", "method": "share"}, {"kind": "prune"}], "prune and factor before sharing")
    _bad([{"kind": "lowrank", "rank": 2}, {"kind": "quantize"}], "no form of method 'static'.*method = 'factored'")
    _bad([{"kind": "quantize", "method": "factored"}], "needs an earlier lowrank stage with method = 'svd'")
    _bad([{"kind": "lowrank", "method": "tucker2", "mac_fraction": 0.5}, {"kind": "quantize", "method": "factored"}],
         "needs an earlier lowrank stage with method = 'svd'")
    _bad([{"kind": "lowrank", "rank": 2}, {"kind": "quantize", "method": "factored", "bits": 4}],
         r"method 'factored' is int8 \(bits = 8, act_bits = 8\), got bits = 4")
    _bad([{"kind": "lowrank", "rank": 2}, {"kind": "quantize", "method": "factored", "exclude": ["1"]}],
         "quantizes every factored Linear layer")
    _bad([{"kind": "prune", "method": "agp", "epochs": 1}], "at least 2 epochs")
    _bad([{"kind": "quantize", "method": "qat", "epochs": 0}], "at least 1 epoch")
    _bad([{"kind": "quantize", "layer_bits": {"1": 16}}], "2 to 8")
    _bad([{"kind": "quantize", "method": "qat", "exclude": ["1"]}], "quantizes every layer")
    _bad([{"kind": "quantize", "method": "qat", "per_channel": False}], "per-layer weight scales")
    _bad([{"kind": "lowrank", "energy": 0.9, "rank": 3}], "exactly one of")
    _bad([], "at least one")
    with pytest.raises(ArgumentError, match="unknown top-level keys"):
        recipe_from_dict({"stages": []})


def test_example_recipes_load(tmp_path):
    import glob
    import os

    files = glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "recipes", "*.toml"))
    assert files
    from refcompress.pipeline.transformer import is_transformer_recipe, load_transformer_recipe

    for f in files:
        if is_transformer_recipe(f):
            assert load_transformer_recipe(f)[1]
            with pytest.raises(ArgumentError, match="transformer recipe"):
                load_recipe(f)
        else:
            assert load_recipe(f).stages
    bad = tmp_path / "bad.toml"
    bad.write_text("[[stage]\nkind=")
    with pytest.raises(ArgumentError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(ArgumentError, match="no such file"):
        load_recipe(tmp_path / "missing.toml")


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (600, 16)).astype(np.float32)
    y = (X[:, :4].argmax(axis=1)).astype(np.int64)
    d = SimpleNamespace(X_train=X[:400], y_train=y[:400], X_val=X[400:500], y_val=y[400:500],
                        X_test=X[500:], y_test=y[500:])
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    nn.fit(model, d.X_train, d.y_train, optimizer=nn.AdamW(list(model.parameters()), lr=1e-2), epochs=15,
           batch_size=50, progress=False)
    return model.eval(), d


def test_compress_runs_a_deep_compression_recipe_and_reports_real_bytes():
    model, d = _problem()
    recipe = {"name": "dc", "stage": [
        {"kind": "prune", "method": "iterative", "sparsity": 0.8, "rounds": 2, "epochs": 3, "lr": 1e-2},
        {"kind": "quantize", "method": "share", "bits": 4, "epochs": 1},
        {"kind": "encode", "index_bits": 4}]}
    r = compress(model, recipe, d, repeats=3)
    assert [x.stage for x in r.reports] == ["original", "1. prune:iterative", "2. quantize:share", "3. encode"]
    assert isinstance(r.final[0], DeepCompressedLinear)
    sizes = [x.stored_bytes for x in r.reports]
    assert sizes[0] == sum(a.nbytes for a in model.state_dict().values())
    assert sizes[3] < sizes[1] < sizes[0]
    assert r.reports[3].macs_effective < 0.3 * r.reports[0].macs_dense
    assert r.reports[0].accuracy > 0.8 and r.reports[3].accuracy > 0.7
    assert "encode" in r.table()
    np.testing.assert_array_equal(model(d.X_test[:3]), r.models[0](d.X_test[:3]))  # the input model is untouched
    # every stage's model timed (together, at the end), each speedup against the original's time
    assert all(x.latency_b1 > 0 and x.latency_b64 > 0 for x in r.reports)
    assert r.reports[0].speedup_b1 == 1.0 and r.reports[0].speedup_b64 == 1.0
    for x in r.reports[1:]:
        assert x.speedup_b1 == r.reports[0].latency_b1 / x.latency_b1
        assert x.speedup_b64 == r.reports[0].latency_b64 / x.latency_b64


def test_factored_quantization_runs_the_svd_factors_in_int8():
    from refcompress.lowrank import LowRankLinear, QuantizedLowRankLinear

    model, d = _problem(1)
    r = compress(model, {"name": "lq", "stage": [
        {"kind": "lowrank", "method": "svd", "rank": 6, "epochs": 2},
        {"kind": "quantize", "method": "factored", "calibration_samples": 200}]}, d, repeats=3)
    factored, q8 = r.models[1], r.final
    assert isinstance(factored[0], LowRankLinear) and isinstance(q8[0], QuantizedLowRankLinear)
    assert type(q8[2]) is nn.Linear  # 64 -> 4 at rank 6 would not be smaller: the svd stage kept it dense
    lr_rep, q_rep = r.reports[1], r.reports[2]
    assert q_rep.macs_dense == lr_rep.macs_dense == (16 + 64) * 6 + 64 * 4
    # 480 factor entries from 4 bytes to 1, plus a float32 scale per factor row (6 + 64) and
    # the four one-element activation qparams
    assert lr_rep.stored_bytes - q_rep.stored_bytes == 3 * (16 + 64) * 6 - 4 * (6 + 64) - 4 * 4
    assert abs(q_rep.accuracy - lr_rep.accuracy) <= 0.05
    x = d.X_test[:7]
    assert np.max(np.abs(q8(x) - factored(x))) < 0.05 * np.max(np.abs(factored(x)))
    with pytest.raises(ArgumentError, match="method 'factored' found no factored Linear layers"):
        compress(model, {"name": "n", "stage": [{"kind": "lowrank", "method": "svd", "rank": 60, "epochs": 1},
                                               {"kind": "quantize", "method": "factored"}]}, d, repeats=3)


def test_factored_quantization_after_pruning_keeps_sparse_layers_sparse():
    # Pruned layers deploy as the prune stage deploys them; a factor pruned to >= 50 % zeros
    # becomes a sparse float layer, so its factored layer stays float.
    from refcompress.lowrank import QuantizedLowRankLinear
    from refcompress.prune.sparse_layers import SparseLinear

    model, d = _problem(2)
    stages = [{"kind": "lowrank", "method": "svd", "rank": 6, "epochs": 1},
              {"kind": "prune", "method": "magnitude", "sparsity": 0.8, "layers": ["2"], "epochs": 1},
              {"kind": "quantize", "method": "factored"}]
    r = compress(model, {"name": "p", "stage": stages}, d, repeats=3)
    assert isinstance(r.final[0], QuantizedLowRankLinear) and isinstance(r.final[2], SparseLinear)
    assert r.reports[3].stored_bytes < r.reports[2].stored_bytes
    stages[1] = {"kind": "prune", "method": "magnitude", "sparsity": 0.9, "scope": "layer", "epochs": 1}
    with pytest.raises(ArgumentError, match="every factored layer has a factor pruned to >= 50 % zeros"):
        compress(model, {"name": "p", "stage": stages}, d, repeats=3)


def test_effective_macs_of_a_factored_layer_count_its_factors_nonzeros():
    # A LowRankLinear counts as one layer (its fused call bypasses its factors' hooks), so
    # its effective MACs come from the nonzeros of both factors.
    model, d = _problem(3)
    r = compress(model, {"name": "e", "stage": [
        {"kind": "lowrank", "method": "svd", "rank": 6, "epochs": 1},
        {"kind": "prune", "method": "magnitude", "sparsity": 0.4, "scope": "layer", "epochs": 1}]}, d, repeats=3)
    pruned = r.models[2]
    nnz = sum(int(np.count_nonzero(p.data)) for n, p in pruned.named_parameters() if n.endswith(("weight", "values")))
    assert r.reports[2].macs_effective == nnz < r.reports[2].macs_dense


def test_time_stages_takes_turns_over_the_stage_models(monkeypatch):
    # Each round times every model once, in stage order: a burst of load during one round
    # falls on every model alike.
    import refcompress.pipeline.compress as C

    calls = []
    monkeypatch.setattr(C.metrics, "measure_latency",
                        lambda model, x, repeats, warmup: calls.append((model, len(x))) or 1e-3 * (1 + model))
    reports = [C.Report(f"s{i}", 0, 0, 0, 0, 0.0, 0.0, 0.0) for i in range(3)]
    result = SimpleNamespace(models=[0, 1, 2], reports=reports)
    C.time_stages(result, SimpleNamespace(X_test=np.zeros((70, 2), np.float32)), repeats=30, rounds=4)
    assert calls == [(m, b) for _ in range(4) for m in (0, 1, 2) for b in (1, 64)]
    assert [x.latency_b1 for x in reports] == [1e-3, 2e-3, 3e-3]
    assert reports[2].speedup_b1 == 1e-3 / 3e-3


def test_stage_that_cannot_apply_is_refused_before_any_work():
    model, d = _problem(1)
    with pytest.raises(ArgumentError, match="factors convolutions, and the model has none"):
        compress(model, {"name": "t", "stage": [{"kind": "lowrank", "method": "tucker2", "mac_fraction": 0.5}]}, d)
    with pytest.raises(ArgumentError, match="no layers named"):
        compress(model, {"name": "t", "stage": [{"kind": "quantize", "exclude": ["9"]}]}, d)


def test_qat_after_pruning_keeps_the_pruned_weights_at_zero():
    model, d = _problem(4)
    recipe = {"name": "t", "stage": [
        {"kind": "prune", "method": "magnitude", "sparsity": 0.8, "epochs": 1},
        {"kind": "quantize", "method": "qat", "bits": 8, "epochs": 2, "lr": 1e-2}]}
    r = compress(model, recipe, d, repeats=2)
    from refcompress.quant.modules import QuantizedLinear

    dens = [np.mean(m.weight_q != 0) for m in r.final.modules() if isinstance(m, QuantizedLinear)]
    assert dens and max(dens) <= 0.21
