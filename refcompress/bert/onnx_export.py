"""Write a :class:`refcompress.nn.BertModel` as an ONNX graph (float32), no PyTorch needed.

The graph computes exactly the NumPy forward, operator for operator: embeddings (Gather,
Add, LayerNormalization), then per layer

    Q, K, V = x W^T + b  ->  [B, heads, S, d];   P = Softmax(Q K^T / sqrt(d) + M)
    x = LN(x + (P V) W_o^T + b_o);   x = LN(x + GELU(x W_i^T + b_i) W_2^T + b_2)

with M = (1 - mask) * min(float32) broadcast over queries and GELU written as
x/2 (1 + Erf(x / sqrt 2)).  Inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
(int64 [B, S]), output ``last_hidden_state`` (float32 [B, S, H]).  Opset 17 (the first
with LayerNormalization).  Used to measure onnxruntime on the very same model
(benchmarks/bench_minilm.py) and to hand the model to ONNX tools; needs the ``onnx``
package.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ArgumentError, DTypeError
from ..io.atomic import check_output_path

__all__ = ["export_onnx", "to_onnx_model"]

OPSET = 17


def to_onnx_model(model):
    """The ``onnx.ModelProto`` of ``model`` (a BertModel with plain Linear layers)."""
    from onnx import TensorProto, helper

    from ..io.onnx import Graph
    from ..nn import BertModel, Linear

    if not isinstance(model, BertModel):
        raise DTypeError(f"model: expected a refcompress.nn.BertModel, got {type(model).__name__}")
    g = Graph()
    const, op = g.const, g.op

    def linear(x, lin, prefix):
        if not isinstance(lin, Linear):
            raise ArgumentError(f"model: {prefix} is a {type(lin).__name__}; export needs float Linear layers")
        y = op("MatMul", [x, const(lin.weight.data.T.astype(np.float32).copy(), prefix + ".weightT")])
        return y if lin.bias is None else op("Add", [y, const(lin.bias.data.astype(np.float32), prefix + ".bias")])

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

        q = heads_of(linear(x, att.query, p + ".query"), [0, 2, 1, 3])
        k = heads_of(linear(x, att.key, p + ".key"), [0, 2, 3, 1])
        v = heads_of(linear(x, att.value, p + ".value"), [0, 2, 1, 3])
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
                   OPSET, "bert")


def export_onnx(model, path) -> str:
    """Write ``model`` to ``path`` (.onnx) atomically (``refcompress.io.atomic_write``)."""
    from ..io.onnx import write_model

    path = check_output_path(path)  # before the graph is built
    return write_model(to_onnx_model(model), path)
