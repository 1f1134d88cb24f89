"""Optimizer steps against PyTorch's formulas written out by hand, Parameter hooks, schedules."""

import math

import numpy as np
import pytest

from refcompress import nn
from refcompress.errors import ArgumentError, DTypeError
from refcompress.nn.module import Parameter

GRADS = [np.array([0.5, -1.0, 2.0]), np.array([-0.25, 0.75, 1.0]), np.array([1.5, 0.0, -2.0])]
THETA0 = np.array([1.0, -2.0, 0.5])


def run(opt_cls, **kw):
    p = Parameter(THETA0.copy())
    opt = opt_cls([p], **kw)
    out = []
    for g in GRADS:
        opt.zero_grad()
        p.grad = g.copy()
        opt.step()
        out.append(p.data.copy())
    return out


@pytest.mark.parametrize("momentum,dampening,nesterov,wd", [
    (0.0, 0.0, False, 0.0), (0.0, 0.0, False, 0.1), (0.9, 0.0, False, 0.0),
    (0.9, 0.3, False, 0.05), (0.8, 0.0, True, 0.01),
])
def test_sgd_matches_pytorch_rule(momentum, dampening, nesterov, wd):
    lr = 0.1
    got = run(nn.SGD, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd)
    theta, buf = THETA0.copy(), None
    for t, g in enumerate(GRADS):
        d = g + wd * theta
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        theta = theta - lr * d
        np.testing.assert_allclose(got[t], theta, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("lr,betas,eps,wd", [(1e-3, (0.9, 0.999), 1e-8, 1e-2), (0.1, (0.5, 0.9), 1e-3, 0.0)])
def test_adamw_matches_pytorch_rule(lr, betas, eps, wd):
    got = run(nn.AdamW, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    b1, b2 = betas
    theta, m, v = THETA0.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        theta = theta * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2**t) + eps
        theta = theta - (lr / (1 - b1**t)) * m / denom
        np.testing.assert_allclose(got[t - 1], theta, rtol=1e-14, atol=1e-15)


def test_first_adamw_step_moves_each_weight_by_about_lr():
    # with m_hat = g and v_hat = g^2 after one step, the update is lr * sign(g)
    p = Parameter(np.zeros(3, np.float32))
    p.grad = np.array([3.0, -0.01, 100.0], np.float32)
    nn.AdamW([p], lr=0.01, weight_decay=0.0).step()
    np.testing.assert_allclose(p.data, [-0.01, 0.01, -0.01], rtol=1e-5)
    assert p.data.dtype == np.float32


def test_grad_hooks_mask_the_update_and_post_step_hooks_run_after():
    p = Parameter(np.array([1.0, 2.0, 3.0, 4.0]))
    mask = np.array([1.0, 0.0, 1.0, 0.0])
    order = []
    p.register_grad_hook(lambda g: (order.append("grad"), g * mask)[1])
    h = p.register_post_step_hook(lambda q: (order.append("post"), setattr(q, "data", q.data * mask)))
    opt = nn.SGD([p], lr=0.5, momentum=0.9, weight_decay=0.1)
    p.grad = np.ones(4)
    opt.step()
    assert order == ["grad", "post"]
    np.testing.assert_array_equal(p.grad, mask)  # the hooked gradient is what .grad holds
    # masked entries: their grad was zeroed, but weight decay would still move them; the
    # post-step hook zeroes them, which is how pruning keeps weights at 0
    np.testing.assert_allclose(p.data, [1 - 0.5 * (1 + 0.1), 0, 3 - 0.5 * (1 + 0.3), 0])
    h.remove()
    assert len(p.post_step_hooks) == 0 and len(p.grad_hooks) == 1


def test_parameters_without_grad_are_skipped_and_duplicates_counted_once():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = nn.SGD([a, b, a], lr=1.0)
    assert len(opt.params) == 2
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(a.data, [0, 0])
    np.testing.assert_array_equal(b.data, [1, 1])


def test_schedules():
    p = Parameter(np.ones(1))
    opt = nn.SGD([p], lr=1.0)
    sched = nn.StepLR(opt, step_size=2, gamma=0.5)
    assert [sched.step() for _ in range(5)] == [1.0, 0.5, 0.5, 0.25, 0.25]
    assert opt.lr == 0.25
    opt2 = nn.SGD([p], lr=1.0)
    cos = nn.CosineAnnealingLR(opt2, T_max=4, eta_min=0.1)
    lrs = [cos.step() for _ in range(5)]
    np.testing.assert_allclose(lrs, [0.1 + 0.9 * (1 + math.cos(math.pi * t / 4)) / 2 for t in [1, 2, 3, 4, 4]])


def test_optimizer_argument_errors():
    p = Parameter(np.ones(1))
    with pytest.raises(ArgumentError, match="lr"):
        nn.SGD([p], lr=-1.0)
    with pytest.raises(ArgumentError, match="nesterov"):
        nn.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ArgumentError, match="betas"):
        nn.AdamW([p], betas=(0.9, 1.0))
    with pytest.raises(DTypeError, match=r"params\[0\]"):
        nn.SGD([np.ones(1)], lr=0.1)
    with pytest.raises(ArgumentError, match="params"):
        nn.SGD([], lr=0.1)


def test_grad_hook_results_keep_the_parameters_dtype_and_shape():
    from refcompress.errors import ShapeError
    p = Parameter(np.ones((3, 4), np.float32))
    mask = np.tile([1.0, 0.0], (3, 2))                    # float64
    p.register_grad_hook(lambda g: g * mask)
    p.grad = np.ones((3, 4), np.float32)
    nn.SGD([p], lr=0.5).step()
    assert p.dtype == np.float32 and p.grad.dtype == np.float32
    np.testing.assert_array_equal(p.data, 1 - 0.5 * mask)

    def widen(g):
        return np.ones((2, 3, 4), np.float32)            # broadcastable, another shape
    q = Parameter(np.ones((3, 4), np.float32))
    q.register_grad_hook(widen)
    q.grad = np.ones((3, 4), np.float32)
    with pytest.raises(ShapeError, match=r"grad hook 0 \(.*widen\): expected it to return the parameter's shape"):
        nn.AdamW([q]).step()
    assert q.shape == (3, 4)
    r = Parameter(np.ones(2, np.float32))
    r.register_grad_hook(lambda g: [0.0, 0.0])
    r.grad = np.ones(2, np.float32)
    with pytest.raises(DTypeError, match="grad hook 0 .*numpy.ndarray or None, got list"):
        nn.SGD([r], lr=0.1).step()



def test_a_grad_hook_may_return_a_numpy_scalar_for_a_0d_parameter():
    p = Parameter(np.array(1.0, np.float32))
    p.register_grad_hook(lambda g: g * 0.5)  # a 0-d array times a float is a NumPy scalar
    p.accumulate_grad(np.array(0.2, np.float32))
    nn.SGD([p], lr=1.0).step()
    assert p.data.shape == () and p.data.dtype == np.float32
    np.testing.assert_allclose(p.data, 0.9)
