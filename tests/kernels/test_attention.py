"""attention: every backend and ISA variant within the derived element-wise bound."""

import importlib

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, BackendError, DTypeError, ShapeError
from refcompress.testing import check_attention, kernel_variants
from refcompress.testing.nnops import assert_within_bound

VARIANTS = kernel_variants("attention")
ids = [f"{b}-{i}" if i else b for b, i in VARIANTS]
A = importlib.import_module("refcompress.kernels.attention")  # the module (kernels.attention is the op)
U = 2.0 ** -24
FMIN = float(np.finfo(np.float32).min)


def _forced(backend, isa, threads=None):
    def run(*args, **kwargs):
        with kernels.use(backend, isa=isa, threads=threads):
            return kernels.attention(*args, **kwargs)
    return run


def _qkv(rng, B, S, H, spread=1.0):
    return tuple((rng.standard_normal((B, S, H)) * spread).astype(np.float32) for _ in range(3))


def test_registered_with_its_bound():
    op = kernels.ops()["attention"]
    assert op.variants == ("portable", "avx512")
    assert op.extra["error_bound"] is A.attention_error_bound and op.tolerance == U
    if kernels.available()["c_built"]:
        assert "portable" in kernels.variants("attention")


@pytest.mark.parametrize("backend,isa", VARIANTS, ids=ids)
def test_attention_matches_reference(backend, isa):
    check_attention(_forced(backend, isa), max_examples=120)


@pytest.mark.parametrize("backend,isa", VARIANTS, ids=ids)
@pytest.mark.parametrize("threads", [1, 2])
def test_bert_shapes_over_threads(backend, isa, threads):
    rng = np.random.default_rng(1)
    for S in (24, 116):
        q, k, v = _qkv(rng, 4, S, 384)
        lengths = rng.integers(1, S + 1, 4)
        mask = np.where(np.arange(S)[None, :] < lengths[:, None], 0.0, FMIN).astype(np.float32)
        got = _forced(backend, isa, threads)(q, k, v, 12, 1 / np.sqrt(32), mask)
        assert_within_bound(got, A.attention_exact(q, k, v, 12, 1 / np.sqrt(32), mask),
                            A.attention_error_bound(q, k, v, 12, 1 / np.sqrt(32), mask), what=f"S={S}")


@pytest.mark.parametrize("backend,isa", VARIANTS, ids=ids)
def test_special_rows(backend, isa):
    rng = np.random.default_rng(2)
    B, S, H = 4, 19, 66  # 2 heads of 33
    q, k, v = _qkv(rng, B, S, H)
    mask = np.zeros((B, S), np.float32)
    mask[0] = -np.inf            # every key -inf: ctx = 0 (documented)
    mask[1] = FMIN               # every key finfo.min: scores absorbed, P uniform
    mask[2, 5:] = -np.inf        # padding: ctx only sees the first 5 keys
    run = _forced(backend, isa)
    ctx = run(q, k, v, 2, 0.2, mask)
    np.testing.assert_array_equal(ctx[0], 0.0)
    np.testing.assert_allclose(ctx[1], np.broadcast_to(v[1].astype(np.float64).mean(0), (S, H)), rtol=0, atol=1e-5)
    short = run(q[2:3, :5].copy(), k[2:3, :5].copy(), v[2:3, :5].copy(), 2, 0.2)
    np.testing.assert_allclose(ctx[2, :5], short[0], rtol=0, atol=2e-6)
    qn = q.copy()
    qn[3, 4, 0] = np.nan         # a NaN score row (query 4, head 0) gives NaN there only
    out = run(qn, k, v, 2, 0.2, mask)
    assert np.all(np.isnan(out[3, 4, :33])) and not np.any(np.isnan(out[3, 4, 33:]))
    one = run(q[:, :1].copy(), k[:, :1].copy(), v[:, :1].copy(), 2, 0.2)  # S = 1: P = 1
    np.testing.assert_array_equal(one, v[:, :1])


@pytest.mark.parametrize("backend,isa", VARIANTS, ids=ids)
def test_large_scores_do_not_overflow(backend, isa):
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 2, 33, 64, spread=40.0)  # scores of ~1e4
    got = _forced(backend, isa)(q, k, v, 2, 1.0)
    assert np.all(np.isfinite(got))
    assert_within_bound(got, A.attention_exact(q, k, v, 2, 1.0), A.attention_error_bound(q, k, v, 2, 1.0),
                        what="large")


