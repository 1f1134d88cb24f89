"""The command line: info, compress and report on a saved model, and clean failures."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest

from refcompress import io as rc_io
from refcompress import nn
from refcompress.cli import main
from refcompress.pipeline import cli_commands


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


def test_export_a_saved_quantized_model(tmp_path, capsys):
    pytest.importorskip("onnx")
    from refcompress.quant.convert import quantize_static

    nn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
    q = quantize_static(model, x, rule="fixedpoint")
    rc_io.save(q, tmp_path / "q.npz")
    out = tmp_path / "q.onnx"
    assert main(["export", str(tmp_path / "q.npz"), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.exists()
    ort = pytest.importorskip("onnxruntime")
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, q(x))  # ends on DequantizeLinear of identical codes
    assert main(["export", str(tmp_path / "q.npz"), "-o", str(tmp_path / "rows.onnx"), "--input-shape", "64",
                 "--weight-dtype", "uint8"]) == 0
    got = ort.InferenceSession(str(tmp_path / "rows.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.reshape(6, 64)})[0]
    np.testing.assert_array_equal(got, q(x))


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "refcompress", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "compress" in r.stdout


# -- every expected failure: one line on stderr naming the cause, exit 1, nothing written --
@pytest.fixture
def files(tmp_path):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    rc_io.save(model, tmp_path / "tiny.npz")
    rc_io.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.GELU()).eval(), tmp_path / "gelu.npz")
    (tmp_path / "r.toml").write_text('name = "int8"\n[[stage]]\nkind = "quantize"\nmethod = "static"\n')
    (tmp_path / "latin1.toml").write_bytes(b'name = "\xe9"\n')
    (tmp_path / "adir").mkdir()
    data = (tmp_path / "tiny.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    return tmp_path


CLI_FAILURES = [
    (["compress", "tiny.npz", "-r", "adir", "-o", "o.npz"], "recipe: cannot read 'adir': Is a directory"),
    (["compress", "tiny.npz", "-r", "latin1.toml", "-o", "o.npz"], "latin1.toml: not valid TOML"),
    (["compress", "tiny.npz", "-r", "absent.toml", "-o", "o.npz"], "recipe: no such file"),
    (["compress", "tiny.npz", "-r", "r.toml", "-o", "adir"], "--output: 'adir' is a directory; expected a file path"),
    (["compress", "tiny.npz", "-r", "r.toml", "-o", "no/o.npz"], "--output: directory '.*no' does not exist"),
    (["compress", "tiny.npz", "-r", "r.toml", "-o", "o.npz", "--report-json", "adir"],
     "--report-json: 'adir' is a directory"),
    (["compress", "tiny.npz", "-r", "r.toml", "-o", "o.npz", "--report-json", "no/r.json"],
     "--report-json: directory '.*no' does not exist"),
    (["compress", "tiny.npz", "-r", "r.toml", "-o", "o.npz", "--report-json", "o.npz"],
     "--report-json: the same file as --output"),
    (["compress", "tiny.npz", "-r", "r.toml", "-o", "o.onnx"], r"--output: .*o\.onnx.*\.npz"),
    (["compress", "tiny.npz", "-r", "r.toml", "-o", "o.npz", "--threads", "0"],
     r"--threads: expected an integer in \[1, inf\], got 0"),
    (["compress", "cut.npz", "-r", "r.toml", "-o", "o.npz"], "cut.npz: not a readable ZIP/npz archive"),
    (["report", "cut.npz"], "cut.npz: not a readable ZIP/npz archive"),
    (["report", "absent.npz"], "MODEL: no file 'absent.npz'"),
    (["report", "adir"], "no config file at 'adir/config.json'"),
    (["demo", "--out", "tiny.npz", "--no-compress"], "out_dir: 'tiny.npz' exists and is not a directory"),
    (["export", "tiny.npz", "-o", "adir"], "--output: 'adir' is a directory"),
    (["export", "tiny.npz", "-o", "m.onnx", "--input-shape", "1,x"], "--input-shape: expected positive integers"),
    (["export", "tiny.npz", "-o", "m.onnx", "--input-shape", "0"], "--input-shape: expected positive integers"),
    (["export", "tiny.npz", "-o", "m.onnx", "--opset", "5"], r"--opset: expected an int in \[13, "),
    # both checked before the model is loaded (or a reference model trained)
    (["export", "absent.npz", "-o", "m.onnx", "--opset", "99"], r"--opset: expected an int in \[13, "),
    (["export", "absent.npz", "-o", "m.onnx", "--input-shape", "1,2,3,4"],
     r"--input-shape: expected \(None, F\), \(None, C, L\) or \(None, C, H, W\), got \(None, 1, 2, 3, 4\)"),
    (["export", "gelu.npz", "-o", "m.onnx"], r"layer '2' \(GELU\) cannot be exported to ONNX"),
    (["export", "cut.npz", "-o", "m.onnx"], "cut.npz: not a readable ZIP/npz archive"),
    (["export", "absent.npz", "-o", "m.onnx"], "MODEL: no file 'absent.npz'"),
    # the saved model is not overwritten by its own export, however the path is spelled
    (["export", "tiny.npz", "-o", "tiny.npz"], "--output: 'tiny.npz' is MODEL itself"),
    (["export", "tiny.npz", "-o", "./adir/../tiny.npz"], r"--output: '\./adir/\.\./tiny\.npz' is MODEL itself"),
]


@pytest.mark.parametrize("argv, message", CLI_FAILURES, ids=[" ".join(a) for a, _ in CLI_FAILURES])
def test_expected_failures_are_one_line_and_write_nothing(files, monkeypatch, capsys, argv, message):
    import re

    monkeypatch.chdir(files)
    before = sorted(p.name for p in files.iterdir())
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"refcompress {argv[0]}: "), err
    assert re.search(message, err), err
    assert sorted(p.name for p in files.iterdir()) == before  # checked before any work


def test_a_damaged_file_gives_no_traceback_from_the_command_line(files):
    r = subprocess.run([sys.executable, "-m", "refcompress", "report", str(files / "cut.npz")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "cut.npz" in r.stderr


def test_report_json_is_written_atomically(files, monkeypatch):
    monkeypatch.chdir(files)
    (files / "r.json").write_text("old")

    def fail(*args, **kwargs):
        raise OSError("disk full (simulated)")

    # only the report's serialisation fails (io.save's own json stays intact)
    monkeypatch.setattr(cli_commands, "json", types.SimpleNamespace(dumps=fail))
    assert main(["compress", "tiny.npz", "-r", "r.toml", "-o", "o.npz", "--report-json", "r.json"]) == 1
    assert (files / "r.json").read_text() == "old"
    assert (files / "o.npz").exists()
    assert not [p for p in files.iterdir() if p.name.endswith(".tmp")]


def test_report_names_a_missing_source_of_a_compressed_bert_file(files, capsys):
    nn.manual_seed(0)
    path = files / "bert-like.npz"
    rc_io.save(nn.Sequential(nn.Linear(2, 2)), path, metadata={"kind": "bert", "source": str(files / "gone")})
    assert main(["report", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was compressed from" in err and "gone" in err
