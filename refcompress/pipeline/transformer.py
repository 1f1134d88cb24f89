"""Compress a BERT sentence encoder layer by layer, and measure what each method keeps.

The 36 encoder Linear layers of all-MiniLM-L6-v2 (6 x query, key, value, attention output,
FFN in, FFN out) are replaced one transformer layer at a time.  Methods that look at data
(GPTQ, AWQ, SmoothQuant, SparseGPT, Wanda, data-aware SVD) see calibration inputs captured
with hooks while the calibration sentences run through the model *as compressed so far* --
layer i is calibrated on what the compressed layers 0..i-1 actually produce, as GPTQ and
SparseGPT do.  Each calibration sentence runs alone (no padding), so no padded position
enters a Hessian, a range or an activation norm.

``METHODS`` maps a name to how one Linear is replaced; :func:`compress_encoder` applies a
method to a model; :func:`fidelity_table` runs several and compares each compressed model's
embeddings with the float model's on the evaluation sentences
(:func:`refcompress.pipeline.metrics.embedding_fidelity`).  The calibration and evaluation
sentences (:mod:`refcompress.data.sentences`) share no sentence.

Quantization-aware training of the same 36 layers: :func:`prepare_encoder_qat` (fake-quantized
inputs and weights on W8A8Linear's grid), :func:`distill_encoder` (a few steps against the
float model: hidden-state MSE plus MiniLM's attention-probability KL, :func:`distill_loss`),
:func:`convert_encoder_qat` (static W8A8Linear layers on the integer kernels).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import nn
from ..models import blas_threads
from ..data.sentences import CALIBRATION_SENTENCES, EVAL_SENTENCES
from .._hessian import layer_hessian_diag
from ..errors import ArgumentError
from ..lowrank import LowRankLinear, truncated_svd, whitened_svd
from ..prune import NMLinear, nm_mask, nm_permutation, sparsegpt, wanda, wanda_scores
from ..prune.magnitude import mask_by_amount
from .._validation import check_float, check_int
from ..distill import Taps, attention_probability_loss
from ..quant import QuantSpec, awq, bias_correction, convert_qat_linears, gptq, prepare_qat_linears, smoothquant_scales
from ..quant.modules import WeightOnlyLinear
from ..quant.qparams import calibrate, dequantize, quantize
from ..quant.rotation import hadamard_rotate, random_signs
from ..quant.w8a8 import W8A8Linear
from .metrics import embedding_fidelity

__all__ = ["ENCODER_LINEARS", "FFN_LINEARS", "Method", "METHODS", "encoder_linear_names",
           "capture_inputs", "compress_encoder", "fidelity_table", "FidelityRow", "ffn_rank",
           "prepare_encoder_qat", "convert_encoder_qat", "distill_loss", "distill_encoder"]

#: The Linear layers of one BERT encoder layer, relative to ``encoder.layer.N``.
ENCODER_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense", "intermediate.dense", "output.dense")
FFN_LINEARS = ("intermediate.dense", "output.dense")


def encoder_linear_names(model: nn.Module) -> list[list[str]]:
    """Dotted names of the encoder Linear layers of a BertModel, one list per layer."""
    layers = model.get_submodule("encoder.layer")
    return [[f"encoder.layer.{i}.{s}" for s in ENCODER_LINEARS] for i in range(len(layers._modules))]


def capture_inputs(encoder, sentences, names, *, weighting: str = "token") -> dict:
    """Inputs seen by the modules ``names`` of ``encoder.model`` while ``sentences`` run
    one at a time: ``{name: float32 [tokens, in]}`` (no padded position included).

    weighting : how sentence s's n_s rows x_t are scaled (T = mean tokens per sentence);
                what a quadratic statistic (the Hessian X^T X, squared output errors,
                column norms) then weighs:

                ``"token"``    - as they are: every token counts once (what ranges and
                                 abs-max statistics need);
                ``"sentence"`` - by sqrt(T / n_s): every sentence weighs as much as T
                                 tokens, spread over its own;
                ``"mean"``     - by T / n_s: the weight of the error of a *mean* over the
                                 sentence's tokens.  The embedding is that mean, and an
                                 output error e_t per token moves it by (1/n_s) sum_t e_t,
                                 whose expected squared norm for independent errors is
                                 (1/n_s^2) sum_t |e_t|^2: row t carries 1/n_s^2, so short
                                 sentences, whose mean rests on a few tokens, count most.
    """
    powers = {"token": 0.0, "sentence": 0.5, "mean": 1.0}
    if weighting not in powers:
        raise ArgumentError(f"weighting: expected one of {sorted(powers)}, got {weighting!r}")
    store = {n: [] for n in names}
    handles = []
    for n in names:
        def hook(module, inputs, output, n=n):
            x = np.asarray(inputs[0])
            store[n].append(x.reshape(-1, x.shape[-1]).astype(np.float32))
        handles.append(encoder.model.get_submodule(n).register_forward_hook(hook))
    try:
        for s in sentences:
            encoder.encode([s])
    finally:
        for h in handles:
            h.remove()
    if powers[weighting] and names:
        counts = [len(x) for x in store[names[0]]]
        mean = float(np.mean(counts))
        for n in names:
            store[n] = [x * np.float32((mean / len(x)) ** powers[weighting]) for x in store[n]]
    return {n: np.concatenate(v) for n, v in store.items()}


def ffn_rank(m: int, n: int, fraction: float) -> int:
    """Largest rank r whose factors hold at most ``fraction`` of the m n weights:
    (m + n) r <= fraction m n (Sigma folded into the factors)."""
    return max(1, int(fraction * m * n // (m + n)))


# ---- one Linear -> its replacement ------------------------------------------------------------


def _bias(lin):
    return None if lin.bias is None else lin.bias.data.astype(np.float32)


def _weight_only(lin, bits, group_size, codes=None, qparams=None, input_scale=None, symmetric=True,
                 input_signs=None, rotate=False):
    layer = WeightOnlyLinear(lin.in_features, lin.out_features, lin.bias is not None, bits=bits,
                             group_size=group_size, input_scale=input_scale is not None, symmetric=symmetric,
                             rotate=rotate or input_signs is not None)
    if codes is None:
        return layer.set_weight(lin.weight.data.astype(np.float32), _bias(lin)).eval()
    return layer.set_quantized(codes, qparams, bias=_bias(lin), input_scale=input_scale,
                               input_signs=input_signs).eval()


def _rotated(lin, x, rotate):
    """(W Q, X Q, signs) under the randomized Hadamard rotation Q of the layer's inputs
    (quant.rotation; the signs a WeightOnlyLinear(rotate=True) draws), or (W, X, None)."""
    w = lin.weight.data.astype(np.float32)
    if not rotate:
        return w, x, None
    d = random_signs(lin.in_features, 0)
    return hadamard_rotate(w, d), hadamard_rotate(x, d), d


def _spec(bits, group_size, symmetric=True):
    form = {} if symmetric else dict(signed=False, symmetric=False, narrow_range=False)
    if group_size is None:
        return QuantSpec(bits, granularity="channel", axis=0, **form)
    return QuantSpec(bits, granularity="group", group_size=group_size, **form)


def _rtn(lin, x, bits=8, group_size=None, per_tensor=False, symmetric=True, rotate=False):
    if per_tensor and rotate:
        raise ArgumentError("rotate: not with per_tensor (the per-tensor method is a float simulation)")
    if per_tensor:  # WeightOnlyLinear stores per row or per group: simulate one scale
        w = lin.weight.data.astype(np.float32)
        qp = calibrate(w, QuantSpec(bits))
        out = nn.Linear(lin.in_features, lin.out_features, lin.bias is not None)
        out.weight.data = dequantize(quantize(w, qp), qp)
        if lin.bias is not None:
            out.bias.data = lin.bias.data.astype(np.float32).copy()
        return out.eval()
    return _weight_only(lin, bits, group_size, symmetric=symmetric, rotate=rotate)


def _gptq(lin, x, bits=4, group_size=None, act_order=True, clip_search="hessian", damp=0.01, symmetric=False,
          rotate=False):
    w, x, d = _rotated(lin, x, rotate)
    r = gptq(w, x, spec=_spec(bits, group_size, symmetric), act_order=act_order, clip_search=clip_search, damp=damp)
    return _weight_only(lin, bits, group_size, r.codes, r.qparams, symmetric=symmetric, input_signs=d)


def _awq(lin, x, bits=4, group_size=None, symmetric=False, rotate=False):
    w, x, d = _rotated(lin, x, rotate)
    r = awq(w, x, spec=_spec(bits, group_size, symmetric))
    return _weight_only(lin, bits, group_size, r.codes, r.qparams, input_scale=r.input_scale, symmetric=symmetric,
                        input_signs=d)


def _w8a8(lin, x, activation="static", alpha=None):
    w = lin.weight.data.astype(np.float32)
    smooth = None
    if alpha is not None:
        smooth = smoothquant_scales(np.abs(x).max(axis=0), w, alpha=alpha)
    return W8A8Linear.from_float(w, _bias(lin), activation=activation, smooth=smooth,
                                 calibration=x if activation == "static" else None)


def _with_weight(lin, w):
    out = copy.deepcopy(lin)
    out.weight.data = np.ascontiguousarray(w, dtype=lin.weight.data.dtype)
    return out.eval()


def _magnitude(lin, x, sparsity=None, n=None, m=None):
    w = lin.weight.data
    keep = nm_mask(w, n, m) if n is not None else mask_by_amount(np.abs(w), sparsity)
    return _with_weight(lin, np.where(keep, w, 0))


def _sparsegpt(lin, x, sparsity=None, n=None, m=None):
    return _with_weight(lin, sparsegpt(lin.weight.data.astype(np.float32), x, sparsity=sparsity, n=n, m=m).weight)


def _wanda(lin, x, sparsity=None, n=None, m=None, correct_bias=False, permute=False, update=False):
    if correct_bias and lin.bias is None:
        raise ArgumentError("correct_bias: the layer has no bias to correct")
    if permute and n is None:
        raise ArgumentError("permute: only for an N:M pattern (give n and m, not sparsity)")
    w = lin.weight.data.astype(np.float32)
    perm = None
    if permute:
        # Pool & Yu 2021: choose which inputs share an N:M group so the mask keeps more of
        # Wanda's score; the pattern then holds along x[:, perm] (an NMLinear gathers it).
        if sparsity is not None or m is None or w.shape[1] % m:
            raise ArgumentError(f"permute: expected n and m (not sparsity) with the layer's "
                                f"{w.shape[1]} inputs divisible by m, got sparsity={sparsity}, m={m}")
        perm = nm_permutation(wanda_scores(w, np.sqrt(layer_hessian_diag(x, None, w.shape[1]))), n, m)
        pruned = np.empty_like(w)
        pruned[:, perm] = wanda(w[:, perm], x[:, perm], n=n, m=m, update=update).weight
    else:
        pruned = wanda(w, x, sparsity=sparsity, n=n, m=m, update=update).weight
    bias = _bias(lin)
    if correct_bias:
        # Nagel et al. 2019's bias correction, b += -(W~ - W) E[x]: the kept weights stay
        # Wanda's; only the mean output shift of the pruned ones is put back.  Under the
        # "mean" weighting, x.mean(0) is the mean over sentences of each sentence's mean input.
        bias = (bias + bias_correction(w, pruned, x.mean(axis=0))).astype(np.float32)
    if perm is not None:
        return NMLinear.from_dense(pruned, n, m, bias, input_perm=perm).eval()
    out = _with_weight(lin, pruned)
    if bias is not None:
        out.bias.data = bias.astype(out.bias.data.dtype)
    return out


def _low_rank(lin, a, b):
    out = LowRankLinear(lin.in_features, lin.out_features, a.shape[1], lin.bias is not None)
    out.first.weight.data = np.ascontiguousarray(b, np.float32)
    out.second.weight.data = np.ascontiguousarray(a, np.float32)
    if lin.bias is not None:
        out.second.bias.data = lin.bias.data.astype(np.float32).copy()
    return out.eval()


def _svd(lin, x, fraction=0.5):
    r = ffn_rank(lin.out_features, lin.in_features, fraction)
    return _low_rank(lin, *truncated_svd(lin.weight.data.astype(np.float32), r))


def _svd_data(lin, x, fraction=0.5):
    r = ffn_rank(lin.out_features, lin.in_features, fraction)
    return _low_rank(lin, *whitened_svd(lin.weight.data.astype(np.float32), x, r))


@dataclass(frozen=True)
class Method:
    """How to replace one Linear: ``make(linear, calibration_inputs_or_None, **kwargs)``."""

    make: Callable
    kwargs: dict = field(default_factory=dict)
    needs_data: bool = False
    layers: tuple = ENCODER_LINEARS  # which of each encoder layer's Linears it replaces
    description: str = ""
    weighting: str = "sentence"  # how calibration tokens count (capture_inputs); see WEIGHTING


#: How each kind of method weighs calibration tokens (:func:`capture_inputs`): ranges and
#: abs-max statistics need the tokens as they are; the weight quantizers fit the error of the
#: mean-pooled embedding ("mean", measured best for GPTQ and AWQ), and so does Wanda's bias
#: correction (its E[x] is then the mean of the sentences' mean inputs); pruning and low rank
#: weigh sentences equally ("sentence": "mean" was measured slightly worse for SparseGPT
#: and plain Wanda, docs/transformers.md).
WEIGHTING = {"w8a8": "token", "gptq": "mean", "awq": "mean", "wanda_bc": "mean"}


METHODS = {
    "int8 per-channel RTN": Method(_rtn, dict(bits=8), description="weights only, round to nearest"),
    "int8 per-tensor RTN": Method(_rtn, dict(bits=8, per_tensor=True), description="one scale per layer (simulated)"),
    "int4 per-channel RTN": Method(_rtn, dict(bits=4)),
    "int4 g32 RTN": Method(_rtn, dict(bits=4, group_size=32)),
    "int4 per-channel RTN affine": Method(_rtn, dict(bits=4, symmetric=False),
                                         description="unsigned codes, zero point per row"),
    "int4 g32 RTN affine": Method(_rtn, dict(bits=4, group_size=32, symmetric=False)),
    "int4 per-channel GPTQ": Method(_gptq, dict(bits=4), True, weighting=WEIGHTING["gptq"]),
    "int4 g32 GPTQ": Method(_gptq, dict(bits=4, group_size=32), True, weighting=WEIGHTING["gptq"]),
    "int4 per-channel GPTQ rotated": Method(_gptq, dict(bits=4, rotate=True), True, weighting=WEIGHTING["gptq"],
                                            description="randomized Hadamard rotation of each layer's inputs"),
    "int4 per-channel AWQ": Method(_awq, dict(bits=4), True, weighting=WEIGHTING["awq"]),
    "int4 g32 AWQ": Method(_awq, dict(bits=4, group_size=32), True, weighting=WEIGHTING["awq"]),
    "W8A8 static": Method(_w8a8, dict(activation="static"), True, weighting=WEIGHTING["w8a8"]),
    "W8A8 static SmoothQuant": Method(_w8a8, dict(activation="static", alpha=0.8), True,
                                      weighting=WEIGHTING["w8a8"]),
    "W8A8 dynamic per-tensor": Method(_w8a8, dict(activation="tensor"), True, weighting=WEIGHTING["w8a8"]),
    "W8A8 dynamic per-token": Method(_w8a8, dict(activation="token"), True, weighting=WEIGHTING["w8a8"]),
    "W8A8 per-token SmoothQuant": Method(_w8a8, dict(activation="token", alpha=0.5), True,
                                         weighting=WEIGHTING["w8a8"]),
    "50% magnitude": Method(_magnitude, dict(sparsity=0.5)),
    "50% SparseGPT": Method(_sparsegpt, dict(sparsity=0.5), True),
    "50% Wanda": Method(_wanda, dict(sparsity=0.5), True),
    "50% Wanda + bias correction": Method(_wanda, dict(sparsity=0.5, correct_bias=True), True,
                                          weighting=WEIGHTING["wanda_bc"]),
    "50% Wanda + weight update": Method(_wanda, dict(sparsity=0.5, update=True), True,
                                        description="Wanda's mask, SparseGPT's OBS update of the kept weights"),
    "2:4 magnitude": Method(_magnitude, dict(n=2, m=4)),
    "2:4 SparseGPT": Method(_sparsegpt, dict(n=2, m=4), True),
    "2:4 Wanda": Method(_wanda, dict(n=2, m=4), True),
    "2:4 Wanda + bias correction": Method(_wanda, dict(n=2, m=4, correct_bias=True), True,
                                          weighting=WEIGHTING["wanda_bc"]),
    "2:4 Wanda permuted + bias correction": Method(
        _wanda, dict(n=2, m=4, correct_bias=True, permute=True), True, weighting=WEIGHTING["wanda_bc"],
        description="input channels permuted for the 2:4 groups (Pool & Yu 2021); NMLinear layers"),
    "2:4 Wanda + weight update": Method(_wanda, dict(n=2, m=4, update=True), True,
                                        description="Wanda's mask, SparseGPT's OBS update of the kept weights"),
    "SVD 50% FFN": Method(_svd, dict(fraction=0.5), layers=FFN_LINEARS),
    "data-aware SVD 50% FFN": Method(_svd_data, dict(fraction=0.5), True, layers=FFN_LINEARS),
}


def compress_encoder(encoder, method, *, calibration=CALIBRATION_SENTENCES, **overrides):
    """A copy of ``encoder`` (a :class:`refcompress.bert.SentenceEncoder`) whose encoder
    Linear layers are replaced by ``method`` (a name in :data:`METHODS` or a
    :class:`Method`); ``overrides`` update the method's keyword arguments."""
    if isinstance(method, str):
        if method not in METHODS:
            raise ArgumentError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
        method = METHODS[method]
    if not isinstance(method, Method):
        raise ArgumentError(f"method: expected a method name or a Method, got {type(method).__name__}")
    kwargs = {**method.kwargs, **overrides}
    out = copy.copy(encoder)
    out.model = copy.deepcopy(encoder.model)
    # The per-layer algebra is many small BLAS calls, which OpenBLAS runs fastest on one
    # thread (its thread start-up dominates at these sizes).
    with blas_threads(1):
        for group in encoder_linear_names(out.model):
            names = [n for n in group if n.split(".", 3)[3] in method.layers]
            inputs = capture_inputs(out, calibration, names, weighting=method.weighting) if method.needs_data else {}
            for n in names:
                out.model.set_submodule(n, method.make(out.model.get_submodule(n), inputs.get(n), **kwargs))
    return out


