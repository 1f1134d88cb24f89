"""A BERT encoder with explicit forward and backward: embeddings, attention, post-LN blocks.

The module tree and its names are Hugging Face's ``BertModel``, so ``state_dict()`` keys are
the checkpoint's keys (``encoder.layer.3.attention.self.query.weight``) and a safetensors
file loads by name (:func:`refcompress.bert.load_bert`).  With x the [B, S, H] hidden
states, m the [B, S] attention mask (1 = token, 0 = padding), h heads of width d = H / h:

    embeddings   x_0 = LN(E_word[ids] + E_pos[0..S-1] + E_type[type_ids])
    attention    Q, K, V = x W_q^T + b_q, ...  split into heads [B, h, S, d]
                 A = softmax(Q K^T / sqrt(d) + M),  M[b, :, :, j] = 0 if m[b, j] else min_float
                 a = LN(x + merge(A V) W_o^T + b_o)
    feed-forward y = LN(a + GELU(a W_1^T + b_1) W_2^T + b_2)

(Vaswani et al., "Attention Is All You Need", 2017; Devlin et al., "BERT", 2019: residual
then LayerNorm, the "post-LN" block.)  The additive mask is the most negative finite float of
the dtype, as Hugging Face uses: exp underflows to exactly 0 for padded keys, and a row whose
keys are all padding gets a uniform distribution instead of NaN.

Every Linear is an ordinary :class:`refcompress.nn.Linear` child called through
``Module.__call__`` on a 2-D [B*S, in] input (rows are tokens, padding rows included), so
``get_submodule`` / ``set_submodule`` swap it for any layer with ``forward(x [M, in]) ->
[M, out]`` and forward hooks see the calibration rows.  The attention probabilities are the
output of the child ``attention.self.softmax`` ([B, h, S, S]): a forward hook reads them and
:class:`refcompress.distill.Taps` can inject a gradient into them.  There is no dropout:
these modules are for inference and for fine-tuning / distillation without dropout.

Multi-input modules (``BertSelfOutput(h, residual)``) return one gradient per differentiable
input from ``backward``; modules whose input is integer ids (:class:`Embedding`,
:class:`BertEmbeddings`, :class:`BertModel`) return None from ``backward`` after adding the
parameter gradients.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_array, check_float, check_int
from ..errors import ArgumentError, DTypeError, ShapeError
from ..kernels import nnops
from ..kernels.attention import attention as kernel_attention
from . import functional as F
from .container import Sequential
from .init import get_rng
from .layers import Linear
from .module import Module, Parameter
from .spec import register_module

__all__ = [
    "Embedding", "LayerNorm", "GELU", "Tanh", "Softmax", "MultiHeadSelfAttention",
    "BertSelfOutput", "BertAttention", "BertIntermediate", "BertOutput", "BertLayer",
    "BertEncoder", "BertEmbeddings", "BertPooler", "BertModel", "additive_attention_mask",
]

_FLOATS = (np.float32, np.float64)


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise DTypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_ids(ids, name, num, shape=None):
    """Integer array with every entry in [0, num)."""
    ids = check_array(ids, name, shape=shape)
    if ids.dtype.kind not in "iu":
        raise DTypeError(f"{name}: expected an integer array, got dtype {ids.dtype.name}")
    if ids.size and (ids.min() < 0 or ids.max() >= num):
        raise ArgumentError(
            f"{name}: expected ids in [0, {num - 1}], got values in [{ids.min()}, {ids.max()}]")
    return ids


# -- element-wise and normalisation layers ---------------------------------------------

@register_module
class Embedding(Module):
    """y = W[ids]: integer ids [*] -> vectors [*, embedding_dim]; weight [num, dim].

    Backward scatters dL/dy back into the rows that were read (a row read twice gets both
    contributions): dL/dW[i] = sum over positions p with ids[p] = i of dL/dy[p]
    (``np.add.at``).  The row ``padding_idx`` (if given) gets no gradient, as in PyTorch.
    Initialised N(0, 1) (PyTorch's default), with the padding row zero.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None, rng=None):
        super().__init__()
        self.num_embeddings = check_int(num_embeddings, "num_embeddings", min_value=1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", min_value=1)
        self.padding_idx = None if padding_idx is None else check_int(
            padding_idx, "padding_idx", min_value=0, max_value=self.num_embeddings - 1)
        w = get_rng(rng).standard_normal((self.num_embeddings, self.embedding_dim)).astype(np.float32)
        if self.padding_idx is not None:
            w[self.padding_idx] = 0
        self.weight = Parameter(w)
        self._cache = None

    def forward(self, ids):
        ids = _check_ids(ids, "ids", self.num_embeddings)
        self._cache = ids if self.training else None
        return self.weight.data[ids]

    def backward(self, grad_out):
        ids = self._cache_or_raise()
        g = self._check_grad_out(grad_out, ids.shape + (self.embedding_dim,))
        w = self.weight
        if w.grad is None:
            w.grad = np.zeros_like(w.data)
        rows = ids.reshape(-1)
        g2 = g.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = rows != self.padding_idx
            rows, g2 = rows[keep], g2[keep]
        np.add.at(w.grad, rows, g2)
        return None

    def get_config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx}


@register_module
class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis (Ba et al. 2016);
    forward is :func:`refcompress.kernels.nnops.layer_norm`.

    Backward, with x_hat = (x - mean) * r, r = 1 / sqrt(var + eps), g = dL/dy and n the
    normalised size (means over the last axis):

        dL/dgamma = sum g * x_hat,   dL/dbeta = sum g        (over every leading axis)
        dL/dx = r * (g' - mean(g') - x_hat * mean(g' * x_hat)),   g' = g * gamma.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, rng=None):
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):
            if len(normalized_shape) != 1:
                raise ArgumentError(
                    f"normalized_shape: only the last axis is normalised; expected an int or a "
                    f"1-tuple, got {tuple(normalized_shape)}")
            normalized_shape = normalized_shape[0]
        self.normalized_shape = check_int(normalized_shape, "normalized_shape", min_value=1)
        self.eps = check_float(eps, "eps", min_value=0.0, min_inclusive=False)
        get_rng(rng)  # the init is deterministic; rng is accepted so every layer takes it
        self.weight = Parameter(np.ones(self.normalized_shape, np.float32))
        self.bias = Parameter(np.zeros(self.normalized_shape, np.float32))
        self._cache = None

    def forward(self, x, residual=None):
        """LN(x), or LN(x + residual) with the sum taken inside the kernel (one pass fewer;
        backward then gives dL/d(x + residual), the gradient of both)."""
        x = check_array(x, "x", dtypes=(self.weight.dtype,), min_ndim=1)
        if x.shape[-1] != self.normalized_shape:
            raise ShapeError(f"x: expected last dimension {self.normalized_shape}, got shape {x.shape}")
        y = nnops.layer_norm(x, self.weight.data, self.bias.data, self.eps, residual=residual)
        if self.training:
            if residual is not None:
                x = x + residual  # the same float32 sum the kernel forms
            x64 = x.astype(np.float64)
            mean = x64.mean(axis=-1, keepdims=True)
            d = x64 - mean
            r = 1.0 / np.sqrt(np.mean(d * d, axis=-1, keepdims=True) + self.eps)
            self._cache = ((d * r).astype(x.dtype), r.astype(x.dtype))
        else:
            self._cache = None
        return y

    def backward(self, grad_out):
        x_hat, r = self._cache_or_raise()
        g = self._check_grad_out(grad_out, x_hat.shape)
        lead = tuple(range(g.ndim - 1))
        self.weight.accumulate_grad((g * x_hat).sum(axis=lead))
        self.bias.accumulate_grad(g.sum(axis=lead))
        gp = g * self.weight.data
        return r * (gp - gp.mean(axis=-1, keepdims=True)
                    - x_hat * (gp * x_hat).mean(axis=-1, keepdims=True))

    def get_config(self):
        return {"normalized_shape": self.normalized_shape, "eps": self.eps}


