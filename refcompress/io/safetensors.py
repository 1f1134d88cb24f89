"""Read and write safetensors files with NumPy alone (no ``safetensors`` package needed).

The format (https://huggingface.co/docs/safetensors, "Format"):

    8 bytes      N, the header length, an unsigned 64-bit little-endian integer
    N bytes      the header: UTF-8 JSON object starting with "{", possibly padded at the
                 end with spaces; one entry per tensor,
                     "<name>": {"dtype": "F32", "shape": [3, 4], "data_offsets": [begin, end]}
                 and optionally "__metadata__": {string: string}
    the rest     the byte buffer: every tensor's little-endian, C-order bytes; offsets are
                 relative to the buffer's start, and the tensors cover it exactly (no hole,
                 no overlap, nothing after the last one)

:func:`save_arrays` / :func:`load_arrays` move plain dicts of arrays in and out of any
safetensors file.  :func:`save` / :func:`load` store a whole refcompress model: the
tensors are its state dict under its own names, and ``__metadata__["refcompress"]`` holds
the JSON metadata an npz file keeps in ``refcompress.json`` (architecture, modules, the
arrays with their SHA-256, the user's metadata), so a refcompress file is verified on
load as fully as an npz one.  ``refcompress.io.save`` / ``load`` choose this module for a
``.safetensors`` file.  See docs/io.md for the dtype table and every check.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np

from ..errors import ArgumentError, CorruptFileError, DTypeError
from . import npz
from .atomic import atomic_write, check_output_path, check_path

__all__ = ["save", "load", "read_metadata", "save_arrays", "load_arrays", "read", "METADATA_KEY",
           "DIGEST_KEY"]

#: The ``__metadata__`` key holding a refcompress model's JSON metadata.
METADATA_KEY = "refcompress"
#: The ``__metadata__`` key holding the hex SHA-256 of the UTF-8 bytes of the
#: ``METADATA_KEY`` string exactly as stored (the architecture a model is built from has
#: no other protection: the tensors have their own SHA-256s, the npz form the ZIP CRC).
#: Files saved before it existed lack it and are read as before; a file that has it is
#: verified before anything in the metadata is used.
DIGEST_KEY = "refcompress.sha256"
# The format's dtype codes that NumPy holds exactly (little-endian, C order).
_DTYPES = {
    "BOOL": np.dtype("|b1"), "U8": np.dtype("|u1"), "I8": np.dtype("|i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
}
_CODES = {dt: code for code, dt in _DTYPES.items()}
# bfloat16 is the top half of a float32, so widening it is exact (NaN payloads included).
_BF16 = "BF16"
# Codes of the format with no NumPy dtype: refused by name rather than called unknown.
_NO_NUMPY_TYPE = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4")
# The reference (Rust) reader's limit: a larger N is damage, not a header.
MAX_HEADER_BYTES = 100_000_000
_TENSOR_KEYS = {"dtype", "shape", "data_offsets"}


# -- writing ---------------------------------------------------------------------------
def _code(name: str, arr: np.ndarray, what: str) -> str:
    code = _CODES.get(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype)
    if code is None:
        raise DTypeError(
            f"{what}: array {name!r} has dtype {arr.dtype.str!r}, which safetensors cannot hold; expected "
            f"one of {', '.join(dt.name for dt in _DTYPES.values())}"
            + ("; save the model as .npz instead" if what == "model" else ""))
    return code


def _check_utf8(text: str, what: str) -> None:
    """The header is UTF-8: a str with a lone surrogate (e.g. from a mis-decoded file name)
    has no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ArgumentError(f"{what} {text!r:.200} is not valid Unicode ({e.reason} at index {e.start}); "
                            "safetensors headers are UTF-8") from None


