"""Reading checkpoint tensors: safetensors (single or sharded) and pytorch_model.bin."""

from __future__ import annotations

import re
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


def _torch_load_problem(error: Exception) -> str:
    """One line for a torch.load failure (its weights_only refusal is paragraphs of advice)."""
    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (
            f"holds pickled Python objects ({refused[1]}), not just tensors; only state dicts are read "
            "(torch.load weights_only=True never runs pickled code)"
        )
    text = text.split("WeightsUnpickler error:", 1)[-1]
    reason = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"cannot read PyTorch weights, truncated or corrupt? ({reason})"


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip/pickle or a refused object
        raise CheckpointError(f"{path}: {_torch_load_problem(e)}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    return data


def _read_one(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        path.open("rb").close()
    except OSError as e:  # its own reason (permissions), not the readers' "truncated or corrupt?"
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_bin(path)


def _weight_map(index: Path) -> dict[str, str]:
    """tensor name -> shard file name, checked: every shard is an existing file beside the index."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: shard index has no 'weight_map'")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or shard in ("", ".", "..") or Path(shard).name != shard:
            raise CheckpointError(f"{index}: weight_map['{name}'] must be a file name beside the index, got {shard!r}")
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"{index}: lists shard '{shard}' (for '{name}'), which is missing")
    return weight_map


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint; ``path`` is a weight file or a shard index."""
    if not path.name.endswith(".index.json"):
        return _read_one(path)
    weight_map = _weight_map(path)
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        part = _read_one(path.parent / shard)
        missing = [k for k, v in weight_map.items() if v == shard and k not in part]
        if missing:
            raise CheckpointError(f"{path.parent / shard}: missing tensors listed in the index: {missing[:3]}")
        tensors.update(part)
    return tensors
