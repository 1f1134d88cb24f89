"""The randomized Hadamard rotation (quant.rotation) and the rotating WeightOnlyLinear."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcompress import io
from refcompress.errors import ArgumentError, ShapeError
from refcompress.quant import QuantSpec, calibrate, dequantize, gptq, quantize
from refcompress.quant import modules as M
from refcompress.quant.rotation import hadamard_matrix, hadamard_order, hadamard_rotate, random_signs

# powers of two, Paley orders (4, 8, 12, 20, 24, 32, 44, ...) and their products with 2^k,
# MiniLM's 384 = 12 * 32 and 1536 = 12 * 128
ORDERS = [1, 2, 4, 8, 12, 20, 24, 44, 48, 96, 384, 1536]


@pytest.mark.parametrize("n", ORDERS)
def test_hadamard_matrix_is_plus_minus_one_and_orthogonal(n):
    h = hadamard_matrix(n)
    assert h.shape == (n, n) and set(np.unique(h)) <= {-1, 1}
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n, dtype=np.int64))
    m, p = hadamard_order(n)
    assert m * p == n and p & (p - 1) == 0


@pytest.mark.parametrize("n", [3, 5, 6, 7, 10, 300, 100])
def test_orders_without_a_construction_are_refused_by_name(n):
    with pytest.raises(ArgumentError, match=f"n: no Hadamard matrix of order {n}"):
        hadamard_order(n)


@settings(max_examples=40, deadline=None)
@given(n=st.sampled_from(ORDERS), rows=st.integers(0, 5), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_fast_transform_equals_the_dense_product(n, rows, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
    d = random_signs(n, seed)
    got, inv = hadamard_rotate(x, d), hadamard_rotate(x, d, inverse=True)
    assert got.dtype == inv.dtype == dtype and got.shape == inv.shape == x.shape
    if rows == 0:
        return
    h = hadamard_matrix(n)
    x64 = x.astype(np.float64)
    want = (x64 * d) @ h / np.sqrt(n)
    want_inv = (x64 @ h.T / np.sqrt(n)) * d  # x Q^T
    # The fast transform sums +-x_i in float64, one Kronecker factor at a time: every output
    # is a nested sum whose longest chain of additions is at most m + p (the factors' sizes
    # add up to at most that), so before the final rounding it is off by at most
    # (m + p + 2) eps64 sum_i |x_i| / sqrt(n) (+2: the scaling and the reference's own float64
    # error); the rounding to dtype adds at most half an ulp, eps(dtype) / 2 |value|.
    m, p = hadamard_order(n)
    e64, e = np.finfo(np.float64).eps, np.finfo(dtype).eps

    def tol(src, ref):
        return (m + p + 2) * e64 * float(np.abs(src).sum(axis=1).max()) / np.sqrt(n) + e * float(np.abs(ref).max())

    assert float(np.abs(got.astype(np.float64) - want).max()) <= tol(x64, want)
    assert float(np.abs(inv.astype(np.float64) - want_inv).max()) <= tol(x64, want_inv)
    # the inverse undoes the rotation: got's error e (|e_i| <= t) reaches each output of the
    # second pass as sum_i +-e_i / sqrt(n), at most sqrt(n) t, and that pass adds its own bound
    back = hadamard_rotate(got, d, inverse=True).astype(np.float64)
    g64 = got.astype(np.float64)
    assert float(np.abs(back - x64).max()) <= np.sqrt(n) * tol(x64, want) + tol(g64, x64)
    # orthogonal: norms kept
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), np.linalg.norm(x64, axis=1),
                               rtol=1e-5)


def test_rotating_input_and_weight_keeps_the_output_and_leading_axes():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 384)).astype(np.float32)
    w = rng.standard_normal((5, 384)).astype(np.float32)
    d = random_signs(384, 7)
    np.testing.assert_allclose(hadamard_rotate(x, d) @ hadamard_rotate(w, d).T, x @ w.T, rtol=1e-4, atol=1e-4)
    assert np.array_equal(random_signs(384, 7), d) and not np.array_equal(random_signs(384, 8), d)


def test_bad_input_names_the_argument():
    with pytest.raises(ArgumentError, match="signs: expected 12 values of \\+1 or -1"):
        hadamard_rotate(np.ones((2, 12), np.float32), np.ones(11))
    with pytest.raises(ArgumentError, match="signs: expected 12 values"):
        hadamard_rotate(np.ones((2, 12), np.float32), np.full(12, 2))
    with pytest.raises(ArgumentError, match="n: no Hadamard matrix of order 10"):
        hadamard_rotate(np.ones((2, 10), np.float32), np.ones(10))
    with pytest.raises(ShapeError, match="x: expected at least 1 dimension"):
        hadamard_rotate(np.float32(1.0), np.ones(1))


def _outlier_weights(seed=0, out=48, n_in=96):
    """Rows with one weight at ~60 sigma, as BERT's FFN output layer has (175 sigma)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, n_in)).astype(np.float32)
    w[np.arange(out), rng.integers(0, n_in, out)] = 60.0 * rng.choice([-1, 1], out)
    x = rng.standard_normal((256, n_in)).astype(np.float32)
    return w, x