def _write(path: str, arrays: dict, metadata, what: str = "arrays", user=None) -> None:
    """``arrays`` (name -> C-order ndarray, dtypes checked) and the ``__metadata__`` dict
    (or None) as one safetensors file at ``path``, atomically.  A header over the format's
    limit is an ArgumentError naming ``metadata`` when the caller's metadata (``user``,
    by default ``metadata``) is most of it, ``what`` otherwise; nothing is written."""
    # Data in decreasing itemsize (powers of two), then a header padded to a multiple of 8:
    # every tensor then starts at an offset its itemsize divides, so a reader can map it in
    # place.  (Not dtype.alignment: complex64's is 4, its itemsize 8.)
    order = sorted(arrays, key=lambda k: -arrays[k].dtype.itemsize)
    offsets, end = {}, 0
    for k in order:
        offsets[k] = (end, end + arrays[k].nbytes)
        end += arrays[k].nbytes
    header = {} if metadata is None else {"__metadata__": metadata}
    for k, a in arrays.items():
        header[k] = {"dtype": _code(k, a, "arrays"), "shape": list(a.shape), "data_offsets": list(offsets[k])}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    if len(text) > MAX_HEADER_BYTES:
        user = metadata if user is None else user
        meta_len = 0 if user is None else len(json.dumps(user, ensure_ascii=False).encode("utf-8"))
        raise ArgumentError(
            f"{'metadata' if 2 * meta_len > len(text) else what}: the safetensors header would be "
            f"{len(text)} bytes ({meta_len} of them metadata), over the format's limit of {MAX_HEADER_BYTES} "
            "(readers refuse a longer one); nothing was written")
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for k in order:
            f.write(np.ascontiguousarray(arrays[k]).reshape(-1).view(np.uint8).data)


def save_arrays(arrays, path, metadata=None) -> str:
    """Write ``arrays`` (a dict of name -> ndarray) to ``path`` as a safetensors file,
    atomically; return the path.

    Any reader of the format (the tests check the ``safetensors`` package's) gets the
    arrays back with the same names, shapes, dtypes and bits.  Big-endian or non-contiguous arrays are stored as little-endian C-order
    copies (same values).  ``metadata`` is the format's ``__metadata__``: a dict of str to
    str (or None for none).  The file is safetensors whatever ``path``'s extension.
    """
    if not isinstance(arrays, dict):
        raise DTypeError(f"arrays: expected a dict of name -> numpy.ndarray, got {type(arrays).__name__}")
    out = {}
    for k, a in arrays.items():
        if not isinstance(k, str):
            raise DTypeError(f"arrays: names must be str, got {k!r}")
        if k == "__metadata__":
            raise ArgumentError("arrays: the name '__metadata__' is reserved by the safetensors format")
        _check_utf8(k, "arrays: name")
        if not isinstance(a, (np.ndarray, np.generic)):
            raise DTypeError(f"arrays[{k!r}]: expected a numpy.ndarray, got {type(a).__name__}")
        a = np.asarray(a)
        _code(k, a, "arrays")
        # (a bool array as 0 / 1 bytes: load_arrays refuses others)
        out[k] = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C") if a.dtype.byteorder == ">" \
            else npz.canonical(a)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise DTypeError(f"metadata: expected a dict of str to str (the safetensors __metadata__) or None, "
                         f"got {metadata!r:.200}")
    if metadata is not None:
        for key in (METADATA_KEY, DIGEST_KEY):
            if key in metadata:
                # load_arrays reads these keys as a refcompress model's metadata and verifies it
                raise ArgumentError(f"metadata: the key {key!r} is reserved for refcompress model "
                                    "files (refcompress.io.save writes it)")
        for k, v in metadata.items():
            _check_utf8(k, "metadata: key")
            _check_utf8(v, f"metadata[{k!r}]: value")
    path = check_output_path(path)
    _write(path, out, metadata)
    return path


