"""The Distiller trainer and recover(): exact mixed-objective gradients, teacher handling,
caching, unlabeled data, and errors.  Tiny models and few steps keep this fast.

Gradient tolerance: see refcompress/testing/gradcheck.py (element-wise 1e-6 + 1e-5 |analytic|).
"""

import numpy as np
import pytest

from refcompress import nn
from refcompress.distill import UNLABELED, Distiller, distill, recover, soft_target_loss
from refcompress.errors import ArgumentError, DTypeError, ShapeError

from refcompress.testing.gradcheck import assert_grad, numeric_grad


def _cnn(ch, seed, classes=4):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, ch, 3, padding=1, rng=rng), nn.ReLU(),
                         nn.Conv2d(ch, ch, 3, padding=1, rng=rng), nn.ReLU(),
                         nn.GlobalAvgPool2d(), nn.Linear(ch, classes, rng=rng))


def _data(n=24, seed=0, classes=4, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 4, 4)).astype(dtype), rng.integers(0, classes, n)


def test_mixed_objective_gradient_is_exact():
    # L = a CE + (1-a) T^2 KL + beta (AT at two pairs) + gamma HT (1x1 regressor 2 -> 3):
    # parameter grads from one backward vs finite differences of L, student and regressor.
    student, teacher = _cnn(2, 0).to(np.float64), _cnn(3, 1).to(np.float64)
    X, y = _data(3, 2, dtype=np.float64)
    y[1] = UNLABELED
    d = Distiller(student, teacher, alpha=0.3, temperature=2.0, beta=0.7,
                  attention_pairs=[("1", "1"), ("3", "3")], attention_squared=True,
                  gamma=0.4, hint_pairs=[("3", "3")])
    d.prepare(X)
    zt, tf = d.teacher_outputs(X)
    tf = {k: v.copy() for k, v in tf.items()}
    params = dict(student.named_parameters())
    params.update({f"regressor.{k}": p for k, p in d.hints_[0].regressor.named_parameters()})
    student.train()
    for p in params.values():
        p.grad = None
    value, n_ok, parts = d.loss_and_backward(X, y, zt, tf)
    assert set(parts) == {"ce", "kd", "at", "hint"} and n_ok is not None
    analytic = {k: p.grad.copy() for k, p in params.items()}
    expected = 0.3 * parts["ce"] + 0.7 * parts["kd"] + 0.7 * parts["at"] + 0.4 * parts["hint"]
    assert value == pytest.approx(expected, rel=1e-12)

    def f():
        return d.loss_and_backward(X, y, zt, tf)[0]

    for k, p in params.items():
        assert_grad(numeric_grad(f, p.data), analytic[k], f"mixed objective d/d {k}")
    d.detach()


def test_fit_trains_the_student_and_leaves_the_teacher_alone():
    student, teacher = _cnn(2, 0), _cnn(4, 1)
    X, y = _data()
    teacher.train()
    sd = teacher.state_dict()
    d = Distiller(student, teacher, alpha=0.0, temperature=2.0, beta=1.0,
                  attention_pairs=[("3", "3")], gamma=0.5, hint_pairs=[("3", "3")])
    h = d.fit(X, y, epochs=8, lr=1e-2, batch_size=8, progress=False)
    assert h.loss[-1] < h.loss[0]
    assert teacher.training                     # mode restored
    for k, v in teacher.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    assert all(p.grad is None for p in teacher.parameters())
    for m in (student, teacher):                # taps removed, models as they were
        assert all(not mod._forward_hooks and "backward" not in mod.__dict__ for mod in m.modules())


def _trained_weights(cache, X, y, iterable=False):
    student, teacher = _cnn(2, 0), _cnn(3, 1)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    d = Distiller(student, teacher, alpha=0.5, beta=1.0, attention_pairs=[("1", "1")],
                  cache_teacher=cache)
    data = [(X[i:i + 8], y[i:i + 8]) for i in range(0, len(X), 8)] if iterable else X
    d.fit(data, None if iterable else y, epochs=3, lr=1e-2, batch_size=8, shuffle=not iterable,
          progress=False)
    return student.state_dict(), sum(calls)


def test_teacher_cache_gives_identical_training_with_fewer_teacher_calls():
    X, y = _data()
    cached, n_cached = _trained_weights(True, X, y)
    fresh, n_fresh = _trained_weights(False, X, y)
    for k in cached:
        np.testing.assert_array_equal(cached[k], fresh[k])
    assert n_fresh == 3 * len(X) + 8 and n_cached == len(X) + 8   # (+ the prepare probe)


def test_iterable_batches_reuse_the_teacher_when_the_order_repeats():
    X, y = _data()
    it_cached, n_cached = _trained_weights(True, X, y, iterable=True)
    it_fresh, n_fresh = _trained_weights(False, X, y, iterable=True)
    for k in it_cached:
        np.testing.assert_array_equal(it_cached[k], it_fresh[k])
    assert n_fresh == 3 * len(X) + 8 and n_cached == len(X) + 8


def test_unlabeled_transfer_data():
    student, teacher = _cnn(2, 0), _cnn(3, 1)
    X, _ = _data()
    d = distill(student, teacher, X, None, alpha=0.0, temperature=3.0, epochs=6, lr=1e-2,
                batch_size=8, progress=False)
    assert d.history_.loss[-1] < d.history_.loss[0]
    assert d.history_.train_acc[-1] is None
    with pytest.raises(ArgumentError, match="alpha"):
        Distiller(_cnn(2, 0), teacher, alpha=0.5).fit(X, None, epochs=1, progress=False)
    with pytest.raises(ArgumentError, match="alpha"):
        Distiller(_cnn(2, 0), teacher, alpha=0.5).fit(
            X, np.full(len(X), UNLABELED), epochs=1, progress=False)


