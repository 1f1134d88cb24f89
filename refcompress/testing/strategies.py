"""Hypothesis strategies for quantized tensors and their parameters.

The shapes and values are chosen to break naive kernels: sizes 0, 1, primes and
non-multiples of every vector width (8, 16, 32, 64); scales over many decades; zero points
at the ends of their range; values that land exactly on .5 ties; NaN and +-Inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "refcompress.testing needs hypothesis: pip install \"refcompress[test]\""
    ) from exc

#: Lengths that break blocking and tails: around 8/16/32/64-lane widths, primes, 0 and 1.
AWKWARD_SIZES = (0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 257)

QUANT_DTYPES = (np.int8, np.uint8, np.int16, np.uint16)


def sizes(max_size: int = 300):
    """A dimension length: an awkward size or any size up to ``max_size``."""
    return st.one_of(st.sampled_from([s for s in AWKWARD_SIZES if s <= max_size]),
                     st.integers(0, max_size))


def shapes(min_dims: int = 0, max_dims: int = 4, max_elements: int = 5000):
    """Array shapes whose sides are awkward sizes, with at most ``max_elements`` elements."""
    def ok(shape):
        return int(np.prod(shape, dtype=np.int64)) <= max_elements
    return st.lists(sizes(70), min_size=min_dims, max_size=max_dims).map(tuple).filter(ok)


def scales(min_exp: int = -20, max_exp: int = 20):
    """Positive float32 scales over many decades, including exact powers of two."""
    power_of_two = st.integers(min_exp, max_exp).map(lambda e: float(np.float32(2.0 ** e)))
    mantissa = st.floats(1.0, 10.0, width=32).flatmap(
        lambda m: st.integers(min_exp // 3, max_exp // 3).map(lambda e: float(np.float32(m * 10.0 ** e)))
    )
    return st.one_of(power_of_two, mantissa).filter(lambda s: np.isfinite(s) and s > 0)


def qrange(dtype, draw):
    """(qmin, qmax) within ``dtype``: full, narrow, or a sub-byte range."""
    info = np.iinfo(dtype)
    kind = draw(st.sampled_from(["full", "narrow", "bits"]))
    if kind == "full":
        return int(info.min), int(info.max)
    if kind == "narrow":
        return (int(info.min) + 1 if info.min < 0 else 0), int(info.max)
    bits = draw(st.integers(2, info.bits))
    if info.min < 0:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


@dataclass
class QuantizeCase:
    """One quantize problem: arguments of ``quantize(x, scale, zero_point, axis=, dtype=,
    qmin=, qmax=)``."""

    x: np.ndarray
    scale: np.ndarray | float
    zero_point: np.ndarray | int
    axis: int | None
    dtype: type
    qmin: int
    qmax: int


def _values(draw, n, scale_vec, zp_vec, qmin, qmax):
    """float32 values mixing exact ties, range ends, specials and random reals.

    Bulk values come from a NumPy generator seeded by hypothesis (drawing thousands of
    elements one by one is slow); the mix of kinds is what hypothesis chooses."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p_special = draw(st.sampled_from([0.0, 0.05, 0.3]))
    k = rng.integers(qmin - 3, qmax + 4, size=n).astype(np.float64) - zp_vec
    # Exact .5 ties are representable when the scale is a power of two; otherwise these
    # values land within an ulp of the tie, which is just as hard for a kernel.
    half = rng.choice(np.array([0.0, 0.5, -0.5, 0.49999997, 0.25, 0.75]), size=n)
    x = ((k + half) * scale_vec).astype(np.float32)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, 1e-45], np.float32)
    use_special = rng.random(n) < p_special
    x[use_special] = specials[rng.integers(0, len(specials), size=int(use_special.sum()))]
    return x


