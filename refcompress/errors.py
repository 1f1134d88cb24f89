"""Error classes of refcompress.

Each subclasses the builtin a caller would already catch (a ``ShapeError`` is still a
``ValueError``), so code written against NumPy conventions keeps working, while tests and
users can catch the narrower class.
"""


class RefcompressError(Exception):
    """Base class of every error raised on purpose by refcompress."""


class ShapeError(RefcompressError, ValueError):
    """An array argument has the wrong rank or a shape that does not match another."""


class DTypeError(RefcompressError, TypeError):
    """An array argument has a dtype the function does not accept."""


class ArgumentError(RefcompressError, ValueError):
    """A scalar or option argument is outside its allowed range or set."""


class BackendError(RefcompressError, RuntimeError):
    """A kernel backend or ISA variant was requested that is not built or not runnable."""


class CorruptFileError(RefcompressError, ValueError):
    """A saved file is truncated, fails its checksum, or does not match its metadata."""


class OverflowRiskError(RefcompressError, ValueError):
    """An integer accumulation could exceed its accumulator's range for these inputs."""


class NotDifferentiableError(RefcompressError, RuntimeError):
    """backward() was called on an inference-only layer (e.g. an integer layer)."""