def test_early_stopping_and_validation_pass_through():
    student, teacher = _cnn(2, 0), _cnn(3, 1)
    X, y = _data(32)
    d = Distiller(student, teacher, alpha=0.5)
    h = d.fit(X, y, epochs=30, lr=0.5, batch_size=8, validation_data=(X[:8], y[:8]),
              patience=1, progress=False)
    assert len(h.val_loss) == len(h.loss) and h.best_epoch is not None
    assert h.stopped_early


def test_trainer_errors():
    X, y = _data()
    s, t = _cnn(2, 0), _cnn(3, 1)
    with pytest.raises(ShapeError, match="teacher: predicts 7 classes but student predicts 4"):
        Distiller(s, _cnn(3, 1, classes=7)).fit(X, y, epochs=1, progress=False)
    with pytest.raises(ArgumentError, match="temperature"):
        Distiller(s, t, temperature=0.0)
    with pytest.raises(ArgumentError, match="alpha"):
        Distiller(s, t, alpha=1.2)
    with pytest.raises(ArgumentError, match="beta"):
        Distiller(s, t, beta=-0.1, attention_pairs=[("1", "1")])
    with pytest.raises(ArgumentError, match="beta.*attention_pairs"):
        Distiller(s, t, beta=1.0)
    with pytest.raises(ArgumentError, match="gamma.*hint_pairs"):
        Distiller(s, t, gamma=1.0)
    with pytest.raises(DTypeError, match="attention_pairs"):
        Distiller(s, t, beta=1.0, attention_pairs=[("1",)])
    with pytest.raises(ArgumentError, match="teacher.*same object"):
        Distiller(s, s)
    pooled = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(3, 3, 1),
                           nn.GlobalAvgPool2d(), nn.Linear(3, 4))
    with pytest.raises(ShapeError, match="student_features.*resize"):
        Distiller(s, pooled, beta=1.0, attention_pairs=[("1", "1")]).fit(X, y, epochs=1, progress=False)
    with pytest.raises(ArgumentError, match=r"attention_pairs\[0\]: the teacher has no submodule 'nope'"):
        Distiller(s, t, beta=1.0, attention_pairs=[("1", "nope")]).fit(X, y, epochs=1, progress=False)
    d = Distiller(s, t, gamma=1.0, hint_pairs=[("3", "3")])
    with pytest.raises(ArgumentError, match="optimizer.*parameters"):
        d.fit(X, y, optimizer=nn.SGD(s.parameters(), lr=0.1), epochs=1, progress=False)
    # a failed fit leaves no hooks behind
    assert all(not m._forward_hooks and "backward" not in m.__dict__ for m in s.modules())


def _prune_half(model):
    """Zero the smaller half of each weight by magnitude and keep it zero (grad mask)."""
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            mask = (np.abs(p.data) >= np.median(np.abs(p.data))).astype(p.data.dtype)
            p.data = p.data * mask
            p.register_grad_hook(lambda g, m=mask: g * m)
    return model


def test_recover_moves_a_pruned_model_back_towards_its_original():
    def mlp():
        rng = np.random.default_rng(3)
        m = nn.Sequential(nn.Flatten(), nn.Linear(16, 24, rng=rng), nn.ReLU(), nn.Linear(24, 4, rng=rng))
        m[3].weight.data *= 4          # spread the logits so the teacher has something to teach
        return m

    original, compressed = mlp(), _prune_half(mlp())
    X, _ = _data(64, 5)

    def disagreement():    # the soft-target KL that recover() minimises (T = 2)
        return soft_target_loss(nn.predict(compressed, X), nn.predict(original, X), 2.0)[0]

    before = disagreement()
    zeros = [p.data == 0 for n, p in compressed.named_parameters() if n.endswith("weight")]
    d = recover(compressed, original, X, epochs=15, lr=3e-3, batch_size=16)
    assert disagreement() < 0.3 * before
    assert d.history_.loss[-1] < d.history_.loss[0]
    after = [p.data for n, p in compressed.named_parameters() if n.endswith("weight")]
    for z, w in zip(zeros, after):                  # the pruning mask survived fine-tuning
        assert np.all(w[z] == 0)


def test_recover_refuses_mismatched_outputs():
    X, _ = _data(4)
    with pytest.raises(ShapeError, match="compressed"):
        recover(_cnn(2, 0, classes=3), _cnn(2, 0), X, epochs=1)
    with pytest.raises(DTypeError, match="original"):
        recover(_cnn(2, 0), "teacher", X)


def test_distiller_and_recover_restore_every_modules_own_mode():
    def bn_net(seed):
        rng = np.random.default_rng(seed)
        m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, rng=rng), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.GlobalAvgPool2d(), nn.Linear(2, 4, rng=rng))
        m.train()
        m[1].eval()                              # frozen BatchNorm
        return m

    def modes(m):
        return [mod.training for mod in m.modules()]

    frozen = [True, True, False, True, True, True]
    student, teacher = bn_net(0), bn_net(1)
    X, y = _data()
    d = Distiller(student, teacher, alpha=0.5)
    d.prepare(X[:4])
    d.teacher_outputs(X[:4])
    d.detach()
    assert modes(student) == frozen and modes(teacher) == frozen
    d.fit(X, y, epochs=1, batch_size=8, progress=False)
    assert modes(student) == frozen and modes(teacher) == frozen
    recover(student, teacher, X, epochs=1, batch_size=8)
    assert modes(student) == frozen and modes(teacher) == frozen
