"""qconv2d: every backend and ISA variant, bit-exact against the reference, and the
reference against a loop written straight from the definition."""

import itertools

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, OverflowRiskError, ShapeError
from refcompress.kernels import Requantize
from refcompress.testing import assert_exact, check_qconv2d, kernel_variants
from _cpuinfo import cpu_flags_or_skip  # noqa: E402

VARIANTS = kernel_variants("qconv2d")


def _id(v):
    return f"{v[0]}-{v[1]}" if v[1] else v[0]


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_qconv2d_matches_reference(variant):
    def forced(*args, **kwargs):
        with kernels.use(*variant):
            return kernels.qconv2d(*args, **kwargs)

    check_qconv2d(forced, max_examples=60)


def naive_conv(x, w, zx, zw, bias, stride, padding, dilation, groups):
    """Seven nested loops over the definition (tiny shapes only)."""
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    OH = (H + 2 * padding - dilation * (KH - 1) - 1) // stride + 1
    OW = (W + 2 * padding - dilation * (KW - 1) - 1) // stride + 1
    out = np.zeros((N, OC, OH, OW), np.int64)
    ocg = OC // groups
    for n in range(N):
        for o in range(OC):
            g = o // ocg
            for i in range(OH):
                for j in range(OW):
                    s = int(bias[o])
                    for c in range(Cg):
                        for kh in range(KH):
                            for kw in range(KW):
                                r, q = i * stride - padding + kh * dilation, j * stride - padding + kw * dilation
                                xv = int(x[n, g * Cg + c, r, q]) if 0 <= r < H and 0 <= q < W else zx
                                s += (xv - zx) * (int(w[o, c, kh, kw]) - int(zw[o]))
                    out[n, o, i, j] = s
    return out


@pytest.mark.parametrize("groups,cg", [(1, 3), (2, 2), (4, 1)])
def test_reference_equals_the_definition_loop(groups, cg):
    rng = np.random.default_rng(groups)
    x = rng.integers(0, 256, (2, groups * cg, 6, 5)).astype(np.uint8)
    w = rng.integers(-128, 128, (2 * groups, cg, 3, 2)).astype(np.int8)
    zw = rng.integers(-128, 128, 2 * groups)
    bias = rng.integers(-500, 500, 2 * groups).astype(np.int32)
    with kernels.use("numpy"):
        got = kernels.qconv2d(x, w, 77, zw, bias=bias, stride=2, padding=1, dilation=2, groups=groups)
    want = naive_conv(x, w, 77, zw, bias, 2, 1, 2, groups)
    assert_exact(got, want.astype(np.int32))


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_packed_conv_weights_reused(variant):
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, (16, 8, 3, 3)).astype(np.int8)
    pw = kernels.pack_conv_weights(w, 0, groups=1)
    out = Requantize(np.float32(3e-4), 0, np.int8)
    for n in (1, 3):
        x = rng.integers(-128, 128, (n, 8, 12, 9)).astype(np.int8)
        with kernels.use(*variant, threads=2):
            got = kernels.qconv2d(x, pw, -3, padding=1, output=out)
        with kernels.use("numpy"):
            assert_exact(got, kernels.qconv2d(x, pw, -3, padding=1, output=out))


def test_bad_inputs_name_the_argument():
    x = np.zeros((1, 4, 5, 5), np.uint8)
    w = np.zeros((6, 2, 3, 3), np.int8)
    with pytest.raises(ShapeError, match="channels"):
        kernels.qconv2d(x, w)  # 4 channels, w expects 2 per group x 1 group
    with pytest.raises(ArgumentError, match="groups"):
        kernels.qconv2d(x, w, groups=4)
    with pytest.raises(ArgumentError, match="stride"):
        kernels.qconv2d(x, w, groups=2, stride=0)
    with pytest.raises(ArgumentError, match="padding"):
        kernels.qconv2d(x, w, groups=2, padding=-1)
    with pytest.raises(ShapeError, match="smaller than the dilated kernel"):
        kernels.qconv2d(x, w, groups=2, dilation=3)
    with pytest.raises(ShapeError, match="x: expected a 4-D"):
        kernels.qconv2d(x[0], w, groups=2)
    with pytest.raises(ShapeError, match="w_zero_point"):
        kernels.qconv2d(x, w, 0, np.zeros(5, np.int64), groups=2)
    with pytest.raises(OverflowRiskError, match="bound"):
        big = np.zeros((1, 9000, 3, 3), np.int8)
        kernels.qconv2d(np.zeros((1, 9000, 3, 3), np.uint8), big)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
