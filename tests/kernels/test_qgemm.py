"""qgemm and requantize: every backend and ISA variant, bit-exact against the reference."""

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, DTypeError, OverflowRiskError, ShapeError
from refcompress.kernels import Dequantize, Requantize, _native
from refcompress.kernels.qgemm import _rdbpot, _srdhm, k_bound
from refcompress.testing import assert_exact, check_qgemm, check_requantize, kernel_variants

QGEMM = kernel_variants("qgemm")
REQ = kernel_variants("requantize")


def _id(v):
    return f"{v[0]}-{v[1]}" if v[1] else v[0]


def _forced(fn, backend, isa, threads=None):
    def run(*args, **kwargs):
        with kernels.use(backend, isa=isa, threads=threads):
            return fn(*args, **kwargs)
    return run


@pytest.mark.parametrize("variant", QGEMM, ids=_id)
@pytest.mark.parametrize("threads", [None, 3])
def test_qgemm_matches_reference(variant, threads):
    # threads=None is the machine's default; 3 splits unevenly and often leaves a thread
    # with an empty share of rows or panels
    check_qgemm(_forced(kernels.qgemm, *variant, threads=threads), max_examples=120 if threads is None else 40)


@pytest.mark.parametrize("variant", REQ, ids=_id)
def test_requantize_matches_reference(variant):
    check_requantize(_forced(kernels.requantize, *variant), max_examples=120)


@pytest.mark.parametrize("variant", [v for v in QGEMM if v[0] == "c"], ids=_id)
def test_every_tile_height_and_column_pass(variant):
    # One thread cuts M rows into tiles of 1..6 (RC_QGEMM_MR) rows, and each variant walks a
    # 64-column panel in passes of its own width (avx2: 32 columns; avx_vnni: 16 for tiles of
    # 4-6 rows, 32 for 2-3, the whole panel for one): every M up to three tiles against N
    # just below, at and above each pass and panel edge, K one group (3) and 130 (33 groups, the last one part padding).
    rng = np.random.default_rng(41)
    for K in (3, 130):
        b = rng.integers(-128, 128, (K, 130)).astype(np.int8)
        zb = rng.integers(-128, 128, 130)
        a = rng.integers(0, 256, (18, K)).astype(np.uint8)
        for N in (1, 8, 15, 16, 17, 31, 33, 47, 48, 49, 63, 64, 65, 130):
            pw = kernels.pack_weights(np.ascontiguousarray(b[:, :N]), zb[:N])
            for M in range(1, 19):
                with kernels.use(*variant, threads=1):
                    got = kernels.qgemm(a[:M], pw, 77)
                with kernels.use("numpy"):
                    assert_exact(got, kernels.qgemm(a[:M], pw, 77), what=f"M={M} K={K} N={N}")


@pytest.mark.parametrize("op", ["qgemm", "qconv2d", "lowrank_linear_q8"])
def test_forced_variants_are_the_ones_selected(op):
    from refcompress.kernels import _registry

    # the ops that run qgemm's micro-tiles offer the AVX-VNNI one (it runs where the CPU has it)
    assert "avx_vnni" in _registry.ops()[op].variants
    for isa in kernels.variants(op):
        with kernels.use("c", isa=isa):
            assert kernels.selected_variant(op) == isa


@pytest.mark.parametrize("variant", QGEMM, ids=_id)
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_weights_reused_across_calls_and_threads(variant, threads):
    rng = np.random.default_rng(3)
    b = rng.integers(-128, 128, (259, 131)).astype(np.int8)
    pw = kernels.pack_weights(b, rng.integers(-5, 5, 131))
    for M in (1, 6, 50):
        a = rng.integers(0, 256, (M, 259)).astype(np.uint8)
        out = Requantize(np.float32(2e-4), 128, np.uint8, "fixedpoint")
        with kernels.use(*variant, threads=threads):
            got = kernels.qgemm(a, pw, 130, output=out)
        with kernels.use("numpy"):
            assert_exact(got, kernels.qgemm(a, pw, 130, output=out))


