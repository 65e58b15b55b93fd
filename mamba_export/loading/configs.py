"""config.json of the two checkpoint layouts -> our model configs, and back to the HF layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import jsonio
from ..errors import CheckpointError
from ..models import Mamba1Config, Mamba2Config

SUPPORTED = (
    "Mamba-1 and Mamba-2 ('mamba' and 'mamba2' in the Hugging Face layout; "
    "ssm_cfg.layer 'Mamba1' and 'Mamba2' in the mamba_ssm layout)"
)


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = jsonio.loads(path.read_text(encoding="utf-8"))  # Infinity as transformers 5 writes it too
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _json_float(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    return float(value) if ok else None


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

    def limits(self, key: str) -> tuple[float, float]:
        """A [low, high] pair of floats with 0 <= low <= high (high may be Infinity); absent: (0, inf)."""
        value = self.data.get(key)
        if value is None:
            return 0.0, math.inf
        pair = [_json_float(v) for v in value] if isinstance(value, (list, tuple)) and len(value) == 2 else []
        if None in pair or not pair or not 0 <= pair[0] <= pair[1]:
            raise CheckpointError(
                f"{self.path}: field '{self.prefix + key}' must be [min, max] with 0 <= min <= max, got {value!r}"
            )
        return pair[0], pair[1]

    def nested(self, key: str) -> _Fields:
        value = self.data.get(key) or {}
        if not isinstance(value, dict):
            raise CheckpointError(f"{self.path}: field '{self.prefix + key}' must be an object, got {value!r}")
        return _Fields(value, self.path, f"{self.prefix}{key}.")


def _hf_common(f: _Fields) -> dict:
    """The fields transformers' Mamba and Mamba-2 configs share (with the same defaults)."""
    act = f.get("hidden_act", str, "silu")
    if act != "silu":
        raise CheckpointError(f"{f.path}: hidden_act '{act}' is not supported (Mamba uses 'silu')")
    return dict(
        d_model=f.get("hidden_size", int),
        n_layer=f.get("num_hidden_layers", int),
        vocab_size=f.get("vocab_size", int),
        d_conv=f.get("conv_kernel", int, 4),
        expand=f.get("expand", int, 2),
        conv_bias=f.get("use_conv_bias", bool, True),
        bias=f.get("use_bias", bool, False),
        rms_norm=True,
        norm_eps=f.get("layer_norm_epsilon", float, 1e-5),
        residual_in_fp32=f.get("residual_in_fp32", bool, True),
    )


def _hf_mamba1(f: _Fields) -> Mamba1Config:
    common = _hf_common(f)
    # Like transformers, d_inner is expand * hidden_size; config.json's intermediate_size is not read.
    return Mamba1Config(
        **common,
        d_state=f.get("state_size", int, 16),
        dt_rank=f.dt_rank("time_step_rank", common["d_model"]),
        tie_embeddings=f.get("tie_word_embeddings", bool, True),
    )


def _check_heads(f: _Fields, heads: int, groups: int, groups_field: str) -> None:
    if heads % groups:
        raise CheckpointError(
            f"{f.path}: the number of heads ({heads}) must be a multiple of '{groups_field}' ({groups})"
        )


def _hf_mamba2(f: _Fields) -> Mamba2Config:
    common = _hf_common(f)
    heads, headdim = f.get("num_heads", int, 128), f.get("head_dim", int, 64)
    d_inner = common["expand"] * common["d_model"]
    if heads * headdim != d_inner:
        raise CheckpointError(
            f"{f.path}: num_heads * head_dim ({heads} * {headdim}) must equal expand * hidden_size ({d_inner})"
        )
    groups = f.get("n_groups", int, 8)
    _check_heads(f, heads, groups, "n_groups")
    # transformers' Mamba-2 gates before its group norm and reads no norm_before_gate / rms_norm
    # field (older config.json files carry them anyway): neither do we.
    return Mamba2Config(
        **common,
        d_state=f.get("state_size", int, 128),
        headdim=headdim,
        ngroups=groups,
        chunk_size=f.get("chunk_size", int, 256),
        dt_limit=f.limits("time_step_limit"),
        gated_norm_eps=common["norm_eps"],
        tie_embeddings=f.get("tie_word_embeddings", bool, False),
    )


def _mamba_ssm_common(f: _Fields) -> dict:
    """The MixerModel fields around the mixer (mamba_ssm's MambaLMHeadModel config)."""
    if f.data.get("d_intermediate", 0) or f.data.get("attn_layer_idx"):
        raise CheckpointError(
            f"{f.path}: hybrid mamba_ssm models (d_intermediate / attn_layer_idx) are not supported"
        )
    vocab, multiple = f.get("vocab_size", int), f.get("pad_vocab_size_multiple", int, 8)
    return dict(
        d_model=f.get("d_model", int),
        n_layer=f.get("n_layer", int),
        vocab_size=math.ceil(vocab / multiple) * multiple,
        rms_norm=f.get("rms_norm", bool, True),
        norm_eps=f.get("norm_epsilon", float, 1e-5),
        residual_in_fp32=f.get("residual_in_fp32", bool, True),
        tie_embeddings=f.get("tie_embeddings", bool, True),
    )


def _mamba_ssm_mamba1(f: _Fields) -> Mamba1Config:
    common, ssm = _mamba_ssm_common(f), f.nested("ssm_cfg")
    return Mamba1Config(
        **common,
        d_state=ssm.get("d_state", int, 16),
        d_conv=ssm.get("d_conv", int, 4),
        expand=ssm.get("expand", int, 2),
        dt_rank=ssm.dt_rank("dt_rank", common["d_model"]),
        conv_bias=ssm.get("conv_bias", bool, True),
        bias=ssm.get("bias", bool, False),
    )


