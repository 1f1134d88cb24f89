"""refcompress.io's safetensors: models and plain arrays in and out, the format as other
readers and writers see it (the ``safetensors`` package), the format chosen by extension and
detected by content, and every damaged or hand-made bad file refused."""

import hashlib
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refcompress import io as rio
from refcompress import nn
from refcompress.errors import ArgumentError, CorruptFileError, DTypeError, ShapeError
from refcompress.io import safetensors as st_mod
from refcompress.models import mlp_300_100, small_cnn

from _io_models import images as _x, trained_like as _trained_like

stnp = pytest.importorskip("safetensors.numpy")

# Every dtype the format and NumPy share, with its code.
DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
          "F16": np.float16, "U32": np.uint32, "I32": np.int32, "F32": np.float32, "U64": np.uint64,
          "I64": np.int64, "F64": np.float64, "C64": np.complex64}


def _same_arrays(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def _raw(header: dict, data: bytes = b"", pad: bytes = b"") -> bytes:
    """A safetensors file made by hand: ``header`` as JSON, then ``data``."""
    text = json.dumps(header).encode() + pad
    return struct.pack("<Q", len(text)) + text + data


def _split(path):
    """(header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _model_meta(header):
    return json.loads(header["__metadata__"]["refcompress"])


def _set_meta_text(header, text):
    """Store ``text`` as the refcompress metadata with its matching SHA-256 (as save would)."""
    header["__metadata__"]["refcompress"] = text
    header["__metadata__"]["refcompress.sha256"] = hashlib.sha256(text.encode()).hexdigest()


def _set_model_meta(header, meta):
    _set_meta_text(header, json.dumps(meta))


@pytest.fixture
def saved(tmp_path):
    model = _trained_like(small_cnn)
    path = tmp_path / "cnn.safetensors"
    rio.save(model, path, metadata={"note": "fixture"})
    return model, path


# -- models ----------------------------------------------------------------------------
@pytest.mark.parametrize("builder", [mlp_300_100, small_cnn])
def test_model_round_trip_gives_identical_outputs_and_state(tmp_path, builder):
    model = _trained_like(builder)
    path = tmp_path / "m.safetensors"
    assert rio.save(model, path) == str(path)
    loaded = rio.load(path)
    assert not loaded.training and nn.to_spec(loaded) == nn.to_spec(model)
    _same_arrays(model.state_dict(), loaded.state_dict())
    np.testing.assert_array_equal(loaded(_x()), model(_x()))


def test_float64_model_round_trips_in_float64(tmp_path):
    model = _trained_like(mlp_300_100).to(np.float64)
    rio.save(model, tmp_path / "m.safetensors")
    loaded = rio.load(tmp_path / "m.safetensors")
    assert all(p.dtype == np.float64 for p in loaded.parameters())
    np.testing.assert_array_equal(loaded(_x().astype(np.float64)), model(_x().astype(np.float64)))


def test_metadata_is_the_npz_metadata_and_read_metadata_reads_it(saved, tmp_path):
    model, path = saved
    meta = rio.read_metadata(path)
    rio.save(model, tmp_path / "cnn.npz", metadata={"note": "fixture"})
    assert meta == rio.read_metadata(tmp_path / "cnn.npz")
    assert meta["user"] == {"note": "fixture"} and meta["format"] == rio.FORMAT_NAME
    assert [e["name"] for e in meta["arrays"]] == list(model.state_dict())


def test_other_readers_get_the_real_state_dict(saved):
    """Any safetensors reader sees the state dict under its own names: the tensors, and the
    refcompress metadata as a string under __metadata__."""
    model, path = saved
    got = stnp.load_file(str(path))
    want = model.state_dict()
    assert set(got) == set(want)
    _same_arrays({k: got[k] for k in want}, want)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert set(f.metadata()) == {"refcompress", "refcompress.sha256"}
        assert json.loads(f.metadata()["refcompress"])["user"] == {"note": "fixture"}


def test_quantized_and_sparse_models_read_by_the_package(tmp_path):
    """int8 codes, packed int4 bytes, CSR arrays with narrow (uint16) indices, float16:
    the package reads them all with the dtypes refcompress holds."""
    from test_round_trips import STAGES, _cnn, _data

    from refcompress.pipeline.compress import compress

    d = _data()
    seen = set()
    for name in ("magnitude (CSR)", "int8 static", "weight-only int4", "deep compression"):
        model = compress(_cnn(), {"name": name, "stage": STAGES[name]}, d, repeats=1).final.eval()
        path = rio.save(model, tmp_path / "m.safetensors")
        got, want = stnp.load_file(str(path)), model.state_dict()
        _same_arrays({k: got[k] for k in want}, want)
        seen |= {a.dtype.str for a in want.values()}
    assert {"|i1", "|u1", "<u2", "<f2", "<i4", "<f4", "<i8"} <= seen


def test_same_model_gives_identical_bytes_and_aligned_tensors(tmp_path):
    from test_round_trips import STAGES, _cnn, _data

    from refcompress.pipeline.compress import compress

    model = compress(_cnn(), {"name": "csr", "stage": STAGES["magnitude (CSR)"]}, _data(), repeats=1).final
    rio.save(model, tmp_path / "a.safetensors")
    rio.save(model, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert {"U16", "I32", "F32", "I64"} <= _aligned_codes(tmp_path / "a.safetensors")
    rio.save_arrays(_all_dtypes(), tmp_path / "all.safetensors")  # odd-sized BOOL, U8, I8 among them
    assert _aligned_codes(tmp_path / "all.safetensors") == set(DTYPES)


def _aligned_codes(path):
    """The dtype codes of ``path``, once every tensor is checked to start at a file offset
    its itemsize divides (so a reader may map it in place; complex64's alignment is only 4)."""
    header, data = _split(path)
    start = path.stat().st_size - len(data)
    assert start % 8 == 0
    codes = set()
    for name, info in header.items():
        if name != "__metadata__":
            codes.add(info["dtype"])
            assert (start + info["data_offsets"][0]) % np.dtype(DTYPES[info["dtype"]]).itemsize == 0, name
    return codes


def test_format_is_detected_from_the_content_not_the_name(tmp_path):
    model = _trained_like(small_cnn)
    rio.save(model, tmp_path / "a.safetensors")
    rio.save(model, tmp_path / "b.npz")
    os.replace(tmp_path / "a.safetensors", tmp_path / "a.npz")
    os.replace(tmp_path / "b.npz", tmp_path / "b.safetensors")
    for name in ("a.npz", "b.safetensors"):
        np.testing.assert_array_equal(rio.load(tmp_path / name)(_x()), model(_x()))
        assert rio.read_metadata(tmp_path / name)["architecture"] == nn.to_spec(model)


def test_a_header_length_that_starts_with_pk_is_still_safetensors(tmp_path):
    """N = 19280 is b"PK\\0\\0..." in little-endian: the ZIP signature's first two bytes."""
    model = nn.Sequential(nn.Linear(3, 2))
    path = tmp_path / "m.safetensors"
    rio.save(model, path, metadata={"fill": ""})
    base = struct.unpack("<Q", path.read_bytes()[:8])[0]
    for fill in range(0x4B50 - base - 8, 0x4B50 - base + 8):  # each "x" adds one header byte
        rio.save(model, path, metadata={"fill": "x" * fill})
        if path.read_bytes()[:2] == b"PK":
            break
    assert path.read_bytes()[:8] == struct.pack("<Q", 0x4B50)
    assert rio.load(path).state_dict()["0.weight"].tobytes() == model.state_dict()["0.weight"].tobytes()


@pytest.mark.parametrize("dtype", [np.complex128, np.longdouble])
def test_a_dtype_safetensors_lacks_is_refused_before_writing(tmp_path, dtype):
    model = nn.Sequential(nn.Linear(3, 2))
    model[0].bias.data = model[0].bias.data.astype(dtype)
    with pytest.raises(DTypeError, match=f"model: array '0.bias' has dtype .*{np.dtype(dtype).str[1:]}.* "
                       "safetensors cannot hold.*\\.npz"):
        rio.save(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_load_leaves_the_shared_generator_alone(saved):
    _, path = saved
    nn.manual_seed(3)
    expected = np.random.default_rng(3).random(4)
    rio.load(path)
    np.testing.assert_array_equal(nn.init.get_rng().random(4), expected)


# -- the extension chooses the format ----------------------------------------------------
@pytest.mark.parametrize("name", ["m.onnx", "m", "m.npy", "m.safetensor", "m.npz.tmp"])
def test_save_refuses_an_unknown_extension_and_writes_nothing(tmp_path, name):
    with pytest.raises(ArgumentError, match=r"path: '.*' has (extension '.*'|no extension); expected one of "
                       r"'\.npz', '\.safetensors' \(the extension chooses the format\)"):
        rio.save(mlp_300_100(), tmp_path / name)
    with pytest.raises(ArgumentError, match="--output: .*expected one of"):
        rio.check_model_path(tmp_path / name, "--output")
    assert os.listdir(tmp_path) == []


def test_extension_is_case_insensitive(tmp_path):
    rio.save(mlp_300_100(), tmp_path / "M.SafeTensors")
    rio.save(mlp_300_100(), tmp_path / "M.NPZ")
    assert (tmp_path / "M.SafeTensors").read_bytes()[8:9] == b"{"
    assert (tmp_path / "M.NPZ").read_bytes()[:4] == b"PK\x03\x04"


def test_save_argument_errors(tmp_path):
    with pytest.raises(DTypeError, match="model"):
        rio.save("model", tmp_path / "x.safetensors")
    with pytest.raises(DTypeError, match="path"):
        rio.save(mlp_300_100(), 3)
    with pytest.raises(DTypeError, match="metadata"):
        rio.save(mlp_300_100(), tmp_path / "x.safetensors", metadata=[1])
    with pytest.raises(ArgumentError, match="metadata"):
        rio.save(mlp_300_100(), tmp_path / "x.safetensors", metadata={"x": object()})
    with pytest.raises(ArgumentError, match="path: .* is a directory"):
        rio.save(mlp_300_100(), tmp_path)
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        rio.load(tmp_path / "absent.safetensors")
    with pytest.raises(IsADirectoryError):
        rio.load(tmp_path)


# -- plain arrays -----------------------------------------------------------------------
def _all_dtypes():
    rng = np.random.default_rng(0)
    out = {}
    for code, dt in DTYPES.items():
        if dt is np.bool_:
            out[code] = rng.random((3, 5)) < 0.5
        elif np.dtype(dt).kind in "fc":
            out[code] = (rng.standard_normal((3, 5)) * 1e3).astype(dt)
        else:
            info = np.iinfo(dt)
            out[code] = rng.integers(info.min, info.max, (3, 5), dtype=dt, endpoint=True)
    out["F32"][0, :3] = [np.nan, np.inf, -0.0]
    out["scalar"] = np.array(2.5)
    out["empty"] = np.zeros((0, 4), np.int16)
    return out


def test_arrays_we_write_are_what_the_package_reads_and_back(tmp_path):
    arrays = _all_dtypes()
    path = rio.save_arrays(arrays, tmp_path / "a.safetensors", metadata={"who": "me", "n": "1"})
    got = stnp.load_file(path)
    _same_arrays({k: got[k] for k in arrays}, arrays)
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == {"who": "me", "n": "1"}
    back = rio.load_arrays(path)
    _same_arrays({k: back[k] for k in arrays}, arrays)
    assert st_mod.read(path)[1] == {"who": "me", "n": "1"}


def test_arrays_the_package_writes_are_what_we_read(tmp_path):
    arrays = _all_dtypes()
    path = str(tmp_path / "theirs.safetensors")
    stnp.save_file(arrays, path, metadata={"format": "np"})
    got, metadata = st_mod.read(path)
    _same_arrays({k: got[k] for k in arrays}, arrays)
    assert metadata == {"format": "np"}
    assert all(a.flags.writeable and a.flags.c_contiguous and a.flags.aligned for a in got.values())


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(
    st.text(min_size=0, max_size=12).filter(lambda s: s != "__metadata__"),
    hnp.arrays(st.sampled_from([np.dtype(d) for d in DTYPES.values()] + [np.dtype(">i4"), np.dtype(">f8")]),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)),
    max_size=6))
def test_any_dict_of_arrays_round_trips_with_both_readers(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("h") / "a.safetensors"
    rio.save_arrays(arrays, path)
    want = {k: a.astype(a.dtype.newbyteorder("<")) for k, a in arrays.items()}
    back, theirs = rio.load_arrays(path), stnp.load_file(str(path))
    assert set(back) == set(theirs) == set(want)
    _same_arrays({k: back[k] for k in want}, want)
    _same_arrays({k: theirs[k] for k in want}, want)


def test_save_arrays_writes_safetensors_under_any_name_and_non_contiguous_input(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    rio.save_arrays({"a": a}, tmp_path / "weights.bin")
    np.testing.assert_array_equal(rio.load_arrays(tmp_path / "weights.bin")["a"], a)


def test_save_arrays_argument_errors(tmp_path):
    ok = np.zeros(3, np.float32)
    cases = [
        ([ok], DTypeError, "arrays: expected a dict"),
        ({1: ok}, DTypeError, "arrays: names must be str"),
        ({"__metadata__": ok}, ArgumentError, "'__metadata__' is reserved"),
        ({"a": [1, 2]}, DTypeError, r"arrays\['a'\]: expected a numpy.ndarray, got list"),
        ({"a": np.zeros(2, np.complex128)}, DTypeError, "'a' has dtype '<c16'.*cannot hold"),
        ({"a": np.array(["x"])}, DTypeError, "'a' has dtype '<U1'"),
        ({"a": np.zeros(2, object)}, DTypeError, "'a' has dtype '|O'"),
    ]
    for arrays, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            rio.save_arrays(arrays, tmp_path / "a.safetensors")
    for metadata in ({"a": 1}, {1: "a"}, ["a"]):
        with pytest.raises(DTypeError, match="metadata: expected a dict of str to str"):
            rio.save_arrays({"a": ok}, tmp_path / "a.safetensors", metadata=metadata)
    # files load_arrays would refuse are not written
    for arrays, metadata, msg in [
        ({"a": ok}, {"refcompress": "not json"}, "metadata: the key 'refcompress' is reserved"),
        ({"a\udc80": ok}, None, r"arrays: name 'a\\udc80' is not valid Unicode"),
        ({"a": ok}, {"k\udc80": "v"}, r"metadata: key 'k\\udc80' is not valid Unicode"),
        ({"a": ok}, {"k": "v\udc80"}, r"metadata\['k'\]: value 'v\\udc80' is not valid Unicode"),
    ]:
        with pytest.raises(ArgumentError, match=msg):
            rio.save_arrays(arrays, tmp_path / "a.safetensors", metadata=metadata)
    assert os.listdir(tmp_path) == []


def test_bool_arrays_of_any_byte_are_written_as_0_and_1(tmp_path):
    a = np.array([0, 1, 2, 255], np.uint8).view(np.bool_)  # NumPy's bool may hold any byte
    path = rio.save_arrays({"a": a, "s": np.array(7, np.uint8).view(np.bool_)}, tmp_path / "b.safetensors")
    back = rio.load_arrays(path)
    np.testing.assert_array_equal(back["a"].view(np.uint8), [0, 1, 1, 1])
    assert back["s"].shape == () and back["s"].view(np.uint8) == 1


def test_load_state_dict_is_how_arrays_enter_a_model_and_it_says_what_does_not_fit(tmp_path):
    model = _trained_like(mlp_300_100)
    rio.save_arrays(model.state_dict(), tmp_path / "w.safetensors")
    fresh = mlp_300_100(rng=np.random.default_rng(7)).eval()
    fresh.load_state_dict(rio.load_arrays(tmp_path / "w.safetensors"))
    np.testing.assert_array_equal(fresh(_x()), model(_x()))
    arrays = rio.load_arrays(tmp_path / "w.safetensors")
    renamed = {("layer." + k if k == "1.weight" else k): v for k, v in arrays.items()}
    with pytest.raises(ArgumentError, match=r"missing keys \['1.weight'\], unexpected keys \['layer.1.weight'\]"):
        fresh.load_state_dict(renamed)
    with pytest.raises(ShapeError, match=r"state_dict\['1.weight'\]: expected shape \(300, 64\), got \(300, 63\)"):
        fresh.load_state_dict(dict(arrays, **{"1.weight": arrays["1.weight"][:, :63]}))
    with pytest.raises(DTypeError, match=r"state_dict\['1.weight'\]: expected dtype float32, got float64"):
        fresh.load_state_dict(dict(arrays, **{"1.weight": arrays["1.weight"].astype(np.float64)}))
    np.testing.assert_array_equal(fresh(_x()), model(_x()))  # nothing was written by the failures


def test_a_plain_file_is_not_a_model(tmp_path):
    rio.save_arrays({"w": np.zeros(3, np.float32)}, tmp_path / "w.safetensors")
    for fn in (rio.load, rio.read_metadata):
        with pytest.raises(CorruptFileError, match="no 'refcompress' entry in the safetensors __metadata__ "
                           r"\(not a refcompress model file\); read its tensors with refcompress.io.load_arrays"):
            fn(tmp_path / "w.safetensors")


def test_bfloat16_is_widened_to_float32_exactly(tmp_path):
    f32 = np.array([1.0, -2.5, 0.0, -0.0, np.inf, -np.inf, 1.5 * 2.0**127, 2.0**-133, 65280.0], np.float32)
    bits = (f32.view(np.uint32) >> 16).astype("<u2")
    assert np.array_equal((bits.astype(np.uint32) << 16).view(np.float32), f32)  # all exact in bf16
    nan = np.array([0x7FC1, 0xFF81], "<u2")  # NaNs with payloads: kept bit for bit
    data = bits.tobytes() + nan.tobytes()
    header = {"x": {"dtype": "BF16", "shape": [9], "data_offsets": [0, 18]},
              "n": {"dtype": "BF16", "shape": [2], "data_offsets": [18, 22]}}
    (tmp_path / "bf.safetensors").write_bytes(_raw(header, data))
    got = rio.load_arrays(tmp_path / "bf.safetensors")
    assert got["x"].dtype == np.float32 and got["x"].tobytes() == f32.tobytes()
    assert list(got["n"].view(np.uint32)) == [0x7FC10000, 0xFF810000]


def test_a_0d_bfloat16_tensor_is_a_0d_array(tmp_path):
    """Not a NumPy scalar (shifting a 0-d array gives one), as every other 0-d tensor."""
    header = {"s": {"dtype": "BF16", "shape": [], "data_offsets": [0, 2]}}
    (tmp_path / "bf.safetensors").write_bytes(_raw(header, np.array(0x3F80, "<u2").tobytes()))
    got = rio.load_arrays(tmp_path / "bf.safetensors")["s"]
    assert type(got) is np.ndarray and got.shape == () and got.dtype == np.float32 and got == 1.0


@pytest.mark.parametrize("code", ["F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"])
def test_float8_and_smaller_are_refused_by_name(tmp_path, code):
    (tmp_path / "f8.safetensors").write_bytes(_raw({"x": {"dtype": code, "shape": [4], "data_offsets": [0, 4]}},
                                                   b"\0" * 4))
    with pytest.raises(DTypeError, match=f"f8.safetensors: tensor 'x' has dtype {code}, which NumPy cannot "
                       "represent; refcompress reads BOOL, .*C64, BF16"):
        rio.load_arrays(tmp_path / "f8.safetensors")


# -- hand-made bad files ------------------------------------------------------------------
F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
DUP = b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
BAD = {
    "too short": (b"\x05\0\0", r"3 bytes is too short for a safetensors file"),
    "empty": (b"", r"0 bytes is too short"),
    "length past the end": (struct.pack("<Q", 1000) + b'{"a":1}', r"header length 1000 runs past the end of the 15-byte"),
    "length absurd": (struct.pack("<Q", 2**63) + b"{}", r"header length 9223372036854775808 exceeds the format's limit"),
    "not json": (struct.pack("<Q", 5) + b"{abc}", r"header is not valid JSON"),
    "leading space": (_raw({"a": F32_2}, b"\0" * 8)[:8] + b" " + _raw({"a": F32_2}, b"\0" * 8)[8:-1],
                      r"header does not start with '\{'"),
    "not utf-8": (struct.pack("<Q", 4) + b'{"\xff"', r"header is not UTF-8"),
    "a list": (struct.pack("<Q", 2) + b"[]", r"header does not start with '\{'"),
    "nested too deep": (struct.pack("<Q", 200_001) + b"{" + b'"a":[' + b"[" * 99_997 + b"]" * 99_998,
                        r"header JSON is nested too deeply|not valid JSON"),
    "duplicate name": (struct.pack("<Q", 2 * len(DUP) + 3) + b"{" + DUP + b"," + DUP + b"}" + b"\0" * 8,
                       r"header is not valid JSON \(name 'a' appears twice\)"),
    "unknown dtype": (_raw({"a": dict(F32_2, dtype="F33")}, b"\0" * 8), r"tensor 'a' has unknown dtype 'F33'"),
    "dtype not a string": (_raw({"a": dict(F32_2, dtype=4)}, b"\0" * 8), r"tensor 'a': dtype 4 is not a string"),
    "dtype a list": (_raw({"a": dict(F32_2, dtype=["F32"])}, b"\0" * 8), r"tensor 'a': dtype \['F32'\] is not a string"),
    "dtype an object": (_raw({"a": dict(F32_2, dtype={"F32": 1})}, b"\0" * 8), r"tensor 'a': dtype \{'F32': 1\} is not"),
    "missing field": (_raw({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
                      r"tensor 'a' must have exactly the fields dtype, shape, data_offsets"),
    "extra field": (_raw({"a": dict(F32_2, order="F")}, b"\0" * 8), r"tensor 'a' must have exactly the fields"),
    "not an object": (_raw({"a": [1]}), r"tensor 'a' must have exactly the fields"),
    "negative dim": (_raw({"a": dict(F32_2, shape=[-2])}, b"\0" * 8), r"shape \[-2\] is not a list of non-negative"),
    "bool dim": (_raw({"a": dict(F32_2, shape=[True, 2])}, b"\0" * 8), r"shape \[true, 2\]|shape \[True, 2\]"),
    "float dim": (_raw({"a": dict(F32_2, shape=[2.0])}, b"\0" * 8), r"shape \[2.0\] is not a list"),
    "three offsets": (_raw({"a": dict(F32_2, data_offsets=[0, 4, 8])}, b"\0" * 8), r"data_offsets \[0, 4, 8\] is not a pair"),
    "reversed offsets": (_raw({"a": dict(F32_2, shape=[0], data_offsets=[8, 0])}, b"\0" * 8),
                         r"data_offsets \[8, 0\] is not a pair \[begin, end\] of ints, 0 <= begin <= end"),
    "span too small": (_raw({"a": dict(F32_2, shape=[3])}, b"\0" * 8),
                       r"tensor 'a': F32 \(3,\) needs 12 bytes but data_offsets \[0, 8\] span 8"),
    "span too large": (_raw({"a": dict(F32_2, shape=[1])}, b"\0" * 8),
                       r"tensor 'a': F32 \(1,\) needs 4 bytes but data_offsets \[0, 8\] span 8"),
    "huge shape": (_raw({"a": dict(F32_2, shape=[2**40, 2**40])}, b"\0" * 8), r"needs 4835703278458516698824704 bytes"),
    "0 dim, huge dim": (_raw({"a": dict(F32_2, shape=[0, 2**70], data_offsets=[0, 0])}),
                        r"tensor 'a': F32 tensor shape \[0, 1180591620717411303424\] is beyond NumPy's array size"),
    "0 dim, huge product": (_raw({"a": dict(F32_2, shape=[0, 2**62, 2**62], data_offsets=[0, 0])}),
                            r"tensor 'a': F32 tensor shape \[0, 4611686018427387904, 4611686018427387904\] is beyond"),
    "70 dims": (_raw({"a": dict(F32_2, shape=[1] * 70, data_offsets=[0, 4])}, b"\0" * 4),
                r"tensor 'a': F32 tensor has 70 dimensions, more than NumPy's 64"),
    "overlap": (_raw({"a": F32_2, "b": dict(F32_2, data_offsets=[4, 12])}, b"\0" * 12),
                r"tensor 'b' starts at buffer byte 4, expected 8 \(overlapping the previous tensor\)"),
    "hole": (_raw({"a": F32_2, "b": dict(F32_2, data_offsets=[12, 20])}, b"\0" * 20),
             r"tensor 'b' starts at buffer byte 12, expected 8 \(leaving a hole\)"),
    "hole at the start": (_raw({"a": dict(F32_2, data_offsets=[4, 12])}, b"\0" * 12), r"starts at buffer byte 4, expected 0"),
    "trailing bytes": (_raw({"a": F32_2}, b"\0" * 9), r"the tensors end at byte \d+ but the file has \d+ bytes \(trailing"),
    "truncated data": (_raw({"a": F32_2}, b"\0" * 7), r"the tensors end at byte \d+ but the file has \d+ bytes \(truncated\)"),
    "metadata not strings": (_raw({"__metadata__": {"a": 1}, "a": F32_2}, b"\0" * 8), r"__metadata__ is not an object of string"),
    "metadata a list": (_raw({"__metadata__": ["a"], "a": F32_2}, b"\0" * 8), r"__metadata__ is not an object"),
    "bool byte 2": (_raw({"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02"),
                    r"BOOL tensor 'a' holds bytes other than 0 and 1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_hand_made_bad_files_are_refused_naming_the_file(tmp_path, case):
    content, msg = BAD[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    for fn in (rio.load_arrays, rio.load):
        with pytest.raises(CorruptFileError, match=f"{path}: .*(?:{msg})"):
            fn(path)


def test_hand_made_good_files_load(tmp_path):
    """What the format allows: space padding, no tensors, an empty tensor, a 0-d tensor,
    header order unlike data order, and the package's own writer."""
    header = {"b": {"dtype": "I16", "shape": [], "data_offsets": [8, 10]}, "a": F32_2,
              "e": {"dtype": "U8", "shape": [0, 3], "data_offsets": [10, 10]}}
    data = np.array([1.5, -2], np.float32).tobytes() + np.int16(-7).tobytes()
    (tmp_path / "ok.safetensors").write_bytes(_raw(header, data, pad=b"   "))
    got = rio.load_arrays(tmp_path / "ok.safetensors")
    assert list(got) == ["a", "b", "e"]  # file order
    assert got["a"].tolist() == [1.5, -2] and got["b"].shape == () and got["b"] == -7
    assert got["e"].shape == (0, 3) and got["e"].dtype == np.uint8
    (tmp_path / "none.safetensors").write_bytes(_raw({}))
    assert rio.load_arrays(tmp_path / "none.safetensors") == {}
    (tmp_path / "meta.safetensors").write_bytes(_raw({"__metadata__": {"k": "v"}}))
    assert st_mod.read(tmp_path / "meta.safetensors") == ({}, {"k": "v"})


# -- damaged refcompress files: the metadata is checked as in an npz -----------------------
def _rewrite(path, edit_header=None, edit_meta=None, data=None):
    header, old = _split(path)
    if edit_meta:
        meta = _model_meta(header)
        edit_meta(meta)
        _set_model_meta(header, meta)
    if edit_header:
        edit_header(header)
    path.write_bytes(_raw(header, old if data is None else data))


def test_altered_data_with_a_consistent_header_fails_the_checksum(saved):
    model, path = saved
    header, data = _split(path)
    begin, end = header["3.weight"]["data_offsets"]
    w = bytearray(data)
    w[begin + 5] ^= 0x01
    path.write_bytes(_raw(header, bytes(w)))
    for fn in (rio.load, rio.load_arrays, rio.read_metadata):
        with pytest.raises(CorruptFileError, match=f"{path}: tensor '3.weight' fails its SHA-256 checksum"):
            fn(path)


def test_a_name_repeated_in_the_refcompress_json(saved):
    _, path = saved
    header, data = _split(path)
    text = header["__metadata__"]["refcompress"]
    _set_meta_text(header, text[:-1] + ',"user":{"acc":0.1}}')
    path.write_bytes(_raw(header, data))
    with pytest.raises(CorruptFileError,
                       match=r"__metadata__\['refcompress'\] is not valid JSON \(name 'user' appears twice"):
        rio.load(path)


def test_checksum_edited_in_metadata(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"][0].__setitem__("sha256", "0" * 64))
    with pytest.raises(CorruptFileError, match="'0.weight' fails its SHA-256"):
        rio.load(path)


def test_tensor_missing_from_the_metadata_or_the_header(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"].pop())
    with pytest.raises(CorruptFileError, match=r"tensors do not match the metadata: missing \[\], unexpected \['8.bias'\]"):
        rio.load(path)


def test_header_and_metadata_disagree_on_a_tensor(saved):
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"][0].__setitem__("dtype", "<i4"))
    with pytest.raises(CorruptFileError, match=r"tensor '0.weight' is F32 \(16, 1, 3, 3\) in the header, but the "
                       r"metadata says <i4 \(16, 1, 3, 3\)"):
        rio.load(path)
    _rewrite(path, edit_meta=lambda m: m["arrays"][0].update(dtype="<f4", shape=[16, 1, 9]))
    with pytest.raises(CorruptFileError, match=r"'0.weight' is F32 \(16, 1, 3, 3\) in the header.*\(16, 1, 9\)"):
        rio.load(path)


def test_consistent_arrays_that_do_not_fit_the_architecture(saved):
    _, path = saved
    header, data = _split(path)
    w = np.zeros((16, 1, 3, 2), np.float32)
    meta = _model_meta(header)
    meta["arrays"][0].update(shape=[16, 1, 3, 2], sha256=hashlib.sha256(w.tobytes()).hexdigest())
    _set_model_meta(header, meta)
    arrays = rio.load_arrays(path)
    arrays["0.weight"] = w
    st_mod._write(str(path), arrays, header["__metadata__"])  # (save_arrays reserves the key)
    with pytest.raises(CorruptFileError, match="do not fit the architecture.*0.weight"):
        rio.load(path)


@pytest.mark.parametrize("dtype", ["(1000000000000,)f4", "(1,", "10000000000000000000000f4", ["<f4"], 4])
def test_a_refcompress_dtype_numpy_cannot_parse_is_a_corrupt_file(saved, dtype):
    """NumPy raises ValueError ("(1000000000000,)f4") or SyntaxError ("(1,") for some
    strings, not only TypeError."""
    _, path = saved
    _rewrite(path, edit_meta=lambda m: m["arrays"][0].__setitem__("dtype", dtype))
    for fn in (rio.load, rio.read_metadata, rio.load_arrays):
        with pytest.raises(CorruptFileError, match=rf"{path}: arrays\[0\] \(0.weight\): dtype .* is not a "
                                                   "(NumPy dtype|string)"):
            fn(path)


@pytest.mark.parametrize("edit", ["format", "version", "no arrays", "not json", "unknown layer"])
def test_bad_refcompress_metadata(saved, edit):
    _, path = saved
    header, data = _split(path)
    meta = _model_meta(header)
    if edit == "format":
        meta["format"] = "other"
    elif edit == "version":
        meta["format_version"] = 2
    elif edit == "no arrays":
        meta.pop("arrays")
    elif edit == "unknown layer":
        meta["architecture"]["children"]["2"]["type"] = "Swish9"
    _set_model_meta(header, meta)
    if edit == "not json":
        _set_meta_text(header, "{nope")
    path.write_bytes(_raw(header, data))
    msg = {"format": "not a refcompress model file", "version": "format_version", "no arrays": "'arrays'",
           "not json": r"__metadata__\['refcompress'\] is not valid JSON", "unknown layer": "Swish9"}[edit]
    with pytest.raises(CorruptFileError, match=f"{path}: .*{msg}"):
        rio.load(path)


def test_every_single_byte_damage_and_truncation_is_refused_or_harmless(tmp_path):
    """Flip one bit (low and high) of every byte and cut the file at every length: every
    cut and every flip in the tensor data is refused (the SHA-256 of each tensor, which
    plain safetensors lacks); a flip in the header is refused, or (inside a string nothing
    depends on, such as the version that wrote the file) loads the saved model bit for bit."""
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    path = tmp_path / "m.safetensors"
    rio.save(model, path)
    data = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    x = np.random.default_rng(0).random((4, 3), dtype=np.float32)
    want_y, want_state = model(x), model.state_dict()
    cuts = list(range(len(data)))
    flips = [(i, bit) for i in range(len(data)) for bit in (0x01, 0x80)]
    loaded = []
    for case in cuts + flips:
        if isinstance(case, int):
            target = tmp_path / f"cut{case}.safetensors"
            target.write_bytes(data[:case])
        else:
            target = path
            b = bytearray(data)
            b[case[0]] ^= case[1]
            with open(path, "r+b") as f:  # in place: rewriting a truncated file is slow on ext4
                f.write(b)
        try:
            got = rio.load(target)
        except CorruptFileError:
            continue
        state = got.state_dict()
        assert all(state[k].dtype == v.dtype and np.array_equal(state[k], v) for k, v in want_state.items())
        assert np.array_equal(got(x), want_y)
        loaded.append(case)
    assert all(isinstance(c, tuple) and 8 <= c[0] < header_end for c in loaded)
    assert len(loaded) < 0.05 * len(flips)


def test_every_damaged_plain_header_byte_is_refused(tmp_path):
    """A plain file has no checksum of its data, but one flipped bit anywhere in its
    header, or a cut anywhere, is refused (or, for bytes the format ignores, harmless)."""
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.arange(5, dtype=np.int8),
              "s": np.array(7, np.int64)}
    path = tmp_path / "a.safetensors"
    rio.save_arrays(arrays, path, metadata={"k": "v"})
    data = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    want = list(rio.load_arrays(path).values())  # in file order: a flip may rename a tensor
    same = 0
    cases = [(i, bit) for i in range(header_end) for bit in (0x01, 0x80, 0x20)]
    for pos, bit in cases + [(n, None) for n in range(len(data))]:
        if bit is None:
            damaged = data[:pos]
        else:
            b = bytearray(data)
            b[pos] ^= bit
            damaged = bytes(b)
        path.write_bytes(damaged)
        try:
            got = list(rio.load_arrays(path).values())
        except (CorruptFileError, DTypeError):
            continue
        _same_arrays(dict(enumerate(got)), dict(enumerate(want)))
        same += 1
    assert same < 0.05 * len(cases)


# -- the refcompress metadata's own SHA-256 ------------------------------------------------
def _conv_bn_softmax():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, stride=2), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32, 3), nn.BatchNorm1d(3), nn.Softmax(dim=-1))
    return _trained_like(lambda rng: model, seed=3)


def test_every_header_bit_flip_of_a_conv_bn_softmax_model_is_refused_or_harmless(tmp_path):
    """Every bit of the header of a model whose architecture has numbers that matter
    (Softmax dim, BatchNorm eps, conv padding / stride): one flipped bit is refused or loads
    the saved model bit for bit.  Before the metadata had its SHA-256, dim -1 -> 0, eps
    1e-05 -> 1e-04 or padding 1 -> 0 loaded a different model silently."""
    model = _conv_bn_softmax()
    path = tmp_path / "m.safetensors"
    rio.save(model, path)
    data = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    assert b"refcompress.sha256" in data[:header_end]
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    want_y, want_state = model(x), model.state_dict()
    loaded = 0
    for pos in range(header_end):
        for bit in range(8):
            b = bytearray(data)
            b[pos] ^= 1 << bit
            with open(path, "r+b") as f:
                f.write(b)
            try:
                got = rio.load(path)
            except (CorruptFileError, DTypeError):
                continue
            state = got.state_dict()
            assert list(state) == list(want_state), (pos, bit)
            assert all(state[k].dtype == v.dtype and np.array_equal(state[k], v)
                       for k, v in want_state.items()), (pos, bit)
            assert np.array_equal(got(x), want_y), (pos, bit)
            loaded += 1
    assert loaded < 0.01 * 8 * header_end


@pytest.mark.parametrize("old, new", [(b'\\"dim\\":-1', b'\\"dim\\":-0'), (b'\\"eps\\":1e-05', b'\\"eps\\":1e-04'),
                                      (b'\\"padding\\":[1,1]', b'\\"padding\\":[0,1]')])
def test_an_altered_architecture_fails_the_metadata_checksum(tmp_path, old, new):
    path = tmp_path / "m.safetensors"
    rio.save(_conv_bn_softmax(), path)
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    for fn in (rio.load, rio.read_metadata, rio.load_arrays):
        with pytest.raises(CorruptFileError, match=f"{path}: __metadata__\\['refcompress'\\] fails its SHA-256 "
                           r"checksum \(__metadata__\['refcompress.sha256'\]\)"):
            fn(path)


def test_a_file_saved_before_the_metadata_checksum_still_loads(tmp_path):
    """Files of earlier releases have no 'refcompress.sha256': read as before."""
    model = _conv_bn_softmax()
    path = tmp_path / "old.safetensors"
    rio.save(model, path)
    header, data = _split(path)
    del header["__metadata__"]["refcompress.sha256"]
    meta_text = header["__metadata__"]["refcompress"]
    st_mod._write(str(path), rio.load_arrays(path), {"refcompress": meta_text})  # the old writer's layout
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    assert np.array_equal(rio.load(path)(x), model(x))
    assert rio.read_metadata(path) == json.loads(meta_text)


def test_the_checksum_key_is_reserved_in_save_arrays(tmp_path):
    with pytest.raises(ArgumentError, match="metadata: the key 'refcompress.sha256' is reserved"):
        rio.save_arrays({"a": np.zeros(1)}, tmp_path / "a.safetensors", metadata={"refcompress.sha256": "x"})
    assert not (tmp_path / "a.safetensors").exists()


def test_a_config_that_divides_by_zero_is_a_corrupt_file(tmp_path):
    """An older (unchecksummed) file whose conv has groups 0: CorruptFileError naming the
    file, not ZeroDivisionError from the layer's constructor."""
    from refcompress.quant import modules as qm

    path = tmp_path / "g0.safetensors"
    rio.save(nn.Sequential(qm.WeightOnlyConv2d(2, 3, 3, bits=4)), path)
    header, data = _split(path)
    meta = _model_meta(header)
    meta["architecture"]["children"]["0"]["config"]["groups"] = 0
    path.write_bytes(_raw({**header, "__metadata__": {"refcompress": json.dumps(meta)}}, data))
    with pytest.raises(CorruptFileError, match=f"{path}: the architecture cannot be built \\(ZeroDivisionError"):
        rio.load(path)


def test_a_header_over_the_format_limit_is_refused_at_save(tmp_path, monkeypatch):
    """The writer keeps the reader's 100,000,000-byte header limit (here lowered to 2,000):
    an ArgumentError naming what made it long, and nothing is written."""
    monkeypatch.setattr(st_mod, "MAX_HEADER_BYTES", 2000)
    path = tmp_path / "a.safetensors"
    with pytest.raises(ArgumentError, match=r"metadata: the safetensors header would be \d+ bytes \(\d+ of them "
                       r"metadata\), over the format's limit of 2000"):
        rio.save_arrays({"w": np.zeros(1)}, path, metadata={"k": "a" * 2000})
    with pytest.raises(ArgumentError, match=r"arrays: the safetensors header would be"):
        rio.save_arrays({f"w{i}": np.zeros(1) for i in range(100)}, path)
    with pytest.raises(ArgumentError, match=r"metadata: the safetensors header would be"):
        rio.save(nn.Linear(2, 2), path, metadata={"k": "a" * 3000})
    with pytest.raises(ArgumentError, match=r"model: the safetensors header would be"):
        rio.save(nn.Sequential(*[nn.Linear(2, 2) for _ in range(20)]), path)
    assert os.listdir(tmp_path) == []
    rio.save_arrays({"w": np.zeros(1)}, path, metadata={"k": "a" * 1000})
    assert list(rio.load_arrays(path)) == ["w"]
