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
its two LayerNorms, plus H for the embeddings' LayerNorm.

That bound holds for the forms whose layers take float input as it comes.  A W8A8 layer
first rounds its input to codes, and where a float difference of that size meets a rounding
boundary a code flips (docs/io.md): the end-to-end difference is then a quantization step,
not a rounding error (seeds 7, 11, 16, 25 of 1-40 give 14-86x the bound above), and no
export bug is involved.  So for W8A8 forms the exactness is checked where it holds: each
W8A8 layer's input and output are made extra graph outputs, and the layer's own forward on
the input the graph gave it must give the graph's output bit for bit.  End to end, the
last hidden state only has to point the same way at each real token (cosine >= 0.999): a
flipped code moves one activation by one step (1/127 of its row's largest for per-token,
1/255 of the tensor's range for per-tensor and static), a small fraction of the row's norm,
while a wrong scale, zero point or weight layout turns whole rows.
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


def _runs(m, feeds, all_outputs=False):
    """{runtime: the graph's output} (all_outputs: {runtime: {output name: value}})."""
    names = [o.name for o in m.graph.output]
    runs = {"reference evaluator": lambda: ReferenceEvaluator(m).run(None, feeds)}
    if ort is not None:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        runs["onnxruntime"] = lambda: sess.run(None, feeds)
    return {who: dict(zip(names, run())) if all_outputs else run()[0] for who, run in runs.items()}


def _probe_w8a8_layers(model, m):
    """Make each W8A8 layer's input and output extra outputs of graph ``m`` (in place):
    {layer path: (input name, output name)}.  A layer's node group is the nodes named by
    its path; its input is the one tensor they read that no node of theirs or initializer
    gives."""
    from onnx import TensorProto, helper

    inits = {i.name for i in m.graph.initializer}
    probes = {}
    for path, layer in model.named_modules():
        if type(layer) is not W8A8Linear:
            continue
        nodes = [n for n in m.graph.node if n.name == path or n.name.startswith(path + "/")]
        made = {o for n in nodes for o in n.output}
        ins = {i for n in nodes for i in n.input if i and i not in inits and i not in made}
        assert len(ins) == 1, (path, ins)
        probes[path] = (ins.pop(), nodes[-1].output[0])
        for name in probes[path]:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return probes


def _check_like_refcompress(model, m, feeds):
    """The graph's last hidden state against the model's at the real tokens: within the
    derived bound, or for W8A8 forms each layer bit for bit in context and the whole
    within cosine 0.999 (module docstring)."""
    want = model(feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
    real = feeds["attention_mask"].astype(bool)  # padded positions are not used downstream
    probes = _probe_w8a8_layers(model, m)
    for who, outs in _runs(m, feeds, all_outputs=True).items():
        got = outs["last_hidden_state"]
        assert got.shape == want.shape and got.dtype == np.float32, who
        if not probes:
            np.testing.assert_allclose(got[real], want[real], rtol=0,
                                       atol=_tolerance(model, feeds["input_ids"].shape[1], want), err_msg=who)
            continue
        for path, (x_name, y_name) in probes.items():
            y = model.get_submodule(path)(outs[x_name])
            assert np.array_equal(y.view(np.uint32), outs[y_name].view(np.uint32)), (who, path)
        a, b = got[real], want[real]
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= 0.999, (who, cos.min())
    return probes


@pytest.mark.parametrize("method", sorted(FORMS))
def test_each_compressed_form_runs_like_refcompress(method, tmp_path):
    model = _compressed(method)
    layer = model.get_submodule("encoder.layer.1.output.dense")
    assert type(layer) is FORMS[method]
    feeds = _batch()
    # onnx's evaluator has DequantizeLinear from opset 19 on; the default is 17 or 21
    opset = 21 if type(layer) is WeightOnlyLinear else None
    path = rio.export_onnx(model, tmp_path / "m.onnx", opset=opset)
    probes = _check_like_refcompress(model, onnx.load(path), feeds)
    assert len(probes) == (12 if FORMS[method] is W8A8Linear else 0)  # 2 encoder layers x 6 Linears


def test_csr_layers_and_a_mix_of_forms_in_one_model():
    model = _compressed("W8A8 per-token SmoothQuant")
    rng = np.random.default_rng(4)
    dense = model.encoder.layer[0].intermediate.dense
    assert type(dense) is W8A8Linear
    w = rng.standard_normal((64, 32)).astype(np.float32) * (rng.random((64, 32)) < 0.3)
    model.encoder.layer[0].intermediate.dense = SparseLinear.from_dense(w, rng.standard_normal(64).astype(np.float32))
    model.encoder.layer[1].attention.self.value = nn.Linear(32, 32, rng=rng)
    m = to_onnx_model(model)
    assert m.opset_import[0].version == 17
    assert len(_check_like_refcompress(model, m, _batch(5))) == 10


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
    _check_like_refcompress(model, onnx.load(str(out)), _batch(6))
    assert main(["export", str(tmp_path / "bert.npz"), "-o", str(tmp_path / "x.onnx"), "--input-shape", "8"]) == 1
    assert "--input-shape: " in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    # the model kind, and so the BertModel's opset floor, is known once the file is loaded
    assert main(["export", str(tmp_path / "bert.npz"), "-o", str(tmp_path / "x.onnx"), "--opset", "16"]) == 1
    err = capsys.readouterr().err
    assert "--opset: a BertModel needs opset >= 17 (LayerNormalization), got 16" in err, err
    assert not (tmp_path / "x.onnx").exists()
