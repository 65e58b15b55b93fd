"""Normalisations used by the Mamba blocks, computed in float32 like mamba_ssm's references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_rms_normalize(x.float(), self.eps) * self.weight.float()).to(x.dtype)


def _rms_normalize(xf: torch.Tensor, eps: float) -> torch.Tensor:
    # Divided by the root, not multiplied by torch.rsqrt: exported, this is the pattern that
    # ONNX Runtime fuses into one SimplifiedLayerNormalization kernel (with rsqrt, exported as
    # Sqrt and Reciprocal, the norm stays seven nodes).
    return xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


class GatedRMSNorm(nn.Module):
    """Mamba-2's norm after the scan: RMSNorm over groups of ``group_size`` channels (one per
    B/C group), with a SiLU gate applied before normalising or, if ``norm_before_gate``, after."""

    def __init__(self, size: int, group_size: int, eps: float, norm_before_gate: bool):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        xf, gate = x.float(), F.silu(gate.float())
        if not self.norm_before_gate:
            xf = xf * gate
        if self.group_size == xf.shape[-1]:  # one group: no reshapes between the norm and its weight, so ORT fuses it
            xf = _rms_normalize(xf, self.eps) * self.weight.float()
        else:
            xf = _rms_normalize(xf.unflatten(-1, (-1, self.group_size)), self.eps).flatten(-2) * self.weight.float()
        if self.norm_before_gate:
            xf = xf * gate
        return xf.to(x.dtype)


class LayerNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), x.shape[-1:], self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def make_norm(rms: bool, size: int, eps: float) -> nn.Module:
    return RMSNorm(size, eps) if rms else LayerNorm(size, eps)
