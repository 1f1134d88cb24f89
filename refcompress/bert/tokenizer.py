"""WordPiece ids for BERT from a Hugging Face ``tokenizer.json`` (the ``tokenizers`` package).

A batch of strings becomes three int64 arrays [n, S]: ``input_ids``, ``attention_mask``
(1 = token, 0 = padding) and ``token_type_ids`` (all 0: single sentences), with S the
longest encoded row of the batch (padding on the right with ``[PAD]``).

Truncation rule: each row keeps at most ``max_seq_length`` tokens *including* ``[CLS]`` and
``[SEP]``; the text's tail is dropped and ``[SEP]`` still ends the row (as
sentence-transformers does).  For all-MiniLM-L6-v2 ``max_seq_length`` = 256, from
``sentence_bert_config.json``; the ``truncation``/``padding`` settings stored inside
tokenizer.json (128, fixed-length padding) are replaced by these.  An empty string encodes
to ``[CLS] [SEP]``.
"""

from __future__ import annotations

import os

import numpy as np

from .._validation import check_int
from ..errors import ArgumentError, CorruptFileError, DTypeError
from .config import read_json
from .loader import _require

__all__ = ["Tokenizer"]


class Tokenizer:
    """``Tokenizer(tokenizer_file, max_seq_length=256)``; ``tok(["a text", ...])`` ->
    dict of int64 ``input_ids``, ``attention_mask``, ``token_type_ids`` [n, S].

    max_seq_length : the most tokens of a row, [CLS] and [SEP] included (>= 2).
    """

    def __init__(self, tokenizer_file, max_seq_length: int = 256, pad_token: str = "[PAD]"):
        tokenizers = _require("tokenizers")
        path = os.fspath(tokenizer_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer_file: no file at {path!r}")
        self.tokenizer_file = path
        self.max_seq_length = check_int(max_seq_length, "max_seq_length", min_value=2)
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise CorruptFileError(f"tokenizer_file: {path!r} is not a readable tokenizer.json ({e})") from None
        pad_id = tok.token_to_id(pad_token)
        if pad_id is None:
            raise ArgumentError(f"pad_token: {pad_token!r} is not in the vocabulary of {path!r}")
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_seq_length)
        tok.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=0)
        self.pad_token = pad_token
        self.pad_token_id = int(pad_id)
        self._tok = tok

    @classmethod
    def from_model_dir(cls, model_dir) -> "Tokenizer":
        """From a sentence-transformers directory: ``tokenizer.json`` and ``max_seq_length``
        from ``sentence_bert_config.json`` (256 if that file is absent)."""
        model_dir = os.fspath(model_dir)
        max_len = 256
        sb = os.path.join(model_dir, "sentence_bert_config.json")
        if os.path.isfile(sb):
            doc = read_json(sb, "sentence_bert_config")
            if not isinstance(doc, dict):
                raise CorruptFileError(f"sentence_bert_config: {sb!r} holds a JSON {type(doc).__name__}, "
                                       "expected an object")
            max_len = doc.get("max_seq_length", max_len)
        return cls(os.path.join(model_dir, "tokenizer.json"), max_seq_length=max_len)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def __call__(self, texts) -> dict:
        if isinstance(texts, str):
            raise DTypeError("texts: expected a list of strings, got a single str (wrap it in a list)")
        if not isinstance(texts, (list, tuple)):
            raise DTypeError(f"texts: expected a list of strings, got {type(texts).__name__}")
        if len(texts) == 0:
            raise ArgumentError("texts: expected at least one string, got an empty list")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DTypeError(f"texts[{i}]: expected a str, got {type(t).__name__}")
        enc = self._tok.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }

    def __repr__(self) -> str:
        return f"Tokenizer({self.tokenizer_file!r}, max_seq_length={self.max_seq_length})"
