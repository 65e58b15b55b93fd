"""The published Mamba-1 and Mamba-2 architectures (state-spaces/mamba-*, mamba2-*), for
benchmarks of sizes a user cannot download, with random weights."""

from __future__ import annotations

import torch

from ..models import Mamba1Config, Mamba2Config, build_model

# name: (architecture, d_model, n_layer) of the released checkpoints. Mamba-1: d_state 16,
# d_conv 4, expand 2, the GPT-NeoX vocabulary (50277 tokens) padded to a multiple of 8.
# Mamba-2: d_state 128, heads of 64, one group, d_conv 4, expand 2, the vocabulary padded to
# a multiple of 16.
PUBLISHED = {
    "mamba-130m": ("mamba1", 768, 24),
    "mamba-370m": ("mamba1", 1024, 48),
    "mamba-790m": ("mamba1", 1536, 48),
    "mamba-1.4b": ("mamba1", 2048, 48),
    "mamba-2.8b": ("mamba1", 2560, 64),
    "mamba2-130m": ("mamba2", 768, 24),
    "mamba2-370m": ("mamba2", 1024, 48),
    "mamba2-780m": ("mamba2", 1536, 48),
    "mamba2-1.3b": ("mamba2", 2048, 48),
    "mamba2-2.7b": ("mamba2", 2560, 64),
}


def published_config(name: str) -> Mamba1Config | Mamba2Config:
    architecture, d_model, n_layer = PUBLISHED[name]
    if architecture == "mamba1":
        return Mamba1Config(d_model=d_model, n_layer=n_layer, vocab_size=50280)
    return Mamba2Config(d_model=d_model, n_layer=n_layer, vocab_size=50288, d_state=128, headdim=64, ngroups=1)


def random_model(name: str, seed: int = 0) -> torch.nn.Module:
    """float32, CPU, the model's own initialisation: real shapes, meaningless weights."""
    torch.manual_seed(seed)
    model = build_model(published_config(name)).eval()
    model.source = f"{name} (random weights)"
    return model
