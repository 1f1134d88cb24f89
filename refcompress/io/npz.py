"""Save and load models as one ``.npz`` file: arrays plus verified JSON metadata.

The container is a ZIP archive (stored, not compressed) that ``numpy.load`` also reads:

    refcompress.json      UTF-8 JSON metadata (the first entry)
    <name>.npy            one NumPy .npy entry per state-dict array, e.g. "0.weight.npy"

The metadata holds

    format               "refcompress.model"
    format_version       1 (FORMAT_VERSION)
    refcompress_version  the version that wrote the file
    architecture         refcompress.nn.to_spec(model): {"type", "config", "children"}
    modules              the Python modules defining the layer types used (loading
                         imports those under ``refcompress.`` so their layers register)
    arrays               [{"name", "shape", "dtype", "sha256"}, ...] in state-dict order;
                         dtype is numpy's ``dtype.str`` (e.g. "<f4"), sha256 the hex
                         SHA-256 of the array's C-order bytes (the .npy data section)
    user                 the caller's JSON-serialisable ``metadata`` (or {})

Guarantees.  :func:`save` writes a temporary file in the target's directory, flushes
and fsyncs it, then ``os.replace``s it over the target (and fsyncs the directory), so
the target is always either the old complete file or the new complete file, never a
mixture: a crash or an exception mid-write leaves the old file untouched and removes the
temporary.  :func:`load` verifies everything (ZIP structure and CRCs, metadata fields,
the set of entries, each array's header against its shape and dtype, each checksum, the
architecture, and the state dict against the built model) before it returns a model; any
failure raises :class:`~refcompress.errors.CorruptFileError` and no model.  Nothing is
unpickled: object arrays are refused.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import zipfile
import zlib

import numpy as np

from .. import __version__, nn
from ..errors import ArgumentError, CorruptFileError, DTypeError, RefcompressError, ShapeError
from .atomic import atomic_write, check_output_path, check_path

__all__ = ["save", "load", "read_metadata", "FORMAT_NAME", "FORMAT_VERSION", "METADATA_ENTRY"]

FORMAT_NAME = "refcompress.model"
FORMAT_VERSION = 1
METADATA_ENTRY = "refcompress.json"
# The refcompress modules whose import registers layer types: the only ones a file's
# "modules" may name from refcompress (load imports them); tests/io check that every
# registered refcompress layer is defined in one of them.
LAYER_MODULES = frozenset({
    "refcompress.nn.container", "refcompress.nn.layers", "refcompress.nn.norm", "refcompress.nn.pooling",
    "refcompress.nn.transformer", "refcompress.lowrank.layers", "refcompress.pipeline.deep_compression",
    "refcompress.prune.sparse_layers", "refcompress.quant.modules", "refcompress.quant.qat",
    "refcompress.quant.w8a8", "refcompress.quant.weight_sharing",
})
# How deep the user's metadata may nest (dicts and lists): well inside json's recursion
# limit on reading, whatever the writer managed.
MAX_METADATA_DEPTH = 500
# A fixed timestamp in every ZIP entry: the same model always gives the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# What a damaged archive or .npy entry can raise while being read: zipfile raises
# NotImplementedError for a damaged "version needed" field and RuntimeError for a damaged
# "encrypted" flag; json raises RecursionError (a RuntimeError) for absurd nesting.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
                ValueError, KeyError, UnicodeDecodeError, NotImplementedError, RuntimeError)


def _storable(dtype: np.dtype) -> bool:
    # Plain little-endian (or byte-order-free) numbers and booleans: what state dicts hold,
    # and what load_state_dict can compare by dtype without surprises.
    return dtype.kind in "biufc" and dtype.fields is None and dtype.byteorder != ">"


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(a, order="C").tobytes()).hexdigest()


def _module_paths(model) -> list:
    return sorted({type(m).__module__ for m in model.modules()})


# -- writing ---------------------------------------------------------------------------
def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _write_array(zf: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    with zf.open(_zip_info(name + ".npy"), "w", force_zip64=arr.nbytes > 2**30) as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)


def _write_container(fileobj, meta_bytes: bytes, arrays: dict) -> None:
    with zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_zip_info(METADATA_ENTRY), meta_bytes)
        for name, arr in arrays.items():
            _write_array(zf, name, arr)


def canonical(arr: np.ndarray) -> np.ndarray:
    """``arr`` in C order, a bool array as 0 / 1 bytes: NumPy's bool is a byte that may
    hold any value (a view of uint8 data), safetensors allows only 0 and 1, and the
    SHA-256 must be of the bytes written."""
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8) != 0
    return np.asarray(arr, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def describe_model(model, metadata):
    """(meta, arrays): the metadata dict of the module docstring and the state dict to
    store, after every check that can refuse ``model`` or ``metadata`` (both formats)."""
    if not isinstance(model, nn.Module):
        raise DTypeError(f"model: expected a refcompress.nn.Module, got {type(model).__name__}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DTypeError(f"metadata: expected a dict or None, got {type(metadata).__name__}")
    spec = nn.to_spec(model)
    arrays = {}
    for name, arr in model.state_dict().items():
        if not _storable(arr.dtype):
            raise DTypeError(f"model: state-dict array {name!r} has dtype {arr.dtype.str!r}; expected a "
                             "little-endian bool, integer, float or complex dtype")
        arrays[name] = canonical(arr)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "refcompress_version": __version__,
        "architecture": spec,
        "modules": _module_paths(model),
        "arrays": [{"name": k, "shape": list(a.shape), "dtype": a.dtype.str, "sha256": _sha256(a)}
                   for k, a in arrays.items()],
        "user": metadata,
    }
    return meta, arrays


def _check_keys(user) -> None:
    """Every dict in ``user`` has str keys: json.dumps would turn 1, 1.5, True, None into
    strings (so ``{1: "x", "1": "y"}`` would name "1" twice and the file be refused); and
    it nests at most MAX_METADATA_DEPTH levels (near Python's recursion limit json.dumps
    may still write what json.loads then refuses)."""
    def where(node):  # node: (parent node, key) or None for the top
        keys = []
        while node is not None:
            node, key = node
            keys.append(f"[{key!r:.100}]")
        return ("metadata" + "".join(reversed(keys)))[:300]

    stack = [(user, None, 0)]
    while stack:
        obj, node, depth = stack.pop()
        if isinstance(obj, (dict, list, tuple)) and depth >= MAX_METADATA_DEPTH:
            raise ArgumentError(f"metadata: nested more than {MAX_METADATA_DEPTH} levels deep (at {where(node)}); "
                                "expected a shallower dict (files must stay readable by JSON parsers)")
        if isinstance(obj, dict):
            for k, v in obj.items():
                if not isinstance(k, str):
                    raise ArgumentError(f"{where(node)}: keys must be str (JSON object names), got {k!r:.100} "
                                        f"({type(k).__name__})")
                stack.append((v, (node, k), depth + 1))
        elif isinstance(obj, (list, tuple)):
            stack.extend((v, (node, i), depth + 1) for i, v in enumerate(obj))


def encode_metadata(meta: dict, **json_options) -> str:
    """``meta`` as JSON text; a user ``metadata`` JSON cannot hold (or that would not read
    back as itself: non-str keys) is an ArgumentError."""
    _check_keys(meta["user"])
    try:
        return json.dumps(meta, allow_nan=False, **json_options)
    except (TypeError, ValueError) as e:
        raise ArgumentError(f"metadata: expected a JSON-serialisable dict: {e}") from None
    except RecursionError:
        raise ArgumentError("metadata: nested too deeply to be stored as JSON (Python's recursion limit)") from None


def save(model, path, *, metadata=None) -> str:
    """Write ``model`` (architecture and state dict) to ``path`` as an npz file, atomically;
    return the path.  (``refcompress.io.save`` picks this format for a ``.npz`` path.)

    model    : a refcompress.nn.Module whose every layer type is registered
               (``nn.register_module``), so that ``nn.to_spec`` can describe it.
    path     : target file (conventionally ``*.npz``); its directory must exist.  An
               existing file is replaced only once the new one is complete on disk.
    metadata : optional JSON-serialisable dict stored under "user" (e.g. the accuracy
               and seed of a trained model); :func:`read_metadata` returns it.
    """
    path = check_output_path(path)
    meta, arrays = describe_model(model, metadata)
    meta_bytes = encode_metadata(meta, indent=1).encode("utf-8")
    with atomic_write(path) as f:
        _write_container(f, meta_bytes, arrays)
    return path


# -- reading ---------------------------------------------------------------------------
def unique_object(pairs) -> dict:
    """``json.loads``' object_pairs_hook for file headers: a repeated name is damage (plain
    ``json.loads`` would keep the last value silently)."""
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"name {k!r} appears twice")
        d[k] = v
    return d


def shape_problem(shape, itemsize: int):
    """Why NumPy cannot allocate an array of ``shape`` (a list of non-negative ints) and
    ``itemsize``, or None.  NumPy multiplies the nonzero dims, so a 0 dim does not excuse
    the others from its limits."""
    if len(shape) > 64:
        return f"has {len(shape)} dimensions, more than NumPy's 64"
    if math.prod(d or 1 for d in shape) * itemsize >= 2**63:
        return f"shape {shape!r:.200} is beyond NumPy's array size limit (2**63 bytes, counting the nonzero dims)"
    return None


def check_metadata(meta, where: str) -> None:
    def bad(msg):
        raise CorruptFileError(f"{where}: {msg}")

    if not isinstance(meta, dict):
        bad(f"metadata is a {type(meta).__name__}, expected a JSON object")
    if meta.get("format") != FORMAT_NAME:
        bad(f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r} (not a refcompress model file)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        bad(f"format_version is {version!r}; this refcompress ({__version__}) reads version "
            f"{FORMAT_VERSION} (file written by refcompress {meta.get('refcompress_version')!r})")
    for key, kind in (("architecture", dict), ("arrays", list), ("modules", list), ("user", dict)):
        if not isinstance(meta.get(key), kind):
            bad(f"metadata field {key!r} is missing or not a JSON {kind.__name__}")
    for mod in meta["modules"]:
        if isinstance(mod, str) and (mod == "refcompress" or mod.startswith("refcompress.")) \
                and mod not in LAYER_MODULES:
            bad(f"modules lists {mod!r:.200}, which is not a refcompress module defining layers "
                f"(expected names from {', '.join(sorted(LAYER_MODULES))}); refusing to import it")
    seen = set()
    for i, entry in enumerate(meta["arrays"]):
        if not (isinstance(entry, dict) and set(entry) == {"name", "shape", "dtype", "sha256"}):
            bad(f"arrays[{i}] must have exactly the fields name, shape, dtype, sha256, got {entry!r:.200}")
        name, shape = entry["name"], entry["shape"]
        if not isinstance(name, str) or not name or name in seen:
            bad(f"arrays[{i}].name {name!r} is empty, not a string, or repeated")
        seen.add(name)
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape)):
            bad(f"arrays[{i}] ({name}): shape {shape!r} is not a list of non-negative ints")
        if not isinstance(entry["dtype"], str):
            bad(f"arrays[{i}] ({name}): dtype {entry['dtype']!r:.200} is not a string")
        try:
            dt = np.dtype(entry["dtype"])
        except (TypeError, ValueError, SyntaxError, OverflowError, MemoryError, RecursionError):
            # NumPy parses "(1000000000000,)f4" (ValueError) and "(1," (SyntaxError) too
            bad(f"arrays[{i}] ({name}): dtype {entry['dtype']!r:.200} is not a NumPy dtype")
        if not _storable(dt):
            bad(f"arrays[{i}] ({name}): dtype {entry['dtype']!r} is not a little-endian bool, integer, "
                "float or complex dtype")
        problem = shape_problem(shape, dt.itemsize)
        if problem:
            bad(f"arrays[{i}] ({name}): {dt.str} array {problem}")
        if not (isinstance(entry["sha256"], str) and len(entry["sha256"]) == 64):
            bad(f"arrays[{i}] ({name}): sha256 {entry['sha256']!r} is not a 64-digit hex digest")


def _read_npy_entry(zf: zipfile.ZipFile, entry: dict, where: str) -> np.ndarray:
    name = entry["name"]
    shape, dtype = tuple(entry["shape"]), np.dtype(entry["dtype"])
    with zf.open(name + ".npy") as f:
        major, minor = np.lib.format.read_magic(f)
        if (major, minor) == (1, 0):
            hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(f)
        elif (major, minor) in ((2, 0), (3, 0)):
            hshape, fortran, hdtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CorruptFileError(f"{where}: {name}.npy has unsupported .npy version {major}.{minor}")
        # The header is checked before any data is read, so a damaged header can never
        # make us allocate an array of its invented size.
        if hdtype.hasobject:
            raise CorruptFileError(f"{where}: {name}.npy holds Python objects; refusing to unpickle")
        if tuple(hshape) != shape or hdtype != dtype:
            raise CorruptFileError(
                f"{where}: array {name!r} is {hdtype.str} {tuple(hshape)} in the file, but the "
                f"metadata says {dtype.str} {shape}")
        if fortran:
            raise CorruptFileError(f"{where}: array {name!r} is in Fortran order; refcompress writes C order")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data = f.read(nbytes)
        if len(data) != nbytes or f.read(1):
            raise CorruptFileError(
                f"{where}: array {name!r} has {len(data)} data bytes, expected exactly {nbytes}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CorruptFileError(f"{where}: array {name!r} fails its SHA-256 checksum (the data was altered)")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _read_verified(path: str):
    """(metadata, {name: array}) after every check, or CorruptFileError."""
    where = path
    try:
        zf = zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile as e:
        raise CorruptFileError(f"{where}: not a readable ZIP/npz archive (truncated or damaged: {e})") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # not about the file's content
    except _READ_ERRORS as e:
        raise CorruptFileError(f"{where}: damaged archive ({type(e).__name__}: {e})") from None
    with zf:
        try:
            names = zf.namelist()
            if METADATA_ENTRY not in names:
                raise CorruptFileError(f"{where}: no {METADATA_ENTRY} entry (not a refcompress model file)")
            try:
                meta = json.loads(zf.read(METADATA_ENTRY).decode("utf-8"), object_pairs_hook=unique_object)
            except ValueError as e:  # JSONDecodeError, bad UTF-8, or a repeated name
                raise CorruptFileError(f"{where}: {METADATA_ENTRY} is not valid JSON ({e})") from None
            check_metadata(meta, where)
            expected = {e["name"] + ".npy" for e in meta["arrays"]} | {METADATA_ENTRY}
            missing = sorted(expected - set(names))
            extra = sorted(set(names) - expected)
            if missing or extra or len(names) != len(set(names)):
                raise CorruptFileError(
                    f"{where}: entries do not match the metadata: missing {missing}, unexpected "
                    f"{extra}" + (", duplicated entries" if len(names) != len(set(names)) else ""))
            arrays = {e["name"]: _read_npy_entry(zf, e, where) for e in meta["arrays"]}
        except CorruptFileError:
            raise
        except _READ_ERRORS as e:
            raise CorruptFileError(f"{where}: damaged archive ({type(e).__name__}: {e})") from None
    return meta, arrays


def _import_layer_modules(meta) -> None:
    # Only the refcompress modules of LAYER_MODULES are imported on a file's say-so (checked
    # by check_metadata): a file must never choose code to import, not even refcompress's
    # own (``refcompress.__main__`` would run the CLI).
    for mod in meta["modules"]:
        if mod in LAYER_MODULES:
            importlib.import_module(mod)


def build_model(path: str, meta: dict, arrays: dict):
    """The model of verified ``meta`` holding ``arrays``, in eval mode (steps 7-8 of
    docs/io.md, shared by both formats); CorruptFileError naming ``path`` otherwise."""
    _import_layer_modules(meta)
    gen = nn.init.get_rng()
    rng_state = gen.bit_generator.state
    try:
        model = nn.from_spec(meta["architecture"])
    except (RefcompressError, TypeError, ValueError, LookupError, AttributeError, ArithmeticError,
            RecursionError, MemoryError) as e:
        # ArithmeticError: a zero or absurd number in a layer's config (groups 0, a size
        # that overflows); MemoryError: a size nothing can allocate
        raise CorruptFileError(f"{path}: the architecture cannot be built "
                               f"({type(e).__name__}: {e})") from None
    finally:
        gen.bit_generator.state = rng_state
    # A model saved after model.to(float64) rebuilds as float32; follow the saved dtype.
    # (Buffers too: BatchNorm1d(affine=False) has float buffers and no parameters.)
    float_dtypes = {a.dtype for a in arrays.values() if a.dtype.kind == "f"}
    built = [p.dtype for p in model.parameters()] + [b.dtype for _, b in model.named_buffers()
                                                     if b is not None and b.dtype.kind == "f"]
    if len(float_dtypes) == 1 and built and built[0] not in float_dtypes:
        try:
            model.to(next(iter(float_dtypes)))
        except DTypeError as e:  # a deployment layer that computes in float32 only
            raise CorruptFileError(f"{path}: the arrays do not fit the architecture: {e}") from None
    try:
        model.load_state_dict(arrays, strict=True)
    except (ArgumentError, ShapeError, DTypeError) as e:
        raise CorruptFileError(f"{path}: the arrays do not fit the architecture: {e}") from None
    return model.eval()


def read_metadata(path) -> dict:
    """The verified metadata dict of a saved model (the fields of the module docstring).

    The whole file is verified as by :func:`load` (except building the model); the
    caller's ``metadata`` from :func:`save` is under ``"user"``.
    """
    meta, _ = _read_verified(check_path(path))
    return meta


def load(path):
    """Rebuild the model saved at ``path`` and return it, in eval mode.

    Every check of the module docstring passes before the model exists; otherwise
    :class:`~refcompress.errors.CorruptFileError` names the file and the problem
    (FileNotFoundError when there is no file).  Arrays come back with their saved shapes
    and dtypes, and the model's outputs equal the saved model's exactly.  The shared
    random generator of ``nn.manual_seed`` is left as it was (building the layers draws
    initial weights that the saved ones then replace).
    """
    path = check_path(path)
    meta, arrays = _read_verified(path)
    return build_model(path, meta, arrays)
