"""refcompress.io: round trips, the file's contents, atomic writes and every corruption."""

import json
import os
import zipfile

import numpy as np
import pytest

from refcompress import io as rio
from refcompress import nn
from refcompress.errors import ArgumentError, CorruptFileError, DTypeError
from refcompress.io import npz as npz_mod
from refcompress.models import mlp_300_100, small_cnn

from _io_models import images as _x, trained_like as _trained_like


@pytest.fixture
def saved(tmp_path):
    model = _trained_like(small_cnn)
    path = tmp_path / "cnn.npz"
    rio.save(model, path, metadata={"note": "fixture"})
    return model, path


def _rewrite(path, edit_meta=None, edit_entries=None):
    """Rebuild the archive with edited metadata and/or entries (valid ZIP, fresh CRCs)."""
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(entries[rio.METADATA_ENTRY])
    if edit_meta:
        edit_meta(meta)
    entries[rio.METADATA_ENTRY] = json.dumps(meta).encode()
    if edit_entries:
        edit_entries(entries)
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in entries.items():
            zf.writestr(n, b)


def _npy_bytes(arr):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


# -- round trips -----------------------------------------------------------------------
@pytest.mark.parametrize("builder", [mlp_300_100, small_cnn])
def test_round_trip_gives_identical_outputs_and_state(tmp_path, builder):
    model = _trained_like(builder)
    path = tmp_path / "m.npz"
    assert rio.save(model, path) == str(path)
    loaded = rio.load(path)
    assert not loaded.training
    assert nn.to_spec(loaded) == nn.to_spec(model)
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(loaded(_x()), model(_x()))


def test_mlp_also_takes_flat_rows_after_loading(tmp_path):
    model = _trained_like(mlp_300_100)
    rio.save(model, tmp_path / "m.npz")
    x = _x().reshape(7, 64)
    np.testing.assert_array_equal(rio.load(tmp_path / "m.npz")(x), model(x))


def test_float64_model_round_trips_in_float64(tmp_path):
    model = _trained_like(mlp_300_100).to(np.float64)
    rio.save(model, tmp_path / "m.npz")
    loaded = rio.load(tmp_path / "m.npz")
    assert all(p.dtype == np.float64 for p in loaded.parameters())
    x = _x().astype(np.float64)
    np.testing.assert_array_equal(loaded(x), model(x))


def test_metadata_fields_and_checksums(saved):
    import hashlib

    model, path = saved
    meta = rio.read_metadata(path)
    assert meta["format"] == "refcompress.model" and meta["format_version"] == 1
    from refcompress import __version__

    assert meta["refcompress_version"] == __version__
    assert meta["architecture"] == nn.to_spec(model)
    assert meta["user"] == {"note": "fixture"}
    sd = model.state_dict()
    assert [e["name"] for e in meta["arrays"]] == list(sd)
    for e in meta["arrays"]:
        a = sd[e["name"]]
        assert e["shape"] == list(a.shape) and e["dtype"] == a.dtype.str
        assert e["sha256"] == hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    # 0-d buffers keep their shape (BatchNorm's num_batches_tracked)
    assert {e["name"]: e["shape"] for e in meta["arrays"]}["1.num_batches_tracked"] == []


def test_file_is_a_plain_npz_without_pickles(saved):
    model, path = saved
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == set(model.state_dict()) | {rio.METADATA_ENTRY}
        np.testing.assert_array_equal(f["0.weight"], model.state_dict()["0.weight"])


