"""Deep Compression's storage (Han, Mao & Dally, ICLR 2016, sec. 2-4): pruned, shared
weights stored as two Huffman-coded streams.

For a weight whose kept entries sit at row-major positions p_0 < p_1 < ... with shared
value codes c_i (indices into a float32 codebook):

* relative indices: r_i = p_i - p_{i-1} - 1 zeros skipped (p_{-1} = -1), in ``index_bits``
  bits.  A gap that does not fit is split with the escape symbol E = 2^index_bits - 1,
  meaning "skip E positions, no weight here" (the paper inserts a filler zero weight; the
  escape does the same job without spending a value code on it);
* value codes: c_i in ``value_bits`` bits;
* each stream is coded with canonical Huffman (:mod:`refcompress.pipeline.huffman`).

:func:`encode_weight` / :func:`decode_weight` are exact inverses; :class:`DeepCompressedLinear`
holds the coded streams as buffers (so ``refcompress.io`` saves and loads them bit for bit)
and decodes once on first use.  :func:`storage_report` compares the byte counts of each
representation, and zlib on the same streams.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .. import kernels as _kernels
from .._validation import check_array, check_int
from ..errors import ArgumentError, CorruptFileError
from ..nn import functional as F
from ..nn.module import Module
from ..nn.spec import register_module
from . import huffman


@dataclass
class EncodedWeight:
    shape: tuple
    index_bits: int
    value_bits: int
    codebook: np.ndarray       # float32 [<= 2^value_bits]
    n_index: int               # symbols in the relative-index stream (escapes included)
    n_values: int              # kept weights
    index_lengths: np.ndarray  # uint8 [2^index_bits]  Huffman code lengths
    index_payload: np.ndarray  # uint8
    value_lengths: np.ndarray  # uint8 [2^value_bits]
    value_payload: np.ndarray  # uint8

    def stored_bytes(self) -> int:
        """Stored bytes: codebook, both code-length tables and both payloads."""
        return (self.codebook.nbytes + self.index_lengths.nbytes + self.index_payload.nbytes
                + self.value_lengths.nbytes + self.value_payload.nbytes)


def relative_indices(mask, index_bits: int) -> np.ndarray:
    """The relative-index stream of a boolean mask (row-major), with escapes."""
    esc = 2**index_bits - 1
    pos = np.flatnonzero(np.asarray(mask).reshape(-1))
    gaps = np.diff(np.concatenate([[-1], pos])) - 1
    n_esc = gaps // esc
    rem = gaps - n_esc * esc
    # each gap becomes n_esc escapes followed by its remainder
    counts = n_esc + 1
    out = np.full(int(counts.sum()), esc, np.int64)
    ends = np.cumsum(counts) - 1
    out[ends] = rem
    return out


def positions_from_relative(rel, index_bits: int) -> np.ndarray:
    """Inverse of :func:`relative_indices`: the kept positions."""
    esc = 2**index_bits - 1
    rel = np.asarray(rel, np.int64)
    step = np.where(rel == esc, esc, rel + 1)
    pos = np.cumsum(step) - 1
    return pos[rel != esc]


def encode_weight(weight, codebook, codes, *, index_bits: int = 5, value_bits: int | None = None) -> EncodedWeight:
    """Code a pruned, shared weight.

    weight   : float array; its nonzero entries are the kept weights (their positions).
    codebook : float32 [k]; codes: integer array like ``weight`` (value code of each entry;
               read only where weight != 0), with codebook[codes] == weight there.
    """
    w = check_array(weight, "weight", dtypes=[np.float32, np.float64])
    codebook = check_array(codebook, "codebook", dtypes=[np.float32], ndim=1)
    codes = check_array(codes, "codes", shape=w.shape)
    index_bits = check_int(index_bits, "index_bits", min_value=1, max_value=16)
    vb = int(np.ceil(np.log2(max(codebook.size, 2)))) if value_bits is None else check_int(value_bits, "value_bits",
                                                                                            min_value=1, max_value=16)
    if codebook.size > 2**vb:
        raise ArgumentError(f"codebook: {codebook.size} entries do not fit {vb}-bit value codes")
    mask = w != 0
    vals = codes[mask].astype(np.int64)
    if vals.size and (vals.min() < 0 or vals.max() >= codebook.size):
        raise ArgumentError("codes: expected indices into the codebook at every kept weight")
    if not np.array_equal(codebook[vals], w[mask].astype(np.float32)):
        raise ArgumentError("codes: codebook[codes] differs from the kept weights (not a shared weight)")
    rel = relative_indices(mask, index_bits)
    il, ip, _ = huffman.encode(rel, 2**index_bits)
    vl, vp, _ = huffman.encode(vals, 2**vb)
    return EncodedWeight(tuple(w.shape), index_bits, vb, codebook.copy(), int(rel.size), int(vals.size),
                         il, ip, vl, vp)


def decode_weight(e: EncodedWeight) -> np.ndarray:
    """The float32 weight back, exactly."""
    rel = huffman.decode(e.index_lengths, e.index_payload, e.n_index)
    pos = positions_from_relative(rel, e.index_bits)
    n = int(np.prod(e.shape))
    if pos.size != e.n_values or (pos.size and (pos[-1] >= n or np.any(np.diff(pos) <= 0))):
        raise CorruptFileError(f"index stream: decodes to {pos.size} positions, expected {e.n_values} inside {n}")
    vals = huffman.decode(e.value_lengths, e.value_payload, e.n_values)
    if vals.size and vals.max() >= e.codebook.size:
        raise CorruptFileError("value stream: a code points past the codebook")
    out = np.zeros(n, np.float32)
    out[pos] = e.codebook[vals]
    return out.reshape(e.shape)


def storage_report(weight, e: EncodedWeight) -> dict:
    """Bytes of one layer's weight in each representation (and zlib of the same streams)."""
    from ..prune import csr_stored_bytes

    w = np.asarray(weight)
    nnz = int(np.count_nonzero(w))
    rows, cols = w.shape[0], w.size // max(w.shape[0], 1)  # a conv kernel as [out, in*kh*kw]
    rel = relative_indices(w != 0, e.index_bits)
    fixed = (rel.size * e.index_bits + nnz * e.value_bits + 7) // 8 + e.codebook.nbytes
    packed_streams = np.concatenate([rel.astype(np.uint8 if e.index_bits <= 8 else np.uint16).view(np.uint8),
                                     np.asarray(huffman.decode(e.value_lengths, e.value_payload, e.n_values),
                                                np.uint8 if e.value_bits <= 8 else np.uint16).view(np.uint8)])
    return {
        "dense fp32": w.size * 4,
        "CSR fp32": csr_stored_bytes(rows, cols, nnz, bias=False),
        "relative + codes": fixed,
        "Huffman": e.stored_bytes(),
        "zlib (streams)": len(zlib.compress(packed_streams.tobytes(), 9)) + e.codebook.nbytes,
    }


