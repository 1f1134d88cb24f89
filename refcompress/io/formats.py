"""``refcompress.io.save`` / ``load`` / ``read_metadata``: one entry for both model formats.

``save`` picks the format from the path's extension; ``load`` and ``read_metadata`` from
the file's first bytes (a ZIP signature or a safetensors header), so a file renamed to
the wrong extension still loads.  See docs/io.md.
"""

from __future__ import annotations

import os

from ..errors import ArgumentError
from . import npz, safetensors
from .atomic import check_output_path, check_path

__all__ = ["save", "load", "read_metadata", "check_model_path", "MODEL_FORMATS"]

#: Extension (lower case) -> the module that writes and reads that format.
MODEL_FORMATS = {".npz": npz, ".safetensors": safetensors}


def _format_of_name(path: str, name: str):
    ext = os.path.splitext(path)[1]
    fmt = MODEL_FORMATS.get(ext.lower())
    if fmt is None:
        raise ArgumentError(f"{name}: {path!r} has {'extension ' + repr(ext) if ext else 'no extension'}; "
                            f"expected one of {', '.join(repr(e) for e in MODEL_FORMATS)} "
                            "(the extension chooses the format)")
    return fmt


def check_model_path(path, name: str = "path") -> str:
    """``path`` as a str once a model can be saved there: as :func:`check_output_path`,
    and its extension names a format.  Callers with long work check this before it."""
    path = check_output_path(path, name)
    _format_of_name(path, name)
    return path


def save(model, path, *, metadata=None) -> str:
    """Write ``model`` to ``path`` atomically, as npz (``*.npz``) or safetensors
    (``*.safetensors``); return the path.

    model    : a refcompress.nn.Module whose every layer type is registered
               (``nn.register_module``), so that ``nn.to_spec`` can describe it.
    path     : target file; its directory must exist.  An existing file is replaced only
               once the new one is complete on disk.
    metadata : optional JSON-serialisable dict stored with the model (e.g. the accuracy
               and seed of a trained model); ``read_metadata(path)["user"]`` returns it.
    """
    path = check_model_path(path)
    return _format_of_name(path, "path").save(model, path, metadata=metadata)


def _format_of_file(path: str):
    with open(path, "rb") as f:
        head = f.read(9)
    # The safetensors test comes first: a header length of 19280 + 65536 k starts with
    # "PK" too, while byte 8 of a ZIP (a compression method, 0 or 8) is never "{".
    if len(head) == 9 and head[8:9] == b"{":
        return safetensors
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return npz
    # Damaged beyond recognition: the extension says which reader names the problem best.
    return safetensors if os.path.splitext(path)[1].lower() == ".safetensors" else npz


def load(path):
    """Rebuild the model saved at ``path`` (npz or safetensors, told by its content) and
    return it in eval mode, after every check of docs/io.md; otherwise
    :class:`~refcompress.errors.CorruptFileError` names the file and the problem
    (FileNotFoundError when there is no file).  The model's outputs equal the saved
    model's exactly."""
    path = check_path(path)
    return _format_of_file(path).load(path)


def read_metadata(path) -> dict:
    """The verified metadata dict of a saved model (either format); the ``metadata``
    given to :func:`save` is under ``"user"``."""
    path = check_path(path)
    return _format_of_file(path).read_metadata(path)
