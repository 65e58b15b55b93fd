"""The published Mamba-1 architectures (state-spaces/mamba-*), for benchmarks with random weights."""

from __future__ import annotations

import torch

from ..models import Mamba1Config, Mamba1LMHeadModel

# d_model, n_layer of the released checkpoints; all use d_state 16, d_conv 4, expand 2 and
# the GPT-NeoX vocabulary (50277 tokens, padded to 50280).
PUBLISHED = {
    "mamba-130m": (768, 24),
    "mamba-370m": (1024, 48),
    "mamba-790m": (1536, 48),
    "mamba-1.4b": (2048, 48),
    "mamba-2.8b": (2560, 64),
}


def published_config(name: str) -> Mamba1Config:
    d_model, n_layer = PUBLISHED[name]
    return Mamba1Config(d_model=d_model, n_layer=n_layer, vocab_size=50280)


def random_model(name: str, seed: int = 0) -> Mamba1LMHeadModel:
    """float32, CPU, the model's own initialisation: real shapes, meaningless weights."""
    torch.manual_seed(seed)
    model = Mamba1LMHeadModel(published_config(name)).eval()
    model.source = f"{name} (random weights)"
    return model