def test_float64_runs_the_reference_and_numpy_is_it_bit_for_bit():
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, 2, 7, 16)
    mask = np.zeros((2, 7), np.float32)
    with kernels.use("numpy"):
        np.testing.assert_array_equal(kernels.attention(q, k, v, 4, 0.5, mask),
                                      A.attention_reference(q, k, v, 4, 0.5, mask))
    q64, k64, v64 = (t.astype(np.float64) for t in (q, k, v))
    for backend in ("numpy", "auto"):
        with kernels.use(backend):
            out = kernels.attention(q64, k64, v64, 4, 0.5)
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, A.attention_reference(q64, k64, v64, 4, 0.5))


def test_matches_the_split_matmul_softmax_merge_path():
    """The same numbers as nn's unfused path (softmax kernel on the float32 scores)."""
    rng = np.random.default_rng(5)
    B, S, heads, d = 3, 17, 4, 8
    q, k, v = _qkv(rng, B, S, heads * d)
    mask = np.where(rng.random((B, S)) < 0.3, FMIN, 0.0).astype(np.float32)
    split = lambda t: t.reshape(B, S, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    scale = np.float32(1 / np.sqrt(d))
    scores = np.matmul(split(q), split(k).transpose(0, 1, 3, 2)) * scale
    p = kernels.softmax(np.ascontiguousarray(scores), mask[:, None, None, :])
    ref = np.matmul(p, split(v)).transpose(0, 2, 1, 3).reshape(B, S, heads * d)
    bound = A.attention_error_bound(q, k, v, heads, scale, mask)
    assert_within_bound(kernels.attention(q, k, v, heads, scale, mask), A.attention_exact(q, k, v, heads, scale, mask),
                        bound, what="fused")
    assert np.all(np.abs(ref - A.attention_exact(q, k, v, heads, scale, mask)) <= 2 * bound)


# ---- the bound is derived, not vacuous --------------------------------------------------------


def test_bound_is_tens_of_ulps_on_bert_like_data():
    rng = np.random.default_rng(6)
    q, k, v = _qkv(rng, 2, 116, 384)
    exact = A.attention_exact(q, k, v, 12, 1 / np.sqrt(32))
    bound = A.attention_error_bound(q, k, v, 12, 1 / np.sqrt(32))
    # relative to sum_j P_j |v_j| (the scale of the P V sum): ~650 u here, from the score
    # error (2 gamma_d |scale| sum|q||k| ~ 290 u) and gamma_{S-1} + gamma_S (~230 u)
    Q, K, V = (A._split(t.astype(np.float64), 12) for t in (q, k, v))
    z = np.matmul(Q, K.transpose(0, 1, 3, 2)) / np.sqrt(32)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    scale = A._merge(np.matmul(p, np.abs(V)))
    assert np.max(bound / scale) < 1000 * U
    assert np.all(np.isfinite(exact))


def _wrong(kind):
    def run(q, k, v, heads, scale, mask=None):
        B, S, H = q.shape
        d = H // heads
        split = lambda t: t.astype(np.float32).reshape(B, S, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
        with np.errstate(all="ignore"):
            z = np.matmul(split(q), split(k).transpose(0, 1, 3, 2))
            if kind != "no_scale":
                z = z * np.float32(scale)
            if mask is not None:
                z = z + mask[:, None, None, :]
            if kind == "no_max":
                e = np.exp(z)
            else:
                e = np.exp(z - z.max(-1, keepdims=True))
            s = e.sum(-1, keepdims=True)
            p = e / s
            if kind == "bfloat16_p":  # probabilities truncated to bfloat16 (8 significant bits)
                p = (p.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
            ctx = np.matmul(p, split(v))
        return ctx.transpose(0, 2, 1, 3).reshape(B, S, H).astype(np.float32)
    return run


@pytest.mark.parametrize("kind", ["no_scale", "no_max", "bfloat16_p"])
def test_checker_catches_wrong_kernels(kind):
    with pytest.raises(AssertionError):
        check_attention(_wrong(kind), max_examples=200)


def test_checker_passes_a_correct_float32_numpy_kernel():
    def plain(q, k, v, heads, scale, mask=None):
        out = _wrong("none")(q, k, v, heads, scale, mask)
        return np.where(np.isnan(out), 0.0, out).astype(np.float32)  # -inf rows: 0, as defined
    check_attention(plain, max_examples=60)


# ---- bad input -------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    q = np.zeros((2, 3, 8), np.float32)
    m = np.zeros((2, 3), np.float32)
    with pytest.raises(DTypeError, match="q: expected dtype"):
        kernels.attention(q.astype(np.int32), q, q, 2, 0.5)
    with pytest.raises(ShapeError, match="q: expected 3 dimensions|q: expected"):
        kernels.attention(q[0], q[0], q[0], 2, 0.5)
    with pytest.raises(ShapeError, match="k"):
        kernels.attention(q, q[:, :2], q, 2, 0.5)
    with pytest.raises(DTypeError, match="v"):
        kernels.attention(q, q, q.astype(np.float64), 2, 0.5)
    with pytest.raises(ArgumentError, match="heads"):
        kernels.attention(q, q, q, 3, 0.5)
    with pytest.raises(ArgumentError, match="heads"):
        kernels.attention(q, q, q, 0, 0.5)
    with pytest.raises(DTypeError, match="heads"):
        kernels.attention(q, q, q, 2.0, 0.5)
    with pytest.raises(ArgumentError, match="scale"):
        kernels.attention(q, q, q, 2, float("nan"))
    with pytest.raises(ArgumentError, match="scale"):
        kernels.attention(q, q, q, 2, "0.5")
    with pytest.raises(ArgumentError, match="scale"):
        kernels.attention(q, q, q, 2, 1e39)  # not finite in float32
    with pytest.raises(ShapeError, match="mask"):
        kernels.attention(q, q, q, 2, 0.5, m[:, None, None, :])
    with pytest.raises(DTypeError, match="mask"):
        kernels.attention(q, q, q, 2, 0.5, m.astype(np.float64))


def test_empty_and_non_contiguous_inputs():
    rng = np.random.default_rng(7)
    assert kernels.attention(np.zeros((0, 5, 8), np.float32), np.zeros((0, 5, 8), np.float32),
                             np.zeros((0, 5, 8), np.float32), 2, 0.5).shape == (0, 5, 8)
    big = rng.standard_normal((2, 6, 32)).astype(np.float32)
    q = big[:, :, ::2]  # strided: copied once, same result
    got = kernels.attention(q, q, q, 2, 0.5)
    assert_within_bound(got, A.attention_exact(q, q, q, 2, 0.5), A.attention_error_bound(q, q, q, 2, 0.5), what="nc")


@pytest.mark.parametrize("backend,isa", VARIANTS)
def test_attention_zero_width_heads_give_the_empty_result_on_every_backend(backend, isa):
    # H = 0 (every heads divides it): the NumPy backend returned (2, 3, 0), C raised
    # RuntimeError "this is a bug" from the workspace size
    for dtype in (np.float32, np.float64):
        q = np.zeros((2, 3, 0), dtype)
        m = np.zeros((2, 3), dtype)
        with kernels.use(backend, isa=isa):
            for heads, mask in ((1, None), (4, m)):
                ctx = kernels.attention(q, q, q, heads, 1.0, mask)
                assert ctx.shape == (2, 3, 0) and ctx.dtype == dtype


@pytest.mark.skipif(not kernels.available()["c_built"], reason="C extension not built")
def test_unavailable_isa_is_an_error_not_a_fallback():
    q = np.ones((1, 2, 4), np.float32)
    with kernels.use("c", isa="avx2"):
        with pytest.raises(BackendError, match="attention"):
            kernels.attention(q, q, q, 1, 0.5)


def test_attention_error_bound_precondition_reported_when_float32_scores_overflow():
    # q . k ~ 1e40 overflows float32 (then times scale 1e-30: inf - inf = NaN) where the
    # float64 reference is finite: outside the bound's precondition, and the checker says so
    from refcompress.kernels.attention import scores_may_overflow
    from refcompress.testing.attention import AttentionCase, check_attention_case

    rng = np.random.default_rng(0)
    q, k = ((rng.standard_normal((1, 4, 8)) * 1e20).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((1, 4, 8)).astype(np.float32)
    assert scores_may_overflow(q, k, 2, 1e-30).any()
    case = AttentionCase(q, k, v, 2, 1e-30, None)

    def overflowing(q, k, v, heads, scale, mask=None):  # what the float32 C kernel gives
        return np.full(q.shape, np.nan, np.float32)

    with pytest.raises(AssertionError, match="outside attention_error_bound's precondition"):
        check_attention_case(overflowing, case)
    # in range: no flag, even with finfo.min padding absorbing large scores
    q1 = rng.standard_normal((2, 5, 8)).astype(np.float32) * 30
    m = np.zeros((2, 5), np.float32)
    m[:, 3:] = np.finfo(np.float32).min
    assert not scores_may_overflow(q1, q1, 2, 1.0, m).any()
    m[:, 4] = -np.inf
    assert not scores_may_overflow(q1, q1, 2, 1.0, m).any()
    assert scores_may_overflow(q1 * 1e18, q1 * 1e18, 2, 1e-30).any()  # the dot product overflows
    big = scores_may_overflow(q1 * 1e15, q1 * 1e15, 2, 1.0, m)  # scores ~1e34 + finfo.min do
    assert big[..., 3].any() and not big[..., :3].any() and not big[..., 4].any()
