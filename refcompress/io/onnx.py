"""ONNX out and in: :func:`export_onnx` and :func:`import_onnx` (need the ``onnx`` package).

Export walks a chain of refcompress layers (a Sequential, nested chains, the factored
layers) and writes one ONNX node group per layer.  Float layers become the standard float
ops; the integer layers of :mod:`refcompress.quant.modules` become integer ONNX ops whose
output codes equal refcompress's bit for bit:

* rule "float"      QLinearConv (conv) / QLinearMatMul (linear without bias) with the
                    scales (1, M, 1): the runtime forms its multiplier x_scale * w_scale /
                    y_scale, and with these scales that is refcompress's float32 M exactly in
                    any precision and any order (the real s_in s_w / s_out, rounded
                    differently, would differ in the last bit now and then, and so would
                    the codes).  A linear layer with a bias: MatMulInteger, Add of the int32
                    bias, Cast, Mul by M, QuantizeLinear with scale 1 -- the same float32
                    operations in the same order;
* rule "fixedpoint" MatMulInteger / ConvInteger, the int32 bias, then gemmlowp's
                    SaturatingRoundingDoublingHighMul and RoundingDivideByPOT written out in
                    int64 ops (Mul, Mod, Div of exact multiples, comparisons): no rounding
                    is left to the runtime.

``W8A8Linear`` (static, per-tensor and per-token activations, SmoothQuant factors) and
``DynamicQuantizedLinear`` become explicit ops (``_Exporter.w8a8``): the activation
quantizer as the same float32 / float64 operations refcompress performs, MatMulInteger,
and the float epilogue float32(acc) * s [* s_i] + b in the same order, so the float output
is bit for bit the layer's; parameters no graph can hold (a zero point outside [0, 255],
scales or smoothing factors not finite > 0) are refused naming the layer.  A
``BertModel`` is handed to :mod:`refcompress.bert.onnx_export`, which writes the
embeddings, attention and LayerNorm ops and every encoder Linear through
``_Exporter.linear_like`` -- the same per-layer code as in a chain.  ``weight_dtype``
"int8" (default) is exact in onnxruntime on x86 CPUs with VNNI; "uint8" on every CPU.

Import reads a float graph that is a single chain of the ops in ``IMPORT_OPS`` back into
refcompress.nn modules.  docs/io.md has the op table, the exactness story and examples.

Where it sits: the exporter knows the layer types of every technique package, so it sits
beside the pipeline, above them (no technique package imports it).  It imports them inside
the functions that need them: the pipeline imports ``refcompress.io`` to save files, and
``import refcompress.io`` must not import the pipeline back.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ArgumentError, CorruptFileError, DTypeError, RefcompressError, ShapeError
from .atomic import atomic_write, check_output_path, check_path

__all__ = ["export_onnx", "import_onnx", "to_onnx_model", "Graph", "write_model",
           "DEFAULT_OPSET", "MIN_OPSET", "IMPORT_OPS"]

#: The default opset (the BERT exporter's too: the first with LayerNormalization); a
#: group-wise weight-only layer raises it to BLOCKED_OPSET when no opset is given.
DEFAULT_OPSET = 17
#: QuantizeLinear / DequantizeLinear with per-axis scales need opset 13.
MIN_OPSET = 13
#: Group-wise weight-only layers are written as blocked DequantizeLinear (opset 21).
BLOCKED_OPSET = 21

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("the onnx package is needed for ONNX export / import: pip install onnx") from None
    return onnx


# ---- graph building (shared with refcompress.bert.onnx_export) ------------------------------


class Graph:
    """Nodes and initializers of one ONNX graph under construction, with unique names."""

    def __init__(self):
        self.nodes, self.inits = [], []
        self._count = 0
        self._node_names = set()

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value, prefix: str = "c") -> str:
        """An initializer holding ``value`` (its NumPy dtype is the tensor's); its name."""
        from onnx import numpy_helper

        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def op(self, kind: str, inputs, node_name: str | None = None, **attrs) -> str:
        """Append one ``kind`` node reading ``inputs`` (names; "" for an omitted optional
        input); returns the name of its single output."""
        from onnx import helper

        out = self.name(kind.lower())
        # node names must be unique; a layer's path names its first node, the rest add their output
        label = out if not node_name else node_name if node_name not in self._node_names else f"{node_name}:{out}"
        self._node_names.add(label)
        self.nodes.append(helper.make_node(kind, list(inputs), [out], name=label, **attrs))
        return out

    def model(self, inputs, outputs, opset: int, name: str):
        """The checked ``onnx.ModelProto`` (``onnx.checker`` raises on an invalid graph)."""
        onnx = _onnx()
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="refcompress")
        onnx.checker.check_model(m, full_check=True)
        return m