@register_module
class GELU(Module):
    """GELU(x) = x Phi(x) (Hendrycks & Gimpel 2016, the exact erf form BERT uses); forward
    is :func:`refcompress.kernels.nnops.gelu`.

    dGELU/dx = Phi(x) + x phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2,
    phi(x) = exp(-x^2 / 2) / sqrt(2 pi), with erf from :func:`refcompress.kernels.nnops.erf`.
    Like the other parameterless layers it accepts float16, float32 and float64; float16 is
    computed in float32 and rounded back to float16 (the backward in float64, as always).
    """

    def __init__(self, rng=None):
        super().__init__()
        get_rng(rng)
        self._cache = None

    def forward(self, x):
        x = check_array(x, "x", dtypes=F.FLOAT_DTYPES)
        self._cache = x if self.training else None
        if x.dtype == np.float16:       # computed in float32, rounded back to float16
            return nnops.gelu(x.astype(np.float32)).astype(np.float16)
        return nnops.gelu(x)

    def backward(self, grad_out):
        x = self._cache_or_raise()
        g = self._check_grad_out(grad_out, x.shape)
        x64 = x.astype(np.float64)
        cdf = 0.5 * (1.0 + nnops.erf(x64 * math.sqrt(0.5)))
        pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)
        return (g * (cdf + x64 * pdf)).astype(g.dtype)


