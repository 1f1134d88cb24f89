"""BertConfig: the sizes of a BERT encoder, read from a Hugging Face ``config.json``.

Only what the NumPy model computes is kept; the file's other keys (dropout rates,
``initializer_range``, ``transformers_version`` ...) do not change inference and are ignored.
Keys that *would* change the computation and that this implementation does not support are
refused rather than ignored: ``hidden_act`` other than ``"gelu"`` (the exact erf GELU) and
``position_embedding_type`` other than ``"absolute"``.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import asdict, dataclass

from ..errors import ArgumentError, CorruptFileError, DTypeError

__all__ = ["BertConfig", "read_json"]


def read_json(path: str, name: str):
    """The JSON document in the file ``path`` (argument ``name``), or CorruptFileError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        raise CorruptFileError(f"{name}: {path!r} is not valid UTF-8 JSON ({type(e).__name__}: {e})") from None

_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "max_position_embeddings", "type_vocab_size")


@dataclass(frozen=True)
class BertConfig:
    """Sizes of a BERT encoder (Hugging Face names).  Validated on construction: the sizes
    are positive ints, ``hidden_size`` is a multiple of ``num_attention_heads``,
    ``layer_norm_eps`` > 0, ``hidden_act == "gelu"``, ``0 <= pad_token_id < vocab_size``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    def __post_init__(self):
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise DTypeError(f"{name}: expected a positive integer, got {type(v).__name__} {v!r}")
            if v < 1:
                raise ArgumentError(f"{name}: expected a positive integer, got {v}")
        if self.hidden_size % self.num_attention_heads:
            raise ArgumentError(
                f"hidden_size: expected a multiple of num_attention_heads={self.num_attention_heads}, "
                f"got {self.hidden_size}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1:
            raise ArgumentError(f"layer_norm_eps: expected a number in (0, 1), got {eps!r}")
        if self.hidden_act != "gelu":
            raise ArgumentError(
                f"hidden_act: expected 'gelu' (the exact erf GELU, the only activation implemented), "
                f"got {self.hidden_act!r}")
        if self.position_embedding_type != "absolute":
            raise ArgumentError(
                f"position_embedding_type: expected 'absolute' (the only kind implemented), got "
                f"{self.position_embedding_type!r}")
        p = self.pad_token_id
        if isinstance(p, bool) or not isinstance(p, numbers.Integral) or not 0 <= p < self.vocab_size:
            raise ArgumentError(f"pad_token_id: expected an integer in [0, {self.vocab_size - 1}], got {p!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """Build from a config.json dict; required: the five size keys, the rest default."""
        if not isinstance(d, dict):
            raise DTypeError(f"d: expected a dict, got {type(d).__name__}")
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size")
        missing = [k for k in required if k not in d]
        if missing:
            raise ArgumentError(f"config: missing keys {missing}")
        if "model_type" in d and d["model_type"] != "bert":
            raise ArgumentError(f"model_type: expected 'bert', got {d['model_type']!r}")
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, path) -> "BertConfig":
        """Read a Hugging Face ``config.json``."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"path: no config file at {path!r}")
        d = read_json(path, "path")
        if not isinstance(d, dict):
            raise CorruptFileError(f"path: {path!r} holds a JSON {type(d).__name__}, expected an object")
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return asdict(self)

    def model_kwargs(self) -> dict:
        """Keyword arguments of :class:`refcompress.nn.BertModel` (without the pooler flag)."""
        return {k: getattr(self, k) for k in _INT_FIELDS} | {
            "layer_norm_eps": float(self.layer_norm_eps), "pad_token_id": int(self.pad_token_id)}
