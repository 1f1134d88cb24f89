"""Packed kernel arguments (PackedCSR, PackedNM, PackedLowRank, QuantizedLowRank) refuse
attribute reassignment after construction: the C kernels trust the sizes, arrays and
pointers checked when they were built.  The documented operations (in-place edits of the
values, with_values, pickle / deepcopy, the lazy caches) still work."""

import copy
import pickle

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError
from refcompress.kernels import _native
from refcompress.testing import assert_exact

C_VARIANTS = [("numpy", None)] + [("c", i) for i in kernels.variants("spmm_csr")]


def _csr_weight(rng, out_f=64, in_f=256, density=0.1):
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    w[rng.random(w.shape) >= density] = 0
    return w


def _packed_csr(seed, form):
    """(rng, CSR arrays of a random weight, its PackedCSR in ``form``, x [2, 256])."""
    rng = np.random.default_rng(seed)
    indptr, indices, values, shape = kernels.csr_from_dense(_csr_weight(rng))
    p = kernels.pack_csr(indptr, indices, values, shape, form=form)
    return rng, (indptr, indices, values), p, rng.standard_normal((2, 256)).astype(np.float32)


def _nm_weight(rng, out_f=16, in_f=64):
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    w.reshape(out_f, in_f // 4, 4)[..., 2:] = 0
    return w


def _refused(obj, name, value):
    with pytest.raises(AttributeError, match=rf"^{type(obj).__name__}\.{name}: attributes are fixed"):
        setattr(obj, name, value)
    with pytest.raises(AttributeError, match=rf"^{type(obj).__name__}\.{name}: attributes are fixed"):
        delattr(obj, name)


@pytest.mark.parametrize("form", ["rows", "blockmask", "sell"])
def test_sparse_packed_csr_refuses_attribute_reassignment(form):
    rng = np.random.default_rng(0)
    W = _csr_weight(rng, density=0.6 if form == "blockmask" else 0.1)
    p = kernels.pack_csr(*kernels.csr_from_dense(W), rng.standard_normal(64).astype(np.float32), form=form)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    wants = {}
    for backend, isa in C_VARIANTS:
        with kernels.use(backend, isa=isa):
            wants[isa] = kernels.spmm_csr(x, p), kernels.spmm_csr(x[:1], p)
    for name, value in [("out_features", 4096), ("in_features", 512), ("shape", (4096, 512)), ("nnz", 10**6),
                        ("values", np.zeros(p.nnz, np.float16)), ("bias", np.zeros(1, np.float32)),
                        ("indptr", np.zeros(2, np.int64)), ("indices", np.zeros(1, np.uint8)),
                        ("_indptr", np.zeros(2, np.int64)), ("_c_args", None), ("form", "rows"),
                        ("_sell_c", None), ("source_values", None), ("new_attribute", 1)]:
        _refused(p, name, value)
    with pytest.raises(AttributeError, match="with_values"):
        p.values = p.values.copy()
    for backend, isa in C_VARIANTS:
        with kernels.use(backend, isa=isa):
            for _ in range(2):  # (the panel workspace is kept between calls)
                assert_exact(kernels.spmm_csr(x, p), wants[isa][0])
                assert_exact(kernels.spmm_csr(x[:1], p), wants[isa][1])


def test_sparse_packed_csr_documented_operations_still_work():
    rng, (indptr, indices, values), p, x = _packed_csr(1, "rows")
    y = kernels.spmm_csr(x, p)
    values *= 2  # the rows form holds the values: an in-place change is seen
    assert_exact(kernels.spmm_csr(x, p), 2 * y)
    b = rng.standard_normal(64).astype(np.float32)
    q = p.with_values(values / 2, bias=b)
    assert_exact(kernels.spmm_csr(x, q), kernels.spmm_csr(x, indptr, indices, values / 2, b))
    _refused(q, "values", values)
    for c in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert_exact(kernels.spmm_csr(x, c), kernels.spmm_csr(x, q))
        _refused(c, "out_features", 1)


def test_sparse_packed_nm_refuses_attribute_reassignment():
    rng = np.random.default_rng(2)
    vals, ind, n, m = kernels.nm_from_dense(_nm_weight(rng), 2, 4)
    p = kernels.pack_nm(vals, ind, n, m, rng.standard_normal(16).astype(np.float32))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    want = kernels.spmm_nm(x, p)
    for name, value in [("m", 2), ("n", 1), ("bias", np.zeros(1, np.float32)),
                        ("values", np.zeros(vals.shape, np.float16)), ("values", vals.copy()),
                        ("indices", p.indices.copy()), ("out_features", 99), ("in_features", 128),
                        ("source_indices", None)]:
        _refused(p, name, value)
    with pytest.raises(AttributeError, match="with_values"):
        p.values = vals.copy()
    assert_exact(kernels.spmm_nm(x, p), want)
    vals *= 2  # held: an in-place change is seen
    np.testing.assert_allclose(kernels.spmm_nm(x, p), 2 * (want - p.bias) + p.bias, rtol=1e-5, atol=1e-5)
    q = p.with_values(vals / 2, bias=None)
    assert q.bias is None and p.bias is not None
    _refused(q, "values", vals)
    np.testing.assert_allclose(kernels.spmm_nm(x, q), want - p.bias, rtol=1e-5, atol=1e-5)


def test_sparse_packed_nm_arrays_reshaped_in_place_are_refused():
    # an ndarray's shape and dtype can be set in place; the kernel must not derive its
    # sizes from a reshaped array
    rng = np.random.default_rng(3)
    vals, ind, n, m = kernels.nm_from_dense(_nm_weight(rng), 2, 4)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    for edit in ("values", "both", "dtype"):
        p = kernels.pack_nm(vals.copy(), ind, n, m)
        if edit in ("values", "both"):
            p.values.shape = (32, 16)
        if edit == "both":
            p.indices.shape = (32, 16)
        if edit == "dtype":
            p.values.dtype = np.float16
        with pytest.raises(ArgumentError, match="^values: a PackedNM whose arrays were reshaped"):
            kernels.spmm_nm(x, p)


def test_sparse_packed_nm_copies_come_from_the_packed_positions():
    rng = np.random.default_rng(4)
    W = _nm_weight(rng, 4, 8)
    vals, ind, n, m = kernels.nm_from_dense(W, 2, 4)
    p = kernels.pack_nm(vals, ind, n, m)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    want = kernels.spmm_nm(x, p)
    ind[:] = [2, 3, 2, 3]  # the caller's array reused for another (valid) structure
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert_exact(kernels.spmm_nm(x, q), want)
    ind[:, 1] = 9  # no longer a valid N:M array: copies still work
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert_exact(kernels.spmm_nm(x, q), want)


def test_sparse_sell_form_values_are_read_only():
    _, (indptr, indices, values), p, x = _packed_csr(5, "sell")
    with pytest.raises(ValueError, match="read-only"):
        p.values[:] *= 2
    with pytest.raises(ValueError):
        p.values.flags.writeable = True
    values *= 2  # the caller's array: the packed copy does not see it, at any batch
    y1, y2 = kernels.spmm_csr(x[:1], p), kernels.spmm_csr(x, p)
    np.testing.assert_allclose(y1, y2[:1], rtol=1e-5, atol=1e-5)  # the same (stale-free) values
    with kernels.use("numpy"):
        assert np.allclose(kernels.spmm_csr(x, p), y2, rtol=1e-5, atol=1e-5)
    q = p.with_values(values)  # the way to new values
    assert q.form == "sell" and not q.values.flags.writeable
    y1, y2 = kernels.spmm_csr(x[:1], q), kernels.spmm_csr(x, q)
    np.testing.assert_allclose(y1, y2[:1], rtol=1e-5, atol=1e-5)
    assert np.allclose(y2, kernels.spmm_csr(x, indptr, indices, values), rtol=1e-5, atol=1e-4)
    for c in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert c.form == "sell" and not c.values.flags.writeable
        assert_exact(kernels.spmm_csr(x, c), y2)


def test_lowrank_packed_refuses_attribute_reassignment():
    rng = np.random.default_rng(6)
    v = rng.standard_normal((8, 32)).astype(np.float32)
    u = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    p = kernels.pack_lowrank(v, u, b)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    want = kernels.lowrank_linear(x, p)
    for name, value in [("n", 4096), ("r", 999), ("m", 4096), ("v", v[:1].copy()), ("u", u[:1].copy()),
                        ("bias", np.zeros(1, np.float32)), ("_c_args", None), ("packed", None), ("empty", True)]:
        _refused(p, name, value)
    assert_exact(kernels.lowrank_linear(x, p), want)
    for c in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert_exact(kernels.lowrank_linear(x, c), want)
        _refused(c, "n", 1)


def test_lowrank_quantized_refuses_attribute_reassignment():
    rng = np.random.default_rng(7)
    v = rng.standard_normal((8, 32)).astype(np.float32)
    u = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    q = kernels.QuantizedLowRank.calibrate(v, u, b, x)
    want = kernels.lowrank_linear_q8(x, q)
    for name, value in [("n", 4096), ("r", 999), ("m", 4096), ("x_scale", np.float32(1)), ("x_zero_point", 7),
                        ("packed_v", None), ("bias_q", None), ("_c_args", None), ("_ws_last", (1, 0))]:
        _refused(q, name, value)
    for B in (1, 5, 1):  # the kept workspace size changes with the batch
        assert_exact(kernels.lowrank_linear_q8(x[:B], q), want[:B])
    for c in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert_exact(kernels.lowrank_linear_q8(x, c), want)
        _refused(c, "m", 1)
    if _native.lib is not None:  # the C state prepared lazily on a frozen object
        c = pickle.loads(pickle.dumps(q))
        object.__setattr__(c, "_c_args", None)
        with kernels.use("c"):
            assert_exact(kernels.lowrank_linear_q8(x, c), want)
        assert c._c_args is not None