@register_module
class Tanh(Module):
    """y = tanh(x);  dL/dx = dL/dy * (1 - y^2)."""

    def __init__(self, rng=None):
        super().__init__()
        get_rng(rng)
        self._cache = None

    def forward(self, x):
        x = check_array(x, "x", dtypes=F.FLOAT_DTYPES)
        y = np.tanh(x)
        self._cache = y if self.training else None
        return y

    def backward(self, grad_out):
        y = self._cache_or_raise()
        g = self._check_grad_out(grad_out, y.shape)
        return g * (1 - y * y)


@register_module
class Softmax(Module):
    """P = softmax(x + mask) along ``dim``: :func:`refcompress.kernels.nnops.softmax` on the
    last axis (an additive ``mask`` broadcast against x is added inside the kernel), else
    :func:`refcompress.nn.functional.softmax`.

    dL/dx = P * (g - sum_dim(g * P)),  g = dL/dP  (the softmax Jacobian diag(P) - P P^T);
    the mask is a constant and gets no gradient.  Like the other parameterless layers it
    accepts float16, float32 and float64; float16 (x and a mask, which must then be
    float16 too) is computed in float32 and rounded back to float16, forward and backward.
    """

    def __init__(self, dim: int = -1, rng=None):
        super().__init__()
        self.dim = check_int(dim, "dim")
        get_rng(rng)
        self._cache = None

    def forward(self, x, mask=None):
        x = check_array(x, "x", dtypes=F.FLOAT_DTYPES, min_ndim=1)
        half = x.dtype == np.float16
        if half:                        # computed in float32, rounded back to float16
            if mask is not None:
                mask = check_array(mask, "mask", dtypes=(np.float16,)).astype(np.float32)
            x = x.astype(np.float32)
        if self.dim in (-1, x.ndim - 1):
            p = nnops.softmax(x, mask)
        else:
            p = F.softmax(x if mask is None else x + mask, axis=self.dim)
        if half:
            p = p.astype(np.float16)
        self._cache = p if self.training else None
        return p

    def backward(self, grad_out):
        p = self._cache_or_raise()
        g = self._check_grad_out(grad_out, p.shape)
        if p.dtype == np.float16 and g.dtype == np.float16:
            p32, g32 = p.astype(np.float32), g.astype(np.float32)
            return (p32 * (g32 - np.sum(g32 * p32, axis=self.dim, keepdims=True))).astype(np.float16)
        return p * (g - np.sum(g * p, axis=self.dim, keepdims=True))

    def get_config(self):
        return {"dim": self.dim}


# -- attention -----------------------------------------------------------------------

