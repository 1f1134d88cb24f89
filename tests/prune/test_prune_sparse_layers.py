"""SparseLinear (CSR) and NMLinear: same outputs as the dense layer on every kernel backend,
narrowest index types, stored-bytes accounting, backward equal to the masked dense
gradient, fine-tuning in sparse form, and save / load through the module registry."""

import json

import numpy as np
import pytest

from refcompress import kernels, nn, prune as P
from refcompress.errors import ArgumentError, DTypeError, ShapeError
from refcompress.testing import kernel_variants


def sparse_weight(out_f, in_f, density, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    return w * (rng.random((out_f, in_f)) < density)


@pytest.mark.parametrize("backend, isa", kernel_variants("spmm_csr"))
@pytest.mark.parametrize("shape, density", [((7, 5), 0.4), ((300, 64), 0.05), ((10, 300), 0.2), ((3, 4), 0.0)])
def test_sparse_linear_equals_dense(backend, isa, shape, density):
    w = sparse_weight(*shape, density)
    b = np.random.default_rng(1).standard_normal(shape[0]).astype(np.float32)
    layer = P.SparseLinear.from_dense(w, b).eval()
    x = np.random.default_rng(2).standard_normal((9, shape[1])).astype(np.float32)
    with kernels.use(backend, isa=isa):
        y = layer(x)
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + b
    # the kernels' documented per-element bound, plus float64's own rounding
    bound = kernels.sparse.spmm_csr_error_bound(x, layer.indptr, layer.indices, layer.values.data, b)
    assert np.all(np.abs(y - exact) <= bound + 1e-12)
    np.testing.assert_array_equal(layer.dense_weight(), w)


@pytest.mark.parametrize("backend, isa", kernel_variants("spmm_nm"))
def test_nm_linear_equals_dense(backend, isa):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 16)).astype(np.float32)
    w *= P.nm_mask(w, 2, 4)
    layer = P.NMLinear.from_dense(w, 2, 4, bias=np.ones(6, np.float32)).eval()
    x = rng.standard_normal((5, 16)).astype(np.float32)
    with kernels.use(backend, isa=isa):
        y = layer(x)
    np.testing.assert_allclose(y, x @ w.T + 1, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.dense_weight(), w)


def test_nm_linear_checks_its_positions_once(monkeypatch):
    # forward runs the layer's PackedNM: the O(nnz) position check runs when the indices
    # array is new, not on every call; new values / bias arrays and in-place value changes
    # are followed without it
    from refcompress.kernels import sparse as S

    calls = []
    check = S._check_nm_structure
    monkeypatch.setattr(S, "_check_nm_structure", lambda *a, **k: (calls.append(1), check(*a, **k))[1])
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 16)).astype(np.float32)
    w *= P.nm_mask(w, 2, 4)
    layer = P.NMLinear.from_dense(w, 2, 4, bias=np.ones(6, np.float32)).eval()
    x = rng.standard_normal((3, 16)).astype(np.float32)
    calls.clear()
    for _ in range(3):
        y = layer(x)
    assert len(calls) == 1
    np.testing.assert_allclose(y, x @ w.T + 1, rtol=1e-5, atol=1e-5)
    layer.values.data[0, 0] += 2.0  # in place: seen
    w2 = layer.dense_weight()  # (nm_to_dense checks the positions itself)
    calls.clear()
    np.testing.assert_allclose(layer(x), x @ w2.T + 1, rtol=1e-5, atol=1e-5)
    layer.values.data = layer.values.data * np.float32(0.5)  # a new array: swapped in, not re-checked
    layer.bias.data = np.zeros(6, np.float32)
    np.testing.assert_allclose(layer(x), x @ (0.5 * w2).T, rtol=1e-5, atol=1e-5)
    assert len(calls) == 0
    layer.indices = layer.indices.copy()  # a new structure array: checked again
    layer(x)
    assert len(calls) == 1
    bad = layer.indices.copy()
    bad[0, 0] = 9
    layer.indices = bad
    with pytest.raises(ArgumentError, match=r"^indices: expected positions in \[0, m = 4\)"):
        layer(x)


