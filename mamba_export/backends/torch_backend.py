"""The eager PyTorch model as a backend (the reference, and the `torch` backend)."""

from __future__ import annotations

import torch

from .base import State, check_token_ids


class TorchBackend:
    def __init__(self, model: torch.nn.Module, name: str = "torch"):
        self.model = model.eval()
        self.name = name
        self.device = model.lm_head.weight.device

    def empty_state(self, batch: int) -> State:
        return self.model.empty_state(batch)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        check_token_ids(input_ids, self.model.config.vocab_size)
        return self.model(input_ids.to(self.device), state)
