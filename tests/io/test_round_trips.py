"""Every compressed form a user can make, saved and loaded: the same bits and outputs.

The digits pipeline's stages (pruning to CSR / N:M / smaller layers, every quantization
method, Deep Compression's Huffman streams, every low-rank factorisation) on a small CNN
and MLP, and every layer replacement of the transformer methods (GPTQ, AWQ, W8A8 with
SmoothQuant, SparseGPT, Wanda, SVD) on one Linear, and a BERT; each through both formats
(the path's extension chooses npz or safetensors)."""

import os
from types import SimpleNamespace

import numpy as np
import pytest

from refcompress import io as rio
from refcompress import nn
from refcompress.errors import ArgumentError
from refcompress.io import npz as npz_mod
from refcompress.pipeline.compress import compress
from refcompress.pipeline.transformer import METHODS


def _assert_same(model, back, x):
    state, got = model.state_dict(), back.state_dict()
    assert list(got) == list(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert np.array_equal(got[k], v, equal_nan=v.dtype.kind in "fc"), k
    y, y_back = model(x), back(x)
    assert y_back.dtype == y.dtype and np.array_equal(y_back, y)


def _data():
    rng = np.random.default_rng(0)
    X = rng.random((200, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 200)
    return SimpleNamespace(X_train=X[:128], y_train=y[:128], X_val=X[128:160], y_val=y[128:160],
                           X_test=X[160:], y_test=y[160:])


def _cnn():
    nn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10)).eval()


def _mlp():
    nn.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


STAGES = {
    "magnitude (CSR)": [{"kind": "prune", "method": "magnitude", "sparsity": 0.7, "epochs": 0}],
    "structured": [{"kind": "prune", "method": "structured", "sparsity": 0.5, "epochs": 0}],
    "2:4": [{"kind": "prune", "method": "nm", "epochs": 0}],
    "int8 static": [{"kind": "quantize", "method": "static"}],
    "int4 g16 fixedpoint": [{"kind": "quantize", "method": "static", "rule": "fixedpoint", "bits": 4,
                             "group_size": 16}],
    "weight-only int4": [{"kind": "quantize", "method": "weight_only", "bits": 4}],
    "dynamic": [{"kind": "quantize", "method": "dynamic"}],
    "qat lsq": [{"kind": "quantize", "method": "qat", "epochs": 1, "lsq": True}],
    "deep compression": [{"kind": "prune", "method": "magnitude", "sparsity": 0.8, "epochs": 0},
                         {"kind": "quantize", "method": "share", "bits": 4, "epochs": 0},
                         {"kind": "encode", "bias_dtype": "float16"}],
    "svd": [{"kind": "lowrank", "method": "svd", "rank": 4, "epochs": 0}],
    "tucker2": [{"kind": "lowrank", "method": "tucker2", "mac_fraction": 0.5, "epochs": 0}],
    "cp": [{"kind": "lowrank", "method": "cp", "mac_fraction": 0.5, "epochs": 0}],
}


FORMATS = [".npz", ".safetensors"]


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("name", list(STAGES))
def test_pipeline_stages_round_trip_bit_for_bit(tmp_path, name, ext):
    d = _data()
    builders = [_cnn] if name in ("tucker2", "cp") else [_cnn, _mlp]
    for build in builders:
        model = compress(build(), {"name": name, "stage": STAGES[name]}, d, repeats=1).final.eval()
        path = rio.save(model, tmp_path / f"{build.__name__}{ext}")
        _assert_same(model, rio.load(path), d.X_test)


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("name", list(METHODS))
def test_transformer_layer_replacements_round_trip_bit_for_bit(tmp_path, name, ext):
    method = METHODS[name]
    rng = np.random.default_rng(1)
    nn.manual_seed(1)
    lin = nn.Linear(64, 48)
    calib = rng.standard_normal((256, 64)).astype(np.float32) if method.needs_data else None
    layer = method.make(lin, calib, **method.kwargs)
    layer.eval()
    path = rio.save(layer, tmp_path / f"layer{ext}")
    _assert_same(layer, rio.load(path), rng.standard_normal((3, 5, 64)).astype(np.float32))


