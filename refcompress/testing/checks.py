"""Checkers: run a user's function against the reference over hypothesis-generated cases.

Each raises AssertionError (with hypothesis's shrunk, minimal failing case) if the
function under test differs from refcompress's reference in a single element.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, HealthCheck

from .._validation import check_choice
from ..kernels import use
from ..kernels.quantize import dequantize as _dequantize, quantize as _quantize
from .asserts import assert_bitwise_equal, assert_exact
from .strategies import dequantize_cases, quantize_cases, quantize_rows_cases


def _settings(max_examples):
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_quantize(fn, *, max_examples: int = 200, dtypes=None) -> None:
    """Check ``fn(x, scale, zero_point, axis=, dtype=, qmin=, qmax=)`` against the reference
    quantize rule, bit for bit (ONNX QuantizeLinear with NaN -> zero point)."""
    strategy = quantize_cases() if dtypes is None else quantize_cases(dtypes=tuple(dtypes))

    @_settings(max_examples)
    @given(case=strategy)
    def run(case):
        with use("numpy"):
            want = _quantize(case.x, case.scale, case.zero_point, axis=case.axis,
                             dtype=case.dtype, qmin=case.qmin, qmax=case.qmax)
        got = fn(case.x, case.scale, case.zero_point, axis=case.axis, dtype=case.dtype,
                 qmin=case.qmin, qmax=case.qmax)
        assert_exact(np.asarray(got), want, what="quantize")

    run()


def check_dequantize(fn, *, max_examples: int = 200) -> None:
    """Check ``fn(q, scale, zero_point, axis=)`` against the reference dequantize rule,
    bit for bit (float32 (q - z) * s with q - z exact)."""

    @_settings(max_examples)
    @given(case=dequantize_cases())
    def run(case):
        q, scale, zero_point, axis = case
        with use("numpy"):
            want = _dequantize(q, scale, zero_point, axis=axis)
        got = fn(q, scale, zero_point, axis=axis)
        assert_bitwise_equal(np.asarray(got), want, what="dequantize")

    run()


def check_quantize_rows(fn, *, max_examples: int = 200) -> None:
    """Check ``fn(x, inv_smooth) -> (q, scale)`` against the reference dynamic per-row
    symmetric int8 rule, bit for bit: q exactly, scale bitwise, and q also equal to
    ``quantize(x * inv_smooth, scale, 0, axis=0, dtype=int8, qmin=-127, qmax=127)``."""
    from ..kernels.quantize import quantize_rows as _quantize_rows

    @_settings(max_examples)
    @given(case=quantize_rows_cases())
    def run(case):
        x, inv = case
        with use("numpy"):
            want_q, want_s = _quantize_rows(x, inv)
            xs = x if inv is None else x * inv
            again = _quantize(xs, want_s, 0, axis=0, dtype=np.int8, qmin=-127, qmax=127)
        assert_exact(again, want_q, what="quantize_rows reference vs quantize(xs, s, axis=0)")
        got_q, got_s = fn(x, inv)
        assert_bitwise_equal(np.asarray(got_s), want_s, what="quantize_rows scale")
        assert_exact(np.asarray(got_q), want_q, what="quantize_rows q")

    run()


def make_output(spec):
    """Turn a strategy's (kind, kwargs) into a Requantize / Dequantize spec (or None)."""
    from ..kernels import Dequantize, Requantize

    if spec is None:
        return None
    kind, kw = spec
    if kind == "dequantize":
        return Dequantize(**kw)
    return Requantize(rule="float" if kind == "float" else "fixedpoint", **kw)


def check_qgemm(fn, *, max_examples: int = 200, max_k: int = 300) -> None:
    """Check ``fn(a, b, a_zero_point, b_zero_point, bias=, output=)`` against the reference
    integer GEMM (exact int32 (a - z_a)(b - z_b) + bias, then the output rule), bit for bit.

    ``output`` is None, a ``Requantize`` or a ``Dequantize`` (refcompress.kernels)."""
    from ..kernels import qgemm as _qgemm
    from .strategies import qgemm_cases

    @_settings(max_examples)
    @given(case=qgemm_cases(max_k=max_k))
    def run(case):
        out = make_output(case.output)
        with use("numpy"):
            want = _qgemm(case.a, case.b, case.a_zero_point, case.b_zero_point, bias=case.bias, output=out)
        got = fn(case.a, case.b, case.a_zero_point, case.b_zero_point, bias=case.bias, output=out)
        assert_bitwise_equal(np.asarray(got), want, what="qgemm")

    run()


def check_requantize(fn, *, max_examples: int = 200) -> None:
    """Check ``fn(acc, output)`` against the reference requantization, bit for bit."""
    from ..kernels import requantize as _requantize
    from .strategies import requantize_cases

    @_settings(max_examples)
    @given(case=requantize_cases())
    def run(case):
        acc, spec = case
        out = make_output(spec)
        with use("numpy"):
            want = _requantize(acc, out)
        assert_bitwise_equal(np.asarray(fn(acc, out)), want, what="requantize")

    run()


def check_qconv2d(fn, *, max_examples: int = 100, layout: str = "NCHW") -> None:
    """Check ``fn(x, w, x_zero_point, w_zero_point, bias=, stride=, padding=, dilation=,
    groups=, output=)`` against the reference quantized convolution, bit for bit.
    ``layout="NHWC"``: ``fn`` is also passed ``layout="NHWC"`` and x as [N, H, W, C], and
    its result must be the NCHW reference's transposed to [N, OH, OW, OC]."""
    from ..kernels import qconv2d as _qconv2d
    from .strategies import qconv_cases

    check_choice(layout, "layout", ("NCHW", "NHWC"))

    @_settings(max_examples)
    @given(case=qconv_cases())
    def run(case):
        kw = dict(bias=case.bias, stride=case.stride, padding=case.padding, dilation=case.dilation,
                  groups=case.groups, output=make_output(case.output))
        with use("numpy"):
            want = _qconv2d(case.x, case.w, case.x_zero_point, case.w_zero_point, **kw)
        if layout == "NHWC":
            got = fn(case.x.transpose(0, 2, 3, 1), case.w, case.x_zero_point, case.w_zero_point, layout="NHWC",
                     **kw)
            want = want.transpose(0, 2, 3, 1)
        else:
            got = fn(case.x, case.w, case.x_zero_point, case.w_zero_point, **kw)
        assert_bitwise_equal(np.asarray(got), want, what="qconv2d")

    run()