def write_model(m, path, name: str = "path") -> str:
    """Write an ``onnx.ModelProto`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, name) as f:
        f.write(m.SerializeToString())
    return os.fspath(path)


# ---- export -------------------------------------------------------------------------------


def _onnx_elem(dtype):
    from onnx import TensorProto

    return {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
            np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}[np.dtype(dtype)]


class _Stream:
    """The tensor flowing down the chain: its name, rank and element type."""

    def __init__(self, name, rank, dtype):
        self.name, self.rank, self.dtype = name, rank, np.dtype(dtype)


class _Exporter:
    def __init__(self, opset, weight_dtype):
        self.g = Graph()
        self.opset = opset
        self.weight_dtype = weight_dtype

    def unsupported(self, path, m, why=""):
        raise ArgumentError(f"model: layer {path or '<root>'!r} ({type(m).__name__}) cannot be exported to ONNX"
                            + (f": {why}" if why else ""))

    def expect(self, x, path, m, dtype=None, rank=None):
        if dtype is not None and x.dtype != np.dtype(dtype):
            what = "float32 values" if np.dtype(dtype) == np.float32 else f"{np.dtype(dtype).name} codes"
            self.unsupported(path, m, f"it takes {what}, but the layer before it gives {x.dtype.name}")
        ranks = (rank,) if isinstance(rank, int) else rank
        if rank is not None and x.rank not in ranks:
            self.unsupported(path, m, f"it takes rank-{' or '.join(map(str, ranks))} input, but gets rank {x.rank}")

    # -- float layers --

    def matmul_add(self, x, w_t, bias, path):
        """x [.., K] @ w_t [K, N] (+ bias): Gemm on rank 2 (what importers and runtimes
        treat as a fully connected layer), MatMul + Add otherwise."""
        g = self.g
        if x.rank == 2:
            ins = [x.name, g.const(np.ascontiguousarray(w_t.T, np.float32), path + ".weight")]
            if bias is not None:
                ins.append(g.const(np.asarray(bias, np.float32), path + ".bias"))
            return g.op("Gemm", ins, path, transB=1)
        y = g.op("MatMul", [x.name, g.const(np.ascontiguousarray(w_t, np.float32), path + ".weightT")], path)
        return y if bias is None else g.op("Add", [y, g.const(np.asarray(bias, np.float32), path + ".bias")],
                                           path + "/bias")

    def linear(self, x, m, path, weight=None, bias=None):
        self.expect(x, path, m, np.float32)
        w = m.weight.data if weight is None else weight
        return _Stream(self.matmul_add(x, np.asarray(w, np.float32).T, bias, path), x.rank, np.float32)

    def conv(self, x, path, w, bias, m, weight_name=None):
        self.expect(x, path, m, np.float32, 4)
        g = self.g
        ph, pw = m.padding
        ins = [x.name, weight_name or g.const(np.asarray(w, np.float32), path + ".weight")]
        if bias is not None:
            ins.append(g.const(np.asarray(bias, np.float32), path + ".bias"))
        kh, kw = m.kernel_size
        y = g.op("Conv", ins, path, kernel_shape=[kh, kw], strides=list(m.stride), pads=[ph, pw, ph, pw],
                 dilations=list(m.dilation), group=int(m.groups))
        return _Stream(y, 4, np.float32)

    def batchnorm(self, x, m, path):
        self.expect(x, path, m, np.float32, (2, 3) if m._ndims != (4,) else 4)
        g = self.g
        C = m.num_features
        gamma = m.weight.data if m.affine else np.ones(C, np.float32)
        beta = m.bias.data if m.affine else np.zeros(C, np.float32)
        ins = [x.name] + [g.const(np.asarray(a, np.float32), f"{path}.{n}") for n, a in
                          (("weight", gamma), ("bias", beta), ("running_mean", m.running_mean),
                           ("running_var", m.running_var))]
        return _Stream(g.op("BatchNormalization", ins, path, epsilon=float(m.eps)), x.rank, np.float32)

    def pool(self, x, m, path, kind):
        self.expect(x, path, m, None, 4)
        ph, pw = m.padding
        attrs = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride), pads=[ph, pw, ph, pw])
        if kind == "AveragePool":
            self.expect(x, path, m, np.float32)
            attrs["count_include_pad"] = 1  # refcompress averages over the padded window
        return _Stream(self.g.op(kind, [x.name], path, **attrs), 4, x.dtype)

    def weight_only(self, x, m, path):
        """DequantizeLinear of the stored codes (int8 / uint8 values of any bit width) into the
        float weight, then the float op: the dequantization is what the layer computes."""
        from ..quant.packing import unpack_bits
        from ..quant.rotation import hadamard_rotate

        self.expect(x, path, m, np.float32)
        g = self.g
        rows = m.weight_shape[0]
        codes = unpack_bits(m.weight_packed, m.bits, int(np.prod(m.weight_shape)),
                            signed=m.symmetric).reshape(rows, -1)
        zp_dtype = np.int8 if m.symmetric else np.uint8
        if m.group_size is None:
            scale = m.weight_scale.astype(np.float32)
            attrs = dict(axis=0)
        else:
            if self.opset < BLOCKED_OPSET:
                self.unsupported(path, m, f"group-wise scales (group_size {m.group_size}) are written as "
                                 f"blocked DequantizeLinear, which needs opset >= {BLOCKED_OPSET} "
                                 f"(got opset {self.opset})")
            scale = m.weight_scale.reshape(rows, -1).astype(np.float32)
            attrs = dict(axis=1, block_size=int(m.group_size))
        zp = (np.zeros(scale.shape, zp_dtype) if m.symmetric
              else m.weight_zero_point.reshape(scale.shape).astype(np.uint8))
        if m.bits <= 4 and self.opset >= BLOCKED_OPSET:
            # ONNX's own 4-bit types (opset 21): stored two codes a byte, as the layer holds them
            try:
                import ml_dtypes  # onnx's own dependency for these types (onnx >= 1.17)
            except ImportError:
                ml_dtypes = None
            if ml_dtypes is not None:
                t4 = ml_dtypes.int4 if m.symmetric else ml_dtypes.uint4
                codes, zp = codes.astype(t4), zp.astype(t4)
        w = g.op("DequantizeLinear", [g.const(codes, path + ".weight_codes"), g.const(scale, path + ".weight_scale"),
                                      g.const(zp, path + ".weight_zero_point")], path + "/weight", **attrs)
        inp = x.name
        if getattr(m, "input_signs", None) is not None:
            q = hadamard_rotate(np.eye(m.n_inputs, dtype=np.float32), m.input_signs)
            inp = g.op("MatMul", [inp, g.const(q, path + ".rotation")], path + "/rotate")
        if m.input_scale is not None:
            # per input channel: the last axis of a Linear's input, axis 1 of NCHW
            s = m.input_scale.astype(np.float32).reshape((-1,) if len(m.weight_shape) == 2 else (-1, 1, 1))
            inp = g.op("Mul", [inp, g.const(s, path + ".input_scale")], path + "/input_scale")
        if len(m.weight_shape) == 2:
            bias = None if m.bias is None else g.const(np.asarray(m.bias, np.float32), path + ".bias")
            if x.rank == 2:
                y = g.op("Gemm", [inp, w] + ([bias] if bias else []), path, transB=1)
            else:
                # Rows through Gemm, not DequantizeLinear -> Transpose -> MatMul: onnxruntime's
                # default optimizations (1.32) fuse that chain wrongly for rank >= 3 input.
                rows_in = g.op("Reshape", [inp, g.const(np.array([-1, m.weight_shape[1]], np.int64),
                                                        path + ".rows_shape")], path + "/rows")
                y2 = g.op("Gemm", [rows_in, w] + ([bias] if bias else []), path, transB=1)
                lead = g.op("Slice", [g.op("Shape", [x.name], path + "/shape"),
                                      g.const(np.array([0], np.int64), path + ".lead_start"),
                                      g.const(np.array([-1], np.int64), path + ".lead_end")], path + "/lead")
                out_shape = g.op("Concat", [lead, g.const(np.array([rows], np.int64), path + ".out_features")],
                                 path + "/out_shape", axis=0)
                y = g.op("Reshape", [y2, out_shape], path + "/unrows")
            return _Stream(y, x.rank, np.float32)
        self.expect(x, path, m, None, 4)
        w4 = g.op("Reshape", [w, g.const(np.array(m.weight_shape, np.int64), path + ".weight_shape")],
                  path + "/weight_shape")
        return self.conv(_Stream(inp, 4, np.float32), path, None, None if m.bias is None else m.bias, m,
                         weight_name=w4)

    # -- integer layers --

    def quantized(self, x, m, path):
        """QuantizedLinear / QuantizedConv2d: uint8 codes in, uint8 codes out, exact."""
        from ..quant.modules import QuantizedConv2d

        conv = isinstance(m, QuantizedConv2d)
        self.expect(x, path, m, np.uint8, 4 if conv else 2)
        g = self.g
        spec = m._output()  # the very Requantize the layer runs (float32 M, z, qmin, qmax)
        M = np.asarray(spec.scale, np.float32).reshape(-1)
        z_in = np.uint8(m.input_zero_point[0])
        z_out = int(spec.zero_point)
        w, wz = self.int_weight(m.weight_q)
        O = w.shape[0]
        bias = None if m.bias_q is None else np.asarray(m.bias_q, np.int32)
        per_channel = M.size > 1 and not np.all(M == M[0])
        M_c = M if per_channel else M[:1].reshape(())
        one = g.const(np.float32(1.0), path + ".unit_scale") if m.rule == "float" else None
        if conv:
            ph, pw = m.padding
            cattrs = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride), pads=[ph, pw, ph, pw],
                          dilations=list(m.dilation), group=int(m.groups))
        if m.rule == "float" and (conv or bias is None):
            ins = [x.name, one, g.const(z_in, path + ".input_zero_point"), g.const(w if conv else w.T.copy(),
                                                                                    path + ".weight_q"),
                   g.const(M_c, path + ".multiplier"),
                   g.const(np.full(M_c.shape, wz, w.dtype), path + ".weight_zero_point"), one,
                   g.const(np.uint8(z_out), path + ".output_zero_point")]
            if conv:
                if bias is not None:
                    ins.append(g.const(bias, path + ".bias_q"))
                y = g.op("QLinearConv", ins, path, **cattrs)
            else:
                y = g.op("QLinearMatMul", ins, path)
        else:
            zs = [g.const(z_in, path + ".input_zero_point"), g.const(wz, path + ".weight_zero_point")]
            if conv:
                acc = g.op("ConvInteger", [x.name, g.const(w, path + ".weight_q"), *zs], path, **cattrs)
                cshape = (O, 1, 1)
            else:
                acc = g.op("MatMulInteger", [x.name, g.const(w.T.copy(), path + ".weight_q"), *zs], path)
                cshape = (O,)
            if bias is not None:
                acc = g.op("Add", [acc, g.const(bias.reshape(cshape), path + ".bias_q")], path + "/bias")
            if m.rule == "float":
                y = self.float_requant(acc, M_c.reshape(cshape) if per_channel else M_c, z_out, one, path)
            else:
                y = self.fixedpoint(acc, M, z_out, cshape, path)
        qmin = 0 if spec.qmin is None else int(spec.qmin)
        qmax = 255 if spec.qmax is None else int(spec.qmax)
        y = self.clip_codes(y, qmin, qmax, path)
        return _Stream(y, x.rank, np.uint8)

    def lowrank_int8(self, x, m, path):
        """QuantizedLowRankLinear: float x [B, n] -> float y [B, m] with the layer's bits.
        QuantizeLinear(s_x, z_x) -> MatMulInteger by v_q^T -> h requantized by the float rule
        as for QuantizedLinear (Cast, Mul by M_j = s_x s_v[j] / s_h, Clip to [-z_h, 255 - z_h],
        QuantizeLinear(1, z_h)) -> MatMulInteger by u_q^T -> Add the int32 bias -> Cast -> Mul
        by s_h s_u[i] (the Dequantize epilogue's one rounding)."""
        self.expect(x, path, m, np.float32, 2)
        g = self.g
        q = m.quantized()
        one = g.const(np.float32(1.0), path + ".unit_scale")
        zx, zh = np.uint8(q.x_zero_point), np.uint8(q.h_zero_point)
        xq = g.op("QuantizeLinear", [x.name, g.const(np.float32(q.x_scale), path + ".x_scale"),
                                     g.const(zx, path + ".x_zero_point")], path + "/quantize_x")
        wv, wvz = self.int_weight(q.v_q)
        acc = g.op("MatMulInteger", [xq, g.const(wv.T.copy(), path + ".v_q"), g.const(zx, path + ".x_zero_point_mm"),
                                     g.const(wvz, path + ".v_zero_point")], path + "/first")
        h = self.float_requant(acc, np.asarray(q.requant.scale, np.float32).reshape(-1), int(zh), one, path + "/h")
        wu, wuz = self.int_weight(q.u_q)
        acc = g.op("MatMulInteger", [h, g.const(wu.T.copy(), path + ".u_q"), g.const(zh, path + ".h_zero_point_mm"),
                                     g.const(wuz, path + ".u_zero_point")], path + "/second")
        if q.bias_q is not None:
            acc = g.op("Add", [acc, g.const(np.asarray(q.bias_q, np.int32), path + ".bias_q")], path + "/bias")
        f = g.op("Cast", [acc], path + "/second_to_float", to=_onnx_elem(np.float32))
        y = g.op("Mul", [f, g.const(np.asarray(q.dequant.scale, np.float32).reshape(-1), path + ".out_scale")],
                 path + "/dequantize")
        return _Stream(y, 2, np.float32)

    def float_requant(self, acc, M, z_out, one, path):
        """int32 accumulators -> uint8 codes by the float rule: Cast, Mul by the float32
        multiplier M (a scalar, or per output channel shaped to broadcast), Clip, then
        QuantizeLinear(1, z_out); ``path`` names the nodes and constants."""
        g = self.g
        f = g.op("Cast", [acc], path + "/to_float", to=_onnx_elem(np.float32))
        f = g.op("Mul", [f, g.const(M, path + ".multiplier")], path + "/requant")
        # clamped to [-z, 255 - z] before rounding, as round_saturate does: the same
        # codes, and no runtime has to convert a float beyond int32 (onnx's reference
        # evaluator does not saturate those)
        f = g.op("Clip", [f, g.const(np.float32(-z_out), path + ".low"),
                          g.const(np.float32(255 - z_out), path + ".high")], path + "/saturate")
        return g.op("QuantizeLinear", [f, one, g.const(np.uint8(z_out), path + ".output_zero_point")],
                    path + "/round")

    def int_weight(self, weight_q):
        """The int8 weight codes as stored in the graph, and their zero point."""
        w = np.ascontiguousarray(weight_q, np.int8)
        if self.weight_dtype == "uint8":
            # w + 128 with zero point 128: the same products (w' - 128 = w), and runtimes take
            # their u8 x u8 kernels, which cannot saturate (see docs/io.md)
            return (w.astype(np.int16) + 128).astype(np.uint8), np.uint8(128)
        return w, np.int8(0)

    def clip_codes(self, y, qmin, qmax, path):
        """The layer's saturation range inside [0, 255] (fused ReLU: qmin = z; fewer than 8
        activation bits: qmax = 2^bits - 1), when it is narrower than uint8's own."""
        if qmin <= 0 and qmax >= 255:
            return y
        g = self.g
        return g.op("Clip", [y, g.const(np.uint8(qmin), path + ".qmin"), g.const(np.uint8(qmax), path + ".qmax")],
                    path + "/clip")

    def fixedpoint(self, acc, M, z_out, cshape, path):
        """gemmlowp's requantization of int32 ``acc`` in int64 ONNX ops, step for step as
        refcompress.kernels.qgemm.requantize_reference: saturate(acc * 2^left),
        SRDHM(., M0) = trunc((ab + nudge) / 2^31), RDBPOT(., right), + z, clamp [0, 255].
        Divisions only ever divide exact multiples (v - Mod(v, 2^e)), so no runtime rounding
        convention for integer Div is relied on."""
        from ..kernels import quantize_multiplier

        g = self.g
        m0, shift = quantize_multiplier(M.astype(np.float64))
        m0 = m0.astype(np.int64).reshape(cshape if M.size > 1 else ())
        shift = shift.astype(np.int64).reshape(m0.shape)
        left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
        i64 = lambda v, n: g.const(np.asarray(v, np.int64), f"{path}.{n}")  # noqa: E731
        p = path + "/fixedpoint"
        x = g.op("Cast", [acc], p, to=_onnx_elem_int64())
        if np.any(left > 0):
            x = g.op("Mul", [x, i64(np.left_shift(1, left), "left_shift")], p)
            x = g.op("Clip", [x, i64(INT32_MIN, "int32_min"), i64(INT32_MAX, "int32_max")], p)
        ab = g.op("Mul", [x, i64(m0, "m0")], p)
        zero = i64(0, "zero")
        nudge = g.op("Where", [g.op("GreaterOrEqual", [ab, zero], p), i64(1 << 30, "nudge_pos"),
                               i64(1 - (1 << 30), "nudge_neg")], p)
        v = g.op("Add", [ab, nudge], p)
        two31 = i64(1 << 31, "two31")
        r = g.op("Mod", [v, two31], p)  # in [0, 2^31): the divisor's sign
        fl = g.op("Div", [g.op("Sub", [v, r], p), two31], p)  # floor(v / 2^31), exact division
        # C's truncating division: one more than the floor for negatives with a remainder
        up = g.op("And", [g.op("Less", [v, zero], p), g.op("Greater", [r, zero], p)], p)
        q = g.op("Add", [fl, g.op("Cast", [up], p, to=_onnx_elem_int64())], p)
        if np.any(right > 0):
            pot = i64(np.left_shift(1, right), "pot")
            rem = g.op("Mod", [q, pot], p)  # q & (2^e - 1) in two's complement
            fl2 = g.op("Div", [g.op("Sub", [q, rem], p), pot], p)  # q >> e (arithmetic)
            thr = g.op("Add", [i64(np.right_shift(np.left_shift(1, right) - 1, 1), "half_mask"),
                               g.op("Cast", [g.op("Less", [q, zero], p)], p, to=_onnx_elem_int64())], p)
            q = g.op("Add", [fl2, g.op("Cast", [g.op("Greater", [rem, thr], p)], p, to=_onnx_elem_int64())], p)
        y = g.op("Add", [q, i64(z_out, "output_zero_point")], p)
        y = g.op("Clip", [y, i64(0, "u8_min"), i64(255, "u8_max")], p)
        return g.op("Cast", [y], p, to=_onnx_elem(np.uint8))

    # -- float in, float out through exact integer products --

    def reduce(self, kind, x, path, axes=None, keepdims=0):
        """ReduceMax / ReduceMin over ``axes`` (all axes when None); the axes are an
        attribute before opset 18 and an input from 18 on."""
        g = self.g
        if axes is None:
            return g.op(kind, [x], path, keepdims=keepdims)
        if self.opset >= 18:
            return g.op(kind, [x, g.const(np.array(axes, np.int64), path + ".axes")], path, keepdims=keepdims)
        return g.op(kind, [x], path, axes=list(axes), keepdims=keepdims)

    def round_codes(self, v, zero_point, lo, hi, path):
        """uint8 codes of v = x / s (float32): Clip to [lo, hi] = [qmin - z, qmax - z], then
        QuantizeLinear with scale 1 and zero point z, i.e. ONNX's round half to even plus z.
        That is kernels.quantize's round_saturate, clamped first (rounding commutes with a
        clamp to integers) so that no runtime converts a value beyond int32."""
        g = self.g
        v = g.op("Clip", [v, lo, hi], path + "/saturate")
        return g.op("QuantizeLinear", [v, g.const(np.float32(1.0), path + ".unit_scale"), zero_point],
                    path + "/quantize")

    def dynamic_qparams(self, xs, path):
        """quant.choose_qparams(min(xs), max(xs), ACTIVATION_SPEC) in graph ops, step for step
        in its precisions: lo = min(min xs, 0) and hi = max(max xs, 0) as float64,
        s = (hi - lo) / (qmax - qmin) in float64, 1 where that is not > 0, rounded once to
        float32 and raised to float32's smallest normal; z = clip(qmin - rint(lo / s), qmin,
        qmax) with s back in float64.  ONNX's DynamicQuantizeLinear rounds in float32 twice
        and gives s = 0 for an all-zero input, so it is not used.
        Returns the names of s (float32 scalar), s (float64) and z (float64, integral)."""
        from ..quant.w8a8 import ACTIVATION_SPEC

        g = self.g
        p = path + "/qparams"
        f32, f64 = _onnx_elem(np.float32), _onnx_elem(np.float64)
        c64 = lambda v, n: g.const(np.float64(v), f"{path}.{n}")  # noqa: E731
        qmin, qmax = ACTIVATION_SPEC.qmin, ACTIVATION_SPEC.qmax
        zero = c64(0.0, "zero")
        lo = g.op("Min", [g.op("Cast", [self.reduce("ReduceMin", xs, p)], p, to=f64), zero], p)
        hi = g.op("Max", [g.op("Cast", [self.reduce("ReduceMax", xs, p)], p, to=f64), zero], p)
        s = g.op("Div", [g.op("Sub", [hi, lo], p), c64(qmax - qmin, "levels")], p)
        s = g.op("Where", [g.op("Greater", [s, zero], p), s, c64(1.0, "empty_range_scale")], p)
        s32 = g.op("Max", [g.op("Cast", [s], p, to=f32), g.const(np.finfo(np.float32).tiny, path + ".min_scale")], p)
        s64 = g.op("Cast", [s32], p, to=f64)
        r = g.op("Round", [g.op("Div", [lo, s64], p)], p)
        z = g.op("Clip", [g.op("Sub", [c64(qmin, "qmin"), r], p), c64(qmin, "zp_min"), c64(qmax, "zp_max")], p)
        return s32, s64, z

    def check_w8a8_params(self, m, path, dynamic_layer):
        """Refuse parameters that make no valid layer (scales and SmoothQuant factors not
        finite > 0) or that no graph can hold (a zero point outside [0, 255], no uint8
        constant), naming the layer and the parameter: the graph is built before any probe
        run (none for a BertModel), so nothing else would catch them, and a chain's probe
        would blame input_shape."""
        def positive(name, v):
            v = np.asarray(v)
            bad = ~(np.isfinite(v) & (v > 0))
            if np.any(bad):
                self.unsupported(path, m, f"{name}: expected finite values > 0, got {float(v[bad].ravel()[0])!r}")

        positive("weight_scale", m.weight_scale)
        if dynamic_layer:
            return
        positive("smooth", m.smooth)
        if m.activation == "static":
            positive("input_scale", m.input_scale)
            z = int(m.input_zero_point)
            if not 0 <= z <= 255:
                self.unsupported(path, m, f"input_zero_point: expected an int in [0, 255] (a uint8 code), got {z}")

    def w8a8(self, x, m, path):
        """W8A8Linear (static, dynamic per-tensor and per-token activations, SmoothQuant
        factors) and DynamicQuantizedLinear: the activation codes and the int32 products of
        refcompress exactly, and the float epilogue float32(acc) * s [* s_i] + b as the same
        float32 operations in the same order (the C epilogue multiplies and adds separately,
        no FMA), so the output is bit for bit the layer's.  docs/io.md has the argument."""
        from ..kernels.quantize import ROWS_QMAX
        from ..quant.modules import DynamicQuantizedLinear
        from ..quant.w8a8 import ACTIVATION_SPEC

        dynamic_layer = type(m) is DynamicQuantizedLinear
        self.expect(x, path, m, np.float32, 2 if dynamic_layer else None)
        self.check_w8a8_params(m, path, dynamic_layer)
        g = self.g
        f32 = _onnx_elem(np.float32)
        mode = "tensor" if dynamic_layer else m.activation
        smooth = None if dynamic_layer or np.all(m.smooth == 1) else m.smooth  # x / 1 and s * 1 are exact
        qmin, qmax = ACTIVATION_SPEC.qmin, ACTIVATION_SPEC.qmax
        row_scale = None
        if mode == "token":
            # kernels.quantize_rows: xs = x * float32(1 / m), s_i = max_j |xs_ij| / 127 (1 where
            # 0), q = clamp(rint(xs / s_i), -127, 127); stored as q + 128 with zero point 128,
            # so the product runs on the runtime's u8 kernels (the same products)
            try:
                inv = m._token_inv_smooth()
            except ArgumentError as e:
                self.unsupported(path, m, str(e))
            xs = x.name if inv is None else g.op("Mul", [x.name, g.const(inv, path + ".inv_smooth")], path + "/smooth")
            a = self.reduce("ReduceMax", g.op("Abs", [xs], path + "/abs"), path + "/row_max", axes=[-1], keepdims=1)
            s = g.op("Div", [a, g.const(np.float32(ROWS_QMAX), path + ".rows_qmax")], path + "/row_scale")
            one = g.const(np.float32(1.0), path + ".empty_row_scale")
            row_scale = g.op("Where", [g.op("Equal", [s, g.const(np.float32(0.0), path + ".zero")], path + "/row_scale"),
                                       one, s], path + "/row_scale")
            zq = g.const(np.uint8(128), path + ".input_zero_point")
            q = self.round_codes(g.op("Div", [xs, row_scale], path + "/divide"), zq,
                                 g.const(np.float32(-ROWS_QMAX), path + ".qmin"),
                                 g.const(np.float32(ROWS_QMAX), path + ".qmax"), path)
            out_scale = g.const(m.weight_scale.astype(np.float32), path + ".weight_scale")
        elif mode == "static":
            chan_scale, _, s_out = m._static_params()  # the layer's own float32 s_a m_j and s_a s_w
            z = int(m.input_zero_point)
            zq = g.const(np.uint8(z), path + ".input_zero_point")
            chan = chan_scale[:1].reshape(()) if np.all(chan_scale == chan_scale[0]) else chan_scale
            q = self.round_codes(g.op("Div", [x.name, g.const(chan, path + ".input_scale")], path + "/divide"), zq,
                                 g.const(np.float32(qmin - z), path + ".qmin"),
                                 g.const(np.float32(qmax - z), path + ".qmax"), path)
            out_scale = g.const(s_out, path + ".output_scale")
        else:
            # per tensor, each call: the qparams of min / max of x / m, then x / (s_a m_j)
            xs = x.name if smooth is None else g.op("Div", [x.name, g.const(smooth, path + ".smooth")],
                                                    path + "/smooth")
            s32, s64, z = self.dynamic_qparams(xs, path)
            zq = g.op("Cast", [z], path + "/zero_point", to=_onnx_elem(np.uint8))
            zf = g.op("Cast", [z], path + "/zero_point", to=f32)
            chan = s32 if smooth is None else g.op("Mul", [s32, g.const(smooth, path + ".smooth_scale")],
                                                   path + "/input_scale")
            q = self.round_codes(g.op("Div", [x.name, chan], path + "/divide"), zq,
                                 g.op("Sub", [g.const(np.float32(qmin), path + ".qmin"), zf], path + "/low"),
                                 g.op("Sub", [g.const(np.float32(qmax), path + ".qmax"), zf], path + "/high"), path)
            # float32(float64(s_a) * float64(s_w)), as the layer forms it
            out_scale = g.op("Cast", [g.op("Mul", [s64, g.const(m.weight_scale.astype(np.float64),
                                                                  path + ".weight_scale")], path + "/output_scale")],
                             path + "/output_scale", to=f32)
        w, wz = self.int_weight(m.weight_q)
        acc = g.op("MatMulInteger", [q, g.const(w.T.copy(), path + ".weight_q"), zq,
                                     g.const(wz, path + ".weight_zero_point")], path)
        y = g.op("Cast", [acc], path + "/to_float", to=f32)
        y = g.op("Mul", [y, out_scale], path + "/dequantize")
        if row_scale is not None:
            y = g.op("Mul", [y, row_scale], path + "/dequantize_rows")
        if m.bias is not None:
            y = g.op("Add", [y, g.const(np.asarray(m.bias, np.float32), path + ".bias")], path + "/bias")
        return _Stream(y, x.rank, np.float32)

    # -- the walk --

    def linear_like(self, x, m, path):
        """A layer that stands for a Linear (float, sparse, low rank, weight-only, W8A8) on
        float input of any rank: the BERT exporter's entry to the same per-layer code.
        Anything else at such a place is refused, naming the layer."""
        if type(m) not in _linear_like_types():
            self.unsupported(path, m, "expected a Linear-like layer here ("
                             + ", ".join(t.__name__ for t in _linear_like_types()) + ")")
        return self.layer(x, m, path)

    def layer(self, x, m, path):
        from .. import nn
        from ..lowrank.layers import CPConv2d, LowRankLinear, QuantizedLowRankLinear, Tucker2Conv2d
        from ..pipeline.deep_compression import DeepCompressedConv2d, DeepCompressedLinear
        from ..prune.sparse_layers import NMLinear, SparseLinear
        from ..quant import modules as qm
        from ..quant.w8a8 import W8A8Linear

        g = self.g
        t = type(m)
        sub = lambda name: f"{path}.{name}" if path else name  # noqa: E731
        if t in (nn.Sequential, Tucker2Conv2d, CPConv2d):
            for name, child in m.named_children():
                x = self.layer(x, child, sub(name))
            return x
        if t is nn.Linear:
            return self.linear(x, m, path, bias=None if m.bias is None else m.bias.data)
        if t in (SparseLinear, NMLinear, DeepCompressedLinear):
            b = m.bias if t is DeepCompressedLinear else (None if m.bias is None else m.bias.data)
            return self.linear(x, m, path, weight=m.dense_weight(), bias=None if b is None else np.asarray(b, np.float32))
        if t is LowRankLinear:
            self.expect(x, path, m, np.float32)
            h = _Stream(self.matmul_add(x, m.first.weight.data.T, None, sub("first")), x.rank, np.float32)
            b2 = None if m.second.bias is None else m.second.bias.data
            return _Stream(self.matmul_add(h, m.second.weight.data.T, b2, sub("second")), x.rank, np.float32)
        if t in (nn.Conv2d, DeepCompressedConv2d):
            return self.conv(x, path, m.weight.data, None if m.bias is None else m.bias.data, m)
        if t in (nn.ReLU, nn.Tanh):
            self.expect(x, path, m, np.float32)
            return _Stream(g.op("Relu" if t is nn.ReLU else "Tanh", [x.name], path), x.rank, np.float32)
        if t is nn.Softmax:
            self.expect(x, path, m, np.float32)
            return _Stream(g.op("Softmax", [x.name], path, axis=int(m.dim)), x.rank, np.float32)
        if t is nn.Dropout:
            return x  # identity in eval mode, which is what is exported
        if t is nn.Flatten:
            return _Stream(g.op("Flatten", [x.name], path, axis=1), 2, x.dtype)
        if t in (nn.BatchNorm1d, nn.BatchNorm2d):
            return self.batchnorm(x, m, path)
        if t in (nn.MaxPool2d, qm.QuantizedMaxPool2d):
            if t is nn.MaxPool2d:
                self.expect(x, path, m, np.float32)
            else:
                self.expect(x, path, m, np.uint8)
            return self.pool(x, m, path, "MaxPool")
        if t is nn.AvgPool2d:
            return self.pool(x, m, path, "AveragePool")
        if t is nn.GlobalAvgPool2d:
            self.expect(x, path, m, np.float32, 4)
            y = g.op("GlobalAveragePool", [x.name], path)
            return _Stream(g.op("Flatten", [y], path + "/flatten", axis=1), 2, np.float32)
        if t is qm.QuantizeStub:
            self.expect(x, path, m, np.float32)
            y = g.op("QuantizeLinear", [x.name, g.const(np.float32(m.scale[0]), sub("scale")),
                                        g.const(np.uint8(m.zero_point[0]), sub("zero_point"))], path)
            return _Stream(self.clip_codes(y, 0, 2**m.bits - 1, path), x.rank, np.uint8)
        if t is qm.DequantizeStub:
            self.expect(x, path, m, np.uint8)
            y = g.op("DequantizeLinear", [x.name, g.const(np.float32(m.scale[0]), sub("scale")),
                                          g.const(np.uint8(m.zero_point[0]), sub("zero_point"))], path)
            return _Stream(y, x.rank, np.float32)
        if t in (qm.QuantizedLinear, qm.QuantizedConv2d):
            return self.quantized(x, m, path)
        if t is QuantizedLowRankLinear:
            return self.lowrank_int8(x, m, path)
        if t is qm.QuantizedReLU:
            self.expect(x, path, m, np.uint8)
            return _Stream(self.clip_codes(x.name, m.zero_point, 255, path), x.rank, np.uint8)
        if t in (qm.WeightOnlyLinear, qm.WeightOnlyConv2d):
            return self.weight_only(x, m, path)
        if t in (W8A8Linear, qm.DynamicQuantizedLinear):
            return self.w8a8(x, m, path)
        self.unsupported(path, m, "no ONNX mapping for this layer type (docs/io.md lists the supported ones)")


def _linear_like_types():
    """The layer types that compute x W^T + b (in some stored form) and take any rank."""
    from .. import nn
    from ..lowrank.layers import LowRankLinear
    from ..pipeline.deep_compression import DeepCompressedLinear
    from ..prune.sparse_layers import NMLinear, SparseLinear
    from ..quant import modules as qm
    from ..quant.w8a8 import W8A8Linear

    return (nn.Linear, SparseLinear, NMLinear, DeepCompressedLinear, LowRankLinear, qm.WeightOnlyLinear,
            W8A8Linear, qm.DynamicQuantizedLinear)


def required_opset(model) -> int:
    """The lowest opset every layer of ``model`` can be written in: BLOCKED_OPSET when a
    weight-only layer has group-wise scales, else MIN_OPSET."""
    from ..quant import modules as qm

    grouped = any(type(m) in (qm.WeightOnlyLinear, qm.WeightOnlyConv2d) and m.group_size is not None
                  for _, m in model.named_modules())
    return BLOCKED_OPSET if grouped else MIN_OPSET


def _onnx_elem_int64():
    from onnx import TensorProto

    return TensorProto.INT64


def check_input_shape(input_shape, name: str = "input_shape"):
    """``input_shape`` as a tuple (None for a dynamic batch) once export can take it."""
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) not in (2, 3, 4):
        raise ArgumentError(f"{name}: expected (None, F), (None, C, L) or (None, C, H, W), got {input_shape!r}")
    dims = []
    for i, d in enumerate(input_shape):
        if d is None and i == 0:
            dims.append(None)
            continue
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ArgumentError(f"{name}: expected positive ints (None for the batch dimension only), "
                                f"got {input_shape!r}")
        dims.append(int(d))
    return tuple(dims)


