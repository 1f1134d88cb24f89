"""refcompress.io: save and load models (one npz file: arrays + verified JSON metadata).

See docs/io.md for the format, the atomic-write guarantee and the checks made on load.
"""

from .atomic import atomic_write, check_output_path
from .npz import FORMAT_NAME, FORMAT_VERSION, METADATA_ENTRY, load, read_metadata, save
from .onnx import export_onnx, import_onnx

__all__ = ["save", "load", "read_metadata", "atomic_write", "check_output_path",
           "FORMAT_NAME", "FORMAT_VERSION", "METADATA_ENTRY"]
__all__ += ["export_onnx", "import_onnx"]
