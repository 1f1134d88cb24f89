"""The command line: info, compress and report on a saved model, and clean failures."""

import json
import subprocess
import sys

import numpy as np

from refcompress import io as rc_io
from refcompress import nn
from refcompress.cli import main


def test_info_lists_ops_and_variants(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "qgemm" in out and "quantize" in out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "ops" in info and "runnable_isas" in info


def test_compress_then_report_a_saved_model(tmp_path, capsys):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    src = tmp_path / "tiny.npz"
    rc_io.save(model, src)
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "int8"\n[[stage]]\nkind = "quantize"\nmethod = "static"\nrule = "fixedpoint"\n')
    out = tmp_path / "tiny-int8.npz"
    report = tmp_path / "r.json"
    assert main(["compress", str(src), "-r", str(recipe), "-o", str(out), "--report-json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "1. quantize:static" in text
    q = rc_io.load(out)
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    assert q(x).shape == (4, 10)
    reps = json.loads(report.read_text())
    assert reps[1]["stored_bytes"] < reps[0]["stored_bytes"]
    assert main(["report", str(out), "--repeats", "3"]) == 0
    assert "bytes" in capsys.readouterr().out


def test_bad_recipe_fails_before_any_work_and_writes_nothing(tmp_path, capsys):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[[stage]]\nkind = "quantize"\nbits = 99\n')
    out = tmp_path / "never.npz"
    assert main(["compress", "mlp_300_100", "-r", str(recipe), "-o", str(out)]) == 1
    assert "key 'bits'" in capsys.readouterr().err
    assert not out.exists()


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "refcompress", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "compress" in r.stdout
