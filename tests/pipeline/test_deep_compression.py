"""Deep Compression storage: canonical Huffman and the relative-index / shared-value codec."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refcompress import nn
from refcompress.errors import ArgumentError, CorruptFileError
from refcompress.pipeline import huffman as H
from refcompress.pipeline.deep_compression import (
    DeepCompressedLinear,
    decode_weight,
    encode_weight,
    positions_from_relative,
    relative_indices,
    storage_report,
)


@given(n=st.integers(0, 400), k=st.integers(1, 40), skew=st.floats(0.05, 1.0), seed=st.integers(0, 2**31))
def test_huffman_round_trip_and_kraft(n, k, skew, seed):
    rng = np.random.default_rng(seed)
    s = np.minimum(rng.geometric(skew, n) - 1, k - 1)
    lengths, payload, n_bits = H.encode(s, k)
    np.testing.assert_array_equal(H.decode(lengths, payload, n), s)
    used = lengths[lengths > 0].astype(float)
    if used.size > 1:
        assert np.isclose(np.sum(2.0 ** -used), 1.0)  # a complete prefix code
    assert payload.size == (n_bits + 7) // 8


def test_huffman_is_optimal_on_a_textbook_example():
    # frequencies 45, 13, 12, 16, 9, 5 (CLRS 16.3): optimal lengths 1, 3, 3, 3, 4, 4
    s = np.repeat(np.arange(6), [45, 13, 12, 16, 9, 5])
    lengths, _, n_bits = H.encode(s, 6)
    np.testing.assert_array_equal(lengths, [1, 3, 3, 3, 4, 4])
    assert n_bits == 224


def test_huffman_refuses_a_truncated_payload():
    s = np.arange(10) % 3
    lengths, payload, _ = H.encode(s, 3)
    with pytest.raises(CorruptFileError, match="payload"):
        H.decode(lengths, payload[:1], 10)


@given(density=st.floats(0.0, 1.0), bits=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_relative_indices_round_trip_with_escapes(density, bits, seed):
    mask = np.random.default_rng(seed).random((7, 53)) < density
    rel = relative_indices(mask, bits)
    assert rel.max(initial=0) <= 2**bits - 1
    np.testing.assert_array_equal(positions_from_relative(rel, bits), np.flatnonzero(mask))


def _shared(seed, shape=(30, 40), density=0.1, k=8):
    rng = np.random.default_rng(seed)
    codebook = np.sort(rng.standard_normal(k)).astype(np.float32)
    codebook[np.abs(codebook) < 1e-3] = 0.5  # no zero entry: zeros mean "pruned"
    codes = rng.integers(0, k, shape)
    mask = rng.random(shape) < density
    return np.where(mask, codebook[codes], 0).astype(np.float32), codebook, codes


@pytest.mark.parametrize("index_bits", [2, 4, 8])
def test_encode_decode_weight_is_exact(index_bits):
    w, cb, codes = _shared(1)
    e = encode_weight(w, cb, codes, index_bits=index_bits)
    np.testing.assert_array_equal(decode_weight(e), w)
    rep = storage_report(w, e)
    assert rep["Huffman"] < rep["CSR fp32"] < rep["dense fp32"]


def test_layer_round_trips_through_spec_and_state_dict_and_runs():
    w, cb, codes = _shared(2)
    bias = np.linspace(-1, 1, 30).astype(np.float32)
    layer = DeepCompressedLinear.from_weight(w, cb, codes, bias)
    x = np.random.default_rng(2).standard_normal((5, 40)).astype(np.float32)
    np.testing.assert_allclose(layer(x), x @ w.T + bias, rtol=1e-5, atol=1e-5)
    again = nn.from_spec(nn.to_spec(layer))
    again.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(again.weight(), w)
    assert layer.stored_bytes() < w.nbytes / 8


def test_bad_inputs():
    w, cb, codes = _shared(3)
    with pytest.raises(ArgumentError, match="codes"):
        encode_weight(w, cb, (codes + 1) % 8)
    with pytest.raises(ArgumentError, match="codebook"):
        encode_weight(w, np.zeros(20, np.float32), codes, value_bits=4)


def test_conv_layer_round_trips_and_matches_the_dense_conv():
    from refcompress.pipeline.deep_compression import DeepCompressedConv2d
    from refcompress.quant import SharedConv2d

    nn.manual_seed(4)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    mask = np.abs(conv.weight.data) > 0.1
    shared = SharedConv2d.from_conv(conv, 3, mask=mask)
    w = shared.shared().dense()
    dc = DeepCompressedConv2d.from_conv(shared, shared.codebook.data, shared.indices, index_bits=3)
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(dc.eval()(x), nn.functional.conv2d(x, w, conv.bias.data, 1, 1), rtol=1e-5, atol=1e-6)
    again = nn.from_spec(nn.to_spec(dc))
    again.load_state_dict(dc.state_dict())
    np.testing.assert_array_equal(again.dense_weight(), w)
    assert "weight" not in dc.state_dict()


def test_float16_biases_are_stored_half_size_and_run_in_float32():
    w, cb, codes = _shared(5)
    bias = np.linspace(-1, 1, 30).astype(np.float32)
    layer = DeepCompressedLinear.from_weight(w, cb, codes, bias, bias_dtype="float16")
    assert layer.state_dict()["bias"].dtype == np.float16
    x = np.random.default_rng(5).standard_normal((3, 40)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x @ w.T + bias.astype(np.float16).astype(np.float32), rtol=1e-5, atol=1e-5)
    again = nn.from_spec(nn.to_spec(layer))
    again.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(again(x), y)
    with pytest.raises(ArgumentError, match="bias_dtype"):
        DeepCompressedLinear(4, 3, bias_dtype="int8")


def test_compressed_model_file_round_trips_bit_exactly_and_corruption_is_refused(tmp_path):
    from refcompress import io as rc_io
    from refcompress.errors import CorruptFileError

    w, cb, codes = _shared(6)
    model = nn.Sequential(DeepCompressedLinear.from_weight(w, cb, codes, np.ones(30, np.float32), index_bits=4),
                          nn.ReLU())
    path = tmp_path / "dc.npz"
    rc_io.save(model, path)
    back = rc_io.load(path)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    np.testing.assert_array_equal(back[0].weight(), w)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        rc_io.load(path)
