"""Pruning schedules: iterative prune -> fine-tune (Han et al. 2015) and gradual pruning
(Zhu & Gupta 2017, "To prune, or not to prune", AGP).

Iterative (Han et al. 2015, sec. 3.3): prune, retrain the survivors, raise the threshold,
repeat.  :func:`iterative_prune` runs that loop with a sparsity schedule (rounds of a
geometric schedule remove the same fraction of the surviving weights each round,

    s_r = 1 - (1 - s_final)^(r / R),   r = 1 .. R,

:func:`geometric_sparsities`) or with Han's rising quality parameter (threshold
t = q_r * std of the surviving weights), and stops when the schedule ends or when test
accuracy would fall more than ``max_drop`` below the unpruned model's (the last round that
kept within the budget is restored).

Gradual (Zhu & Gupta 2017, eq. 1): during training, every Δt steps from t0 over n pruning
steps, the sparsity is raised to

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^3,   t in {t0, t0 + Δt, ..., t0 + n Δt},

which prunes fast while there are many redundant weights and slowly near the target.
:class:`AGPPruner` applies it inside :func:`refcompress.nn.fit` through a ``step_fn``.

Masks are monotone in both schedules: a new mask is AND-ed with the layer's current one,
so a weight once pruned stays pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._validation import check_choice, check_float, check_int
from ..errors import ArgumentError, DTypeError
from ..nn.losses import cross_entropy
from ..nn.module import Module
from .magnitude import check_amount, global_masks, layer_masks, over_budget
from .masks import apply_masks, get_mask, model_sparsity, prunable_layers, remove_mask

__all__ = [
    "agp_sparsity",
    "geometric_sparsities",
    "cubic_sparsities",
    "AGPPruner",
    "IterativeResult",
    "iterative_prune",
]


def agp_sparsity(step: int, final_sparsity: float, n_steps: int, *, initial_sparsity: float = 0.0,
                 start_step: int = 0, frequency: int = 1) -> float:
    """Zhu & Gupta's cubic schedule: the target sparsity at training step ``step``.

    s = s_f + (s_i - s_f)(1 - k / n)^3 with k = min(n, floor((step - t0) / Δt)) pruning
    steps done (n = ``n_steps``, Δt = ``frequency``, t0 = ``start_step``); 0 before t0 (no
    pruning yet) and s_f from t0 + n Δt on.
    """
    step = check_int(step, "step", min_value=0)
    s_f = check_amount(final_sparsity, "final_sparsity")
    s_i = check_amount(initial_sparsity, "initial_sparsity")
    if s_i > s_f:
        raise ArgumentError(
            f"initial_sparsity: expected at most final_sparsity={s_f}, got {s_i}")
    n = check_int(n_steps, "n_steps", min_value=1)
    t0 = check_int(start_step, "start_step", min_value=0)
    dt = check_int(frequency, "frequency", min_value=1)
    if step < t0:
        return 0.0
    k = min(n, (step - t0) // dt)
    return float(s_f + (s_i - s_f) * (1.0 - k / n) ** 3)


def geometric_sparsities(final_sparsity: float, rounds: int) -> list:
    """[s_1, ..., s_R] with s_r = 1 - (1 - s_f)^(r / R): each round prunes the same fraction
    of the weights that survived the previous one (s_R = s_f exactly)."""
    s_f = check_amount(final_sparsity, "final_sparsity")
    rounds = check_int(rounds, "rounds", min_value=1)
    out = [1.0 - (1.0 - s_f) ** (r / rounds) for r in range(1, rounds + 1)]
    out[-1] = s_f
    return out


def cubic_sparsities(final_sparsity: float, rounds: int, initial_sparsity: float = 0.0) -> list:
    """[s_1, ..., s_R]: Zhu & Gupta's cubic schedule sampled once per round,
    s_r = s_f + (s_i - s_f)(1 - r / R)^3, for :func:`iterative_prune`.  Compared with the
    geometric schedule it cuts hard early, while the network is redundant, and only a
    little in the last rounds, where each weight matters (s_R = s_f exactly)."""
    s_f = check_amount(final_sparsity, "final_sparsity")
    rounds = check_int(rounds, "rounds", min_value=1)
    out = [agp_sparsity(r, s_f, rounds, initial_sparsity=initial_sparsity) for r in range(1, rounds + 1)]
    out[-1] = s_f
    return out


def _monotone(model: Module, masks: dict) -> dict:
    out = {}
    for name, m in masks.items():
        old = get_mask(model.get_submodule(name))
        out[name] = m if old is None else (m & old)
    return out


def _masks_at(model, scope, layers, sparsity=None, quality=None, normalize="none"):
    if quality is not None:
        return layer_masks(model, quality=quality, layers=layers)
    if scope == "global":
        return global_masks(model, sparsity, layers=layers, normalize=normalize)
    return layer_masks(model, amount=sparsity, layers=layers)


class AGPPruner:
    """Gradual magnitude pruning on Zhu & Gupta's cubic schedule, driven by training steps.

    ``pruner.step()`` advances the step counter and, on a pruning step, raises every
    layer's sparsity to :func:`agp_sparsity` (per layer, or one global ranking with
    ``scope="global"``).  ``pruner.step_fn()`` is a :func:`refcompress.nn.fit` step that
    calls ``step()`` before each batch's forward and backward, so the masks are in place
    (masked gradients, re-masked weights) for the optimizer update that follows.
    """

    def __init__(self, model: Module, final_sparsity: float, n_steps: int, *, frequency: int = 1,
                 start_step: int = 0, initial_sparsity: float = 0.0, scope: str = "layer",
                 layers=None, normalize: str = "none"):
        if not isinstance(model, Module):
            raise DTypeError(f"model: expected a Module, got {type(model).__name__}")
        self.model = model
        self.final_sparsity = final_sparsity
        self.n_steps = n_steps
        self.frequency = frequency
        self.start_step = start_step
        self.initial_sparsity = initial_sparsity
        self.scope = check_choice(scope, "scope", ("layer", "global"))
        self.normalize = check_choice(normalize, "normalize", ("none", "std"))
        self.layers = [n for n, _ in prunable_layers(model, layers)]
        agp_sparsity(0, final_sparsity, n_steps, initial_sparsity=initial_sparsity,
                     start_step=start_step, frequency=frequency)  # validates the arguments
        self.step_ = 0
        self.sparsity_ = 0.0

    def sparsity_at(self, step: int) -> float:
        return agp_sparsity(step, self.final_sparsity, self.n_steps,
                            initial_sparsity=self.initial_sparsity, start_step=self.start_step,
                            frequency=self.frequency)

    def step(self) -> float:
        """Apply the schedule's sparsity at the current step, then advance; returns it."""
        s = self.sparsity_at(self.step_)
        if s > self.sparsity_:
            masks = _masks_at(self.model, self.scope, self.layers, sparsity=s, normalize=self.normalize)
            apply_masks(self.model, _monotone(self.model, masks))
            self.sparsity_ = s
        self.step_ += 1
        return s

    def step_fn(self, loss=cross_entropy):
        """A ``step_fn`` for :func:`refcompress.nn.fit`: prune on schedule, then forward,
        ``loss``, backward."""
        if not callable(loss):
            raise DTypeError(f"loss: expected a callable, got {type(loss).__name__}")

        def step(model, batch):
            self.step()
            xb, yb = batch
            out = model(xb)
            value, grad = loss(out, yb)
            model.backward(grad)
            n_ok = int((out.argmax(axis=1) == yb).sum()) if out.ndim == 2 and np.asarray(yb).ndim == 1 else None
            return value, n_ok

        return step


