"""The demo: table, cache (save, reuse, stale and damaged files), arguments."""

import argparse
import io
import os

import numpy as np
import pytest

pytest.importorskip("sklearn")

from refcompress import io as rio
from refcompress.errors import ArgumentError, DTypeError
from refcompress.pipeline import demo


def _run(tmp_path, **kw):
    out = io.StringIO()
    kw.setdefault("epochs", 1)
    kw.setdefault("latency_repeats", 2)
    kw.setdefault("compress_models", False)  # the recipes are exercised in test_recipes.py
    rows = demo.run(out_dir=kw.pop("out_dir", tmp_path), stream=out, **kw)
    return rows, out.getvalue()


def test_run_prints_the_table_and_caches_the_models(tmp_path, monkeypatch):
    rows, text = _run(tmp_path)
    assert [r["model"] for r in rows] == ["mlp_300_100", "small_cnn"]
    mlp, cnn = rows
    assert mlp["parameters"] == 50_610 and mlp["stored_bytes"] == 50_610 * 4
    assert mlp["macs_per_sample"] == 50_200 and cnn["macs_per_sample"] == 309_248
    for r in rows:
        assert len(r["test_accuracies"]) == 1 and 0.5 < r["test_accuracies"][0] <= 1.0
        assert r["latency_b1_s"] > 0 and r["latency_b64_s"] > 0
    for head in ("model", "parameters", "stored bytes", "MACs/sample", "test accuracy",
                 "latency b=1", "latency b=64", "50,610", "309,248", "trained in"):
        assert head in text
    assert sorted(os.listdir(tmp_path)) == ["mlp_300_100-seed0.npz", "small_cnn-seed0.npz"]
    meta = rio.read_metadata(tmp_path / "small_cnn-seed0.npz")["user"]
    assert meta["model"] == "small_cnn" and meta["seed"] == 0 and meta["recipe"]["epochs"] == 1
    assert meta["test_accuracy"] == cnn["test_accuracies"][0]

    def no_training(*a, **k):
        raise AssertionError("the cached model should have been loaded")

    monkeypatch.setattr(demo, "train_reference", no_training)
    again, text = _run(tmp_path)
    assert "loaded" in text
    assert [r["test_accuracies"] for r in again] == [r["test_accuracies"] for r in rows]


def test_stale_or_damaged_cache_files_are_retrained(tmp_path):
    _run(tmp_path)
    path = tmp_path / "mlp_300_100-seed0.npz"
    path.write_bytes(path.read_bytes()[:100])
    _, text = _run(tmp_path)
    assert "mlp_300_100-seed0.npz" in text and "retraining" in text
    rio.load(path)  # replaced by a complete file
    _, text = _run(tmp_path, epochs=2)  # another recipe
    assert text.count("trained with another recipe") == 2


def test_no_cache_writes_nothing_and_several_seeds_give_mean_and_std(tmp_path):
    rows, text = _run(tmp_path, seed=1, seeds=2, use_cache=False)
    assert os.listdir(tmp_path) == []
    assert all(len(r["test_accuracies"]) == 2 for r in rows)
    assert "±" in text and "(n=2)" in text and "seeds 1..2" in text


def test_format_table_single_and_multi_seed():
    row = {"model": "m", "parameters": 1234, "stored_bytes": 4936, "macs_per_sample": 99,
           "test_accuracies": [0.5], "latency_b1_s": 1e-4, "latency_b64_s": 2e-3}
    single = demo.format_table([row])
    assert "50.00 %" in single and "1,234" in single and "0.100 ms" in single and "2.000 ms" in single
    multi = demo.format_table([dict(row, test_accuracies=[0.5, 0.7])])
    assert f"60.00 ± {100 * np.std([0.5, 0.7], ddof=1):.2f} % (n=2)" in multi


def test_arguments_and_run_from_args(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.seed, args.seeds, args.out, args.no_cache, args.threads, args.epochs) == (
        0, 1, "artifacts", False, None, None)
    args = parser.parse_args(["--seed", "3", "--seeds", "2", "--out", str(tmp_path), "--no-cache",
                              "--threads", "1", "--epochs", "1"])
    seen = {}
    monkeypatch.setattr(demo, "run", lambda **kw: seen.update(kw))
    assert demo.run_from_args(args) == 0
    assert seen == {"seed": 3, "seeds": 2, "threads": 1, "out_dir": str(tmp_path), "use_cache": False,
                    "epochs": 1, "compress_models": True}


def test_cli_runs_the_demo(tmp_path, capsys):
    from refcompress import cli

    assert cli.main(["demo", "--epochs", "1", "--out", str(tmp_path), "--threads", "1", "--no-compress"]) == 0
    assert "small_cnn" in capsys.readouterr().out


def test_demo_compresses_with_the_recipes_and_reports_against_the_bars(tmp_path, monkeypatch):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('name = "tiny"\n[[stage]]\nkind = "prune"\nmethod = "magnitude"\nsparsity = 0.5\nepochs = 1\n'
                      '[[stage]]\nkind = "quantize"\nmethod = "share"\nbits = 4\nepochs = 0\n[[stage]]\nkind = "encode"\n')
    monkeypatch.setattr(demo, "DEMO_RECIPES", [("mlp_300_100", str(recipe), 50.0, 0.5)])
    monkeypatch.setattr(demo, "recipe_path", lambda name: name)
    out = io.StringIO()
    rows = demo.run(out_dir=tmp_path, stream=out, epochs=1, latency_repeats=2)
    text = out.getvalue()
    assert "3. encode" in text and "the headline" in text and "weight storage per layer" in text
    summary = rows[0]["compression"]
    assert summary["ratio"] > 1 and "meets" in summary


def test_bad_arguments(tmp_path):
    with pytest.raises(ArgumentError, match="seeds"):
        demo.run(seeds=0, out_dir=tmp_path)
    with pytest.raises(ArgumentError, match="seed"):
        demo.run(seed=-2, out_dir=tmp_path)
    with pytest.raises(ArgumentError, match="threads"):
        demo.run(threads=0, out_dir=tmp_path)
    with pytest.raises(ArgumentError, match="epochs"):
        demo.run(epochs=0, out_dir=tmp_path)
    with pytest.raises(DTypeError, match="out_dir"):
        demo.run(out_dir=3)
    with pytest.raises(DTypeError, match="use_cache"):
        demo.run(out_dir=tmp_path, use_cache="no")
    assert os.listdir(tmp_path) == []
