"""ONNX Runtime sessions that know the ``mamba`` custom-op domain (docs/ops.md)."""

from __future__ import annotations

import ctypes
import json
import os

import torch

from ..errors import MambaExportError, MissingDependencyError, first_line
from ..native import ORT_LIBRARY_ENV, custom_op_library

# Marks session options that already carry the library: registering it twice makes ORT
# refuse the session ("Domain already set in registry").
_REGISTERED_KEY = "mamba_export.custom_op_library"


def import_onnxruntime():
    """onnxruntime, imported after torch: onnxruntime-gpu then finds the CUDA libraries torch loaded."""
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(
            "onnxruntime is not installed: pip install onnxruntime (or `pip install mamba_export[onnx]`)"
        ) from e
    return onnxruntime


def ort_session(onnx_path: str | os.PathLike | bytes, providers=None, session_options=None, custom_ops=True):
    """An ``onnxruntime.InferenceSession`` for a model using the ``mamba`` ops.

    onnx_path: a model file (or its serialized bytes). providers: ORT execution providers,
    names or (name, options) pairs, default ``["CPUExecutionProvider"]``; with
    ``"CUDAExecutionProvider"`` first (onnxruntime-gpu, a library built with CUDA) the mamba
    ops run on the GPU too. session_options: an ``onnxruntime.SessionOptions``
    to use; the custom-op library is registered on it (once, however often it is passed).
    ORT's defaults apply otherwise (all graph optimisations, its own thread count), but for
    one: the CUDA provider computes float32 matrix products in TF32 unless its options say
    ``use_tf32`` (see float32_cuda). A model ORT cannot load (missing, not ONNX, an invalid
    graph) raises MambaExportError. custom_ops=False: a portable export, which needs no
    library (nor its build).
    """
    ort = import_onnxruntime()
    options = session_options if session_options is not None else ort.SessionOptions()
    if custom_ops:
        _register_custom_ops(ort, options)
    model = onnx_path if isinstance(onnx_path, bytes) else os.fspath(onnx_path)
    try:
        return ort.InferenceSession(model, sess_options=options,
                                    providers=float32_cuda(providers or ["CPUExecutionProvider"]))
    except _load_errors(ort) as e:
        what = "the serialized model" if isinstance(model, bytes) else model
        raise MambaExportError(f"ONNX Runtime cannot load {what}: {first_line(e) or type(e).__name__}") from e


def _register_custom_ops(ort, options) -> None:
    """Registers the custom-op library on ``options`` unless it is already."""
    library = custom_op_library()
    try:
        options.get_session_config_entry(_REGISTERED_KEY)
        return
    except RuntimeError:  # not registered on these options yet
        pass
    try:
        options.register_custom_ops_library(library)
    except _load_errors(ort) as e:  # not a library, or one without RegisterCustomOps (e.g. our kernels')
        override = os.environ.get(ORT_LIBRARY_ENV)
        named, fix = ((f"{ORT_LIBRARY_ENV}={override}", "point it at libmamba_ort.so") if override
                      else (library, "rebuild it with `make native`"))  # fmt: skip
        raise MambaExportError(f"{named}: ONNX Runtime cannot register its custom ops ({first_line(e)}); {fix}") from e
    options.add_session_config_entry(_REGISTERED_KEY, library)


def float32_cuda(providers: list) -> list:
    """``providers`` with TF32 off in the CUDA provider's options unless they choose: its
    default rounds float32 products to 10-bit mantissas, which took float32 exports 3-15x past
    validate's 1e-4 on an H100 (docs/performance.md); a float32 graph gets float32 arithmetic."""
    def entry(provider):
        name, options = provider if isinstance(provider, tuple) else (provider, {})
        if name != "CUDAExecutionProvider":
            return provider
        return name, {"use_tf32": "0", **options}

    return [entry(p) for p in providers]


def _load_errors(ort) -> tuple[type[Exception], ...]:
    """The exceptions ORT raises for a model it cannot load (its Python API has no common base)."""
    state = ort.capi.onnxruntime_pybind11_state
    return (state.Fail, state.InvalidArgument, state.NoSuchFile, state.NoModel, state.InvalidProtobuf,
            state.InvalidGraph, state.NotImplemented, state.RuntimeException, state.EPFail)


def custom_op_providers() -> list[str]:
    """The execution providers the custom-op library has kernels for: CPU, and CUDA when it
    was built with the CUDA kernels. Raises MissingDependencyError when it is not built."""
    path = custom_op_library()
    try:
        library = ctypes.CDLL(path)
    except OSError as e:  # e.g. a CUDA build whose libmamba_kernels.so is not next to it
        raise MissingDependencyError(f"cannot load {path}: {e}") from None
    try:
        providers = library.mamba_ort_execution_providers
    except AttributeError:  # built before the CUDA op existed
        return ["CPUExecutionProvider"]
    providers.restype = ctypes.c_char_p
    return providers().decode().split(",")


def cuda_unavailable(needs_custom_op: bool = True) -> str | None:
    """Why the mamba ops cannot run on ONNX Runtime's CUDA execution provider here, or None."""
    ort = import_onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"this onnxruntime ({ort.__version__}) has no CUDA execution provider: "
                "pip install onnxruntime-gpu in place of onnxruntime")  # fmt: skip
    if needs_custom_op:
        try:
            providers = custom_op_providers()
        except MissingDependencyError as e:
            return str(e)
        if "CUDAExecutionProvider" not in providers:
            return ("the custom-op library was built without CUDA (no nvcc, or MAMBA_EXPORT_CUDA=OFF); rebuild it "
                    "where CUDA 13 is installed, e.g. CMAKE_ARGS=-DMAMBA_EXPORT_CUDA=ON make native")  # fmt: skip
    if not torch.cuda.is_available():
        return "no CUDA device visible to PyTorch"
    return None


def node_placement(profile_file: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """{node name: (op type, execution provider)} of every node a profiled session ran
    (SessionOptions.enable_profiling; the file is what InferenceSession.end_profiling returns)."""
    with open(profile_file) as f:
        events = json.load(f)
    return {e["name"].removesuffix("_kernel_time"): (e["args"]["op_name"], e["args"]["provider"])
            for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}  # fmt: skip


def off_provider(placement: dict[str, tuple[str, str]], provider: str = "CUDAExecutionProvider",
                 model=None) -> list[str]:
    """The nodes of ``placement`` that ran elsewhere than on ``provider``, and the copies ORT
    inserted between providers (each a round trip through host memory for CUDA). With the
    ``model`` (an onnx.ModelProto), nodes that compute shapes from shapes and constants alone
    may run on the CPU: ORT keeps them there on purpose (a Reshape reads its target shape on
    the host), and no activation goes through host memory for them."""
    exempt = shape_computations(model) if model is not None else set()
    return sorted(f"{name} ({op} on {where})" for name, (op, where) in placement.items()
                  if (where != provider and name not in exempt) or op in ("MemcpyToHost", "MemcpyFromHost"))  # fmt: skip


def shape_computations(model) -> set[str]:
    """Names of the nodes of ``model``'s graph whose outputs follow from tensor shapes and
    constants only, never from a tensor's values (Shape, and what is computed from it)."""
    known = {t.name for t in model.graph.initializer}
    names = set()
    for node in model.graph.node:  # in topological order, as ONNX requires
        if node.op_type == "Shape" or all(not i or i in known for i in node.input):
            known.update(node.output)
            names.add(node.name)
    return names
