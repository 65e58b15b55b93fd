"""``load``: a checkpoint directory or hub id -> the eager model; ``save_pretrained``: the reverse.

Checkpoints are only read; nothing in the user's directory is written or changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, MissingDependencyError
from ..models import Mamba1Config, Mamba1LMHeadModel
from .configs import parse_config, read_json, to_hf_config
from .weights import find_weights, read_weights

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip


def resolve_dtype(dtype) -> torch.dtype | None:
    """None, a torch dtype, or a name such as 'fp16'; 'auto' (None) keeps the checkpoint's."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; use one of fp32, fp16, bf16, auto")
    return _DTYPES[dtype]


def resolve_checkpoint(path_or_hub_id: str | os.PathLike) -> Path:
    """A local directory as is; otherwise an 'owner/name' hub id downloaded with huggingface_hub."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + weights), got a file")
    text = str(path_or_hub_id)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(f"{path}: no such directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MissingDependencyError(
            f"'{text}' is not a local directory; downloading it from the Hugging Face Hub needs "
            "huggingface_hub (pip install huggingface_hub)"
        ) from None
    try:
        return Path(
            snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"])
        )
    except Exception as e:
        raise CheckpointError(
            f"'{text}' is not a local directory and could not be downloaded from the Hugging Face Hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}). "
            "If this machine is offline, download the checkpoint elsewhere and pass its directory."
        ) from None


def _to_our_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not any(k.startswith("backbone.") for k in tensors):  # a bare MambaModel / MixerModel
        tensors = {f"backbone.{k}" if k != "lm_head.weight" else k: v for k, v in tensors.items()}
    # mamba_ssm (and early HF conversions) call the embedding 'embedding'.
    return {k.replace("backbone.embedding.", "backbone.embeddings.", 1): v for k, v in tensors.items()}


def _check_and_fill(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # tied: the embedding is the head
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensors {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''} "
            "(does config.json describe these weights?)"
        )
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape:
            raise CheckpointError(
                f"{source}: tensor '{name}' has shape {list(got.shape)}, config.json implies {list(want.shape)}"
            )
        if not got.is_floating_point():
            raise CheckpointError(f"{source}: tensor '{name}' has dtype {got.dtype}, expected floating point")
    model.load_state_dict(tensors, strict=False)


def load(path_or_hub_id: str | os.PathLike, dtype=None, device="cpu") -> Mamba1LMHeadModel:
    """Loads a Mamba checkpoint (HF or mamba_ssm layout) as the eager model, in eval mode.

    dtype: None (float32), 'auto' (the checkpoint's), a torch dtype or 'fp32'/'fp16'/'bf16'.
    """
    directory = resolve_checkpoint(path_or_hub_id)
    config_path = directory / "config.json"
    _, cfg = parse_config(read_json(config_path), config_path)
    weights = find_weights(directory)
    tensors = _to_our_names(read_weights(weights))
    checkpoint_dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    with torch.device("meta"):
        model = Mamba1LMHeadModel(cfg)
    model.to_empty(device="cpu")
    if cfg.tie_embeddings:  # to_empty re-creates parameters; restore the tie
        model.lm_head.weight = model.backbone.embeddings.weight
    _check_and_fill(model, tensors, weights)
    target = resolve_dtype(dtype)
    target = checkpoint_dtype if target is None and dtype == "auto" else (target or torch.float32)
    model.source = str(path_or_hub_id)
    return model.to(device=device, dtype=target).eval()


def save_pretrained(model: Mamba1LMHeadModel, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes ``config.json`` + ``model.safetensors`` in the Hugging Face layout."""
    from safetensors.torch import save_file

    directory = Path(directory)
    targets = [directory / "config.json", directory / "model.safetensors"]
    if not overwrite and any(t.exists() for t in targets):
        raise FileExistsError(f"{directory} already holds a checkpoint; pass overwrite=True to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight")
    save_file(tensors, str(targets[1]), metadata={"format": "pt"})
    targets[0].write_text(json.dumps(to_hf_config(model.config), indent=2) + "\n")
    return directory


__all__ = ["load", "save_pretrained", "resolve_checkpoint", "resolve_dtype", "Mamba1Config"]