@dataclass
class IterativeResult:
    """What :func:`iterative_prune` did: the unpruned accuracy, one record per round
    ({"round", "target", "sparsity", "accuracy", "kept"}), and why it stopped
    ("schedule" — every round ran; "budget" — the next round broke ``max_drop`` and was
    undone)."""

    baseline: float
    history: list = field(default_factory=list)
    stopped_by: str = "schedule"

    @property
    def final(self) -> dict | None:
        """The last round that was kept (None when not even the first one was)."""
        kept = [h for h in self.history if h["kept"]]
        return kept[-1] if kept else None


def iterative_prune(model: Module, fine_tune, evaluate, *, sparsities=None, qualities=None,
                    scope: str = "global", layers=None, normalize: str = "none",
                    max_drop: float | None = None, baseline: float | None = None) -> IterativeResult:
    """Han et al.'s loop: prune -> fine-tune -> raise the threshold -> repeat.

    model      : pruned in place (masks applied; they stay attached for further training).
    fine_tune  : ``fine_tune(model, round) -> None`` retrains the survivors (the masks keep
                 pruned weights at zero through any refcompress optimizer).
    evaluate   : ``evaluate(model) -> accuracy`` (a float, higher is better).
    sparsities : increasing target sparsities, one per round (e.g.
                 :func:`geometric_sparsities`), ranked per layer or globally (``scope``;
                 ``normalize`` as in :func:`~refcompress.prune.global_masks`);
    qualities  : or Han's increasing quality parameters q_r, threshold q_r * std per layer.
    max_drop   : accuracy-drop budget (same units as ``evaluate``): a round whose accuracy
                 is below ``baseline - max_drop`` (by more than 1e-9, float error) is undone
                 (weights and masks restored) and the loop stops.
    baseline   : the unpruned accuracy (evaluated when None).
    """
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a Module, got {type(model).__name__}")
    for name, fn in (("fine_tune", fine_tune), ("evaluate", evaluate)):
        if not callable(fn):
            raise DTypeError(f"{name}: expected a callable, got {type(fn).__name__}")
    if (sparsities is None) == (qualities is None):
        raise ArgumentError("sparsities, qualities: expected exactly one schedule, got "
                            + ("both" if sparsities is not None else "neither"))
    check_choice(scope, "scope", ("layer", "global"))
    check_choice(normalize, "normalize", ("none", "std"))
    sched_name = "sparsities" if sparsities is not None else "qualities"
    sched = list(sparsities if sparsities is not None else qualities)
    if not sched:
        raise ArgumentError(f"{sched_name}: expected at least one round, got an empty schedule")
    for i, v in enumerate(sched):
        if sparsities is not None:
            check_amount(v, f"sparsities[{i}]")
        else:
            check_float(v, f"qualities[{i}]", min_value=0.0)
    if any(b < a for a, b in zip(sched, sched[1:])):
        raise ArgumentError(f"{sched_name}: expected a non-decreasing schedule, got {sched}")
    if max_drop is not None:
        max_drop = check_float(max_drop, "max_drop", min_value=0.0)
    names = [n for n, _ in prunable_layers(model, layers)]
    base = float(evaluate(model)) if baseline is None else check_float(baseline, "baseline")
    result = IterativeResult(baseline=base)
    for r, value in enumerate(sched):
        saved_state = model.state_dict()
        saved_masks = {n: get_mask(model.get_submodule(n)) for n in names}
        if sparsities is not None:
            masks = _masks_at(model, scope, names, sparsity=value, normalize=normalize)
        else:
            masks = _masks_at(model, scope, names, quality=value)
        apply_masks(model, _monotone(model, masks))
        fine_tune(model, r)
        acc = float(evaluate(model))
        rec = {"round": r, "target": float(value), "sparsity": model_sparsity(model, names),
               "accuracy": acc, "kept": True}
        result.history.append(rec)
        if max_drop is not None and over_budget(base, acc, max_drop):
            rec["kept"] = False
            # Masks first: load_state_dict re-applies the attached masks, and this round's
            # would zero weights the restored state still has.
            for n, m in saved_masks.items():
                layer = model.get_submodule(n)
                if m is None:
                    remove_mask(layer)
                else:
                    apply_masks(model, {n: m})
            model.load_state_dict(saved_state)
            result.stopped_by = "budget"
            break
    return result
