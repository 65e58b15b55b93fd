"""Reading checkpoint tensors: safetensors (single or sharded) and pytorch_model.bin."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from .configs import read_json

# In the order a checkpoint directory is searched.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file, truncated or corrupt? ({e})") from None


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(f"{path}: cannot read PyTorch weights, truncated or corrupt? ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    return data


def _read_one(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_bin(path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint; ``path`` is a weight file or a shard index."""
    if not path.name.endswith(".index.json"):
        return _read_one(path)
    index = read_json(path).get("weight_map")
    if not isinstance(index, dict) or not index:
        raise CheckpointError(f"{path}: shard index has no 'weight_map'")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index.values())):
        part = _read_one(path.parent / shard)
        missing = [k for k, v in index.items() if v == shard and k not in part]
        if missing:
            raise CheckpointError(f"{path.parent / shard}: missing tensors listed in the index: {missing[:3]}")
        tensors.update(part)
    return tensors