def save(model, path, *, metadata=None) -> str:
    """Write ``model`` to ``path`` as a refcompress safetensors file, atomically; return
    the path.  Arguments as :func:`refcompress.io.npz.save`; the state dict must hold only
    dtypes of the format (complex128, for one, needs ``.npz``)."""
    path = check_output_path(path)
    meta, arrays = npz.describe_model(model, metadata)
    for k, a in arrays.items():
        _code(k, a, "model")
    text = npz.encode_metadata(meta, separators=(",", ":"))
    _write(path, arrays, {METADATA_KEY: text, DIGEST_KEY: _digest(text)}, "model", meta["user"])
    return path


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- reading ---------------------------------------------------------------------------
def _read_header(f, size: int, where: str):
    """(tensors, metadata, header_end): tensors is [(name, code, shape, begin, end)] in
    offset order after every layout check; metadata the ``__metadata__`` dict or None."""
    def bad(msg):
        raise CorruptFileError(f"{where}: {msg}")

    head = f.read(8)
    if len(head) < 8:
        bad(f"{size} bytes is too short for a safetensors file (8-byte header length missing)")
    n = struct.unpack("<Q", head)[0]
    if n > MAX_HEADER_BYTES:
        bad(f"header length {n} exceeds the format's limit of {MAX_HEADER_BYTES} bytes (damaged or not safetensors)")
    if 8 + n > size:
        bad(f"header length {n} runs past the end of the {size}-byte file (truncated?)")
    raw = f.read(n)
    if len(raw) != n:
        bad(f"file ended inside the header ({len(raw)} of {n} bytes)")
    if not raw.startswith(b"{"):
        bad("header does not start with '{' (not a safetensors file)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=npz.unique_object)
    except UnicodeDecodeError as e:
        bad(f"header is not UTF-8 ({e})")
    except ValueError as e:  # JSONDecodeError, or a repeated name from unique_object
        bad(f"header is not valid JSON ({e})")
    except RecursionError:
        bad("header JSON is nested too deeply")
    if not isinstance(header, dict):
        bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        bad("__metadata__ is not an object of string values")
    tensors = []
    for name, info in header.items():
        if not (isinstance(info, dict) and set(info) == _TENSOR_KEYS):
            bad(f"tensor {name!r} must have exactly the fields dtype, shape, data_offsets, got {info!r:.200}")
        code, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str):
            bad(f"tensor {name!r}: dtype {code!r:.200} is not a string")
        if code in _NO_NUMPY_TYPE:
            raise DTypeError(f"{where}: tensor {name!r} has dtype {code}, which NumPy cannot represent; "
                             f"refcompress reads {', '.join(list(_DTYPES) + [_BF16])}")
        if code != _BF16 and code not in _DTYPES:
            bad(f"tensor {name!r} has unknown dtype {code!r:.40}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            bad(f"tensor {name!r}: shape {shape!r:.200} is not a list of non-negative ints")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int and o >= 0 for o in offs)
                and offs[0] <= offs[1]):
            bad(f"tensor {name!r}: data_offsets {offs!r:.200} is not a pair [begin, end] of ints, 0 <= begin <= end")
        itemsize = 2 if code == _BF16 else _DTYPES[code].itemsize
        nbytes = itemsize
        for d in shape:
            nbytes *= d
        if nbytes != offs[1] - offs[0]:
            bad(f"tensor {name!r}: {code} {tuple(shape)} needs {nbytes} bytes but data_offsets {offs} span "
                f"{offs[1] - offs[0]}")
        problem = npz.shape_problem(shape, itemsize)  # a 0 dim passes the size check above
        if problem:
            bad(f"tensor {name!r}: {code} tensor {problem}")
        tensors.append((name, code, tuple(shape), offs[0], offs[1]))
    tensors.sort(key=lambda t: (t[3], t[4]))
    end = 0
    for name, _, _, begin, stop in tensors:
        if begin != end:
            bad(f"tensor {name!r} starts at buffer byte {begin}, expected {end} "
                f"({'overlapping the previous tensor' if begin < end else 'leaving a hole'})")
        end = stop
    if 8 + n + end != size:
        bad(f"the tensors end at byte {8 + n + end} but the file has {size} bytes "
            f"({'truncated' if 8 + n + end > size else 'trailing bytes no tensor covers'})")
    return tensors, metadata