def check_opset(opset, name: str = "opset"):
    """``opset`` as an int once export can write it (needs the onnx package)."""
    onnx = _onnx()
    top = onnx.defs.onnx_opset_version()
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, (int, np.integer)) \
            or not MIN_OPSET <= opset <= top:
        raise ArgumentError(f"{name}: expected an int in [{MIN_OPSET}, {top}] (this onnx package's newest), "
                            f"got {opset!r}")
    return int(opset)


def _eval_forward(model, x):
    """model(x) in eval mode (what is exported), every module's mode restored after."""
    modes = [(m, m.training) for _, m in model.named_modules()]
    model.eval()
    try:
        return model(x)
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)


WEIGHT_DTYPES = ("int8", "uint8")


def check_weight_dtype(weight_dtype, name: str = "weight_dtype") -> str:
    if weight_dtype not in WEIGHT_DTYPES:
        raise ArgumentError(f"{name}: expected one of {WEIGHT_DTYPES}, got {weight_dtype!r}")
    return weight_dtype


def to_onnx_model(model, input_shape=None, opset=None, weight_dtype: str = "int8"):
    """The checked ``onnx.ModelProto`` of ``model`` (see :func:`export_onnx`)."""
    from ..nn import BertModel, Module

    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a refcompress.nn.Module, got {type(model).__name__}")
    if isinstance(model, BertModel):
        from ..bert import onnx_export

        if input_shape is not None:
            raise ArgumentError(f"input_shape: a BertModel reads token ids (input_ids, attention_mask, "
                                f"token_type_ids: int64 [batch, seq]); expected None, got {input_shape!r}")
        return onnx_export.to_onnx_model(model, opset, weight_dtype)
    dims = check_input_shape(input_shape)
    opset = max(DEFAULT_OPSET, required_opset(model)) if opset is None else opset
    opset = check_opset(opset)
    check_weight_dtype(weight_dtype)
    _onnx()
    from onnx import helper

    for pname, p in model.named_parameters():
        if np.dtype(p.data.dtype) != np.float32:
            # else the probe run below fails on its float32 input, blaming input_shape
            layer = pname.rpartition(".")[0] or "<root>"
            raise DTypeError(f"model: parameter {pname!r} of layer {layer!r} is {np.dtype(p.data.dtype).name}; "
                             "ONNX export writes float32 graphs (convert the model's parameters to float32)")
    ex = _Exporter(opset, weight_dtype)
    y = ex.layer(_Stream("input", len(dims), np.float32), model, "")
    ex.g.nodes.append(helper.make_node("Identity", [y.name], ["output"], name="output"))
    # The output's static dims come from running the model once (batch 1, eval mode).
    try:
        probe = _eval_forward(model, np.zeros((1,) + dims[1:], np.float32))
    except (ArgumentError, DTypeError, ShapeError) as e:
        raise ShapeError(f"input_shape: the model does not run on an input of shape {(1,) + dims[1:]} "
                         f"({e})") from None
    if np.dtype(probe.dtype) != y.dtype or probe.ndim != y.rank:
        raise ArgumentError(f"model: the exported graph gives rank-{y.rank} {y.dtype.name}, the model "
                            f"rank-{probe.ndim} {probe.dtype.name}; a layer is not a plain chain")
    batch = "batch" if dims[0] is None else dims[0]
    inp = helper.make_tensor_value_info("input", _onnx_elem(np.float32), [batch, *dims[1:]])
    out = helper.make_tensor_value_info("output", _onnx_elem(y.dtype), [batch, *probe.shape[1:]])
    return ex.g.model([inp], [out], opset, "refcompress")


