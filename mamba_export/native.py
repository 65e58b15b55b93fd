"""Paths of the native libraries built from plugins/ (see README, "Building")."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MissingDependencyError

LIB_DIR = Path(__file__).parent / "_lib"
ORT_LIBRARY_ENV = "MAMBA_EXPORT_ORT_LIBRARY"


def _library(file_name: str, env: str, what: str, build: str) -> str:
    """``build``: how to build it, naming what plugins/CMakeLists.txt needs before it builds
    the library at all (without it, `make native` succeeds and skips the library)."""
    override = os.environ.get(env)
    if override:
        if not Path(override).is_file():
            raise MissingDependencyError(f"{env}={override}: no such file")
        return str(Path(override).resolve())
    path = LIB_DIR / file_name
    if not path.is_file():
        raise MissingDependencyError(f"{what} ({file_name}) is not built: {build}, or point {env} at a built copy")
    return str(path)


def custom_op_library() -> str:
    """The ONNX Runtime custom-op library implementing the ``mamba`` domain."""
    return _library("libmamba_ort.so", ORT_LIBRARY_ENV, "The ONNX Runtime custom-op library",
                    "run `make native` in the repository (or `pip install .`)")


# MAMBA_EXPORT_CUDA=ON: CMake fails where nvcc is missing instead of skipping the kernels.
_CUDA_BUILD = "CMAKE_ARGS=-DMAMBA_EXPORT_CUDA=ON"


def kernels_library() -> str:
    """The shared CUDA kernels (C ABI of plugins/include/mamba_kernels.h)."""
    return _library("libmamba_kernels.so", "MAMBA_EXPORT_KERNELS_LIBRARY", "The CUDA kernel library",
                    f"it needs nvcc (CUDA >= 13): {_CUDA_BUILD} make native")


def tensorrt_plugin_library() -> str:
    """The TensorRT plugin library (IPluginV3 creators for the ``mamba`` ops)."""
    return _library("libmamba_trt.so", "MAMBA_EXPORT_TRT_PLUGIN", "The TensorRT plugin library",
                    f"it needs nvcc (CUDA >= 13) and TensorRT's headers: {_CUDA_BUILD} "
                    "TENSORRT_INCLUDE_DIR=<TensorRT>/include make native (docs/tensorrt.md, 'Building the plugin')")
