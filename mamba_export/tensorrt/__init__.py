"""TensorRT engines with the mamba plugin: building (build_engine) and the Python API shim
(tensorrt, or TensorRT-RTX's tensorrt_rtx_bindings). See docs/tensorrt.md."""

from .build import build_engine, check_plan_path, onnx_input, read_engine_info, require_tensorrt
from .compat import build_unavailable, import_tensorrt, load_plugin, run_unavailable
from .profiles import DEFAULT_BATCH, DEFAULT_SEQUENCE, Profiles, ShapeRange

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_SEQUENCE",
    "Profiles",
    "ShapeRange",
    "build_engine",
    "build_unavailable",
    "check_plan_path",
    "import_tensorrt",
    "load_plugin",
    "onnx_input",
    "read_engine_info",
    "require_tensorrt",
    "run_unavailable",
]
