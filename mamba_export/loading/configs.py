"""config.json of the two checkpoint layouts -> our model configs, and back to the HF layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import CheckpointError
from ..models import Mamba1Config

SUPPORTED = "Mamba-1 ('mamba' in the Hugging Face layout, or the mamba_ssm layout)"


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


class _Fields:
    """Typed access to a config dict that names the file and field in every error."""

    def __init__(self, data: dict, path: Path, prefix: str = ""):
        self.data, self.path, self.prefix = data, path, prefix  # prefix: 'ssm_cfg.' for a nested dict

    def get(self, key: str, kind: type, default=...):
        name = self.prefix + key
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise CheckpointError(f"{self.path}: missing field '{name}'")
            return default
        value = self.data[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise CheckpointError(f"{self.path}: field '{name}' must be {kind.__name__}, got {value!r}")
        if kind in (int, float) and value <= 0:
            raise CheckpointError(f"{self.path}: field '{name}' must be positive, got {value!r}")
        return value

    def dt_rank(self, key: str, d_model: int) -> int:
        """A time-step rank: an int, or 'auto' (or absent) for ceil(d_model / 16)."""
        return math.ceil(d_model / 16) if self.data.get(key) in (None, "auto") else self.get(key, int)

    def nested(self, key: str) -> _Fields:
        value = self.data.get(key) or {}
        if not isinstance(value, dict):
            raise CheckpointError(f"{self.path}: field '{self.prefix + key}' must be an object, got {value!r}")
        return _Fields(value, self.path, f"{self.prefix}{key}.")


def _hf_mamba1(f: _Fields) -> Mamba1Config:
    act = f.get("hidden_act", str, "silu")
    if act != "silu":
        raise CheckpointError(f"{f.path}: hidden_act '{act}' is not supported (Mamba uses 'silu')")
    d_model = f.get("hidden_size", int)
    # Like transformers, d_inner is expand * hidden_size; config.json's intermediate_size is not read.
    return Mamba1Config(
        d_model=d_model,
        n_layer=f.get("num_hidden_layers", int),
        vocab_size=f.get("vocab_size", int),
        d_state=f.get("state_size", int, 16),
        d_conv=f.get("conv_kernel", int, 4),
        expand=f.get("expand", int, 2),
        dt_rank=f.dt_rank("time_step_rank", d_model),
        conv_bias=f.get("use_conv_bias", bool, True),
        bias=f.get("use_bias", bool, False),
        rms_norm=True,
        norm_eps=f.get("layer_norm_epsilon", float, 1e-5),
        residual_in_fp32=f.get("residual_in_fp32", bool, True),
        tie_embeddings=f.get("tie_word_embeddings", bool, True),
    )


def _mamba_ssm_mamba1(f: _Fields) -> Mamba1Config:
    if f.data.get("d_intermediate", 0) or f.data.get("attn_layer_idx"):
        raise CheckpointError(
            f"{f.path}: hybrid mamba_ssm models (d_intermediate / attn_layer_idx) are not supported"
        )
    ssm = f.nested("ssm_cfg")
    d_model = f.get("d_model", int)
    vocab, multiple = f.get("vocab_size", int), f.get("pad_vocab_size_multiple", int, 8)
    return Mamba1Config(
        d_model=d_model,
        n_layer=f.get("n_layer", int),
        vocab_size=math.ceil(vocab / multiple) * multiple,
        d_state=ssm.get("d_state", int, 16),
        d_conv=ssm.get("d_conv", int, 4),
        expand=ssm.get("expand", int, 2),
        dt_rank=ssm.dt_rank("dt_rank", d_model),
        conv_bias=ssm.get("conv_bias", bool, True),
        bias=ssm.get("bias", bool, False),
        rms_norm=f.get("rms_norm", bool, True),
        norm_eps=f.get("norm_epsilon", float, 1e-5),
        residual_in_fp32=f.get("residual_in_fp32", bool, True),
        tie_embeddings=f.get("tie_embeddings", bool, True),
    )


def parse_config(data: dict, path: Path):
    """Returns (layout, config): layout is 'hf' or 'mamba_ssm'."""
    f = _Fields(data, path)
    if "model_type" in data:
        model_type = data["model_type"]
        if model_type == "mamba":
            return "hf", _hf_mamba1(f)
        raise CheckpointError(f"{path}: model_type '{model_type}' is not supported; supported: {SUPPORTED}")
    if "d_model" in data and "n_layer" in data:
        layer = f.nested("ssm_cfg").data.get("layer", "Mamba1")
        if layer == "Mamba1":
            return "mamba_ssm", _mamba_ssm_mamba1(f)
        raise CheckpointError(f"{path}: mamba_ssm layer '{layer}' is not supported; supported: {SUPPORTED}")
    raise CheckpointError(
        f"{path}: unknown architecture (no 'model_type', and not a mamba_ssm config with d_model/n_layer); "
        f"supported: {SUPPORTED}"
    )


def to_hf_config(cfg: Mamba1Config) -> dict:
    """The Hugging Face ``MambaConfig`` dict of a model (what ``save_pretrained`` writes)."""
    return {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "vocab_size": cfg.vocab_size,
        "state_size": cfg.d_state,
        "conv_kernel": cfg.d_conv,
        "expand": cfg.expand,
        "intermediate_size": cfg.d_inner,
        "time_step_rank": cfg.dt_rank,
        "use_bias": cfg.bias,
        "use_conv_bias": cfg.conv_bias,
        "layer_norm_epsilon": cfg.norm_eps,
        "residual_in_fp32": cfg.residual_in_fp32,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
    }