def additive_attention_mask(attention_mask, batch: int, seq: int, dtype) -> np.ndarray:
    """[B, S] mask of 1 (attend) / 0 (padding) -> additive [B, 1, 1, S] of 0 / min float.

    ``attention_mask`` may be bool, integer or float, but every entry must be 0 or 1.
    None means no padding (all zeros).  The most negative finite value of ``dtype`` (not
    -inf) keeps a row whose keys are all padding finite: softmax makes it uniform.
    """
    dt = np.dtype(dtype)
    if attention_mask is None:
        return np.zeros((batch, 1, 1, seq), dt)
    m = check_array(attention_mask, "attention_mask", shape=(batch, seq))
    if m.dtype.kind not in "biuf":
        raise DTypeError(f"attention_mask: expected a bool, integer or float array, got {m.dtype.name}")
    if m.dtype.kind != "b" and not np.all((m == 0) | (m == 1)):
        raise ArgumentError("attention_mask: expected entries 0 (padding) or 1 (token)")
    return np.where(m.astype(bool), dt.type(0), np.finfo(dt).min).astype(dt).reshape(batch, 1, 1, seq)


@register_module
class MultiHeadSelfAttention(Module):
    """Multi-head scaled dot-product self-attention (Vaswani et al. 2017), Hugging Face's
    ``BertSelfAttention``: children ``query``, ``key``, ``value`` (Linear H -> H) and
    ``softmax`` (whose output, [B, heads, S, S], is the attention probabilities).

    forward(x [B, S, H], attention_mask [B, S] or None) -> context [B, S, H]:
        Q_h = split(x W_q^T + b_q) ... [B, h, S, d],  d = H / heads
        A = softmax(Q K^T / sqrt(d) + M),   context = merge(A V)
    backward(g [B, S, H]) -> dL/dx, with G = split(g):
        dA = G V^T,  dV = A^T G,  dS = softmax.backward(dA),
        dQ = dS K / sqrt(d),  dK = dS^T Q / sqrt(d),
        dL/dx = query.backward(dQ) + key.backward(dK) + value.backward(dV).

    In eval mode on float32, with no forward hook on ``softmax`` (and ``softmax`` the plain
    :class:`Softmax`), forward runs the fused kernel :func:`refcompress.kernels.attention`
    instead (heads read in place, P never formed; within its ``attention_error_bound`` of
    this path); training, float64, and a hooked or swapped ``softmax`` keep the path above.
    """

    def __init__(self, hidden_size: int, num_heads: int, rng=None):
        super().__init__()
        self.hidden_size = check_int(hidden_size, "hidden_size", min_value=1)
        self.num_heads = check_int(num_heads, "num_heads", min_value=1)
        if self.hidden_size % self.num_heads:
            raise ArgumentError(
                f"num_heads: expected a divisor of hidden_size={self.hidden_size}, got {self.num_heads}")
        self.head_dim = self.hidden_size // self.num_heads
        gen = get_rng(rng)
        self.query = Linear(self.hidden_size, self.hidden_size, rng=gen)
        self.key = Linear(self.hidden_size, self.hidden_size, rng=gen)
        self.value = Linear(self.hidden_size, self.hidden_size, rng=gen)
        self.softmax = Softmax(-1)
        self._cache = None

    def _fused_ok(self, x) -> bool:
        """The fused kernel (:func:`refcompress.kernels.attention`) computes exactly what the
        unfused path does, but never forms P: use it in eval mode on float32 unless
        something needs the probabilities -- a forward hook on ``softmax`` (attention
        distillation taps) or a ``softmax`` child swapped for another module."""
        sm = self.softmax
        return (not self.training and x.dtype == np.float32 and type(sm) is Softmax
                and sm.dim in (-1, 3) and not sm._forward_hooks)

    def _split(self, t2, B, S):
        """[B*S, H] -> [B, heads, S, d]."""
        return t2.reshape(B, S, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _merge(self, t4):
        """[B, heads, S, d] -> [B*S, H]."""
        B, _, S, _ = t4.shape
        return t4.transpose(0, 2, 1, 3).reshape(B * S, self.hidden_size)

    def forward(self, x, attention_mask=None):
        x = check_array(x, "x", dtypes=_FLOATS, ndim=3)
        B, S, H = x.shape
        if H != self.hidden_size:
            raise ShapeError(f"x: expected last dimension {self.hidden_size} (hidden_size), got shape {x.shape}")
        add = additive_attention_mask(attention_mask, B, S, x.dtype)
        x2 = x.reshape(B * S, H)
        if self._fused_ok(x):
            # Inference: one fused kernel reads the heads in place (no split / merge copies,
            # P never stored); the same numbers within attention_error_bound.
            scale = 1.0 / math.sqrt(self.head_dim)
            mask = None if attention_mask is None else add.reshape(B, S)
            self._cache = None
            return kernel_attention(self.query(x2).reshape(B, S, H), self.key(x2).reshape(B, S, H),
                                    self.value(x2).reshape(B, S, H), self.num_heads, scale, mask)
        q = self._split(self.query(x2), B, S)
        k = self._split(self.key(x2), B, S)
        v = self._split(self.value(x2), B, S)
        scale = x.dtype.type(1.0 / math.sqrt(self.head_dim))
        scores = np.matmul(q, k.transpose(0, 1, 3, 2))
        scores *= scale
        p = self.softmax(scores, add)
        ctx = np.matmul(p, v)
        self._cache = (q, k, v, p, scale) if self.training else None
        return self._merge(ctx).reshape(B, S, H)

    def backward(self, grad_out):
        q, k, v, p, scale = self._cache_or_raise()
        B, _, S, _ = q.shape
        g = self._check_grad_out(grad_out, (B, S, self.hidden_size))
        gc = self._split(g.reshape(B * S, self.hidden_size), B, S)
        dp = np.matmul(gc, v.transpose(0, 1, 3, 2))
        dv = np.matmul(p.transpose(0, 1, 3, 2), gc)
        ds = self.softmax.backward(dp)
        dq = np.matmul(ds, k) * scale
        dk = np.matmul(ds.transpose(0, 1, 3, 2), q) * scale
        dx = (self.query.backward(self._merge(dq)) + self.key.backward(self._merge(dk))
              + self.value.backward(self._merge(dv)))
        return dx.reshape(B, S, self.hidden_size)

    def get_config(self):
        return {"hidden_size": self.hidden_size, "num_heads": self.num_heads}


class _DenseAddNorm(Module):
    """y = LN(residual + dense(h)): the post-LN residual block of BERT (children ``dense``,
    ``LayerNorm``).  forward(h [B, S, in], residual [B, S, out]);
    backward(g) -> (dL/dh, dL/dresidual) with dL/dresidual = LN.backward(g)."""

    def __init__(self, in_features: int, hidden_size: int, layer_norm_eps: float, rng):
        super().__init__()
        self.hidden_size = check_int(hidden_size, "hidden_size", min_value=1)
        self.layer_norm_eps = check_float(layer_norm_eps, "layer_norm_eps", min_value=0.0,
                                          min_inclusive=False)
        self.dense = Linear(in_features, self.hidden_size, rng=get_rng(rng))
        self.LayerNorm = LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self._cache = None

    def forward(self, hidden_states, input_tensor):
        h = check_array(hidden_states, "hidden_states", dtypes=_FLOATS, ndim=3)
        r = check_array(input_tensor, "input_tensor", dtypes=(h.dtype,),
                        shape=h.shape[:2] + (self.hidden_size,))
        B, S, n_in = h.shape
        y = self.dense(h.reshape(B * S, n_in)).reshape(r.shape)
        self._cache = h.shape if self.training else None
        return self.LayerNorm(y, r)

    def backward(self, grad_out):
        h_shape = self._cache_or_raise()
        B, S, _ = h_shape
        ds = self.LayerNorm.backward(grad_out)
        dh = self.dense.backward(ds.reshape(B * S, -1)).reshape(h_shape)
        return dh, ds


@register_module
class BertSelfOutput(_DenseAddNorm):
    """LN(x + context W_o^T + b_o): the attention block's output (``attention.output``)."""

    def __init__(self, hidden_size: int, layer_norm_eps: float = 1e-12, rng=None):
        super().__init__(check_int(hidden_size, "hidden_size", min_value=1), hidden_size,
                         layer_norm_eps, rng)

    def get_config(self):
        return {"hidden_size": self.hidden_size, "layer_norm_eps": self.layer_norm_eps}


@register_module
class BertOutput(_DenseAddNorm):
    """LN(a + f W_2^T + b_2), f the [B, S, intermediate] GELU output: the FFN's output."""

    def __init__(self, intermediate_size: int, hidden_size: int, layer_norm_eps: float = 1e-12, rng=None):
        n = check_int(intermediate_size, "intermediate_size", min_value=1)
        super().__init__(n, hidden_size, layer_norm_eps, rng)
        self.intermediate_size = n

    def get_config(self):
        return {"intermediate_size": self.intermediate_size, "hidden_size": self.hidden_size,
                "layer_norm_eps": self.layer_norm_eps}


@register_module
class BertAttention(Module):
    """a = LN(x + Attention(x, mask) W_o^T + b_o): children ``self``
    (:class:`MultiHeadSelfAttention`) and ``output`` (:class:`BertSelfOutput`).
    backward: dL/dx = dL/dresidual + self.backward(dL/dcontext)."""

    def __init__(self, hidden_size: int, num_heads: int, layer_norm_eps: float = 1e-12, rng=None):
        super().__init__()
        gen = get_rng(rng)
        self.self = MultiHeadSelfAttention(hidden_size, num_heads, rng=gen)
        self.output = BertSelfOutput(hidden_size, layer_norm_eps, rng=gen)
        self._config = {"hidden_size": self.self.hidden_size, "num_heads": self.self.num_heads,
                        "layer_norm_eps": self.output.layer_norm_eps}

    def forward(self, x, attention_mask=None):
        return self.output(self.self(x, attention_mask), x)

    def backward(self, grad_out):
        dctx, dres = self.output.backward(grad_out)
        return dres + self.self.backward(dctx)

    def get_config(self):
        return dict(self._config)


@register_module
class BertIntermediate(Module):
    """f = GELU(a W_1^T + b_1): children ``dense`` (H -> intermediate) and
    ``intermediate_act_fn`` (:class:`GELU`).  [B, S, H] -> [B, S, intermediate]."""

    def __init__(self, hidden_size: int, intermediate_size: int, rng=None):
        super().__init__()
        self.hidden_size = check_int(hidden_size, "hidden_size", min_value=1)
        self.intermediate_size = check_int(intermediate_size, "intermediate_size", min_value=1)
        self.dense = Linear(self.hidden_size, self.intermediate_size, rng=get_rng(rng))
        self.intermediate_act_fn = GELU()
        self._cache = None

    def forward(self, x):
        x = check_array(x, "x", dtypes=_FLOATS, ndim=3)
        B, S, H = x.shape
        y = self.intermediate_act_fn(self.dense(x.reshape(B * S, H)))
        self._cache = x.shape if self.training else None
        return y.reshape(B, S, self.intermediate_size)

    def backward(self, grad_out):
        B, S, H = self._cache_or_raise()
        g = self._check_grad_out(grad_out, (B, S, self.intermediate_size))
        g = self.intermediate_act_fn.backward(g.reshape(B * S, self.intermediate_size))
        return self.dense.backward(g).reshape(B, S, H)

    def get_config(self):
        return {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size}


@register_module
class BertLayer(Module):
    """One post-LN encoder block: a = attention(x, mask); y = output(intermediate(a), a).
    backward: (df, da) = output.backward(g); da += intermediate.backward(df);
    dL/dx = attention.backward(da)."""

    def __init__(self, hidden_size: int, num_attention_heads: int, intermediate_size: int,
                 layer_norm_eps: float = 1e-12, rng=None):
        super().__init__()
        gen = get_rng(rng)
        self.attention = BertAttention(hidden_size, num_attention_heads, layer_norm_eps, rng=gen)
        self.intermediate = BertIntermediate(hidden_size, intermediate_size, rng=gen)
        self.output = BertOutput(intermediate_size, hidden_size, layer_norm_eps, rng=gen)
        self._config = {"hidden_size": self.output.hidden_size,
                        "num_attention_heads": self.attention.get_config()["num_heads"],
                        "intermediate_size": self.output.intermediate_size,
                        "layer_norm_eps": self.output.layer_norm_eps}

    def forward(self, x, attention_mask=None):
        a = self.attention(x, attention_mask)
        return self.output(self.intermediate(a), a)

    def backward(self, grad_out):
        df, da = self.output.backward(grad_out)
        return self.attention.backward(da + self.intermediate.backward(df))

    def get_config(self):
        return dict(self._config)


@register_module
class BertEncoder(Module):
    """``layer``: a :class:`Sequential` of :class:`BertLayer` (children "0".."n-1", so the
    names are ``encoder.layer.3....``); forward runs them in turn with the same mask."""

    def __init__(self, num_hidden_layers: int, hidden_size: int, num_attention_heads: int,
                 intermediate_size: int, layer_norm_eps: float = 1e-12, rng=None):
        super().__init__()
        n = check_int(num_hidden_layers, "num_hidden_layers", min_value=1)
        gen = get_rng(rng)
        self.layer = Sequential(*(BertLayer(hidden_size, num_attention_heads, intermediate_size,
                                            layer_norm_eps, rng=gen) for _ in range(n)))
        self._config = {"num_hidden_layers": n, **self.layer[0].get_config()}

    def forward(self, x, attention_mask=None):
        for layer in self.layer:
            x = layer(x, attention_mask)
        return x

    def backward(self, grad_out):
        for layer in reversed(list(self.layer)):
            grad_out = layer.backward(grad_out)
        return grad_out

    def get_config(self):
        return dict(self._config)


@register_module
class BertEmbeddings(Module):
    """x_0 = LN(word_embeddings[ids] + position_embeddings[0..S-1] + token_type_embeddings[t]).

    Children ``word_embeddings``, ``position_embeddings``, ``token_type_embeddings``,
    ``LayerNorm``; buffer ``position_ids`` = [[0, 1, ..., max_position_embeddings - 1]]
    (int64, as in Hugging Face checkpoints).  forward(input_ids [B, S], token_type_ids
    [B, S] or None = all 0) -> [B, S, H]; backward adds the three tables' gradients.
    """

    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int = 512,
                 type_vocab_size: int = 2, layer_norm_eps: float = 1e-12, pad_token_id=0, rng=None):
        super().__init__()
        gen = get_rng(rng)
        self.word_embeddings = Embedding(vocab_size, hidden_size, padding_idx=pad_token_id, rng=gen)
        self.position_embeddings = Embedding(max_position_embeddings, hidden_size, rng=gen)
        self.token_type_embeddings = Embedding(type_vocab_size, hidden_size, rng=gen)
        self.LayerNorm = LayerNorm(hidden_size, eps=layer_norm_eps)
        self.register_buffer("position_ids", np.arange(self.position_embeddings.num_embeddings,
                                                       dtype=np.int64).reshape(1, -1))

    def forward(self, input_ids, token_type_ids=None):
        ids = _check_ids(input_ids, "input_ids", self.word_embeddings.num_embeddings)
        if ids.ndim != 2:
            raise ShapeError(f"input_ids: expected a 2-D [batch, seq] array, got shape {ids.shape}")
        B, S = ids.shape
        max_pos = self.position_embeddings.num_embeddings
        if S > max_pos:
            raise ShapeError(
                f"input_ids: expected at most max_position_embeddings={max_pos} tokens per row, got {S}")
        if token_type_ids is None:
            types = np.zeros((B, S), np.int64)
        else:
            types = _check_ids(token_type_ids, "token_type_ids",
                               self.token_type_embeddings.num_embeddings, shape=(B, S))
        pos = np.broadcast_to(self.position_ids[:, :S], (B, S))
        e = (self.word_embeddings(ids) + self.position_embeddings(pos)
             + self.token_type_embeddings(types))
        return self.LayerNorm(e)

    def backward(self, grad_out):
        d = self.LayerNorm.backward(grad_out)
        for m in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            m.backward(d)
        return None

    def get_config(self):
        return {"vocab_size": self.word_embeddings.num_embeddings,
                "hidden_size": self.word_embeddings.embedding_dim,
                "max_position_embeddings": self.position_embeddings.num_embeddings,
                "type_vocab_size": self.token_type_embeddings.num_embeddings,
                "layer_norm_eps": self.LayerNorm.eps,
                "pad_token_id": self.word_embeddings.padding_idx}