class _DeepCompressed:
    """The coded streams as buffers (their sizes in the config, so a loader can allocate
    them) and the decoded weight, cached until the buffers are replaced."""

    fixed_float_dtype = np.float32  # float32 kernels and scales: Module.to refuses other dtypes

    def _init_streams(self, shape, index_bits, value_bits, index_bytes, value_bytes):
        self.weight_shape = tuple(int(v) for v in shape)
        self.index_bits, self.value_bits = int(index_bits), int(value_bits)
        self.register_buffer("codebook", np.zeros(2**self.value_bits, np.float32))
        self.register_buffer("counts", np.zeros(2, np.int64))  # n_index, n_values
        self.register_buffer("index_lengths", np.zeros(2**self.index_bits, np.uint8))
        self.register_buffer("index_payload", np.zeros(int(index_bytes), np.uint8))
        self.register_buffer("value_lengths", np.zeros(2**self.value_bits, np.uint8))
        self.register_buffer("value_payload", np.zeros(int(value_bytes), np.uint8))
        self._decoded = (None, None)

    def _set_streams(self, e: EncodedWeight):
        self.codebook = np.concatenate([e.codebook, np.zeros(2**e.value_bits - e.codebook.size, np.float32)])
        self.counts = np.array([e.n_index, e.n_values], np.int64)
        self.index_lengths, self.index_payload = e.index_lengths, e.index_payload
        self.value_lengths, self.value_payload = e.value_lengths, e.value_payload

    def encoded(self) -> EncodedWeight:
        return EncodedWeight(self.weight_shape, self.index_bits, self.value_bits, self.codebook,
                             int(self.counts[0]), int(self.counts[1]), self.index_lengths, self.index_payload,
                             self.value_lengths, self.value_payload)

    def dense_weight(self) -> np.ndarray:
        if self._decoded[0] is not self.value_payload:  # decode again after a load
            self._decoded = (self.value_payload, self._prepare(decode_weight(self.encoded())))
        return self._decoded[1][0]

    def _prepare(self, w):
        return (w,)

    def stored_bytes(self) -> int:
        b = getattr(self, "bias", None)
        b = b.data if b is not None and not isinstance(b, np.ndarray) else b
        return self.encoded().stored_bytes() + self.counts.nbytes + (0 if b is None else b.nbytes)

    def _stream_config(self):
        return {"index_bits": self.index_bits, "value_bits": self.value_bits,
                "index_bytes": int(self.index_payload.size), "value_bytes": int(self.value_payload.size)}


