"""Strategy and checker for the fused attention op (refcompress.kernels.attention).

A kernel is held, element by element, to ``attention_error_bound`` against the reference
evaluated in float64 on the same float32 inputs (``attention_exact``).  One line tests
another project's kernel::

    from refcompress.testing import check_attention
    check_attention(lambda q, k, v, heads, scale, mask=None: my_attention(q, k, v, heads, scale, mask))

The cases break the kernels' blocking: batch and sequence in {1, 2, 3, 15, 16, 17, 31, 33,
116} (around the 16-key vectors, 32-key score blocks and 8-query blocks), head widths d in
{1, 8, 32, 33, 64} (the 32-column P V blocks and their tails), masks with padding (-inf,
-1e4 or finfo.min; some rows fully padded), and large scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ..kernels.attention import attention_error_bound, attention_exact, scores_may_overflow
from .checks import _settings
from .nnops import assert_within_bound

__all__ = ["AttentionCase", "attention_cases", "check_attention", "check_attention_case"]

SIZES = (1, 2, 3, 15, 16, 17, 31, 33, 116)
HEAD_WIDTHS = (1, 8, 32, 33, 64)


@dataclass
class AttentionCase:
    """Arguments of ``attention(q, k, v, heads, scale, mask)``."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    heads: int
    scale: float
    mask: np.ndarray | None


@st.composite
def attention_cases(draw, max_elements: int = 60000):
    """[B, S, H] float32 q, k, v (heads x d = H) with optional padding masks."""
    S = draw(st.sampled_from(SIZES))
    B = draw(st.sampled_from(SIZES if S <= 33 else (1, 2, 3)))
    d = draw(st.sampled_from(HEAD_WIDTHS))
    heads = draw(st.sampled_from((1, 2, 3, 12)))
    while B * S * heads * d > max_elements and heads > 1:
        heads = 1
    while B * S * heads * d > max_elements and B > 1:
        B //= 2
    H = heads * d
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["bert", "large", "tiny", "mixed"]))
    spread = {"bert": 1.0, "large": 30.0, "tiny": 1e-3, "mixed": 1.0}[kind]
    q, k, v = (rng.standard_normal((B, S, H)) * spread for _ in range(3))
    if kind == "mixed":
        v = v * 10.0 ** rng.integers(-3, 4, (B, S, H))
    scale = draw(st.sampled_from([1.0 / np.sqrt(d), 1.0, 0.125, 3.0]))
    mask = None
    if draw(st.booleans()):
        drop = draw(st.sampled_from([-np.inf, -1e4, float(np.finfo(np.float32).min)]))
        lengths = rng.integers(0 if draw(st.booleans()) else 1, S + 1, B)
        mask = np.where(np.arange(S)[None, :] < lengths[:, None], 0.0, drop)
        if draw(st.booleans()):
            mask[0] = drop  # a fully padded row
        mask = mask.astype(np.float32)
    f = np.float32
    return AttentionCase(q.astype(f), k.astype(f), v.astype(f), heads, float(scale), mask)


def check_attention(fn, *, max_examples: int = 100) -> None:
    """Check float32 ``fn(q, k, v, heads, scale, mask)`` against the attention reference
    within ``attention_error_bound`` (rows whose keys are all -inf must be 0)."""

    @_settings(max_examples)
    @given(case=attention_cases())
    def run(case):
        check_attention_case(fn, case)

    run()


def check_attention_case(fn, case: AttentionCase) -> None:
    """One case of :func:`check_attention`.  A failure on a case outside the bound's
    precondition (a float32 score can overflow, where the float64 reference stays finite)
    says so: no bound holds there, the case is not evidence of a kernel bug."""
    exact = attention_exact(case.q, case.k, case.v, case.heads, case.scale, case.mask)
    bound = attention_error_bound(case.q, case.k, case.v, case.heads, case.scale, case.mask)
    got = fn(case.q, case.k, case.v, case.heads, case.scale, case.mask)
    try:
        assert_within_bound(got, exact, bound, what="attention")
    except AssertionError as e:
        over = scores_may_overflow(case.q, case.k, case.heads, case.scale, case.mask)
        if not over.any():
            raise
        b, h, i, j = (int(t) for t in np.argwhere(over)[0])
        raise AssertionError(
            f"{e}; the case is outside attention_error_bound's precondition (every float32 score "
            f"finite): {int(over.sum())} scores can overflow float32, first (batch, head, query, key) = "
            f"({b}, {h}, {i}, {j}); no bound holds there") from e