@pytest.mark.parametrize("ext", FORMATS)
def test_bert_round_trips_bit_for_bit(tmp_path, ext):
    model = nn.BertModel(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=24, max_position_embeddings=12, type_vocab_size=2,
                         rng=np.random.default_rng(3)).eval()
    path = rio.save(model, tmp_path / f"bert{ext}")
    _assert_same(model, rio.load(path), np.random.default_rng(4).integers(0, 40, (2, 12)))


# -- what save writes, load reads (both formats) ------------------------------------------
@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
@pytest.mark.parametrize("metadata", [{1: "x", "1": "y"}, {"a": [{"b": {None: 1}}]}, {True: 1}, {1.5: 0},
                                      {"t": ({2: 3},)}])
def test_metadata_with_non_str_keys_is_refused_at_save(tmp_path, ext, metadata):
    """json.dumps would write 1 as "1" ({1: "x", "1": "y"} naming "1" twice: a file load refuses)."""
    path = tmp_path / f"m{ext}"
    with pytest.raises(ArgumentError, match=r"metadata.*: keys must be str \(JSON object names\), got"):
        rio.save(nn.Linear(2, 2), path, metadata=metadata)
    assert os.listdir(tmp_path) == []


def _nested(depth):
    top = cur = {}
    for _ in range(depth - 1):
        cur["a"] = {}
        cur = cur["a"]
    return top


@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
def test_deeply_nested_metadata_is_refused_at_save_and_the_deepest_allowed_loads(tmp_path, ext):
    path = tmp_path / f"m{ext}"
    for depth in (npz_mod.MAX_METADATA_DEPTH + 1, 990, 5000):
        with pytest.raises(ArgumentError, match=f"metadata: nested more than {npz_mod.MAX_METADATA_DEPTH} levels"):
            rio.save(nn.Linear(2, 2), path, metadata=_nested(depth))
        assert os.listdir(tmp_path) == []
    deepest = _nested(npz_mod.MAX_METADATA_DEPTH)
    rio.save(nn.Linear(2, 2), path, metadata=deepest)
    assert rio.read_metadata(path)["user"] == deepest
    rio.load(path)


@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
def test_a_bool_state_array_holding_other_bytes_saves_as_0_and_1(tmp_path, ext):
    """A valid NumPy bool array viewed from uint8 (here bytes 0, 1, 2, 0) is stored as 0 / 1:
    the safetensors model file was refused by its own reader (BOOL byte 2)."""
    from refcompress.quant.weight_sharing import SharedLinear

    lin = nn.Linear(2, 2)
    mask = (np.arange(4, dtype=np.uint8).reshape(2, 2) % 3).view(bool)
    model = nn.Sequential(SharedLinear.from_linear(lin, 1, mask=mask)).eval()
    path = rio.save(model, tmp_path / f"m{ext}")
    back = rio.load(path)
    assert back[0].mask.dtype == np.bool_ and back[0].mask.tolist() == [[False, True], [True, False]]
    assert back[0].mask.view(np.uint8).max() == 1
    x = np.random.default_rng(0).random((3, 2), dtype=np.float32)
    assert np.array_equal(back(x), model(x))


@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
def test_a_float64_model_without_parameters_loads_as_float64(tmp_path, ext):
    """The dtype to rebuild in is decided from the float buffers too: BatchNorm1d(affine=False)
    has none but float buffers, and its float64 file was refused (float32 rebuilt)."""
    model = nn.Sequential(nn.BatchNorm1d(3, affine=False)).to(np.float64).eval()
    model[0].running_mean = np.array([0.5, -1, 2], np.float64)
    back = rio.load(rio.save(model, tmp_path / f"m{ext}"))
    assert back[0].running_mean.dtype == np.float64 and back[0].running_mean.tolist() == [0.5, -1, 2]
    x = np.random.default_rng(0).random((4, 3))
    assert np.array_equal(back(x), model(x))
