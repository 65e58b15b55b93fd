"""Running exported models: ONNX Runtime sessions with mamba_export's custom-op library."""

from .ort import ort_session

__all__ = ["ort_session"]