def export_onnx(model, path, input_shape=None, opset=None, weight_dtype: str = "int8") -> str:
    """Write ``model`` (a chain of refcompress layers, or a BertModel; float or compressed)
    as ONNX.

    input_shape : the float32 input's shape, batch first and None for a dynamic batch:
                  (None, F) or (None, C, H, W).  None for a BertModel, whose graph reads
                  int64 token ids (refcompress.bert.onnx_export writes it).
    opset       : ONNX opset, >= 13 (>= 17 for a BertModel, >= 21 for group-wise
                  weight-only layers); None (the default): 17, or 21 when a group-wise
                  weight-only layer needs it.
    weight_dtype: how integer layers' int8 weights are stored: "int8" (the default, the
                  usual u8 x s8 form: exact in onnxruntime on x86 CPUs with VNNI, but
                  without VNNI its u8 x s8 kernels saturate pairs of products to int16
                  and outputs can differ), or "uint8" (w + 128, zero point 128: the same
                  products on onnxruntime's u8 x u8 kernels, exact on every CPU, about
                  1.3x slower on a VNNI CPU; docs/io.md).
    The graph's input is "input" (float32), its output "output" (float32, or uint8 codes
    when the model ends on an integer layer); a BertModel's graph reads "input_ids",
    "attention_mask", "token_type_ids" and gives "last_hidden_state".  The model is checked with ``onnx.checker``
    and written atomically.  A layer with no ONNX form is an ArgumentError naming its path
    and type.  Returns ``path``.
    """
    path = check_output_path(path)  # before the graph is built
    return write_model(to_onnx_model(model, input_shape, opset, weight_dtype), path)


