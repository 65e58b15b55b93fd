"""Opening a backend by name for a checkpoint: exports first where the backend needs ONNX."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from .. import console, jsonio
from ..errors import MambaExportError, MissingDependencyError
from ..export.onnx_export import export_onnx, made_from_other_weights, read_export_info, recorded_source
from ..runtime.ort import cuda_unavailable, custom_op_providers, import_onnxruntime
from .base import Backend
from .torch_backend import TorchBackend

BACKENDS = {
    "torch": "eager PyTorch (the scan through the torch op)",
    "ort": "ONNX Runtime, CPU, with the mamba custom-op library",
    "ort-portable": "ONNX Runtime, CPU, standard ONNX ops only (no custom-op library)",
    "ort-cuda": "ONNX Runtime, CUDA execution provider, with the mamba custom-op library (state on the GPU)",
    "trt": "TensorRT engine with the mamba plugin, CUDA (built into the export directory)",
}


def needs_export(backend: str) -> bool:
    return backend.startswith("ort") or backend == "trt"


def ensure_export(model: torch.nn.Module, export_dir: Path, *, portable: bool, overwrite: bool = False) -> Path:
    """Reuses ``export_dir`` when it holds an export of this model in this form, else exports."""
    dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
    source = getattr(model, "source", "<module>")
    if (export_dir / "export.json").is_file() and not overwrite:
        info = read_export_info(export_dir)
        held = (recorded_source(info["source"]), info["dtype"], info["portable"])
        if held == (recorded_source(source), dtype, portable):
            # The same checkpoint name is not the same model: its files, or the model in
            # memory, may have changed since.
            why = (
                "another config" if info["config"] != jsonio.loads(jsonio.dumps(model.config.to_dict()))
                else "other weights" if made_from_other_weights(info, model)
                else None
            )  # fmt: skip
            if why:
                raise MambaExportError(f"{export_dir} holds an export of {source} made from {why} than the model "
                                       "loaded now; pass --overwrite to export it again")  # fmt: skip
            console.info(f"Using the export in {export_dir}")
            return export_dir
        raise MambaExportError(
            f"{export_dir} holds an export of {info['source']} ({info['dtype']}, portable={info['portable']}), "
            f"not of {source} ({dtype}, portable={portable}); choose another directory or pass --overwrite"
        )
    kind = "portable ONNX" if portable else "ONNX"
    with console.step(f"Exporting {source} to {kind} ({dtype}) in {export_dir}"):
        export_onnx(model, export_dir, portable=portable, overwrite=overwrite)
    return export_dir


def backend_unavailable(name: str, device: str | None = None) -> str | None:
    """Why backend ``name`` cannot run on ``device`` (None: its usual one) here, or None when it can."""
    if name not in BACKENDS:
        return f"unknown backend '{name}'; choose from {', '.join(BACKENDS)}"
    device = device or default_device(name)
    if name == "torch":
        if device.startswith("cuda") and not torch.cuda.is_available():
            return "no CUDA device visible to PyTorch"
        return None
    if name == "trt":
        return _trt_unavailable(device)
    try:
        import_onnxruntime()
        if name == "ort":
            custom_op_providers()  # the custom-op library is built and loads
    except MissingDependencyError as e:
        return str(e)
    if name in ("ort", "ort-portable") and device != "cpu":
        return f"{name} runs on the CPU; use ort-cuda for the GPU"
    if name == "ort-cuda":
        if not device.startswith("cuda"):
            return "ort-cuda runs on CUDA; use --device cuda"
        return cuda_unavailable()
    return None


def require_backend(name: str, device: str | None = None) -> None:
    """Raises, naming the backend and the reason, when ``backend_unavailable`` gives one: before
    a model is loaded, exported or built for it."""
    reason = backend_unavailable(name, device)
    if reason:
        raise MissingDependencyError(f"backend {name}: {reason}")


def default_device(name: str) -> str:
    return "cuda" if name in ("trt", "ort-cuda") else "cpu"


def _trt_unavailable(device: str) -> str | None:
    from ..errors import MissingDependencyError
    from ..native import tensorrt_plugin_library
    from ..tensorrt import import_tensorrt, run_unavailable

    if not device.startswith("cuda"):
        return "trt runs on CUDA; use --device cuda"
    try:
        trt = import_tensorrt()
        tensorrt_plugin_library()
    except MissingDependencyError as e:
        return str(e)
    # An importable TensorRT may still refuse this GPU (TensorRT-RTX 1.7 on Hopper) or find none: a probe
    # engine says so before an export and a build are spent on it.
    return run_unavailable(trt)


def ensure_engine(export_dir: Path, overwrite: bool = False, profiles=None) -> Path:
    """export_dir/model.plan for the export in ``export_dir``: reused when built from it (and,
    when ``profiles`` are given, with them), else built (replacing another plan only if
    ``overwrite``)."""
    from ..tensorrt import build_engine, read_engine_info

    plan = export_dir / "model.plan"
    if plan.is_file():
        held, export = read_engine_info(plan), read_export_info(export_dir)
        if held["export"] == export and (profiles is None or held["profiles"] == profiles.recorded(export)):
            console.info(f"Using the engine {plan}")
            return plan
        if not overwrite:
            other = "another export" if profiles is None else "another export or with other profiles"
            raise MambaExportError(f"{plan} was built from {other}; pass --overwrite to rebuild it")
    return build_engine(export_dir / "model.onnx", plan, profiles=profiles, overwrite=True)


def open_backend(name: str, model: torch.nn.Module, *, export_dir: Path | None = None,
                 overwrite: bool = False, device: str | torch.device | None = None,
                 cuda_graphs: bool = True) -> Backend:
    """``model`` is the eager model in the dtype to run, on the CPU; it is not modified.
    ``device``: where to run, None for the backend's usual device (trt: CUDA, others: CPU).
    ``cuda_graphs``: ort-cuda replays its decode steps as CUDA graphs."""
    require_backend(name, None if device is None else str(device))
    if name == "torch":
        device = device or "cpu"
        on_device = model if torch.device(device) == model.lm_head.weight.device else copy.deepcopy(model).to(device)
        return TorchBackend(on_device)
    if export_dir is None:
        raise MambaExportError(f"the {name} backend needs an export directory")
    ensure_export(model, export_dir, portable=name == "ort-portable", overwrite=overwrite)
    if name == "trt":
        from .trt_backend import TrtBackend

        plan = ensure_engine(export_dir, overwrite)
        with console.step(f"Loading the TensorRT engine {plan}"):
            return TrtBackend(plan)
    from .ort_backend import OrtBackend

    with console.step(f"Creating the ONNX Runtime session ({name})"):
        return OrtBackend(export_dir, name=name, device=device or default_device(name), cuda_graphs=cuda_graphs)
