"""Eager Mamba-1 language model with an explicit recurrent state.

The parameter names follow Hugging Face's ``MambaForCausalLM`` so its state dicts load
as they are. The scan goes through ``torch.ops.mamba.selective_scan`` (one ONNX node
when exported). The state is a list with one ``(conv_state, ssm_state)`` pair per layer:

* ``conv_state`` [batch, d_inner, d_conv - 1], the model dtype: the last d_conv - 1
  inputs of the causal convolution (the minimum it needs; zeros = start of sequence).
* ``ssm_state`` [batch, d_inner, d_state], float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import selective_scan  # noqa: F401  (registers torch.ops.mamba.selective_scan)
from .norms import make_norm

State = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Mamba1Config:
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

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> Mamba1Config:
        return cls(**{k: v for k, v in data.items() if k != "architecture"})


def zero_state(cfg: Mamba1Config, batch: int, dtype: torch.dtype, device=None) -> State:
    """The state of a new sequence; ``dtype`` is the conv state's (the SSM state is float32)."""
    return [
        (
            torch.zeros(batch, cfg.d_inner, cfg.d_conv - 1, dtype=dtype, device=device),
            torch.zeros(batch, cfg.d_inner, cfg.d_state, dtype=torch.float32, device=device),
        )
        for _ in range(cfg.n_layer)
    ]


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


class Mamba1Block(nn.Module):
    def __init__(self, cfg: Mamba1Config):
        super().__init__()
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.norm = make_norm(cfg.rms_norm, cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba1Mixer(cfg)

    def forward(self, hidden, residual, conv_state, ssm_state):
        # mamba_ssm's pre-norm block: the residual stream may be kept in float32.
        residual = hidden if residual is None else residual + hidden
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        hidden, conv_state, ssm_state = self.mixer(hidden, conv_state, ssm_state)
        return hidden, residual, conv_state, ssm_state


class Mamba1Backbone(nn.Module):
    def __init__(self, cfg: Mamba1Config):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Mamba1Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.rms_norm, cfg.d_model, cfg.norm_eps)


class Mamba1LMHeadModel(nn.Module):
    """``model(input_ids, state=None) -> (logits, state)``; see the module docstring."""

    def __init__(self, cfg: Mamba1Config):
        super().__init__()
        self.config = cfg
        self.backbone = Mamba1Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    def empty_state(self, batch: int) -> State:
        """Zero state: the same as starting a new sequence."""
        w = self.lm_head.weight
        return zero_state(self.config, batch, w.dtype, w.device)

    def forward(self, input_ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.empty_state(input_ids.shape[0])
        if len(state) != self.config.n_layer:
            raise ValueError(f"state has {len(state)} layers, the model has {self.config.n_layer}")
        hidden, residual = self.backbone.embeddings(input_ids), None
        new_state = []
        for layer, (conv_state, ssm_state) in zip(self.backbone.layers, state):
            hidden, residual, conv_state, ssm_state = layer(hidden, residual, conv_state, ssm_state)
            new_state.append((conv_state, ssm_state))
        residual = residual + hidden
        norm_f = self.backbone.norm_f
        hidden = norm_f(residual.to(norm_f.weight.dtype))
        return self.lm_head(hidden.to(self.lm_head.weight.dtype)), new_state