def _mamba_ssm_mamba2(f: _Fields) -> Mamba2Config:
    common, ssm = _mamba_ssm_common(f), f.nested("ssm_cfg")
    expand, headdim, groups = ssm.get("expand", int, 2), ssm.get("headdim", int, 64), ssm.get("ngroups", int, 1)
    d_inner = expand * common["d_model"]
    if ssm.data.get("d_ssm") not in (None, d_inner):
        raise CheckpointError(f"{f.path}: ssm_cfg.d_ssm (an MLP beside the SSM inside the mixer) is not supported")
    if ssm.get("D_has_hdim", bool, False):
        raise CheckpointError(f"{f.path}: ssm_cfg.D_has_hdim (a skip weight per channel) is not supported")
    if d_inner % headdim:
        raise CheckpointError(
            f"{f.path}: expand * d_model ({d_inner}) must be a multiple of 'ssm_cfg.headdim' ({headdim})"
        )
    _check_heads(f, d_inner // headdim, groups, "ssm_cfg.ngroups")
    return Mamba2Config(
        **common,
        d_state=ssm.get("d_state", int, 128),
        d_conv=ssm.get("d_conv", int, 4),
        expand=expand,
        headdim=headdim,
        ngroups=groups,
        chunk_size=ssm.get("chunk_size", int, 256),
        dt_limit=ssm.limits("dt_limit"),
        conv_bias=ssm.get("conv_bias", bool, True),
        bias=ssm.get("bias", bool, False),
        gated_norm=ssm.get("rmsnorm", bool, True),
        norm_before_gate=ssm.get("norm_before_gate", bool, False),
        gated_norm_eps=1e-5,  # mamba_ssm builds Mamba2's gated norm with this eps, whatever norm_epsilon
    )


_PARSERS = {
    ("hf", "mamba"): _hf_mamba1,
    ("hf", "mamba2"): _hf_mamba2,
    ("mamba_ssm", "Mamba1"): _mamba_ssm_mamba1,
    ("mamba_ssm", "Mamba2"): _mamba_ssm_mamba2,
}


def parse_config(data: dict, path: Path):
    """Returns (layout, config): layout is 'hf' or 'mamba_ssm'."""
    f = _Fields(data, path)
    if "model_type" in data:
        model_type = data["model_type"]
        if ("hf", model_type) in _PARSERS:
            return "hf", _PARSERS["hf", model_type](f)
        raise CheckpointError(f"{path}: model_type '{model_type}' is not supported; supported: {SUPPORTED}")
    if "d_model" in data and "n_layer" in data:
        layer = f.nested("ssm_cfg").data.get("layer", "Mamba1")
        if ("mamba_ssm", layer) in _PARSERS:
            return "mamba_ssm", _PARSERS["mamba_ssm", layer](f)
        raise CheckpointError(f"{path}: mamba_ssm layer '{layer}' is not supported; supported: {SUPPORTED}")
    raise CheckpointError(
        f"{path}: unknown architecture (no 'model_type', and not a mamba_ssm config with d_model/n_layer); "
        f"supported: {SUPPORTED}"
    )


def hf_layout_problem(cfg) -> str | None:
    """Why the Hugging Face layout cannot hold ``cfg`` (it would load as another model), or None."""
    layout = "the Hugging Face Mamba-2 layout" if cfg.architecture == "mamba2" else "the Hugging Face Mamba layout"
    if not cfg.rms_norm:
        return f"{layout} has RMSNorm only; this model uses LayerNorm (a mamba_ssm checkpoint with rms_norm=false)"
    if cfg.architecture != "mamba2":
        return None
    if not cfg.gated_norm:
        return f"{layout} always has the gated norm after the scan; this model has none (ssm_cfg.rmsnorm=false)"
    if cfg.norm_before_gate:
        return f"{layout} gates before the gated norm; this model gates after it (ssm_cfg.norm_before_gate=true)"
    if cfg.gated_norm_eps != cfg.norm_eps:
        return (f"{layout} has one epsilon for all norms; this model's gated norm has {cfg.gated_norm_eps} "
                f"and its other norms {cfg.norm_eps}")  # fmt: skip
    return None


def _hf_common_fields(cfg) -> dict:
    return {
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "vocab_size": cfg.vocab_size,
        "state_size": cfg.d_state,
        "conv_kernel": cfg.d_conv,
        "expand": cfg.expand,
        "use_bias": cfg.bias,
        "use_conv_bias": cfg.conv_bias,
        "layer_norm_epsilon": cfg.norm_eps,
        "residual_in_fp32": cfg.residual_in_fp32,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
    }


def to_hf_config(cfg) -> dict:
    """The Hugging Face ``MambaConfig`` / ``Mamba2Config`` dict of a model (what ``save_pretrained`` writes)."""
    if cfg.architecture == "mamba2":
        return {
            "architectures": ["Mamba2ForCausalLM"],
            "model_type": "mamba2",
            **_hf_common_fields(cfg),
            "num_heads": cfg.nheads,
            "head_dim": cfg.headdim,
            "n_groups": cfg.ngroups,
            "chunk_size": cfg.chunk_size,
            "time_step_limit": list(cfg.dt_limit),
        }
    return {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        **_hf_common_fields(cfg),
        "intermediate_size": cfg.d_inner,
        "time_step_rank": cfg.dt_rank,
    }