def test_index_types_and_stored_bytes():
    a = P.SparseLinear.from_dense(sparse_weight(300, 64, 0.05))
    b = P.SparseLinear.from_dense(sparse_weight(100, 300, 0.05), np.zeros(100, np.float32))
    assert a.indices.dtype == np.uint8 and b.indices.dtype == np.uint16
    assert a.indptr.dtype == np.int32
    nnz = a.nnz
    assert a.stored_bytes() == 4 * nnz + nnz + 4 * 301 == P.csr_stored_bytes(300, 64, nnz, bias=False)
    assert b.stored_bytes() == P.csr_stored_bytes(100, 300, b.nnz) == 6 * b.nnz + 4 * 101 + 400
    assert a.sparsity == pytest.approx(1 - nnz / (300 * 64))
    nm = P.NMLinear(16, 6, 2, 4)
    assert nm.stored_bytes() == P.nm_stored_bytes(6, 16, 2, 4) == 5 * 6 * 8 + 24
    assert P.dense_stored_bytes(6, 16) == 4 * 96 + 24


def _grads(layer, x, g):
    layer.train()
    layer.zero_grad()
    layer(x)
    dx = layer.backward(g)
    return dx, {k: p.grad.copy() for k, p in layer.named_parameters()}


def test_backward_equals_masked_dense_gradient():
    rng = np.random.default_rng(0)
    w = sparse_weight(6, 8, 0.5)
    b = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    g = rng.standard_normal((4, 6)).astype(np.float32)
    dense = nn.Linear(8, 6)
    dense.weight.data, dense.bias.data = w.copy(), b.copy()
    ddx, dgrads = _grads(dense, x, g)
    sp = P.SparseLinear.from_dense(w, b)
    sdx, sgrads = _grads(sp, x, g)
    np.testing.assert_allclose(sdx, ddx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sgrads["bias"], dgrads["bias"], rtol=1e-6)
    np.testing.assert_allclose(sgrads["values"], dgrads["weight"][w != 0], rtol=1e-5, atol=1e-6)
    wn = w * P.nm_mask(w, 2, 4)
    dense.weight.data = wn
    ddx, dgrads = _grads(dense, x, g)
    nm = P.NMLinear.from_dense(wn, 2, 4, b)
    ndx, ngrads = _grads(nm, x, g)
    np.testing.assert_allclose(ndx, ddx, rtol=1e-5, atol=1e-6)
    cols = kernels.sparse.nm_columns(nm.indices, 2, 4)
    np.testing.assert_allclose(ngrads["values"], np.take_along_axis(dgrads["weight"], cols, 1),
                               rtol=1e-5, atol=1e-6)


def test_fine_tuning_in_sparse_form_keeps_the_structure():
    rng = np.random.default_rng(0)
    m = nn.Sequential(P.SparseLinear.from_dense(sparse_weight(12, 8, 0.3), np.zeros(12, np.float32)),
                      nn.ReLU(), nn.Linear(12, 3, rng=rng))
    idx = m[0].indices.copy()
    X = rng.standard_normal((48, 8)).astype(np.float32)
    y = rng.integers(0, 3, 48)
    loss0 = nn.evaluate(m, X, y)["loss"]
    nn.fit(m, X, y, optimizer=nn.SGD(m.parameters(), lr=0.1), epochs=20, batch_size=48, progress=False)
    assert nn.evaluate(m, X, y)["loss"] < loss0
    np.testing.assert_array_equal(m[0].indices, idx)


def test_save_load_through_spec_and_state_dict():
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 300, rng=rng), nn.ReLU(), nn.Linear(300, 8, rng=rng),
                      nn.ReLU(), nn.Linear(8, 4, rng=rng))
    P.global_magnitude_prune(m, 0.8, layers=["1", "3"], normalize="std")
    P.nm_prune(m, 2, 4, layers=["5"])
    P.to_sparse(m, layers=["1", "3"])
    P.to_nm(m, 2, 4, layers=["5"])
    spec = json.loads(json.dumps(nn.to_spec(m)))
    state = {k: v.copy() for k, v in m.state_dict().items()}
    m2 = nn.from_spec(spec)
    m2.load_state_dict(state)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_array_equal(m2.eval()(x), m.eval()(x))
    assert m2[1].indices.dtype == np.uint8 and m2[3].indices.dtype == np.uint16
    assert m2[1].indptr.dtype == np.int32 and m2[3].nnz == m[3].nnz > 0


