"""spmm_csr / spmm_nm: every backend and ISA variant, 1 and 2 threads, element by element
within the documented float bound of the exact product; storage round trips; bad input."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.kernels import sparse as S
from refcompress.testing import (
    assert_exact,
    assert_within_error_bound,
    check_spmm_csr,
    check_spmm_nm,
    kernel_variants,
    spmm_csr_error_bound,
    spmm_nm_error_bound,
)
from refcompress.testing.sparse import csr_cases, spmm_csr_exact, spmm_nm_exact

CSR_VARIANTS = kernel_variants("spmm_csr")
NM_VARIANTS = kernel_variants("spmm_nm")
# The reference ignores the thread count: run it once, every C variant on 1 and 2 threads.
CSR_RUNS = [(b, i, t) for b, i in CSR_VARIANTS for t in ((1,) if b == "numpy" else (1, 2))]
NM_RUNS = [(b, i, t) for b, i in NM_VARIANTS for t in ((1,) if b == "numpy" else (1, 2))]


def _id(run):
    b, i, t = run
    return f"{b}-{i}-t{t}" if i else b


def _forced(fn, backend, isa, threads):
    def run(*args, **kwargs):
        with kernels.use(backend, isa=isa, threads=threads):
            return fn(*args, **kwargs)
    return run


@pytest.mark.parametrize("run", CSR_RUNS, ids=[_id(r) for r in CSR_RUNS])
def test_spmm_csr_within_bound_of_exact(run):
    check_spmm_csr(_forced(kernels.spmm_csr, *run), max_examples=60)


@pytest.mark.parametrize("run", NM_RUNS, ids=[_id(r) for r in NM_RUNS])
def test_spmm_nm_within_bound_of_exact(run):
    check_spmm_nm(_forced(kernels.spmm_nm, *run), max_examples=50)


def _random_csr(rng, out_f, in_f, sparsity, index_dtype=None):
    W = (rng.standard_normal((out_f, in_f)) * (rng.random((out_f, in_f)) >= sparsity)).astype(np.float32)
    return W, kernels.csr_from_dense(W, index_dtype=index_dtype)


@pytest.mark.parametrize("backend,isa", CSR_VARIANTS, ids=[f"{b}-{i}" if i else b for b, i in CSR_VARIANTS])
@pytest.mark.parametrize("batch", [1, 2, 17, 64, 65, 200])
def test_large_layers_split_over_threads_identically(backend, isa, batch):
    # Big enough to cross the parallel threshold; rows are 0..~all nonzero so that the
    # nonzero-balanced split cuts through uneven rows.  A row is computed by exactly one
    # thread with the same code whatever the split, so 1 and 2 threads agree bit for bit.
    rng = np.random.default_rng(batch)
    out_f, in_f = 613, 389
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    W[rng.random((out_f, in_f)) < np.linspace(0, 1, out_f)[:, None]] = 0
    c = kernels.csr_from_dense(W)
    x = rng.standard_normal((batch, in_f)).astype(np.float32)
    b = rng.standard_normal(out_f).astype(np.float32)
    with kernels.use(backend, isa=isa, threads=1):
        y1 = kernels.spmm_csr(x, *c[:3], b)
    with kernels.use(backend, isa=isa, threads=2):
        y2 = kernels.spmm_csr(x, *c[:3], b)
    np.testing.assert_array_equal(y1.view(np.uint32), y2.view(np.uint32))
    assert_within_error_bound(y1, spmm_csr_exact(x, *c[:3], b), spmm_csr_error_bound(x, *c[:3], b))

    nm = kernels.nm_from_dense(_prune_2_4(W[:, :388]), 2, 4)
    with kernels.use(backend, isa=isa, threads=1):
        z1 = kernels.spmm_nm(x[:, :388], *nm, bias=b)
    with kernels.use(backend, isa=isa, threads=2):
        z2 = kernels.spmm_nm(x[:, :388], *nm, bias=b)
    np.testing.assert_array_equal(z1.view(np.uint32), z2.view(np.uint32))
    assert_within_error_bound(z1, spmm_nm_exact(x[:, :388], *nm, b), spmm_nm_error_bound(x[:, :388], *nm, b))


def _prune_2_4(W):
    """Keep the 2 largest |w| of every group of 4 (a valid 2:4 weight)."""
    g = W.reshape(W.shape[0], -1, 4)
    drop = np.argsort(np.abs(g), axis=-1)[..., :2]
    g = g.copy()
    np.put_along_axis(g, drop, 0.0, axis=-1)
    return g.reshape(W.shape)


@pytest.mark.parametrize("backend,isa", CSR_VARIANTS, ids=[f"{b}-{i}" if i else b for b, i in CSR_VARIANTS])
def test_special_weights_give_exact_answers(backend, isa):
    # All-zero weights: y is the bias exactly (or 0); empty rows likewise.  Integer-valued
    # fully dense weights and inputs: every partial sum is an exact float32 integer.
    rng = np.random.default_rng(3)
    x = rng.integers(-4, 5, (33, 40)).astype(np.float32)
    b = rng.integers(-9, 10, 17).astype(np.float32)
    zero = kernels.csr_from_dense(np.zeros((17, 40), np.float32))
    dense_w = rng.integers(-4, 5, (17, 40)).astype(np.float32)
    dense_w[dense_w == 0] = 1
    dense = kernels.csr_from_dense(dense_w)
    with kernels.use(backend, isa=isa):
        for batch in (1, 33):
            np.testing.assert_array_equal(kernels.spmm_csr(x[:batch], *zero[:3], b), np.broadcast_to(b, (batch, 17)))
            np.testing.assert_array_equal(kernels.spmm_csr(x[:batch], *zero[:3]), np.zeros((batch, 17), np.float32))
            np.testing.assert_array_equal(kernels.spmm_csr(x[:batch], *dense[:3], b), x[:batch] @ dense_w.T + b)
        assert dense.values.size == 17 * 40


def test_leading_dimensions_follow_linear():
    rng = np.random.default_rng(1)
    W, c = _random_csr(rng, 9, 12, 0.5)
    x = rng.standard_normal((2, 3, 12)).astype(np.float32)
    y = kernels.spmm_csr(x, *c[:3])
    assert y.shape == (2, 3, 9)
    np.testing.assert_array_equal(y.reshape(6, 9), kernels.spmm_csr(x.reshape(6, 12), *c[:3]))
    assert kernels.spmm_csr(x[0, 0], *c[:3]).shape == (9,)
    assert kernels.spmm_csr(np.zeros((0, 12), np.float32), *c[:3]).shape == (0, 9)
    nm = kernels.nm_from_dense(_prune_2_4(W), 2, 4)
    assert kernels.spmm_nm(x, *nm).shape == (2, 3, 9)


def test_reference_is_the_definition_written_out():
    # y[b, i] = b_i + sum over stored (j, w) of w * x[b, j], as a plain loop in float64.
    rng = np.random.default_rng(5)
    W, c = _random_csr(rng, 7, 11, 0.6)
    x = rng.standard_normal((3, 11)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    want = np.zeros((3, 7))
    for i in range(7):
        for p in range(c.indptr[i], c.indptr[i + 1]):
            want[:, i] += np.float64(c.values[p]) * x[:, c.indices[p]]
    want += b
    bound = spmm_csr_error_bound(x, *c[:3], b)
    with kernels.use("numpy"):
        assert_within_error_bound(kernels.spmm_csr(x, *c[:3], b), want, bound)
    nm = kernels.nm_from_dense(_prune_2_4(W[:, :8]), 2, 4)
    cols = S.nm_columns(nm.indices, 2, 4)
    want_nm = np.einsum("bik,ik->bi", x[:, :8].astype(np.float64)[:, cols], nm.values.astype(np.float64))
    with kernels.use("numpy"):
        got = kernels.spmm_nm(x[:, :8], *nm)
    assert_within_error_bound(got, want_nm, spmm_nm_error_bound(x[:, :8], *nm))


def test_tolerance_is_recorded_and_derived():
    for name in ("spmm_csr", "spmm_nm"):
        op = kernels.ops()[name]
        assert op.tolerance == 2.0**-24
        assert "gamma_k" in op.tolerance_doc and "nnz(row i) + 1" in op.tolerance_doc
        assert callable(op.extra["error_bound"])
    # gamma_k = k u / (1 - k u), and the bound of a single product of exact powers of two.
    np.testing.assert_allclose(S.gamma(3), 3 * 2.0**-24 / (1 - 3 * 2.0**-24), rtol=1e-15)
    x = np.array([[2.0]], np.float32)
    bound = spmm_csr_error_bound(x, np.array([0, 1]), np.array([0], np.uint8), np.array([4.0], np.float32))
    assert bound.shape == (1, 1) and 8 * S.gamma(2) <= bound[0, 0] < 8 * S.gamma(2) * 1.001 + 4 * 2.0**-149
    with pytest.raises(ArgumentError, match="k"):
        S.gamma(2**24)


# ---- storage formats ---------------------------------------------------------------------------


@given(case=csr_cases(max_batch=1))
def test_csr_round_trip(case):
    W = csr_to_dense_case = kernels.csr_to_dense(case.indptr, case.indices, case.values, case.shape)
    c = kernels.csr_from_dense(W)
    assert c.indices.dtype == S.index_dtype_for(case.shape[1])
    assert c.indptr.dtype == np.int64 and c.shape == case.shape
    np.testing.assert_array_equal(kernels.csr_to_dense(*c), csr_to_dense_case)
    assert np.all(c.values != 0)  # stored zeros of the case are dropped, nothing else
    assert c.values.size == np.count_nonzero(W)
    for r in range(case.shape[0]):  # sorted within each row
        assert np.all(np.diff(c.indices[c.indptr[r]:c.indptr[r + 1]].astype(np.int64)) > 0)


def test_index_dtype_by_size_and_override():
    assert S.index_dtype_for(256) == np.uint8
    assert S.index_dtype_for(257) == np.uint16
    assert S.index_dtype_for(65536) == np.uint16
    assert S.index_dtype_for(65537) == np.int32
    W = np.eye(3, 300, dtype=np.float32)
    assert kernels.csr_from_dense(W).indices.dtype == np.uint16
    assert kernels.csr_from_dense(W, index_dtype=np.int32).indices.dtype == np.int32
    with pytest.raises(ArgumentError, match="index_dtype: uint8 cannot hold column 299"):
        kernels.csr_from_dense(W, index_dtype=np.uint8)
    with pytest.raises(DTypeError, match="index_dtype"):
        kernels.csr_from_dense(W, index_dtype=np.int64)


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (2, 8), (4, 8), (1, 2), (3, 5), (4, 4)])
def test_nm_round_trip(n, m):
    rng = np.random.default_rng(n * 10 + m)
    W = rng.standard_normal((13, 6 * m)).astype(np.float32)
    g = W.reshape(13, 6, m)
    keep = rng.integers(0, n + 1, size=(13, 6))  # 0..n nonzeros per group
    order = np.argsort(rng.random((13, 6, m)), axis=-1)
    g[np.argsort(order, axis=-1) >= keep[..., None]] = 0
    nm = kernels.nm_from_dense(W, n, m)
    assert nm.values.shape == nm.indices.shape == (13, 6 * n) and nm.indices.dtype == np.uint8
    np.testing.assert_array_equal(kernels.nm_to_dense(*nm), W)
    pos = nm.indices.reshape(13, 6, n).astype(int)
    assert np.all(np.diff(pos, axis=-1) > 0) and pos.max() < m


# ---- bad input -----------------------------------------------------------------------------------


def _good():
    W = np.array([[0, 1.5, 0, 2], [0, 0, 0, 0], [3, 0, 4, 0]], np.float32)
    c = kernels.csr_from_dense(W)
    return np.ones((2, 4), np.float32), c.indptr.copy(), c.indices.copy(), c.values.copy()


@pytest.mark.parametrize("use_c", [True, False], ids=["c-check", "numpy-check"])
def test_bad_csr_structure_names_the_argument(use_c, monkeypatch):
    if not use_c:
        monkeypatch.setattr(S._native, "lib", None)  # the NumPy twin of rc_csr_check
    x, indptr, indices, values = _good()  # rows: [1, 3], [], [0, 2]
    cases = [
        (dict(indices=np.array([3, 1, 0, 2], np.uint8)), r"indices: expected strictly increasing.*indices\[1\] = 1 after 3 in row 0"),
        (dict(indices=np.array([1, 1, 0, 2], np.uint8)), r"indices: .*no duplicates.*indices\[1\] = 1 after 1"),
        (dict(indices=np.array([1, 3, 0, 4], np.uint8)), r"indices: expected columns in \[0, in_features = 4\), got indices\[3\] = 4 in row 2"),
        (dict(indices=np.array([1, 3, -1, 2], np.int32)), r"indices: expected columns in \[0, in_features = 4\), got indices\[2\] = -1"),
        (dict(indptr=np.array([1, 2, 2, 4])), r"indptr: expected indptr\[0\] == 0, got 1"),
        (dict(indptr=np.array([0, 3, 2, 4])), r"indptr: expected non-decreasing values, got indptr\[2\] = 2 < indptr\[1\] = 3"),
        (dict(indptr=np.array([0, 2, 2, 3])), r"indptr: expected indptr\[-1\] == nnz = len\(indices\) = 4, got 3"),
    ]
    for change, msg in cases:
        args = dict(indptr=indptr, indices=indices, values=values) | change
        with pytest.raises(ArgumentError, match=msg):
            kernels.spmm_csr(x, args["indptr"], args["indices"], args["values"])


def test_bad_csr_shapes_and_dtypes_name_the_argument():
    x, indptr, indices, values = _good()
    with pytest.raises(ShapeError, match=r"indptr: expected length out_features \+ 1 = 4, got 3"):
        kernels.spmm_csr(x, indptr[:-1], indices, values, out_features=3)
    with pytest.raises(ShapeError, match="indptr: expected length out_features"):
        kernels.spmm_csr(x, np.zeros(0, np.int64), indices[:0], values[:0])
    with pytest.raises(ShapeError, match=r"x: expected last dimension in_features = 5"):
        kernels.spmm_csr(x, indptr, indices, values, in_features=5)
    with pytest.raises(ShapeError, match=r"values: expected shape \(nnz,\)"):
        kernels.spmm_csr(x, indptr, indices, values[:3])
    with pytest.raises(DTypeError, match="x: expected dtype float32, got float64"):
        kernels.spmm_csr(x.astype(np.float64), indptr, indices, values)
    with pytest.raises(DTypeError, match="indices: expected dtype uint8, uint16, int32, got int64"):
        kernels.spmm_csr(x, indptr, indices.astype(np.int64), values)
    with pytest.raises(DTypeError, match="values: expected dtype float32"):
        kernels.spmm_csr(x, indptr, indices, values.astype(np.float16))
    with pytest.raises(DTypeError, match="indptr: expected dtype int32, int64, got uint32"):
        kernels.spmm_csr(x, indptr.astype(np.uint32), indices, values)
    with pytest.raises(DTypeError, match="bias: expected dtype float32"):
        kernels.spmm_csr(x, indptr, indices, values, np.zeros(3))
    with pytest.raises(ShapeError, match=r"bias: expected shape \(3\)"):
        kernels.spmm_csr(x, indptr, indices, values, np.zeros(4, np.float32))
    with pytest.raises(ShapeError, match="shape: expected a tuple"):
        kernels.csr_to_dense(indptr, indices, values, 4)
    with pytest.raises(DTypeError, match="W: expected dtype float32"):
        kernels.csr_from_dense(np.eye(3))


@pytest.mark.parametrize("use_c", [True, False], ids=["c-check", "numpy-check"])
def test_bad_nm_input_names_the_argument(use_c, monkeypatch):
    if not use_c:
        monkeypatch.setattr(S._native, "lib", None)
    W = np.array([[1, 0, 2, 0, 0, 0, 0, 3]], np.float32)
    nm = kernels.nm_from_dense(W, 2, 4)
    x = np.ones((1, 8), np.float32)
    with pytest.raises(ArgumentError, match=r"n, m: expected n <= m, got n = 5 > m = 4"):
        kernels.nm_from_dense(W, 5, 4)
    with pytest.raises(ShapeError, match=r"W: expected in_features \(W.shape\[1\]\) divisible by m = 3, got 8"):
        kernels.nm_from_dense(W, 1, 3)
    with pytest.raises(ArgumentError, match=r"W: row 0, columns \[0, 4\) hold 2 nonzeros; a 1:4 pattern"):
        kernels.nm_from_dense(W, 1, 4)
    bad = nm.indices.copy()
    bad[0, :2] = [2, 0]
    with pytest.raises(ArgumentError, match=r"indices: expected increasing positions.*indices\[0, 1\] = 0 after 2"):
        kernels.spmm_nm(x, nm.values, bad, 2, 4)
    bad[0, :2] = [1, 1]
    with pytest.raises(ArgumentError, match=r"indices\[0, 1\] = 1 after 1"):
        kernels.spmm_nm(x, nm.values, bad, 2, 4)
    bad[0, :2] = [0, 4]
    with pytest.raises(ArgumentError, match=r"indices: expected positions in \[0, m = 4\), got indices\[0, 1\] = 4"):
        kernels.spmm_nm(x, nm.values, bad, 2, 4)
    with pytest.raises(ShapeError, match="x: expected last dimension in_features = 8"):
        kernels.spmm_nm(np.ones((1, 7), np.float32), *nm)
    with pytest.raises(ShapeError, match="values: expected a row length .* multiple of n = 3"):
        kernels.spmm_nm(x, nm.values, nm.indices, 3, 4)
    with pytest.raises(ShapeError, match="indices: expected the shape of values"):
        kernels.spmm_nm(x, nm.values, nm.indices[:, :2], 2, 4)
    with pytest.raises(DTypeError, match="indices: expected dtype uint8"):
        kernels.spmm_nm(x, nm.values, nm.indices.astype(np.int32), 2, 4)
    with pytest.raises(ArgumentError, match="m: expected an integer in"):
        kernels.spmm_nm(x, nm.values, nm.indices, 2, 300)


@given(case=csr_cases(max_batch=1, max_features=64), data=st.data())
def test_c_and_numpy_structure_checks_agree(case, data):
    # Corrupt one entry (or none) and ask both checks for the first offending position.
    indptr, indices = case.indptr.copy(), case.indices.astype(np.int32)
    what = data.draw(st.sampled_from(["none", "index", "indptr"]))
    if what == "index" and indices.size:
        indices[data.draw(st.integers(0, indices.size - 1))] = data.draw(st.integers(-2, case.shape[1] + 2))
    elif what == "indptr":
        indptr[data.draw(st.integers(0, indptr.size - 1))] += data.draw(st.sampled_from([-1, 1]))
    if S._native.lib is None:
        pytest.skip("C extension not built")
    assert S._csr_structure(indptr, indices, case.shape[1], use_c=True) == \
        S._csr_structure(indptr, indices, case.shape[1], use_c=False)


# ---- the checker catches wrong kernels -----------------------------------------------------------


def test_checker_catches_a_kernel_that_drops_the_last_entry_of_each_row():
    def wrong(x, indptr, indices, values, bias=None):
        v = values.copy()
        ends = indptr[1:][np.diff(indptr) > 0] - 1
        v[ends] = 0  # the classic off-by-one: the loop stops one entry early
        with kernels.use("numpy"):
            return kernels.spmm_csr(x, indptr, indices, v, bias)

    with pytest.raises(AssertionError, match="outside the error bound"):
        check_spmm_csr(wrong, max_examples=200)


def test_checker_catches_an_nm_kernel_that_misplaces_groups():
    def wrong(x, values, indices, n, m, bias=None):
        # reads position p of every group from group 0's columns: (p % n) instead of (p // n) * m
        cols = np.asarray(indices, np.int64) + 0 * np.arange(indices.shape[1])
        y = np.einsum("bik,ik->bi", np.ascontiguousarray(x)[:, cols], values)
        return (y if bias is None else y + bias).astype(np.float32)

    with pytest.raises(AssertionError):
        check_spmm_nm(wrong, max_examples=200)


# ---- packed CSR: pack_csr once, spmm_csr(x, packed) many times ----------------------------------

FORMS = [("rows", "off"), ("rows", "on"), ("blockmask", "off"), ("blockmask", "auto"), ("sell", "off")]
# The reference ignores the layout: once; every C variant with every forced layout, 1 and 2 threads.
PACKED_RUNS = [(b, i, t, f, cb) for b, i, t in CSR_RUNS for f, cb in (FORMS[:1] if b == "numpy" else FORMS)]


def _packed_fn(backend, isa, threads, form, colblock):
    def run(x, indptr, indices, values, bias=None):
        with kernels.use(backend, isa=isa, threads=threads):
            p = kernels.pack_csr(indptr, indices, values, (indptr.shape[0] - 1, x.shape[-1]), bias,
                                 form=form, colblock=colblock)
            assert (p.form, p.colblock) == (form, colblock)
            return kernels.spmm_csr(x, p)
    return run


@pytest.mark.parametrize("run", PACKED_RUNS, ids=[f"{_id(r[:3])}-{r[3]}-cb_{r[4]}" for r in PACKED_RUNS])
def test_packed_spmm_csr_within_bound_of_exact(run):
    # Every form on every variant: the block-mask batch-1 form and the column-blocked panels
    # forced on (slices of 128 columns: in_features up to 257 crosses two slice edges).
    check_spmm_csr(_packed_fn(*run), max_examples=30)


@pytest.mark.parametrize("backend,isa", CSR_VARIANTS, ids=[f"{b}-{i}" if i else b for b, i in CSR_VARIANTS])
@pytest.mark.parametrize("form,colblock", FORMS, ids=[f"{f}-cb_{c}" for f, c in FORMS])
def test_packed_forms_on_shapes_that_break_tiling(backend, isa, form, colblock):
    # Past the hypothesis sizes: several 128-column slices with a ragged last one, 16-column
    # blocks with a ragged last one, rows in 32-row tiles with a ragged last one, batches
    # around the 64-lane panel; empty rows, all-zero and fully dense rows in one weight.
    rng = np.random.default_rng(11)
    out_f, in_f = 83, 389
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    W[rng.random((out_f, in_f)) < np.linspace(0, 1, out_f)[:, None]] = 0
    W[5] = 0
    W[7] = rng.standard_normal(in_f).astype(np.float32) + 8
    c = kernels.csr_from_dense(W)
    b = rng.standard_normal(out_f).astype(np.float32)
    with kernels.use(backend, isa=isa):
        p = kernels.pack_csr(*c, bias=b, form=form, colblock=colblock)
        for batch in (1, 2, 63, 64, 65, 130):
            x = rng.standard_normal((batch, in_f)).astype(np.float32)
            assert_within_error_bound(kernels.spmm_csr(x, p), spmm_csr_exact(x, *c[:3], b),
                                      spmm_csr_error_bound(x, *c[:3], b))


@pytest.mark.parametrize("backend,isa", CSR_VARIANTS, ids=[f"{b}-{i}" if i else b for b, i in CSR_VARIANTS])
@pytest.mark.parametrize("form,colblock", FORMS, ids=[f"{f}-cb_{c}" for f, c in FORMS])
@pytest.mark.parametrize("batch", [1, 64, 130])
def test_packed_forms_split_over_threads_identically(backend, isa, form, colblock, batch):
    # Large enough for two threads at batch 1 too (> 16k entries); a row is computed by one
    # thread with the same code whatever the split, so 1 and 2 threads agree bit for bit.
    rng = np.random.default_rng(batch)
    out_f, in_f = 301, 389
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    W[rng.random((out_f, in_f)) < np.linspace(0, 0.95, out_f)[:, None]] = 0
    c = kernels.csr_from_dense(W)
    x = rng.standard_normal((batch, in_f)).astype(np.float32)
    p = kernels.pack_csr(*c, form=form, colblock=colblock)
    with kernels.use(backend, isa=isa, threads=1):
        y1 = kernels.spmm_csr(x, p)
    with kernels.use(backend, isa=isa, threads=2):
        y2 = kernels.spmm_csr(x, p)
    np.testing.assert_array_equal(y1.view(np.uint32), y2.view(np.uint32))
    assert_within_error_bound(y1, spmm_csr_exact(x, *c[:3]), spmm_csr_error_bound(x, *c[:3]))


def test_pack_csr_auto_picks_the_form_by_density():
    rng = np.random.default_rng(2)
    sparse_w, mid_w, dense_w = (_random_csr(rng, 40, 70, s)[1] for s in (0.9, 0.6, 0.2))
    for isa in kernels.variants("spmm_csr"):  # only AVX-512 has the vector kernels of both extra forms
        with kernels.use("c", isa=isa):
            assert kernels.pack_csr(*sparse_w).form == ("sell" if isa == "avx512" else "rows")
            assert kernels.pack_csr(*mid_w).form == "rows"  # density 0.4: between the two
    with kernels.use("numpy"):
        assert kernels.pack_csr(*sparse_w).form == "rows"
    with kernels.use("c", isa="avx512") if "avx512" in kernels.variants("spmm_csr") else kernels.use("numpy"):
        want = "blockmask" if kernels.selected_variant("spmm_csr") == "avx512" else "rows"
        p = kernels.pack_csr(*dense_w)
    assert p.form == want
    assert (p.bmask is not None) == (want == "blockmask")
    if p.bmask is not None:  # bit j % 16 of block j // 16: exactly the stored columns
        bits = (p.bmask[:, :, None] >> np.arange(16, dtype=np.uint16)) & 1
        np.testing.assert_array_equal(bits.reshape(40, -1)[:, :70] != 0,
                                      kernels.csr_to_dense(*dense_w) != 0)


@pytest.mark.parametrize("backend,isa", CSR_VARIANTS, ids=[f"{b}-{i}" if i else b for b, i in CSR_VARIANTS])
def test_with_values_keeps_the_structure_and_swaps_values_and_bias(backend, isa):
    rng = np.random.default_rng(4)
    W, c = _random_csr(rng, 33, 50, 0.3)
    b = rng.standard_normal(33).astype(np.float32)
    x = rng.standard_normal((5, 50)).astype(np.float32)
    with kernels.use(backend, isa=isa):
        for form in ("rows", "blockmask", "sell"):
            p = kernels.pack_csr(*c, bias=b, form=form)
            v2 = rng.standard_normal(c.values.shape).astype(np.float32)
            q = p.with_values(v2)
            assert q.form == form and q.bias is b and q.indices is p.indices and q.source_values is v2
            assert (q.values is v2) == (form != "sell")  # the sell form holds a copy

            def fresh(values, bias):  # the same form packed from scratch: the same sums in the same order
                return kernels.pack_csr(c.indptr, c.indices, values, c.shape, bias, form=form)

            for xb in (x[:1], x):
                np.testing.assert_array_equal(kernels.spmm_csr(xb, q), kernels.spmm_csr(xb, fresh(v2, b)))
                np.testing.assert_array_equal(kernels.spmm_csr(xb, p), kernels.spmm_csr(xb, fresh(c.values, b)))
            assert q.with_values(v2, bias=None).bias is None
            np.testing.assert_array_equal(kernels.spmm_csr(x, q.with_values(v2, bias=None)),
                                          kernels.spmm_csr(x, fresh(v2, None)))
            v2 *= 2  # in place: seen by the next call without repacking ...
            if form == "sell":
                # ... except by the sell form, which holds copies: every batch, on every backend,
                # gives the values as packed (never a mix); with_values takes the new ones in.
                for xb in (x[:1], x):
                    np.testing.assert_array_equal(kernels.spmm_csr(xb, q), kernels.spmm_csr(xb, fresh(v2 / 2, b)))
                q = q.with_values(v2)
            for xb in (x[:1], x):
                np.testing.assert_array_equal(kernels.spmm_csr(xb, q), kernels.spmm_csr(xb, fresh(v2.copy(), b)))


def test_packed_csr_copies_and_pickles():
    import copy
    import pickle

    rng = np.random.default_rng(6)
    W, c = _random_csr(rng, 20, 30, 0.4)
    x = rng.standard_normal((3, 30)).astype(np.float32)
    p = kernels.pack_csr(*c, bias=np.ones(20, np.float32), form="blockmask", colblock="on")
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert (q.form, q.colblock, q.shape) == (p.form, p.colblock, p.shape)
        np.testing.assert_array_equal(kernels.spmm_csr(x, q), kernels.spmm_csr(x, p))
    assert "blockmask" in repr(p)


def test_packed_leading_dimensions_and_layouts():
    rng = np.random.default_rng(8)
    W, c = _random_csr(rng, 9, 12, 0.5)
    p = kernels.pack_csr(*c)
    x = rng.standard_normal((2, 3, 12)).astype(np.float32)
    np.testing.assert_array_equal(kernels.spmm_csr(x, p), kernels.spmm_csr(x, *c[:3]))
    np.testing.assert_array_equal(kernels.spmm_csr(np.asfortranarray(x[0]), p), kernels.spmm_csr(x[0], *c[:3]))
    assert kernels.spmm_csr(x[0, 0], p).shape == (9,)
    assert kernels.spmm_csr(np.zeros((0, 12), np.float32), p).shape == (0, 9)


def test_bad_packed_input_names_the_argument():
    rng = np.random.default_rng(9)
    W, c = _random_csr(rng, 6, 10, 0.5)
    p = kernels.pack_csr(*c)
    x = np.ones((2, 10), np.float32)
    with pytest.raises(ArgumentError, match="^form"):
        kernels.pack_csr(*c, form="dense")
    with pytest.raises(ArgumentError, match="^colblock"):
        kernels.pack_csr(*c, colblock=True)
    with pytest.raises(ShapeError, match="^shape"):
        kernels.pack_csr(*c[:3], [6, 10])
    with pytest.raises(ShapeError, match="^indptr"):
        kernels.pack_csr(*c[:3], (7, 10))
    bad = c.indices.copy()
    bad[1], bad[0] = bad[0], bad[1]
    with pytest.raises(ArgumentError, match="^indices"):
        kernels.pack_csr(c.indptr, bad, c.values, c.shape)
    with pytest.raises(ArgumentError, match="^indices"):
        kernels.pack_csr(*c[:3], (6, int(c.indices.max())))  # a column past in_features
    with pytest.raises(ShapeError, match="^bias"):
        kernels.pack_csr(*c, bias=np.ones(5, np.float32))
    with pytest.raises(ArgumentError, match="^indptr"):
        kernels.spmm_csr(x, p, c.indices)
    with pytest.raises(ArgumentError, match="^indptr"):
        kernels.spmm_csr(x, p, bias=np.ones(6, np.float32))
    with pytest.raises(ShapeError, match="^x"):
        kernels.spmm_csr(np.ones((2, 11), np.float32), p)
    with pytest.raises(DTypeError, match="^x"):
        kernels.spmm_csr(np.ones((2, 10)), p)
    with pytest.raises(ShapeError, match="^values"):
        p.with_values(np.ones(c.values.size + 1, np.float32))
    with pytest.raises(DTypeError, match="^values"):
        p.with_values(np.ones(c.values.size))
    with pytest.raises(ShapeError, match="^bias"):
        p.with_values(c.values, bias=np.ones(7, np.float32))
    with pytest.raises(ArgumentError, match="^indices, values"):
        kernels.spmm_csr(x, c.indptr)


# ---- the sliced-ELLPACK form: shapes that break slicing ------------------------------------------

#: Row lengths around the 16-lane step and the two-chain pairs: empty, 1, 15, 16, 17, 31-33, primes.
SELL_ROW_LENGTHS = (0, 1, 2, 3, 7, 13, 15, 16, 17, 31, 32, 33, 97)
SELL_RUNS = [(b, i, t) for b, i, t in CSR_RUNS if b != "numpy"]


@st.composite
def _ragged_csr(draw):
    """A CSR weight whose rows have chosen lengths (all alike, a few kinds, or every kind; some
    rows full or empty), columns often at the extremes 0 and in - 1; out around 16-row slices
    and 256-row sort windows."""
    out_f = draw(st.sampled_from([1, 2, 15, 16, 17, 31, 33, 255, 256, 257, 300]))
    in_f = draw(st.sampled_from([1, 2, 15, 16, 17, 97, 256, 257, 1031]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = draw(st.sampled_from(["one", "few", "all"]))
    pool = list(SELL_ROW_LENGTHS) + [in_f]
    if kinds == "one":
        pool = [draw(st.sampled_from(pool))]
    elif kinds == "few":
        pool = list(rng.choice(pool, size=3))
    lengths = np.minimum(rng.choice(pool, size=out_f), in_f)
    extremes = draw(st.booleans())
    W = np.zeros((out_f, in_f), np.float32)
    for i, n in enumerate(lengths):
        cols = rng.choice(in_f, size=n, replace=False)
        if extremes and n >= 2:
            cols[:2] = [0, in_f - 1] if in_f > 1 else [0, 0]
            cols = np.unique(cols)
        W[i, cols] = rng.standard_normal(cols.size).astype(np.float32) + 3  # never 0: stored
    batch = draw(st.sampled_from([1, 1, 2, 17]))
    x = rng.standard_normal((batch, in_f)).astype(np.float32)
    bias = rng.standard_normal(out_f).astype(np.float32) if draw(st.booleans()) else None
    index_dtype = draw(st.sampled_from([None, np.uint16, np.int32]))  # None: the narrowest (uint8 / uint16)
    return W, kernels.csr_from_dense(W, index_dtype=index_dtype), x, bias


@pytest.mark.parametrize("run", SELL_RUNS, ids=[_id(r) for r in SELL_RUNS])
@given(case=_ragged_csr())
def test_sell_form_within_bound_on_ragged_rows(run, case):
    W, c, x, bias = case
    with kernels.use(*run):
        p = kernels.pack_csr(*c, bias=bias, form="sell")
        y = kernels.spmm_csr(x, p)
    assert_within_error_bound(y, spmm_csr_exact(x, *c[:3], bias), spmm_csr_error_bound(x, *c[:3], bias))


@pytest.mark.parametrize("backend,isa", [v for v in CSR_VARIANTS if v[0] != "numpy"],
                         ids=[i for b, i in CSR_VARIANTS if b != "numpy"])
def test_sell_layout_and_non_finite_x_outside_the_stored_columns(backend, isa):
    # Lanes past a row's end hold column 0 and value 0: they must be masked off, not added as
    # 0 * x[0] (NaN when x[0] is inf).  Rows sorted by length inside 256-row windows, longest
    # first; the slice-ordered values are the CSR values in that order.
    rng = np.random.default_rng(12)
    out_f, in_f = 300, 70
    W = np.zeros((out_f, in_f), np.float32)
    lengths = rng.integers(0, in_f + 1, out_f)
    lengths[:20] = 0
    for i, n in enumerate(lengths):
        W[i, rng.choice(np.arange(1, in_f), size=min(n, in_f - 1), replace=False)] = rng.standard_normal(min(n, in_f - 1))
    W[7, 0] = 2.0  # only row 7 reads x[0]
    c = kernels.csr_from_dense(W)
    x = rng.standard_normal((1, in_f)).astype(np.float32)
    x[0, 0] = np.inf
    with kernels.use(backend, isa=isa):
        p = kernels.pack_csr(*c, form="sell")
        y = kernels.spmm_csr(x, p)
    assert np.isposinf(y[0, 7]) and np.all(np.isfinite(np.delete(y[0], 7)))
    x0 = x.copy()
    x0[0, 0] = 0
    exact = spmm_csr_exact(x0, *c[:3])
    keep = np.arange(out_f) != 7
    assert_within_error_bound(y[:, keep], exact[:, keep], spmm_csr_error_bound(x0, *c[:3])[:, keep])
    s = p._sell
    nrows = np.diff(c.indptr)
    for w0 in range(0, out_f, 256):  # each window: longest first, then by row; every row once
        rows = s["rows"][w0:min(w0 + 256, s["rows"].size)]
        rows = rows[rows >= 0]
        assert list(rows) == sorted(range(w0, min(w0 + 256, out_f)), key=lambda r: (-nrows[r], r))
    sl, lane = divmod(int(np.flatnonzero(s["rows"] == 7)[0]), 16)
    q = s["off"][sl] + 16 * np.arange(nrows[7]) + lane
    np.testing.assert_array_equal(p._sell_values[q], c.values[c.indptr[7]:c.indptr[8]])
    np.testing.assert_array_equal(s["indices"][q], c.indices[c.indptr[7]:c.indptr[8]])


@pytest.mark.parametrize("in_f", [65536, 65537])
def test_sell_form_index_width_at_the_uint16_limit(in_f):
    # Columns up to 65535 fit the form's uint16 indices; one more input and it keeps int32.
    rng = np.random.default_rng(in_f)
    W = np.zeros((19, in_f), np.float32)
    for i in range(19):
        W[i, rng.choice(in_f, size=i % 5 + 1, replace=False)] = rng.standard_normal(i % 5 + 1)
    W[3, in_f - 1] = W[4, 0] = 1.5
    c = kernels.csr_from_dense(W)
    x = rng.standard_normal((1, in_f)).astype(np.float32)
    for backend, isa in [v for v in CSR_VARIANTS if v[0] != "numpy"]:
        with kernels.use(backend, isa=isa):
            p = kernels.pack_csr(*c, form="sell")
            assert p._sell["indices"].dtype == (np.uint16 if in_f <= 65536 else np.int32)
            assert_within_error_bound(kernels.spmm_csr(x, p), spmm_csr_exact(x, *c[:3]),
                                      spmm_csr_error_bound(x, *c[:3]))


# ---- N:M: rows in the vector lanes (AVX-512, m dividing 16, batch >= 2) and column-blocked panels
# (AVX-512, other m, batch >= 16) ---------------------------------------------------------------


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (2, 8), (4, 8), (1, 2), (4, 16), (3, 5)])
@pytest.mark.parametrize("backend,isa", [v for v in NM_VARIANTS if v[0] != "numpy"],
                         ids=[i for b, i in NM_VARIANTS if b != "numpy"])
def test_nm_large_batches_on_shapes_that_break_row_blocks(n, m, backend, isa):
    # Row blocks of 16 with a ragged last one (out = 37), 16-column chunks with a ragged last
    # one (in = 37 m), batches on both sides of the switch from the batch-1 kernel to the
    # row-vectorised one (2) and of the column-blocked panels' (16, for 3:5), and every tail
    # after the row-vectorised kernel's 8-row passes (passes of 4, 2, 1: batches 2, 3, 5, 6, 15,
    # 129); groups with fewer than n nonzeros store explicit zeros.  1 and 2 threads agree bit
    # for bit (a row block is computed by one thread with the same code).
    rng = np.random.default_rng(10 * n + m)
    out_f, groups = 37, 37
    in_f = groups * m
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    g = W.reshape(out_f, groups, m)
    keep = rng.integers(0, n + 1, size=(out_f, groups))
    g[np.argsort(np.argsort(rng.random(g.shape), axis=-1), axis=-1) >= keep[..., None]] = 0
    nm = kernels.nm_from_dense(W, n, m)
    b = rng.standard_normal(out_f).astype(np.float32)
    for batch in (1, 2, 3, 5, 6, 15, 16, 33, 64, 127, 128, 129, 137):
        _check_nm_threads_and_bias(backend, isa, rng, nm, b, batch, in_f)


@pytest.mark.parametrize("backend,isa", [v for v in NM_VARIANTS if v[0] != "numpy"],
                         ids=[i for b, i in NM_VARIANTS if b != "numpy"])
def test_nm_small_batches_split_across_threads(backend, isa):
    # Large enough (96 x 1024, 2:4) that even batch 2 is cut between two threads (6 row blocks
    # of 16, 3 each): every batch tail of the row-vectorised kernel (passes of 4, 2, 1) with
    # each thread prefetching its own next block, and the last block of each thread with none.
    rng = np.random.default_rng(96)
    out_f, in_f = 96, 1024
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    g = W.reshape(out_f, -1, 4)
    np.put_along_axis(g, np.argsort(np.abs(g), axis=-1)[..., :2], 0.0, axis=-1)
    nm = kernels.nm_from_dense(W, 2, 4)
    b = rng.standard_normal(out_f).astype(np.float32)
    for batch in (2, 3, 5, 6, 7, 9, 15):
        _check_nm_threads_and_bias(backend, isa, rng, nm, b, batch, in_f)


def _check_nm_threads_and_bias(backend, isa, rng, nm, b, batch, in_f):
    x = rng.standard_normal((batch, in_f)).astype(np.float32)
    with kernels.use(backend, isa=isa, threads=1):
        y1 = kernels.spmm_nm(x, *nm, bias=b)
    with kernels.use(backend, isa=isa, threads=2):
        y2 = kernels.spmm_nm(x, *nm, bias=b)
    np.testing.assert_array_equal(y1.view(np.uint32), y2.view(np.uint32))
    assert_within_error_bound(y1, spmm_nm_exact(x, *nm, b), spmm_nm_error_bound(x, *nm, b))
    with kernels.use(backend, isa=isa, threads=1):
        y0 = kernels.spmm_nm(x, *nm)  # no bias
    assert_within_error_bound(y0, spmm_nm_exact(x, *nm), spmm_nm_error_bound(x, *nm))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 16), (8, 32), (2, 64), (3, 5)])
@pytest.mark.parametrize("backend,isa", [v for v in NM_VARIANTS if v[0] != "numpy"],
                         ids=[i for b, i in NM_VARIANTS if b != "numpy"])
def test_nm_column_blocked_panels_on_shapes_that_break_slices(n, m, backend, isa):
    # The column-blocked panels (AVX-512, m not dividing 16: 8:32, 2:64, 3:5) take each row's
    # entries slice by slice (128 columns): counted when m divides 128 (n / m * 128 per slice,
    # the last one cut by the row's end), found by a scan otherwise (3:5); for m dividing 16
    # the same shapes run the row-vectorised kernel.  Inputs one group below, at and above one
    # and two slices, rows around the 32-row tile and the 16-row store tile, batches around the
    # 16-, 32- and 64-lane panels with a narrower last panel; all-zero rows, and an all-zero
    # weight.
    rng = np.random.default_rng(100 * n + m)
    for out_f in (1, 31, 33):
        for in_f in sorted({m, 128 - 128 % m, 128 - 128 % m + m, 256 - 256 % m + m}):
            W = rng.standard_normal((out_f, in_f)).astype(np.float32)
            g = W.reshape(out_f, in_f // m, m)
            g[np.argsort(np.argsort(rng.random(g.shape), axis=-1), axis=-1) >= n] = 0
            W[out_f // 2] = 0
            for weight in (W, np.zeros_like(W)):
                nm = kernels.nm_from_dense(weight, n, m)
                b = rng.standard_normal(out_f).astype(np.float32)
                for batch in (16, 31, 65, 97):
                    _check_nm_threads_and_bias(backend, isa, rng, nm, b, batch, in_f)


@pytest.mark.parametrize("colblock", ["on", "off"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 16), (1, 16), (4, 4)])
@pytest.mark.parametrize("backend,isa", [v for v in NM_VARIANTS if v[0] != "numpy"],
                         ids=[i for b, i in NM_VARIANTS if b != "numpy"])
def test_nm_forced_panels_and_row_kernel_where_auto_takes_the_row_vectorised_one(n, m, backend, isa, colblock):
    # For m dividing 16, "auto" sends every batch >= 2 to the row-vectorised kernel on
    # AVX-512; the column-blocked panels and the plain row kernel stay reachable through the
    # C API's colblock, and must stay right: slices, tiles and panel edges as above.
    rng = np.random.default_rng(7 * n + m)
    saved = S.NM_COLBLOCK
    S.NM_COLBLOCK = colblock
    try:
        for out_f in (1, 33):
            for in_f in (m, 128 + m, 256 + m):
                W = rng.standard_normal((out_f, in_f)).astype(np.float32)
                g = W.reshape(out_f, in_f // m, m)
                g[np.argsort(np.argsort(rng.random(g.shape), axis=-1), axis=-1) >= n] = 0
                nm = kernels.nm_from_dense(W, n, m)
                b = rng.standard_normal(out_f).astype(np.float32)
                for batch in (2, 16, 65):
                    _check_nm_threads_and_bias(backend, isa, rng, nm, b, batch, in_f)
    finally:
        S.NM_COLBLOCK = saved


# Edges of AVX-512's 2:4 register-blocked panels (forced with NM_COLBLOCK "on"; "auto" from
# batch 64 to 255): rows in blocks of 2 / 4 / 8 (panels of 128 / 64 / 16-32 lanes) inside
# 16-row tiles whose sums are stored during the next tile; slices of 16 / 32 / 64 / 128 groups;
# positions read 4 groups at a time with a group-by-group tail.
_RB_ROWS = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 47]
_RB_GROUPS = [1, 3, 4, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129]
_RB_BATCHES = [2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 137, 255]


@given(data=st.data())
def test_nm_24_register_blocked_panels_on_shapes_that_break_their_blocks(data):
    variants = [v for v in NM_VARIANTS if v[0] != "numpy"]
    out_f = data.draw(st.sampled_from(_RB_ROWS), label="out_f")
    groups = data.draw(st.sampled_from(_RB_GROUPS), label="groups")
    batch = data.draw(st.sampled_from(_RB_BATCHES), label="batch")
    colblock = data.draw(st.sampled_from(["on", "auto"]), label="colblock")
    scale = data.draw(st.sampled_from([1.0, 2.0 ** 60, 2.0 ** -60]), label="scale")
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    in_f = 4 * groups
    W = (rng.standard_normal((out_f, in_f)) * scale).astype(np.float32)
    g = W.reshape(out_f, groups, 4)
    keep = rng.integers(0, 3, size=(out_f, groups))  # 0, 1 or 2 nonzeros: explicit zeros stored
    g[np.argsort(np.argsort(rng.random(g.shape), axis=-1), axis=-1) >= keep[..., None]] = 0
    W[rng.random(out_f) < 0.2] = 0  # empty rows
    nm = kernels.nm_from_dense(W, 2, 4)
    b = None if data.draw(st.booleans(), label="no bias") else rng.standard_normal(out_f).astype(np.float32)
    x = (rng.standard_normal((batch, in_f)) / scale).astype(np.float32)
    saved = S.NM_COLBLOCK
    S.NM_COLBLOCK = colblock
    try:
        for backend, isa in variants:
            with kernels.use(backend, isa=isa, threads=1):
                y1 = kernels.spmm_nm(x, *nm, bias=b)
            with kernels.use(backend, isa=isa, threads=2):
                y2 = kernels.spmm_nm(x, *nm, bias=b)
            np.testing.assert_array_equal(y1.view(np.uint32), y2.view(np.uint32), err_msg=isa)
            assert_within_error_bound(y1, spmm_nm_exact(x, *nm, b), spmm_nm_error_bound(x, *nm, b))
    finally:
        S.NM_COLBLOCK = saved


@pytest.mark.parametrize("backend,isa", [v for v in NM_VARIANTS if v[0] != "numpy"],
                         ids=[i for b, i in NM_VARIANTS if b != "numpy"])
@pytest.mark.parametrize("n,m", [(4, 4), (2, 4), (1, 16)])
def test_nm_small_batches_on_more_threads_than_the_workspace_holds(n, m, backend, isa):
    # The row-vectorised kernel gives each thread a whole row block of the workspace, sized
    # for the panels ((batch + 128) * in floats): at batch 2 with n = m only four fit, so more
    # threads must be capped, not overrun it.  Batches 2-7 and 12 (the 4-, 2- and 1-row
    # passes and a 4-row pass with nothing after it), 3, 4 and 7 threads, bit for bit
    # against one thread.
    rng = np.random.default_rng(n * 31 + m)
    out_f, in_f = 128, 1024
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    g = W.reshape(out_f, in_f // m, m)
    g[np.argsort(np.argsort(rng.random(g.shape), axis=-1), axis=-1) >= n] = 0
    nm = kernels.nm_from_dense(W, n, m)
    b = rng.standard_normal(out_f).astype(np.float32)
    for batch in (2, 3, 4, 5, 6, 7, 12):
        x = rng.standard_normal((batch, in_f)).astype(np.float32)
        with kernels.use(backend, isa=isa, threads=1):
            y1 = kernels.spmm_nm(x, *nm, bias=b)
        assert_within_error_bound(y1, spmm_nm_exact(x, *nm, b), spmm_nm_error_bound(x, *nm, b))
        for threads in (3, 4, 7):
            with kernels.use(backend, isa=isa, threads=threads):
                y = kernels.spmm_nm(x, *nm, bias=b)
            np.testing.assert_array_equal(y.view(np.uint32), y1.view(np.uint32), err_msg=f"B={batch} t={threads}")


@pytest.mark.parametrize("backend,isa", [v for v in CSR_VARIANTS if v[0] != "numpy"],
                         ids=[i for b, i in CSR_VARIANTS if b != "numpy"])
@pytest.mark.parametrize("in_f,index_dtype", [(200, None), (389, None), (300, np.int32)],
                         ids=["uint8", "uint16", "int32"])
def test_csr_column_blocked_slice_ends_for_every_index_type(backend, isa, in_f, index_dtype):
    # The AVX-512 column-blocked kernel finds a row's slice end 64 / 32 / 16 indices at a time
    # (uint8 / uint16 / int32: a compare and a count): rows with at most 16, exactly 32 and 128
    # entries in a slice (the step after a full one counts 0), a row ending on a multiple of
    # 16, a full row, empty rows, a row whose entries all lie in the second slice; every width.
    rng = np.random.default_rng(in_f)
    out_f = 40
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    W[rng.random((out_f, in_f)) < 0.6] = 0
    W[0] = 0
    W[1, 16:] = 0
    W[2, :128] = rng.standard_normal(128).astype(np.float32) + 8
    W[2, 128:] = 0
    W[3] = rng.standard_normal(in_f).astype(np.float32) + 8
    W[4, :] = 0
    W[4, 128:160] = 1.5
    W[5, :] = 0
    W[5, [0, 127, 128, in_f - 1]] = 2.0
    W[6, :] = 0
    W[6, 96:128] = -1.0
    c = kernels.csr_from_dense(W, index_dtype=index_dtype)
    b = rng.standard_normal(out_f).astype(np.float32)
    saved = S.CSR_TILES
    S.CSR_TILES = False  # the row tiles replace the slice-end search; this test is about the search
    try:
        p = kernels.pack_csr(*c, bias=b, form="rows", colblock="on")
    finally:
        S.CSR_TILES = saved
    assert p.tiles is None
    for batch in (2, 16, 64, 65):
        x = rng.standard_normal((batch, in_f)).astype(np.float32)
        with kernels.use(backend, isa=isa, threads=1):
            y1 = kernels.spmm_csr(x, p)
        with kernels.use(backend, isa=isa, threads=2):
            y2 = kernels.spmm_csr(x, p)
        np.testing.assert_array_equal(y1.view(np.uint32), y2.view(np.uint32))
        assert_within_error_bound(y1, spmm_csr_exact(x, *c[:3], b), spmm_csr_error_bound(x, *c[:3], b))


# Edges of AVX-512's CSR row tiles (pack_csr builds them; "auto" runs them from batch 64 at density
# >= 1/32, colblock "on" from batch 2): tiles of 64 rows, blocks of 4 rows sorted by their count
# in each slice (128 columns from density 1/8, 256 below: the densities drawn fall on both
# sides), phases of 4 / 3 / 2 / 1 rows as they run out, panels of 64 lanes with a narrower last
# one, a tile's sums stored during the next tile.
_TL_ROWS = [1, 3, 4, 5, 31, 33, 63, 64, 65, 100, 127, 129]
_TL_IN = [1, 7, 127, 128, 129, 200, 255, 256, 257, 300, 383, 385, 511, 513]
_TL_BATCHES = [1, 2, 15, 16, 17, 63, 64, 65, 100, 128, 129, 200]


@given(data=st.data())
def test_csr_row_tiles_on_shapes_that_break_them(data):
    variants = [v for v in CSR_VARIANTS if v[0] != "numpy"]
    out_f = data.draw(st.sampled_from(_TL_ROWS), label="out_f")
    in_f = data.draw(st.sampled_from(_TL_IN), label="in_f")
    batch = data.draw(st.sampled_from(_TL_BATCHES), label="batch")
    colblock = data.draw(st.sampled_from(["on", "auto"]), label="colblock")
    density = data.draw(st.sampled_from([0.0, 0.02, 0.05, 0.1, 0.5, 1.0]), label="density")
    index_dtype = data.draw(st.sampled_from([None, np.int32]), label="index_dtype")
    scale = data.draw(st.sampled_from([1.0, 2.0 ** 60, 2.0 ** -60]), label="scale")
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((out_f, in_f)) * scale).astype(np.float32)
    # rows of very different counts in one tile (sorted into blocks per slice), empty and full rows
    W[rng.random((out_f, in_f)) >= density * rng.uniform(0.2, 1.8, size=(out_f, 1))] = 0
    W[rng.random(out_f) < 0.15] = 0
    W[rng.random(out_f) < 0.1] = (rng.standard_normal(in_f) * scale).astype(np.float32)
    c = kernels.csr_from_dense(W, index_dtype=index_dtype)
    b = None if data.draw(st.booleans(), label="no bias") else rng.standard_normal(out_f).astype(np.float32)
    x = (rng.standard_normal((batch, in_f)) / scale).astype(np.float32)
    for backend, isa in variants:
        with kernels.use(backend, isa=isa):
            p = kernels.pack_csr(*c, bias=b, form="rows", colblock=colblock)
        # built only where a product can take them (AVX-512; "auto" from density 1/32)
        can_run = isa == "avx512" and (colblock == "on" or 32 * c.indices.size >= out_f * in_f)
        assert (p.tiles is not None) == can_run
        with kernels.use(backend, isa=isa, threads=1):
            y1 = kernels.spmm_csr(x, p)
        with kernels.use(backend, isa=isa, threads=2):
            y2 = kernels.spmm_csr(x, p)
        np.testing.assert_array_equal(y1.view(np.uint32), y2.view(np.uint32), err_msg=isa)
        assert_within_error_bound(y1, spmm_csr_exact(x, *c[:3], b), spmm_csr_error_bound(x, *c[:3], b))


_needs_c = pytest.mark.skipif(S._native.lib is None, reason="C extension not built")
_TL_BLK = np.dtype([("row", "<u2", 4), ("cnt", "<u2", 4), ("off", "<i4", 4)])
_TL_HEAD = np.dtype([("magic", "<u8"), ("out", "<i8"), ("in", "<i8"), ("nnz", "<i8"), ("cols", "<i8"),
                     ("reserved", "<i8", 3)])


def _tiles_build(indptr, indices, out_f, in_f, nnz, buf, *, indptr_bytes=None, index_type=None):
    lib, ptr = S._native.lib, S._native.ptr
    return lib.rc_csr_tiles_build(ptr("void *", indptr), indptr.itemsize if indptr_bytes is None else indptr_bytes,
                                  out_f, ptr("void *", indices),
                                  S.INDEX_DTYPES[indices.dtype] if index_type is None else index_type, in_f, nnz,
                                  S._native.ffi.NULL if buf is None else ptr("void *", buf))


def _tl_built(out_f, zeros, seed, in_f=300):
    """A random CSR [out_f, in_f] with the share `zeros` of zeros, an x [64, in_f], and the
    CSR's tile headers as built."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    W[rng.random(W.shape) < zeros] = 0
    c = kernels.csr_from_dense(W)
    x = rng.standard_normal((64, in_f)).astype(np.float32)
    buf = np.empty(S._native.lib.rc_csr_tiles_bytes(out_f, in_f), np.uint8)
    assert _tiles_build(c.indptr, c.indices, out_f, in_f, c.indices.size, buf) == 0
    return c, x, buf