def _read_data(f, tensors, where: str) -> dict:
    """name -> array, read in offset order (the file is positioned at the buffer)."""
    out = {}
    for name, code, shape, begin, stop in tensors:
        a = np.empty(shape, np.dtype("<u2") if code == _BF16 else _DTYPES[code])
        got = f.readinto(a.reshape(-1).view(np.uint8).data) if a.size else 0
        if got != stop - begin:
            raise CorruptFileError(f"{where}: file ended inside tensor {name!r} (truncated)")
        if code == "BOOL" and a.size and a.view(np.uint8).max() > 1:
            raise CorruptFileError(f"{where}: BOOL tensor {name!r} holds bytes other than 0 and 1")
        if code == _BF16:
            # (np.asarray: a 0-d array shifted is a NumPy scalar)
            a = np.asarray(a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a
    return out


def _check_refcompress(meta_text: str, digest, tensors, where: str) -> dict:
    """The verified refcompress metadata, consistent with the header's tensors.  ``digest``
    is the ``DIGEST_KEY`` value, or None for a file saved before that key existed."""
    if digest is not None and _digest(meta_text) != digest:
        raise CorruptFileError(f"{where}: __metadata__[{METADATA_KEY!r}] fails its SHA-256 checksum "
                               f"(__metadata__[{DIGEST_KEY!r}]): the metadata was altered")
    try:
        meta = json.loads(meta_text, object_pairs_hook=npz.unique_object)
    except ValueError as e:
        raise CorruptFileError(f"{where}: __metadata__[{METADATA_KEY!r}] is not valid JSON ({e})") from None
    except RecursionError:
        raise CorruptFileError(f"{where}: __metadata__[{METADATA_KEY!r}] is nested too deeply") from None
    npz.check_metadata(meta, where)
    header = {name: (code, shape) for name, code, shape, _, _ in tensors}
    records = {e["name"]: e for e in meta["arrays"]}
    missing, extra = sorted(set(records) - set(header)), sorted(set(header) - set(records))
    if missing or extra:
        raise CorruptFileError(f"{where}: tensors do not match the metadata: missing {missing}, unexpected {extra}")
    for name, e in records.items():
        code, shape = header[name]
        if shape != tuple(e["shape"]) or code != _CODES.get(np.dtype(e["dtype"])):
            raise CorruptFileError(f"{where}: tensor {name!r} is {code} {shape} in the header, but the metadata "
                                   f"says {e['dtype']} {tuple(e['shape'])}")
    return meta


def _verify_checksums(meta: dict, arrays: dict, where: str) -> dict:
    """``arrays`` in the metadata's (state-dict) order once every SHA-256 matches."""
    for e in meta["arrays"]:
        if hashlib.sha256(arrays[e["name"]].tobytes()).hexdigest() != e["sha256"]:
            raise CorruptFileError(f"{where}: tensor {e['name']!r} fails its SHA-256 checksum (the data was altered)")
    return {e["name"]: arrays[e["name"]] for e in meta["arrays"]}


def _read(path: str):
    """(arrays, metadata, meta): as :func:`read`, and the verified refcompress metadata
    dict (None for a file without it)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        tensors, metadata = _read_header(f, size, path)
        meta = None
        if metadata is not None and METADATA_KEY in metadata:
            meta = _check_refcompress(metadata[METADATA_KEY], metadata.get(DIGEST_KEY), tensors, path)
        arrays = _read_data(f, tensors, path)
    if meta is not None:
        arrays = _verify_checksums(meta, arrays, path)
    return arrays, ({} if metadata is None else metadata), meta


def read(path):
    """(arrays, metadata) of any safetensors file after every check of docs/io.md:
    arrays name -> ndarray in file order (a refcompress model's: state-dict order),
    metadata the ``__metadata__`` dict (or {}).  When the file carries refcompress
    metadata, it is verified too, checksums included."""
    arrays, metadata, _ = _read(check_path(path))
    return arrays, metadata


def load_arrays(path) -> dict:
    """Every tensor of the safetensors file at ``path`` as a dict of name -> ndarray.

    Any writer's file is read (PyTorch's, JAX's, the Rust crate's, :func:`save_arrays`'s):
    the header is checked completely before any data is read and the whole file must be
    consistent, or :class:`~refcompress.errors.CorruptFileError` names the file and the
    problem and nothing is returned.  BF16 tensors are widened to float32 (exact); the
    float8 / float6 / float4 codes are refused (DTypeError).  A file written by
    refcompress is also checked against its SHA-256 checksums.  Put the arrays into a
    model with ``model.load_state_dict(arrays)``.
    """
    return read(path)[0]


def _read_model(path: str):
    """(meta, arrays) of a refcompress model file, verified."""
    arrays, _, meta = _read(path)
    if meta is None:
        raise CorruptFileError(
            f"{path}: no {METADATA_KEY!r} entry in the safetensors __metadata__ (not a refcompress model "
            "file); read its tensors with refcompress.io.load_arrays and put them in a model with "
            "model.load_state_dict")
    return meta, arrays


def read_metadata(path) -> dict:
    """The verified refcompress metadata of a model saved as safetensors (as npz's)."""
    return _read_model(check_path(path))[0]


def load(path):
    """Rebuild the model saved at ``path`` by :func:`save`, in eval mode, after every
    check (as :func:`refcompress.io.npz.load`)."""
    path = check_path(path)
    meta, arrays = _read_model(path)
    return npz.build_model(path, meta, arrays)
