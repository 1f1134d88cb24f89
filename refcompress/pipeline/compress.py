"""``compress(model, recipe, data)``: run a recipe's stages, keep each stage's model, and
report what each bought.

Per stage the :class:`Report` gives: stored parameters (nonzero / stored weight values),
stored bytes (the state dict of the stage's deployable model as saved: CSR with its index
widths, packed codes, codebooks, Huffman streams, factors), MACs per sample (dense: every
layer counted by its shape; effective: only the nonzero weights), test accuracy, and
latency of the deployable model at batch 1 and 64 through the actual kernels, with the
compression ratio and speedup against the original.  The latencies of all the stages'
models are taken together at the end, in alternating rounds (:func:`time_stages`), so every
speedup compares timings of the same minutes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import nn
from ..errors import DTypeError
from . import metrics
from .recipe import Recipe, load_recipe, recipe_from_dict
from .stages import STAGES, Context, check_applicable, clone_with_masks


@dataclass
class Report:
    stage: str
    parameters: int
    stored_bytes: int
    macs_dense: int
    macs_effective: int
    accuracy: float
    latency_b1: float
    latency_b64: float
    compression: float = 1.0
    speedup_b1: float = 1.0
    speedup_b64: float = 1.0
    seconds: float = 0.0

    def row(self) -> list:
        return [self.stage, f"{self.parameters:,}", f"{self.stored_bytes:,}", f"{self.compression:.1f}x",
                f"{self.macs_dense:,}", f"{self.macs_effective:,}", f"{100 * self.accuracy:.2f}",
                f"{self.latency_b1 * 1e3:.3f}", f"{self.latency_b64 * 1e3:.3f}",
                f"{self.speedup_b1:.2f}x", f"{self.speedup_b64:.2f}x"]


HEADERS = ["stage", "params", "bytes", "ratio", "MACs dense", "MACs eff.", "acc %", "ms b1", "ms b64",
           "speedup b1", "speedup b64"]


@dataclass
class CompressionResult:
    recipe: Recipe
    reports: list = field(default_factory=list)
    models: list = field(default_factory=list)

    @property
    def final(self):
        return self.models[-1]

    def table(self) -> str:
        rows = [HEADERS] + [r.row() for r in self.reports]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(HEADERS))]
        lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_dicts(self) -> list:
        return [asdict(r) for r in self.reports]


def _weight_density(m) -> float | None:
    """Fraction of a layer's weights that are nonzero (None: not a weight layer)."""
    if hasattr(m, "dense_weight"):
        w = m.dense_weight()
        return float(np.count_nonzero(w)) / max(w.size, 1)
    if hasattr(m, "shared"):
        w = m.shared().dense()
        return float(np.count_nonzero(w)) / max(w.size, 1)
    if hasattr(m, "nnz") and hasattr(m, "in_features"):
        return float(m.nnz) / max(m.in_features * m.out_features, 1)
    if hasattr(m, "weight_q"):
        return float(np.count_nonzero(m.weight_q)) / max(m.weight_q.size, 1)
    if hasattr(m, "v_q") and hasattr(m, "u_q"):  # an int8 factored Linear: its two factors' codes
        return float(np.count_nonzero(m.v_q) + np.count_nonzero(m.u_q)) / max(m.v_q.size + m.u_q.size, 1)
    factors = m._factors() if hasattr(type(m), "_factors") else None
    if factors is not None:  # a LowRankLinear counted as one layer: its MACs are its two factors' sizes
        w1, w2 = factors[0], factors[1]
        return float(np.count_nonzero(w1) + np.count_nonzero(w2)) / max(w1.size + w2.size, 1)
    w = getattr(m, "weight", None)
    if w is not None and hasattr(w, "data") and isinstance(w.data, np.ndarray):
        return float(np.count_nonzero(w.data)) / max(w.data.size, 1)
    return None


def _stored_parameters(model) -> int:
    total = 0
    for _, m in model.named_modules():
        if any(True for _ in m.children()):
            continue
        d = _weight_density(m)
        if d is None:
            total += sum(p.size for p in m.parameters(recurse=False))
            continue
        size = sum(a.size for n, a in m.state_dict().items() if n in ("weight", "weight_q", "values", "v_q", "u_q"))
        w = m.dense_weight() if hasattr(m, "dense_weight") else (m.shared().dense() if hasattr(m, "shared") else None)
        if w is not None:
            size = w.size
        elif hasattr(m, "nnz") and hasattr(m, "in_features"):
            size = m.in_features * m.out_features
        bias = getattr(m, "bias", None)
        bias = getattr(m, "bias_q", None) if bias is None else bias  # integer layers store b_q
        bias_n = 0 if bias is None else np.asarray(getattr(bias, "data", bias)).size
        total += int(round(d * size)) + bias_n
    return total