def test_rotation_lowers_the_int4_error_of_rows_with_outlier_weights():
    w, x = _outlier_weights()
    err = {}
    for rotate in (False, True):
        lin = M.WeightOnlyLinear(96, 48, bits=4, rotate=rotate).set_weight(w, np.zeros(48, np.float32))
        err[rotate] = float(np.linalg.norm(lin(x) - x @ w.T))
    assert err[True] < 0.5 * err[False]


def test_rotating_layer_stores_gptq_codes_of_the_rotated_problem_and_saves_them(tmp_path):
    w, x = _outlier_weights(1)
    d = random_signs(96, 3)
    spec = QuantSpec(4, signed=False, symmetric=False, narrow_range=False, granularity="channel")
    res = gptq(hadamard_rotate(w, d), hadamard_rotate(x, d), spec=spec)
    b = np.linspace(-1, 1, 48).astype(np.float32)
    lin = M.WeightOnlyLinear(96, 48, bits=4, symmetric=False, rotate=True)
    lin.set_quantized(res.codes, res.qparams, b, input_signs=d).eval()
    np.testing.assert_array_equal(lin.input_signs, d)
    np.testing.assert_array_equal(lin.dense_weight(), res.weight)
    np.testing.assert_allclose(lin(x), hadamard_rotate(x, d) @ res.weight.T + b, rtol=1e-4, atol=1e-4)
    # the forward runs on the un-rotated weight, W_hat Q^T, built once and kept
    np.testing.assert_array_equal(lin.unrotated_weight(), hadamard_rotate(res.weight, d, inverse=True))
    assert lin.unrotated_weight() is lin.unrotated_weight()
    assert lin.get_config()["rotate"] is True and lin.input_signs.dtype == np.int8
    back = io.load(io.save(lin, str(tmp_path / "rot.npz")))
    np.testing.assert_array_equal(back.input_signs, d)
    np.testing.assert_array_equal(back(x), lin(x))
    # set_weight on a rotating layer is round to nearest of W Q under the layer's own signs
    rtn = M.WeightOnlyLinear(96, 48, bits=4, rotate=True).set_weight(w)
    qp = calibrate(hadamard_rotate(w, rtn.input_signs), QuantSpec(4, granularity="channel", axis=0))
    np.testing.assert_array_equal(rtn.dense_weight(), dequantize(quantize(hadamard_rotate(w, rtn.input_signs), qp), qp))


def test_rotating_layer_refuses_what_it_cannot_do():
    with pytest.raises(ArgumentError, match="rotate: in_features = 300 cannot be rotated"):
        M.WeightOnlyLinear(300, 4, rotate=True)
    with pytest.raises(ArgumentError, match="rotate: expected True or False"):
        M.WeightOnlyLinear(96, 4, rotate="yes")
    plain = M.WeightOnlyLinear(96, 4, bits=4)
    codes = np.zeros((4, 96), np.int8)
    with pytest.raises(ArgumentError, match="input_signs: the layer does not rotate its input"):
        plain.set_quantized(codes, np.ones(4, np.float32), input_signs=np.ones(96))
    rot = M.WeightOnlyLinear(96, 4, bits=4, rotate=True)
    with pytest.raises(ShapeError, match="input_signs"):
        rot.set_quantized(codes, np.ones(4, np.float32), input_signs=np.ones(95))
    with pytest.raises(ArgumentError, match="input_signs: expected values \\+1 or -1"):
        rot.set_quantized(codes, np.ones(4, np.float32), input_signs=np.zeros(96))
