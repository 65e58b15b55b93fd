"""Eager Mamba-1 language model with an explicit recurrent state.

The parameter names follow Hugging Face's ``MambaForCausalLM`` so its state dicts load
as they are (the frame around the mixer is models/lm.py). The scan goes through
``torch.ops.mamba.selective_scan`` (one ONNX node when exported). The state is a list with
one ``(conv_state, ssm_state)`` pair per layer:

* ``conv_state`` [batch, d_inner, d_conv - 1], the model dtype: the last d_conv - 1
  inputs of the causal convolution (the minimum it needs; zeros = start of sequence).
* ``ssm_state`` [batch, d_inner, d_state], float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import selective_scan  # noqa: F401  (registers torch.ops.mamba.selective_scan)
from .lm import ConfigDict, MambaLMHeadModel


@dataclass(frozen=True)
class Mamba1Config(ConfigDict):
    d_model: int
    n_layer: int
    vocab_size: int  # already padded to pad_vocab_size_multiple
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(d_model / 16)
    d_inner: int | None = None  # None: expand * d_model
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj
    rms_norm: bool = True
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True

    architecture = "mamba1"

    def __post_init__(self):
        if self.dt_rank is None:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        if self.d_inner is None:
            object.__setattr__(self, "d_inner", self.expand * self.d_model)

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per layer, without the batch: conv state [d_inner, d_conv - 1], SSM state [d_inner, d_state]."""
        return (self.d_inner, self.d_conv - 1), (self.d_inner, self.d_state)


class Mamba1Mixer(nn.Module):
    def __init__(self, cfg: Mamba1Config):
        super().__init__()
        self.cfg = cfg
        d_inner, n = cfg.d_inner, cfg.d_state
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=cfg.bias)
        # No padding: the conv state supplies the left context, so prefill and decode are one path.
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d_inner, cfg.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(cfg.dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.bias)

    def forward(self, hidden: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        cfg = self.cfg
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # [batch, d_inner, L] each
        window = torch.cat([conv_state, x], dim=-1)
        new_conv_state = window[:, :, window.shape[-1] - (cfg.d_conv - 1):]
        x = F.silu(self.conv1d(window))
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        # dt_proj's bias is applied inside the scan (delta_bias), before the softplus.
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        y, new_ssm_state = torch.ops.mamba.selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2).unsqueeze(1),
            C.transpose(1, 2).unsqueeze(1),
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            initial_state=ssm_state,
            delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2)), new_conv_state, new_ssm_state


class Mamba1LMHeadModel(MambaLMHeadModel):
    """``model(input_ids, state=None) -> (logits, state)``; see the module docstring."""

    mixer = Mamba1Mixer
