"""mamba_export: export Mamba models to ONNX with the scan as one custom op, run them in
ONNX Runtime and TensorRT, validate against eager PyTorch and benchmark the backends."""

from .errors import CheckpointError, MambaExportError, MissingDependencyError
from .loading import load, save_pretrained
from .native import custom_op_library, kernels_library, tensorrt_plugin_library
from .ops import ContractError
from .runtime import ort_session
from .tensorrt import build_engine

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ContractError",
    "MambaExportError",
    "MissingDependencyError",
    "build_engine",
    "custom_op_library",
    "export_onnx",
    "kernels_library",
    "load",
    "ort_session",
    "save_pretrained",
    "tensorrt_plugin_library",
]


def __getattr__(name: str):
    # export_onnx needs onnx and onnxscript (optional dependencies): imported on first use.
    if name == "export_onnx":
        from .export.onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
