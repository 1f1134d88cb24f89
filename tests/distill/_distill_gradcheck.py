"""Central finite differences for the distillation gradient tests (float64).

Tolerance, element by element: |numeric - analytic| <= ATOL + RTOL * |analytic| with
h = 1e-6.  The central difference has truncation error h^2/6 |f'''| (~1e-12 for the
smooth losses here, whose third derivatives are O(1..100) on the sampled inputs) and
rounding error ~ eps |L| / h (~2e-10 |L|, |L| <= ~100 here), so ATOL = 1e-6 and
RTOL = 1e-5 leave a wide margin, while a wrong factor (T instead of T^2, beta instead of
beta/2), sign, index or missing term — errors of order |analytic| — cannot pass.
"""

import numpy as np

H = 1e-6
RTOL = 1e-5
ATOL = 1e-6


def numeric_grad(f, x):
    """d f() / d x by central differences, perturbing ``x`` in place one element at a time."""
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


def assert_grad(numeric, analytic, what):
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=what)
