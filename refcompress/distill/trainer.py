"""The distillation trainer: a frozen teacher, a student trained on a mix of losses.

For a batch x with (optional) labels y, teacher logits z_t and student logits z_s,

    L = alpha * CE(z_s, y) + (1 - alpha) * T^2 KL(softmax(z_t/T) || softmax(z_s/T))
        + beta  * sum_{(s, t) in attention_pairs} AT(A_s, A_t)
        + gamma * sum_{(s, t) in hint_pairs}      HT(r(A_s), A_t)

(soft targets: Hinton et al. 2015; AT: Zagoruyko & Komodakis 2017; HT: Romero et al. 2015;
see :mod:`.soft`, :mod:`.attention`, :mod:`.hints`).  A_s and A_t are outputs of named
inner modules, read with :class:`~.taps.Taps`; the feature-loss gradients are injected at
the student's tapped modules, and one ordinary ``student.backward(dL/dz_s)`` then carries
every term into the student's parameter grads.

Training runs through :func:`refcompress.nn.fit` (its progress bar, validation, early
stopping, scheduler) with a custom step.  The teacher is held in eval mode and never
receives a backward.  Labels are optional: ``y=None`` is unlabeled transfer data (alpha
must be 0), and label ``-1`` marks single unlabeled samples in a partly labeled set (the CE
term averages over the labeled samples of each batch; KD and the feature terms use all).

Teacher caching: with array data the teacher is a fixed function (eval mode), so its
logits and tapped features are computed once for every sample and the batches (shuffled
each epoch by ``fit``) index that cache.  With a re-iterable of batches the teacher output
is cached per batch position and reused only while the iterable yields the same batch
there, i.e. when the data order allows.  "The same" means equal contents: the cache holds a
copy of each batch and compares it with ``np.array_equal``, so a loader that refills one
preallocated buffer for every batch gets fresh teacher outputs for each new batch.  A batch
input may be an array or a tuple / list (nested) of arrays (a multi-input model's
``(x1, x2)``); any other batch input runs the teacher every step, uncached.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_choice, check_float, check_int
from ..errors import ArgumentError, DTypeError, NotDifferentiableError, RefcompressError, ShapeError
from ..nn import AdamW, Module, fit
from ..nn.losses import cross_entropy
from ..nn.module import training_modes
from ..nn.optim import Optimizer
from .attention import attention_transfer_loss
from .hints import Hint
from .soft import check_temperature, check_unit_weight, soft_target_loss
from .taps import Taps

__all__ = ["Distiller", "distill", "recover", "UNLABELED"]

UNLABELED = -1


def _check_pairs(pairs, name):
    if pairs is None:
        return []
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
        raise DTypeError(f"{name}: expected a list of (student_name, teacher_name) pairs, got {pairs!r}")
    out = []
    for i, pr in enumerate(pairs):
        if not (isinstance(pr, (tuple, list)) and len(pr) == 2 and all(isinstance(s, str) for s in pr)):
            raise DTypeError(f"{name}[{i}]: expected a (student_name, teacher_name) pair of str, got {pr!r}")
        out.append((pr[0], pr[1]))
    return out


def _unique(names):
    return list(dict.fromkeys(names))


def _check_labels(y, n_classes, name="y"):
    """Refuse labels outside [0, n_classes) other than UNLABELED (-1), naming ``name``."""
    if y.size == 0:
        return
    bad = (y != UNLABELED) & ((y < 0) | (y >= n_classes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ArgumentError(
            f"{name}: expected class indices in [0, {n_classes - 1}] or {UNLABELED} (unlabeled), "
            f"got {y[i]} at index {i} ({int(bad.sum())} such labels)")


class Distiller:
    """Distil ``teacher`` into ``student`` (both :class:`refcompress.nn.Module`, same number
    of output classes).  Neither model is copied; the student is trained in place.

    alpha             : weight of hard-label CE in the convex mix with KD, in [0, 1].
    temperature       : T > 0 of the soft targets.
    beta              : weight (>= 0) of attention transfer, summed over ``attention_pairs``
                        [(student module name, teacher module name), ...] of 4-D maps.
    attention_p, attention_squared, attention_resize : see :func:`attention_transfer_loss`.
    gamma             : weight (>= 0) of FitNets hints, summed over ``hint_pairs``.
    hints             : optional list of :class:`Hint`, one per hint pair; by default each is
                        built from the first batch (a Linear / 1x1 Conv2d regressor when the
                        widths differ, the identity when they agree), seeded by ``seed``.
    cache_teacher     : reuse teacher outputs as described in the module docstring.

    After :meth:`fit`, ``history_`` holds the :class:`refcompress.nn.History` and ``hints_``
    the hint regressors.
    """

    def __init__(self, student: Module, teacher: Module, *, alpha: float = 0.5,
                 temperature: float = 4.0, beta: float = 0.0, attention_pairs=None,
                 attention_p: float = 2.0, attention_squared: bool = False, attention_resize=None,
                 gamma: float = 0.0, hint_pairs=None, hints=None, cache_teacher: bool = True,
                 seed: int = 0):
        for m, name in ((student, "student"), (teacher, "teacher")):
            if not isinstance(m, Module):
                raise DTypeError(f"{name}: expected an nn Module, got {type(m).__name__}")
        if student is teacher:
            raise ArgumentError("teacher: expected a different Module from student, got the same object")
        self.student, self.teacher = student, teacher
        self.alpha = check_unit_weight(alpha, "alpha")
        self.temperature = check_temperature(temperature)
        self.beta = check_float(beta, "beta", min_value=0.0)
        self.gamma = check_float(gamma, "gamma", min_value=0.0)
        self.attention_pairs = _check_pairs(attention_pairs, "attention_pairs")
        self.hint_pairs = _check_pairs(hint_pairs, "hint_pairs")
        if self.beta > 0 and not self.attention_pairs:
            raise ArgumentError(f"beta: is {self.beta} but attention_pairs is empty; name the layer pairs")
        if self.gamma > 0 and not self.hint_pairs:
            raise ArgumentError(f"gamma: is {self.gamma} but hint_pairs is empty; name the layer pairs")
        self.attention_p = check_float(attention_p, "attention_p", min_value=1.0)
        self.attention_squared = bool(attention_squared)
        self.attention_resize = check_choice(attention_resize, "attention_resize", (None, "avgpool"))
        if hints is not None:
            hints = list(hints)
            if len(hints) != len(self.hint_pairs) or not all(isinstance(h, Hint) for h in hints):
                raise ArgumentError(
                    f"hints: expected {len(self.hint_pairs)} Hint objects (one per hint pair), got {hints!r}")
        self.hints_ = hints
        self.cache_teacher = bool(cache_teacher)
        self.seed = check_int(seed, "seed", min_value=0)
        self.history_ = None
        self._s_names = _unique([s for s, _ in self._active_pairs()])
        self._t_names = _unique([t for _, t in self._active_pairs()])
        self._s_taps = self._t_taps = None
        self._n_classes = None
        self._batch_cache = {}

    def _active_pairs(self):
        pairs = list(self.attention_pairs) if self.beta > 0 else []
        return pairs + (list(self.hint_pairs) if self.gamma > 0 else [])

    # -- taps ------------------------------------------------------------------------------
    def _named_pairs(self):
        """(argument name, index, pair) of the layer pairs in use."""
        out = []
        if self.beta > 0:
            out += [("attention_pairs", i, pr) for i, pr in enumerate(self.attention_pairs)]
        if self.gamma > 0:
            out += [("hint_pairs", i, pr) for i, pr in enumerate(self.hint_pairs)]
        return out

    def _attach(self):
        if self._s_taps is None and self._s_names:
            for arg, i, pr in self._named_pairs():
                for model, side, name in ((self.student, "student", pr[0]), (self.teacher, "teacher", pr[1])):
                    try:
                        model.get_submodule(name)
                    except ArgumentError:
                        known = [k for k, _ in model.named_modules()]
                        raise ArgumentError(
                            f"{arg}[{i}]: the {side} has no submodule {name!r}; it has {known}") from None
            self._s_taps = Taps(self.student, self._s_names, inject=True,
                                what="attention_pairs/hint_pairs (student names)")
            try:
                self._t_taps = Taps(self.teacher, self._t_names,
                                    what="attention_pairs/hint_pairs (teacher names)")
            except Exception:
                self._s_taps.remove()
                self._s_taps = None
                raise

    def detach(self) -> None:
        """Remove the taps :meth:`prepare` attached (:meth:`fit` does this on return)."""
        for t in (self._s_taps, self._t_taps):
            if t is not None:
                t.remove()
        self._s_taps = self._t_taps = None

    # -- teacher ---------------------------------------------------------------------------
    def teacher_outputs(self, x):
        """``(logits, {teacher tap name: features})`` of the teacher on ``x``, in eval mode."""
        with training_modes(self.teacher):
            self.teacher.eval()
            z = self.teacher(x)
            feats = {n: self._t_taps[n] for n in self._t_names} if self._t_taps else {}
        return z, feats

    def _teacher_for_arrays(self, X, batch_size):
        """Teacher logits and features for every sample of X (the per-sample cache)."""
        zs, feats = [], {n: [] for n in self._t_names}
        for start in range(0, len(X), batch_size):
            z, f = self.teacher_outputs(X[start:start + batch_size])
            zs.append(z)
            for n in self._t_names:
                feats[n].append(f[n])
        return np.concatenate(zs), {n: np.concatenate(v) for n, v in feats.items()}

    def _teacher_for_batch(self, pos, xb):
        """Teacher output for the batch at position ``pos`` of the epoch, from the cache
        when the batch there has the same contents as when it was cached.

        The cache keeps a private copy of each batch and compares contents (shape, dtype,
        ``np.array_equal``), never identity: a loader may refill one preallocated buffer
        for every batch, so the same array object holds other inputs each time.  A batch
        may be one array or a tuple / list of them (nested, e.g. a two-input model's
        ``(x1, x2)``): each array is copied and compared.  Other batch inputs (dicts,
        object arrays, custom types) are passed to the teacher uncached.  The cost is one
        copy of the data and one O(batch) comparison per step, small next to the teacher's
        forward pass.
        """
        if not self.cache_teacher:
            return self.teacher_outputs(xb)
        hit = self._batch_cache.get(pos)
        if hit is not None:
            x_ref, out = hit
            if _same_batch(xb, x_ref):
                return out
        z, feats = self.teacher_outputs(xb)
        snap = _snapshot_batch(xb)
        if snap is None:                   # not an array (tree): no caching
            self._batch_cache.pop(pos, None)
            return z, feats
        # an output that is a view of the batch (a tapped reshape) would change with it
        leaves = _batch_leaves(xb)
        own = (lambda a: a.copy() if isinstance(a, np.ndarray)
               and any(np.may_share_memory(a, x) for x in leaves) else a)
        out = own(z), {n: own(f) for n, f in feats.items()}
        self._batch_cache[pos] = (snap, out)
        return out

    # -- setup -----------------------------------------------------------------------------
    def prepare(self, x_example) -> "Distiller":
        """Check the pair on a few inputs, attach the taps and build the hint regressors.

        Runs both models in eval mode on ``x_example`` (nothing is cached or updated):
        the class counts must agree, tapped names must exist, attention maps must have
        equal spatial sizes (or a resize), and hint regressors are built from the shapes.
        The taps stay attached for :meth:`loss_and_backward` until :meth:`detach`; if a
        check fails, taps this call attached are removed again before the error propagates.
        """
        attaching = self._s_taps is None
        self._attach()
        try:
            return self._check_pair(x_example)
        except BaseException:
            if attaching:
                self.detach()
            raise

    def _check_pair(self, x_example):
        """The checks and hint construction of :meth:`prepare`, with the taps attached."""
        with training_modes(self.student):
            self.student.eval()
            zs = self.student(x_example)
            s_feats = {n: self._s_taps[n] for n in self._s_names} if self._s_taps else {}
        try:
            zt, t_feats = self.teacher_outputs(x_example)
        except DTypeError as e:
            raise DTypeError(
                f"teacher: failed on the student's input (dtype {getattr(x_example, 'dtype', '?')}): "
                f"{e}; convert the teacher to the student's dtype (teacher.to(dtype))") from None
        for z, name in ((zs, "student"), (zt, "teacher")):
            if not (isinstance(z, np.ndarray) and z.ndim == 2):
                raise ShapeError(f"{name}: expected logits [N, classes], got {getattr(z, 'shape', type(z))}")
        if zs.shape[1] != zt.shape[1]:
            raise ShapeError(
                f"teacher: predicts {zt.shape[1]} classes but student predicts {zs.shape[1]}; "
                f"distillation needs the same classes")
        self._n_classes = zs.shape[1]
        if self.beta > 0:
            for i, (s, t) in enumerate(self.attention_pairs):
                for side, f in (("student", s_feats[s]), ("teacher", t_feats[t])):
                    if not (isinstance(f, np.ndarray) and f.ndim == 4):
                        raise ShapeError(
                            f"attention_pairs[{i}] {(s, t)!r}: expected 4-D feature maps [N, C, H, W] "
                            f"at both modules, got the {side}'s output of shape "
                            f"{getattr(f, 'shape', type(f).__name__)}")
                try:
                    attention_transfer_loss(s_feats[s], t_feats[t].astype(s_feats[s].dtype, copy=False),
                                            p=self.attention_p, resize=self.attention_resize)
                except (ShapeError, DTypeError) as e:
                    raise type(e)(f"attention_pairs[{i}] {(s, t)!r}: {e}") from None
        if self.gamma > 0 and self.hints_ is None:
            rng = np.random.default_rng(self.seed)
            hints = []
            for i, (s, t) in enumerate(self.hint_pairs):
                try:
                    hints.append(Hint.from_features(s_feats[s], t_feats[t], rng=rng))
                except (ShapeError, DTypeError) as e:
                    raise type(e)(f"hint_pairs[{i}] {(s, t)!r}: {e}") from None
            self.hints_ = hints
        return self

    def parameters(self) -> list:
        """The student's parameters followed by the hint regressors' (what to optimise)."""
        params = list(self.student.parameters())
        for h in self.hints_ or []:
            params += h.parameters()
        return params

    # -- one step --------------------------------------------------------------------------
    def loss_and_backward(self, xb, yb, zt, t_feats):
        """Student forward, the mixed loss, and its backward (grads accumulate).

        Returns ``(value, n_correct or None, parts)`` where ``parts`` maps "ce", "kd",
        "at", "hint" to the unweighted terms.
        """
        zs = self.student(xb)
        if zt.shape != zs.shape:
            raise ShapeError(f"teacher: logits shape {zt.shape} does not match student's {zs.shape}")
        zt = zt.astype(zs.dtype, copy=False)
        parts, value = {}, 0.0
        grad = np.zeros_like(zs)
        n_ok = None
        if yb is not None:
            labeled = yb != UNLABELED
            n_ok = int((zs.argmax(axis=1) == yb)[labeled].sum())
            if self.alpha > 0 and labeled.any():
                ce, gce = cross_entropy(zs[labeled], yb[labeled])
                parts["ce"] = ce
                value += self.alpha * ce
                grad[labeled] += zs.dtype.type(self.alpha) * gce
        if self.alpha < 1:
            kd, gkd = soft_target_loss(zs, zt, self.temperature)
            parts["kd"] = kd
            value += (1 - self.alpha) * kd
            grad += zs.dtype.type(1 - self.alpha) * gkd
        if self.beta > 0:
            at_sum = 0.0
            for s, t in self.attention_pairs:
                fs = self._s_taps[s]
                v, g = attention_transfer_loss(
                    fs, t_feats[t].astype(fs.dtype, copy=False), p=self.attention_p,
                    beta=self.beta, squared=self.attention_squared, resize=self.attention_resize)
                at_sum += v / self.beta
                value += v
                self._s_taps.add_grad(s, g)
            parts["at"] = at_sum
        if self.gamma > 0:
            ht_sum = 0.0
            for (s, t), hint in zip(self.hint_pairs, self.hints_):
                fs = self._s_taps[s]
                v, g = hint.loss(fs, t_feats[t].astype(fs.dtype, copy=False), weight=self.gamma)
                ht_sum += v
                value += self.gamma * v
                self._s_taps.add_grad(s, g)
            parts["hint"] = ht_sum
        try:
            self.student.backward(grad)
        except NotDifferentiableError as e:
            raise NotDifferentiableError(
                f"student: contains an inference-only layer and cannot be trained ({e}); "
                f"distil the float or fake-quantized model before converting it") from None
        if self._s_taps is not None and self._s_taps.unconsumed():
            missing = self._s_taps.unconsumed()
            self._s_taps.clear()
            raise RefcompressError(
                f"attention_pairs/hint_pairs: the student's backward never reached {missing}; "
                f"tap a module whose parent container calls its backward")
        return value, n_ok, parts

    # -- training --------------------------------------------------------------------------
    def fit(self, X, y=None, *, optimizer: Optimizer | None = None, lr: float = 1e-3,
            weight_decay: float = 0.0, epochs: int = 10, batch_size: int = 64,
            shuffle: bool = True, validation_data=None, patience: int | None = None,
            monitor: str = "val_loss", restore_best: bool = True, scheduler=None,
            progress: bool = True):
        """Train the student; returns (and stores in ``history_``) the nn History.

        X, y      : arrays (y int labels in [0, classes), -1 = unlabeled sample; or y None =
                    all unlabeled), or X a re-iterable of batches ``x`` or ``(x, y)`` and
                    y None.  Array labels are checked before any update (any other value
                    is an ArgumentError naming ``y``); batch labels when their batch comes.
        ``history_.train_acc`` is, per epoch, correct / labeled over the labeled samples
        (predictions before each step's update); None when no sample had a label.
        optimizer : built over :meth:`parameters` (the hint regressors too); default
                    ``AdamW(self.parameters(), lr, weight_decay=weight_decay)``.
        The rest is passed to :func:`refcompress.nn.fit` (validation on labeled
        ``(X_val, y_val)`` with the student's cross-entropy).
        """
        batch_size = check_int(batch_size, "batch_size", min_value=1)
        arrays = isinstance(X, np.ndarray) or y is not None
        if arrays:
            X = check_array(X, "X", min_ndim=2)
            if len(X) == 0:
                raise ShapeError(f"X: expected at least one sample, got shape {X.shape}")
            if y is not None:
                y = check_array(y, "y", ndim=1, shape=(len(X),))
                if y.dtype.kind not in "iu":
                    raise DTypeError(f"y: expected integer class labels (-1 = unlabeled), got {y.dtype.name}")
                if np.any(y < UNLABELED):
                    i = int(np.flatnonzero(y < UNLABELED)[0])
                    raise ArgumentError(
                        f"y: expected class indices >= 0 or {UNLABELED} (unlabeled), got {y[i]} at index {i}")
            if self.alpha > 0 and (y is None or not np.any(y >= 0)):
                raise ArgumentError(
                    f"alpha: expected 0 for unlabeled data (y has no labels), got {self.alpha}")
            first = X[:min(len(X), batch_size)]
        else:
            if iter(X) is X:
                raise ArgumentError("X: expected arrays or a re-iterable of batches, got a one-shot iterator")
            b0 = next(iter(X), None)
            if b0 is None:
                raise ShapeError("X: the batch iterable yielded no batches")
            first = b0[0] if isinstance(b0, (tuple, list)) else b0
        teacher_modes = training_modes(self.teacher)
        hints_before = self.hints_
        try:
            self.prepare(first)
            try:
                if arrays and y is not None:
                    _check_labels(y, self._n_classes)
                elif not arrays and isinstance(b0, (tuple, list)) and len(b0) > 1:
                    self._check_batch_labels(b0[1])
                optimizer = self._optimizer(optimizer, lr, weight_decay)
                acc = _LabeledAccuracy(scheduler)
            except Exception:
                self.hints_ = hints_before
                raise
            self.teacher.eval()
            if arrays:
                step, data = self._array_step(X, y, batch_size, acc), np.arange(len(X))
            else:
                step, data = self._iterable_step(X, acc)
            history = fit(
                self.student, data, None, optimizer=optimizer, epochs=epochs,
                batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                validation_data=validation_data, patience=patience, monitor=monitor,
                restore_best=restore_best, step_fn=step, scheduler=acc, progress=progress)
            history.train_acc = acc.per_epoch(len(history.loss))
            self.history_ = history
        finally:
            teacher_modes.restore()
            self._batch_cache.clear()
            self.detach()
        return self.history_

    def _optimizer(self, optimizer, lr, weight_decay):
        params = self.parameters()
        if optimizer is None:
            return AdamW(params, lr=lr, weight_decay=weight_decay)
        if not isinstance(optimizer, Optimizer):
            raise DTypeError(f"optimizer: expected an nn Optimizer, got {type(optimizer).__name__}")
        have = {id(p) for p in optimizer.params}
        lost = [i for i, p in enumerate(params) if id(p) not in have]
        if lost:
            raise ArgumentError(
                f"optimizer: does not hold {len(lost)} of the parameters to train; build "
                f"it over distiller.parameters() (student and hint regressors)")
        return optimizer

    def _check_batch_labels(self, yb):
        yb = check_array(yb, "y", ndim=1)
        if yb.dtype.kind not in "iu":
            raise DTypeError(f"y: expected integer class labels (-1 = unlabeled), got {yb.dtype.name}")
        _check_labels(yb, self._n_classes)
        return yb

    def _array_step(self, X, y, batch_size, acc):
        if self.cache_teacher:
            zt_all, feats_all = self._teacher_for_arrays(X, max(batch_size, 256))

        def step(student, idx):
            xb = X[idx]
            yb = None if y is None else y[idx]
            if self.cache_teacher:
                zt, tf = zt_all[idx], {n: v[idx] for n, v in feats_all.items()}
            else:
                zt, tf = self.teacher_outputs(xb)
            value, n_ok, _ = self.loss_and_backward(xb, yb, zt, tf)
            return value, acc.add(n_ok, yb)
        return step

    def _iterable_step(self, data, acc):
        counter = {"pos": 0}

        def step(student, batch):
            xb, yb = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            if yb is None and self.alpha > 0:
                raise ArgumentError(f"alpha: expected 0 for batches without labels, got {self.alpha}")
            if yb is not None:
                yb = self._check_batch_labels(yb)
            pos = counter["pos"]
            counter["pos"] += 1
            zt, tf = self._teacher_for_batch(pos, xb)
            value, n_ok, _ = self.loss_and_backward(xb, yb, zt, tf)
            return value, acc.add(n_ok, yb)

        wrapped = (_SizedRestart if hasattr(data, "__len__") else _Restart)(data, counter)
        return step, wrapped


def _cacheable_array(x):
    return isinstance(x, np.ndarray) and x.dtype != object


def _snapshot_batch(xb):
    """A private copy of a batch input for the teacher cache: an array, or a tuple / list
    (nested) of arrays; None for anything else (then the batch is not cached)."""
    if _cacheable_array(xb):
        return np.array(xb, copy=True)
    if isinstance(xb, (tuple, list)):
        parts = [_snapshot_batch(x) for x in xb]
        if any(p is None for p in parts):
            return None
        return (type(xb) is list, tuple(parts))
    return None


def _same_batch(xb, ref):
    """Whether batch input ``xb`` has the contents of the snapshot ``ref``."""
    if isinstance(ref, np.ndarray):
        return (_cacheable_array(xb) and xb.shape == ref.shape and xb.dtype == ref.dtype
                and np.array_equal(xb, ref))
    is_list, parts = ref
    return (isinstance(xb, (tuple, list)) and (type(xb) is list) == is_list
            and len(xb) == len(parts) and all(_same_batch(x, r) for x, r in zip(xb, parts)))


def _batch_leaves(xb):
    """The arrays of a (nested tuple / list) batch input."""
    if isinstance(xb, (tuple, list)):
        return [a for x in xb for a in _batch_leaves(x)]
    return [xb]


class _LabeledAccuracy:
    """Train accuracy over the labeled samples only: per epoch, correct / labeled.

    :func:`refcompress.nn.fit` divides its count by all samples, which understates the
    accuracy of partly labeled data; so the step reports its count to ``fit`` only for a
    fully labeled batch (an epoch with unlabeled samples shows no accuracy on the progress
    bar) and keeps its own counts, closed at each epoch end.  ``fit`` calls the
    scheduler's ``step()`` once after every epoch, so this object stands in for the user's
    scheduler (calling it on) to learn where the epochs end."""

    def __init__(self, scheduler):
        if scheduler is not None and not callable(getattr(scheduler, "step", None)):
            raise DTypeError(f"scheduler: expected an object with step(), got {type(scheduler).__name__}")
        self.scheduler = scheduler
        self.correct = self.labeled = 0
        self.epochs = []

    def add(self, n_ok, yb):
        """Count one batch; returns the count to report to fit (None unless all labeled)."""
        if n_ok is None or yb is None:
            return None
        n_lab = int(np.count_nonzero(yb != UNLABELED))
        self.correct += int(n_ok)
        self.labeled += n_lab
        return n_ok if n_lab == len(yb) else None

    def step(self):
        self.epochs.append(self.correct / self.labeled if self.labeled else None)
        self.correct = self.labeled = 0
        if self.scheduler is not None:
            self.scheduler.step()

    def per_epoch(self, n_epochs):
        return list(self.epochs[:n_epochs])


class _Restart:
    """Iterates ``data`` afresh each epoch and resets the batch-position counter, so the
    per-position teacher cache lines up with the epoch's batches."""

    def __init__(self, data, counter):
        self.data, self.counter = data, counter

    def __iter__(self):
        self.counter["pos"] = 0
        return iter(self.data)


class _SizedRestart(_Restart):
    def __len__(self):
        return len(self.data)


def distill(student: Module, teacher: Module, X, y=None, **kwargs):
    """Functional form: ``Distiller(student, teacher, **loss kwargs).fit(X, y, **fit kwargs)``.

    Returns the fitted :class:`Distiller` (its ``history_`` and ``hints_``)."""
    init_keys = {"alpha", "temperature", "beta", "attention_pairs", "attention_p",
                 "attention_squared", "attention_resize", "gamma", "hint_pairs", "hints",
                 "cache_teacher", "seed"}
    fit_keys = {"optimizer", "lr", "weight_decay", "epochs", "batch_size", "shuffle",
                "validation_data", "patience", "monitor", "restore_best", "scheduler", "progress"}
    unknown = sorted(k for k in kwargs if k not in init_keys and k not in fit_keys)
    if unknown:
        raise ArgumentError(
            f"{', '.join(unknown)}: unknown keyword argument{'s' if len(unknown) > 1 else ''} of "
            f"distill; expected Distiller arguments {sorted(init_keys)} or fit arguments "
            f"{sorted(fit_keys)}")
    d = Distiller(student, teacher, **{k: v for k, v in kwargs.items() if k in init_keys})
    d.fit(X, y, **{k: v for k, v in kwargs.items() if k not in init_keys})
    return d