@register_module
class DeepCompressedLinear(_DeepCompressed, Module):
    """A Linear stored in Deep Compression's format.  Decoded once to CSR, then run by the
    sparse kernel (``kernels.spmm_csr``), so the pruning pays off in time as well as bytes.
    Inference only (train before encoding)."""

    def __init__(self, in_features: int, out_features: int, index_bits: int = 5, value_bits: int = 4,
                 bias: bool = True, index_bytes: int = 0, value_bytes: int = 0, bias_dtype: str = "float32"):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_streams((self.out_features, self.in_features), index_bits, value_bits, index_bytes, value_bytes)
        # biases may be stored as float16 (relative rounding <= 2^-11); they run as float32
        self.bias_dtype = str(np.dtype(bias_dtype))
        if self.bias_dtype not in ("float32", "float16"):
            raise ArgumentError(f"bias_dtype: expected 'float32' or 'float16', got {bias_dtype!r}")
        if bias:
            self.register_buffer("bias", np.zeros(self.out_features, self.bias_dtype))
        else:
            self.bias = None

    @classmethod
    def from_weight(cls, weight, codebook, codes, bias=None, *, index_bits=5,
                    bias_dtype: str = "float32") -> "DeepCompressedLinear":
        e = encode_weight(weight, codebook, codes, index_bits=index_bits)
        out, inp = e.shape
        m = cls(inp, out, e.index_bits, e.value_bits, bias is not None, e.index_payload.size, e.value_payload.size,
                bias_dtype)
        m._set_streams(e)
        if bias is not None:
            m.bias = np.asarray(bias).astype(m.bias_dtype)
        return m

    def _prepare(self, w):
        from ..kernels import csr_from_dense, pack_csr

        csr = csr_from_dense(w)
        bias = None if self.bias is None else self.bias.astype(np.float32)
        # validated and laid out once; forward then checks only x
        return (w, pack_csr(*csr, bias), bias)

    def weight(self) -> np.ndarray:
        return self.dense_weight()

    def forward(self, x):
        if self._decoded[0] is not self.value_payload:
            self.dense_weight()
        _, packed, _ = self._decoded[1]
        return _kernels.spmm_csr(x, packed)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "bias_dtype": self.bias_dtype, **self._stream_config()}


class _DecodedWeightView:
    """Stands for a decoded conv weight where nn.Conv2d reads ``self.weight``."""

    def __init__(self, layer):
        self._layer = layer

    @property
    def data(self):
        return self._layer.dense_weight()

    @property
    def shape(self):
        return self._layer.weight_shape

    @property
    def dtype(self):
        return np.dtype(np.float32)


from ..nn import Conv2d as _Conv2d  # noqa: E402


@register_module
class DeepCompressedConv2d(_DeepCompressed, _Conv2d):
    """A Conv2d stored in Deep Compression's format, decoded once and run by nn.Conv2d."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, index_bits: int = 5, value_bits: int = 4, index_bytes: int = 0, value_bytes: int = 0):
        _Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        shape = self.weight.shape
        del self.weight
        self._init_streams(shape, index_bits, value_bits, index_bytes, value_bytes)
        object.__setattr__(self, "weight", _DecodedWeightView(self))

    @classmethod
    def from_conv(cls, layer, codebook, codes, *, index_bits=5) -> "DeepCompressedConv2d":
        w = layer.dense_weight() if hasattr(layer, "dense_weight") else layer.weight.data
        e = encode_weight(w, codebook, codes, index_bits=index_bits)
        cfg = {k: v for k, v in layer.get_config().items() if k not in ("bits", "masked")}
        m = cls(**cfg, index_bits=e.index_bits, value_bits=e.value_bits, index_bytes=e.index_payload.size,
                value_bytes=e.value_payload.size)
        m._set_streams(e)
        if layer.bias is not None:
            m.bias.data = layer.bias.data.copy()
        return m

    def get_config(self):
        return {**_Conv2d.get_config(self), **self._stream_config()}
