"""Atomic file writes: every file refcompress writes goes through :func:`atomic_write`.

The content goes to a new temporary file ``.<name>.<random>.tmp`` in the target's
directory (created with ``O_EXCL``), which is flushed, ``fsync``-ed and ``os.replace``-d
over the target, and then the directory is ``fsync``-ed.  ``os.replace`` is atomic within
one file system, so the target is always either the complete old file or the complete new
one; on any exception (``KeyboardInterrupt`` included) the temporary is removed and the
old file is left as it was.  See docs/io.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from ..errors import ArgumentError, DTypeError

__all__ = ["atomic_write", "check_output_path", "check_path"]


def check_path(path, name: str = "path") -> str:
    """``path`` (str or os.PathLike, not empty) as a str."""
    if not isinstance(path, (str, os.PathLike)):
        raise DTypeError(f"{name}: expected a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ArgumentError(f"{name}: expected a file path, got an empty string")
    return path


def check_output_path(path, name: str = "path") -> str:
    """``path`` as a str once it can be written: its directory exists and it is not a
    directory itself.  Callers with expensive work check this before doing it."""
    path = check_path(path, name)
    if os.path.isdir(path):
        raise ArgumentError(f"{name}: {path!r} is a directory; expected a file path")
    if os.path.basename(path) in ("", ".", "..") or path.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        # "m.npz/" names a directory: the write would fail only at the end, after the work
        raise ArgumentError(f"{name}: {path!r} ends in a path separator (or '.', '..'); expected a file path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ArgumentError(f"{name}: directory {directory!r} does not exist")
    return path


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, name: str = "path"):
    """Context manager yielding a binary file object whose content becomes ``path``
    (checked by :func:`check_output_path`) only when the block completes."""
    path = check_output_path(path, name)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never write into a file someone else owns; mode 0o666 lets the umask decide
    # the final permissions, as for any newly created file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
