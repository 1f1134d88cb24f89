"""Every compressed form a user can make, saved and loaded: the same bits and outputs.

The digits pipeline's stages (pruning to CSR / N:M / smaller layers, every quantization
method, Deep Compression's Huffman streams, every low-rank factorisation) on a small CNN
and MLP, and every layer replacement of the transformer methods (GPTQ, AWQ, W8A8 with
SmoothQuant, SparseGPT, Wanda, SVD) on one Linear, and a BERT; each through both formats
(the path's extension chooses npz or safetensors)."""

from types import SimpleNamespace

import numpy as np
import pytest

from refcompress import io as rio
from refcompress import nn
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
    "tucker2": [{"kind": "lowrank", "method": "tucker2", "param_fraction": 0.5, "epochs": 0}],
    "cp": [{"kind": "lowrank", "method": "cp", "rank": 4, "epochs": 0}],
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