@pytest.mark.skipif(_native.lib is None, reason="needs the C extension")
def test_packed_layers_start_at_cache_lines():
    # the packed weights (and the int8 factored layer's signed copy) are streamed with
    # 64-byte loads, which straddle two lines from NumPy's usual address 16 bytes past one
    rng = np.random.default_rng(1)
    for K, N in [(768, 768), (259, 131), (1, 1)]:
        assert kernels.pack_weights(rng.integers(-128, 128, (K, N)).astype(np.int8)).packed.ctypes.data % 64 == 0
    v, u = rng.standard_normal((8, 40)).astype(np.float32), rng.standard_normal((24, 8)).astype(np.float32)
    q = kernels.QuantizedLowRank.calibrate(v, u, None, rng.standard_normal((16, 40)).astype(np.float32))
    assert q._signed.ctypes.data % 64 == 0


@pytest.mark.parametrize("variant", QGEMM, ids=_id)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("M", [1, 64])  # a panel share and a row share on two threads
def test_column_terms_follow_each_call_in_the_shared_workspace(variant, threads, M):
    # Under threads the column terms are rewritten only where they changed since the last
    # call in this thread's workspace: calls that change one input at a time must each get
    # their own terms (activation zero point, weight zero points, column sums) and repeats
    # the same ones.
    rng = np.random.default_rng(M + 11)
    K, N = 400, 200  # M * K * N >= RC_MIN_PARALLEL_WORK at M = 1: both threads run
    b1 = rng.integers(-128, 128, (K, N)).astype(np.int8)
    b2 = rng.integers(-128, 128, (K, N)).astype(np.int8)
    a = rng.integers(0, 256, (M, K)).astype(np.uint8)
    calls = [(b1, 0, 131), (b1, 0, 131), (b1, 0, 5), (b1, 3, 5), (b2, 3, 5),
             (b2, rng.integers(-4, 4, N), 5), (b1, 0, 131)]
    for b, zb, za in calls:
        pw = kernels.pack_weights(b, zb)
        with kernels.use(*variant, threads=threads):
            got = kernels.qgemm(a, pw, za)
        with kernels.use("numpy"):
            assert_exact(got, kernels.qgemm(a, pw, za))


@pytest.mark.parametrize("variant", [v for v in QGEMM if v[0] == "c"], ids=_id)
def test_column_terms_survive_mixed_thread_counts_shapes_and_convs(variant):
    # The "store only what changed" column terms depend on what the last call left in the
    # workspace: thread counts alternating on one layer, layers of other shapes (the terms at
    # other offsets) and a qconv2d in between must each leave every later call exact.
    rng = np.random.default_rng(23)
    layers = [(kernels.pack_weights(rng.integers(-128, 128, (K, N)).astype(np.int8), rng.integers(-3, 3, N)),
               rng.integers(0, 256, (M, K)).astype(np.uint8))
              for M, K, N in ((1, 700, 300), (64, 400, 200), (5, 600, 130), (1, 700, 300))]
    x = rng.integers(0, 256, (1, 16, 9, 9)).astype(np.uint8)
    w = rng.integers(-128, 128, (70, 16, 3, 3)).astype(np.int8)
    steps = [(0, 2), (0, 1), (0, 2), (1, 2), (0, 3), ("conv", 2), (0, 2), (2, 4), (3, 2), (1, 1), (1, 2), (2, 2)]
    for step, threads in steps:
        with kernels.use(*variant, threads=threads):
            if step == "conv":
                got = kernels.qconv2d(x, w, 50, 1)
            else:
                pw, a = layers[step]
                got = kernels.qgemm(a, pw, 40 + step)
        with kernels.use("numpy"):
            want = kernels.qconv2d(x, w, 50, 1) if step == "conv" else kernels.qgemm(a, pw, 40 + step)
        assert_exact(got, want, what=f"step {step} on {threads} threads")


