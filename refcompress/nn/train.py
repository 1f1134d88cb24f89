"""The training loop: :func:`fit`, :func:`evaluate`, :func:`predict`.

Data is either arrays ``(X, y)`` cut into batches of ``batch_size`` (shuffled each epoch by
a generator seeded with ``seed``) or a re-iterable of ``(x, y)`` batches used as given.
One training step is

    optimizer.zero_grad();  loss_value, n_correct = step(model, batch);  optimizer.step()

where the default step is forward, ``loss(output, y)``, ``model.backward(grad)``; a custom
``step_fn(model, batch) -> (loss_value, n_correct or None)`` does its own forward and
backward (a distillation trainer computes its loss from teacher outputs this way).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .._validation import check_array, check_choice, check_int
from ..data.batching import iter_batches  # the one batch iterator (re-exported here)
from ..errors import ArgumentError, DTypeError, ShapeError
from .losses import cross_entropy
from .module import Module, training_modes
from .optim import Optimizer

__all__ = ["History", "fit", "evaluate", "predict", "iter_batches"]


@dataclass
class History:
    """Per-epoch records of :func:`fit` (None where not measured)."""

    loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False


def _check_arrays(X, y, name):
    X = check_array(X, name, min_ndim=1)
    if y is not None:
        y = check_array(y, f"{name} targets", min_ndim=1)
        if len(y) != len(X):
            raise ShapeError(f"{name}: expected {len(X)} targets (one per sample), got {len(y)}")
    if len(X) == 0:
        raise ShapeError(f"{name}: expected at least one sample, got shape {X.shape}")
    return X, y


def _batches(data, y, batch_size, shuffle, rng, name):
    """A function returning one epoch's batch iterator, for arrays or an iterable."""
    if isinstance(data, np.ndarray) or y is not None:
        X, y = _check_arrays(data, y, name)
        return lambda: iter_batches(X, y, batch_size, shuffle, rng), -(-len(X) // batch_size)
    if iter(data) is data:
        raise ArgumentError(
            f"{name}: expected arrays or a re-iterable of batches (a list, or an object whose "
            f"__iter__ starts over), got a one-shot iterator {type(data).__name__}")
    total = len(data) if hasattr(data, "__len__") else None
    return lambda: iter(data), total


def _require_targets(X, y, what="y"):
    """The default step and evaluate unpack ``(x, y)``: an array X needs its targets."""
    if isinstance(X, np.ndarray) and y is None:
        raise ArgumentError(
            f"{what}: X is an array, so expected its targets (one per sample), got None; pass "
            f"them, or X as a re-iterable of (x, y) batches (or a step_fn for fit)")


def _batch_len(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(first)


def _n_correct(out, target):
    if not (isinstance(out, np.ndarray) and out.ndim == 2 and isinstance(target, np.ndarray)
            and target.ndim == 1 and target.dtype.kind in "iu"):
        return None
    return int((out.argmax(axis=1) == target).sum())


class _Progress:
    """One line per epoch on stderr, redrawn in place (carriage return) on a terminal."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, total):
        self.enabled, self.epoch, self.epochs, self.total = enabled, epoch, epochs, total
        self.stream = sys.stderr
        self.live = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.last = 0.0

    def _line(self, done, stats):
        head = f"epoch {self.epoch}/{self.epochs}"
        if self.total:
            width = 20
            fill = int(width * min(done, self.total) / self.total)
            head += f" [{'#' * fill}{'.' * (width - fill)}] {done}/{self.total}"
        else:
            head += f" {done} batches"
        return head + "".join(f" {k} {v:.4f}" for k, v in stats.items() if v is not None)

    def update(self, done, stats):
        now = time.monotonic()
        if self.live and now - self.last > 0.1:
            self.last = now
            self.stream.write("\r" + self._line(done, stats))
            self.stream.flush()

    def close(self, done, stats):
        if self.enabled:
            self.stream.write(("\r" if self.live else "") + self._line(done, stats) + "\n")
            self.stream.flush()


def _split_validation(data):
    # (X_val, y_val) arrays, as opposed to a tuple of (x, y) batches
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        return data
    return data, None


def _default_step(loss):
    def step(model, batch):
        xb, yb = batch
        out = model(xb)
        value, grad = loss(out, yb)
        model.backward(grad)
        return value, _n_correct(out, yb)
    return step


def fit(model: Module, X, y=None, *, optimizer: Optimizer, epochs: int = 1, loss=cross_entropy,
        batch_size: int = 32, shuffle: bool = True, seed: int = 0, validation_data=None,
        patience: int | None = None, monitor: str = "val_loss", restore_best: bool = True,
        step_fn=None, scheduler=None, progress: bool = True) -> History:
    """Train ``model`` in place and return its :class:`History`.

    X, y            : arrays (batched and, with ``shuffle``, reshuffled each epoch by
                      ``numpy.random.default_rng(seed)``), or X a re-iterable of batches
                      and y None.
    loss            : ``loss(output, target) -> (value, grad)``; default cross-entropy.
    step_fn         : replaces the default forward/loss/backward: ``step_fn(model, batch)
                      -> (loss_value, n_correct or None)``; the loop still calls
                      ``optimizer.zero_grad()`` before and ``optimizer.step()`` after.
    validation_data : ``(X_val, y_val)`` or a re-iterable of batches; evaluated with
                      ``loss`` after every epoch (model in eval mode).
    patience        : stop after this many epochs without improvement of ``monitor``
                      ("val_loss", lower is better, or "val_acc", higher is better); with
                      ``restore_best`` the best epoch's weights and buffers are loaded back.
    scheduler       : an object with ``step()``, called after every epoch (e.g. StepLR).

    The epoch's loss is the sample-weighted mean of the batch losses; train accuracy is
    measured on the fly (None when the step reports no count).  Training runs with
    ``model.train()`` (every submodule in training mode); on return each module gets back
    its own train/eval flag (a BatchNorm frozen with ``.eval()`` stays frozen).
    """
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a Module, got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise DTypeError(f"optimizer: expected an Optimizer, got {type(optimizer).__name__}")
    epochs = check_int(epochs, "epochs", min_value=1)
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    seed = check_int(seed, "seed", min_value=0)
    check_choice(monitor, "monitor", ("val_loss", "val_acc"))
    if patience is not None:
        patience = check_int(patience, "patience", min_value=1)
        if validation_data is None:
            raise ArgumentError("patience: early stopping needs validation_data, got None")
    if step_fn is not None and not callable(step_fn):
        raise DTypeError(f"step_fn: expected a callable, got {type(step_fn).__name__}")
    if step_fn is None:
        _require_targets(X, y)
    if validation_data is not None:
        _require_targets(*_split_validation(validation_data), what="validation_data")
    rng = np.random.default_rng(seed)
    epoch_batches, total = _batches(X, y, batch_size, shuffle, rng, "X")
    step = step_fn if step_fn is not None else _default_step(loss)
    modes = training_modes(model)
    history, best, best_state, waited = History(), None, None, 0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            bar = _Progress(progress, epoch, epochs, total)
            loss_sum, seen, correct, counted, done = 0.0, 0, 0, True, 0
            for batch in epoch_batches():
                optimizer.zero_grad()
                value, n_ok = step(model, batch)
                optimizer.step()
                n = _batch_len(batch)
                loss_sum += float(value) * n
                seen += n
                done += 1
                if n_ok is None:
                    counted = False
                else:
                    correct += int(n_ok)
                bar.update(done, {"loss": loss_sum / seen})
            if seen == 0:
                raise ArgumentError("X: the batch iterable yielded no batches")
            history.loss.append(loss_sum / seen)
            history.train_acc.append(correct / seen if counted else None)
            history.lr.append(optimizer.lr)
            stats = {"loss": history.loss[-1], "acc": history.train_acc[-1]}
            if validation_data is not None:
                vx, vy = _split_validation(validation_data)
                res = evaluate(model, vx, vy, batch_size=batch_size, loss=loss)
                history.val_loss.append(res["loss"])
                history.val_acc.append(res["accuracy"])
                stats.update(val_loss=res["loss"], val_acc=res["accuracy"])
                score = res["loss"] if monitor == "val_loss" else res["accuracy"]
                if score is None:
                    raise ArgumentError(f"monitor: {monitor!r} is not measurable for this model and data")
                better = best is None or (score < best if monitor == "val_loss" else score > best)
                if better:
                    best, waited, history.best_epoch = score, 0, epoch
                    if patience is not None and restore_best:
                        best_state = model.state_dict()
                else:
                    waited += 1
            bar.close(done, stats)
            if scheduler is not None:
                scheduler.step()
            if patience is not None and waited >= patience:
                history.stopped_early = True
                break
        if best_state is not None:
            model.load_state_dict(best_state)
    finally:
        modes.restore()
    return history


def evaluate(model: Module, X, y=None, *, batch_size: int = 256, loss=cross_entropy) -> dict:
    """``{"loss": mean loss, "accuracy": fraction correct or None}`` over the data, in eval
    mode (each module's own previous mode is restored).  Data as in :func:`fit` (batches of
    (x, y))."""
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a Module, got {type(model).__name__}")
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    _require_targets(X, y)
    epoch_batches, _ = _batches(X, y, batch_size, False, None, "X")
    with training_modes(model):
        model.eval()
        loss_sum, seen, correct, counted = 0.0, 0, 0, True
        for xb, yb in epoch_batches():
            out = model(xb)
            value, _ = loss(out, yb)
            n = len(xb)
            loss_sum += float(value) * n
            seen += n
            n_ok = _n_correct(out, yb)
            if n_ok is None:
                counted = False
            else:
                correct += n_ok
    if seen == 0:
        raise ArgumentError("X: the batch iterable yielded no batches")
    return {"loss": loss_sum / seen, "accuracy": correct / seen if counted else None}


def predict(model: Module, X, *, batch_size: int = 256) -> np.ndarray:
    """Model outputs for every sample of X, concatenated, computed in eval mode (each
    module's own previous mode is restored)."""
    if not isinstance(model, Module):
        raise DTypeError(f"model: expected a Module, got {type(model).__name__}")
    X = check_array(X, "X", min_ndim=1)
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    with training_modes(model):
        model.eval()
        outs = [model(xb) for xb in iter_batches(X, None, batch_size)]
    if not outs:
        raise ShapeError(f"X: expected at least one sample, got shape {X.shape}")
    return np.concatenate(outs, axis=0)
