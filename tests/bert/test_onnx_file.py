"""The ONNX file export_onnx writes: the weights travel bit for bit, the write is atomic,
bad arguments are refused before any work.  Needs only the onnx package (no runtime)."""

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from refcompress import nn  # noqa: E402
from refcompress.bert.onnx_export import export_onnx  # noqa: E402
from refcompress.errors import ArgumentError, DTypeError  # noqa: E402

from _tiny_bert import TINY, tiny_bert as _tiny  # noqa: E402


def test_weights_travel_bit_for_bit(tmp_path):
    model = _tiny()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}

    def find(prefix):
        (hit,) = [v for k, v in inits.items() if k.startswith(prefix + "_")]
        return hit

    state = model.state_dict()
    np.testing.assert_array_equal(find("word"), state["embeddings.word_embeddings.weight"])
    for i in range(TINY["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        np.testing.assert_array_equal(find(p + ".attention.self.query.weightT"),
                                      state[p + ".attention.self.query.weight"].T)
        np.testing.assert_array_equal(find(p + ".output.dense.bias"), state[p + ".output.dense.bias"])
        np.testing.assert_array_equal(find(p + ".output.LayerNorm.weight"), state[p + ".output.LayerNorm.weight"])


def test_a_failed_export_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    model = _tiny()
    model.encoder.layer[0].attention.self.query = nn.ReLU()  # not exportable: refused mid-build
    with pytest.raises(ArgumentError, match=r"layer 'encoder.layer.0.attention.self.query' \(ReLU\) cannot be "
                       r"exported to ONNX: expected a Linear-like layer here \(Linear, SparseLinear"):
        export_onnx(model, target)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    with pytest.raises(ArgumentError, match="path: .* is a directory"):
        export_onnx(_tiny(), tmp_path)
    with pytest.raises(ArgumentError, match="path: directory .* does not exist"):
        export_onnx(_tiny(), tmp_path / "no" / "m.onnx")
    with pytest.raises(DTypeError, match="model: expected a refcompress.nn.BertModel, got Sequential"):
        export_onnx(nn.Sequential(nn.Linear(2, 2)), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []
