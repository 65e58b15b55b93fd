"""``load``: a checkpoint directory or hub id -> the eager model; ``save_pretrained``: the reverse.

Checkpoints are only read; nothing in the user's directory is written or changed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import jsonio
from ..errors import CheckpointError, MissingDependencyError
from ..models import Mamba1Config, Mamba2Config, MambaLMHeadModel, build_model
from ..ops.contract import ACTIVATION_DTYPES
from .configs import hf_layout_problem, parse_config, read_json, to_hf_config
from .weights import WEIGHT_FILES, find_weights, read_weights

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip


def resolve_dtype(dtype) -> torch.dtype | None:
    """None, a torch dtype, or a name such as 'fp16'; 'auto' (None) keeps the checkpoint's.

    Only the scan's activation types are accepted (docs/ops.md): a float64 or integer model
    would load and then fail in its first forward.
    """
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return None
    resolved = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in ACTIVATION_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of fp32, fp16, bf16, auto")
    return resolved


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
    return _download(text)


def _download(hub_id: str) -> Path:
    """The hub snapshot's config, tokenizer and weights: safetensors, else the .bin files (never both)."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise MissingDependencyError(
            f"'{hub_id}' is not a local directory; downloading it from the Hugging Face Hub needs "
            "huggingface_hub (pip install huggingface_hub)"
        ) from None
    common = ["*.json", "*.txt", "*.model"]
    try:
        directory = Path(snapshot_download(hub_id, allow_patterns=[*common, "*.safetensors"]))
        if not any((directory / name).is_file() for name in WEIGHT_FILES if "safetensors" in name):
            directory = Path(snapshot_download(hub_id, allow_patterns=[*common, "pytorch_model*.bin"]))
        return directory
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise CheckpointError(
            f"'{hub_id}' is not a local directory nor in the Hugging Face cache, and this machine is offline "
            f"({why}); download it where the Hub is reachable (hf download {hub_id}) and pass its directory"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"'{hub_id}' is neither a local directory nor a model on the Hugging Face Hub "
            "(a private or gated model needs `hf auth login`)"
        ) from None
    except HFValidationError:
        raise CheckpointError(f"'{hub_id}': no such directory, and not a valid Hugging Face Hub id") from None
    except Exception as e:
        detail = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise CheckpointError(
            f"'{hub_id}' is not a local directory and could not be downloaded from the Hugging Face Hub ({detail})"
        ) from None


def _to_our_names(tensors: dict[str, torch.Tensor], source: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Renames to our (= Hugging Face's) names; also returns our name -> the file's, for messages."""
    bare = not any(k.startswith("backbone.") for k in tensors)  # a bare MambaModel / MixerModel
    renamed, file_names = {}, {}
    for name, tensor in tensors.items():
        ours = f"backbone.{name}" if bare and name != "lm_head.weight" else name
        # mamba_ssm (and early HF conversions) call the embedding 'embedding'.
        ours = ours.replace("backbone.embedding.", "backbone.embeddings.", 1)
        if ours in renamed:
            raise CheckpointError(f"{source}: holds both '{file_names[ours]}' and '{name}'")
        renamed[ours], file_names[ours] = tensor, name
    return renamed, file_names


def _listing(names: list[str]) -> str:
    return f"{names[:4]}{' ...' if len(names) > 4 else ''}"


def _check_and_fill(model: torch.nn.Module, tensors: dict[str, torch.Tensor], file_names: dict[str, str],
                    source: Path) -> None:
    expected = model.state_dict()
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # tied: the embedding is the head
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(file_names[k] for k in set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing tensors {_listing(missing)}")
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensors {_listing(unexpected)} (does config.json describe these weights?)"
        )
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape:
            raise CheckpointError(
                f"{source}: tensor '{file_names[name]}' has shape {list(got.shape)}, "
                f"config.json implies {list(want.shape)}"
            )
        if not got.is_floating_point():
            raise CheckpointError(
                f"{source}: tensor '{file_names[name]}' has dtype {got.dtype}, expected floating point"
            )
    model.load_state_dict(tensors, strict=False)


def load(path_or_hub_id: str | os.PathLike, dtype=None, device="cpu") -> MambaLMHeadModel:
    """Loads a Mamba-1 or Mamba-2 checkpoint (HF or mamba_ssm layout) as the eager model, in eval mode.

    dtype: None (float32), 'auto' (the checkpoint's), a torch dtype or 'fp32'/'fp16'/'bf16'.
    """
    target = resolve_dtype(dtype)
    directory = resolve_checkpoint(path_or_hub_id)
    config_path = directory / "config.json"
    _, cfg = parse_config(read_json(config_path), config_path)
    weights = find_weights(directory)
    tensors, file_names = _to_our_names(read_weights(weights), weights)
    with torch.device("meta"):
        model = build_model(cfg)
    model.to_empty(device="cpu")
    if cfg.tie_embeddings:  # to_empty re-creates parameters; restore the tie
        model.lm_head.weight = model.backbone.embeddings.weight
    _check_and_fill(model, tensors, file_names, weights)
    if target is None and dtype == "auto":  # the checkpoint's (A_log and D may be kept in float32)
        target = tensors["backbone.embeddings.weight"].dtype
        if target not in ACTIVATION_DTYPES:
            raise CheckpointError(f"{weights}: the weights are {target}; pass dtype='fp32', 'fp16' or 'bf16'")
    model.source = str(path_or_hub_id)
    return model.to(device=device, dtype=target or torch.float32).eval()


def _write_atomically(target: Path, write) -> None:
    """Writes beside ``target`` and renames: an interrupted save leaves no half-written file."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def save_pretrained(model: MambaLMHeadModel, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes ``config.json`` + ``model.safetensors`` in the Hugging Face layout."""
    from safetensors.torch import save_file

    directory = Path(directory)
    problem = hf_layout_problem(model.config)
    if problem:  # writing it anyway would load as a different model
        raise CheckpointError(f"{directory}: {problem}")
    existing = [name for name in ("config.json", *WEIGHT_FILES) if (directory / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{directory} already holds {', '.join(existing)}; pass overwrite=True to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight")
    config = jsonio.dumps(to_hf_config(model.config), indent=2) + "\n"
    _write_atomically(directory / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _write_atomically(directory / "config.json", lambda p: p.write_text(config))
    return directory


__all__ = ["load", "save_pretrained", "resolve_checkpoint", "resolve_dtype", "Mamba1Config", "Mamba2Config"]
