"""refcompress.io: save and load models (one npz file: arrays + verified JSON metadata).

See docs/io.md for the format, the atomic-write guarantee and the checks made on load.
"""

from .npz import FORMAT_NAME, FORMAT_VERSION, METADATA_ENTRY, load, read_metadata, save

__all__ = ["save", "load", "read_metadata", "FORMAT_NAME", "FORMAT_VERSION", "METADATA_ENTRY"]
