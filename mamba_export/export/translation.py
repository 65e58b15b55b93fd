"""How the torch custom ops become nodes of the ``mamba`` ONNX domain (docs/ops.md)."""

from __future__ import annotations

import math

import onnxscript
import torch

from ..ops import selective_scan, ssd_scan  # noqa: F401  (registers torch.ops.mamba.*)
from .schemas import DOMAIN, DOMAIN_VERSION, register_schemas

register_schemas()
_mamba = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


def _packed(optional: dict) -> tuple[list, dict]:
    """The present optional inputs, packed in contract order, and their has_* flags (docs/ops.md)."""
    flags = {f"has_{name}": int(t is not None) for name, t in optional.items()}
    return [t for t in optional.values() if t is not None], flags


def selective_scan_to_onnx(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                           delta_softplus=False):
    inputs, flags = _packed({"D": D, "z": z, "delta_bias": delta_bias, "initial_state": initial_state})
    return _mamba.SelectiveScan(u, delta, A, B, C, *inputs, delta_softplus=int(delta_softplus), **flags,
                                _num_outputs=2)  # fmt: skip


def ssd_scan_to_onnx(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None, dt_softplus=False,
                     dt_min=0.0, dt_max=None):
    inputs, flags = _packed({"D": D, "z": z, "dt_bias": dt_bias, "initial_state": initial_state})
    return _mamba.SSDScan(
        x, dt, A, B, C, *inputs,
        dt_softplus=int(dt_softplus), dt_min=float(dt_min), dt_max=math.inf if dt_max is None else float(dt_max),
        **flags, _num_outputs=2,
    )  # fmt: skip


TRANSLATION_TABLE = {
    torch.ops.mamba.selective_scan.default: selective_scan_to_onnx,
    torch.ops.mamba.ssd_scan.default: ssd_scan_to_onnx,
}
