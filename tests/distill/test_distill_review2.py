"""Review-2 fixes in the distillation trainer and losses: teacher cache keyed by batch
contents, train accuracy over labeled samples, label checks, taps after a failed prepare,
very large temperatures, and library errors for edge cases.  Tiny models keep it fast."""

import numpy as np
import pytest

from refcompress import nn
from refcompress.distill import UNLABELED, Distiller
from refcompress.errors import ArgumentError, ShapeError


def _mlp(seed, hidden=6, classes=3, dtype=np.float64):
    r = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(4, hidden, rng=r), nn.ReLU(),
                         nn.Linear(hidden, classes, rng=r)).to(dtype)


class _BufferLoader:
    """A re-iterable of batches that refills one preallocated buffer for every batch."""

    def __init__(self, X, bs, seed=0):
        self.X, self.bs = X, bs
        self.buf = np.empty((bs,) + X.shape[1:], X.dtype)
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.X) // self.bs

    def __iter__(self):
        perm = self.rng.permutation(len(self.X))
        for i in range(len(self)):
            self.buf[...] = self.X[perm[i * self.bs:(i + 1) * self.bs]]
            yield self.buf


def test_teacher_cache_is_keyed_by_batch_contents_not_array_identity():
    X = np.random.default_rng(0).normal(size=(20, 4))
    s, t = _mlp(0), _mlp(1, 8)
    d = Distiller(s, t, alpha=0.0, temperature=1.0)
    seen, orig = [], d.loss_and_backward

    def spy(xb, yb, zt, tf):
        seen.append(np.max(np.abs(zt - t(xb))))
        return orig(xb, yb, zt, tf)
    d.loss_and_backward = spy
    d.fit(_BufferLoader(X, 5), epochs=3, lr=0.0, progress=False)
    assert len(seen) == 12 and max(seen) == 0.0


def test_train_acc_counts_labeled_samples_only():
    X = np.random.default_rng(0).normal(size=(20, 4))
    s, t = _mlp(0), _mlp(1)
    y = s(X).argmax(1)              # every label is the student's current prediction
    y[10:] = UNLABELED
    h = Distiller(s, t, alpha=0.5).fit(X, y, epochs=2, batch_size=20, shuffle=False,
                                       lr=0.0, progress=False)
    assert h.train_acc == [1.0, 1.0]
    # batches of the iterable form: one with no labels contributes nothing
    batches = [(X[:10], y[:10]), (X[10:], y[10:])]
    h = Distiller(_mlp(0), _mlp(1), alpha=0.5).fit(batches, epochs=1, lr=0.0, progress=False)
    assert h.train_acc == [1.0]
    # fully labeled data: unchanged meaning (correct / all samples)
    y2 = y.copy()
    y2[10:] = (s(X[10:]).argmax(1) + 1) % 3
    h = Distiller(_mlp(0), _mlp(1), alpha=0.5).fit(X, y2, epochs=1, batch_size=7, lr=0.0,
                                                   progress=False)
    assert h.train_acc == [0.5]


@pytest.mark.parametrize("alpha", [0.5, 0.0])
@pytest.mark.parametrize("bad", [7, 3, -2, -7])
def test_out_of_range_labels_are_refused_before_any_update(alpha, bad):
    X = np.random.default_rng(0).normal(size=(20, 4))
    y = np.random.default_rng(1).integers(0, 3, 20)
    y[-1] = bad                     # in the last batch
    s, t = _mlp(0), _mlp(1)
    w0 = s.state_dict()
    with pytest.raises(ArgumentError, match=r"^y: expected class indices"):
        Distiller(s, t, alpha=alpha).fit(X, y, epochs=1, batch_size=5, shuffle=False,
                                         progress=False)
    assert all(np.array_equal(w0[k], v) for k, v in s.state_dict().items())
    # a batch iterable: each batch's labels are checked before its step
    with pytest.raises(ArgumentError, match=r"^y: expected class indices"):
        Distiller(s, t, alpha=alpha).fit([(X[:5], y[-5:])], epochs=1, progress=False)
    assert all(np.array_equal(w0[k], v) for k, v in s.state_dict().items())


def _hooks_left(model):
    return [n for n, m in model.named_modules() if m._forward_hooks or "backward" in m.__dict__]


