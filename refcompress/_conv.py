"""Convolution geometry shared by :mod:`refcompress.nn` and :mod:`refcompress.kernels`.

A 2-D convolution (cross-correlation, PyTorch's and ONNX's convention) over an NCHW input
reads, for output pixel (i, j) and kernel offset (a, b),

    x_pad[n, c, i*s_h + a*d_h, j*s_w + b*d_w]

where x_pad is x with ``p_h`` rows and ``p_w`` columns of padding on each side.  The output
has ``floor((H + 2 p - d (k - 1) - 1) / s) + 1`` rows (and likewise columns).

:func:`im2col` gathers those reads into a patch matrix so that a convolution becomes one
matrix product per group; :func:`col2im` is its adjoint (it sums every patch entry back
into the pixel it was read from), which is exactly what the backward pass of a convolution
or a pooling layer needs: ``<im2col(x), C> == <x, col2im(C)>`` for all x, C.

This module sits at the top level because the C-kernel layer may not import ``nn``.
"""

from __future__ import annotations

import numpy as np

from ._validation import check_array, check_int
from .errors import ArgumentError, ShapeError

__all__ = ["as_pair", "conv_output_size", "im2col", "col2im"]


def as_pair(value, name: str, min_value: int = 0) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each >= ``min_value``) as an (h, w) tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ArgumentError(f"{name}: expected an int or a pair of ints, got {value!r}")
        return tuple(check_int(v, name, min_value=min_value) for v in value)
    v = check_int(value, name, min_value=min_value)
    return (v, v)


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """Output length along one axis: ``floor((size + 2 p - d (k - 1) - 1) / s) + 1``.

    Raises :class:`ShapeError` when the dilated kernel does not fit in the padded input
    (the result would be < 1).
    """
    size = check_int(size, "size", min_value=1)
    kernel_size = check_int(kernel_size, "kernel_size", min_value=1)
    stride = check_int(stride, "stride", min_value=1)
    padding = check_int(padding, "padding", min_value=0)
    dilation = check_int(dilation, "dilation", min_value=1)
    span = dilation * (kernel_size - 1) + 1
    if size + 2 * padding < span:
        raise ShapeError(
            f"size: input length {size} with padding {padding} is smaller than the dilated "
            f"kernel span {span} (kernel_size={kernel_size}, dilation={dilation})"
        )
    return (size + 2 * padding - span) // stride + 1


def _geometry(shape, kernel_size, stride, padding, dilation, name):
    kh, kw = as_pair(kernel_size, "kernel_size", 1)
    sh, sw = as_pair(stride, "stride", 1)
    ph, pw = as_pair(padding, "padding", 0)
    dh, dw = as_pair(dilation, "dilation", 1)
    H, W = shape[2], shape[3]
    try:
        oh = conv_output_size(H, kh, sh, ph, dh) if H >= 1 else 0
        ow = conv_output_size(W, kw, sw, pw, dw) if W >= 1 else 0
    except ShapeError as e:
        raise ShapeError(f"{name}: spatial size {(H, W)} is too small; {e}") from None
    if oh < 1 or ow < 1:
        raise ShapeError(f"{name}: expected non-empty spatial dimensions, got shape {tuple(shape)}")
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow)


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, pad_value: float = 0.0) -> np.ndarray:
    """Patch matrix of an NCHW input.

    Returns ``cols`` of shape ``[N, C*KH*KW, OH*OW]`` (rows in (c, a, b) order, the order of
    a PyTorch conv weight flattened as ``w.reshape(O, -1)``) with

        cols[n, (c*KH + a)*KW + b, i*OW + j] = x_pad[n, c, i*s_h + a*d_h, j*s_w + b*d_w].

    Padding cells read ``pad_value`` (0 for convolution and average pooling, -inf for max
    pooling).  ``kernel_size``, ``stride``, ``padding``, ``dilation`` are ints or (h, w)
    pairs.  Any strides of ``x`` are accepted; the result is a new C-contiguous array of
    ``x``'s dtype.
    """
    x = check_array(x, "x", ndim=4)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = _geometry(
        x.shape, kernel_size, stride, padding, dilation, "x")
    N, C = x.shape[:2]
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    # One view of every dilated window, then strided picks of window origins (stride) and of
    # taps inside a window (dilation): no copy until the final reshape.
    win = np.lib.stride_tricks.sliding_window_view(
        x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw, ::dh, ::dw]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(N, C * kh * kw, oh * ow)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add a patch matrix back onto an NCHW image.

    ``cols`` has shape ``[N, C*KH*KW, OH*OW]`` for an input of shape ``input_shape`` =
    (N, C, H, W); returns ``dx`` of that shape and of ``cols``'s dtype with

        dx[n, c, h, w] = sum of cols entries whose im2col read was x[n, c, h, w]

    (reads of padding are dropped).  The loop runs over the KH*KW kernel offsets only: for a
    fixed offset the destinations of distinct output pixels never collide, so each offset
    is one vectorised strided add.
    """
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 4):
        raise ShapeError(f"input_shape: expected (N, C, H, W), got {input_shape!r}")
    # N = 0 (an empty batch) is allowed: the result is an empty dx
    N, C, H, W = (check_int(s, "input_shape", min_value=0 if i == 0 else 1)
                  for i, s in enumerate(input_shape))
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = _geometry(
        (N, C, H, W), kernel_size, stride, padding, dilation, "input_shape")
    cols = check_array(cols, "cols", shape=(N, C * kh * kw, oh * ow))
    c6 = cols.reshape(N, C, kh, kw, oh, ow)
    out = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for a in range(kh):
        r0 = a * dh
        for b in range(kw):
            c0 = b * dw
            out[:, :, r0 : r0 + sh * (oh - 1) + 1 : sh, c0 : c0 + sw * (ow - 1) + 1 : sw] += c6[:, :, a, b]
    return np.ascontiguousarray(out[:, :, ph : ph + H, pw : pw + W])
