"""Eager Mamba-2 (SSD) language model with an explicit recurrent state.

The parameter names follow Hugging Face's ``Mamba2ForCausalLM`` (and mamba_ssm's ``Mamba2``,
which are the same), so their state dicts load as they are; the frame around the mixer is
models/lm.py. The scan goes through ``torch.ops.mamba.ssd_scan`` (one ONNX node when
exported). The state is a list with one ``(conv_state, ssm_state)`` pair per layer:

* ``conv_state`` [batch, conv_dim, d_conv - 1], the model dtype, conv_dim = d_inner +
  2 * ngroups * d_state: the last d_conv - 1 inputs of the causal convolution, which runs over
  x, B and C together (zeros = start of sequence).
* ``ssm_state`` [batch, nheads, headdim, d_state], float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import ssd_scan  # noqa: F401  (registers torch.ops.mamba.ssd_scan)
from .lm import ConfigDict, MambaLMHeadModel
from .norms import GatedRMSNorm


@dataclass(frozen=True)
class Mamba2Config(ConfigDict):
    d_model: int
    n_layer: int
    vocab_size: int  # already padded to pad_vocab_size_multiple
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1  # groups of B/C; also the groups of the gated norm
    # The checkpoint's chunk length, kept for saving it again: the scan's chunking is its own
    # and only changes rounding (docs/ops.md).
    chunk_size: int = 256
    dt_limit: tuple[float, float] = (0.0, math.inf)  # clamp of the time step (HF: time_step_limit)
    d_inner: int | None = None  # None: expand * d_model
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj
    gated_norm: bool = True  # mamba_ssm's rmsnorm; without it the scan applies the gate (has_z)
    norm_before_gate: bool = False
    gated_norm_eps: float = 1e-5
    rms_norm: bool = True  # the blocks' and the final norm (else LayerNorm)
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True

    architecture = "mamba2"

    def __post_init__(self):
        if self.d_inner is None:
            object.__setattr__(self, "d_inner", self.expand * self.d_model)
        object.__setattr__(self, "dt_limit", tuple(float(v) for v in self.dt_limit))  # a list from JSON
        if self.d_inner % self.headdim:
            raise ValueError(f"d_inner ({self.d_inner}) must be a multiple of headdim ({self.headdim})")
        if self.nheads % self.ngroups:
            raise ValueError(f"the number of heads ({self.nheads}) must be a multiple of ngroups ({self.ngroups})")

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per layer, without the batch: conv [conv_dim, d_conv - 1], SSM [nheads, headdim, d_state]."""
        return (self.conv_dim, self.d_conv - 1), (self.nheads, self.headdim, self.d_state)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        d_inner, heads = cfg.d_inner, cfg.nheads
        # One projection, split as [z (gate), xBC (convolved, then split into x, B, C), dt].
        self.in_proj = nn.Linear(cfg.d_model, d_inner + cfg.conv_dim + heads, bias=cfg.bias)
        # No padding: the conv state supplies the left context, so prefill and decode are one path.
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=cfg.conv_bias)
        # Time steps from 0.001 to 0.1 at initialisation: dt_bias is their inverse softplus.
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), heads))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(heads))
        if cfg.gated_norm:
            self.norm = GatedRMSNorm(d_inner, d_inner // cfg.ngroups, cfg.gated_norm_eps, cfg.norm_before_gate)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.bias)

    def forward(self, hidden: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        cfg = self.cfg
        groups_n = cfg.ngroups * cfg.d_state
        z, xBC, dt = self.in_proj(hidden).split([cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
        window = torch.cat([conv_state, xBC.transpose(1, 2)], dim=-1)
        new_conv_state = window[:, :, window.shape[-1] - (cfg.d_conv - 1):]
        xBC = F.silu(self.conv1d(window)).transpose(1, 2)  # [batch, L, conv_dim]
        x, B, C = xBC.split([cfg.d_inner, groups_n, groups_n], dim=-1)
        heads = (cfg.nheads, cfg.headdim)
        y, new_ssm_state = torch.ops.mamba.ssd_scan(
            x.unflatten(-1, heads),
            dt,
            -torch.exp(self.A_log.float()),
            B.unflatten(-1, (cfg.ngroups, cfg.d_state)),
            C.unflatten(-1, (cfg.ngroups, cfg.d_state)),
            D=self.D.float(),
            z=None if cfg.gated_norm else z.unflatten(-1, heads),  # else the norm applies the gate
            dt_bias=self.dt_bias.float(),
            initial_state=ssm_state,
            dt_softplus=True,
            dt_min=cfg.dt_limit[0],
            dt_max=cfg.dt_limit[1],
        )
        y = y.flatten(-2)  # [batch, L, d_inner]
        if cfg.gated_norm:
            y = self.norm(y, z)
        return self.out_proj(y), new_conv_state, new_ssm_state


class Mamba2LMHeadModel(MambaLMHeadModel):
    """``model(input_ids, state=None) -> (logits, state)``; see the module docstring."""

    mixer = Mamba2Mixer