# ---- quantization-aware training of the encoder Linears --------------------------------------


def _with_model(encoder, model):
    out = copy.copy(encoder)
    out.model = model
    return out


def prepare_encoder_qat(encoder, *, layers=ENCODER_LINEARS, weight_bits: int = 8, act_bits: int = 8,
                        lsq: bool = False):
    """A copy of ``encoder`` (a SentenceEncoder; its model in training mode) whose encoder
    Linears ``layers`` (names relative to ``encoder.layer.N``; default all six, 36 in
    MiniLM) are :class:`refcompress.quant.QATInputLinear`: the training simulation of a
    static W8A8Linear (:func:`refcompress.quant.prepare_qat_linears`)."""
    if isinstance(layers, str) or not hasattr(layers, "__iter__"):
        raise ArgumentError(f"layers: expected a list of names from {list(ENCODER_LINEARS)}, got {layers!r}")
    layers = tuple(layers)
    if not layers or any(s not in ENCODER_LINEARS for s in layers):
        raise ArgumentError(f"layers: expected a non-empty list of names from {list(ENCODER_LINEARS)}, got {layers!r}")
    names = [n for group in encoder_linear_names(encoder.model) for n in group if n.split(".", 3)[3] in layers]
    return _with_model(encoder, prepare_qat_linears(encoder.model, names, weight_bits=weight_bits,
                                                    act_bits=act_bits, lsq=lsq))