@pytest.mark.parametrize("variant", QGEMM, ids=_id)
@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("M, K, N", [
    (97, 67, 64),    # one panel: the rows, 48 + 49 on two threads (8 tiles of 6; 4 of 6, 5 of 5)
    (13, 259, 200),  # 4 panels: 2 threads split the panels, 3 the rows (4, 4, 5: one tile each)
    (200, 131, 193), # 4 panels: the rows, 100 each on two threads (15 tiles of 6, 2 of 5)
    (256, 40, 70),   # 128 + 128 rows (18 tiles of 6, 4 of 5); three threads 85, 85, 86
    (31, 97, 130),   # 3 panels: two threads the rows (15 and 16: tiles 5, 5, 5 and 6, 5, 5),
                     # three the panels
    (1, 700, 300),   # one row, 5 panels: unequal panel shares (2 and 3)
    (7, 300, 640),   # 10 panels: the panels (rows would give 4 and 3)
    (8, 300, 640),   # the rows, 4 + 4 (one 4-row tile each); three threads 2, 3, 3
    (2, 500, 128),   # one row a thread (the one-row tile); three threads: one empty share
    (5, 600, 64),    # one panel, 2 + 3 rows; three threads 1, 2, 2 (the one-row tile beside others)
])
def test_threads_share_rows_or_panels_and_cover_every_row(variant, threads, M, K, N):
    rng = np.random.default_rng(M * N + K)
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    pw = kernels.pack_weights(b, rng.integers(-3, 3, N))
    outputs = (None, Requantize(np.float32(3e-5), 120, np.uint8),
               Requantize(np.float32(2e-5), -3, np.int8, "fixedpoint"),
               Dequantize(rng.uniform(1e-4, 2e-4, N).astype(np.float32), relu=True,
                          row_scale=rng.uniform(0.5, 2, M).astype(np.float32),
                          bias=rng.standard_normal(N).astype(np.float32)))
    for a, za in ((rng.integers(0, 256, (M, K)).astype(np.uint8), 131),
                  (rng.integers(-128, 128, (M, K)).astype(np.int8), -7)):
        for output in outputs:
            with kernels.use(*variant, threads=threads):
                got = kernels.qgemm(a, pw, za, output=output)
            with kernels.use("numpy"):
                assert_exact(got, kernels.qgemm(a, pw, za, output=output))