@st.composite
def quantize_cases(draw, dtypes=QUANT_DTYPES, max_elements: int = 4000):
    """A full :class:`QuantizeCase`, per-tensor or per-axis, possibly non-contiguous."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes(0, 4, max_elements))
    qmin, qmax = qrange(dtype, draw)
    per_axis = len(shape) > 0 and draw(st.booleans())
    axis = draw(st.integers(-len(shape), len(shape) - 1)) if per_axis else None
    nch = shape[axis] if per_axis else 1
    s = np.array([draw(scales()) for _ in range(nch)], np.float32)
    zp = np.array([draw(st.one_of(st.sampled_from([qmin, qmax, (qmin + qmax) // 2]),
                                  st.integers(qmin, qmax))) for _ in range(nch)], np.int64)
    size = int(np.prod(shape, dtype=np.int64))
    bshape = [1] * len(shape)
    if per_axis:
        bshape[axis] = nch
    svec = np.broadcast_to(s.reshape(bshape) if shape else s[0], shape).reshape(-1).astype(np.float64)
    zvec = np.broadcast_to(zp.reshape(bshape) if shape else zp[0], shape).reshape(-1)
    x = _values(draw, size, svec, zvec, qmin, qmax).reshape(shape)
    if len(shape) >= 2 and draw(st.booleans()):
        # A transposed view: kernels must handle any memory layout.
        x = np.ascontiguousarray(np.swapaxes(x, 0, -1)).swapaxes(0, -1)
    scale = s if per_axis else float(s[0])
    zero_point = zp if per_axis else int(zp[0])
    return QuantizeCase(x, scale, zero_point, axis, dtype, qmin, qmax)


@st.composite
def dequantize_cases(draw, dtypes=QUANT_DTYPES + (np.int32,), max_elements: int = 4000):
    """(q, scale, zero_point, axis) with integer q over the whole type range."""
    dtype = draw(st.sampled_from(dtypes))
    info = np.iinfo(dtype)
    shape = draw(shapes(0, 4, max_elements))
    per_axis = len(shape) > 0 and draw(st.booleans())
    axis = draw(st.integers(-len(shape), len(shape) - 1)) if per_axis else None
    nch = shape[axis] if per_axis else 1
    s = np.array([draw(scales()) for _ in range(nch)], np.float32)
    ends = st.sampled_from([int(info.min), int(info.max), 0])
    zp = np.array([draw(st.one_of(ends, st.integers(int(info.min), int(info.max))))
                   for _ in range(nch)], np.int64)
    size = int(np.prod(shape, dtype=np.int64))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q = rng.integers(info.min, int(info.max) + 1, size=size, dtype=np.int64)
    q[: min(size, 2)] = [info.min, info.max][: min(size, 2)]
    q = q.astype(dtype).reshape(shape)
    return q, (s if per_axis else float(s[0])), (zp if per_axis else int(zp[0])), axis


#: Sizes around the qgemm tiles: MR = 6 rows, 8/16-lane vectors, 64-column panels, K groups of 4.
QGEMM_M = (1, 2, 5, 6, 7, 11, 12, 13, 95, 96, 97, 193)  # 96: the C driver's row block
QGEMM_N = (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129)
QGEMM_K = (1, 2, 3, 4, 5, 7, 8, 13, 31, 63, 64, 65, 127, 128, 129, 300)


@dataclass
class QgemmCase:
    """Arguments of ``qgemm(a, b, a_zero_point, b_zero_point, bias=, output=)``; ``output``
    is a tuple (kind, kwargs) turned into a spec by the caller (kinds: None, "float",
    "fixedpoint", "dequantize")."""

    a: np.ndarray
    b: np.ndarray
    a_zero_point: int
    b_zero_point: object
    bias: np.ndarray | None
    output: tuple | None


def _extreme_ints(rng, info, size, mode):
    if mode == "min":
        return np.full(size, info.min, np.int64)
    if mode == "max":
        return np.full(size, info.max, np.int64)
    if mode == "ends":
        return rng.choice(np.array([info.min, info.max], np.int64), size=size)
    return rng.integers(int(info.min), int(info.max) + 1, size=size)


@st.composite
def output_specs(draw, n_cols, n_rows=None):
    """(kind, kwargs) for an output spec over n_cols columns; with ``n_rows`` a dequantize
    spec may also carry per-row scales and a float bias."""
    kind = draw(st.sampled_from([None, "float", "fixedpoint", "dequantize"]))
    if kind is None:
        return None
    per_col = draw(st.booleans())
    base = draw(st.sampled_from([1e-7, 3.1e-5, 1e-3, 0.0123, 0.37, 0.999]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = (base * rng.uniform(0.5, 1.5, n_cols)).astype(np.float32) if per_col else float(np.float32(base))
    if kind == "dequantize":
        kw = dict(scale=scale, relu=draw(st.booleans()))
        if n_rows is not None and draw(st.booleans()):
            kw["row_scale"] = rng.uniform(1e-3, 2.0, n_rows).astype(np.float32)
        if n_rows is not None and draw(st.booleans()):
            kw["bias"] = rng.normal(0.0, 3.0, n_cols).astype(np.float32)
        return ("dequantize", kw)
    dtype = draw(st.sampled_from([np.int8, np.uint8]))
    info = np.iinfo(dtype)
    z = draw(st.sampled_from([int(info.min), int(info.max), 0 if dtype == np.int8 else 128,
                              draw(st.integers(int(info.min), int(info.max)))]))
    relu = draw(st.booleans())
    return (kind, dict(scale=scale, zero_point=z, dtype=dtype, qmin=z if relu else None))


@st.composite
def qgemm_cases(draw, max_k: int = 300):
    """A qgemm problem with tile-breaking shapes, extreme values and zero points."""
    M = draw(st.sampled_from(QGEMM_M))
    N = draw(st.sampled_from(QGEMM_N))
    K = draw(st.sampled_from([k for k in QGEMM_K if k <= max_k]))
    a_dtype = draw(st.sampled_from([np.uint8, np.int8]))
    ai, bi = np.iinfo(a_dtype), np.iinfo(np.int8)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mode = st.sampled_from(["random", "random", "ends", "min", "max"])
    a = _extreme_ints(rng, ai, (M, K), draw(mode)).astype(a_dtype)
    b = _extreme_ints(rng, bi, (K, N), draw(mode)).astype(np.int8)
    za = draw(st.sampled_from([int(ai.min), int(ai.max), draw(st.integers(int(ai.min), int(ai.max)))]))
    if draw(st.booleans()):
        zb = _extreme_ints(rng, bi, N, draw(mode))
    else:
        zb = draw(st.sampled_from([-128, 127, 0, draw(st.integers(-128, 127))]))
    bias = None
    if draw(st.booleans()):
        bias = rng.integers(-(2**20), 2**20, size=N).astype(np.int32)
    a = relaid(a, draw(st.sampled_from(["c", "c", "fortran", "strided"])))
    b = relaid(b, draw(st.sampled_from(["c", "c", "fortran", "strided"])))
    return QgemmCase(a, b, za, zb, bias, draw(output_specs(N, M)))


def relaid(x, layout: str):
    """The same values in another memory layout: ``"fortran"`` order, or ``"strided"`` (a
    view with a column step of 2 and the rows reversed, so both strides are unusual and
    one is negative)."""
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "strided":
        big = np.zeros((x.shape[0], 2 * x.shape[1]), x.dtype)
        big[::-1, ::2] = x
        return big[::-1, ::2]
    return x


@st.composite
def requantize_cases(draw):
    """(acc int32 [M, N], (kind, kwargs)) with accumulators over the whole int32 range."""
    M = draw(st.sampled_from(QGEMM_M[:6]))
    N = draw(st.sampled_from(QGEMM_N))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mag = draw(st.sampled_from([2**8, 2**16, 2**24, 2**31]))
    acc = rng.integers(-mag, mag, size=(M, N), dtype=np.int64)
    acc.flat[: min(acc.size, 2)] = [-(2**31), 2**31 - 1][: min(acc.size, 2)]
    spec = draw(output_specs(N, M).filter(lambda s: s is not None))
    if spec[0] != "dequantize" and draw(st.booleans()):
        # multipliers > 1 exercise the saturating left shift of the fixed-point rule
        spec[1]["scale"] = np.float32(draw(st.sampled_from([1.5, 3.0, 1000.0, 2.0**20])))
    return acc.astype(np.int32), spec


@dataclass
class QconvCase:
    """Arguments of ``qconv2d(x, w, x_zero_point, w_zero_point, bias=, stride=, padding=,
    dilation=, groups=, output=)``; ``output`` as in :class:`QgemmCase`."""

    x: np.ndarray
    w: np.ndarray
    x_zero_point: int
    w_zero_point: object
    bias: np.ndarray | None
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    output: tuple | None


@st.composite
def qconv_cases(draw):
    """Small convolutions covering stride, padding, dilation, groups / depthwise, 1x1 and
    non-square kernels, odd sizes, batch 1, and values at their extremes."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans())
    cg = 1 if depthwise else draw(st.integers(1, 4))
    C = cg * groups
    ocg = draw(st.sampled_from([1, 2, 5, 17]))
    kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (2, 3), (5, 1)]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    H = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 11))
    W = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 11))
    N = draw(st.sampled_from([1, 2]))
    x_dtype = draw(st.sampled_from([np.uint8, np.int8]))
    xi, wi = np.iinfo(x_dtype), np.iinfo(np.int8)
    mode = st.sampled_from(["random", "random", "ends", "min", "max"])
    x = _extreme_ints(rng, xi, (N, C, H, W), draw(mode)).astype(x_dtype)
    w = _extreme_ints(rng, wi, (ocg * groups, cg, kh, kw), draw(mode)).astype(np.int8)
    zx = draw(st.sampled_from([int(xi.min), int(xi.max), draw(st.integers(int(xi.min), int(xi.max)))]))
    zw = _extreme_ints(rng, wi, ocg * groups, draw(mode)) if draw(st.booleans()) else draw(st.integers(-128, 127))
    bias = rng.integers(-(2**16), 2**16, ocg * groups).astype(np.int32) if draw(st.booleans()) else None
    return QconvCase(x, w, zx, zw, bias, stride, padding, dilation, groups, draw(output_specs(ocg * groups)))


