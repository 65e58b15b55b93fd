"""Opening a backend by name for a checkpoint: exports first where the backend needs ONNX."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import console
from ..errors import MambaExportError
from ..export.onnx_export import export_onnx, read_export_info
from .base import Backend
from .torch_backend import TorchBackend

BACKENDS = {
    "torch": "eager PyTorch (the scan through the torch op)",
    "ort": "ONNX Runtime, CPU, with the mamba custom-op library",
    "ort-portable": "ONNX Runtime, CPU, standard ONNX ops only (no custom-op library)",
}


def needs_export(backend: str) -> bool:
    return backend.startswith("ort")


def ensure_export(model: torch.nn.Module, export_dir: Path, *, portable: bool, overwrite: bool = False) -> Path:
    """Reuses ``export_dir`` when it holds an export of this model in this form, else exports."""
    dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
    source = getattr(model, "source", "<module>")
    if (export_dir / "export.json").is_file() and not overwrite:
        info = read_export_info(export_dir)
        if (info["source"], info["dtype"], info["portable"]) == (source, dtype, portable):
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


def open_backend(name: str, model: torch.nn.Module, *, export_dir: Path | None = None,
                 overwrite: bool = False) -> Backend:
    """``model`` is the eager model in the dtype and on the device to run."""
    if name not in BACKENDS:
        raise MambaExportError(f"unknown backend '{name}'; choose from {', '.join(BACKENDS)}")
    if name == "torch":
        return TorchBackend(model)
    from .ort_backend import OrtBackend

    if export_dir is None:
        raise MambaExportError(f"the {name} backend needs an export directory")
    ensure_export(model, export_dir, portable=name == "ort-portable", overwrite=overwrite)
    with console.step(f"Creating the ONNX Runtime session ({name})"):
        return OrtBackend(export_dir, name=name)
