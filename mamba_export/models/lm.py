"""What the Mamba language models share around their mixers: the config's dict form, the
pre-norm residual blocks, the backbone, the head and the explicit recurrent state.

The module names follow Hugging Face's ``Mamba*ForCausalLM`` (``backbone.embeddings``,
``backbone.layers.{i}.norm`` / ``.mixer``, ``backbone.norm_f``, ``lm_head``), so their state
dicts load as they are. The state is a list with one ``(conv_state, ssm_state)`` pair per
layer, of the shapes each config's ``state_shapes()`` gives: the conv state in the model
dtype, the SSM state in float32.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable, ClassVar

import torch
from torch import nn

from .norms import make_norm

State = list[tuple[torch.Tensor, torch.Tensor]]


class ConfigDict:
    """``to_dict`` / ``from_dict`` of the (dataclass) configs, tagged with the architecture's name."""

    architecture: ClassVar[str]

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**{k: v for k, v in data.items() if k != "architecture"})


def zero_state(cfg, batch: int, dtype: torch.dtype, device=None) -> State:
    """The state of a new sequence; ``dtype`` is the conv state's (the SSM state is float32)."""
    conv, ssm = cfg.state_shapes()
    return [
        (
            torch.zeros(batch, *conv, dtype=dtype, device=device),
            torch.zeros(batch, *ssm, dtype=torch.float32, device=device),
        )
        for _ in range(cfg.n_layer)
    ]


class MambaBlock(nn.Module):
    def __init__(self, cfg, mixer: nn.Module):
        super().__init__()
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.norm = make_norm(cfg.rms_norm, cfg.d_model, cfg.norm_eps)
        self.mixer = mixer

    def forward(self, hidden, residual, conv_state, ssm_state):
        # mamba_ssm's pre-norm block: the residual stream may be kept in float32.
        residual = hidden if residual is None else residual + hidden
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        hidden, conv_state, ssm_state = self.mixer(hidden, conv_state, ssm_state)
        return hidden, residual, conv_state, ssm_state


class MambaBackbone(nn.Module):
    def __init__(self, cfg, mixer: Callable[[object], nn.Module]):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MambaBlock(cfg, mixer(cfg)) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.rms_norm, cfg.d_model, cfg.norm_eps)


class MambaLMHeadModel(nn.Module):
    """``model(input_ids, state=None) -> (logits, state)``. A subclass names its ``mixer``, a
    module class taking the config."""

    mixer: ClassVar[Callable[[object], nn.Module]]

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.backbone = MambaBackbone(cfg, type(self).mixer)
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