def test_failed_prepare_removes_the_taps_it_attached():
    X = np.random.default_rng(0).normal(size=(4, 4))
    s, t5 = _mlp(0), _mlp(1, 8, classes=5)
    d = Distiller(s, t5, alpha=0.5, gamma=1.0, hint_pairs=[("1", "1")])
    with pytest.raises(ShapeError, match="teacher: predicts 5 classes"):
        d.prepare(X)
    assert _hooks_left(s) == [] and _hooks_left(t5) == []
    # a successful prepare keeps them until detach()
    t = _mlp(1, 8)
    d = Distiller(s, t, alpha=0.5, gamma=1.0, hint_pairs=[("1", "1")]).prepare(X)
    assert _hooks_left(s) == ["1"] and _hooks_left(t) == ["1"]
    d.detach()
    assert _hooks_left(s) == [] and _hooks_left(t) == []


@pytest.mark.parametrize("T", [1e8, 1e9, 1e12, 1e200, 1e300])
def test_soft_target_loss_reaches_the_high_temperature_limit(T):
    # T^2 KL -> 1/2 mean_i [mean_k D^2 - (mean_k D)^2], grad -> -(D - mean_k D) / (C N),
    # D = z_t - z_s (Hinton et al. 2015, "matching logits"); the corrections are O(|z|/T).
    # Before: 0.58 at T = 1e8 instead of 0.912, negative at 1e9, NaN at 1e200.
    from refcompress.distill import soft_target_loss
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
    D = t - s
    limit = 0.5 * np.mean(np.mean(D**2, axis=1) - np.mean(D, axis=1) ** 2)
    glim = -(D - D.mean(axis=1, keepdims=True)) / D.size
    v, g = soft_target_loss(s, t, T)
    assert v == pytest.approx(limit, rel=1e-7)
    np.testing.assert_allclose(g, glim, rtol=1e-7, atol=1e-7 * np.abs(glim).max())
    v32, g32 = soft_target_loss(s.astype(np.float32), t.astype(np.float32), T)
    assert g32.dtype == np.float32 and np.isfinite(v32) and np.all(np.isfinite(g32))


def test_soft_target_loss_refuses_zero_classes():
    from refcompress.distill import soft_target_loss
    with pytest.raises(ShapeError, match="student_logits: expected at least one class"):
        soft_target_loss(np.ones((2, 0)), np.ones((2, 0)))


def _cnn(ch, seed):
    r = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, ch, 3, padding=1, rng=r), nn.ReLU(), nn.GlobalAvgPool2d(),
                         nn.Linear(ch, 3, rng=r)).to(np.float64)


def test_library_errors_for_edge_cases():
    from refcompress.distill import Taps, attention_transfer_loss, distill, spatial_attention
    from refcompress.errors import DTypeError
    with pytest.raises(ShapeError, match="student_features: expected a non-empty batch"):
        attention_transfer_loss(np.ones((0, 1, 2, 2)), np.ones((0, 1, 2, 2)))
    with pytest.raises(ShapeError, match="teacher_features: expected non-empty spatial maps"):
        attention_transfer_loss(np.ones((1, 1, 4, 4)), np.ones((1, 1, 0, 0)), resize="avgpool")
    with pytest.raises(ShapeError, match="features: expected a non-empty"):
        spatial_attention(np.ones((0, 1, 2, 2)))
    X = np.random.default_rng(0).normal(size=(8, 1, 4, 4))
    y = np.random.default_rng(1).integers(0, 3, 8)
    s = _cnn(2, 0)
    w0 = s.state_dict()
    with pytest.raises(ArgumentError, match=r"^alpah: unknown keyword argument of distill"):
        distill(s, _cnn(3, 1), X, y, alpah=0.1, progress=False)
    with pytest.raises(ArgumentError, match=r"^nope: model has no submodule"):
        Taps(s, ["nope"], what="nope")
    with pytest.raises(ArgumentError, match=r"^attention_pairs\[0\]: the student has no submodule '9'"):
        distill(s, _cnn(3, 1), X, y, beta=1.0, attention_pairs=[("9", "1")], progress=False)
    with pytest.raises(ShapeError, match=r"^attention_pairs\[0\] \('2', '2'\): expected 4-D feature maps"):
        distill(s, _cnn(3, 1), X, y, beta=1.0, attention_pairs=[("2", "2")], progress=False)
    with pytest.raises(ShapeError, match=r"^hint_pairs\[0\] \('1', '2'\): teacher_features"):
        distill(s, _cnn(3, 1), X, y, gamma=1.0, hint_pairs=[("1", "2")], progress=False)
    with pytest.raises(DTypeError, match=r"^teacher: failed on the student's input \(dtype float32\)"):
        distill(_cnn(2, 0).to(np.float32), _cnn(3, 1), X.astype(np.float32), y, progress=False)
    assert all(np.array_equal(w0[k], v) for k, v in s.state_dict().items())
    assert _hooks_left(s) == []