# ---- import -------------------------------------------------------------------------------

#: The ops :func:`import_onnx` reads (float graphs, one chain).
IMPORT_OPS = ("Gemm", "MatMul", "Add", "Conv", "Relu", "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool",
              "Flatten", "Reshape", "BatchNormalization", "Identity", "Dropout", "Softmax")


def _read_model(path):
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    path = check_path(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        m = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise CorruptFileError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not m.HasField("graph") or not m.graph.node:
        raise CorruptFileError(f"{path}: not an ONNX model (no graph with nodes)")
    try:
        # external data files are named relative to the model's directory, not the cwd
        onnx.load_external_data_for_model(m, os.path.dirname(os.path.abspath(path)))
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise CorruptFileError(f"{path}: cannot read the model's external data ({type(e).__name__}: {e})") from None
    try:
        # onnx's shape inference fills in an output declared without a shape, which the
        # checker would refuse and runtimes accept; the import reads the inferred shapes too
        m = onnx.shape_inference.infer_shapes(m)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError):
        pass  # the checker below names what is wrong
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptFileError(f"{path}: the ONNX model does not pass onnx.checker ({first})") from None
    except (UnicodeDecodeError, ValueError, RuntimeError) as e:  # e.g. a damaged name that is not UTF-8
        raise CorruptFileError(f"{path}: the ONNX model cannot be checked, it is damaged "
                               f"({type(e).__name__}: {str(e)[:200]})") from None
    return m


