"""What validate, generate and bench need from a backend: one stateful forward.

``forward(input_ids, state) -> (logits, state)`` with torch tensors in and out (on the
backend's device), the state as a list of (conv_state, ssm_state) pairs exactly as the eager
model's and the ONNX export's (docs/export.md). Prefill and decode are the same call.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import MambaExportError

State = list[tuple[torch.Tensor, torch.Tensor]]


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Integer ids in [0, vocab_size), else MambaExportError naming the first one outside.
    ONNX Runtime's Gather takes -1 as the last row (a silently wrong answer) and TensorRT
    does not check at all, so every backend checks first; ids already on a GPU are not read
    back (that would wait for the GPU at every call)."""
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise MambaExportError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    if input_ids.device.type != "cpu" or input_ids.numel() == 0:
        return
    outside = (input_ids < 0) | (input_ids >= vocab_size)
    if outside.any():
        index = tuple(int(i) for i in outside.nonzero()[0])
        raise MambaExportError(f"input_ids{list(index)} = {int(input_ids[index])} is not a token id of this model "
                               f"(its vocabulary has {vocab_size}: 0 to {vocab_size - 1})")


class Backend(Protocol):
    name: str  # e.g. "torch", "ort", "ort-cuda", "trt"
    device: torch.device

    def empty_state(self, batch: int) -> State: ...

    def forward(self, input_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]: ...

