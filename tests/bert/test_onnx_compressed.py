"""A compressed BertModel exported to ONNX computes what refcompress computes.

Each compressed form the transformer recipes write (W8A8 in every activation mode, with and
without SmoothQuant; int4 GPTQ / AWQ per channel, grouped, rotated; 2:4 N:M; CSR; low rank)
replaces the encoder's Linear layers of a tiny random BERT; the export is run by onnx's
ReferenceEvaluator (always) and by onnxruntime (when installed).  The Linear layers
themselves are exact (tests/io/test_onnx_w8a8.py) or float products as in tests/io; what
differs is the float part around them (attention products, Softmax, LayerNorm, Erf), which
each runtime sums in its own order.  Bound, as in tests/io/test_onnx.py (Higham eq. 3.5):

    tol = (sum of the reduction lengths on the path) * u * max(1, max|y|),   u = 2^-24,

with per encoder layer the Linear lengths H (Q, K, V), H (attention output), H
(intermediate), I (output), the head products d (Q K^T) and S (P V), and H for each of
its two LayerNorms, plus H for the embeddings' LayerNorm.  An activation code can still
change where a float difference of that size meets a rounding boundary before a quantizer
(docs/io.md); these fixed inputs meet none.
"""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx.reference import ReferenceEvaluator  # noqa: E402

from _tiny_bert import tiny_bert  # noqa: E402
from refcompress import io as rio  # noqa: E402
from refcompress import nn  # noqa: E402
from refcompress.errors import ArgumentError  # noqa: E402
from refcompress.io.onnx import to_onnx_model  # noqa: E402
from refcompress.lowrank import LowRankLinear  # noqa: E402
from refcompress.pipeline import transformer as tr  # noqa: E402
from refcompress.prune import NMLinear  # noqa: E402
from refcompress.prune.sparse_layers import SparseLinear  # noqa: E402
from refcompress.quant.modules import DynamicQuantizedLinear, WeightOnlyLinear  # noqa: E402
from refcompress.quant.w8a8 import W8A8Linear  # noqa: E402

try:
    import onnxruntime as ort
except ImportError:
    ort = None

U = 2.0**-24
SHAPE = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64)  # room for groups of 32

#: recipe method names -> the layer type they write (and the kinds the test must cover)
FORMS = {
    "W8A8 static": W8A8Linear,
    "W8A8 static SmoothQuant": W8A8Linear,
    "W8A8 dynamic per-tensor": W8A8Linear,
    "W8A8 dynamic per-token": W8A8Linear,
    "W8A8 per-token SmoothQuant": W8A8Linear,
    "int4 g32 GPTQ": WeightOnlyLinear,
    "int4 per-channel GPTQ": WeightOnlyLinear,
    "int4 per-channel GPTQ rotated": WeightOnlyLinear,
    "int4 g32 AWQ": WeightOnlyLinear,
    "int4 g32 RTN affine": WeightOnlyLinear,
    "2:4 Wanda permuted + bias correction": NMLinear,
    "data-aware SVD 50% FFN": LowRankLinear,
}


def _batch(seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 30, (3, 9))
    mask = np.ones((3, 9), np.int64)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": rng.integers(0, 2, (3, 9))}


def _compressed(method):
    """tiny_bert with every Linear the method replaces replaced as compress_encoder does,
    calibrated on random inputs of each layer's width."""
    model = tiny_bert(**SHAPE)
    make = tr.METHODS[method]
    rng = np.random.default_rng(2)
    for group in tr.encoder_linear_names(model):
        for name in group:
            if name.split(".", 3)[3] in make.layers:
                lin = model.get_submodule(name)
                x = rng.standard_normal((64, lin.in_features)).astype(np.float32)
                model.set_submodule(name, make.make(lin, x, **make.kwargs))
    return model


def _tolerance(model, seq, want):
    H, inter = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    d = H // SHAPE["num_attention_heads"]
    layers = len(list(model.encoder.layer.children()))
    lengths = layers * (H + H + H + inter + d + seq + 2 * H) + H
    return lengths * U * max(1.0, float(np.abs(want).max()))


def _runs(m, feeds):
    out = {"reference evaluator": ReferenceEvaluator(m).run(None, feeds)[0]}
    if ort is not None:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        out["onnxruntime"] = sess.run(None, feeds)[0]
    return out