@register_module
class BertPooler(Module):
    """pooled = tanh(x[:, 0] W^T + b): the [CLS] vector through ``dense`` and ``activation``
    (BERT's next-sentence head).  [B, S, H] -> [B, H]."""

    def __init__(self, hidden_size: int, rng=None):
        super().__init__()
        self.hidden_size = check_int(hidden_size, "hidden_size", min_value=1)
        self.dense = Linear(self.hidden_size, self.hidden_size, rng=get_rng(rng))
        self.activation = Tanh()
        self._cache = None

    def forward(self, x):
        x = check_array(x, "x", dtypes=_FLOATS, ndim=3)
        self._cache = x.shape if self.training else None
        return self.activation(self.dense(x[:, 0]))

    def backward(self, grad_out):
        shape = self._cache_or_raise()
        d0 = self.dense.backward(self.activation.backward(grad_out))
        dx = np.zeros(shape, d0.dtype)
        dx[:, 0] = d0
        return dx

    def get_config(self):
        return {"hidden_size": self.hidden_size}


@register_module
class BertModel(Module):
    """The BERT encoder (Devlin et al. 2019) with Hugging Face's module names:
    ``embeddings`` (:class:`BertEmbeddings`), ``encoder`` (:class:`BertEncoder`) and, when
    ``add_pooling_layer``, ``pooler`` (:class:`BertPooler`, not run by ``forward``: call
    ``model.pooler(hidden)`` for the pooled [CLS] output).

    forward(input_ids [B, S] int, attention_mask [B, S] 0/1 or None, token_type_ids [B, S]
    or None) -> last hidden state [B, S, H] in the parameters' dtype.
    backward(dL/dhidden) adds every parameter's gradient and returns None (ids have none).
    The defaults are all-MiniLM-L6-v2's sizes; weights are random until loaded.
    """

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 384, num_hidden_layers: int = 6,
                 num_attention_heads: int = 12, intermediate_size: int = 1536,
                 max_position_embeddings: int = 512, type_vocab_size: int = 2,
                 layer_norm_eps: float = 1e-12, pad_token_id=0, add_pooling_layer: bool = True, rng=None):
        super().__init__()
        gen = get_rng(rng)
        self.embeddings = BertEmbeddings(vocab_size, hidden_size, max_position_embeddings,
                                         type_vocab_size, layer_norm_eps, pad_token_id, rng=gen)
        self.encoder = BertEncoder(num_hidden_layers, hidden_size, num_attention_heads,
                                   intermediate_size, layer_norm_eps, rng=gen)
        if _check_bool(add_pooling_layer, "add_pooling_layer"):
            self.pooler = BertPooler(hidden_size, rng=gen)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, attention_mask)

    def backward(self, grad_out):
        self.embeddings.backward(self.encoder.backward(grad_out))
        return None

    def get_config(self):
        e, c = self.embeddings.get_config(), self.encoder.get_config()
        return {"vocab_size": e["vocab_size"], "hidden_size": e["hidden_size"],
                "num_hidden_layers": c["num_hidden_layers"],
                "num_attention_heads": c["num_attention_heads"],
                "intermediate_size": c["intermediate_size"],
                "max_position_embeddings": e["max_position_embeddings"],
                "type_vocab_size": e["type_vocab_size"], "layer_norm_eps": e["layer_norm_eps"],
                "pad_token_id": e["pad_token_id"], "add_pooling_layer": "pooler" in self._modules}
