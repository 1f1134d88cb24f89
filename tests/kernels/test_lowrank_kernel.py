"""The factored-Linear kernel: every backend and ISA variant.

float32: within the derived summation bound of the exact (float64) result, element-wise.
int8: bit-exact against the composition of the two qgemm references."""

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, BackendError, DTypeError, ShapeError
from refcompress.kernels import _native, _registry
from refcompress.kernels.lowrank import gamma, lowrank_error_bound, lowrank_linear_reference
from refcompress.testing import assert_exact, kernel_variants

F32 = kernel_variants("lowrank_linear")
Q8 = kernel_variants("lowrank_linear_q8")


def _id(v):
    return f"{v[0]}-{v[1]}" if v[1] else v[0]


# Sizes below / at / above the 6- and 3-row tiles, the 32-column panels, the 48-row blocks.
ROWS = st.sampled_from([0, 1, 2, 3, 5, 6, 7, 13, 47, 48, 49, 97])
COLS = st.sampled_from([1, 2, 15, 16, 17, 31, 32, 33, 64, 65, 100])


def _exact(x, v, u, b):
    y = (x.astype(np.float64) @ v.T.astype(np.float64)) @ u.T.astype(np.float64)
    return y if b is None else y + b


@st.composite
def f32_cases(draw):
    B, n, r, m = draw(ROWS), draw(COLS), draw(COLS), draw(COLS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 1e-20, 1e20]))
    x = (rng.standard_normal((B, n)) * scale).astype(np.float32)
    v = rng.standard_normal((r, n)).astype(np.float32)
    u = rng.standard_normal((m, r)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) * np.float32(scale) if draw(st.booleans()) else None
    return x, v, u, b


@pytest.mark.parametrize("variant", F32, ids=_id)
@pytest.mark.parametrize("threads", [1, 2])
def test_fp32_within_the_summation_bound(variant, threads):
    @settings(max_examples=50)
    @given(case=f32_cases())
    def run(case):
        x, v, u, b = case
        with kernels.use(*variant, threads=threads):
            y = kernels.lowrank_linear(x, v, u, b)
        assert y.dtype == np.float32 and y.shape == (x.shape[0], u.shape[0])
        err = np.abs(y.astype(np.float64) - _exact(x, v, u, b))
        bound = lowrank_error_bound(x, v, u, b)
        bad = err > bound
        assert not bad.any(), f"{bad.sum()} elements exceed the bound; worst {np.max(err / np.maximum(bound, 1e-300))}"

    run()


@pytest.mark.parametrize("variant", F32, ids=_id)
def test_fp32_large_batch_parallel_paths_and_packed_reuse(variant):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((40, 300)).astype(np.float32)
    u = rng.standard_normal((130, 40)).astype(np.float32)
    b = rng.standard_normal(130).astype(np.float32)
    p = kernels.pack_lowrank(v, u, b)
    # column split with a barrier; row blocks in per-thread shares of the 6- (3-, 4-) row
    # tiles, around the 145-row switch and with a partial last tile
    for B in (1, 20, 144, 145, 146, 193, 300):
        x = rng.standard_normal((B, 300)).astype(np.float32)
        for threads in (1, 2):
            with kernels.use(*variant, threads=threads):
                y = kernels.lowrank_linear(x, p)
            assert np.all(np.abs(y - _exact(x, v, u, b)) <= lowrank_error_bound(x, v, u, b))


# Batch 1 has a route of its own (csrc/lowrank/lowrank_gemv.h): h as dot products over v's
# rows, one row at a time in steps of 4 vectors of 8 / 16 float lanes (AVX2 / AVX-512; the
# portable variant 4 rows at a time, steps of 2 vectors of 4 lanes), then single vectors,
# then a masked tail, the row sums 4 rows at a time; y over
# the 32-column u^T panels one at a time, 1 / 2 / 4 k steps per pass.  x is copied to a
# cache-line start up to 4096 floats.  Sizes around each edge, and primes.
N1 = st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 97, 127, 129,
                      1023, 1024, 1025, 1039, 2053, 4095, 4096, 4097])
R1 = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 31, 37])
M1 = st.sampled_from([1, 2, 3, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 96, 97, 127, 128, 129, 161, 193, 257])


def _check_bound(y, x, v, u, b):
    err = np.abs(y.astype(np.float64) - _exact(x, v, u, b))
    bound = lowrank_error_bound(x, v, u, b)
    bad = err > bound
    assert not bad.any(), f"{bad.sum()} elements exceed the bound; worst {np.max(err / np.maximum(bound, 1e-300))}"


@st.composite
def batch1_cases(draw, n=N1, r=R1, m=M1):
    n, r, m = draw(n), draw(r), draw(m)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 1e-20, 1e20]))
    x = (rng.standard_normal((1, n)) * scale).astype(np.float32)
    v = rng.standard_normal((r, n)).astype(np.float32)
    u = rng.standard_normal((m, r)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) * np.float32(scale) if draw(st.booleans()) else None
    return x, v, u, b


@pytest.mark.parametrize("variant", F32, ids=_id)
def test_batch1_within_the_summation_bound(variant):
    @settings(max_examples=60)
    @given(case=batch1_cases(), threads=st.sampled_from([1, 2]))
    def run(case, threads):
        x, v, u, b = case
        with kernels.use(*variant, threads=threads):
            y = kernels.lowrank_linear(x, kernels.pack_lowrank(v, u, b))
        assert y.shape == (1, u.shape[0]) and y.dtype == np.float32
        _check_bound(y, x, v, u, b)

    run()