#: The direct kernel's tiles: 6 output channels x 64 pixels, channels in groups of 4.
#: Sizes below, at and above each, primes, and 1.
QCONV_DIRECT_C = (1, 2, 3, 4, 5, 7, 8, 13, 63, 64, 65, 131)
QCONV_DIRECT_OC = (1, 2, 5, 6, 7, 11, 12, 13, 64, 67)
#: (H, W): single rows and columns, primes, widths around the 64-pixel block and the 3x3
#: halo (a multiple of 64 pixels, at least W + 1: W = 63 -> 64, 64 -> 128, 128 -> 192), and
#: images whose last block holds 1, 16 or 63 pixels.
QCONV_DIRECT_HW = ((1, 1), (1, 13), (3, 5), (4, 4), (1, 17), (7, 9), (8, 8), (5, 13), (9, 15), (2, 97),
                   (2, 2), (2, 1), (17, 1), (64, 1), (1, 63), (1, 64), (1, 65), (2, 63), (3, 64), (5, 127),
                   (2, 128), (1, 193), (11, 29), (13, 31), (28, 28), (7, 73))


@st.composite
def qconv_direct_cases(draw, kernel: int = 1):
    """The direct NCHW kernel's domain: 1x1 convolutions with stride 1 and no padding, or
    (``kernel=3``) 3x3 with stride 1 and padding 1.  Tile-breaking channel and pixel
    counts (rows wider than a 64-pixel block included), batch up to 3, values and zero
    points at their extremes, and inputs that are not C-contiguous."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    C, OC = draw(st.sampled_from(QCONV_DIRECT_C)), draw(st.sampled_from(QCONV_DIRECT_OC))
    H, W = draw(st.sampled_from(QCONV_DIRECT_HW))
    N = draw(st.sampled_from([1, 2, 3]))
    x_dtype = draw(st.sampled_from([np.uint8, np.int8]))
    xi, wi = np.iinfo(x_dtype), np.iinfo(np.int8)
    mode = st.sampled_from(["random", "random", "ends", "min", "max"])
    x = _extreme_ints(rng, xi, (N, C, H, W), draw(mode)).astype(x_dtype)
    layout = draw(st.sampled_from(["c", "channels_last", "strided"]))
    if layout == "channels_last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # same values, NHWC memory
    elif layout == "strided":
        wide = np.zeros((N, C, H, 2 * W), x_dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    w = _extreme_ints(rng, wi, (OC, C, kernel, kernel), draw(mode)).astype(np.int8)
    zx = draw(st.sampled_from([int(xi.min), int(xi.max), draw(st.integers(int(xi.min), int(xi.max)))]))
    if draw(st.booleans()):
        zw = _extreme_ints(rng, wi, OC, draw(mode))
    else:
        zw = draw(st.sampled_from([-128, 127, 0, draw(st.integers(-128, 127))]))
    bias = rng.integers(-(2**20), 2**20, OC).astype(np.int32) if draw(st.booleans()) else None
    if kernel == 1:
        dilation, padding = draw(st.sampled_from([(1, 1), (2, 3)])), (0, 0)  # dilation: no effect on 1x1
    else:
        dilation, padding = (1, 1), (1, 1)
    return QconvCase(x, w, zx, zw, bias, (1, 1), padding, dilation, 1, draw(output_specs(OC)))


#: The AVX-512 VBMI depthwise 3x3 kernel: 16-output vectors in strips of 64, each vector
#: reading 18 input bytes.  Widths below, at and above 16, 32, 48, 64, 128 and primes;
#: heights of 1 (only with padding) up to a few rows; 1 and prime channel counts.
QCONV_DW3_C = (1, 2, 3, 5, 7, 13, 16, 17)
QCONV_DW3_H = (1, 2, 3, 4, 5, 7, 13)
QCONV_DW3_W = (1, 2, 3, 5, 7, 13, 15, 16, 17, 18, 31, 32, 33, 47, 48, 49, 56, 63, 64, 65, 66, 79, 127, 128, 129)


@st.composite
def qconv_depthwise3x3_cases(draw):
    """Depthwise 3x3 convolutions with stride 1 and no dilation (the VBMI kernel's domain):
    any padding from 0 to 2 per side that leaves an output, zero points at their extremes
    (the weight zero point 0 and not 0, per tensor or per channel with zeros among them:
    the kernel sums windows only where it is not 0), every output spec, inputs that are not
    C-contiguous."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    C, H, W = draw(st.sampled_from(QCONV_DW3_C)), draw(st.sampled_from(QCONV_DW3_H)), draw(st.sampled_from(QCONV_DW3_W))
    ph = draw(st.integers(max(0, (4 - H) // 2), 2))
    pw = draw(st.integers(max(0, (4 - W) // 2), 2))
    N = draw(st.sampled_from([1, 2, 3]))
    x_dtype = draw(st.sampled_from([np.uint8, np.int8]))
    xi, wi = np.iinfo(x_dtype), np.iinfo(np.int8)
    mode = st.sampled_from(["random", "random", "ends", "min", "max"])
    x = _extreme_ints(rng, xi, (N, C, H, W), draw(mode)).astype(x_dtype)
    if draw(st.booleans()):
        wide = np.zeros((N, C, H, 2 * W), x_dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    w = _extreme_ints(rng, wi, (C, 1, 3, 3), draw(mode)).astype(np.int8)
    zx = draw(st.sampled_from([int(xi.min), int(xi.max), draw(st.integers(int(xi.min), int(xi.max)))]))
    zw_kind = draw(st.sampled_from(["zero", "zero", "scalar", "channels", "some zero"]))
    if zw_kind == "zero":
        zw = 0
    elif zw_kind == "scalar":
        zw = draw(st.sampled_from([-128, 127, draw(st.integers(-128, 127))]))
    else:
        zw = _extreme_ints(rng, wi, C, draw(mode))
        if zw_kind == "some zero":
            zw[rng.random(C) < 0.5] = 0
    bias = rng.integers(-(2**20), 2**20, C).astype(np.int32) if draw(st.booleans()) else None
    return QconvCase(x, w, zx, zw, bias, (1, 1), (ph, pw), (1, 1), C, draw(output_specs(C)))


#: quantize_rows: row lengths around the 8/16-lane vectors, the 16/32-element unrolled
#: loops and the K of a BERT layer, and primes.
ROWS_K = (0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 127, 383, 384, 385, 1531, 1536, 2053)
ROWS_M = (0, 1, 2, 3, 7, 13, 31, 61, 127, 257, 1021)
ROW_KINDS = ("normal", "decades", "zero", "denormal", "ties", "huge", "onehot")


def _row_values(rng, kind, k, inv):
    """One float32 row of length k of the given kind, built so that x * inv stays finite.

    "ties" makes xs = x * inv take the values m / 2 * 2^e exactly (inv is a power of two
    there, or None) with a maximum of 127 * 2^e: then s = 2^e and every odd m is an exact
    .5 tie after the division.  "denormal" rows have maxima around 63 * 2^-149, where
    max / 127 stops underflowing to 0."""
    if kind == "zero":
        return np.where(rng.random(k) < 0.5, np.float32(0.0), np.float32(-0.0)).astype(np.float32)
    if kind == "denormal":
        top = int(rng.choice([1, 62, 63, 64, 65, 127, 128, 200]))
        v = rng.integers(-top, top + 1, k).astype(np.float64)
        v[rng.integers(0, k)] = top * rng.choice([-1, 1])
        x = (v * 2.0**-149).astype(np.float32)
    elif kind == "ties":
        e = int(rng.integers(-120, 100))
        m = rng.integers(-254, 255, k).astype(np.float64)
        m[rng.integers(0, k)] = 254 * rng.choice([-1, 1])
        x = (m / 2 * 2.0**e).astype(np.float32)
    elif kind == "normal":
        x = (rng.standard_normal(k) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    elif kind == "decades":
        x = (rng.choice([-1.0, 1.0], k) * 2.0 ** rng.uniform(-149, 120, k)).astype(np.float32)
    elif kind == "huge":
        x = (rng.uniform(-1, 1, k) * 3.4e38).astype(np.float32)
        x[rng.integers(0, k)] = np.float32(3.4028235e38) * rng.choice([-1, 1])
    else:  # onehot
        x = np.zeros(k, np.float32)
        x[rng.integers(0, k)] = np.float32(rng.standard_normal() * 10.0 ** rng.uniform(-30, 30))
    if inv is not None:
        # keep |x * inv| <= float32 max, exactly: dividing by a power of two >= |inv| is exact
        # for normal values (and only shrinks the others)
        big = float(np.max(np.abs(inv))) if inv.size else 1.0
        p = 2.0 ** np.ceil(np.log2(big)) if big > 1 else 1.0
        if kind == "ties":
            x = (x / inv.astype(np.float64)).astype(np.float32)  # inv is a power of two here
        elif p > 1:
            x = (x.astype(np.float64) / p).astype(np.float32)
    return x


@st.composite
def quantize_rows_cases(draw, max_elements: int = 120_000):
    """(x float32 [M, K], inv_smooth float32 [K] or None) for quantize_rows: awkward shapes,
    rows of mixed kinds (random over decades, all zero, subnormal, exact .5 ties, near the
    float32 maximum, one nonzero), sometimes a non-contiguous layout."""
    k = draw(st.one_of(st.sampled_from(ROWS_K), st.integers(0, 2100)))
    m = draw(st.one_of(st.sampled_from(ROWS_M), st.integers(0, 300)))
    if k > 0:
        m = min(m, max(1, max_elements // k))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inv_kind = draw(st.sampled_from([None, "pow2", "float", "signed"]))
    if inv_kind is None:
        inv = None
    elif inv_kind == "pow2":
        inv = (2.0 ** rng.integers(-4, 5, k)).astype(np.float32)
    elif inv_kind == "float":
        inv = (1.0 / rng.uniform(0.05, 20.0, k)).astype(np.float32)
    else:  # any finite factors, zeros and negatives included
        inv = rng.choice(np.array([0.0, -1.0, 0.5, -3.0, 1.0, 7.25], np.float32), k)
    kinds = draw(st.lists(st.sampled_from(ROW_KINDS), min_size=1, max_size=4))
    x = np.zeros((m, k), np.float32)
    if k > 0:
        ties_inv = inv if inv_kind == "pow2" else None
        for i in range(m):
            kind = kinds[int(rng.integers(0, len(kinds)))]
            if kind == "ties" and inv is not None and ties_inv is None:
                kind = "normal"
            x[i] = _row_values(rng, kind, k, ties_inv if kind == "ties" else inv)
    if m > 1 and k > 1 and draw(st.booleans()):
        x = np.asfortranarray(x)  # another memory layout, same values
    return x, inv