def convert_encoder_qat(encoder):
    """A copy of a trained :func:`prepare_encoder_qat` encoder (eval mode) whose QAT layers
    are static W8A8Linear layers (:func:`refcompress.quant.convert_qat_linears`)."""
    return _with_model(encoder, convert_qat_linears(encoder.model))


def _softmax_names(model):
    layers = len(model.get_submodule("encoder.layer")._modules)
    return [f"encoder.layer.{i}.attention.self.softmax" for i in range(layers)]


def distill_loss(student, teacher, batch, *, hidden_weight: float = 1.0, attention_weight: float = 1.0) -> dict:
    """One forward and backward of ``student`` (a BertModel in training mode, e.g. a QAT
    copy) against ``teacher`` (the float BertModel, run in eval mode) on ``batch`` (a
    tokenizer output: input_ids, attention_mask, token_type_ids); adds the gradient into
    the student's ``.grad`` and returns ``{"loss", "hidden", "attention"}``.

        hidden    = (1 / (T H)) sum_{b, s: m[b, s] = 1} ||h_s[b, s] - h_t[b, s]||^2
                    (last hidden states, T real tokens; TinyBERT's hidden-state loss),
        attention = (1 / L) sum_l KL(A_t^l || A_s^l)   (refcompress.distill's
                    attention_probability_loss per layer l, MiniLM's attention transfer),
        loss      = hidden_weight * hidden + attention_weight * attention.

    The attention gradients enter at each layer's ``attention.self.softmax`` (Taps); one
    ``student.backward`` carries both terms.  Padded query rows are in the KL average (their
    rows are distributions over the real keys, as for real queries).  A student probability
    that underflowed to 0 is taken as the smallest normal float in the KL.
    """
    hidden_weight = check_float(hidden_weight, "hidden_weight", min_value=0.0)
    attention_weight = check_float(attention_weight, "attention_weight", min_value=0.0)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    names = _softmax_names(student)
    was = teacher.training
    teacher.eval()
    try:
        with Taps(teacher, names) as t_taps:
            h_t = teacher(ids, mask, types)
            a_t = [t_taps[n] for n in names]
    finally:
        teacher.train(was)
    with Taps(student, names, inject=True) as s_taps:
        h_s = student(ids, mask, types)
        if h_s.shape != h_t.shape:
            raise ArgumentError(f"student: hidden states of shape {h_s.shape}, the teacher's are {h_t.shape}")
        m = np.asarray(mask).astype(h_s.dtype)[:, :, None]
        n = float(m.sum()) * h_s.shape[-1]
        d = (h_s - h_t) * m
        hidden = float(np.sum(d * d) / n)
        attention = 0.0
        for name, pt in zip(names, a_t):
            ps = s_taps[name]
            # A float32 softmax underflows to exactly 0 about 100 below its row's maximum
            # score, where the KL is infinite.  Such an entry is evaluated at the smallest
            # normal float instead (its term P_t log(P_t / P_s) is negligible unless the
            # teacher puts weight where the student puts none); its gradient -P_t / (M tiny)
            # stays finite and the softmax backward multiplies it by P_s = 0.
            v, g = attention_probability_loss(np.maximum(ps, np.finfo(ps.dtype).tiny), pt)
            attention += v / len(names)
            s_taps.add_grad(name, (g * (attention_weight / len(names))).astype(h_s.dtype))
        student.backward((d * (2.0 * hidden_weight / n)).astype(h_s.dtype))
    return {"loss": hidden_weight * hidden + attention_weight * attention, "hidden": hidden, "attention": attention}


