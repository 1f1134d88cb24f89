"""fit / evaluate / predict: learning, determinism, early stopping, custom steps, progress."""

import numpy as np
import pytest

from refcompress import nn
from refcompress.errors import ArgumentError, ShapeError


def blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = (rng.standard_normal((n, 2)) * 0.5 + np.where(y[:, None] == 1, 2.0, -2.0)).astype(np.float32)
    return X, y


def mlp(seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 2))


def test_fit_learns_a_separable_problem():
    X, y = blobs()
    Xv, yv = blobs(60, seed=1)
    model = mlp()
    hist = nn.fit(model, X, y, optimizer=nn.SGD(model.parameters(), lr=0.1, momentum=0.9),
                  epochs=8, batch_size=16, validation_data=(Xv, yv), progress=False)
    assert len(hist.loss) == 8 and hist.loss[-1] < hist.loss[0]
    assert hist.train_acc[-1] >= 0.95 and hist.val_acc[-1] >= 0.95
    assert nn.evaluate(model, Xv, yv)["accuracy"] == hist.val_acc[-1]
    assert nn.predict(model, Xv, batch_size=7).shape == (60, 2)
    assert model.training  # mode restored


def test_fit_is_deterministic_for_a_fixed_seed():
    X, y = blobs()

    def train(seed):
        model = mlp()
        h = nn.fit(model, X, y, optimizer=nn.AdamW(model.parameters(), lr=0.01), epochs=3,
                   batch_size=10, seed=seed, progress=False)
        return model.state_dict(), h.loss

    (a, la), (b, lb), (c, _) = train(3), train(3), train(4)
    assert la == lb
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)  # the shuffle order matters


def test_early_stopping_restores_the_best_weights():
    X, y = blobs()
    Xv, yv = X, 1 - y  # validation labels are the opposite: val loss rises as training works
    model = mlp()
    start = model.state_dict()
    opt = nn.SGD(model.parameters(), lr=0.1)
    hist = nn.fit(model, X, y, optimizer=opt, epochs=20, batch_size=16, validation_data=(Xv, yv),
                  patience=2, progress=False)
    assert hist.stopped_early and len(hist.loss) == hist.best_epoch + 2
    assert hist.val_loss[hist.best_epoch - 1] == min(hist.val_loss)
    # replay: the same fit stopped at best_epoch leaves the same weights
    replay = mlp()
    replay.load_state_dict(start)
    nn.fit(replay, X, y, optimizer=nn.SGD(replay.parameters(), lr=0.1), epochs=hist.best_epoch,
           batch_size=16, progress=False)
    for k, v in replay.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v)


def test_custom_step_fn_distillation_style():
    X, y = blobs()
    teacher = mlp(1)
    nn.fit(teacher, X, y, optimizer=nn.SGD(teacher.parameters(), lr=0.1), epochs=3, progress=False)
    teacher.eval()
    student = nn.Sequential(nn.Linear(2, 2))
    calls = []

    def step(model, batch):
        xb, yb = batch
        out = model(xb)
        value, grad = nn.kl_div(out, teacher(xb), temperature=2.0)
        model.backward(grad)
        calls.append(len(xb))
        return value, None

    hist = nn.fit(student, X, y, optimizer=nn.SGD(student.parameters(), lr=0.5), epochs=4,
                  batch_size=32, step_fn=step, progress=False)
    assert calls[:4] == [32, 32, 32, 24] and hist.train_acc == [None] * 4
    assert hist.loss[-1] < hist.loss[0]
    agree = (nn.predict(student, X).argmax(1) == nn.predict(teacher, X).argmax(1)).mean()
    assert agree > 0.95


def test_fit_on_an_iterable_of_batches_and_schedule():
    X, y = blobs()
    batches = [(X[i : i + 30], y[i : i + 30]) for i in range(0, 120, 30)]
    model = mlp()
    opt = nn.SGD(model.parameters(), lr=0.1)
    hist = nn.fit(model, batches, optimizer=opt, epochs=3, validation_data=batches[:1],
                  scheduler=nn.StepLR(opt, 1, 0.5), progress=False)
    assert hist.lr == [0.1, 0.05, 0.025] and len(hist.val_acc) == 3
    with pytest.raises(ArgumentError, match="one-shot iterator"):
        nn.fit(model, iter(batches), optimizer=opt, progress=False)


def test_progress_bar_goes_to_stderr_and_can_be_disabled(capsys):
    X, y = blobs(40)
    model = mlp()
    nn.fit(model, X, y, optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=10)
    err = capsys.readouterr()
    assert err.out == ""
    assert "epoch 1/2 [####################] 4/4 loss" in err.err and "epoch 2/2" in err.err
    nn.fit(model, X, y, optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=1, progress=False)
    assert capsys.readouterr().err == ""


def test_fit_argument_errors():
    X, y = blobs(20)
    model = mlp()
    opt = nn.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ShapeError, match="X: expected 20 targets"):
        nn.fit(model, X, y[:5], optimizer=opt)
    with pytest.raises(ArgumentError, match="patience: early stopping needs validation_data"):
        nn.fit(model, X, y, optimizer=opt, patience=2)
    with pytest.raises(ArgumentError, match="epochs"):
        nn.fit(model, X, y, optimizer=opt, epochs=0)
    with pytest.raises(ArgumentError, match="monitor"):
        nn.fit(model, X, y, optimizer=opt, monitor="acc")


def _frozen_bn_model():
    m = nn.Sequential(nn.Linear(4, 3, rng=np.random.default_rng(0)), nn.BatchNorm1d(3))
    m.train()
    m[1].eval()                                  # a frozen BatchNorm in a training model
    return m


def _modes(m):
    return [mod.training for mod in m.modules()]


def test_fit_evaluate_predict_restore_every_modules_own_mode():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 3, 20)
    m = _frozen_bn_model()
    nn.evaluate(m, X, y)
    assert _modes(m) == [True, True, False]
    nn.predict(m, X)
    assert _modes(m) == [True, True, False]
    nn.fit(m, X, y, optimizer=nn.SGD(m.parameters(), lr=0.1), validation_data=(X, y),
           progress=False)
    assert _modes(m) == [True, True, False]
    m.eval()
    m[0].train()                                 # eval root, one child in training mode
    nn.evaluate(m, X, y)
    nn.predict(m, X)
    assert _modes(m) == [False, True, False]
    with nn.training_modes(m):
        m.train()
        assert _modes(m) == [True, True, True]
    assert _modes(m) == [False, True, False]


def test_array_X_without_targets_is_refused_naming_y():
    X, _ = blobs(20)
    model = mlp()
    opt = nn.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ArgumentError, match="y: X is an array, so expected its targets"):
        nn.evaluate(model, X)
    with pytest.raises(ArgumentError, match="y: X is an array, so expected its targets"):
        nn.fit(model, X, optimizer=opt, loss=nn.mse, progress=False)
    with pytest.raises(ArgumentError, match="validation_data: X is an array"):
        nn.fit(model, X, np.zeros(20, np.int64), optimizer=opt, validation_data=X, progress=False)
    # a custom step reads the batches itself: an array without targets is fine
    seen = []
    nn.fit(model, X, optimizer=opt, progress=False,
           step_fn=lambda m, xb: (seen.append(len(xb)) or 0.0, None))
    assert sum(seen) == 20