def measure(model, data, label, *, repeats: int = 30, latency: bool = True) -> Report:
    """The report of one deployable model (latencies 0 with ``latency=False``: the caller
    times it, e.g. with :func:`time_stages`)."""
    model = model.eval()
    shape = data.X_test.shape[1:]
    per_layer = metrics.count_macs(model, shape, per_layer=True)
    effective = 0
    for name, macs in per_layer.items():
        d = _weight_density(model.get_submodule(name)) if name != "<root>" else None
        effective += int(round(macs * (d if d is not None else 1.0)))
    x1, x64 = data.X_test[:1], data.X_test[:64]
    return Report(
        stage=label,
        parameters=_stored_parameters(model),
        stored_bytes=_stored_bytes(model),
        macs_dense=int(sum(per_layer.values())),
        macs_effective=effective,
        accuracy=metrics.accuracy(model, data.X_test, data.y_test),
        latency_b1=metrics.measure_latency(model, x1, repeats=repeats) if latency else 0.0,
        latency_b64=metrics.measure_latency(model, x64, repeats=max(repeats // 3, 5)) if latency else 0.0,
    )


def time_stages(result: "CompressionResult", data, *, repeats: int = 30, rounds: int = 5) -> None:
    """Set every report's latencies and speedups from alternating rounds: each round times
    every stage's model (``repeats / rounds`` calls at batch 1, a third of that at batch 64,
    median of each), and a model's latency is the median of its rounds.

    Timing each stage's model once, as it was made, compared the original with the final
    model minutes apart: a burst of load from another process on a shared machine landed on
    one of them only (the CNN's batch-1 speedup read 0.99x in one demo run against 1.27-1.30x
    in the others).  Taking turns puts such a burst on every model alike.
    """
    x1, x64 = data.X_test[:1], data.X_test[:64]
    per1 = max(repeats // rounds, 3)
    per64 = max(per1 // 3, 2)
    t1 = [[] for _ in result.models]
    t64 = [[] for _ in result.models]
    for _ in range(rounds):
        for i, model in enumerate(result.models):
            t1[i].append(metrics.measure_latency(model, x1, repeats=per1, warmup=1))
            t64[i].append(metrics.measure_latency(model, x64, repeats=per64, warmup=1))
    for rep, a, b in zip(result.reports, t1, t64):
        rep.latency_b1, rep.latency_b64 = float(np.median(a)), float(np.median(b))
    base = result.reports[0]
    for rep in result.reports:
        rep.speedup_b1 = base.latency_b1 / rep.latency_b1
        rep.speedup_b64 = base.latency_b64 / rep.latency_b64


def _leaves_with_storage(model):
    """Layers that know their real storage (packed codes not expanded in the state dict),
    each once (a layer used at two places is stored once)."""
    seen, out = set(), []
    for n, m in model.named_modules():
        if hasattr(m, "stored_bytes") and callable(m.stored_bytes) and id(m) not in seen:
            seen.add(id(m))
            out.append((n, m))
    return out


def _stored_bytes(model) -> int:
    """Bytes of ``model`` as stored: each layer with its own stored_bytes() by it, everything
    else by metrics.stored_bytes (each parameter and buffer once, so a module used at two
    places is counted once, although the state dict lists it under both paths)."""
    own = _leaves_with_storage(model)
    names = [n for n, _ in own]
    outer = [m for n, m in own if not any(n != c and (c == "" or n.startswith(c + ".")) for c in names)]
    return (sum(m.stored_bytes() for _, m in own) + metrics.stored_bytes(model)
            - sum(metrics.stored_bytes(m) for m in outer))


def compress(model: nn.Module, recipe, data, *, seed: int = 0, progress: bool = False,
             repeats: int = 30) -> CompressionResult:
    """Run ``recipe`` (a Recipe, a path to a TOML file, or a dict) on a copy of ``model``.

    data : an object with X_train, y_train, X_val, y_val, X_test, y_test (e.g.
           refcompress.data.load_digits()).  The recipe is validated against the model
           before any stage runs.  Returns a :class:`CompressionResult` whose ``reports``
           start with the original model's.
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"model: expected a refcompress.nn.Module, got {type(model).__name__}")
    if not isinstance(recipe, Recipe):
        recipe = recipe_from_dict(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    check_applicable(recipe, model)
    original = clone_with_masks(model).eval()
    ctx = Context(data, original, seed, progress)
    result = CompressionResult(recipe)
    base = measure(original, data, "original", latency=False)
    result.reports.append(base)
    result.models.append(original)
    train = clone_with_masks(model)
    for st in recipe.stages:
        if train is None:  # recipe validation refuses stages after one that ends the float model
            raise RuntimeError(f"stage {st.index} ({st.label()}) has no float model to work on; this is a bug")
        t0 = time.perf_counter()
        nn.manual_seed(seed + st.index)
        train, deploy = STAGES[st.kind](train, st, ctx)
        rep = measure(deploy, data, f"{st.index}. {st.label()}", latency=False)
        rep.seconds = time.perf_counter() - t0
        rep.compression = base.stored_bytes / max(rep.stored_bytes, 1)
        result.reports.append(rep)
        result.models.append(deploy)
        if train is not None:
            train = clone_with_masks(train) if deploy is train else train
    time_stages(result, data, repeats=repeats)
    return result