@pytest.mark.parametrize("groups,cin,cout", [(1, 19, 70), (37, 37, 37), (4, 8, 12)], ids=["dense", "depthwise", "grouped"])
def test_each_c_path_on_wider_shapes(variant, groups, cin, cout):
    # channel counts that are not multiples of 16 or 64, two threads, stride and padding
    rng = np.random.default_rng(groups)
    x = rng.integers(0, 256, (2, cin, 13, 11)).astype(np.uint8)
    w = rng.integers(-128, 128, (cout, cin // groups, 3, 3)).astype(np.int8)
    pw = kernels.pack_conv_weights(w, rng.integers(-128, 128, cout), groups=groups)
    assert pw.mode == {1: "dense", 37: "depthwise", 4: "grouped"}[groups]
    bias = rng.integers(-1000, 1000, cout).astype(np.int32)
    for out in (None, Requantize(np.float32(1e-4), 3, np.uint8, "fixedpoint", qmin=3)):
        kw = dict(bias=bias, stride=(2, 1), padding=(1, 2), output=out)
        with kernels.use(*variant, threads=2):
            got = kernels.qconv2d(x, pw, 200, **kw)
        with kernels.use("numpy"):
            assert_exact(got, kernels.qconv2d(x, pw, 200, **kw))


def test_depthwise_zero_point_is_validated_like_the_others():
    w = np.zeros((4, 1, 3, 3), np.int8)
    from refcompress.errors import DTypeError

    with pytest.raises(DTypeError, match="w_zero_point"):
        kernels.pack_conv_weights(w, 0.7, groups=4)
    with pytest.raises(ArgumentError, match="w_zero_point"):
        kernels.pack_conv_weights(w, 300, groups=4)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("stride,dilation", [(1, 1), ((2, 1), 1), (1, (2, 1)), (1, 2), (1, (1, 3))])
def test_depthwise_plane_borders(variant, threads, padding, stride, dilation):
    """The AVX-512 stride-1 depthwise kernel reads the uint8 / int8 plane itself (masked
    loads, zero point for padding) into kh-paired rows: heights and widths of 1, 2, primes
    and around the 16- and 32-column passes, N > 1, extreme values and zero points, the
    requantized and the int32 outputs."""
    rng = np.random.default_rng(padding * 7 + threads)
    C, k = 3, 3
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    for H, W in [(1, 1), (2, 2), (1, 17), (5, 3), (7, 15), (3, 16), (4, 31), (2, 32), (3, 33), (13, 48), (6, 56)]:
        OH = H + 2 * padding - dh * (k - 1)
        OW = W + 2 * padding - dw * (k - 1)
        if OH < 1 or OW < 1:
            continue
        for xt, zx in [(np.uint8, 0), (np.uint8, 255), (np.int8, -128), (np.int8, 127)]:
            lo, hi = (0, 256) if xt == np.uint8 else (-128, 128)
            x = rng.integers(lo, hi, (3, C, H, W)).astype(xt)
            x[0, 0] = lo
            x[1, 1] = hi - 1
            w = rng.integers(-128, 128, (C, 1, k, k)).astype(np.int8)
            w[0] = -128
            w[1] = 127
            zw = np.array([127, -128, 3])
            kw = dict(stride=stride, padding=padding, dilation=dilation, groups=C)
            for out in (None, Requantize(np.float32(0.37), 128, np.uint8)):
                if out is not None:
                    kw["output"] = out
                with kernels.use("numpy"):
                    want = kernels.qconv2d(x, w, zx, zw, **kw)
                with kernels.use(*variant, threads=threads):
                    got = kernels.qconv2d(x, w, zx, zw, **kw)
                assert_exact(got, want)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
@pytest.mark.parametrize(
    "k,stride,padding,dilation,width",
    [((3, 3), 1, 1, 1, 56), ((3, 2), 1, 0, 1, 17), ((1, 5), 1, 4, 1, 1), ((2, 4), 1, 3, 2, 33),
     ((3, 3), 1, 2, (1, 16), 40), ((3, 3), 1, 0, (1, 17), 40), ((3, 3), 2, 1, 1, 31), ((1, 1), 1, 0, 1, 16)],
)
def test_depthwise_tap_pairing_edges(variant, k, stride, padding, dilation, width):
    """The AVX-512 depthwise kernel pairs taps along kw for vpmaddwd when the W stride is 1
    and the dilated window fits one 32-word load (dw <= 16): odd and even KW, widths around
    the 16-lane vector, dilation 16 (the last paired case) and 17 (the fallback), stride 2,
    padding past the kernel, extreme values and zero points."""
    rng = np.random.default_rng(width)
    C = 5
    for xt, zx_vals in [(np.uint8, (0, 255)), (np.int8, (-128, 127))]:
        lo, hi = (0, 256) if xt == np.uint8 else (-128, 128)
        x = rng.integers(lo, hi, (2, C, 7, width)).astype(xt)
        x[0, 0] = lo
        x[0, 1] = hi - 1
        w = rng.integers(-128, 128, (C, 1) + k).astype(np.int8)
        w[0] = -128
        w[1] = 127
        zw = np.array([127, -128, 0, 5, -7])
        for zx in zx_vals:
            kw = dict(stride=stride, padding=padding, dilation=dilation, groups=C)
            with kernels.use("numpy"):
                want = kernels.qconv2d(x, w, zx, zw, **kw)
            with kernels.use(*variant, threads=2):
                got = kernels.qconv2d(x, w, zx, zw, **kw)
            assert_exact(got, want)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
@pytest.mark.parametrize("cin,hw,cout,k,stride,padding,dilation",
                         [(48, (16, 32), 32, 1, 1, 0, 1), (33, (17, 18), 17, 1, 1, 0, 1),
                          (32, (20, 16), 48, 3, 2, 3, 2), (16, (16, 16), 16, 3, 1, 1, 1), (1, (5, 40), 3, 3, 1, 4, 1)])
def test_dense_transpose_tiles(variant, cin, hw, cout, k, stride, padding, dilation):
    """The dense path's NCHW <-> NHWC transposes run 16 x 16 byte tiles with scalar edges:
    channel and pixel counts that are exact multiples of 16, ragged ones, one channel,
    both input types (uint8 is flipped inside the tile), extreme values."""
    rng = np.random.default_rng(cin)
    for xt, zx in [(np.uint8, 255), (np.uint8, 0), (np.int8, -128), (np.int8, 127)]:
        lo, hi = (0, 256) if xt == np.uint8 else (-128, 128)
        x = rng.integers(lo, hi, (2, cin) + hw).astype(xt)
        x[1, 0] = lo
        w = rng.integers(-128, 128, (cout, cin, k, k)).astype(np.int8)
        zw = rng.integers(-128, 128, cout)
        for out in (None, Requantize(np.float32(3e-5), 100, np.uint8)):
            kw = dict(stride=stride, padding=padding, dilation=dilation, output=out)
            with kernels.use("numpy"):
                want = kernels.qconv2d(x, w, zx, zw, **kw)
            with kernels.use(*variant, threads=2):
                assert_exact(kernels.qconv2d(x, w, zx, zw, **kw), want)


# ---- the direct NCHW kernel: 1x1 and 3x3 (AVX-512 VNNI) ------------------------------------

from hypothesis import given, settings  # noqa: E402

from refcompress.kernels import qconv as qconv_module  # noqa: E402
from refcompress.testing.checks import make_output  # noqa: E402
from refcompress.testing.strategies import QconvCase, qconv_direct_cases  # noqa: E402

VNNI = "avx512_vnni" in kernels.variants("qconv2d")


class _DirectSpy:
    """Force the direct routes (1x1 and 3x3) on or off, and the 1x1 kernel's interleave
    (``stream``: block by block during the tiles, or a pass per band; None: by input size),
    and count how often the direct route ran."""

    def __init__(self, enabled, stream=None):
        self.enabled, self.stream, self.calls = enabled, stream, 0

    def __enter__(self):
        self._saved = (qconv_module.DIRECT_1X1, qconv_module._qconv_direct, qconv_module.DIRECT_3X3,
                       qconv_module.STREAM_1X1)
        inner = self._saved[1]

        def counted(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        qconv_module.DIRECT_1X1 = qconv_module.DIRECT_3X3 = self.enabled
        qconv_module.STREAM_1X1 = self.stream
        qconv_module._qconv_direct = counted
        return self

    def __exit__(self, *exc):
        qconv_module.DIRECT_1X1, qconv_module._qconv_direct = self._saved[:2]
        qconv_module.DIRECT_3X3, qconv_module.STREAM_1X1 = self._saved[2:]


#: (direct route, 1x1 interleave) settings every direct-kernel test runs: both interleaves
#: forced, then the route off (the block-im2col fallback).
_ROUTES = [(True, True), (True, False), (False, None)]


def _check_direct_and_fallback(case):
    """Each route of ``_ROUTES``, one and two threads, on NCHW data and on the same data in
    NHWC (the direct kernel's pixel-row interleave and staged output; off: the qgemm or the
    NHWC block-im2col driver)."""
    kw = dict(bias=case.bias, stride=case.stride, padding=case.padding, dilation=case.dilation,
              output=make_output(case.output))
    with kernels.use("numpy"):
        want = kernels.qconv2d(case.x, case.w, case.x_zero_point, case.w_zero_point, **kw)
    pw = kernels.pack_conv_weights(case.w, case.w_zero_point)
    layouts = [(case.x, "NCHW", want), (np.ascontiguousarray(case.x.transpose(0, 2, 3, 1)), "NHWC",
                                        want.transpose(0, 2, 3, 1))]
    for enabled, stream in _ROUTES:
        for threads, (x, layout, expect) in itertools.product((1, 2), layouts):
            with _DirectSpy(enabled, stream) as spy, kernels.use("c", isa="avx512_vnni", threads=threads):
                got = kernels.qconv2d(x, pw, case.x_zero_point, layout=layout, **kw)
            assert spy.calls == int(enabled)
            assert_exact(got, expect)


@pytest.mark.skipif(not VNNI, reason="the direct kernel needs AVX-512 VNNI")
@settings(max_examples=150, deadline=None)
@given(case=qconv_direct_cases())
def test_direct_1x1_and_its_fallback_match_reference(case):
    """The direct 1x1 kernel (forced, with each of its two interleaves: block by block
    during the tiles, and a pass per band) and the path it replaces (forced by switching
    the route off: block im2col for NCHW, one qgemm for NHWC) against the reference, bit
    for bit, on shapes that break the 6 x 64 tile, the groups of 4 channels and (NHWC) the
    16-group pixel-row transposes and 16 x 16 output tiles, one and two threads, NCHW and
    NHWC."""
    _check_direct_and_fallback(case)


@pytest.mark.skipif(not VNNI, reason="the direct kernel needs AVX-512 VNNI")
@settings(max_examples=150, deadline=None)
@given(case=qconv_direct_cases(kernel=3))
def test_direct_3x3_and_its_fallback_match_reference(case):
    """The same for 3x3 / stride 1 / padding 1: the shifted reads, the zero point where a
    tap reads padding (first and last rows and columns, blocks that straddle rows, images
    one pixel wide or tall, rows wider than a block; NHWC: the halo's pixels off the image
    in the pixel-row interleave)."""
    _check_direct_and_fallback(case)


@pytest.mark.skipif(not VNNI, reason="the direct 1x1 kernel needs AVX-512 VNNI")
def test_direct_1x1_bench_shape_and_tile_split():
    """The benchmark's 1x1 256 -> 64 at 56 x 56 (49 full pixel blocks, 10 full and one
    4-row output-channel block), and a 7 x 7 image with many output channels, where the
    output-channel blocks are split between work items; each with the 1x1 input
    interleaved block by block during the tiles, in a pass per band, and as chosen by
    size (the first shape's 1.6 MB streams); NCHW and NHWC (whose split output-channel
    ranges reach the staged transpose at multiples of 6, not of its 16-row tiles)."""
    rng = np.random.default_rng(11)
    for N, C, OC, H in [(2, 256, 64, 56), (1, 96, 512, 7)]:
        x = rng.integers(0, 256, (N, C, H, H)).astype(np.uint8)
        w = rng.integers(-128, 128, (OC, C, 1, 1)).astype(np.int8)
        zw = rng.integers(-128, 128, OC)
        for out in (None, Requantize(np.float32(1e-4), 128, np.uint8)):
            with kernels.use("numpy"):
                want = kernels.qconv2d(x, w, 131, zw, output=out)
            xn, want_n = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), want.transpose(0, 2, 3, 1)
            for threads, stream, (xl, layout, expect) in itertools.product(
                    (1, 2), (None, True, False), [(x, "NCHW", want), (xn, "NHWC", want_n)]):
                with _DirectSpy(True, stream) as spy, kernels.use("c", isa="avx512_vnni", threads=threads):
                    got = kernels.qconv2d(xl, w, 131, zw, output=out, layout=layout)
                assert spy.calls == 1
                assert_exact(got, expect)


@pytest.mark.skipif(not VNNI, reason="the direct kernel needs AVX-512 VNNI")
@pytest.mark.parametrize("C, OC, k, N, H, W", [
    (1024, 13, 3, 2, 6, 37),   # 3x3 (256 KB bands): one block per band, 4 bands per image
    (520, 7, 3, 1, 9, 61),     # 3x3: bands of 5 blocks, a band boundary inside a row
    (1000, 5, 3, 1, 3, 200),   # 3x3: a halo (256 pixels) wider than the band's one block
    (2048, 7, 1, 2, 5, 31),    # 1x1: one block per band, 3 bands per image
    (700, 13, 1, 3, 10, 41),   # 1x1: bands of 5 blocks
    (701, 13, 1, 3, 10, 41),   # 1x1: the same with a channel group of 1 (C % 4 != 0)
])
def test_direct_bands(C, OC, k, N, H, W):
    """Images split into several bands (each interleaved on its own, 3x3 with its halo of
    rows from the neighbouring bands): wide channel counts, band boundaries inside a row,
    a halo wider than a band, and 1, 2 and 3 threads sharing the bands; zero points at
    their extremes (every tap sum in play), int8 and uint8 inputs; 1x1 interleaved block by
    block and per band (3x3 ignores the setting); NCHW and NHWC."""
    rng = np.random.default_rng(C + W)
    for x_dtype, zx in ((np.uint8, 255), (np.int8, -128)):
        xi = np.iinfo(x_dtype)
        x = rng.integers(int(xi.min), int(xi.max) + 1, (N, C, H, W)).astype(x_dtype)
        w = rng.integers(-128, 128, (OC, C, k, k)).astype(np.int8)
        zw = rng.integers(-128, 128, OC)
        pw = kernels.pack_conv_weights(w, zw)
        for out in (None, Requantize(np.float32(3e-5), 3, np.uint8)):
            kw = dict(padding=k // 2, output=out)
            with kernels.use("numpy"):
                want = kernels.qconv2d(x, w, zx, zw, **kw)
            xn, want_n = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), want.transpose(0, 2, 3, 1)
            for threads, stream, (xl, layout, expect) in itertools.product(
                    (1, 2, 3), (True, False), [(x, "NCHW", want), (xn, "NHWC", want_n)]):
                with _DirectSpy(True, stream) as spy, kernels.use("c", isa="avx512_vnni", threads=threads):
                    got = kernels.qconv2d(xl, pw, zx, layout=layout, **kw)
                assert spy.calls == 1
                assert_exact(got, expect)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_direct_route_only_where_it_applies(variant):
    """Only VNNI (and VBMI, which runs VNNI's code for dense layers) routes 1x1 / stride 1 /
    pad 0 and 3x3 / stride 1 / pad 1 (groups 1) convolutions directly; other variants,
    strides, paddings, dilations and kernel sizes
    keep the block-im2col path, and all of them give the reference's answer."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 8, 6, 7)).astype(np.uint8)
    cases = [((1, 1), dict()), ((1, 1), dict(stride=2)), ((1, 1), dict(padding=1)), ((3, 3), dict(padding=1)),
             ((3, 3), dict(padding=1, stride=2)), ((3, 3), dict(padding=2)), ((3, 3), dict(padding=1, dilation=2)),
             ((3, 3), dict()), ((2, 2), dict())]
    direct_cases = [((1, 1), dict()), ((3, 3), dict(padding=1))]
    for k, kw in cases:
        w = rng.integers(-128, 128, (5, 8) + k).astype(np.int8)
        with kernels.use("numpy"):
            want = kernels.qconv2d(x, w, 7, 3, **kw)
        with _DirectSpy(True) as spy, kernels.use(*variant):
            got = kernels.qconv2d(x, w, 7, 3, **kw)
        direct = variant[1] in ("avx512_vnni", "avx512_vbmi")
        assert spy.calls == int(direct and (k, kw) in direct_cases)
        assert_exact(got, want)


# ---- the depthwise 3x3 byte-quad kernel (AVX-512 VBMI + VNNI) --------------------------------

from refcompress.testing.strategies import qconv_depthwise3x3_cases  # noqa: E402

VBMI = "avx512_vbmi" in kernels.variants("qconv2d")


def test_vbmi_is_offered_exactly_when_the_cpu_reports_it():
    # the VBMI tests below skip when the variant is absent: a broken detection must not turn
    # them into silent skips on a CPU that has the instructions (Linux: /proc/cpuinfo flags)
    flags = cpu_flags_or_skip()
    assert VBMI == ({"avx512vbmi", "avx512_vnni", "avx512bw"} <= flags)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] == "c"], ids=lambda v: f"{v[0]}-{v[1]}")
@pytest.mark.parametrize("threads", [3, 4])
@pytest.mark.parametrize("N, C, HW, OC, k", [
    (1, 16, 9, 40, 3),   # 7 x 7 = 49 output pixels: 3 / 4 thread shares end inside 6-row tiles
    (2, 24, 11, 70, 3),  # 2 x 81 pixels, OC across two panels
    (1, 64, 3, 640, 3),  # one output pixel, 10 panels of output channels: a panel share
    (1, 100, 2, 200, 1), # 4 pixels, a 1 x 1 conv: fewer rows than threads
])
def test_qconv_threads_beyond_two_match_reference(variant, threads, N, C, HW, OC, k):
    # The im2col path shares output pixels (rows) or output-channel panels between threads
    # like qgemm; three and four threads put the share boundaries inside tiles and leave
    # threads with empty shares.
    rng = np.random.default_rng(N * 1000 + OC + threads)
    x = rng.integers(0, 256, (N, C, HW, HW)).astype(np.uint8)
    w = rng.integers(-128, 128, (OC, C, k, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, OC).astype(np.int32)
    kw = dict(bias=bias, padding=0, output=Requantize(np.float32(2e-5), 9, np.uint8))
    with kernels.use("numpy"):
        want = kernels.qconv2d(x, w, 77, 3, **kw)
    with kernels.use(*variant, threads=threads):
        assert_exact(kernels.qconv2d(x, w, 77, 3, **kw), want)


def _check_dw3(case, variants):
    """``case`` under each forced variant, one and two threads, equals the reference."""
    kw = dict(bias=case.bias, stride=case.stride, padding=case.padding, dilation=case.dilation,
              groups=case.groups, output=make_output(case.output))
    with kernels.use("numpy"):
        want = kernels.qconv2d(case.x, case.w, case.x_zero_point, case.w_zero_point, **kw)
    pw = kernels.pack_conv_weights(case.w, case.w_zero_point, groups=case.groups)
    kw.pop("groups")
    for variant in variants:
        for threads in (1, 2):
            with kernels.use(*variant, threads=threads):
                assert_exact(kernels.qconv2d(case.x, pw, case.x_zero_point, **kw), want)


@pytest.mark.skipif(not VBMI, reason="the byte-quad depthwise kernel needs AVX-512 VBMI and VNNI")
@settings(max_examples=300, deadline=None)
@given(case=qconv_depthwise3x3_cases())
def test_depthwise_3x3_vbmi_matches_reference(case):
    """The VBMI depthwise 3x3 / stride 1 kernel (forced), one and two threads, against the
    reference bit for bit: widths around its 16-output vectors and 64-output strips (the
    18 bytes a vector reads, masked at the row ends), heights down to 1, paddings 0 to 2
    (whole vectors and rows of zero points), 1 and prime channel counts, N up to 3, weight
    zero points 0 and not 0 mixed across channels, every output rule."""
    _check_dw3(case, [("c", "avx512_vbmi")])


@pytest.mark.skipif(not VBMI, reason="the byte-quad depthwise kernel needs AVX-512 VBMI and VNNI")
@pytest.mark.parametrize("x_dtype,zx,zw", [(np.uint8, 128, 0), (np.uint8, 255, -128), (np.int8, -128, 127),
                                           (np.int8, 127, 0)])
def test_depthwise_3x3_vbmi_bench_shape(x_dtype, zx, zw):
    """The benchmark's 128 channels at 56 x 56 (a 64-output strip holding 56), N = 2, every
    input value and weight at an extreme somewhere, per-channel float and fixed-point
    requantization to both output types, and the old VNNI kernel on the same inputs."""
    rng = np.random.default_rng(zx & 0xFF)
    xi = np.iinfo(x_dtype)
    x = rng.integers(int(xi.min), int(xi.max) + 1, (2, 128, 56, 56)).astype(x_dtype)
    x[0, :8] = xi.min
    x[1, :8] = xi.max
    w = rng.integers(-128, 128, (128, 1, 3, 3)).astype(np.int8)
    w[:4], w[4:8] = -128, 127
    bias = rng.integers(-5000, 5000, 128).astype(np.int32)
    for out in (None, Requantize(rng.uniform(1e-4, 1e-2, 128).astype(np.float32), 128, np.uint8),
                Requantize(np.float32(3e-4), -5, np.int8, "fixedpoint")):
        kw = dict(bias=bias, padding=1, groups=128, output=out)
        with kernels.use("numpy"):
            want = kernels.qconv2d(x, w, zx, zw, **kw)
        for isa in ("avx512_vbmi", "avx512_vnni"):
            for threads in (1, 2):
                with kernels.use("c", isa=isa, threads=threads):
                    assert_exact(kernels.qconv2d(x, w, zx, zw, **kw), want)


@pytest.mark.skipif(not VBMI, reason="the byte-quad depthwise kernel needs AVX-512 VBMI and VNNI")
@pytest.mark.parametrize("H,W,padding", [(1, 1, 5), (2, 16, (3, 17)), (3, 17, (20, 1)), (1, 64, (1, 40)),
                                         (4, 5, (0, 33))])
def test_depthwise_3x3_vbmi_wide_padding(H, W, padding):
    """Padding wider than a vector: whole 16-output vectors and strips that read only zero
    points (load masks that are empty), rows that are all padding."""
    rng = np.random.default_rng(W)
    for x_dtype, zx, zw in [(np.uint8, 255, 0), (np.int8, -128, -128), (np.uint8, 3, 127)]:
        xi = np.iinfo(x_dtype)
        x = rng.integers(int(xi.min), int(xi.max) + 1, (2, 3, H, W)).astype(x_dtype)
        w = rng.integers(-128, 128, (3, 1, 3, 3)).astype(np.int8)
        for out in (None, Requantize(np.float32(0.011), 7, np.uint8)):
            kw = dict(padding=padding, groups=3, output=out)
            with kernels.use("numpy"):
                want = kernels.qconv2d(x, w, zx, zw, **kw)
            for threads in (1, 2):
                with kernels.use("c", isa="avx512_vbmi", threads=threads):
                    assert_exact(kernels.qconv2d(x, w, zx, zw, **kw), want)


# ---- NHWC at the interface --------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_qconv2d_nhwc_matches_transposed_reference(variant):
    """layout="NHWC" under every backend and variant: the NCHW reference transposed, bit for
    bit, over the general strategy (dense, grouped, depthwise, stride, padding, dilation)."""
    def forced(*args, **kwargs):
        with kernels.use(*variant):
            return kernels.qconv2d(*args, **kwargs)

    check_qconv2d(forced, max_examples=60, layout="NHWC")


class _NhwcRoutes:
    """Force the NHWC dense routes on (the direct kernel / one qgemm / block im2col) or
    off (every layer through the transposes), counting the calls that take the direct
    kernel on NHWC data, the pointwise qgemm, the NHWC block-im2col driver and the C
    transposes."""

    def __init__(self, direct):
        self.direct = direct
        self.calls = {"direct": 0, "qgemm": 0, "nhwc_im2col": 0, "transpose": 0}

    def __enter__(self):
        m = qconv_module
        self._saved = (m.NHWC_DIRECT, m._qgemm_c, m._qconv2d_dense_c, m._transpose_c, m._qconv_direct)
        qgemm_c, dense_c, transpose_c, direct_c = self._saved[1:]

        def direct(*args, **kwargs):
            self.calls["direct"] += len(args) > 5 and args[5] is True
            return direct_c(*args, **kwargs)

        def qgemm(*args, **kwargs):
            self.calls["qgemm"] += 1
            return qgemm_c(*args, **kwargs)

        def dense(x, pw, zx, bias, geo, spec, layout, **kwargs):
            self.calls["nhwc_im2col"] += layout == kernels._native.lib.RC_LAYOUT_NHWC
            return dense_c(x, pw, zx, bias, geo, spec, layout, **kwargs)

        def transpose(*args):
            self.calls["transpose"] += 1
            return transpose_c(*args)

        m.NHWC_DIRECT, m._qgemm_c, m._qconv2d_dense_c, m._transpose_c = self.direct, qgemm, dense, transpose
        m._qconv_direct = direct
        return self

    def __exit__(self, *exc):
        m = qconv_module
        m.NHWC_DIRECT, m._qgemm_c, m._qconv2d_dense_c, m._transpose_c, m._qconv_direct = self._saved


C_VARIANTS = [v for v in VARIANTS if v[0] == "c"]


def _check_nhwc_routes(case, variants=C_VARIANTS):
    """``case`` in NHWC (from an NHWC copy and from a channels-last view of the NCHW data)
    under each C variant, one and two threads, with the NHWC routes on and off, equals the
    NCHW reference transposed; returns the route counts of the last run with them on."""
    kw = dict(bias=case.bias, stride=case.stride, padding=case.padding, dilation=case.dilation,
              groups=case.groups, output=make_output(case.output))
    with kernels.use("numpy"):
        want = kernels.qconv2d(case.x, case.w, case.x_zero_point, case.w_zero_point, **kw).transpose(0, 2, 3, 1)
    pw = kernels.pack_conv_weights(case.w, case.w_zero_point, groups=case.groups)
    kw.pop("groups")
    xs = (np.ascontiguousarray(case.x.transpose(0, 2, 3, 1)), case.x.transpose(0, 2, 3, 1))
    for variant, threads, direct, x in itertools.product(variants, (1, 2), (True, False), xs):
        with _NhwcRoutes(direct) as routes, kernels.use(*variant, threads=threads):
            got = kernels.qconv2d(x, pw, case.x_zero_point, layout="NHWC", **kw)
        assert_exact(got, want)
        if direct:
            seen = routes.calls
    return seen


def _no_calls(**some):
    return {"direct": 0, "qgemm": 0, "nhwc_im2col": 0, "transpose": 0} | some


@settings(max_examples=60, deadline=None)
@given(case=qconv_direct_cases())
def test_nhwc_pointwise_routes(case):
    """NHWC 1x1 / stride 1 / no padding, no transposes: under VNNI (and VBMI) the direct
    kernel on the pixel rows, under the other variants one qgemm (M = N*H*W) over the
    packed operand; on shapes that break the qgemm tiles (6 rows, 64-column panels) and the
    4-channel groups; switched off, the transposes around the NCHW routes; all exact."""
    for variant in C_VARIANTS:
        seen = _check_nhwc_routes(case, [variant])
        direct = variant[1] in ("avx512_vnni", "avx512_vbmi")
        assert seen == (_no_calls(direct=1) if direct else _no_calls(qgemm=1))


@settings(max_examples=60, deadline=None)
@given(case=qconv_direct_cases(kernel=3))
def test_nhwc_3x3_routes(case):
    """NHWC 3x3 / stride 1 / padding 1, no transposes: under VNNI the direct kernel on the
    pixel rows, under the other variants the NHWC block-im2col driver; switched off, the
    C transposes (16 x 16 tiles and ragged edges: channel and pixel counts around 16)."""
    for variant in C_VARIANTS:
        seen = _check_nhwc_routes(case, [variant])
        direct = variant[1] in ("avx512_vnni", "avx512_vbmi")
        assert seen == (_no_calls(direct=1) if direct else _no_calls(nhwc_im2col=1))


@pytest.mark.parametrize("cin,hw,cout,k,stride,padding,dilation,groups", [
    (19, (13, 11), 70, 3, (2, 1), (1, 2), 1, 1),   # dense: the NHWC block-im2col driver
    (16, (16, 16), 16, 1, 2, 0, 1, 1),             # 1x1 with stride: block im2col, not qgemm
    (64, (9, 7), 33, 1, 1, 1, 1, 1),               # 1x1 with padding
    (32, (20, 16), 48, 3, 2, 3, 2, 1),
    (1, (5, 40), 3, 3, 1, 4, 1, 1),                # one channel
    (37, (13, 11), 37, 3, (2, 1), (1, 2), 1, 37),  # depthwise: transposes
    (17, (16, 17), 17, 3, 1, 1, 1, 17),            # depthwise 3x3 / stride 1 (VBMI's domain)
    (8, (13, 11), 12, 3, 1, 1, 1, 4),              # grouped: transposes
])
def test_nhwc_each_path(cin, hw, cout, k, stride, padding, dilation, groups):
    """Every NHWC route, uint8 and int8 at their extreme zero points, int32 and requantized
    outputs, N = 2."""
    rng = np.random.default_rng(cin + cout)
    for xt, zx in [(np.uint8, 255), (np.uint8, 0), (np.int8, -128), (np.int8, 127)]:
        xi = np.iinfo(xt)
        x = rng.integers(int(xi.min), int(xi.max) + 1, (2, cin) + hw).astype(xt)
        x[1, 0] = xi.min
        w = rng.integers(-128, 128, (cout, cin // groups, k, k)).astype(np.int8)
        zw = rng.integers(-128, 128, cout)
        bias = rng.integers(-1000, 1000, cout).astype(np.int32)
        for out in (None, ("float", dict(scale=np.float32(3e-5), zero_point=100, dtype=np.uint8))):
            case = QconvCase(x, w, zx, zw, bias, stride, padding, dilation, groups, out)
            _check_nhwc_routes(case)


@pytest.mark.parametrize("N,C,OC,k,H", [(2, 256, 64, 1, 56), (1, 64, 64, 3, 56), (2, 128, 128, 3, 28)])
def test_nhwc_bench_shapes(N, C, OC, k, H):
    """The benchmark's dense shapes in NHWC, uint8 at zero point 131, per-channel weight zero
    points, requantized, each C variant, one and two threads."""
    rng = np.random.default_rng(C)
    x = rng.integers(0, 256, (N, H, H, C)).astype(np.uint8)
    w = rng.integers(-128, 128, (OC, C, k, k)).astype(np.int8)
    zw = rng.integers(-128, 128, OC)
    out = Requantize(np.float32(1e-4), 128, np.uint8)
    with kernels.use("numpy"):
        want = kernels.qconv2d(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), w, 131, zw, padding=k // 2,
                               output=out).transpose(0, 2, 3, 1)
    pw = kernels.pack_conv_weights(w, zw)
    for variant, threads in itertools.product(C_VARIANTS, (1, 2)):
        with kernels.use(*variant, threads=threads):
            assert_exact(kernels.qconv2d(x, pw, 131, padding=k // 2, output=out, layout="NHWC"), want)


def test_nhwc_bad_inputs_name_the_argument():
    x = np.zeros((1, 5, 5, 4), np.uint8)  # NHWC, 4 channels
    w = np.zeros((6, 2, 3, 3), np.int8)
    for bad in ("nhwc", "NCWH", "", None, 1, ["NHWC"]):
        with pytest.raises(ArgumentError, match="layout"):
            kernels.qconv2d(x, w, groups=2, layout=bad)
    with pytest.raises(ShapeError, match=r"x has 5 channels \(axis 1, layout NCHW\)"):
        kernels.qconv2d(x, w, groups=2)  # NHWC data passed as NCHW: axis 1 is H
    with pytest.raises(ShapeError, match=r"x has 4 channels \(axis 3, layout NHWC\).*expects 2 per group x 1"):
        kernels.qconv2d(x, w, layout="NHWC")
    with pytest.raises(ShapeError, match="x: expected a 4-D"):
        kernels.qconv2d(x[0], w, groups=2, layout="NHWC")
    with pytest.raises(ShapeError, match="smaller than the dilated kernel"):
        kernels.qconv2d(np.zeros((1, 2, 9, 4), np.uint8), w, groups=2, layout="NHWC")  # H = 2 < 3
    assert kernels.qconv2d(x, w, groups=2, layout="NHWC").shape == (1, 3, 3, 6)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("groups, w_shape, padding", [
    (1, (4, 8, 1, 1), 0),  # pointwise (direct kernel / one qgemm)
    (1, (4, 8, 3, 3), 1),  # dense 3x3
    (1, (4, 8, 2, 3), 0),  # dense, block im2col
    (8, (8, 1, 3, 3), 1),  # depthwise
    (2, (4, 4, 3, 3), 1),  # grouped (its output was made from the first image)
])
def test_batch_of_zero_images_gives_an_empty_result(variant, layout, groups, w_shape, padding):
    x = np.zeros((0, 9, 9, 8) if layout == "NHWC" else (0, 8, 9, 9), np.uint8)
    w = np.ones(w_shape, np.int8)
    with kernels.use("numpy"):
        want = kernels.qconv2d(x, w, groups=groups, padding=padding, layout=layout)
    with kernels.use(*variant):
        got = kernels.qconv2d(x, w, groups=groups, padding=padding, layout=layout)
    assert isinstance(got, np.ndarray) and got.shape == want.shape and got.dtype == want.dtype


# ---- the im2col + qgemm route's blocks (rc_qconv2d) -----------------------------------------

from hypothesis import strategies as st  # noqa: E402

from refcompress.kernels.qgemm import k_bound  # noqa: E402
from refcompress.testing.strategies import qconv_cases  # noqa: E402

#: A thread packs at most this many patch rows at a time (RC_QCONV_BLOCK_ROWS: 16 tiles of 6).
BLOCK_ROWS = 96


def _non_contiguous(x, how):
    """The same values as ``x`` in other memory: NHWC memory seen as NCHW, or every other
    element of a wider array."""
    if how == "channels_last":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    wide = np.zeros(x.shape[:3] + (2 * x.shape[3],), x.dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] == "c"], ids=_id)
@settings(max_examples=40, deadline=None)
@given(case=qconv_cases(), how=st.sampled_from(["channels_last", "strided"]), layout=st.sampled_from(["NCHW", "NHWC"]))
def test_non_contiguous_inputs_match_reference(variant, case, how, layout):
    """Inputs that are not C-contiguous (NHWC memory seen as NCHW, strided views; NHWC data
    as a strided view too) give the reference's result on every route, the im2col + qgemm
    one forced (direct routes off) on one and two threads."""
    kw = dict(bias=case.bias, stride=case.stride, padding=case.padding, dilation=case.dilation,
              groups=case.groups, output=make_output(case.output))
    with kernels.use("numpy"):
        want = kernels.qconv2d(case.x, case.w, case.x_zero_point, case.w_zero_point, **kw)
    x = _non_contiguous(case.x, how)
    if layout == "NHWC":
        x, want = _non_contiguous(case.x, "strided").transpose(0, 2, 3, 1), want.transpose(0, 2, 3, 1)
    for threads in (1, 2):
        with _DirectSpy(False), kernels.use(*variant, threads=threads):
            assert_exact(kernels.qconv2d(x, case.w, case.x_zero_point, case.w_zero_point, layout=layout, **kw), want)


#: (H, W, k, stride, padding, dilation): output pixel counts P just below, at and above one,
#: two and three blocks per thread share (one, two and three threads) and not multiples of 6
#: (95, 97, 191, 193, 287, 289, 385), output rows narrower than a block (each window row
#: spans the whole row, reused by the next output row) and wider (97, 100, 193: windows per
#: segment), strides, dilation, non-square kernels.
_BLOCK_SHAPES = [
    (1, 95, 3, 1, 1, 1), (1, 96, 3, 1, 1, 1), (1, 97, 3, 1, 1, 1), (5, 19, 3, 1, 1, 1), (8, 12, 3, 1, 1, 1),
    (1, 191, 3, 1, 1, 1), (3, 64, 3, 1, 1, 1), (1, 193, 3, 1, 1, 1), (7, 41, 3, 1, 1, 1), (17, 17, 3, 1, 1, 1),
    (5, 77, 3, 1, 1, 1), (9, 200, 3, 2, 1, 1), (13, 29, 5, 1, 2, 1), (12, 20, (3, 2), (2, 1), (2, 0), (2, 3)),
    (11, 35, 3, 1, 2, 2), (1, 1, 1, 1, 0, 1), (2, 3, 3, 1, 1, 1),
]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] == "c"], ids=_id)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("H, W, k, stride, padding, dilation", _BLOCK_SHAPES)
def test_block_boundaries_match_reference(variant, threads, H, W, k, stride, padding, dilation):
    """rc_qconv2d's blocks: every thread's exact share of the pixels cut into blocks of at
    most 96 rows, the last one ragged, its window rows reused across output rows; 3 input
    channels (K = 27: a ragged K4 group) and 70 output channels (two panels), uint8 and
    int8 inputs, int32 and requantized outputs (the NCHW stage transposes of 4- and 1-byte
    results), NCHW and NHWC."""
    rng = np.random.default_rng(H * 1000 + W + threads)
    OC, C = 70, 3
    kh, kw_ = (k, k) if isinstance(k, int) else k
    w = rng.integers(-128, 128, (OC, C, kh, kw_)).astype(np.int8)
    zw = rng.integers(-128, 128, OC)
    pw = kernels.pack_conv_weights(w, zw)
    bias = rng.integers(-5000, 5000, OC).astype(np.int32)
    for dtype, zx, out in [(np.uint8, 201, None), (np.int8, -7, Requantize(np.float32(3e-5), 5, np.uint8))]:
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        x = rng.integers(lo, hi + 1, (2, C, H, W)).astype(dtype)
        kw = dict(bias=bias, stride=stride, padding=padding, dilation=dilation, output=out)
        with kernels.use("numpy"):
            want = kernels.qconv2d(x, pw, zx, **kw)
        for layout in ("NCHW", "NHWC"):
            xl, wl = (x, want) if layout == "NCHW" else (x.transpose(0, 2, 3, 1).copy(), want.transpose(0, 2, 3, 1))
            with _DirectSpy(False), kernels.use(*variant, threads=threads):
                assert_exact(kernels.qconv2d(xl, pw, zx, layout=layout, **kw), wl)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] == "c"], ids=_id)
def test_k_at_the_int32_bound_is_exact_and_one_more_is_refused(variant):
    # int8 activations at -128 with zero point 0 and weights at -128: every product is
    # 2^14.  A bias of 70000 makes the bound 131067 = 9 * 14563, a 3x3 kernel's K; the
    # centre pixel of a 3 x 3 image (padding 1) sums all 9 taps: the largest accumulator.
    bias = np.array([70000, -70000], np.int32)
    bound = k_bound(np.int8, 0, 128, 70000)
    assert bound == (2**31 - 1 - 70000) // 2**14 == 9 * 14563
    C = bound // 9
    x = np.full((1, C, 3, 3), -128, np.int8)
    w = np.full((2, C, 3, 3), -128, np.int8)
    with _DirectSpy(False), kernels.use(*variant, threads=2):
        got = kernels.qconv2d(x, w, bias=bias, padding=1)
    assert int(got[0, 0, 1, 1]) == bound * 2**14 + 70000 == 2**31 - 1 - 11919
    assert int(got[0, 1, 0, 0]) == 4 * C * 2**14 - 70000  # a corner: 4 taps inside the image
    with kernels.use("numpy"):
        assert_exact(got, kernels.qconv2d(x, w, bias=bias, padding=1))
    with pytest.raises(OverflowRiskError, match="bound"):
        kernels.qconv2d(np.zeros((1, C + 1, 3, 3), np.int8), np.zeros((2, C + 1, 3, 3), np.int8), bias=bias)


@pytest.mark.skipif(not kernels.available()["c_built"], reason="needs the C extension")
def test_workspace_size_refuses_sizes_that_overflow_for_c_callers():
    # C callers size the workspace with rc_qconv2d_workspace_size: arguments whose window or
    # K = KH * KW * C overflow must give -1, never a small size that the kernel then
    # overruns (an overflowed part used to round to 0 and drop out of the total)
    from refcompress.kernels import _native

    size = _native.lib.rc_qconv2d_workspace_size
    assert size(64, 3, 3, 56, 1, 1, 64, 1, 1) > 0
    for C, KH, KW in [(2**31, 2, 2**31), (2**31, 2, 2**30), (2**16, 2**8, 2**8)]:  # K >= 2^32
        assert size(C, KH, KW, 1, 1, 1, 1, 1, 1) == -1
