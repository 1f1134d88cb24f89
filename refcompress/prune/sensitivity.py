"""Sensitivity analysis: accuracy against sparsity, one layer at a time (Han et al. 2015,
fig. 6; Li et al. 2017, fig. 2), to choose per-layer pruning amounts.

For each layer l and amount a, a copy of the model has only layer l pruned by a (no
fine-tuning) and is evaluated:

    acc[l][a] = evaluate(prune(model, layer = l, amount = a))

Layers whose accuracy stays flat can be pruned hard; steep ones gently.
:meth:`SensitivityResult.choose_amounts` turns the curves into per-layer amounts for an
accuracy-drop budget.  The trials are independent: pass a ``concurrent.futures.Executor``
to run them in parallel (with a ProcessPoolExecutor, ``evaluate`` must be picklable — a
module-level function or a ``functools.partial`` of one).
"""

from __future__ import annotations

import copy
from concurrent.futures import Executor
from dataclasses import dataclass, field

from .._validation import check_choice, check_float
from ..errors import ArgumentError, DTypeError
from ..nn.module import Module
from .magnitude import check_amount, layer_masks, over_budget
from .masks import apply_masks, prunable_layers
from .structured import select_outputs, weight_norm_importance
from .surgery import find_link, prunable_links, prune_outputs

__all__ = ["SensitivityResult", "sensitivity_analysis", "METHODS"]

METHODS = ("magnitude", "l1", "l2")


def _prune_one(model: Module, layer: str, amount: float, method: str) -> Module:
    if method == "magnitude":
        apply_masks(model, layer_masks(model, amount=amount, layers=[layer]))
    else:
        w = model.get_submodule(layer).weight.data
        imp = weight_norm_importance(w, 1 if method == "l1" else 2)
        keep = select_outputs(imp, amount, repr(layer))
        if len(keep) < w.shape[0]:
            prune_outputs(model, layer, keep)
    return model


def _trial(model: Module, layer: str, amount: float, method: str, evaluate) -> float:
    """One independent trial (module level so that process pools can pickle it)."""
    return float(evaluate(_prune_one(copy.deepcopy(model), layer, amount, method)))


@dataclass
class SensitivityResult:
    """``accuracy[layer][i]`` is the accuracy with only ``layer`` pruned by ``amounts[i]``;
    ``baseline`` the unpruned accuracy; ``method`` the pruning used."""

    baseline: float
    amounts: list
    method: str
    accuracy: dict = field(default_factory=dict)

    @property
    def layers(self) -> list:
        return list(self.accuracy)

    def records(self) -> list:
        """Flat rows {"layer", "amount", "accuracy", "drop"} (for tables and plots)."""
        return [{"layer": l, "amount": a, "accuracy": acc, "drop": self.baseline - acc}
                for l, accs in self.accuracy.items() for a, acc in zip(self.amounts, accs)]

    def choose_amounts(self, max_drop: float) -> dict:
        """{layer: the largest amount a such that every measured amount <= a costs at most
        ``max_drop`` accuracy (up to 1e-9, float error)} (0.0 when even the smallest one
        costs more)."""
        max_drop = check_float(max_drop, "max_drop", min_value=0.0)
        out = {}
        for layer, accs in self.accuracy.items():
            best = 0.0
            for a, acc in zip(self.amounts, accs):
                if over_budget(self.baseline, acc, max_drop):
                    break
                best = a
            out[layer] = best
        return out


def sensitivity_analysis(model: Module, evaluate, *, amounts=(0.25, 0.5, 0.75, 0.9, 0.95),
                         layers=None, method: str = "magnitude",
                         executor: Executor | None = None) -> SensitivityResult:
    """Accuracy of ``model`` with one layer pruned at a time, for each amount.

    evaluate : ``evaluate(model) -> accuracy``.
    amounts  : increasing fractions in [0, 1].
    layers   : names (default every Linear / Conv2d for "magnitude"; every layer whose
               outputs can be removed for the structured methods "l1" / "l2").
    method   : "magnitude" (unstructured, per layer) or "l1" / "l2" (structured removal
               of neurons / channels by weight norm).
    executor : a ``concurrent.futures.Executor`` to run the trials on; serial when None.
    ``model`` is never modified (each trial prunes a deep copy).
    """
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a Module, got {type(model).__name__}")
    if not callable(evaluate):
        raise DTypeError(f"evaluate: expected a callable, got {type(evaluate).__name__}")
    check_choice(method, "method", METHODS)
    if executor is not None and not isinstance(executor, Executor):
        raise DTypeError(f"executor: expected a concurrent.futures.Executor, got {type(executor).__name__}")
    amounts = [check_amount(a, f"amounts[{i}]") for i, a in enumerate(amounts)]
    if not amounts:
        raise ArgumentError("amounts: expected at least one amount, got none")
    if any(b <= a for a, b in zip(amounts, amounts[1:])):
        raise ArgumentError(f"amounts: expected strictly increasing amounts, got {amounts}")
    if method == "magnitude":
        names = [n for n, _ in prunable_layers(model, layers)]
    else:
        names = [lk.producer for lk in prunable_links(model)] if layers is None else \
            [find_link(model, n).producer for n in layers]
        if not names:
            raise ArgumentError("model: has no layer whose outputs can be removed")
    baseline = float(evaluate(model))
    jobs = [(n, a) for n in names for a in amounts]
    if executor is None:
        accs = [_trial(model, n, a, method, evaluate) for n, a in jobs]
    else:
        futures = [executor.submit(_trial, model, n, a, method, evaluate) for n, a in jobs]
        accs = [f.result() for f in futures]
    res = SensitivityResult(baseline=baseline, amounts=amounts, method=method)
    for (n, _), acc in zip(jobs, accs):
        res.accuracy.setdefault(n, []).append(acc)
    return res