def distill_encoder(student, teacher, sentences=CALIBRATION_SENTENCES, *, steps: int = 50, batch_size: int = 8,
                    lr: float = 1e-5, hidden_weight: float = 1.0, attention_weight: float = 1.0, seed: int = 0,
                    optimizer=None) -> list:
    """Train ``student`` (a SentenceEncoder, e.g. :func:`prepare_encoder_qat`'s copy) in
    place for ``steps`` AdamW steps (no weight decay) of :func:`distill_loss` against
    ``teacher`` (the float SentenceEncoder) on batches of ``batch_size`` of ``sentences``,
    reshuffled (``seed``) each pass; ``optimizer``: another refcompress.nn Optimizer over the
    student's parameters instead (``lr`` then unused).  Returns the per-step loss dicts; the
    student's model is left in eval mode (input ranges frozen: ``encode`` in training mode
    would move them).  Each batch is cut to its longest sentence; its padded rows run
    through the quantizers too, so they enter the ranges."""
    steps = check_int(steps, "steps", min_value=1)
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    sentences = list(sentences)
    if not sentences:
        raise ArgumentError("sentences: expected at least one sentence")
    model = student.model.train()
    opt = optimizer if optimizer is not None else nn.AdamW(list(model.parameters()), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    order, pos, history = rng.permutation(len(sentences)), 0, []
    try:
        for _ in range(steps):
            if pos >= len(order):
                order, pos = rng.permutation(len(sentences)), 0
            enc = student.tokenizer([sentences[i] for i in order[pos:pos + batch_size]])
            pos += batch_size
            S = int(enc["attention_mask"].sum(axis=1).max())
            batch = {k: v[:, :S] for k, v in enc.items()}
            opt.zero_grad()
            history.append(distill_loss(model, teacher.model, batch, hidden_weight=hidden_weight,
                                        attention_weight=attention_weight))
            opt.step()
    finally:
        model.eval()
    return history


@dataclass
class FidelityRow:
    method: str
    min_cos: float
    mean_cos: float
    spearman: float
    seconds: float


def fidelity_table(encoder, methods=None, *, sentences=EVAL_SENTENCES, calibration=CALIBRATION_SENTENCES,
                   progress=None) -> list:
    """For each method: the compressed model's embedding fidelity on ``sentences`` against
    ``encoder``'s float embeddings, and the seconds the compression took."""
    names = list(METHODS) if methods is None else list(methods)
    reference = encoder.encode(list(sentences))
    rows = []
    for name in names:
        t0 = time.perf_counter()
        compressed = compress_encoder(encoder, name, calibration=calibration)
        seconds = time.perf_counter() - t0
        f = embedding_fidelity(reference, compressed.encode(list(sentences)))
        rows.append(FidelityRow(name, f["min_cos"], f["mean_cos"], f["spearman"], seconds))
        if progress is not None:
            progress(rows[-1])
    return rows


# ---- recipes: the CLI path -------------------------------------------------------------------

_STAGE_KEYS = {
    "quantize": {"method": ("rtn", "gptq", "awq", "w8a8"), "bits": (4, 8), "group_size": int,
                 "activation": ("static", "tensor", "token"), "alpha": float, "per_tensor": bool,
                 "symmetric": bool, "rotate": bool},
    "prune": {"method": ("magnitude", "sparsegpt", "wanda"), "sparsity": float, "n": int, "m": int,
              "correct_bias": bool, "permute": bool, "update": bool},
    "lowrank": {"method": ("svd", "data_aware"), "ffn_fraction": float},
}
_MAKERS = {("quantize", "rtn"): (_rtn, False), ("quantize", "gptq"): (_gptq, True),
           ("quantize", "awq"): (_awq, True), ("quantize", "w8a8"): (_w8a8, True),
           ("prune", "magnitude"): (_magnitude, False), ("prune", "sparsegpt"): (_sparsegpt, True),
           ("prune", "wanda"): (_wanda, True), ("lowrank", "svd"): (_svd, False),
           ("lowrank", "data_aware"): (_svd_data, True)}
_ALLOWED = {"rtn": {"bits", "group_size", "per_tensor", "symmetric", "rotate"},
            "gptq": {"bits", "group_size", "symmetric", "rotate"},
            "awq": {"bits", "group_size", "symmetric", "rotate"}, "w8a8": {"activation", "alpha"},
            "magnitude": {"sparsity", "n", "m"}, "sparsegpt": {"sparsity", "n", "m"},
            "wanda": {"sparsity", "n", "m", "correct_bias", "permute", "update"}, "svd": {"ffn_fraction"}, "data_aware": {"ffn_fraction"}}


def stage_method(stage: dict, where: str = "stage") -> Method:
    """The :class:`Method` of one transformer recipe stage, validated.

    ``{"kind": "quantize", "method": "gptq", "bits": 4, "group_size": 32}`` (``"symmetric": false``
    for unsigned codes with zero points, ``"rotate": true`` for a randomized Hadamard rotation
    of each layer's inputs; rtn, gptq and awq),
    ``{"kind": "quantize", "method": "w8a8", "activation": "token", "alpha": 0.5}``,
    ``{"kind": "prune", "method": "sparsegpt", "n": 2, "m": 4}`` or ``"sparsity": 0.5``
    (wanda: ``"correct_bias": true`` adds the bias correction, ``"update": true`` SparseGPT's
    reconstruction of the kept weights under Wanda's mask, ``"permute": true`` with n and m
    permutes each layer's inputs for the groups and writes NMLinear layers),
    ``{"kind": "lowrank", "method": "data_aware", "ffn_fraction": 0.5}``.
    Errors name ``where``, the key, the value and what was expected.
    """
    if not isinstance(stage, dict):
        raise ArgumentError(f"{where}: expected a table of keys, got {type(stage).__name__}")
    kind = stage.get("kind")
    if kind not in _STAGE_KEYS:
        raise ArgumentError(f"{where}.kind: expected one of {sorted(_STAGE_KEYS)}, got {kind!r}")
    schema = _STAGE_KEYS[kind]
    method = stage.get("method")
    if method not in schema["method"]:
        raise ArgumentError(f"{where}.method: expected one of {list(schema['method'])} for kind {kind!r}, got {method!r}")
    kwargs = {}
    for key, value in stage.items():
        if key in ("kind", "method"):
            continue
        if key not in _ALLOWED[method]:
            raise ArgumentError(f"{where}.{key}: not a key of method {method!r} (keys: {sorted(_ALLOWED[method])})")
        rule = schema[key]
        ok = (value in rule) if isinstance(rule, tuple) else (
            isinstance(value, rule) and not isinstance(value, bool) if rule is not bool else isinstance(value, bool))
        if rule is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            want = f"one of {list(rule)}" if isinstance(rule, tuple) else f"a{'n' if rule is int else ''} {rule.__name__}"
            raise ArgumentError(f"{where}.{key}: expected {want}, got {value!r}")
        kwargs[key] = value
    if kwargs.get("rotate") and kwargs.get("per_tensor"):  # _rtn refuses it too; here before any work
        raise ArgumentError(f"{where}.rotate: not with per_tensor (the per-tensor method is a float simulation)")
    if kind == "prune" and ("sparsity" in kwargs) == ("n" in kwargs or "m" in kwargs):
        raise ArgumentError(f"{where}: give either sparsity or both n and m")
    if kind == "prune" and "sparsity" in kwargs and not 0.0 <= kwargs["sparsity"] < 1.0:
        raise ArgumentError(f"{where}.sparsity: expected a number in [0, 1), got {kwargs['sparsity']!r}")
    if kwargs.get("permute") and "n" not in kwargs:  # _wanda refuses it too; here before any work
        raise ArgumentError(f"{where}.permute: only for an N:M pattern (give n and m, not sparsity)")
    if kind == "prune" and "n" in kwargs and not ("m" in kwargs and 0 < kwargs["n"] <= kwargs["m"]):
        raise ArgumentError(f"{where}: expected 0 < n <= m, got n={kwargs.get('n')!r}, m={kwargs.get('m')!r}")
    if "ffn_fraction" in kwargs:
        if not 0.0 < kwargs["ffn_fraction"] <= 1.0:
            raise ArgumentError(f"{where}.ffn_fraction: expected a number in (0, 1], got {kwargs['ffn_fraction']!r}")
        kwargs["fraction"] = kwargs.pop("ffn_fraction")
    if "activation" in kwargs or method == "w8a8":
        kwargs.setdefault("activation", "static")
    make, needs_data = _MAKERS[(kind, method)]
    return Method(make, kwargs, needs_data, FFN_LINEARS if kind == "lowrank" else ENCODER_LINEARS,
                  description=f"{kind} {method} {kwargs}",
                  weighting=WEIGHTING.get("wanda_bc" if kwargs.get("correct_bias") else method, "sentence"))


def load_transformer_recipe(path) -> tuple:
    """(name, [Method, ...]) from a TOML recipe with ``model = "bert"`` and ``[[stage]]``
    tables (see :func:`stage_method`).  Stages run in order; a quantize or lowrank stage, or a
    prune stage with ``permute``, replaces the Linear layers, so it must be the last stage."""
    import os
    import tomllib

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ArgumentError(f"recipe: cannot read {path!r}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ArgumentError(f"recipe: {path!r} is not valid TOML: {e}") from None
    if doc.get("model") != "bert":
        raise ArgumentError(f"recipe {path!r}: model: expected \"bert\" for a transformer recipe, got {doc.get('model')!r}")
    stages = doc.get("stage")
    if not isinstance(stages, list) or not stages:
        raise ArgumentError(f"recipe {path!r}: expected at least one [[stage]]")
    methods = []
    for i, st in enumerate(stages):
        where = f"recipe {os.path.basename(path)} stage {i}"
        methods.append(stage_method(st, where))
        if st.get("kind") in ("quantize", "lowrank") and i != len(stages) - 1:
            raise ArgumentError(f"{where}: a {st['kind']} stage replaces the Linear layers; it must be the last stage")
        if st.get("permute") and i != len(stages) - 1:
            raise ArgumentError(f"{where}: a permuted prune stage replaces the Linear layers by NMLinear; "
                                f"it must be the last stage")
    return str(doc.get("name", os.path.splitext(os.path.basename(path))[0])), methods


def is_transformer_recipe(path) -> bool:
    """True when the TOML file at ``path`` declares ``model = "bert"``."""
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f).get("model") == "bert"
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False


def load_encoder(spec: str):
    """A float SentenceEncoder from ``"minilm"`` (the installed all-MiniLM-L6-v2) or a
    sentence-transformers BERT directory (config.json, model.safetensors, tokenizer.json)."""
    import os

    from ..bert import load_minilm

    if spec == "minilm":
        return load_minilm()
    if os.path.isdir(spec):
        return load_minilm(spec)
    raise ArgumentError(f"MODEL: expected 'minilm' or a directory with config.json and model.safetensors, got {spec!r}")


def compress_with_recipe(encoder, methods, *, calibration=CALIBRATION_SENTENCES):
    """Apply a recipe's methods in order; returns the compressed SentenceEncoder."""
    out = encoder
    for m in methods:
        out = compress_encoder(out, m, calibration=calibration)
    return out


def fidelity_lines(reference_encoder, compressed_encoder, sentences=EVAL_SENTENCES) -> dict:
    """embedding_fidelity of ``compressed_encoder`` against ``reference_encoder``."""
    return embedding_fidelity(reference_encoder.encode(list(sentences)), compressed_encoder.encode(list(sentences)))
