"""Quantized 2-D convolution (NCHW, or NHWC by ``layout``), exact: the ConvInteger /
QLinearConv contract.

Reference semantics, for output channel o in group g (channels c of that group):

    acc[n, o, i, j] = sum_{c, kh, kw} (x_pad[n, c, i*s_h + kh*d_h, j*s_w + kw*d_w] - z_x)
                                      * (w[o, c, kh, kw] - z_w[o])  +  bias[o]

where x_pad is x padded with z_x (so padding contributes exactly 0), then the output rule
of :mod:`refcompress.kernels.qgemm` per output channel (int32, requantize by the float or
fixed-point rule, or dequantize).  Groups include depthwise (groups = channels).  The
NHWC result is, by definition, the NCHW one transposed to [N, OH, OW, OC].

C paths, NCHW: dense 1x1 convolutions with stride 1 and no padding, and
dense 3x3 ones with stride 1 and padding 1, run a direct NCHW kernel when the AVX-512 VNNI
variant is active (C[OC, P] = W . X per image, the 3x3 taps as shifted rows; no
transposes, no im2col); other dense convolutions (and those under the other variants) run
the block-im2col driver (rc_qconv2d): each thread packs the patches of one block of at
most 96 output pixels at a time into the packed qgemm's activation layout and runs the
qgemm micro-tiles and epilogue on it, so the whole patch matrix never exists (workspace
independent of H*W: docs/kernels.md); depthwise convolutions run a direct kernel over each
channel plane (3x3 with stride 1 and no dilation as byte quads, three taps per vpdpbusd,
under the AVX-512 VBMI variant, which runs the VNNI code everywhere else); other grouped
convolutions run the block-im2col driver group by group and image by image.

C paths, NHWC: where the direct kernel applies (VNNI) it reads the pixel rows itself (16 x
16 dword transposes into its interleaved buffer) and writes NHWC (each 64-pixel block's
results transposed out of a per-thread stage); elsewhere a dense 1x1 convolution with
stride 1 and no padding is one qgemm, M = N*H*W, over the same packed operand, and other
dense convolutions run the block-im2col driver on the NHWC data; depthwise and grouped
convolutions, whose kernels are NCHW, run between two C transposes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _conv
from .._conv import conv_output_size
from .._validation import check_array, check_choice, check_int
from ..errors import ArgumentError, DTypeError, OverflowRiskError, ShapeError
from . import _native
from ._registry import Op, check_rc, dispatch, register, runnable_isas
from .qgemm import (
    _I8,
    _KEPT,
    _RANGE,
    _U8,
    Dequantize,
    PackedWeights,
    _bias,
    _epilogue_cached,
    _k_bound_cached,
    _max_abs_bias,
    _output_spec_cached,
    _qgemm_c,
    requantize_reference,
)

__all__ = ["PackedConvWeights", "conv_output_size", "pack_conv_weights", "qconv2d"]


@dataclass(frozen=True)
class ConvGeometry:
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int


class PackedConvWeights:
    """int8 conv weights [OC, C/groups, KH, KW] with zero point(s), packed once per layer
    for the C path that fits the geometry:

    * ``"dense"`` (groups = 1): w transposed to [OC, KH, KW, C] and packed as the qgemm
      operand [KH*KW*C, OC] (the NHWC block-im2col driver's order); a 1x1 or 3x3 layer
      also keeps w [OC, C, KH*KW] in the direct kernel's layout (``direct``);
    * ``"depthwise"`` (groups = C = OC): w as [C, KH*KW] for the direct kernel;
    * ``"grouped"`` (anything else): one qgemm operand [KH*KW*C_g, OC_g] per group (w of the
      group transposed to [OC_g, KH, KW, C_g], the block-im2col driver's order).
    """

    def __init__(self, w, w_zero_point=0, groups: int = 1):
        w = check_array(w, "w", dtypes=[np.int8], ndim=4, contiguous=True)
        self.groups = check_int(groups, "groups", min_value=1)
        OC, Cg = w.shape[:2]
        if OC % self.groups:
            raise ArgumentError(f"groups: expected a divisor of the {OC} output channels, got {self.groups}")
        zw = np.asarray(w_zero_point)
        if zw.dtype.kind not in "iu":
            raise DTypeError(f"w_zero_point: expected integers, got dtype {zw.dtype.name}")
        if zw.ndim > 1 or (zw.ndim == 1 and zw.shape != (OC,)):
            raise ShapeError(f"w_zero_point: expected a scalar or shape ({OC},), got shape {zw.shape}")
        if np.any(zw < -128) or np.any(zw > 127):
            raise ArgumentError(f"w_zero_point: expected values in [-128, 127], got {zw.min()}..{zw.max()}")
        self.w = w
        self.per_channel = zw.ndim == 1
        self.zero_point = np.broadcast_to(zw, (OC,)).astype(np.int64)
        ocg = OC // self.groups
        self.parts = []
        self.direct = None
        if self.groups == 1:
            self.mode = "dense"
            flat = w.transpose(0, 2, 3, 1).reshape(OC, -1)
            self.parts.append(PackedWeights(np.ascontiguousarray(flat.T), zw))
            if w.shape[2:] in ((1, 1), (3, 3)) and _native.lib is not None:
                self._pack_direct(w)
        elif Cg == 1 and ocg == 1:
            self.mode = "depthwise"
            self.w_dw = np.ascontiguousarray(w.reshape(OC, -1))
            self.zp32 = np.ascontiguousarray(np.atleast_1d(zw).astype(np.int32))
            if _native.lib is not None:  # the C views of the constant arrays, made once
                self._dw_args = (_native.ptr("int8_t *", self.w_dw), _native.ptr("int32_t *", self.zp32),
                                 int(self.per_channel))
        else:
            self.mode = "grouped"
            for g in range(self.groups):
                wg = w[g * ocg:(g + 1) * ocg].transpose(0, 2, 3, 1).reshape(ocg, -1)
                zp = zw[g * ocg:(g + 1) * ocg] if self.per_channel else zw
                self.parts.append(PackedWeights(np.ascontiguousarray(wg.T), zp))
        zw64 = self.zero_point
        self.max_abs_w = int(np.max(np.maximum(zw64 + 128, 127 - zw64)))
        # What qconv2d derives from these weights and the call's other arguments, kept
        # (see _geometry_cached, _k_bound_cached, _max_abs_bias, _epilogue_cached, _group_args).
        self._geometries = {}
        self._bounds = {}
        self._epilogues = {}
        self._groups = {}
        self._max_bias = None

    def _pack_direct(self, w):
        """The direct NCHW kernel's operand (1x1, or 3x3 for stride 1 / padding 1): w
        [OC, C, taps] in blocks of RC_QCONV_DIRECT_MR output channels, groups of 4 input
        channels per tap (csrc/refcompress.h), with the sums sum_{c,t} w[o, c, t] of its
        zero-point correction."""
        lib = _native.lib
        OC, C, KH, KW = w.shape
        taps = KH * KW
        packed = np.empty(lib.rc_qconv_direct_packed_size(OC, C, taps), np.int8)
        sums = np.empty(OC, np.int32)
        check_rc(lib.rc_qconv_direct_pack(_native.ptr("int8_t *", w), OC, C, taps, _native.ptr("int8_t *", packed),
                                      _native.ptr("int32_t *", sums)), "pack_conv_weights")
        zp = np.ascontiguousarray(np.atleast_1d(self.zero_point if self.per_channel else self.zero_point[:1])
                                  .astype(np.int32))
        self.direct = (packed, sums, zp)
        self._direct_args = (_native.ptr("int8_t *", packed), _native.ptr("int32_t *", sums),
                             _native.ptr("int32_t *", zp), int(self.per_channel))

    @property
    def shape(self):
        return self.w.shape


def pack_conv_weights(w, w_zero_point=0, groups: int = 1) -> PackedConvWeights:
    """Pack int8 convolution weights once per layer (see :class:`PackedConvWeights`)."""
    return PackedConvWeights(w, w_zero_point, groups)


# ---- reference ------------------------------------------------------------------------------


def qconv2d_reference(x, pw, x_zero_point, bias, geo, spec, nhwc=False):
    """The definition, summed kernel offset by kernel offset in float64 (exact: integers
    below 2^53).  Output [N, OC, OH, OW]; ``nhwc``: x is [N, H, W, C] and the output the
    NCHW one transposed to [N, OH, OW, OC] (the definition is the NCHW one)."""
    if nhwc:
        out = qconv2d_reference(x.transpose(0, 3, 1, 2), pw, x_zero_point, bias, geo, spec)
        return np.ascontiguousarray(out.transpose(0, 2, 3, 1))
    N, C, H, W = x.shape
    OC, Cg, KH, KW = pw.shape
    (sh, sw), (ph, pw_), (dh, dw) = geo.stride, geo.padding, geo.dilation
    OH = conv_output_size(H, KH, sh, ph, dh)
    OW = conv_output_size(W, KW, sw, pw_, dw)
    xp = np.pad(x.astype(np.float64) - x_zero_point, ((0, 0), (0, 0), (ph, ph), (pw_, pw_)))
    wz = pw.w.astype(np.float64) - pw.zero_point[:, None, None, None]
    ocg = OC // geo.groups
    acc = np.zeros((N, OC, OH, OW))
    for g in range(geo.groups):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        wg = wz[g * ocg:(g + 1) * ocg]
        for kh in range(KH):
            for kw in range(KW):
                patch = xs[:, :, kh * dh: kh * dh + sh * (OH - 1) + 1: sh, kw * dw: kw * dw + sw * (OW - 1) + 1: sw]
                acc[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, wg[:, :, kh, kw])
    acc = acc.astype(np.int64)
    if bias is not None:
        acc += bias[None, :, None, None]
    out = requantize_reference(acc.transpose(0, 2, 3, 1), spec)  # per channel = last axis
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# ---- C path -----------------------------------------------------------------------------------


def _slice_spec(spec, lo, hi):
    """The output spec restricted to output channels [lo, hi)."""
    if spec is None:
        return None
    kind, params = spec
    cut = lambda v: v[lo:hi] if np.ndim(v) == 1 else v  # noqa: E731
    if kind == "dequantize":
        return (kind, (cut(params[0]), params[1], None, None))
    if kind == "float":
        return (kind, (cut(params[0]),) + tuple(params[1:]))
    return (kind, (cut(params[0]), cut(params[1])) + tuple(params[2:]))


def _group_args(pw, spec, bias):
    """Each group's (output spec, bias) slice for the grouped path, kept on ``pw`` by the
    identity of ``spec`` and ``bias`` (as :func:`_epilogue_cached` keeps epilogues, so the
    per-group qgemm finds its epilogue kept too).  A bias slice is a view of ``bias``: writes
    into it are seen."""
    key = (id(spec), id(bias))
    hit = pw._groups.get(key)
    if hit is None:
        ocg = pw.shape[0] // pw.groups
        args = [(_slice_spec(spec, g * ocg, (g + 1) * ocg),
                 None if bias is None else np.ascontiguousarray(bias[g * ocg:(g + 1) * ocg]))
                for g in range(pw.groups)]
        if len(pw._groups) >= _KEPT:
            pw._groups.clear()
        hit = pw._groups[key] = (args, spec, bias)
    return hit[0]


#: Route 1x1 / stride 1 / no padding and 3x3 / stride 1 / padding 1 (groups 1) through the
#: direct kernel (NCHW, or NHWC pixel rows) when the VNNI variant runs (tests switch them off to force the
#: block-im2col path on the same shapes).
DIRECT_1X1 = True
DIRECT_3X3 = True
#: How the direct 1x1 kernel interleaves NCHW input (rc_qconv_direct's ``stream``): None
#: lets C choose by input size (block by block, overlapping the tiles, for a batch larger
#: than L2), True / False force block by block / one pass per band (the tests force both).
#: NHWC input always takes the band pass (measured faster there).
STREAM_1X1 = None
#: Run dense NHWC layers on NHWC data (the direct kernel, one qgemm or the block-im2col
#: driver); False sends every NHWC layer through transposes to the NCHW routes (tests force
#: both).
NHWC_DIRECT = True
_VNNI = _native.ISA_NAMES.index("avx512_vnni")
_VBMI = _native.ISA_NAMES.index("avx512_vbmi")
_AVX2 = _native.ISA_NAMES.index("avx2")
_AVX_VNNI = _native.ISA_NAMES.index("avx_vnni")
_VNNI_RUNNABLE = []


def _direct_applies(pw, geo, isa):
    """True when this call runs the direct kernel: a dense layer with stride 1, either 1x1
    without padding (dilation is moot for 1x1) or 3x3 with padding 1 and no dilation, and
    the VNNI variant selected or chosen by auto."""
    if not (DIRECT_1X1 and pw.direct is not None and geo.stride == (1, 1)):
        return False
    k = pw.shape[2:]
    if not ((k == (1, 1) and geo.padding == (0, 0)) or
            (DIRECT_3X3 and k == (3, 3) and geo.padding == (1, 1) and geo.dilation == (1, 1))):
        return False
    if isa == _native.ISA_AUTO:
        if not _VNNI_RUNNABLE:
            _VNNI_RUNNABLE.append("avx512_vnni" in runnable_isas())
        return _VNNI_RUNNABLE[0]
    return isa == _VNNI


def _qconv_direct(x, pw, x_zero_point, bias, spec, nhwc=False, *, isa, threads):
    lib = _native.lib
    if nhwc:
        N, H, W, C = x.shape
    else:
        N, C, H, W = x.shape
    OC, _, KH, KW = pw.shape
    e, out_dtype, keep = _epilogue_cached(pw._epilogues, spec, bias, OC)
    out = np.empty((N, H, W, OC) if nhwc else (N, OC, H, W), dtype=out_dtype)
    slots = threads if threads > 0 else lib.rc_max_threads()
    layout = lib.RC_LAYOUT_NHWC if nhwc else lib.RC_LAYOUT_NCHW
    nbytes = lib.rc_qconv_direct_workspace_size(C, H, W, OC, KH * KW, layout, slots)
    ws = _native.workspace(nbytes)
    rc = lib.rc_qconv_direct(_native.ptr("void *", x), 0 if x.dtype == _I8 else 1, N, C, H, W, OC, KH * KW,
                         int(x_zero_point), *pw._direct_args, e, _native.ptr("void *", out),
                         ws[2], nbytes, layout, -1 if STREAM_1X1 is None else int(STREAM_1X1), isa, threads)
    del keep
    if rc:
        check_rc(rc, "qconv2d (direct)")
    return out


def _is_pointwise(pw, geo):
    """A 1x1 dense layer with stride 1 and no padding (dilation is moot for 1x1)."""
    return pw.mode == "dense" and pw.shape[2:] == (1, 1) and geo.stride == (1, 1) and geo.padding == (0, 0)


def _qconv2d_nhwc_c(x, pw, x_zero_point, bias, geo, spec, *, isa, threads):
    """NHWC in and out, no transposes for dense layers: the direct kernel on the pixel rows
    where it applies (VNNI; faster than the other two: docs/benchmarks.md), else a
    pointwise layer is one qgemm, M = N*H*W, over the dense packed operand [C, OC] as it
    is, and other dense layers run the block-im2col driver on the NHWC data; depthwise
    and grouped layers, whose kernels are NCHW, go through two C transposes."""
    N, H, W, C = x.shape
    OC = pw.shape[0]
    if pw.mode == "dense" and NHWC_DIRECT:
        if _direct_applies(pw, geo, isa):
            return _qconv_direct(x, pw, x_zero_point, bias, spec, True, isa=isa, threads=threads)
        if _is_pointwise(pw, geo):
            y = _qgemm_c(x.reshape(N * H * W, C), pw.parts[0], x_zero_point, bias, spec, isa=isa, threads=threads)
            return y.reshape(N, H, W, OC)
        return _qconv2d_dense_c(x, pw, x_zero_point, bias, geo, spec, _native.lib.RC_LAYOUT_NHWC, isa=isa,
                                threads=threads)
    y = _qconv2d_c(_transpose_c(x, False, threads), pw, x_zero_point, bias, geo, spec, isa=isa, threads=threads)
    return _transpose_c(y, True, threads)


def _transpose_c(a, to_nhwc, threads):
    """[N, C, H, W] -> [N, H, W, C] (``to_nhwc``) or back, by the C 16 x 16 tile transpose
    (NumPy's strided copy is several times slower on bytes)."""
    N = a.shape[0]
    if to_nhwc:
        C, H, W = a.shape[1:]
        rows, cols, shape = C, H * W, (N, H, W, C)
    else:
        H, W, C = a.shape[1:]
        rows, cols, shape = H * W, C, (N, C, H, W)
    out = np.empty(shape, a.dtype)
    check_rc(_native.lib.rc_transpose_images(_native.ptr("void *", a), a.itemsize, N, rows, cols,
                                              _native.ptr("void *", out), threads), "qconv2d (transpose)")
    return out


def _qconv2d_dense_c(x, pw, x_zero_point, bias, geo, spec, layout, *, isa, threads):
    """The block-im2col driver (rc_qconv2d) on NCHW or NHWC ``x``, output in the same layout."""
    lib = _native.lib
    nhwc = layout == lib.RC_LAYOUT_NHWC
    N, C, H, W = (x.shape[0], x.shape[3], x.shape[1], x.shape[2]) if nhwc else x.shape
    OC, _, KH, KW = pw.shape
    (sh, sw), (ph, pw_), (dh, dw) = geo.stride, geo.padding, geo.dilation
    OH = conv_output_size(H, KH, sh, ph, dh)
    OW = conv_output_size(W, KW, sw, pw_, dw)
    e, out_dtype, keep = _epilogue_cached(pw._epilogues, spec, bias, OC)
    out = np.empty((N, OH, OW, OC) if nhwc else (N, OC, OH, OW), dtype=out_dtype)
    _run_dense(x, N, C, H, W, pw.parts[0], OC, KH, KW, geo, x_zero_point, e, out, layout, isa=isa, threads=threads)
    del keep
    return out


def _run_dense(x, N, C, H, W, part, OC, KH, KW, geo, x_zero_point, e, out, layout, *, isa, threads):
    """rc_qconv2d: N images [C, H, W] (NHWC: [H, W, C]) at C-contiguous ``x`` (a group's
    channels of one NCHW image, for the grouped path) with the packed operand ``part`` of OC
    columns, into C-contiguous ``out``; the workspace holds a block slot per thread
    (rc_qconv2d_workspace_size: no H*W term)."""
    lib = _native.lib
    (sh, sw), (ph, pw_), (dh, dw) = geo.stride, geo.padding, geo.dilation
    OW = conv_output_size(W, KW, sw, pw_, dw)
    slots = threads if threads > 0 else lib.rc_max_threads()
    ws = _native.workspace(lib.rc_qconv2d_workspace_size(C, KH, KW, OW, sw, dw, OC, out.itemsize, slots))
    rc = lib.rc_qconv2d(_native.ptr("void *", x), 0 if x.dtype == _I8 else 1, N, C, H, W, OC, KH, KW, sh, sw, ph,
                        pw_, dh, dw, int(x_zero_point), *part._c_args, e, _native.ptr("void *", out), ws[2], ws[0],
                        layout, isa, threads)
    check_rc(rc, "qconv2d")


def _qconv2d_c(x, pw, x_zero_point, bias, geo, spec, nhwc=False, *, isa, threads):
    if pw.mode != "depthwise" and isa == _VBMI:
        isa = _VNNI  # only the depthwise kernel has a VBMI variant; the rest is VNNI's code
    elif pw.mode == "depthwise" and isa == _AVX_VNNI:
        isa = _AVX2  # the depthwise kernel has no AVX-VNNI variant; AVX2's is the one it can run
    if nhwc:
        return _qconv2d_nhwc_c(x, pw, x_zero_point, bias, geo, spec, isa=isa, threads=threads)
    if _direct_applies(pw, geo, isa):
        return _qconv_direct(x, pw, x_zero_point, bias, spec, isa=isa, threads=threads)
    lib = _native.lib
    N, C, H, W = x.shape
    OC, Cg, KH, KW = pw.shape
    (sh, sw), (ph, pw_), (dh, dw) = geo.stride, geo.padding, geo.dilation
    OH = conv_output_size(H, KH, sh, ph, dh)
    OW = conv_output_size(W, KW, sw, pw_, dw)
    xt = 0 if x.dtype == _I8 else 1
    if pw.mode == "dense":
        return _qconv2d_dense_c(x, pw, x_zero_point, bias, geo, spec, lib.RC_LAYOUT_NCHW, isa=isa, threads=threads)
    if pw.mode == "depthwise":
        e, out_dtype, keep = _epilogue_cached(pw._epilogues, spec, bias, OC)
        out = np.empty((N, OC, OH, OW), dtype=out_dtype)
        ws = _native.workspace(lib.rc_qdwconv2d_workspace_size(C, H, W, KH, KW, ph, pw_))
        rc = lib.rc_qdwconv2d(_native.ptr("void *", x), xt, N, C, H, W, KH, KW, sh, sw, ph, pw_, dh, dw,
                              int(x_zero_point), *pw._dw_args, e, _native.ptr("void *", out), ws[2], isa, threads)
        del keep
        check_rc(rc, "qconv2d")
        return out
    # grouped: each group of each image is a dense convolution of its Cg channels (contiguous
    # in NCHW), written straight into its ocg output channels (contiguous too)
    out = None
    for g, (spec_g, bias_g) in enumerate(_group_args(pw, spec, bias)):
        e, out_dtype, keep = _epilogue_cached(pw._epilogues, spec_g, bias_g, OC // geo.groups)
        if out is None:
            out = np.empty((N, OC, OH, OW), dtype=out_dtype)
        ocg = OC // geo.groups
        for n in range(N):
            _run_dense(x[n, g * Cg:(g + 1) * Cg], 1, Cg, H, W, pw.parts[g], ocg, KH, KW, geo, x_zero_point, e,
                       out[n, g * ocg:(g + 1) * ocg], lib.RC_LAYOUT_NCHW, isa=isa, threads=threads)
        del keep
    return out


register(Op("qconv2d", qconv2d_reference, _qconv2d_c,
            ("portable", "avx2", "avx512", "avx_vnni", "avx512_vnni", "avx512_vbmi"), doc=__doc__))


def _plain_pair(v):
    return type(v) is int or (type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int)


def _geometry_cached(pw, stride, padding, dilation, H, W):
    """The validated ConvGeometry of a call, after checking that the dilated kernel fits the
    padded H x W input (ShapeError otherwise).  Kept on ``pw`` per (stride, padding,
    dilation, H, W) when each of the three is a plain int or a pair of plain ints (so equal
    keys are equal arguments: 1.0 or True, equal to 1 but refused by as_pair, take the
    general path and raise every time)."""
    key = None
    if _plain_pair(stride) and _plain_pair(padding) and _plain_pair(dilation):
        key = (stride, padding, dilation, H, W)
        geo = pw._geometries.get(key)
        if geo is not None:
            return geo
    geo = ConvGeometry(_conv.as_pair(stride, "stride", 1), _conv.as_pair(padding, "padding", 0),
                       _conv.as_pair(dilation, "dilation", 1), pw.groups)
    KH, KW = pw.shape[2:]
    for k in range(2):  # raises ShapeError when the dilated kernel does not fit
        conv_output_size((H, W)[k], (KH, KW)[k], geo.stride[k], geo.padding[k], geo.dilation[k])
    if key is not None:
        if len(pw._geometries) >= _KEPT:
            pw._geometries.clear()
        pw._geometries[key] = geo
    return geo


# ---- public entry point ---------------------------------------------------------------------


_LAYOUTS = ("NCHW", "NHWC")


def qconv2d(x, w, x_zero_point=0, w_zero_point=0, *, bias=None, stride=1, padding=0, dilation=1,
            groups=1, output=None, layout="NCHW"):
    """Exact quantized convolution of ``x`` with int8 weights, then ``output``.

    x : [N, C, H, W] uint8 or int8 (any memory layout), or [N, H, W, C] with
        ``layout="NHWC"``; x_zero_point per tensor.
    w : [OC, C/groups, KH, KW] int8, or :class:`PackedConvWeights` (then ``w_zero_point``
        and ``groups`` come from it).  w_zero_point: scalar or one per output channel.
    bias : int32 [OC] or None.  stride, padding, dilation: int or (h, w) pair.
    output : None (int32), ``Requantize`` or ``Dequantize`` (per output channel), as in qgemm.
    layout : "NCHW" or "NHWC", of x and of the result.
    Returns [N, OC, OH, OW] (NHWC: [N, OH, OW, OC], the NCHW result transposed, bit for
    bit).  Bit-exact across backends; OverflowRiskError past the int32 bound on
    C/groups * KH * KW.
    """
    nhwc = check_choice(layout, "layout", _LAYOUTS) == "NHWC"
    # check_array's checks inline for an x it would pass unchanged, as in qgemm
    if not (type(x) is np.ndarray and (x.dtype is _U8 or x.dtype is _I8) and x.ndim == 4 and x.flags.c_contiguous):
        x = check_array(x, "x", dtypes=[np.uint8, np.int8], ndim=4, contiguous=True)
    if isinstance(w, PackedConvWeights):
        if not ((type(w_zero_point) is int and w_zero_point == 0 or np.ndim(w_zero_point) == 0 and w_zero_point == 0)
                and groups in (1, w.groups)):
            raise ArgumentError("w_zero_point, groups: pass them to pack_conv_weights, not with packed weights")
        pw = w
    else:
        pw = PackedConvWeights(w, w_zero_point, groups)
    if nhwc:
        N, H, W, C = x.shape
    else:
        N, C, H, W = x.shape
    OC, Cg, KH, KW = pw.shape
    if Cg * pw.groups != C:
        raise ShapeError(
            f"x, w: x has {C} channels (axis {3 if nhwc else 1}, layout {'NHWC' if nhwc else 'NCHW'}) but w "
            f"expects {Cg} per group x {pw.groups} groups = {Cg * pw.groups}"
        )
    geo = _geometry_cached(pw, stride, padding, dilation, H, W)
    lo, hi = _RANGE[x.dtype]
    za = check_int(x_zero_point, "x_zero_point", min_value=lo, max_value=hi)
    bias = _bias(bias, OC)
    bound = _k_bound_cached(pw._bounds, x.dtype, za, pw.max_abs_w, _max_abs_bias(bias, pw))
    if Cg * KH * KW > bound:
        raise OverflowRiskError(
            f"w: C/groups*KH*KW = {Cg * KH * KW} exceeds the int32 accumulation bound {bound}"
        )
    if isinstance(output, Dequantize) and (output.row_scale is not None or output.bias is not None):
        raise ArgumentError("output: qconv2d's Dequantize takes scale and relu only (pass an int32 bias)")
    spec = _output_spec_cached(output, OC)
    if nhwc:
        return dispatch("qconv2d", x, pw, za, bias, geo, spec, True)
    return dispatch("qconv2d", x, pw, za, bias, geo, spec)