def _spmm_tiles_call(c, x, out_f, tiles, *, in_f=None, indptr=None):
    """rc_spmm_csr_f32 of CSR c on x [64, in] with the given tile headers (colblock "on", one
    thread, the AVX-512 variant): its return code."""
    lib, ffi, ptr = S._native.lib, S._native.ffi, S._native.ptr
    in_f = x.shape[1] if in_f is None else in_f
    ip = c.indptr if indptr is None else indptr
    y = np.empty((x.shape[0], out_f), np.float32)
    ws = np.empty(lib.rc_spmm_workspace_size(x.shape[0], x.shape[1]), np.uint8)
    return lib.rc_spmm_csr_f32(ptr("float *", x), x.shape[0], in_f, out_f, ptr("void *", ip), ip.itemsize,
                               ptr("void *", c.indices), S.INDEX_DTYPES[c.indices.dtype], ptr("float *", c.values),
                               ffi.NULL, ffi.NULL, ptr("void *", tiles), 1, ptr("float *", y), ptr("void *", ws), 0, 1)


@_needs_c
@pytest.mark.parametrize("zeros, cols", [(0.8, 128), (0.9, 256)])
def test_csr_row_tiles_headers_and_their_refusals(zeros, cols):
    # The headers: the weight they were built for and the slice width its density picks, then
    # per tile and slice, blocks of 4 rows by count (largest first), their offsets from the
    # tile's first entry, padding rows past the last row as the scratch row 64 with count 0.
    rng = np.random.default_rng(3)
    TR = S.TILE_ROWS
    out_f, in_f = TR + 5, 300
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    W[rng.random((out_f, in_f)) < zeros] = 0
    c = kernels.csr_from_dense(W)
    assert (S.TILE_NARROW_DENSITY_INV * c.indices.size >= out_f * in_f) == (cols == S.TILE_COLS[0])
    with kernels.use("c", isa="avx512"):
        p = kernels.pack_csr(*c, colblock="on")
    assert not p.tiles.flags.writeable
    head = p.tiles[:_TL_HEAD.itemsize].view(_TL_HEAD)[0]
    assert (head["out"], head["in"], head["nnz"], head["cols"]) == (out_f, in_f, c.indices.size, cols)
    assert _TL_HEAD.itemsize == 64 and p.tiles.ctypes.data % 64 == 0 and not head["reserved"].any()
    ntl = -(-out_f // TR)  # after the blocks (sized for the narrow slices): indptr at each tile's start
    np.testing.assert_array_equal(p.tiles[-8 * ntl:].view("<i8"), c.indptr[::TR][:ntl])
    nsl = -(-in_f // cols)
    h = p.tiles[_TL_HEAD.itemsize:][:2 * nsl * TR // 4 * _TL_BLK.itemsize].view(_TL_BLK).reshape(2, nsl, TR // 4)
    for t in range(2):
        base = c.indptr[TR * t]
        for s in range(nsl):
            rows, cnts = h["row"][t, s].ravel(), h["cnt"][t, s].ravel()
            assert list(cnts) == sorted(cnts, reverse=True)
            n_rows = min(TR, out_f - TR * t)
            assert sorted(r for r in rows if r < TR) == list(range(n_rows))
            for r, k, off in zip(rows, cnts, h["off"][t, s].ravel()):
                if r == TR:
                    assert k == 0
                    continue
                i = TR * t + r
                cols_i = c.indices[c.indptr[i]:c.indptr[i + 1]]
                in_slice = np.flatnonzero((cols_i >= cols * s) & (cols_i < cols * (s + 1)))
                assert k == len(in_slice)
                if k:
                    assert off == c.indptr[i] + in_slice[0] - base


@_needs_c
def test_csr_row_tiles_builder_refuses_what_would_send_it_outside():
    # Unchecked input through the C API: every refusal is one the loop would otherwise turn
    # into a read past indices (bad indptr) or a wrong count / address (bad columns).
    lib = S._native.lib
    rng = np.random.default_rng(4)
    out_f, in_f = 37, 300
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    W[rng.random((out_f, in_f)) < 0.8] = 0
    c = kernels.csr_from_dense(W)
    nnz = c.indices.size
    buf = np.empty(lib.rc_csr_tiles_bytes(out_f, in_f), np.uint8)
    assert _tiles_build(c.indptr, c.indices, out_f, in_f, nnz, buf) == 0
    bad = c.indices.copy()
    bad[c.indptr[3]] = in_f  # out of range
    assert _tiles_build(c.indptr, bad, out_f, in_f, nnz, buf) != 0
    bad = c.indices.copy()
    i = np.flatnonzero(np.diff(c.indptr) >= 2)[0]
    bad[c.indptr[i]], bad[c.indptr[i] + 1] = bad[c.indptr[i] + 1], bad[c.indptr[i]]  # out of order
    assert _tiles_build(c.indptr, bad, out_f, in_f, nnz, buf) != 0
    assert _tiles_build(c.indptr, c.indices, out_f, in_f, nnz - 1, buf) != 0  # indptr[out] past nnz
    assert _tiles_build(c.indptr[:-1], c.indices, out_f - 1, in_f, nnz, buf) != 0  # truncated indptr
    assert _tiles_build(c.indptr, c.indices, out_f, in_f, nnz, None) != 0
    assert _tiles_build(c.indptr, c.indices, out_f, in_f, nnz, buf, indptr_bytes=2) != 0
    assert _tiles_build(c.indptr, c.indices, out_f, in_f, nnz, buf, index_type=99) != 0
    assert _tiles_build(c.indptr, c.indices, out_f, 2 ** 25, nnz, buf) != 0
    # the reviewer's indptr over 2 entries: a negative start, a row running past nnz
    two = np.array([0, 1], np.uint8)
    small = np.empty(lib.rc_csr_tiles_bytes(2, 256), np.uint8)
    for ip in ([-6, 2], [0, 50, 2]):
        ip = np.array(ip, np.int64)
        assert _tiles_build(ip, two, ip.size - 1, 256, 2, small) != 0
    assert _tiles_build(np.array([0, 2], np.int64), two, 1, 256, 2, small) == 0


@_needs_c
def test_csr_row_tiles_bytes_refuses_overflow_and_widths_the_builder_refuses():
    lib = S._native.lib
    assert lib.rc_csr_tiles_bytes(2 ** 40, 2 ** 40) == -1
    assert lib.rc_csr_tiles_bytes(2 ** 62, 256) == -1
    assert lib.rc_csr_tiles_bytes(1, 2 ** 25) == -1
    assert lib.rc_csr_tiles_bytes(-1, 1) == -1
    # sized for the narrow slices, whatever the density (the builder picks the width by nnz),
    # then each tile's first-entry position (int64)
    assert lib.rc_csr_tiles_bytes(1, 2 ** 25 - 1) == _TL_HEAD.itemsize + 2 ** 18 * 16 * _TL_BLK.itemsize + 8
    assert lib.rc_csr_tiles_bytes(65, 257) == _TL_HEAD.itemsize + 2 * 3 * 16 * _TL_BLK.itemsize + 2 * 8


@_needs_c
def test_csr_row_tiles_of_another_weight_are_refused():
    c, x, buf = _tl_built(40, 0.5, 5)
    assert _spmm_tiles_call(c, x, 40, buf) == 0
    assert _spmm_tiles_call(c, x, 40, buf, in_f=299) != 0
    for field, delta in (("magic", 1), ("out", 1), ("in", -1), ("nnz", -1), ("cols", 128)):
        other = buf.copy()
        other[:_TL_HEAD.itemsize].view(_TL_HEAD)[0][field] += delta
        assert _spmm_tiles_call(c, x, 40, other) != 0, field


@_needs_c
def test_csr_row_tiles_of_a_weight_with_the_same_shape_and_nnz_are_refused():
    # A review's case: the header names out, in and nnz only, and a block's offsets count
    # from its tile's first entry, which the kernel takes from the caller's indptr.  Weight A
    # has all its entries in the second tile (rows 64-127), B as many in the first: B's call
    # with A's tiles would have read entries nnz .. 2 nnz.  Every tile's first entry as built
    # is kept and compared, so it is refused, and so is an indptr edited at a tile start;
    # edits inside a tile stay within the tile's entries (run, not refused).
    lib = S._native.lib
    TR, in_f = S.TILE_ROWS, 256
    rng = np.random.default_rng(8)
    A = np.zeros((2 * TR, in_f), np.float32)
    A[TR:, :96] = rng.standard_normal((TR, 96))  # density 3/16: the narrow slices
    B = np.roll(A, -TR, axis=0)
    ca, cb = kernels.csr_from_dense(A), kernels.csr_from_dense(B)
    assert ca.indices.size == cb.indices.size and ca.indices.dtype == cb.indices.dtype
    x = rng.standard_normal((64, in_f)).astype(np.float32)

    def call(c, tiles, indptr=None):
        return _spmm_tiles_call(c, x, 2 * TR, tiles, indptr=indptr)
    ta, tb = (np.empty(lib.rc_csr_tiles_bytes(2 * TR, in_f), np.uint8) for _ in range(2))
    assert _tiles_build(ca.indptr, ca.indices, 2 * TR, in_f, ca.indices.size, ta) == 0
    assert _tiles_build(cb.indptr, cb.indices, 2 * TR, in_f, cb.indices.size, tb) == 0
    assert call(ca, ta) == 0 and call(cb, tb) == 0
    assert call(cb, ta) != 0 and call(ca, tb) != 0
    edited = ca.indptr.copy()
    edited[TR] += 1  # the second tile's start
    assert call(ca, ta, edited) != 0
    edited = ca.indptr.copy()
    edited[TR + 5] += 1  # inside the tile
    assert call(ca, ta, edited) == 0


@_needs_c
def test_csr_row_tiles_headers_claiming_another_width_are_refused():
    # Below density 1/8 the builder writes the wide slices' blocks only (half the buffer):
    # headers that claim the narrow width would send the kernel to blocks never written.
    c, x, buf = _tl_built(70, 0.9, 9)
    assert S.TILE_NARROW_DENSITY_INV * c.indices.size < 70 * 300
    assert buf[:_TL_HEAD.itemsize].view(_TL_HEAD)[0]["cols"] == S.TILE_COLS[1]
    for cols in (S.TILE_COLS[1], S.TILE_COLS[0], 0, -1):
        other = buf.copy()
        other[:_TL_HEAD.itemsize].view(_TL_HEAD)[0]["cols"] = cols
        assert (_spmm_tiles_call(c, x, 70, other) == 0) == (cols == S.TILE_COLS[1]), cols


def _tl_reviewer_weight(index_dtype, in_f, last):
    # out 2 tiles, the CSR's last `last` entries in the last row, at the end of its last
    # slice (so a read past them, 4 entries at a time, leaves the arrays)
    rng = np.random.default_rng(0)
    out_f = 2 * S.TILE_ROWS
    W = rng.standard_normal((out_f, in_f)).astype(np.float32)
    W[rng.random(W.shape) < 0.7] = 0
    W[-1, :] = 0
    W[-1, in_f - last:] = 1.0
    return kernels.csr_from_dense(W, index_dtype=index_dtype), rng


@pytest.mark.parametrize("backend,isa", [v for v in CSR_VARIANTS if v[0] != "numpy"],
                         ids=[i for b, i in CSR_VARIANTS if b != "numpy"])
@pytest.mark.parametrize("form", ["rows", "auto"])
@pytest.mark.parametrize("index_dtype,in_f,last", [(np.int32, 512, 4), (np.uint16, 512, 5), (np.uint8, 256, 7)])
def test_csr_packed_structure_is_immune_to_in_place_changes(backend, isa, form, index_dtype, in_f, last):
    # The reviewer's trigger (under `make sanitize` a read past the heap arrays when the
    # headers followed the live indptr): still a valid CSR with the same nnz, the second
    # tile's first entry moved to the first tile's last row; then indices pointing outside x.
    # The packed weight runs from its own copies: the same bits as before.
    c, rng = _tl_reviewer_weight(index_dtype, in_f, last)
    out_f = 2 * S.TILE_ROWS
    indptr, indices, values = c.indptr.copy(), c.indices.copy(), c.values.copy()
    with kernels.use(backend, isa=isa):
        p = kernels.pack_csr(indptr, indices, values, (out_f, in_f), form=form)
    assert p.indptr is indptr and p.indices is indices  # SparseLinear's identity check
    x = rng.standard_normal((64, in_f)).astype(np.float32)
    with kernels.use(backend, isa=isa, threads=1):
        y0 = {batch: kernels.spmm_csr(x[:batch], p) for batch in (1, 64)}
    indptr[S.TILE_ROWS] += 1
    indices[:] = np.iinfo(index_dtype).max
    for batch in (1, 64):
        with kernels.use(backend, isa=isa, threads=1):
            y1 = kernels.spmm_csr(x[:batch], p)
        np.testing.assert_array_equal(y1.view(np.uint32), y0[batch].view(np.uint32))
    with kernels.use("numpy"):
        np.testing.assert_array_equal(kernels.spmm_csr(x, p), kernels.spmm_csr(x, kernels.pack_csr(*c)))
    for a in (p._indptr, p._indices, p.tiles, p.bmask):
        assert a is None or not a.flags.writeable
    values *= 2  # values stay shared: seen by the next call
    if p.form != "sell":
        with kernels.use(backend, isa=isa, threads=1):
            np.testing.assert_array_equal(kernels.spmm_csr(x, p), 2 * y0[64])


def _tl_weight(nnz, rng):
    W = np.zeros((64, 256), np.float32)
    W.flat[rng.choice(W.size, nnz, replace=False)] = rng.standard_normal(nnz)
    return kernels.csr_from_dense(W)


@pytest.mark.skipif("avx512" not in [i for b, i in CSR_VARIANTS], reason="no AVX-512 variant here")
def test_csr_row_tiles_auto_boundary_takes_the_documented_path():
    # "auto" runs the tiles from batch 64 and nnz * 32 >= out * in: 64 x 256 with 512 entries
    # (density exactly 1/32) at batch 64 is colblock "on"'s sum order, batch 63 or 511 entries
    # the one without tiles (the two orders give different bits on these draws).
    rng = np.random.default_rng(6)

    def run(c, batch, **kw):
        x = np.random.default_rng(batch).standard_normal((batch, 256)).astype(np.float32)
        with kernels.use("c", isa="avx512", threads=1):
            return kernels.spmm_csr(x, kernels.pack_csr(*c, form="rows", **kw))

    def no_tiles(c, batch):
        saved, S.CSR_TILES = S.CSR_TILES, False
        try:
            return run(c, batch)
        finally:
            S.CSR_TILES = saved
    for nnz, batch, tiled in ((512, 64, True), (512, 63, False), (511, 64, False)):
        c = _tl_weight(nnz, rng)
        y, on, off = run(c, batch), run(c, batch, colblock="on"), no_tiles(c, batch)
        assert not np.array_equal(on, off)
        np.testing.assert_array_equal(y, on if tiled else off, err_msg=f"{nnz} {batch}")
    with kernels.use("c", isa="avx512"):  # below 1/32 "auto" never reads them: none built
        assert kernels.pack_csr(*_tl_weight(511, rng)).tiles is None
        assert kernels.pack_csr(*_tl_weight(511, rng), colblock="on").tiles is not None
        assert kernels.pack_csr(*_tl_weight(512, rng)).tiles is not None
    for isa in [i for b, i in CSR_VARIANTS if b == "c" and i != "avx512"]:
        with kernels.use("c", isa=isa):
            assert kernels.pack_csr(*_tl_weight(512, rng), colblock="on").tiles is None


@_needs_c
@pytest.mark.parametrize("out_f", [33, 40, 64, 65, 96, 129, 192, 200])
def test_csr_row_tiles_with_values_and_three_threads(out_f):
    # with_values keeps the headers (same structure) at batches >= 64; 3 threads over 1-4 tiles
    # (split points rounded to tiles collapse, some threads get no rows) give 1 thread's bits.
    rng = np.random.default_rng(out_f)
    W = rng.standard_normal((out_f, 300)).astype(np.float32)
    W[rng.random(W.shape) < 0.6] = 0
    c = kernels.csr_from_dense(W)
    v2 = rng.standard_normal(c.values.size).astype(np.float32)
    for backend, isa in [v for v in CSR_VARIANTS if v[0] != "numpy"]:
        with kernels.use(backend, isa=isa):
            p = kernels.pack_csr(*c, form="rows").with_values(v2)
            fresh = kernels.pack_csr(c.indptr, c.indices, v2, (out_f, 300), form="rows")
        assert (p.tiles is None) == (fresh.tiles is None) == (isa != "avx512")
        for batch in (64, 65, 128, 200):
            x = rng.standard_normal((batch, 300)).astype(np.float32)
            with kernels.use(backend, isa=isa, threads=1):
                y1, yf = kernels.spmm_csr(x, p), kernels.spmm_csr(x, fresh)
            with kernels.use(backend, isa=isa, threads=3):
                y3 = kernels.spmm_csr(x, p)
            np.testing.assert_array_equal(y1.view(np.uint32), yf.view(np.uint32), err_msg=isa)
            np.testing.assert_array_equal(y1.view(np.uint32), y3.view(np.uint32), err_msg=isa)
            assert_within_error_bound(y1, spmm_csr_exact(x, c.indptr, c.indices, v2),
                                      spmm_csr_error_bound(x, c.indptr, c.indices, v2))


@_needs_c
def test_csr_row_tiles_not_built_when_asked_not_to():
    c = kernels.csr_from_dense(np.eye(40, 300, dtype=np.float32))
    with kernels.use("c", isa="avx512"):
        assert kernels.pack_csr(*c, colblock="off").tiles is None
        saved = S.CSR_TILES
        S.CSR_TILES = False
        try:
            assert kernels.pack_csr(*c, colblock="on").tiles is None
        finally:
            S.CSR_TILES = saved
        assert kernels.pack_csr(*c, colblock="on").tiles is not None


@pytest.mark.parametrize("n,m", [(2, 4), (1, 2), (4, 8), (8, 16), (4, 6), (4, 4), (3, 4), (1, 4)])
@pytest.mark.parametrize("backend,isa", [v for v in NM_VARIANTS if v[0] != "numpy"],
                         ids=[i for b, i in NM_VARIANTS if b != "numpy"])
def test_nm_batch_one_on_rows_around_the_permute_steps(n, m, backend, isa):
    # Batch 1 with m <= 2n and n | 16 runs AVX-512's vpermt2ps kernel: 16 entries per step
    # over 16 m / n columns (an upper x vector masked to the step when that is under 32; none
    # at m = n), two steps per loop, a scalar tail.  Rows of 1 to 3 steps around each edge
    # (entries 15-17, 31-33, 47-49, 64); other patterns (3:4, 1:4) take the general kernel.
    rng = np.random.default_rng(100 * n + m)
    for entries in (n, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64):
        groups = max(1, entries // n)
        in_f = groups * m
        W = rng.standard_normal((23, in_f)).astype(np.float32)
        g = W.reshape(23, groups, m)
        g[np.argsort(rng.random(g.shape), axis=-1) >= n] = 0
        nm = kernels.nm_from_dense(W, n, m)
        _check_nm_threads_and_bias(backend, isa, rng, nm, rng.standard_normal(23).astype(np.float32), 1, in_f)


def _nm_weight(rng, out_f, in_f, n, m):
    """A random float32 weight [out, in] with at most n nonzeros in every group of m inputs."""
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    g = w.reshape(out_f, in_f // m, m)
    drop = np.argsort(rng.random(g.shape), axis=2)[:, :, n:]
    np.put_along_axis(g, drop, 0.0, axis=2)
    return w


@pytest.mark.parametrize("variant", NM_VARIANTS, ids=lambda v: v[1] or v[0])
def test_packed_nm_gives_the_unpacked_bits(variant):
    # the same kernel on the same arrays: only the per-call check of the positions is gone
    rng = np.random.default_rng(11)
    for (n, m), out_f, in_f in [((2, 4), 37, 64), ((1, 4), 5, 36), ((4, 8), 64, 128), ((3, 7), 9, 70)]:
        vals, ind, _, _ = kernels.nm_from_dense(_nm_weight(rng, out_f, in_f, n, m), n, m)
        b = rng.standard_normal(out_f).astype(np.float32)
        p = kernels.pack_nm(vals, ind, n, m, b)
        for batch in (1, 3, 16, 130):
            x = rng.standard_normal((batch, in_f)).astype(np.float32)
            with kernels.use(*variant):
                assert_exact(kernels.spmm_nm(x, p), kernels.spmm_nm(x, vals, ind, n, m, b))
        x3 = rng.standard_normal((2, 3, in_f)).astype(np.float32)  # leading dimensions kept
        assert kernels.spmm_nm(x3, p).shape == (2, 3, out_f)


def test_pack_nm_checks_once_keeps_a_copy_of_the_positions_and_swaps_values():
    rng = np.random.default_rng(12)
    vals, ind, n, m = kernels.nm_from_dense(_nm_weight(rng, 8, 32, 2, 4), 2, 4)
    x = rng.standard_normal((2, 32)).astype(np.float32)
    p = kernels.pack_nm(vals, ind, n, m)
    want = kernels.spmm_nm(x, vals, ind, n, m)
    ind[0, 0] = 200  # an in-place change of the given positions is not seen (nor read out of x)
    assert_exact(kernels.spmm_nm(x, p), want)
    with pytest.raises(ValueError):
        p.indices[0, 0] = 1  # the kernel's copy is read-only
    with pytest.raises(ArgumentError, match=r"^indices: expected positions in \[0, m = 4\)"):
        kernels.pack_nm(vals, ind, n, m)
    ind[0, 0] = p.indices[0, 0]
    vals[0, 0] += 1.0  # values are held: an in-place change is seen
    assert_exact(kernels.spmm_nm(x, p), kernels.spmm_nm(x, vals, ind, n, m))
    v2 = (vals * 2).astype(np.float32)
    b2 = np.arange(8, dtype=np.float32)
    assert_exact(kernels.spmm_nm(x, p.with_values(v2, b2)), kernels.spmm_nm(x, v2, ind, n, m, b2))
    assert p.with_values(v2).bias is None and p.bias is None
    with pytest.raises(ShapeError, match="^values: expected shape"):
        p.with_values(v2[:, :8])
    with pytest.raises(ArgumentError, match="^n, bias: pass them to pack_nm"):
        kernels.spmm_nm(x, p, n=2, bias=b2)
    with pytest.raises(ArgumentError, match="^indices, n, m: expected with unpacked values"):
        kernels.spmm_nm(x, vals)
    with pytest.raises(ShapeError, match="^x: expected last dimension in_features = 32"):
        kernels.spmm_nm(x[:, :16], p)


def test_packed_nm_copies_are_packed_and_checked_anew():
    # pickle / deepcopy repack from the given arrays (positions checked again), and the
    # kernel's positions can never be made writeable; a PackedNM whose positions were
    # replaced afterwards is refused, not run
    import copy
    import pickle

    rng = np.random.default_rng(13)
    vals, ind, n, m = kernels.nm_from_dense(_nm_weight(rng, 8, 32, 2, 4), 2, 4)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    p = kernels.pack_nm(vals, ind, n, m)
    want = kernels.spmm_nm(x, p)
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert isinstance(q, kernels.PackedNM) and not q.indices.flags.writeable
        with pytest.raises(ValueError):
            q.indices.flags.writeable = True
        assert_exact(kernels.spmm_nm(x, q), want)
    with pytest.raises(ValueError):
        p.indices.flags.writeable = True
    ind[0, 0] = 200  # the given array broken in place: copies come from the packed positions
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert_exact(kernels.spmm_nm(x, q), want)
    q = kernels.pack_nm(vals, p.indices.copy(), n, m)
    with pytest.raises(AttributeError, match="^PackedNM.indices: attributes are fixed"):
        q.indices = q.indices.copy()
    # writeable positions swapped in behind pack_nm's back (past the refused assignment)
    object.__setattr__(q, "indices", q.indices.copy())
    with pytest.raises(ArgumentError, match="^values: a PackedNM whose positions were replaced"):
        kernels.spmm_nm(x, q)
