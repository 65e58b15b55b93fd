"""How the torch custom ops become nodes of the ``mamba`` ONNX domain (docs/ops.md)."""

from __future__ import annotations

import onnxscript
import torch

from ..ops import selective_scan  # noqa: F401  (registers torch.ops.mamba.*)
from .schemas import DOMAIN, DOMAIN_VERSION, register_schemas

register_schemas()
_mamba = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


def selective_scan_to_onnx(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                           delta_softplus=False):
    optional = {"D": D, "z": z, "delta_bias": delta_bias, "initial_state": initial_state}
    flags = {f"has_{name}": int(t is not None) for name, t in optional.items()}
    return _mamba.SelectiveScan(
        u, delta, A, B, C,
        *(t for t in optional.values() if t is not None),  # packed: see docs/ops.md
        delta_softplus=int(delta_softplus), **flags, _num_outputs=2,
    )  # fmt: skip


TRANSLATION_TABLE = {torch.ops.mamba.selective_scan.default: selective_scan_to_onnx}