def test_to_sparse_options_and_to_dense_round_trip():
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Linear(8, 8, rng=rng), nn.ReLU(), nn.Linear(8, 2, rng=rng))
    P.magnitude_prune(m, amount=0.9, layers=["0"])
    x = rng.standard_normal((4, 8)).astype(np.float32)
    y = m.eval()(x)
    P.to_sparse(m, min_sparsity=0.5)
    assert isinstance(m[0], P.SparseLinear) and isinstance(m[2], nn.Linear)
    np.testing.assert_allclose(m(x), y, rtol=1e-5, atol=1e-6)
    P.to_dense(m)
    assert isinstance(m[0], nn.Linear)
    np.testing.assert_allclose(m(x), y, rtol=1e-5, atol=1e-6)
    with pytest.raises(ArgumentError, match="min_sparsity"):
        P.to_sparse(m, min_sparsity=2)


def test_bad_inputs():
    with pytest.raises(ShapeError, match="in_features"):
        P.NMLinear(10, 3, 2, 4)
    with pytest.raises(ArgumentError, match="n"):
        P.NMLinear(8, 3, 5, 4)
    with pytest.raises(ArgumentError, match="index_dtype"):
        P.SparseLinear(300, 3, index_dtype="uint8")
    with pytest.raises(DTypeError, match="weight"):
        P.SparseLinear.from_dense(np.ones((2, 2)))
    layer = P.SparseLinear.from_dense(np.eye(3, dtype=np.float32))
    with pytest.raises(ShapeError, match="x"):
        layer(np.ones((2, 4), np.float32))
    with pytest.raises(DTypeError, match="x"):
        layer(np.ones((2, 3)))


def test_sparse_linear_revalidates_after_its_structure_is_replaced():
    import numpy as np
    from refcompress.errors import RefcompressError
    from refcompress.prune import SparseLinear

    w = np.zeros((3, 5), np.float32)
    w[0, 1], w[2, 4] = 1.0, 2.0
    layer = SparseLinear.from_dense(w)
    x = np.ones((2, 5), np.float32)
    np.testing.assert_allclose(layer(x), x @ w.T)
    np.testing.assert_allclose(layer(x), x @ w.T)  # the cached-structure path
    sd = layer.state_dict()
    sd["indices"] = np.array([4, 1], sd["indices"].dtype)  # out of order in no row, but a new array
    layer.load_state_dict(sd)
    w2 = np.zeros_like(w)
    w2[0, 4], w2[2, 1] = 1.0, 2.0
    np.testing.assert_allclose(layer(x), x @ w2.T)
    sd["indices"] = np.array([7, 1], sd["indices"].dtype)  # column 7 does not exist
    layer.load_state_dict(sd)
    with pytest.raises(RefcompressError, match="indices"):
        layer(x)


def test_sparse_linear_packs_once_and_follows_new_values_and_bias():
    rng = np.random.default_rng(3)
    w = sparse_weight(40, 30, 0.6, seed=3)
    b = rng.standard_normal(40).astype(np.float32)
    layer = P.SparseLinear.from_dense(w, b).eval()
    x = rng.standard_normal((4, 30)).astype(np.float32)
    layer(x)
    p = layer.packed()
    assert layer.packed() is p and p.source_values is layer.values.data  # reused: no re-check per call
    # the optimiser's two ways: a new array (with_values, same structure) or an in-place update
    layer.values.data = layer.values.data * 2
    q = layer.packed()
    assert q is not p and q.indices is p.indices and q.source_values is layer.values.data
    layer.values.data *= 0.5
    assert layer.packed() is q
    layer.bias.data = np.zeros(40, np.float32)
    assert layer.packed().bias is layer.bias.data
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    bound = kernels.sparse.spmm_csr_error_bound(x, layer.indptr, layer.indices, layer.values.data)
    assert np.all(np.abs(layer(x) - exact) <= bound + 1e-12)
    layer.bias = None
    assert layer.packed().bias is None
    assert np.all(np.abs(layer(x) - exact) <= bound + 1e-12)