@pytest.mark.parametrize("variant", [v for v in F32 if v[0] == "c"], ids=_id)
@pytest.mark.parametrize("r", [2016, 2048, 2049, 2080, 2081])
def test_batch1_h_on_the_stack_up_to_2048_floats_and_in_the_workspace_above(variant, r):
    # ranks padded to 2048 floats keep h on the C stack (no workspace); one panel more needs
    # the workspace, and the C call refuses a NULL one there
    lib, ffi = _native.lib, _native.ffi
    assert (lib.rc_lowrank_workspace_size(1, r) == 0) == (r <= 2048)
    rng = np.random.default_rng(r)
    x, v = rng.standard_normal((1, 5)).astype(np.float32), rng.standard_normal((r, 5)).astype(np.float32)
    u, b = rng.standard_normal((3, r)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    p = kernels.pack_lowrank(v, u, b)
    for threads in (1, 2):
        with kernels.use(*variant, threads=threads):
            _check_bound(kernels.lowrank_linear(x, p), x, v, u, b)
    y = np.empty((1, 3), np.float32)
    rc = lib.rc_lowrank_f32(_native.ptr("float *", x), 1, 5, r, 3, *p._c_args, _native.ptr("float *", y),
                            ffi.NULL, _native.ISA_AUTO, 1)
    assert rc == (_native.RC_OK if r <= 2048 else _native.RC_ERR_ARG)
    # A workspace of the documented size (0 bytes: the caller passes a 1-byte buffer) is
    # never written: the guard bytes after it (room for a whole h) stay as they were.
    if r <= 2048:
        ws = np.full(4 * 2048 + 64, 0x5A, np.uint8)
        rc = lib.rc_lowrank_f32(_native.ptr("float *", x), 1, 5, r, 3, *p._c_args, _native.ptr("float *", y),
                                _native.ptr("void *", ws[:1]), _native.ISA_AUTO, 1)
        assert rc == _native.RC_OK and (ws == 0x5A).all()
        _check_bound(y, x, v, u, b)
    # batch 0 needs no workspace at all
    assert lib.rc_lowrank_f32(ffi.NULL, 0, 5, r, 3, *p._c_args, ffi.NULL, ffi.NULL, _native.ISA_AUTO, 1) == _native.RC_OK


@pytest.mark.skipif(_native.lib is None, reason="needs the C extension")
@pytest.mark.parametrize("n", [1024, 4096, 4097])
def test_batch1_bits_do_not_depend_on_where_x_and_v_start(n):
    # The C call copies an x of up to 4096 floats to a cache-line start and reads a larger
    # one in place, and its kernels sum in an order that does not depend on addresses:
    # the same bits wherever x and v start (the C entry point is called directly, with
    # the caller's v at every 4-byte offset, since pack_lowrank hands C an aligned copy).
    # r (n + m) > 131072 at n = 4096 and 4097: two and three threads split the rank.
    lib, ptr = _native.lib, _native.ptr
    rng = np.random.default_rng(n)
    r, m = 67, 65
    assert lib.rc_lowrank_batch1_threads(n, r, m, 3) == (1 if n == 1024 or not lib.rc_has_openmp() else 3)
    v, u = rng.standard_normal((r, n)).astype(np.float32), rng.standard_normal((m, r)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    x0 = rng.standard_normal((1, n)).astype(np.float32)
    p = kernels.pack_lowrank(v, u, b)
    buf, vbuf = np.empty(n + 16, np.float32), np.empty(r * n + 16, np.float32)
    y = np.empty((1, m), np.float32)
    for isa in kernels.variants("lowrank_linear"):
        code = _native.ISA_NAMES.index(isa)
        want = None
        for threads in (1, 2, 3):
            for off in range(16):  # every 4-byte offset within a cache line
                x = buf[off:off + n].reshape(1, n)
                x[...] = x0
                vo = vbuf[off:off + r * n].reshape(r, n)
                vo[...] = v
                rc = lib.rc_lowrank_f32(ptr("float *", x), 1, n, r, m, ptr("float *", vo), *p._c_args[1:],
                                        ptr("float *", y), _native.ffi.NULL, code, threads)
                assert rc == _native.RC_OK
                if want is None:
                    want = y.copy()
                    _check_bound(want, x0, v, u, b)
                np.testing.assert_array_equal(y, want, err_msg=f"{isa}, {threads} threads, x and v "
                                                               f"{4 * off} bytes past a line")


@pytest.mark.skipif(_native.lib is None, reason="needs the C extension")
def test_packed_factors_start_at_cache_lines():
    # NumPy puts large arrays 16 bytes past a page: the factors the kernel streams (the
    # panels, and v for batch 1) are copied to cache-line starts (docs/lowrank.md section 7)
    rng = np.random.default_rng(0)
    buf = rng.standard_normal(64 * 1024 + 16).astype(np.float32)
    start = (16 - buf.ctypes.data % 64) % 64 // 4  # 16 bytes past a line, as NumPy's own
    v = buf[start:start + 64 * 1024].reshape(64, 1024)
    assert v.ctypes.data % 64 == 16
    p = kernels.pack_lowrank(v, rng.standard_normal((100, 64)).astype(np.float32))
    addr = [int(_native.ffi.cast("uintptr_t", c)) for c in p._c_args[:2]]  # what C is given: v, panels
    assert addr[0] % 64 == 0 and addr[1] % 64 == 0
    np.testing.assert_array_equal(p.v, v)
    v[0, 0] += 1  # a copy: what the layer computes with does not follow the caller's edits
    assert p.v[0, 0] != v[0, 0]
    for shape, dtype in [((0,), np.float32), ((3, 5), np.int8), ((7,), np.float64), (9, np.uint8)]:
        a = _native.aligned_empty(shape, dtype)
        assert a.shape == np.empty(shape).shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.size == 0 or a.ctypes.data % 64 == 0
    with pytest.raises(ValueError, match="negative"):
        _native.aligned_empty(-1, np.float32)  # a C size function's error code


@pytest.mark.skipif(_native.lib is None, reason="needs the C extension")
def test_batch1_team_rule():
    # the rank is split above 2 * 65536 factor elements, with >= 8 rows of h per thread
    # (docs/lowrank.md section 7): below that the team costs more than a thread saves
    team = kernels.lowrank_batch1_threads
    t = (lambda k: k) if _native.lib.rc_has_openmp() else (lambda k: 1)  # one thread without OpenMP
    assert team(1024, 64, 1024, 2) == 1  # r (n + m) = 131072: not above
    assert team(1024, 65, 1024, 2) == t(2)
    assert team(1024, 65, 1024, 1) == 1
    assert team(65536, 15, 1, 4) == 1 and team(65536, 16, 1, 4) == t(2) and team(65536, 32, 1, 4) == t(4)
    assert team(2**40, 2**20, 2**40, 2) == t(2)  # no product formed that could overflow
    for args, name in [((0, 8, 8, 2), "n"), ((8, 0, 8, 2), "r"), ((8, 8, 0, 2), "m"), ((8, 8, 8, -1), "threads"),
                       ((8, 8, 2**62 + 1, 2), "m"), ((8, 8, 8, 2**31), "threads")]:
        with pytest.raises(ArgumentError, match=f"^{name}: expected an integer in"):
            team(*args)
    c = _native.lib.rc_lowrank_batch1_threads  # the C entry point refuses sizes below 1 itself
    assert c(0, 8, 8, 2) == -1 and c(8, 0, 8, 2) == -1 and c(8, 8, 0, 2) == -1


# Large enough that batch 1 splits the rank across threads (r (n + m) > 131072 and at least
# 8 rows per thread: the test asserts it), with ranks that are not multiples of the 4-row pass.
SPLIT = batch1_cases(n=st.sampled_from([2039, 2048, 2053]), r=st.sampled_from([64, 67, 73, 96, 101]),
                     m=st.sampled_from([33, 97, 128, 131, 257]))


@pytest.mark.parametrize("variant", [v for v in F32 if v[0] == "c"], ids=_id)
def test_batch1_thread_split_within_the_bound_and_independent_of_the_thread_count(variant):
    @settings(max_examples=25)
    @given(case=SPLIT)
    def run(case):
        x, v, u, b = case
        (r, n), m = v.shape, u.shape[0]
        want = [1, 2, 3] if _native.lib.rc_has_openmp() else [1, 1, 1]
        assert [kernels.lowrank_batch1_threads(n, r, m, t) for t in (1, 2, 3)] == want
        p = kernels.pack_lowrank(v, u, b)
        with kernels.use(*variant, threads=1):
            y1 = kernels.lowrank_linear(x, p)
        for threads in (2, 3):  # three: shares that start at any row, not only multiples of 4
            with kernels.use(*variant, threads=threads):
                y2 = kernels.lowrank_linear(x, p)
            _check_bound(y2, x, v, u, b)
            # each y element is summed in the same order whichever thread makes it
            np.testing.assert_array_equal(y1, y2)

    run()


def test_the_dispatch_decision_follows_every_change_of_setting():
    rng = np.random.default_rng(3)
    v = rng.standard_normal((5, 40)).astype(np.float32)
    u = rng.standard_normal((30, 5)).astype(np.float32)
    p = kernels.pack_lowrank(v, u, None)
    x = rng.standard_normal((1, 40)).astype(np.float32)
    ref = lowrank_linear_reference(x, p)
    outer = _registry.current()
    try:
        kernels.set_backend("numpy")
        assert_exact(kernels.lowrank_linear(x, p), ref)
        kernels.set_backend("auto")
        kernels.lowrank_linear(x, p)
        with kernels.use("numpy"):
            assert_exact(kernels.lowrank_linear(x, p), ref)
    finally:
        kernels.set_backend(outer.backend, outer.isa)
    if _native.lib is not None:
        with kernels.use("c", isa="avx512_vnni"):  # lowrank_linear has no VNNI variant
            with pytest.raises(BackendError, match="avx512_vnni"):
                kernels.lowrank_linear(x, p)


def test_explicit_c_without_the_build_raises_and_auto_warns(monkeypatch):
    rng = np.random.default_rng(4)
    v = rng.standard_normal((3, 8)).astype(np.float32)
    u = rng.standard_normal((6, 3)).astype(np.float32)
    x = rng.standard_normal((1, 8)).astype(np.float32)
    monkeypatch.setattr(_native, "lib", None)
    monkeypatch.setattr(_native, "LOAD_ERROR", "ImportError: simulated")
    monkeypatch.setattr(_registry, "_warned_fallback", False)
    p = kernels.pack_lowrank(v, u, None)
    for args in ((x, p), (x, v, u), (x[:, :0], v[:, :0], u)):  # packed, unpacked, empty n
        with kernels.use("c"):
            with pytest.raises(BackendError, match="simulated"):
                kernels.lowrank_linear(*args)
    with kernels.use("auto"):
        with pytest.warns(RuntimeWarning, match="NumPy reference"):
            y = kernels.lowrank_linear(x, p)
    assert_exact(y, lowrank_linear_reference(x, p))


@pytest.mark.parametrize("variant", [v for v in F32 if v[0] == "c"], ids=_id)
def test_concurrent_python_threads_do_not_share_a_workspace(variant):
    # The kernel releases the GIL and the workspace (h) is cached per thread: calls from
    # several threads at once, with different ranks, must give each its own answer.
    rng = np.random.default_rng(5)
    layers = []
    for r in (3, 17, 40, 64):
        v = rng.standard_normal((r, 200)).astype(np.float32)
        u = rng.standard_normal((90, r)).astype(np.float32)
        layers.append(kernels.pack_lowrank(v, u, rng.standard_normal(90).astype(np.float32)))
    xs = [rng.standard_normal((B, 200)).astype(np.float32) for B in (1, 1, 5, 60)]
    with kernels.use(*variant, threads=1):
        want = [[kernels.lowrank_linear(x, p) for x in xs] for p in layers]

    def work(i):
        with kernels.use(*variant, threads=1):
            for _ in range(30):
                for j, x in enumerate(xs):
                    assert_exact(kernels.lowrank_linear(x, layers[i]), want[i][j])

    with ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(work, i) for i in range(4)]:
            f.result()


def test_bound_is_tight_enough_to_catch_a_kernel_that_rounds_h_to_bfloat16():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    v = rng.standard_normal((16, 64)).astype(np.float32)
    u = rng.standard_normal((32, 16)).astype(np.float32)
    h = (x @ v.T).view(np.uint32) & np.uint32(0xFFFF0000)  # truncate h to bfloat16
    wrong = h.view(np.float32) @ u.T
    assert np.any(np.abs(wrong - _exact(x, v, u, None)) > lowrank_error_bound(x, v, u, None))
    assert gamma(1) == pytest.approx(2.0**-24, rel=1e-6)



def _assert_q8_matches_the_reference(x_q, q, variant, threads):
    with kernels.use("numpy"):
        want = kernels.lowrank_linear_q8(x_q, q)
    with kernels.use(*variant, threads=threads):
        got = kernels.lowrank_linear_q8(x_q, q)
    assert_exact(got, want, what=f"lowrank_linear_q8 B={x_q.shape[0]} n={q.n} r={q.r} m={q.m} threads={threads}")


@pytest.mark.parametrize("variant", [v for v in Q8 if v[0] == "c"], ids=_id)
def test_int8_fused_row_blocks_and_threads_bit_exact(variant):
    # The C kernel runs both products per block of up to 48 rows, each thread an equal
    # contiguous share of the rows: batches around the block and tile edges (and shares of
    # 7, 8, 14, 16, 32, 33 rows, whose short last tile the VNNI block merges with the full
    # one before it), ranks off the 4-group and 64-column panel edges, zero points at both
    # ends of the uint8 range.
    rng = np.random.default_rng(6)
    for n, r, m, zx, zh in ((131, 67, 70, 0, 255), (64, 4, 129, 255, 0), (300, 65, 64, 128, 7)):
        v = rng.standard_normal((r, n)).astype(np.float32)
        u = rng.standard_normal((m, r)).astype(np.float32)
        q = kernels.QuantizedLowRank(v, u, rng.standard_normal(m).astype(np.float32), 0.05, zx, 0.3, zh)
        for B in (1, 5, 6, 7, 8, 13, 14, 16, 28, 32, 47, 48, 49, 64, 65, 97, 145, 300):
            x_q = rng.integers(0, 256, (B, n)).astype(np.uint8)
            with kernels.use("numpy"):
                want = kernels.lowrank_linear_q8(x_q, q)
            for threads in (1, 2, 3, 4):
                with kernels.use(*variant, threads=threads):
                    assert_exact(kernels.lowrank_linear_q8(x_q, q), want, what=f"B={B} threads={threads}")


@pytest.mark.skipif(("c", "avx512_vnni") not in Q8,
                    reason="the signed-copy block needs AVX-512 VNNI")
def test_int8_vnni_signed_copy_is_passed_and_its_absence_falls_back_exactly():
    # The VNNI block multiplies the signed copy of the packed factors; the layer must hand
    # it to C (a NULL there silently takes the generic block, exact but slower), and the C
    # API's NULL fallback must stay exact too.
    rng = np.random.default_rng(8)
    n, r, m = 131, 67, 70
    q = kernels.QuantizedLowRank(rng.standard_normal((r, n)).astype(np.float32),
                                 rng.standard_normal((m, r)).astype(np.float32),
                                 rng.standard_normal(m).astype(np.float32), 0.05, 3, 0.3, 250)
    x_q = rng.integers(0, 256, (53, n)).astype(np.uint8)
    with kernels.use("numpy"):
        want = kernels.lowrank_linear_q8(x_q, q)
    with kernels.use("c", isa="avx512_vnni"):
        assert_exact(kernels.lowrank_linear_q8(x_q, q), want)
    assert q._c_args[3] != _native.ffi.NULL and q._signed.size > 0
    object.__setattr__(q, "_c_args", q._c_args[:3] + (_native.ffi.NULL,) + q._c_args[4:])  # (frozen)
    for threads in (1, 2):
        with kernels.use("c", isa="avx512_vnni", threads=threads):
            assert_exact(kernels.lowrank_linear_q8(x_q, q), want, what=f"NULL signed copy, threads={threads}")


# The AVX-512 VNNI block picks its tile by a panel's valid columns (6 x 64 above 48, 8 x 48
# above 32, 12 x 32 above 16, else 12 x 16), merges a short last tile with the full one
# before it (6 + 1, 6 + 2, 8 + 1..3, 12 + 1..5, 12 + 1..11 rows run as two halves) and
# hands a lone row to the generic block: ranks and outputs around 16 / 32 / 48 / 64 (and a
# panel beyond), batches around the 6-, 8- and 12-row tiles, their merged remainders and
# the 48-row blocks, inner sizes off the groups of 4 that vpdpbusd sums (n % 4 and r % 4).
# Every variant runs them (the others must agree too).
EDGE_COLS = st.sampled_from([1, 2, 3, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 80, 96, 97, 112, 113, 127, 131])
EDGE_ROWS = st.sampled_from([1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 17, 19, 23, 24, 25, 26, 29, 32, 47, 48, 49,
                             61, 64, 97])
EDGE_INNER = st.sampled_from([1, 3, 4, 5, 61, 62, 63, 64, 65, 67, 127, 128, 131])


@st.composite
def q8_cases(draw, rows=ROWS, inner=COLS, cols=COLS, extremes=False):
    """x_q across the whole uint8 range (requantization saturates in some cases); with
    `extremes`, zero points at the ends of the range, x_q all 0 or all 255, large biases."""
    B, n, r, m = draw(rows), draw(inner), draw(cols), draw(cols)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    v = rng.standard_normal((r, n)).astype(np.float32)
    u = rng.standard_normal((m, r)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if draw(st.booleans()) else None
    if extremes:
        zx, zh = draw(st.sampled_from([0, 255, 128])), draw(st.sampled_from([0, 255, 37]))
        b = None if b is None else b * np.float32(draw(st.sampled_from([0.01, 1.0, 1e4])))
    else:
        zx, zh = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    try:
        q = kernels.QuantizedLowRank(v, u, b, draw(st.floats(1e-3, 1.0)), zx, draw(st.floats(1e-3, 10.0)), zh)
    except ArgumentError:  # a bias too large for int32 at s_h s_u (tested below)
        assume(False)
    fill = draw(st.sampled_from(["random", "zeros", "max"])) if extremes else "random"
    if fill == "random":
        x_q = rng.integers(0, 256, (B, n)).astype(np.uint8)
    else:
        x_q = np.full((B, n), 0 if fill == "zeros" else 255, np.uint8)
    return x_q, q


@pytest.mark.parametrize("cases", ["mixed", "tile_edges"])
@pytest.mark.parametrize("variant", Q8, ids=_id)
def test_int8_bit_exact_against_the_reference(variant, cases):
    strategy = q8_cases() if cases == "mixed" else q8_cases(EDGE_ROWS, EDGE_INNER, EDGE_COLS, extremes=True)

    @settings(max_examples=50)
    @given(case=strategy, threads=st.sampled_from([1, 2]))
    def run(case, threads):
        _assert_q8_matches_the_reference(*case, variant, threads)

    run()


@st.composite
def q8_float_cases(draw):
    """Float x for the int8 layer: values that round to every code, ties (x / s_x exactly
    k + 1/2, on power-of-two scales), values that saturate at both ends, +-0, subnormals,
    NaN and +-Inf, at shapes around the tiles and the 48-row blocks the quantization is
    fused with."""
    B, n, r, m = draw(EDGE_ROWS), draw(EDGE_INNER), draw(EDGE_COLS), draw(EDGE_COLS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sx = draw(st.sampled_from([2.0**-4, 0.05, 1 / 3, 2.0**-20, 7.0]))
    zx = draw(st.sampled_from([0, 128, 255, 3]))
    q = kernels.QuantizedLowRank(rng.standard_normal((r, n)).astype(np.float32),
                                 rng.standard_normal((m, r)).astype(np.float32), None, sx, zx, 0.5, 128)
    k = rng.integers(-300, 300, (B, n)) + rng.choice([0.0, 0.5, 0.25, 0.4999, 0.5001], (B, n))
    x = (k * sx).astype(np.float32)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 3e38, -3e38], np.float32)
    mask = rng.random((B, n)) < draw(st.sampled_from([0.0, 0.05, 0.5]))
    x[mask] = rng.choice(special, int(mask.sum()))
    return x, q


@pytest.mark.parametrize("variant", Q8, ids=_id)
def test_int8_from_float_x_quantizes_as_quantize_input_bit_exact(variant):
    # Float x is quantized inside the C call, block by block, by the thread that multiplies
    # the block: the result must be the uint8 path's on quantize_input(x), bit for bit.
    from refcompress.kernels.quantize import quantize_reference

    @settings(max_examples=50)
    @given(case=q8_float_cases(), threads=st.sampled_from([1, 2, 3]))
    def run(case, threads):
        x, q = case
        codes = quantize_reference(x, np.float32(q.x_scale), np.int32(q.x_zero_point), None, np.uint8, 0, 255)
        with kernels.use("numpy"):
            want = kernels.lowrank_linear_q8(codes, q)
        assert_exact(q.quantize_input(x), codes, what="quantize_input")
        with kernels.use(*variant, threads=threads):
            assert_exact(kernels.lowrank_linear_q8(x, q), want,
                         what=f"float x, B={x.shape[0]} n={q.n} r={q.r} m={q.m} threads={threads}")

    run()


def test_int8_uint8_by_value_and_pickled_workspace_sizes_take_the_right_path():
    # A uint8 dtype object equal to np.uint8 but not it (here with metadata) is uint8 codes,
    # not float x; a layer unpickled with the workspace size of its last batch (a pickle
    # from a build whose workspace had no room for float x's codes) sizes it again.
    import pickle

    rng = np.random.default_rng(12)
    n, r, m, B = 64, 16, 40, 64
    q = kernels.QuantizedLowRank(rng.standard_normal((r, n)).astype(np.float32),
                                 rng.standard_normal((m, r)).astype(np.float32), None, 0.05, 9, 0.3, 120)
    x = rng.standard_normal((B, n)).astype(np.float32)
    codes = q.quantize_input(x)
    with kernels.use("numpy"):
        want = kernels.lowrank_linear_q8(codes, q)
    odd = codes.view(np.dtype(np.uint8, metadata={"note": 1}))
    assert odd.dtype is not np.dtype(np.uint8)
    for variant in Q8:
        with kernels.use(*variant):
            assert_exact(kernels.lowrank_linear_q8(odd, q), want, what=f"uint8 with metadata, {variant}")
    state = {k: v for k, v in q.__dict__.items() if k not in q._C_STATE}
    state["_ws_last"] = (B, 1)  # what an older pickle could carry: too small for float x
    old = pickle.loads(pickle.dumps(q)).__reduce__()[0](state)
    assert old._ws_last == (-1, 0)
    with kernels.use("c"):
        assert_exact(kernels.lowrank_linear_q8(x, old), want, what="unpickled layer, float x")


def _with_epilogues(q, requant, dequant):
    """q with other epilogues (the C API takes any requantizing h and any dequantizing y
    without a per-row scale; QuantizedLowRank itself makes float-rule h and plain y)."""
    from refcompress.kernels.qgemm import _output_spec

    # (the object is frozen: a test-only change written past its __setattr__)
    q.__dict__.update(requant=requant, dequant=dequant, _spec1=_output_spec(requant, q.r),
                      _spec2=_output_spec(dequant, q.m), _c_args=None)
    return q


@pytest.mark.parametrize("variant", [v for v in Q8 if v[0] == "c"], ids=_id)
def test_int8_fixed_point_h_and_relu_or_float_bias_y_bit_exact(variant):
    # gemmlowp's rule for h, and y with ReLU / a float bias: the VNNI block takes the first,
    # the generic block the others; both must equal the reference.
    from refcompress.kernels.qgemm import Dequantize, Requantize

    rng = np.random.default_rng(11)
    for n, r, m, B in ((131, 48, 70, 25), (64, 17, 129, 13), (300, 65, 33, 50)):
        v = rng.standard_normal((r, n)).astype(np.float32)
        u = rng.standard_normal((m, r)).astype(np.float32)
        q = kernels.QuantizedLowRank(v, u, rng.standard_normal(m).astype(np.float32), 0.05, 3, 0.3, 250)
        mult = (q.x_scale * q.v_scale / q.h_scale).astype(np.float32)
        out_scale = (q.h_scale * q.u_scale).astype(np.float32)
        fbias = rng.standard_normal(m).astype(np.float32)
        x_q = rng.integers(0, 256, (B, n)).astype(np.uint8)
        for requant, dequant in ((Requantize(mult, 250, np.uint8, "fixedpoint"), Dequantize(out_scale)),
                                 (Requantize(mult, 250, np.uint8, "float"), Dequantize(out_scale, relu=True)),
                                 (Requantize(mult, 250, np.uint8, "fixedpoint"), Dequantize(out_scale, bias=fbias)),
                                 (Requantize(mult[0], 250, np.uint8, "float", qmin=10, qmax=200),
                                  Dequantize(out_scale[0]))):
            _with_epilogues(q, requant, dequant)
            with kernels.use("numpy"):
                want = kernels.lowrank_linear_q8(x_q, q)
            for threads in (1, 2):
                with kernels.use(*variant, threads=threads):
                    got = kernels.lowrank_linear_q8(x_q, q)
                assert_exact(got, want, what=f"{requant.rule} relu={dequant.relu} fbias={dequant.bias is not None}")


def test_int8_reference_is_the_written_out_integer_arithmetic():
    rng = np.random.default_rng(2)
    v = rng.standard_normal((6, 20)).astype(np.float32)
    u = rng.standard_normal((9, 6)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    x = rng.standard_normal((5, 20)).astype(np.float32)
    q = kernels.QuantizedLowRank.calibrate(v, u, b, x)
    xq = q.quantize_input(x)
    acc1 = (xq.astype(np.int64) - q.x_zero_point) @ q.v_q.T.astype(np.int64)
    m1 = (q.x_scale * q.v_scale / q.h_scale).astype(np.float32)
    hq = np.clip(np.rint(acc1.astype(np.float32) * m1) + q.h_zero_point, 0, 255).astype(np.uint8)
    acc2 = (hq.astype(np.int64) - q.h_zero_point) @ q.u_q.T.astype(np.int64) + q.bias_q
    want = acc2.astype(np.float32) * (q.h_scale * q.u_scale).astype(np.float32)
    with kernels.use("numpy"):
        assert_exact(kernels.lowrank_linear_q8(xq, q), want)
    # and it approximates the float layer
    y = (x @ v.T) @ u.T + b
    assert np.max(np.abs(want - y)) < 0.1 * np.max(np.abs(y))


@pytest.mark.parametrize("variant", F32, ids=_id)
def test_empty_factors_give_empty_or_bias_only_outputs(variant):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    with kernels.use(*variant):
        y = kernels.lowrank_linear(x[:, :0], np.ones((2, 0), np.float32), np.ones((5, 2), np.float32), b)
        assert_exact(y, np.broadcast_to(b, (3, 5)).astype(np.float32))  # n = 0: y is the bias
        assert kernels.lowrank_linear(x, np.ones((2, 4), np.float32), np.ones((0, 2), np.float32)).shape == (3, 0)
    q = kernels.QuantizedLowRank(np.ones((2, 4), np.float32), np.ones((0, 2), np.float32), None, 0.1, 3, 0.1, 4)
    with kernels.use(*variant):
        assert kernels.lowrank_linear_q8(np.ones((3, 4), np.uint8), q).shape == (3, 0)


def test_int8_refuses_a_bias_that_would_overflow_the_int32_sum():
    # bias / (s_h s_u) near 2^31: acc + bias would wrap in C and not in the reference.
    # Given codes and scales, such a bias is refused ...
    v, u = np.ones((1, 3), np.float32), np.ones((1, 1), np.float32)
    codes = (np.full((1, 3), 127, np.int8), np.full(1, 1 / 127, np.float32), np.full((1, 1), 127, np.int8),
             np.full(1, 1 / 127, np.float32))
    with pytest.raises(ArgumentError, match="u: inner dimension 1 exceeds the int32 bound .* quantized bias"):
        kernels.QuantizedLowRank.from_codes(*codes, np.array([-3e4], np.float32), 0.5, 0, 1e-3, 0)
    q = kernels.QuantizedLowRank(v, u, np.array([-3.0], np.float32), 0.5, 0, 1e-3, 0)
    x_q = np.array([[255, 255, 255]], np.uint8)
    with kernels.use("numpy"):
        want = kernels.lowrank_linear_q8(x_q, q)
    for variant in Q8:
        with kernels.use(*variant):
            assert_exact(kernels.lowrank_linear_q8(x_q, q), want, what=str(variant))


def test_int8_scale_of_u_keeps_the_bias_code_within_the_int32_bound():
    # ... while from float factors s_u_j = max(max|u_j| / 127, |b_j| / (s_h B)) makes it fit:
    # B = (2^31 - 1 - r max(z_h, 255 - z_h) 127)(1 - 2^-20) - 1
    v, u = np.ones((1, 3), np.float32), np.ones((1, 1), np.float32)
    q = kernels.QuantizedLowRank(v, u, np.array([-3e4], np.float32), 0.5, 0, 1e-3, 0)
    # (the float32 roundings of s_u and s_h s_u stay inside the 2^-20 margin: the sum fits)
    assert abs(int(q.bias_q[0])) + 1 * 255 * 127 <= 2**31 - 1 and q.u_scale[0] > np.float32(1 / 127)
    x_q = np.array([[255, 255, 255], [0, 0, 0]], np.uint8)
    with kernels.use("numpy"):
        want = kernels.lowrank_linear_q8(x_q, q)
    np.testing.assert_allclose(want[1], -3e4, rtol=1e-6)
    for variant in Q8:
        with kernels.use(*variant):
            assert_exact(kernels.lowrank_linear_q8(x_q, q), want, what=str(variant))
    # a row of zeros with a bias: the bias alone sets s_u and comes out to float precision
    q = kernels.QuantizedLowRank(v, np.zeros((2, 1), np.float32), np.array([0.123, -4e-7], np.float32), 0.5, 0,
                                 1.0, 0)
    assert np.all(q.u_q == 0)
    for variant in Q8:
        with kernels.use(*variant):
            np.testing.assert_allclose(kernels.lowrank_linear_q8(x_q, q), [[0.123, -4e-7]] * 2, rtol=1e-6)
    # rows the bias does not constrain keep max|u_j| / 127 exactly
    u2 = np.array([[0.5], [2.0]], np.float32)
    q = kernels.QuantizedLowRank(v, u2, np.array([1.0, -1.0], np.float32), 0.5, 0, 1e-2, 0)
    np.testing.assert_array_equal(q.u_scale, (np.array([0.5, 2.0], np.float32) / np.float32(127)))


def test_bad_inputs_name_the_argument():
    v = np.ones((3, 5), np.float32)
    u = np.ones((4, 3), np.float32)
    x = np.ones((2, 5), np.float32)
    with pytest.raises(DTypeError, match="x: expected dtype float32"):
        kernels.lowrank_linear(x.astype(np.float64), v, u)
    with pytest.raises(ShapeError, match="x: expected shape"):
        kernels.lowrank_linear(np.ones((2, 6), np.float32), v, u)
    with pytest.raises(ShapeError, match="u: expected shape"):
        kernels.lowrank_linear(x, v, np.ones((4, 2), np.float32))
    with pytest.raises(ShapeError, match="bias"):
        kernels.lowrank_linear(x, v, u, np.ones(3, np.float32))
    with pytest.raises(ArgumentError, match="u: expected the second factor"):
        kernels.lowrank_linear(x, v)
    with pytest.raises(ArgumentError, match="pack_lowrank"):
        kernels.lowrank_linear(x, kernels.pack_lowrank(v, u), u)
    q = kernels.QuantizedLowRank(v, u, None, 0.1, 0, 0.1, 0)
    with pytest.raises(DTypeError, match="x_q: expected dtype uint8, float32, got float64"):
        kernels.lowrank_linear_q8(x.astype(np.float64), q)
    with pytest.raises(ShapeError, match=r"x_q: expected shape \(batch, 5\)"):
        kernels.lowrank_linear_q8(np.ones((2, 4), np.float32), q)
    with pytest.raises(ArgumentError, match="h_scale"):
        kernels.QuantizedLowRank(v, u, None, 0.1, 0, 0.0, 0)
    with pytest.raises(ArgumentError, match="x_zero_point"):
        kernels.QuantizedLowRank(v, u, None, 0.1, 300, 0.1, 0)


def test_quantized_lowrank_refuses_non_finite_and_empty_factors_naming_them():
    # a NaN row of v used to get scale 1 and codes 0 (a silently different layer); Inf in
    # v or the bias was reported as "scale", a NaN bias as an inner-dimension bound; r = 0,
    # n = 0 and bad calibration inputs gave bare NumPy errors
    f = np.float32
    v, u, b, x = np.ones((2, 3), f), np.ones((4, 2), f), np.ones(4, f), np.ones((5, 3), f)
    for bad in (np.nan, np.inf, -np.inf):
        vb, ub, bb = v.copy(), u.copy(), b.copy()
        vb[0, 0], ub[1, 1], bb[2] = bad, bad, bad
        for args, name in (((vb, u, b), "v"), ((v, ub, b), "u"), ((v, u, bb), "bias")):
            with pytest.raises(ArgumentError, match=f"^{name}: expected finite values"):
                kernels.QuantizedLowRank(*args, 0.1, 0, 0.1, 0)
            with pytest.raises(ArgumentError, match=f"^{name}: expected finite values"):
                kernels.QuantizedLowRank.calibrate(*args, x)
    for vb, ub in ((np.ones((0, 3), f), np.ones((4, 0), f)), (np.ones((2, 0), f), u)):
        with pytest.raises(ShapeError, match=r"^v: expected a rank r >= 1 and n >= 1"):
            kernels.QuantizedLowRank(vb, ub, b, 0.1, 0, 0.1, 0)
    for xb in (np.ones((2, 4), f), np.ones((0, 3), f)):
        with pytest.raises(ShapeError, match=r"^x: expected calibration inputs of shape \(N >= 1, 3\)"):
            kernels.QuantizedLowRank.calibrate(v, u, b, xb)
    q = kernels.QuantizedLowRank.calibrate(v, u, b, x)  # the valid layer still builds
    assert q.r == 2 and q.n == 3 and q.m == 4


@pytest.mark.parametrize("variant", kernel_variants("lowrank_linear"), ids=lambda v: f"{v[0]}-{v[1]}")
def test_lowrank_error_bound_covers_subnormal_products(variant):
    # x and v at 1e-20: every product of h is in float32's subnormal range, where rounding
    # is absolute (2^-150), not relative; the bound had no such term and every backend
    # exceeded it ~67 times
    rng = np.random.default_rng(0)
    f = np.float32
    for n, r, m, B in ((3, 2, 4, 2), (37, 5, 9, 1), (64, 16, 33, 7)):
        x = (rng.standard_normal((B, n)) * 1e-20).astype(f)
        v = (rng.standard_normal((r, n)) * 1e-20).astype(f)
        u = rng.standard_normal((m, r)).astype(f)
        b = (rng.standard_normal(m) * 1e-44).astype(f)  # subnormal bias
        exact = (x.astype(np.float64) @ v.T.astype(np.float64)) @ u.T.astype(np.float64) + b
        bound = lowrank_error_bound(x, v, u, b)
        with kernels.use(variant[0], isa=variant[1]):
            y = kernels.lowrank_linear(x, kernels.pack_lowrank(v, u, b))
        err = np.abs(y.astype(np.float64) - exact)
        assert np.all(err <= bound), f"{variant} n={n}: max err / bound {float((err / bound).max()):.3g}"
