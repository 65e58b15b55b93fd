"""ONNX Runtime sessions that know the ``mamba`` custom-op domain (docs/ops.md)."""

from __future__ import annotations

import os

from ..errors import MissingDependencyError
from ..native import custom_op_library

# Marks session options that already carry the library: registering it twice makes ORT
# refuse the session ("Domain already set in registry").
_REGISTERED_KEY = "mamba_export.custom_op_library"


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(
            "onnxruntime is not installed: pip install onnxruntime (or `pip install mamba_export[onnx]`)"
        ) from e
    return onnxruntime


def ort_session(onnx_path: str | os.PathLike | bytes, providers=None, session_options=None):
    """An ``onnxruntime.InferenceSession`` for a model using the ``mamba`` ops.

    onnx_path: a model file (or its serialized bytes). providers: ORT execution providers,
    default ``["CPUExecutionProvider"]``. session_options: an ``onnxruntime.SessionOptions``
    to use; the custom-op library is registered on it (once, however often it is passed).
    ORT's defaults apply otherwise (all graph optimisations, its own thread count).
    """
    ort = _onnxruntime()
    library = custom_op_library()
    options = session_options if session_options is not None else ort.SessionOptions()
    try:
        options.get_session_config_entry(_REGISTERED_KEY)
    except RuntimeError:  # not registered on these options yet
        options.register_custom_ops_library(library)
        options.add_session_config_entry(_REGISTERED_KEY, library)
    model = onnx_path if isinstance(onnx_path, bytes) else os.fspath(onnx_path)
    return ort.InferenceSession(model, sess_options=options, providers=providers or ["CPUExecutionProvider"])