class _Importer:
    def __init__(self, m, path):
        self.path = path
        g = m.graph
        self.consts = {t.name: self.array(t, "initializer") for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = self.array(n.attribute[0].t, f"Constant node {n.name!r}, tensor") \
                    if n.attribute and n.attribute[0].name == "value" else None
        self.nodes = [n for n in g.node if n.op_type != "Constant"]
        self.graph = g
        # Softmax changed meaning at opset 13 (before: flatten from axis on, default 1)
        self.opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET)
        self.shapes = _static_shapes(g)

    def array(self, t, what):
        """A TensorProto's values; onnx.checker does not compare raw data with the shape."""
        from onnx import numpy_helper

        from onnx import helper

        try:
            helper.tensor_dtype_to_np_dtype(t.data_type)
        except (KeyError, ValueError):
            raise CorruptFileError(f"{self.path}: {what} {t.name!r} has data type {t.data_type}, which is not "
                                   "an ONNX tensor type (damaged file?)") from None
        try:
            return numpy_helper.to_array(t)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError, OverflowError) as e:
            raise CorruptFileError(f"{self.path}: {what} {t.name!r} cannot be read: its data does not "
                                   f"fit its shape {list(t.dims)} ({type(e).__name__}: {e})") from None

    def fail(self, node, why):
        label = node.name or (node.output[0] if node.output else "?")
        raise ArgumentError(f"{self.path}: node {label!r} ({node.op_type}) {why}")

    def const(self, node, i, what):
        if i >= len(node.input) or node.input[i] == "":
            return None
        name = node.input[i]
        if name not in self.consts or self.consts[name] is None:
            self.fail(node, f"needs a constant {what} (input {name!r} is computed, not an initializer)")
        value = self.consts[name]
        if np.asarray(value).dtype.kind not in "biuf":  # strings, complex numbers
            self.fail(node, f"has a {what} {name!r} of type {np.asarray(value).dtype}; expected numbers")
        return value

    def attrs(self, node):
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def chain(self):
        """The nodes in order, each reading the previous one's output (and constants)."""
        g = self.graph
        real_inputs = [i for i in g.input if i.name not in self.consts]
        if len(real_inputs) != 1 or len(g.output) != 1:
            raise ArgumentError(f"{self.path}: expected one graph input and one output (a chain), got inputs "
                                f"{[i.name for i in real_inputs]} and outputs {[o.name for o in g.output]}")
        cur = real_inputs[0].name
        tt = real_inputs[0].type.tensor_type  # onnx.checker has made sure it has a shape
        rank = len(tt.shape.dim)
        elem = tt.elem_type
        from onnx import TensorProto

        if elem != TensorProto.FLOAT:
            if elem not in TensorProto.DataType.values():
                raise CorruptFileError(f"{self.path}: input {cur!r} has element type {elem}, which is not an "
                                       "ONNX tensor type (damaged file?)")
            raise ArgumentError(f"{self.path}: input {cur!r} is {TensorProto.DataType.Name(elem)}; "
                                f"import reads float32 graphs")
        order = []
        for n in self.nodes:
            computed = [i for i in n.input if i and i not in self.consts]
            if computed != [cur] or len(n.output) < 1:
                self.fail(n, f"is not part of a single chain (reads {computed}, expected exactly [{cur!r}] "
                          f"and constants)")
            order.append(n)
            cur = n.output[0]
        if cur != g.output[0].name:
            raise ArgumentError(f"{self.path}: the chain ends at {cur!r}, not at the graph output "
                                f"{g.output[0].name!r}")
        return order, rank

    def build(self):
        from .. import nn

        order, rank = self.chain()
        mods = []
        i = 0
        while i < len(order):
            n = order[i]
            nxt = order[i + 1] if i + 1 < len(order) else None
            try:
                m, rank, used = self.node(n, nxt, rank)
            except RefcompressError as e:
                if str(e).startswith(f"{self.path}: "):  # named already (self.fail, a damaged tensor)
                    raise
                self.fail(n, f"has no refcompress.nn form ({e})")  # a layer refusing its arguments
            except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as e:
                self.fail(n, f"cannot be imported ({type(e).__name__}: {e})")
            mods.extend(m)
            i += used
        return nn.Sequential(*mods).eval()

    def node(self, n, nxt, rank):
        from .. import nn

        op = n.op_type
        a = self.attrs(n)
        if n.domain not in ("", "ai.onnx"):
            self.fail(n, f"is in domain {n.domain!r}; import reads the standard ONNX ops (domain '' or 'ai.onnx')")
        if op not in IMPORT_OPS:
            self.fail(n, f"is not supported by import_onnx (supported: {', '.join(IMPORT_OPS)})")
        if op == "Gemm":
            w = self.const(n, 1, "weight B")
            b = self.const(n, 2, "bias C")
            if a.get("transA", 0):
                self.fail(n, "has transA=1 (the input would be transposed; a Linear reads rows)")
            if rank != 2:
                self.fail(n, f"reads a rank-{rank} tensor; Gemm is defined on matrices")
            w = np.asarray(w, np.float64)
            if w.ndim != 2:
                self.fail(n, f"has a weight of shape {w.shape}, expected a matrix")
            W = (w if a.get("transB", 0) else w.T) * float(a.get("alpha", 1.0))
            return [self.make_linear(W, self.row_bias(n, b, W.shape[0], float(a.get("beta", 1.0))))], 2, 1
        if op == "MatMul":
            w = self.const(n, 1, "weight")
            if np.ndim(w) != 2:
                self.fail(n, f"has a weight of shape {np.shape(w)}, expected a matrix")
            bias, used = None, 1
            if nxt is not None and nxt.op_type == "Add" and nxt.domain in ("", "ai.onnx"):
                other = 1 if nxt.input[0] == n.output[0] else 0  # Add is commutative: either order
                bias, used = self.row_bias(nxt, self.const(nxt, other, "bias"), w.shape[1], 1.0), 2
            return [self.make_linear(np.asarray(w, np.float64).T, bias)], rank, used
        if op == "Add":
            self.fail(n, "is an Add that does not follow a MatMul (only MatMul + Add, a Linear, is read)")
        if op == "Conv":
            return [self.conv(n, a, rank)], 4, 1
        if op in ("Relu", "Tanh"):
            return [nn.ReLU() if op == "Relu" else nn.Tanh()], rank, 1
        training = self.const(n, 2, "training_mode") if op == "Dropout" else None
        if training is not None and np.any(training):
            self.fail(n, "has training_mode=True (it would drop values at random); import reads inference graphs")
        if op in ("Identity", "Dropout"):
            return [], rank, 1
        if op == "Softmax":
            if self.opset < 13:
                axis = int(a.get("axis", 1))
                if not -rank <= axis < rank or axis % rank != rank - 1:
                    self.fail(n, f"has axis {axis} at opset {self.opset} on a rank-{rank} tensor: before opset 13 "
                              f"Softmax normalises over all axes from {axis} on together; only the last axis "
                              f"(axis={rank - 1}) has a refcompress.nn.Softmax form")
                return [nn.Softmax(dim=-1)], rank, 1
            return [nn.Softmax(dim=int(a.get("axis", -1)))], rank, 1
        if op in ("MaxPool", "AveragePool"):
            return [self.pool(n, a, rank)], 4, 1
        if op == "GlobalAveragePool":
            if nxt is None or not self.is_flatten(nxt, 4):
                self.fail(n, "is not followed by a Flatten (refcompress.nn.GlobalAvgPool2d gives [N, C])")
            return [nn.GlobalAvgPool2d()], 2, 2
        if op in ("Flatten", "Reshape"):
            if not self.is_flatten(n, rank):
                self.fail(n, "is not a flatten to [batch, -1] (axis 1, or a constant shape [0, -1], or [0 or -1, F] "
                          "with F the product of the input's statically known dims after the batch); other "
                          "reshapes have no refcompress.nn layer")
            return [nn.Flatten()], 2, 1
        if op == "BatchNormalization":
            return [self.batchnorm(n, a, rank)], rank, 1
        raise AssertionError(op)  # every op of IMPORT_OPS is handled above

    def row_bias(self, n, b, out_features, beta):
        """A bias that adds one value per output feature (a scalar, [out] or [1, out])."""
        if b is None:
            return None
        b = np.asarray(b, np.float64)
        if b.shape not in ((), (1,), (1, 1), (out_features,), (1, out_features)):
            self.fail(n, f"has a bias of shape {b.shape}; expected ({out_features},), (1, {out_features}) "
                      f"or a single value")
        return np.broadcast_to(b.reshape(-1) * beta, (out_features,))

    def is_flatten(self, n, rank):
        if n.op_type == "Flatten":
            return int(self.attrs(n).get("axis", 1)) in (1, 1 - rank)
        if n.op_type == "Reshape":
            s = self.const(n, 1, "shape")
            if s is None or np.ndim(s) != 1 or len(s) != 2:
                return False
            if s[0] == 0 and s[1] == -1:  # keeps the batch, flattens the rest
                return True
            # [0 or -1, F] flattens only when F is the product of the dims after the batch, which
            # must be known here: later layers need not notice (a Softmax takes any row length)
            dims = self.shapes.get(n.input[0])
            rest = None if not dims else dims[1:]
            return (s[0] in (0, -1) and s[1] > 0 and rest is not None and None not in rest
                    and int(np.prod(rest, dtype=np.int64)) == s[1])
        return False

    def channels(self, n):
        """The statically known channel count (dim 1) of node ``n``'s input, or None."""
        dims = self.shapes.get(n.input[0])
        return dims[1] if dims and len(dims) > 1 else None

    def make_linear(self, W, bias):
        from .. import nn

        out_f, in_f = W.shape
        lin = nn.Linear(in_f, out_f, bias=bias is not None, rng=np.random.default_rng(0))
        lin.weight.data = np.ascontiguousarray(W, np.float32)
        if bias is not None:
            lin.bias.data = np.ascontiguousarray(bias, np.float32)
        return lin

    def symmetric_pads(self, n, a, k):
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            self.fail(n, f"has auto_pad={a['auto_pad']!r}; only explicit pads are read")
        pads = list(a.get("pads", [0] * (2 * k)))
        if len(pads) != 4 or pads[:2] != pads[2:]:
            self.fail(n, f"has pads {pads}; refcompress layers pad both sides of H and W equally "
                      f"(expected [ph, pw, ph, pw])")
        return pads[0], pads[1]

    def conv(self, n, a, rank):
        from .. import nn

        if rank != 4:
            self.fail(n, f"reads a rank-{rank} tensor; refcompress.nn.Conv2d takes NCHW (rank 4)")
        w = np.asarray(self.const(n, 1, "weight"))
        if w.ndim != 4:
            self.fail(n, f"has a weight of shape {w.shape}; only 2-D convolutions are read")
        b = self.const(n, 2, "bias")
        group = int(a.get("group", 1))
        if group < 1:
            self.fail(n, f"has group {group}; expected a positive number of groups")
        pads = self.symmetric_pads(n, a, 2)
        O, cg, kh, kw = w.shape
        if "kernel_shape" in a and list(a["kernel_shape"]) != [kh, kw]:
            self.fail(n, f"has kernel_shape {list(a['kernel_shape'])} but a {kh}x{kw} weight")
        if b is not None and np.shape(b) != (O,):
            self.fail(n, f"has a bias of shape {np.shape(b)}; expected ({O},), one value per output channel")
        for key in ("strides", "dilations"):
            if key in a and len(a[key]) != 2:
                self.fail(n, f"has {key} {list(a[key])}; a 2-D convolution takes two (H and W)")
        channels = self.channels(n)
        if channels is not None and channels != cg * group:
            self.fail(n, f"reads {channels} channels, but its weight {list(w.shape)} with group {group} "
                      f"takes {cg * group}")
        c = nn.Conv2d(cg * group, O, (kh, kw), stride=tuple(a.get("strides", [1, 1])), padding=pads,
                      dilation=tuple(a.get("dilations", [1, 1])), groups=group, bias=b is not None,
                      rng=np.random.default_rng(0))
        c.weight.data = np.ascontiguousarray(w, np.float32)
        if b is not None:
            c.bias.data = np.ascontiguousarray(b, np.float32).reshape(O)
        return c

    def pool(self, n, a, rank):
        from .. import nn

        if rank != 4:
            self.fail(n, f"reads a rank-{rank} tensor; refcompress pooling takes NCHW (rank 4)")
        if a.get("ceil_mode", 0):
            self.fail(n, "has ceil_mode=1; refcompress pooling rounds the output size down")
        k = list(a["kernel_shape"])
        if len(k) != 2:
            self.fail(n, f"has kernel_shape {k}; only 2-D pooling is read")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(n, f"has dilations {list(a['dilations'])}; refcompress pooling is not dilated")
        pads = self.symmetric_pads(n, a, 2)
        strides = tuple(a.get("strides", [1, 1]))
        if len(strides) != 2:
            self.fail(n, f"has strides {list(strides)}; 2-D pooling takes two (H and W)")
        if n.op_type == "MaxPool":
            if len(n.output) > 1 and n.output[1]:
                self.fail(n, "also outputs Indices; only the pooled values are read")
            cls = nn.MaxPool2d
        else:
            if any(pads) and not a.get("count_include_pad", 0):
                self.fail(n, "has count_include_pad=0 with padding; refcompress.nn.AvgPool2d counts the "
                          "padding (count_include_pad=1)")
            cls = nn.AvgPool2d
        try:
            return cls(tuple(k), stride=strides, padding=pads)
        except ArgumentError as e:
            self.fail(n, f"has no refcompress.nn form ({e})")

    def batchnorm(self, n, a, rank):
        from .. import nn

        if a.get("spatial", 1) == 0:
            self.fail(n, "has spatial=0 (opset 7-8: statistics per element, not per channel); refcompress "
                      "BatchNorm normalises per channel")
        if a.get("training_mode", 0):
            self.fail(n, "has training_mode=1; import reads inference graphs")
        if len(n.output) > 1 and any(n.output[1:]):
            self.fail(n, "has running-statistics outputs; import reads inference graphs")
        names = ("scale", "bias B", "mean", "var")
        scale, bias, mean, var = (np.asarray(self.const(n, i + 1, w), np.float32) for i, w in enumerate(names))
        if rank not in (2, 3, 4):
            self.fail(n, f"reads a rank-{rank} tensor; BatchNorm1d / 2d take rank 2-4")
        channels = self.channels(n)
        C = scale.shape[0] if scale.ndim == 1 else None
        for what, t in zip(names, (scale, bias, mean, var)):
            if t.shape != (C,) or (channels is not None and C != channels):
                self.fail(n, f"has {what} of shape {t.shape}; expected one value per channel, shape "
                          f"({channels if channels is not None else C if C is not None else 'C'},), "
                          "the same for scale, B, mean and var")
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
        bn = cls(C, eps=float(a.get("epsilon", 1e-5)))
        bn.weight.data, bn.bias.data = scale.copy(), bias.copy()
        bn.running_mean, bn.running_var = mean.copy(), var.copy()
        return bn.eval()


def _static_shapes(g):
    """Tensor name -> dims (None for a symbolic one) of the graph's (inferred) tensors;
    a tensor shape inference did not reach is absent, so nothing depending on it is accepted."""
    out = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return out


def import_onnx(path):
    """A :class:`refcompress.nn.Sequential` (eval mode) from a float ONNX graph that is one
    chain of the ops in ``IMPORT_OPS``.  A file that is not a valid ONNX model is a
    :class:`~refcompress.errors.CorruptFileError` naming it; an op outside the list, or a
    graph that is not a chain, an ArgumentError naming the node and its op."""
    path = check_path(path)
    m = _read_model(path)
    return _Importer(m, path).build()

