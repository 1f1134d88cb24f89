"""Gradient checks by central finite differences (float64), for layers and losses with
hand-written backward passes -- ours, or a user's own refcompress.nn modules.

Tolerance, element by element: |numeric - analytic| <= ATOL + RTOL * |analytic| with
h = 1e-6.  The central difference has truncation error h^2/6 |f'''| (~1e-12 for the smooth
functions tested here) and rounding error ~ eps |L| / h (~2e-10 |L|, |L| <= ~100 for small
test shapes), so ATOL = 1e-6 and RTOL = 1e-5 leave a wide margin, while a wrong factor,
sign, index or missing term -- errors of order |analytic| -- cannot pass.
"""

from __future__ import annotations

import numpy as np

H = 1e-6
RTOL = 1e-5
ATOL = 1e-6

__all__ = ["H", "RTOL", "ATOL", "numeric_grad", "assert_grad", "check_module", "check_loss"]


def numeric_grad(f, x):
    """d f() / d x by central differences, perturbing ``x`` in place one element at a time
    (``f`` reads ``x``; it is restored exactly)."""
    g = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + H
        fp = f()
        x[idx] = old - H
        fm = f()
        x[idx] = old
        g[idx] = (fp - fm) / (2 * H)
    return g


def assert_grad(numeric, analytic, what: str) -> None:
    """Element-wise |numeric - analytic| <= ATOL + RTOL |analytic|."""
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=what)


def check_module(module, x, seed: int = 0, before_forward=None):
    """Check ``module.backward`` against finite differences of L = sum(R * module(x)),
    R a fixed random projection, for the input and every parameter (module cast to
    float64).  ``before_forward`` runs before each forward (e.g. to reset random state).

    A failed check raises AssertionError saying what failed: a wrong gradient, a backward
    that leaves a parameter's ``.grad`` None, or a dx that is not a float64 array of x's
    shape."""
    module.to(np.float64).train()
    x = np.array(x, dtype=np.float64)
    if before_forward:
        before_forward()
    out = module(x)
    R = np.random.default_rng(seed).standard_normal(out.shape)
    module.zero_grad()
    dx = module.backward(R)
    unfilled = [name for name, p in module.named_parameters() if p.grad is None]
    if unfilled:
        raise AssertionError(
            f"grad wrt {', '.join(unfilled)}: backward left .grad None; a layer's backward must "
            f"add its parameter gradients (Parameter.accumulate_grad)")
    analytic = {name: p.grad.copy() for name, p in module.named_parameters()}

    def loss():
        if before_forward:
            before_forward()
        return float(np.sum(module(x) * R))

    if not isinstance(dx, np.ndarray):
        raise AssertionError(f"grad wrt input: backward returned {type(dx).__name__}, expected an ndarray "
                             f"of the input's shape {x.shape}")
    if dx.shape != x.shape or dx.dtype != np.float64:
        raise AssertionError(
            f"grad wrt input: backward returned {dx.dtype.name} shape {dx.shape}, expected float64 "
            f"(the module is cast to float64) shape {x.shape}")
    assert_grad(numeric_grad(loss, x), dx, "grad wrt input")
    for name, p in module.named_parameters():
        assert_grad(numeric_grad(loss, p.data), analytic[name], f"grad wrt {name}")
    return dx


def check_loss(fn, x, *args, **kwargs) -> None:
    """Check the gradient returned by ``fn(x, *args) -> (value, grad)`` (value a float)."""
    x = np.array(x, dtype=np.float64)
    value, grad = fn(x, *args, **kwargs)
    if not isinstance(value, float):
        raise AssertionError(f"loss value: expected a Python float, got {type(value).__name__}")
    if not isinstance(grad, np.ndarray) or grad.shape != x.shape or grad.dtype != x.dtype:
        got = f"{grad.dtype.name} shape {grad.shape}" if isinstance(grad, np.ndarray) else type(grad).__name__
        raise AssertionError(f"loss grad: expected float64 shape {x.shape}, got {got}")
    assert_grad(numeric_grad(lambda: fn(x, *args, **kwargs)[0], x), grad, getattr(fn, "__name__", "loss"))
