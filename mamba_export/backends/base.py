"""What validate, generate and bench need from a backend: one stateful forward.

``forward(input_ids, state) -> (logits, state)`` with torch tensors in and out (on the
backend's device), the state as a list of (conv_state, ssm_state) pairs exactly as the eager
model's and the ONNX export's (docs/export.md). Prefill and decode are the same call.
"""

from __future__ import annotations

from typing import Protocol

import torch

State = list[tuple[torch.Tensor, torch.Tensor]]


class Backend(Protocol):
    name: str  # e.g. "torch", "ort", "ort-cuda", "trt"
    device: torch.device

    def empty_state(self, batch: int) -> State: ...

    def forward(self, input_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]: ...

