"""refcompress.io.atomic_write: the one way refcompress writes a file (models, plots, ONNX
graphs, the CLI's JSON reports): complete new file or untouched old one, never a temporary left."""

import os

import pytest

from refcompress.errors import ArgumentError, DTypeError
from refcompress.io import atomic_write, check_output_path


def test_writes_the_content_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "a.bin"
    with atomic_write(target) as f:
        f.write(b"new")
        assert not target.exists()  # nothing under the target name until the block ends
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("exc", [OSError("disk full (simulated)"), KeyboardInterrupt()])
def test_failure_in_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path, exc):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise exc
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_failure_in_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def fsync(fd):
        raise OSError("I/O error (simulated)")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="simulated"):
        with atomic_write(target) as f:
            f.write(b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_fsync_comes_before_replace(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with atomic_write(tmp_path / "a.bin") as f:
        f.write(b"x")
    assert events[:2] == ["fsync", "replace"]


def test_bad_targets_are_refused_naming_the_argument(tmp_path):
    with pytest.raises(ArgumentError, match=r"--output: .* is a directory; expected a file path"):
        check_output_path(tmp_path, "--output")
    with pytest.raises(ArgumentError, match=r"out: directory .*missing.* does not exist"):
        with atomic_write(tmp_path / "missing" / "a.bin", "out"):
            pass
    with pytest.raises(ArgumentError, match="path: expected a file path, got an empty string"):
        check_output_path("")
    with pytest.raises(DTypeError, match="path: expected a str or os.PathLike, got int"):
        check_output_path(3)
    assert os.listdir(tmp_path) == []


def test_every_writer_in_the_package_goes_through_atomic_write():
    # One idea, one place: a file written any other way could be left half-written.
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    writes = re.compile(r"os\.replace\(|mkstemp|NamedTemporaryFile|np\.save|savez|onnx\.save|"
                        r"\.write_(text|bytes)\(|open\([^)]*['\"][wax]b?\+?['\"]|O_WRONLY|\.tofile\(")
    offenders = []
    for folder in ("refcompress", "examples", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.name == "atomic.py" and path.parent.name == "io":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if writes.search(line):
                    offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="needs SIGKILL")
def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path):
    # SIGKILL runs no cleanup: the old file must still be whole; the stray temporary (a
    # dot file named after the target) is all that is left, as docs/io.md says.
    import signal
    import subprocess
    import sys

    target = tmp_path / "m.npz"
    target.write_bytes(b"old")
    code = ("import sys, time\nfrom refcompress.io import atomic_write\n"
            "with atomic_write(sys.argv[1]) as f:\n"
            "    f.write(b'x' * 65536); f.flush(); print('writing', flush=True)\n"
            "    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        p.stdout.close()
    assert target.read_bytes() == b"old"
    stray = [n for n in os.listdir(tmp_path) if n != "m.npz"]
    assert len(stray) == 1 and stray[0].startswith(".m.npz.") and stray[0].endswith(".tmp")


@pytest.mark.parametrize("name", ["m.npz/", "new/", "m.npz/.", "..", "sub/.."])
def test_a_path_ending_in_a_separator_is_refused_before_the_work(tmp_path, monkeypatch, name):
    """A path like "m.npz/" passed the check and failed only at the write (NotADirectoryError), after the
    work the check is there to protect."""
    import numpy as np

    from refcompress import io as rio
    from refcompress import nn

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for fn in (check_output_path, lambda p: rio.save(nn.Linear(1, 1), p),
               lambda p: rio.save_arrays({"a": np.zeros(1)}, p),
               lambda p: rio.export_onnx(nn.Sequential(nn.Linear(1, 1)), p, input_shape=(None, 1))):
        with pytest.raises(ArgumentError, match=r"path: .* (ends in a path separator|is a directory)"):
            fn(name)
    assert sorted(os.listdir(tmp_path)) == ["sub"] and os.listdir(tmp_path / "sub") == []
