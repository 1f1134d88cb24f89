"""PNG plots of what compression did (matplotlib, the optional ``demo`` extra).

* :func:`pareto` - test accuracy against stored bytes (log scale), one line per recipe
  through its stages: the trade-off view.
* :func:`sensitivity_curves` - per-layer accuracy against sparsity
  (:func:`refcompress.prune.sensitivity_analysis`).
* :func:`weight_histograms` - each layer's weight distribution before and after
  (pruning leaves a spike at zero; quantization and sharing leave a comb).
* :func:`singular_values` - each Linear layer's singular value spectrum, with chosen ranks.

Every function writes one PNG atomically (``refcompress.io.atomic_write``) and returns its
path.  The Agg backend is used, so no display is needed.
"""

from __future__ import annotations

import os

import numpy as np

from .. import nn
from ..errors import ArgumentError
from ..io import atomic_write


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('plots need matplotlib: pip install "refcompress[demo]"') from exc
    return plt


def _save(fig, path):
    plt = _pyplot()
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return os.fspath(path)


def pareto(results: dict, path) -> str:
    """``results``: {label: CompressionResult (or a list of Report)}; accuracy vs bytes."""
    plt = _pyplot()
    if not results:
        raise ArgumentError("results: expected at least one recipe's reports")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, res in results.items():
        reps = getattr(res, "reports", res)
        xs = [r.stored_bytes for r in reps]
        ys = [100 * r.accuracy for r in reps]
        ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(reps, xs, ys):
            ax.annotate(r.stage.split(". ")[-1], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs stored bytes, stage by stage")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def sensitivity_curves(result, path) -> str:
    """Per-layer accuracy against sparsity from a SensitivityResult."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for layer, accs in result.accuracy.items():
        ax.plot([100 * a for a in result.amounts], [100 * v for v in accs], marker="o", label=f"layer {layer}")
    ax.set_xlabel("sparsity of the layer (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("per-layer pruning sensitivity")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _layer_weights(model):
    out = {}
    for name, m in model.named_modules():
        if any(True for _ in m.children()):
            continue
        if hasattr(m, "dense_weight"):
            w = m.dense_weight()
        elif hasattr(m, "shared"):
            w = m.shared().dense()
        elif hasattr(m, "values") and hasattr(m, "indptr"):
            w = np.asarray(m.values.data if hasattr(m.values, "data") else m.values)
        elif isinstance(getattr(m, "weight", None), nn.Parameter):
            w = m.weight.data
        else:
            continue
        out[name] = np.asarray(w, np.float64).reshape(-1)
    return out


def weight_histograms(before: nn.Module, after: nn.Module, path, *, bins: int = 80) -> str:
    """Histograms of each layer's weights in ``before`` and ``after`` (same layer names)."""
    plt = _pyplot()
    wb, wa = _layer_weights(before), _layer_weights(after)
    names = [n for n in wb if n in wa] or list(wb)
    if not names:
        raise ArgumentError("before: no weight layers to plot")
    fig, axes = plt.subplots(len(names), 1, figsize=(6.5, 1.9 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        lo = min(wb[name].min(), wa.get(name, wb[name]).min())
        hi = max(wb[name].max(), wa.get(name, wb[name]).max())
        edges = np.linspace(lo, hi, bins + 1)
        ax.hist(wb[name], bins=edges, alpha=0.5, label="before", log=True)
        if name in wa:
            ax.hist(wa[name], bins=edges, alpha=0.6, label="after", log=True)
        ax.set_title(f"layer {name}", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def singular_values(model: nn.Module, path, ranks: dict | None = None) -> str:
    """Singular value spectra of the Linear layers, with ``ranks`` {layer: r} marked."""
    plt = _pyplot()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ArgumentError("model: no Linear layers to decompose")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, m in layers:
        s = np.linalg.svd(m.weight.data.astype(np.float64), compute_uv=False)
        line, = ax.semilogy(np.arange(1, s.size + 1), s, label=f"layer {name} [{m.out_features}x{m.in_features}]")
        if ranks and name in ranks:
            ax.axvline(ranks[name], color=line.get_color(), linestyle="--", alpha=0.7)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    ax.set_title("singular value spectra (dashed: chosen rank)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
