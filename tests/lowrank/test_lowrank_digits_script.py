"""examples/lowrank_digits.py (the low-rank issue's evidence on digits) runs, and judges
its bars: one seed (--quick) meets all three, and a miss is reported as one."""

import importlib.util
import os

import pytest


def _script():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "lowrank_digits.py")
    spec = importlib.util.spec_from_file_location("lowrank_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_goal_lines_judge_each_bar():
    mod = _script()
    mlp = [{"kept": 0.29, "base": 0.975, "svd_ft": 0.970}]
    cnn = [{"base": 0.99, "tucker_macs": 0.49, "tucker_ft": 0.985, "cp_macs": 0.51, "cp_ft": 0.99}]
    lines = mod.goal_lines(mlp, cnn)
    assert [ok for _, ok in lines] == [True, True, False]     # CP keeps 51 % of the MACs
    cnn[0]["cp_macs"], cnn[0]["tucker_ft"] = 0.5, 0.975        # Tucker-2 now drops 1.5 pp
    assert [ok for _, ok in mod.goal_lines(mlp, cnn)] == [True, False, True]
    assert "MISSED" in mod.goal_lines(mlp, cnn)[1][0]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the NumPy fallback's one warning, without C
def test_quick_run_prints_the_table_and_meets_the_bars(capsys):
    assert _script().main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "MLP FC, SVD" in out and "CP (MACs)" in out and out.count(": met") == 3
    assert "SVD + int8 factors" in out and "bytes as int8 codes" in out