@pytest.mark.parametrize("method", sorted(FORMS))
def test_each_compressed_form_runs_like_refcompress(method, tmp_path):
    model = _compressed(method)
    layer = model.get_submodule("encoder.layer.1.output.dense")
    assert type(layer) is FORMS[method]
    feeds = _batch()
    want = model(feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
    # onnx's evaluator has DequantizeLinear from opset 19 on; the default is 17 or 21
    opset = 21 if type(layer) is WeightOnlyLinear else None
    path = rio.export_onnx(model, tmp_path / "m.onnx", opset=opset)
    m = onnx.load(path)
    tol = _tolerance(model, feeds["input_ids"].shape[1], want)
    real = feeds["attention_mask"].astype(bool)  # padded positions are not used downstream
    for who, got in _runs(m, feeds).items():
        assert got.shape == want.shape and got.dtype == np.float32, who
        np.testing.assert_allclose(got[real], want[real], rtol=0, atol=tol, err_msg=who)


def test_csr_layers_and_a_mix_of_forms_in_one_model():
    model = _compressed("W8A8 per-token SmoothQuant")
    rng = np.random.default_rng(4)
    dense = model.encoder.layer[0].intermediate.dense
    assert type(dense) is W8A8Linear
    w = rng.standard_normal((64, 32)).astype(np.float32) * (rng.random((64, 32)) < 0.3)
    model.encoder.layer[0].intermediate.dense = SparseLinear.from_dense(w, rng.standard_normal(64).astype(np.float32))
    model.encoder.layer[1].attention.self.value = nn.Linear(32, 32, rng=rng)
    feeds = _batch(5)
    want = model(feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
    m = to_onnx_model(model)
    assert m.opset_import[0].version == 17
    tol = _tolerance(model, feeds["input_ids"].shape[1], want)
    real = feeds["attention_mask"].astype(bool)
    for who, got in _runs(m, feeds).items():
        np.testing.assert_allclose(got[real], want[real], rtol=0, atol=tol, err_msg=who)


def test_the_bert_exporter_uses_the_per_layer_emitter_of_io_onnx():
    """One emitter: a W8A8 layer in a BERT graph is written node for node as in a chain."""
    model = _compressed("W8A8 dynamic per-token")
    ops = [n.op_type for n in to_onnx_model(model).graph.node
           if n.name.startswith("encoder.layer.0.intermediate.dense")]
    lin = model.encoder.layer[0].intermediate.dense
    chain = [n.op_type for n in to_onnx_model(nn.Sequential(lin), (None, 5, 32)).graph.node
             if n.name != "output"]
    assert ops == chain and "MatMulInteger" in ops


def test_group_wise_layers_raise_the_opset_and_an_explicit_low_one_is_refused():
    model = _compressed("int4 g32 GPTQ")
    assert to_onnx_model(model).opset_import[0].version == 21
    with pytest.raises(ArgumentError, match=r"layer 'encoder.layer.0.attention.self.query' \(WeightOnlyLinear\) "
                                            r"cannot be exported to ONNX: group-wise scales .* opset >= 21"):
        to_onnx_model(model, opset=17)
    with pytest.raises(ArgumentError, match=r"opset: a BertModel needs opset >= 17"):
        to_onnx_model(tiny_bert(), opset=13)


def test_layers_without_an_onnx_form_keep_their_named_errors():
    model = tiny_bert(**SHAPE)
    model.encoder.layer[1].output.dense = DynamicQuantizedLinear(64, 32)  # takes rank-2 input only
    with pytest.raises(ArgumentError, match=r"layer 'encoder.layer.1.output.dense' \(DynamicQuantizedLinear\) "
                                            r"cannot be exported to ONNX: it takes rank-2 input, but gets rank 3"):
        to_onnx_model(model)
    with pytest.raises(ArgumentError, match=r"input_shape: a BertModel reads token ids .* expected None, "
                                            r"got \(None, 8\)"):
        to_onnx_model(tiny_bert(), (None, 8))
    with pytest.raises(ArgumentError, match=r"weight_dtype: expected one of"):
        to_onnx_model(tiny_bert(), weight_dtype="int4")


@pytest.mark.parametrize("method", ["W8A8 per-token SmoothQuant", "int4 g32 GPTQ"])
def test_the_export_command_writes_a_saved_compressed_bert(method, tmp_path, capsys):
    """What `refcompress compress` writes (a BertModel saved with io.save), through
    `refcompress export` (no --input-shape: the graph reads token ids)."""
    from refcompress.cli import main

    model = _compressed(method)
    rio.save(model, tmp_path / "bert.npz")
    out = tmp_path / "bert.onnx"
    assert main(["export", str(tmp_path / "bert.npz"), "-o", str(out)]) == 0
    opset = 21 if "g32" in method else 17
    assert f"(ONNX opset {opset}, input_ids, attention_mask, token_type_ids [batch, seq])" in capsys.readouterr().out
    feeds = _batch(6)
    want = model(feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
    real = feeds["attention_mask"].astype(bool)
    for who, got in _runs(onnx.load(str(out)), feeds).items():
        np.testing.assert_allclose(got[real], want[real], rtol=0,
                                   atol=_tolerance(model, feeds["input_ids"].shape[1], want), err_msg=who)
    assert main(["export", str(tmp_path / "bert.npz"), "-o", str(tmp_path / "x.onnx"), "--input-shape", "8"]) == 1
    assert "--input-shape: " in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
