"""refcompress.io: save and load models (npz or safetensors, with verified metadata),
plain arrays (safetensors), and ONNX out (float and exact integer graphs) and in (float chains).

See docs/io.md for the formats, the atomic-write guarantee and the checks made on load.
"""

from .atomic import atomic_write, check_output_path
from .formats import MODEL_FORMATS, check_model_path, load, read_metadata, save
from .npz import FORMAT_NAME, FORMAT_VERSION, METADATA_ENTRY
from .safetensors import load_arrays, save_arrays
from .onnx import export_onnx, import_onnx

__all__ = ["save", "load", "read_metadata", "save_arrays", "load_arrays", "atomic_write",
           "check_output_path", "check_model_path", "MODEL_FORMATS",
           "FORMAT_NAME", "FORMAT_VERSION", "METADATA_ENTRY"]
__all__ += ["export_onnx", "import_onnx"]
