"""Write a :class:`refcompress.nn.BertModel` as an ONNX graph (float32), no PyTorch needed.

The graph computes exactly the NumPy forward, operator for operator: embeddings (Gather,
Add, LayerNormalization), then per layer

    Q, K, V = x W^T + b  ->  [B, heads, S, d];   P = Softmax(Q K^T / sqrt(d) + M)
    x = LN(x + (P V) W_o^T + b_o);   x = LN(x + GELU(x W_i^T + b_i) W_2^T + b_2)

with M = (1 - mask) * min(float32) broadcast over queries and GELU written as
x/2 (1 + Erf(x / sqrt 2)).  Inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
(int64 [B, S]), output ``last_hidden_state`` (float32 [B, S, H]).  Opset 17 (the first
with LayerNormalization), or 21 when a group-wise weight-only layer needs blocked
DequantizeLinear.  Used to measure onnxruntime on the very same model
(benchmarks/bench_minilm.py) and to hand the model to ONNX tools; needs the ``onnx``
package.

The six Linear layers of each encoder layer may be compressed (W8A8Linear, WeightOnlyLinear,
SparseLinear, NMLinear, LowRankLinear, ...: what the transformer recipes write): each is
written by the per-layer emitter of :mod:`refcompress.io.onnx` (``_Exporter.linear_like``),
the code :func:`refcompress.io.export_onnx` uses for the same layers, here on the rank-3
[B, S, H] stream.  ``refcompress.io.export_onnx(model, path)`` routes a BertModel here.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ArgumentError, DTypeError
from ..io.atomic import check_output_path

__all__ = ["export_onnx", "to_onnx_model"]

OPSET = 17


def to_onnx_model(model, opset=None, weight_dtype: str = "int8"):
    """The ``onnx.ModelProto`` of ``model`` (a BertModel, its Linear layers float or
    compressed).  opset: None for the lowest that fits (17, or 21 with group-wise weight-only
    layers), or an int (checked as :func:`refcompress.io.export_onnx` checks it);
    weight_dtype: how int8 weights of W8A8 layers are stored (see io.export_onnx)."""
    from onnx import TensorProto, helper

    from ..io.onnx import _Exporter, _Stream, check_opset, check_weight_dtype, required_opset
    from ..nn import BertModel

    if not isinstance(model, BertModel):
        raise DTypeError(f"model: expected a refcompress.nn.BertModel, got {type(model).__name__}")
    opset = check_opset(max(OPSET, required_opset(model)) if opset is None else opset)
    if opset < OPSET:
        raise ArgumentError(f"opset: a BertModel needs opset >= {OPSET} (LayerNormalization), got {opset}")
    check_weight_dtype(weight_dtype)
    ex = _Exporter(opset, weight_dtype)
    g = ex.g
    const, op = g.const, g.op

    def linear(x, lin, path):
        # the one per-layer emitter of io.onnx, on the [B, S, in] stream
        return ex.linear_like(_Stream(x, 3, np.float32), lin, path).name

    def layer_norm(x, ln, prefix):
        return op("LayerNormalization", [x, const(ln.weight.data.astype(np.float32), prefix + ".weight"),
                                         const(ln.bias.data.astype(np.float32), prefix + ".bias")],
                  axis=-1, epsilon=float(ln.eps))

    emb = model.embeddings
    H = emb.word_embeddings.embedding_dim
    ids, types = "input_ids", "token_type_ids"
    seq = op("Gather", [op("Shape", [ids]), const(np.int64(1))], axis=0)
    pos = op("Range", [const(np.int64(0)), seq, const(np.int64(1))])
    e = op("Add", [op("Gather", [const(emb.word_embeddings.weight.data.astype(np.float32), "word"), ids]),
                   op("Gather", [const(emb.position_embeddings.weight.data.astype(np.float32), "pos"), pos])])
    e = op("Add", [e, op("Gather", [const(emb.token_type_embeddings.weight.data.astype(np.float32), "type"), types])])
    x = layer_norm(e, emb.LayerNorm, "embeddings.LayerNorm")

    mask = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    neg = op("Mul", [op("Sub", [const(np.float32(1)), mask]), const(np.finfo(np.float32).min)])
    add_mask = op("Unsqueeze", [neg, const(np.array([1, 2], np.int64))])  # [B, 1, 1, S]

    for i, layer in enumerate(model.encoder.layer.children()):
        att = layer.attention.self
        heads, d = att.num_heads, att.head_dim
        split = const(np.array([0, 0, heads, d], np.int64), "split")
        p = f"encoder.layer.{i}"

        def heads_of(t, perm):
            return op("Transpose", [op("Reshape", [t, split])], perm=perm)

        q = heads_of(linear(x, att.query, p + ".attention.self.query"), [0, 2, 1, 3])
        k = heads_of(linear(x, att.key, p + ".attention.self.key"), [0, 2, 3, 1])
        v = heads_of(linear(x, att.value, p + ".attention.self.value"), [0, 2, 1, 3])
        scores = op("Add", [op("Mul", [op("MatMul", [q, k]), const(np.float32(1.0 / math.sqrt(d)))]), add_mask])
        ctx = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        ctx = op("Reshape", [op("Transpose", [ctx], perm=[0, 2, 1, 3]), const(np.array([0, 0, H], np.int64))])
        x = layer_norm(op("Add", [linear(ctx, layer.attention.output.dense, p + ".attention.output.dense"), x]),
                       layer.attention.output.LayerNorm, p + ".attention.output.LayerNorm")
        h = linear(x, layer.intermediate.dense, p + ".intermediate.dense")
        erf = op("Erf", [op("Mul", [h, const(np.float32(1 / math.sqrt(2)))])])
        h = op("Mul", [op("Mul", [h, const(np.float32(0.5))]), op("Add", [erf, const(np.float32(1))])])
        x = layer_norm(op("Add", [linear(h, layer.output.dense, p + ".output.dense"), x]),
                       layer.output.LayerNorm, p + ".output.LayerNorm")

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state"))
    int_in = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])  # noqa: E731
    return g.model([int_in("input_ids"), int_in("attention_mask"), int_in("token_type_ids")],
                   [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", H])],
                   opset, "bert")


def export_onnx(model, path, opset=None, weight_dtype: str = "int8") -> str:
    """Write ``model`` to ``path`` (.onnx) atomically (``refcompress.io.atomic_write``);
    opset and weight_dtype as for :func:`to_onnx_model`."""
    from ..io.onnx import write_model

    path = check_output_path(path)  # before the graph is built
    return write_model(to_onnx_model(model, opset, weight_dtype), path)