def test_same_model_gives_identical_bytes(tmp_path):
    model = _trained_like(mlp_300_100)
    rio.save(model, tmp_path / "a.npz")
    rio.save(model, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_load_leaves_the_shared_generator_alone(saved):
    _, path = saved
    nn.manual_seed(3)
    expected = np.random.default_rng(3).random(4)
    rio.load(path)
    np.testing.assert_array_equal(nn.init.get_rng().random(4), expected)


# -- atomic writes -----------------------------------------------------------------------
def test_failure_mid_write_keeps_the_old_file_and_no_temporary(saved, monkeypatch):
    old_model, path = saved
    old_bytes = path.read_bytes()
    calls = []
    real = npz_mod._write_array

    def failing(zf, name, arr):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        real(zf, name, arr)

    monkeypatch.setattr(npz_mod, "_write_array", failing)
    with pytest.raises(OSError, match="simulated"):
        rio.save(_trained_like(small_cnn, seed=9), path)
    assert len(calls) == 3
    assert path.read_bytes() == old_bytes
    np.testing.assert_array_equal(rio.load(path)(_x()), old_model(_x()))
    assert os.listdir(path.parent) == [path.name]


@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
def test_interrupt_before_replace_keeps_the_old_file(tmp_path, monkeypatch, ext):
    # both formats write through atomic_write: the old file survives whole
    old_model, path = _trained_like(small_cnn), tmp_path / f"cnn{ext}"
    rio.save(old_model, path)

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        rio.save(_trained_like(small_cnn, seed=9), path)
    monkeypatch.undo()
    np.testing.assert_array_equal(rio.load(path)(_x()), old_model(_x()))
    assert os.listdir(path.parent) == [path.name]


def test_new_file_is_fsynced_before_it_replaces_the_old(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    rio.save(_trained_like(mlp_300_100), tmp_path / "m.npz")
    assert events[:2] == ["fsync", "replace"]


def test_unsaveable_model_writes_nothing(tmp_path):
    class Unregistered(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ArgumentError, match="register_module"):
        rio.save(nn.Sequential(nn.ReLU(), Unregistered()), tmp_path / "m.npz")
    with pytest.raises(ArgumentError, match="metadata"):
        rio.save(mlp_300_100(), tmp_path / "m.npz", metadata={"x": object()})
    assert os.listdir(tmp_path) == []


def test_bad_arguments():
    with pytest.raises(DTypeError, match="model"):
        rio.save("model", "x.npz")
    with pytest.raises(DTypeError, match="path"):
        rio.save(mlp_300_100(), 3)
    with pytest.raises(DTypeError, match="metadata"):
        rio.save(mlp_300_100(), "x.npz", metadata=[1])
    with pytest.raises(DTypeError, match="path"):
        rio.load(None)
    with pytest.raises(ArgumentError, match="path"):
        rio.load("")


def test_missing_file_is_not_corruption(tmp_path):
    with pytest.raises(FileNotFoundError):
        rio.load(tmp_path / "absent.npz")


# -- corruption ------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(saved, keep):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptFileError, match=str(path)):
        rio.load(path)


def test_flipped_byte_in_any_entry(saved):
    _, path = saved
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        contents = [zf.read(n) for n in zf.namelist()]
    for content in contents:  # entries are stored uncompressed, so their bytes are in the file
        start = data.find(content)
        assert start >= 0
        for pos in (start, start + len(content) // 2, start + len(content) - 1):
            damaged = bytearray(data)
            damaged[pos] ^= 0x10
            path.write_bytes(bytes(damaged))
            with pytest.raises(CorruptFileError):
                rio.load(path)


def test_flipped_byte_in_the_zip_directory(saved):
    _, path = saved
    data = path.read_bytes()
    central = data.rfind(b"PK\x01\x02")
    end = data.rfind(b"PK\x05\x06")
    for pos in (central + 16, central + 42, end + 16):  # a CRC; an entry offset; the directory offset
        damaged = bytearray(data)
        damaged[pos] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptFileError):
            rio.load(path)


def test_flipped_byte_in_array_data_fails_crc(saved):
    model, path = saved
    data = bytearray(path.read_bytes())
    w = model.state_dict()["3.weight"].tobytes()
    pos = bytes(data).find(w) + 100
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="damaged|CRC"):
        rio.load(path)


def test_altered_array_with_valid_zip_fails_the_checksum(saved):
    model, path = saved
    w = model.state_dict()["3.weight"].copy()
    w[0, 0, 0, 0] += 1
    _rewrite(path, edit_entries=lambda e: e.__setitem__("3.weight.npy", _npy_bytes(w)))
    with pytest.raises(CorruptFileError, match=r"'3.weight'.*SHA-256"):
        rio.load(path)


def test_checksum_edited_in_metadata(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"][0].__setitem__("sha256", "0" * 64))
    with pytest.raises(CorruptFileError, match="SHA-256"):
        rio.load(path)


def test_missing_array(saved):
    _, path = saved
    _rewrite(path, edit_entries=lambda e: e.pop("8.bias.npy"))
    with pytest.raises(CorruptFileError, match=r"missing \['8.bias.npy'\]"):
        rio.load(path)


def test_unexpected_entry(saved):
    _, path = saved
    _rewrite(path, edit_entries=lambda e: e.__setitem__("extra.npy", _npy_bytes(np.zeros(2))))
    with pytest.raises(CorruptFileError, match="unexpected"):
        rio.load(path)


def test_array_dropped_from_metadata_and_file(saved):
    _, path = saved

    def drop(meta):
        meta["arrays"] = [e for e in meta["arrays"] if e["name"] != "8.bias"]

    _rewrite(path, edit_meta=drop, edit_entries=lambda e: e.pop("8.bias.npy"))
    with pytest.raises(CorruptFileError, match="do not fit the architecture.*8.bias"):
        rio.load(path)


def test_wrong_shape_in_metadata(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"][0].__setitem__("shape", [16, 1, 3, 4]))
    with pytest.raises(CorruptFileError, match="0.weight.*metadata says"):
        rio.load(path)


def test_wrong_dtype_in_metadata(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"][0].__setitem__("dtype", "<f8"))
    with pytest.raises(CorruptFileError, match="0.weight.*<f4.*<f8"):
        rio.load(path)


@pytest.mark.parametrize("dtype", ["|O", "<U3", "|V12", "<M8[s]", ">f4"])
def test_non_numeric_or_big_endian_dtype_is_refused(saved, dtype):
    # Consistent metadata and .npy header (with a matching checksum): the dtype check alone
    # must refuse it, before the data could reach load_state_dict.
    model, path = saved
    name = "0.weight"
    arr = np.zeros(model.state_dict()[name].shape, dtype=dtype)

    def edit(m):
        rec = next(r for r in m["arrays"] if r["name"] == name)
        rec["dtype"], rec["sha256"] = dtype, npz_mod._sha256(arr) if dtype != "|O" else "0" * 64

    _rewrite(path, edit_meta=edit,
             edit_entries=lambda e: e.__setitem__(name + ".npy", _npy_bytes(arr) if dtype != "|O" else b""))
    with pytest.raises(CorruptFileError, match=r"arrays\[0\] \(0.weight\): dtype .* is not a little-endian "
                       "bool, integer, float or complex dtype"):
        rio.load(path)


def test_a_model_holding_an_unstorable_dtype_is_refused_and_nothing_written(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    model[0].bias.data = model[0].bias.data.astype(">f4")
    with pytest.raises(DTypeError, match="'0.bias' has dtype '>f4'; expected a little-endian"):
        rio.save(model, tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


def test_consistent_arrays_that_do_not_fit_the_architecture(saved):
    model, path = saved
    w = np.zeros((16, 1, 3, 2), np.float32)

    def meta_edit(meta):
        import hashlib

        meta["arrays"][0].update(shape=[16, 1, 3, 2], sha256=hashlib.sha256(w.tobytes()).hexdigest())

    _rewrite(path, edit_meta=meta_edit, edit_entries=lambda e: e.__setitem__("0.weight.npy", _npy_bytes(w)))
    with pytest.raises(CorruptFileError, match="do not fit the architecture.*0.weight"):
        rio.load(path)


def test_unknown_layer_type(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["architecture"]["children"]["2"].__setitem__("type", "Swish9"))
    with pytest.raises(CorruptFileError, match="Swish9"):
        rio.load(path)


def test_bad_layer_config(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["architecture"]["children"]["0"]["config"].__setitem__("groups", 7))
    with pytest.raises(CorruptFileError, match="architecture cannot be built.*groups"):
        rio.load(path)


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_wrong_format_version(saved, version):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m.__setitem__("format_version", version))
    with pytest.raises(CorruptFileError, match="format_version"):
        rio.load(path)


def test_wrong_format_name(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m.__setitem__("format", "something.else"))
    with pytest.raises(CorruptFileError, match="not a refcompress model file"):
        rio.load(path)


@pytest.mark.parametrize("field", ["architecture", "arrays", "modules", "user"])
def test_missing_metadata_field(saved, field):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m.pop(field))
    with pytest.raises(CorruptFileError, match=field):
        rio.load(path)


def test_metadata_not_json(saved):
    _, path = saved
    _rewrite(path, edit_entries=lambda e: e.__setitem__(rio.METADATA_ENTRY, b"{not json"))
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        rio.load(path)


def test_plain_npz_without_metadata(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, w=np.zeros(3))
    with pytest.raises(CorruptFileError, match="not a refcompress model file"):
        rio.load(path)


def test_not_a_zip_at_all(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"hello world" * 10)
    with pytest.raises(CorruptFileError, match="not a readable ZIP"):
        rio.load(path)


def test_read_metadata_verifies_too(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"][1].__setitem__("sha256", "f" * 64))
    with pytest.raises(CorruptFileError):
        rio.read_metadata(path)


def test_file_layer_modules_outside_refcompress_are_never_imported(saved, monkeypatch):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["modules"].append("os_evil_module_xyz"))
    imported = []
    real = npz_mod.importlib.import_module
    monkeypatch.setattr(npz_mod.importlib, "import_module", lambda n: (imported.append(n), real(n))[1])
    rio.load(path)
    assert "os_evil_module_xyz" not in imported
    assert all(n.startswith("refcompress") for n in imported)


def test_absurdly_nested_metadata_json(saved):
    _, path = saved
    _rewrite(path, edit_entries=lambda e: e.__setitem__(rio.METADATA_ENTRY, b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(CorruptFileError, match="RecursionError"):
        rio.load(path)


@pytest.mark.parametrize("shape,match", [
    ([2**70], r"shape \[1180591620717411303424\] is beyond NumPy's array size limit"),
    # a 0 dim makes the array empty, but NumPy still refuses to make it
    ([0, 2**70], r"shape \[0, 1180591620717411303424\] is beyond NumPy's array size limit"),
    ([0, 2**62, 2**62], r"shape \[0, 4611686018427387904, 4611686018427387904\] is beyond"),
    ([1] * 70, r"has 70 dimensions, more than NumPy's 64"),
])
def test_shape_too_large_for_any_file(saved, shape, match):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"][0].__setitem__("shape", shape))
    with pytest.raises(CorruptFileError, match=r"arrays\[0\] \(0.weight\): <f4 array " + match):
        rio.load(path)


def test_a_name_repeated_in_the_metadata_json(saved):
    _, path = saved
    text = json.dumps({"user": {"acc": 0.1}})[1:-1]
    _rewrite(path, edit_entries=lambda e: e.__setitem__(
        rio.METADATA_ENTRY, e[rio.METADATA_ENTRY][:-1] + b", " + text.encode() + b"}"))
    with pytest.raises(CorruptFileError, match=r"refcompress.json is not valid JSON \(name 'user' appears twice\)"):
        rio.load(path)


def test_every_single_byte_damage_and_truncation_is_refused_or_harmless(tmp_path):
    """Flip one bit (low and high) of every byte and cut the file at many lengths (every
    one in the last 100 bytes, where the ZIP directory is): load either refuses it with
    CorruptFileError or returns the saved model bit for bit (bytes nothing reads, such as
    the ZIP entries' timestamps, may change freely)."""
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    path = tmp_path / "m.npz"
    rio.save(model, path)
    data = path.read_bytes()
    x = np.random.default_rng(0).random((4, 3), dtype=np.float32)
    want_y, want_state = model(x), model.state_dict()
    # (Flips rewrite the file in place and cuts go to new files: on ext4, truncating a file
    # and writing it again forces a flush each time, which would make this test crawl.)
    cuts = sorted(set(range(0, len(data), 5)) | set(range(len(data) - 100, len(data))))
    flips = [(i, bit) for i in range(len(data)) for bit in (0x01, 0x80)]
    refused = 0
    for case in cuts + flips:
        if isinstance(case, int):
            target = tmp_path / f"cut{case}.npz"
            target.write_bytes(data[:case])
        else:
            target = path
            b = bytearray(data)
            b[case[0]] ^= case[1]
            with open(path, "r+b") as f:
                f.write(b)
        try:
            got = rio.load(target)
        except CorruptFileError:
            refused += 1
            continue
        state = got.state_dict()
        assert all(state[k].dtype == v.dtype and np.array_equal(state[k], v) for k, v in want_state.items())
        assert np.array_equal(got(x), want_y)
    assert refused > 0.9 * (len(cuts) + len(flips))


def test_a_directory_is_not_a_model_file(tmp_path):
    with pytest.raises(IsADirectoryError):
        rio.load(tmp_path)
    with pytest.raises(ArgumentError, match="path: .* is a directory; expected a file path"):
        rio.save(mlp_300_100(), tmp_path)
    with pytest.raises(ArgumentError, match="path: directory .* does not exist"):
        rio.save(mlp_300_100(), tmp_path / "no" / "m.npz")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("module", ["refcompress.__main__", "refcompress.cli", "refcompress", "refcompress.io.npz",
                                    "refcompress.nn.layers.x"])
def test_a_file_listing_a_refcompress_module_that_defines_no_layers_is_refused(saved, monkeypatch, module):
    """Only modules whose import registers layers are imported: refcompress.__main__ ran the
    CLI (SystemExit) when a file listed it."""
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["modules"].append(module))
    imported = []
    real = npz_mod.importlib.import_module
    monkeypatch.setattr(npz_mod.importlib, "import_module", lambda n: (imported.append(n), real(n))[1])
    for fn in (rio.load, rio.read_metadata):
        with pytest.raises(CorruptFileError, match=f"{path}: modules lists '{module}', which is not a refcompress "
                           "module defining layers"):
            fn(path)
    assert imported == []


def test_every_refcompress_layer_module_is_importable_by_load():
    """LAYER_MODULES names every refcompress module that registers a layer (a new one must be
    added, or its models would not load), and each exists."""
    import importlib
    import pkgutil

    import refcompress

    for info in pkgutil.walk_packages(refcompress.__path__, "refcompress."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    registered = {cls.__module__ for cls in dict(nn.registered_modules()).values()}
    assert {m for m in registered if m.startswith("refcompress.")} <= npz_mod.LAYER_MODULES
    assert npz_mod.LAYER_MODULES <= registered


def test_importing_refcompress_main_does_not_run_the_cli():
    import subprocess
    import sys

    code = "import refcompress.__main__; print('imported')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "imported", out.stderr
    out = subprocess.run([sys.executable, "-m", "refcompress", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: refcompress" in out.stdout, out.stderr


@pytest.mark.parametrize("dtype", ["(1000000000000,)f4", "(1,", ["<f4"]])
def test_a_dtype_numpy_cannot_parse_is_a_corrupt_file(saved, dtype):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"][0].__setitem__("dtype", dtype))
    for fn in (rio.load, rio.read_metadata):
        with pytest.raises(CorruptFileError, match=rf"{path}: arrays\[0\] \(0.weight\): dtype .* is not a "
                                                   "(NumPy dtype|string)"):
            fn(path)