def test_sparse_linear_form_follows_the_mode():
    # Training packs the "rows" form, which reads the held values (in-place updates are seen);
    # eval packs pack_csr's "auto", on AVX-512 the batch-1 "sell" form for a sparse layer,
    # which runs from its own copy: a new values array is taken in, as with any form.
    rng = np.random.default_rng(5)
    w = sparse_weight(40, 30, 0.1, seed=5)  # density 0.1
    layer = P.SparseLinear.from_dense(w)
    x = rng.standard_normal((1, 30)).astype(np.float32)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    bound = kernels.sparse.spmm_csr_error_bound(x, layer.indptr, layer.indices, layer.values.data)
    layer.train()
    assert layer.packed().form == "rows"
    layer.values.data *= 2  # in place, seen
    assert np.all(np.abs(layer(x) - 2 * exact) <= 2 * bound + 1e-12)
    layer.values.data = layer.values.data / 2
    layer.eval()
    with kernels.use("c", isa="avx512") if "avx512" in kernels.variants("spmm_csr") else kernels.use("numpy"):
        want = "sell" if kernels.selected_variant("spmm_csr") == "avx512" else "rows"
        assert layer.packed().form == want
        assert np.all(np.abs(layer(x) - exact) <= bound + 1e-12)
        layer.values.data = layer.values.data * 3  # a new array: with_values
        assert layer.packed().form == want
        assert np.all(np.abs(layer(x) - 3 * exact) <= 3 * bound + 1e-12)
        # in place in eval mode: the sell form keeps the packed values for every batch (one
        # answer, never batch 1 stale and batch 2 fresh); the rows form sees the change
        layer.values.data *= 2
        factor = 3 if want == "sell" else 6
        for xb in (x, np.repeat(x, 2, axis=0)):
            assert np.all(np.abs(layer(xb)[:1] - factor * exact) <= factor * bound + 1e-12)


@pytest.mark.parametrize("backend, isa", kernel_variants("spmm_nm"))
def test_permuted_nm_linear_equals_dense_and_trains_saves_loads(backend, isa):
    # the 2:4 pattern holds along x[:, perm] only; the layer gathers its input
    rng = np.random.default_rng(0)
    perm = rng.permutation(16)
    w = rng.standard_normal((6, 16)).astype(np.float32)
    w[:, perm] *= P.nm_mask(w[:, perm], 2, 4)
    assert not P.is_nm_sparse(w, 2, 4)
    b = rng.standard_normal(6).astype(np.float32)
    layer = P.NMLinear.from_dense(w, 2, 4, b, input_perm=perm).eval()
    np.testing.assert_array_equal(layer.dense_weight(), w)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    with kernels.use(backend, isa=isa):
        y = layer(x)
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-5, atol=1e-5)
    assert layer.stored_bytes() == P.nm_stored_bytes(6, 16, 2, 4, permuted=True) == P.nm_stored_bytes(6, 16, 2, 4) + 64
    # backward: the gradient of the dense layer it stands for, in the original input order
    dense = nn.Linear(16, 6)
    dense.weight.data, dense.bias.data = w.copy(), b.copy()
    g = rng.standard_normal((2, 5, 6)).astype(np.float32)
    ddx, dgrads = _grads(dense, x, g)
    ndx, ngrads = _grads(layer, x, g)
    np.testing.assert_allclose(ndx, ddx, rtol=1e-5, atol=1e-5)
    cols = kernels.sparse.nm_columns(layer.indices, 2, 4)
    np.testing.assert_allclose(ngrads["values"], np.take_along_axis(dgrads["weight"][:, perm], cols, 1),
                               rtol=1e-5, atol=1e-5)
    m2 = nn.from_spec(json.loads(json.dumps(nn.to_spec(layer))))
    m2.load_state_dict({k: v.copy() for k, v in layer.state_dict().items()})
    np.testing.assert_array_equal(m2.eval()(x), layer.eval()(x))
    assert m2.input_perm.dtype == np.int32 and P.NMLinear(16, 6).input_perm is None