@pytest.mark.parametrize("variant", [v for v in QGEMM if v[0] == "c"], ids=_id)
def test_threaded_splits_match_reference_property(variant):
    # check_qgemm's shapes mostly fall below the work that goes parallel, so the row / panel
    # shares are drawn here: K is raised until M * K * N passes RC_MIN_PARALLEL_WORK, and
    # 2 to 4 threads split M and N around the 6-row tiles and 64-column panels.
    from hypothesis import assume, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=25, deadline=None)
    @given(M=st.sampled_from([1, 2, 5, 6, 7, 13, 25, 61, 97]), N=st.sampled_from([1, 63, 64, 65, 129, 200, 320]),
           threads=st.integers(2, 4), seed=st.integers(0, 2**31 - 1), out=st.integers(0, 3))
    def run(M, N, threads, seed, out):
        assume(M * N >= 16)  # K <= 4100: far inside the int32 bound at any zero points
        rng = np.random.default_rng(seed)
        K = max(-(-65536 // (M * N)), 8) + int(rng.integers(0, 5))
        b = rng.integers(-128, 128, (K, N)).astype(np.int8)
        pw = kernels.pack_weights(b, rng.integers(-128, 128, N))
        output = (None, Requantize(np.float32(1e-5), 7, np.uint8),
                  Requantize(np.float32(3e-6), -1, np.int8, "fixedpoint"),
                  Dequantize(rng.uniform(1e-4, 2e-4, N).astype(np.float32), bias=rng.standard_normal(N)
                             .astype(np.float32)))[out]
        a, za = ((rng.integers(0, 256, (M, K)).astype(np.uint8), int(rng.integers(0, 256))) if seed % 2 else
                 (rng.integers(-128, 128, (M, K)).astype(np.int8), int(rng.integers(-128, 128))))
        with kernels.use(*variant, threads=threads):
            got = kernels.qgemm(a, pw, za, output=output)
        with kernels.use("numpy"):
            assert_exact(got, kernels.qgemm(a, pw, za, output=output))

    run()


@pytest.mark.parametrize("variant", QGEMM, ids=_id)
def test_k_at_the_int32_bound_is_exact_and_one_more_is_refused(variant):
    # int8 activations at -128 with zero point 0 and weights at -128: every product is
    # 2^14, so K = bound gives the largest representable accumulator.
    bound = k_bound(np.int8, 0, 128)
    assert bound == (2**31 - 1) // 2**14
    a = np.full((1, bound), -128, np.int8)
    b = np.full((bound, 3), -128, np.int8)
    with kernels.use(*variant):
        got = kernels.qgemm(a, b)
    np.testing.assert_array_equal(got, np.full((1, 3), bound * 2**14, np.int64))
    with pytest.raises(OverflowRiskError, match=f"K <= {bound}"):
        kernels.qgemm(np.zeros((1, bound + 1), np.int8), np.zeros((bound + 1, 3), np.int8))


@pytest.mark.parametrize("variant", QGEMM, ids=_id)
def test_float_requantize_of_accumulators_near_the_int32_ends(variant):
    # The AVX-512 epilogues requantize a full 64-column panel without the float clamp when
    # [qmin, qmax] is the output type's range and every |scale| < 1/2, leaving it to the
    # saturating packs (rc_pack64_unclamped): |acc * scale| < 2^30 must convert exactly and
    # saturate as the clamp would.  Row 0 reaches acc = 2^31 - 1 exactly (K at the int32
    # bound, every product 2^14, plus a bias of 2^14 - 1; float(acc) rounds to 2^31) and
    # -128 * 127 * K; row 1 the mirror.  Scales just below and at 1/2 (the clamped
    # neighbour), 1 (where 2^31 would overflow the conversion), per tensor and per column.
    K, N = k_bound(np.int8, 0, 128, 2**14 - 1), 128
    bias = np.zeros(N, np.int32)
    bias[:N // 2] = 2**31 - 1 - K * 2**14
    rng = np.random.default_rng(7)
    b = np.empty((K, N), np.int8)
    b[:, :N // 2], b[:, N // 2:] = -128, 127
    a = rng.integers(-128, 128, (6, K)).astype(np.int8)
    a[0], a[1] = -128, 127
    pw = kernels.pack_weights(b)
    acc = a.astype(np.int64) @ b.astype(np.int64) + bias
    assert acc.max() == 2**31 - 1 and acc.min() < -(2**31) + 2**25
    acc = acc.astype(np.int32)
    per_col = np.linspace(1e-4, 0.4999, N).astype(np.float32)
    for scale in (np.float32(0.4999), np.float32(0.5), np.float32(1.0), np.float32(1.5), per_col, np.float32(3e-5)):
        for dtype in (np.uint8, np.int8):
            info = np.iinfo(dtype)
            for z in (int(info.min), int(info.max), int(info.min + info.max + 1) // 2 + 3):
                spec = Requantize(scale, z, dtype)
                with kernels.use("numpy"):
                    want = kernels.requantize(acc, spec)
                with kernels.use(*variant):
                    got = kernels.qgemm(a, pw, bias=bias, output=spec)
                assert_exact(got, want)


def test_gemmlowp_rounding_written_out():
    # SRDHM rounds x * M0 / 2^31 with ties toward +inf; RDBPOT rounds ties away from zero.
    half = np.int64(2**30)  # M0 = 2^30 is a multiplier of exactly 1/2
    x = np.array([3, -3, 5, -5, 1, -1], np.int64)
    np.testing.assert_array_equal(_srdhm(x, half), [2, -1, 3, -2, 1, 0])
    np.testing.assert_array_equal(_rdbpot(x, np.int64(1)), [2, -2, 3, -3, 1, -1])
    assert _srdhm(np.int64(-(2**31)), np.int64(-(2**31))) == 2**31 - 1


def test_quantize_multiplier_matches_tflite_rule():
    m0, sh = kernels.quantize_multiplier([0.5, 0.75, 1.0, 2.0**-40, 0.1])
    np.testing.assert_array_equal(m0, [2**30, 3 * 2**29, 2**30, 0, 1717986918])
    np.testing.assert_array_equal(sh, [0, 0, 1, 0, -3])
    # M0 * 2^(shift - 31) approximates the real multiplier to 2^-31 relative
    real = np.array([0.1, 0.0123, 0.999])
    m0, sh = kernels.quantize_multiplier(real)
    np.testing.assert_allclose(m0 * 2.0 ** (sh.astype(float) - 31), real, rtol=2**-30)


def test_two_rules_can_differ_by_one_step_and_both_are_exact():
    # acc * M lands on a tie (2.5): float rounds half to even -> 2, fixed point SRDHM
    # rounds ties up -> 3.  Both are the documented rules of their ecosystems.
    acc = np.array([[5]], np.int32)
    f = kernels.requantize(acc, Requantize(0.5, 0, np.int8, "float"))
    x = kernels.requantize(acc, Requantize(0.5, 0, np.int8, "fixedpoint"))
    assert int(f[0, 0]) == 2 and int(x[0, 0]) == 3


def test_matches_plain_integer_matmul_and_relu_through_range():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (9, 40)).astype(np.uint8)
    b = rng.integers(-128, 128, (40, 10)).astype(np.int8)
    want = (a.astype(np.int64) - 7) @ (b.astype(np.int64) + 3)
    assert_exact(kernels.qgemm(a, b, 7, -3), want.astype(np.int32))
    y = kernels.qgemm(a, b, 7, -3, output=Requantize(1e-3, 20, np.uint8, qmin=20))
    assert y.min() >= 20  # ReLU: nothing below the zero point
    d = kernels.qgemm(a, b, 7, -3, output=Dequantize(0.5, relu=True))
    np.testing.assert_array_equal(d, np.maximum(want.astype(np.float32) * np.float32(0.5), 0))


def test_dequantize_row_scale_and_float_bias_every_variant():
    """Per-row scales and a float bias in the dequantize epilogue: the documented order of
    float32 steps, bit for bit in every variant (tails and full vectors: N = 37)."""
    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, (13, 50)).astype(np.int8)
    b = rng.integers(-128, 128, (50, 37)).astype(np.int8)
    acc = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.float32)
    s = rng.uniform(1e-4, 1e-2, 37).astype(np.float32)
    rs = rng.uniform(0.1, 3.0, 13).astype(np.float32)
    fb = rng.normal(size=37).astype(np.float32)
    want = np.maximum(acc * s * rs[:, None] + fb, np.float32(0))
    for backend, isa in kernel_variants("qgemm"):
        with kernels.use(backend, isa=isa):
            got = kernels.qgemm(a, b, 0, output=Dequantize(s, relu=True, row_scale=rs, bias=fb))
        np.testing.assert_array_equal(got, want, err_msg=f"{backend} {isa}")
    with pytest.raises(ShapeError, match="output.row_scale"):
        kernels.qgemm(a, b, output=Dequantize(s, row_scale=rs[:5]))
    with pytest.raises(ArgumentError, match="output.row_scale"):
        kernels.qgemm(a, b, output=Dequantize(s, row_scale=-rs))
    with pytest.raises(DTypeError, match="output.bias"):
        kernels.qgemm(a, b, output=Dequantize(s, bias=fb.astype(np.float64)))


def test_bad_inputs_name_the_argument():
    a = np.zeros((2, 3), np.uint8)
    b = np.zeros((3, 4), np.int8)
    with pytest.raises(DTypeError, match="a: expected dtype"):
        kernels.qgemm(a.astype(np.int32), b)
    with pytest.raises(DTypeError, match="b: expected dtype int8"):
        kernels.qgemm(a, b.astype(np.uint8))
    with pytest.raises(ShapeError, match="inner dimensions"):
        kernels.qgemm(a, np.zeros((4, 4), np.int8))
    with pytest.raises(ArgumentError, match="a_zero_point"):
        kernels.qgemm(a, b, 256)
    with pytest.raises(ShapeError, match="b_zero_point"):
        kernels.qgemm(a, b, 0, np.zeros(3, np.int64))
    with pytest.raises(ArgumentError, match="b_zero_point"):
        kernels.qgemm(a, b, 0, 200)
    with pytest.raises(ShapeError, match="bias"):
        kernels.qgemm(a, b, bias=np.zeros(3, np.int32))
    with pytest.raises(DTypeError, match="bias"):
        kernels.qgemm(a, b, bias=np.zeros(4, np.int64))
    with pytest.raises(ArgumentError, match="output.scale"):
        kernels.qgemm(a, b, output=Requantize(0.0))
    with pytest.raises(ArgumentError, match="output.rule"):
        kernels.qgemm(a, b, output=Requantize(0.1, rule="nearest"))
    with pytest.raises(DTypeError, match="output.dtype"):
        kernels.qgemm(a, b, output=Requantize(0.1, dtype=np.int16))
    with pytest.raises(ArgumentError, match="output.zero_point"):
        kernels.qgemm(a, b, output=Requantize(0.1, zero_point=-1, dtype=np.uint8))
    with pytest.raises(ArgumentError, match="pack_weights"):
        kernels.qgemm(a, kernels.pack_weights(b), 0, 3)
    with pytest.raises(ArgumentError, match="real"):
        kernels.quantize_multiplier(2.0**31)


def test_checker_catches_a_kernel_with_the_saturating_shortcut():
    # vpmaddubsw saturates pair sums to int16: a kernel that does so is wrong at the ends.
    def saturating(a, b, za, zb, *, bias, output):
        a64 = a.astype(np.int64)
        b64 = b.astype(np.int64)
        K = a.shape[1] - a.shape[1] % 2
        pairs = a64[:, 0:K:2, None] * b64[None, 0:K:2] + a64[:, 1:K:2, None] * b64[None, 1:K:2]
        acc = np.clip(pairs, -32768, 32767).sum(axis=1)
        if K < a.shape[1]:
            acc += a64[:, -1:] @ b64[-1:]
        acc = acc - za * b64.sum(0) - np.asarray(zb) * a64.sum(1, keepdims=True) + a.shape[1] * za * np.asarray(zb)
        if bias is not None:
            acc = acc + bias
        from refcompress.kernels.qgemm import _output_spec, requantize_reference
        return requantize_reference(acc, _output_spec(output, b.shape[1], a.shape[0]))

    with pytest.raises(AssertionError):
        check_qgemm(saturating, max_examples=200)


@pytest.mark.parametrize("variant", kernel_variants("requantize"), ids=lambda v: v[1] or v[0])
def test_float_requantize_of_nan_and_inf_follows_the_one_rounding_rule(variant):
    # The public functions refuse such scales; the C epilogue is also reached by C callers,
    # so every variant must still follow round_saturate: NaN -> 0 (then + z), +-inf clamped.
    from refcompress.kernels._registry import dispatch
    from refcompress.kernels.qgemm import _requantize_ref

    acc = np.array([[0, 1, -1, 7, 0, 3, -5, 2, 0, 1, 1, -1, 0, 9, 4, 1, 0, 2, -2]], np.int32)
    m = np.array([np.nan, np.inf, np.inf, -np.inf, np.inf, 0.5, -0.5, 1e30, np.nan, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                 np.float32)
    spec = ("float", (m, 100, 0, 255, np.uint8))
    backend, isa = variant
    with np.errstate(invalid="ignore"):  # the NumPy reference's 0 * inf
        with kernels.use(backend, isa=isa):
            got = dispatch("requantize", acc, spec)
        want = _requantize_ref(acc, spec)
    assert_exact(got, want)
    assert got[0, 0] == 100 and got[0, 8] == 100 and got[0, 4] == 100  # 0 * inf and NaN scales: z


@pytest.mark.skipif(_native.lib is None, reason="needs the C extension")
def test_repeat_helper_of_the_call_path_benchmark_runs_the_same_call():
    # bench_qgemm --call-path times the kernel with rc_qgemm_repeat: it must compute what
    # rc_qgemm does, and refuse a count below one
    import importlib

    qg = importlib.import_module("refcompress.kernels.qgemm")
    lib = _native.lib
    rng = np.random.default_rng(21)
    a = rng.integers(0, 256, (3, 70)).astype(np.uint8)
    b = rng.integers(-128, 128, (70, 67)).astype(np.int8)
    pw = kernels.pack_weights(b, 5)
    e = qg._epilogue_cached(pw._epilogues, None, None, 67)[0]
    out = np.full((3, 67), -1, np.int32)
    ws = np.empty(lib.rc_qgemm_workspace_size(3, 70, 67), np.uint8)
    args = (_native.ptr("void *", a), 1, 3, 70, 67, 9, *pw._c_args, e, _native.ptr("void *", out),
            _native.ptr("void *", ws), -1, 1)
    assert lib.rc_qgemm_repeat(3, *args) == _native.RC_OK
    with kernels.use("numpy"):
        assert_exact(out, kernels.qgemm(a, pw, 9))
    out[:] = -1
    assert lib.rc_qgemm_repeat(0, *args) == _native.RC_ERR_ARG
    assert np.all(out == -1)
    # the C entry point refuses an activation zero point outside its type's range (the
    # kernel forms z - 128 and x - z in int32), and an unknown activation type
    for a_type, z in [(1, -1), (1, 256), (0, -129), (0, 128), (1, -2**31), (2, 0)]:
        bad = (args[0], a_type, 3, 70, 67, z) + args[6:]
        assert lib.rc_qgemm(*bad) == _native.RC_ERR_ARG
    assert np.all(out == -1)


@pytest.mark.skipif(_native.lib is None, reason="needs the C extension")
def test_the_kept_dispatch_decision_follows_every_new_setting(monkeypatch):
    # qgemm keeps resolve's answer while the setting is the same object; each use() block
    # is a new setting, so each must reach the implementation with its own ISA and threads
    import dataclasses

    from refcompress.kernels import _registry

    op = _registry.ops()["qgemm"]
    seen = []

    def spy(*args, isa, threads):
        seen.append((isa, threads))
        return op.c(*args, isa=isa, threads=threads)

    kernels.qgemm(np.zeros((1, 1), np.uint8), kernels.pack_weights(np.zeros((1, 1), np.int8)))
    # a new Op registered under the name is noticed without resetting what was kept
    monkeypatch.setitem(_registry._REGISTRY, "qgemm", dataclasses.replace(op, c=spy))
    rng = np.random.default_rng(22)
    a = rng.integers(0, 256, (2, 9)).astype(np.uint8)
    b = rng.integers(-128, 128, (9, 5)).astype(np.int8)
    pw = kernels.pack_weights(b)
    want = []
    for threads, isa in enumerate(kernels.variants("qgemm"), start=1):
        with kernels.use("c", isa=isa, threads=threads):
            for _ in range(2):
                assert_exact(kernels.qgemm(a, pw), (a.astype(np.int64) @ b).astype(np.int32))
        want += [(_native.ISA_NAMES.index(isa), threads)] * 2
    with kernels.use("numpy"):
        kernels.qgemm(a, pw)
    assert seen == want



def test_int8_activations_with_an_equal_but_not_identical_dtype():
    # a pickled array (multiprocessing, joblib) has an int8 dtype equal to, but not the same
    # object as, np.dtype(np.int8): every backend must still read it as int8
    import pickle

    rng = np.random.default_rng(23)
    a = pickle.loads(pickle.dumps(rng.integers(-128, 128, (3, 40)).astype(np.int8)))
    b = rng.integers(-128, 128, (40, 7)).astype(np.int8)
    pw = kernels.pack_weights(b)
    want = ((a.astype(np.int64) + 100) @ b).astype(np.int32)
    with kernels.use("numpy"):
        assert_exact(kernels.qgemm(a, pw, -100), want)
    for isa in kernels.variants("qgemm"):
        with kernels.use("c", isa=isa):
            assert_exact(kernels.qgemm(a, pw, -100), want)