def test_permuted_nm_linear_bad_input():
    w = np.zeros((3, 8), np.float32)
    with pytest.raises(ArgumentError, match="input_perm"):
        P.NMLinear.from_dense(w, 2, 4, input_perm=np.arange(7))
    with pytest.raises(ArgumentError, match="permuted"):
        P.NMLinear(8, 3, permuted="yes")
    w[0, [0, 2, 4, 6]] = 1  # 2:4 in the original order, four nonzeros in one permuted group
    P.NMLinear.from_dense(w, 2, 4)
    with pytest.raises(ArgumentError, match=r"permuted order weight\[:, input_perm\].*4 nonzeros"):
        P.NMLinear.from_dense(w, 2, 4, input_perm=np.array([0, 2, 4, 6, 1, 3, 5, 7]))
    # a replaced input_perm (a loaded state dict) is checked before it is used
    layer = P.NMLinear.from_dense(w, 2, 4, input_perm=np.arange(8)[::-1].copy())
    state = layer.state_dict()
    state["input_perm"] = np.zeros(8, np.int32)
    layer.load_state_dict(state)
    with pytest.raises(ArgumentError, match="input_perm"):
        layer(np.ones((1, 8), np.float32))
    with pytest.raises(ArgumentError, match="input_perm"):
        layer.dense_weight()


def test_layers_pickled_before_they_kept_a_packed_weight_still_run():
    # Layers pickled by an earlier version have no _packed attributes: the first forward
    # packs the weight as a fresh layer's does.
    import pickle

    rng = np.random.default_rng(5)
    w = sparse_weight(12, 16, 0.3)
    wn = rng.standard_normal((6, 16)).astype(np.float32)
    wn *= P.nm_mask(wn, 2, 4)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    for layer in (P.SparseLinear.from_dense(w, np.ones(12, np.float32)).eval(),
                  P.NMLinear.from_dense(wn, 2, 4, bias=np.ones(6, np.float32)).eval()):
        want = layer(x)
        old = pickle.loads(pickle.dumps(layer))
        for k in ("_packed", "_packed_training"):
            old.__dict__.pop(k, None)
        np.testing.assert_array_equal(old(x), want)


@pytest.mark.parametrize("convert", [lambda m: P.to_sparse(m), lambda m: P.to_nm(m, 2, 4)])
def test_converting_a_layer_used_twice_is_refused_before_any_change(convert):
    rng = np.random.default_rng(0)
    A = nn.Linear(8, 8, rng=rng)
    relu = nn.ReLU()
    m = nn.Sequential(nn.Linear(4, 8, rng=rng), relu, A, relu, A, relu, nn.Linear(8, 4, rng=rng))
    P.nm_prune(m, 2, 4)
    with pytest.raises(ArgumentError, match=r"model: '2' and '4' are the same Linear.*untie"):
        convert(m)
    assert all(type(l) in (nn.Linear, nn.ReLU) for l in m)  # nothing converted
    assert m[2] is m[4] and P.get_mask(m[4]) is not None


@pytest.mark.parametrize("convert", [lambda m: P.to_sparse(m), lambda m: P.to_nm(m, 2, 4)])
def test_a_float64_layer_is_refused_by_name(convert):
    m = nn.Sequential(nn.Linear(4, 2, rng=np.random.default_rng(0))).to(np.float64)
    with pytest.raises(DTypeError, match=r"^layers: '0' has float64 weights, expected float32"):
        convert(m)
    assert type(m[0]) is nn.Linear


def test_a_tied_linear_left_out_of_layers_does_not_stop_the_conversion():
    rng = np.random.default_rng(0)
    tied = nn.Linear(16, 16, rng=rng)
    model = nn.Sequential(nn.Linear(8, 16, rng=rng), nn.ReLU(), tied, nn.ReLU(), tied)
    model[0].weight.data[:, ::2] = 0
    x = rng.standard_normal((3, 8)).astype(np.float32)
    y = model(x)
    P.to_sparse(model, layers=["0"])
    assert isinstance(model[0], P.SparseLinear) and model[2] is model[4] is tied
    np.testing.assert_allclose(model(x), y, rtol=1e-5, atol=1e-5)
