"""Small random Mamba-1 checkpoints for the loading tests.

transformers' MambaForCausalLM is the independent implementation: it builds the models
and writes the Hugging Face layouts. The original mamba_ssm layout is written here by
hand from a transformers state dict, and ``reference_logits_f64`` recomputes a
mamba_ssm checkpoint in float64 (the scan by tests/naive.py), sharing no code with
mamba_export.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import MambaConfig, MambaForCausalLM

from naive import selective_scan_naive

SMALL = dict(hidden_size=16, state_size=4, num_hidden_layers=2, vocab_size=50, expand=2, conv_kernel=4)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|."""
    out, ref = out.double(), ref.double()
    return ((out - ref).abs().max() / ref.abs().max()).item()


def random_hf_model(seed: int = 0, **config) -> MambaForCausalLM:
    """A transformers model with every parameter away from its initial value (``perturb``)."""
    torch.manual_seed(seed)
    return perturb(MambaForCausalLM(MambaConfig(**{**SMALL, **config})).eval())


@torch.no_grad()
def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """transformers initialises A_log to log(1..N), D and the norms to 1, the conv and
    projection biases to 0: a loader that dropped or swapped such a tensor would go
    unnoticed, so each gets random values, in the ranges trained models have (Mamba-1
    and Mamba-2 names)."""
    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            p.copy_(torch.empty_like(p).uniform_(math.log(0.3), math.log(8.0)))  # A in [-8, -0.3]
        elif name.endswith(("dt_proj.bias", "dt_bias")):
            p.copy_(torch.empty_like(p).uniform_(-4.0, 0.5))  # softplus: time steps 0.02 .. 1
        elif name.endswith(".D") or name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            p.copy_(1 + 0.5 * torch.randn_like(p))
        elif name.endswith("bias"):
            p.copy_(0.2 * torch.randn_like(p))
        else:
            p.add_(0.05 * torch.randn_like(p))
    return model


def hf_forward(model: MambaForCausalLM, ids: torch.Tensor, cache=None):
    """transformers' logits and cache; a cache continues the sequence it was made for."""
    with torch.no_grad():
        out = model(ids, cache_params=cache, use_cache=True)
    return out.logits, out.cache_params


def edit_config(directory: Path, *drop: str, **fields) -> None:
    """Removes the ``drop`` fields of config.json and sets ``fields``."""
    path = directory / "config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}
    path.write_text(json.dumps({**config, **fields}, indent=2))


def _write_shards(tensors: dict, directory: Path, stem: str, ext: str, save, index_name: str) -> None:
    """Two shards and an index, the way transformers names them."""
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        shard = f"{stem}-{i:05d}-of-{len(halves):05d}.{ext}"
        save({k: tensors[k].contiguous() for k in part}, directory / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (directory / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))


HF_FORMATS = ("safetensors", "sharded_safetensors", "bin", "sharded_bin")


def save_hf(model: MambaForCausalLM, directory: Path, fmt: str = "safetensors") -> Path:
    """Writes the Hugging Face layout. transformers 5 writes only safetensors, so the
    .bin variants replace its weights by torch.save of the same (untied) tensors."""
    if fmt == "sharded_safetensors":
        model.save_pretrained(directory, max_shard_size="8KB")
        assert len(list(directory.glob("model-*.safetensors"))) > 1, "max_shard_size did not split the weights"
        return directory
    model.save_pretrained(directory)
    if fmt in ("bin", "sharded_bin"):
        (directory / "model.safetensors").unlink()
        tensors = dict(model.state_dict())
        if model.config.tie_word_embeddings:
            tensors.pop("lm_head.weight")
        if fmt == "bin":
            torch.save(tensors, directory / "pytorch_model.bin")
        else:
            _write_shards(tensors, directory, "pytorch_model", "bin", torch.save, "pytorch_model.bin.index.json")
    return directory


def to_mamba_ssm_state_dict(model: MambaForCausalLM, pad_multiple: int, lm_head: bool = True) -> dict:
    """mamba_ssm's MambaLMHeadModel state dict: 'embedding', the vocab padded to a multiple
    (random padding rows) and, as torch.save of its state_dict gives, lm_head.weight even when
    tied (lm_head=False leaves the tied head implicit)."""
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in model.state_dict().items()}
    vocab = model.config.vocab_size
    padded = math.ceil(vocab / pad_multiple) * pad_multiple
    gen = torch.Generator().manual_seed(vocab)
    for name in ("backbone.embedding.weight", "lm_head.weight"):
        extra = torch.randn(padded - vocab, sd[name].shape[1], generator=gen)
        sd[name] = torch.cat([sd[name], extra])
    if model.config.tie_word_embeddings:
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]
        if not lm_head:
            del sd["lm_head.weight"]
    return sd


def save_mamba_ssm(sd: dict, directory: Path, *, d_model: int, n_layer: int, vocab_size: int, ssm_cfg: dict,
                   pad_multiple: int, tied: bool, rms_norm: bool = True, residual_in_fp32: bool = True) -> Path:
    """config.json + pytorch_model.bin as mamba_ssm's MambaLMHeadModel.save_pretrained writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(d_model=d_model, d_intermediate=0, n_layer=n_layer, vocab_size=vocab_size,
                  ssm_cfg={"layer": "Mamba1", **ssm_cfg}, attn_layer_idx=[], attn_cfg={}, rms_norm=rms_norm,
                  residual_in_fp32=residual_in_fp32, fused_add_norm=True, pad_vocab_size_multiple=pad_multiple,
                  tie_embeddings=tied)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(sd, directory / "pytorch_model.bin")
    return directory


def hf_to_mamba_ssm(model: MambaForCausalLM, directory: Path, pad_multiple: int = 8, lm_head: bool = True,
                    dt_rank_auto: bool = False) -> Path:
    c = model.config
    ssm_cfg = dict(d_state=c.state_size, d_conv=c.conv_kernel, expand=c.expand, conv_bias=c.use_conv_bias,
                   bias=c.use_bias, dt_rank="auto" if dt_rank_auto else c.time_step_rank)
    return save_mamba_ssm(to_mamba_ssm_state_dict(model, pad_multiple, lm_head), directory, d_model=c.hidden_size,
                          n_layer=c.num_hidden_layers, vocab_size=c.vocab_size, ssm_cfg=ssm_cfg,
                          pad_multiple=pad_multiple, tied=c.tie_word_embeddings,
                          residual_in_fp32=c.residual_in_fp32)


def norm_f64(sd: dict, x: torch.Tensor, prefix: str, rms_norm: bool, eps: float) -> torch.Tensor:
    """RMSNorm, or LayerNorm with its bias, of a mamba_ssm state dict's ``prefix``."""
    if rms_norm:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * sd[f"{prefix}.weight"]
    mu, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mu) / torch.sqrt(var + eps) * sd[f"{prefix}.weight"] + sd[f"{prefix}.bias"]


def linear_f64(sd: dict, x: torch.Tensor, prefix: str) -> torch.Tensor:
    return F.linear(x, sd[f"{prefix}.weight"], sd.get(f"{prefix}.bias"))


def causal_conv_f64(sd: dict, x: torch.Tensor, prefix: str) -> torch.Tensor:
    """The depthwise causal convolution ``prefix`` of x [batch, channels, L], zeros before position 0."""
    w = sd[f"{prefix}.weight"][:, 0]  # [channels, K]: y_t = sum_k w_k x_{t-K+1+k}
    k_size, length = w.shape[1], x.shape[-1]
    xp = F.pad(x, (k_size - 1, 0))
    y = sum(w[:, k, None] * xp[:, :, k : k + length] for k in range(k_size))
    return y + sd[f"{prefix}.bias"][:, None] if f"{prefix}.bias" in sd else y


def reference_logits_f64(sd: dict, ids: torch.Tensor, *, d_state: int, dt_rank: int, rms_norm: bool,
                         eps: float = 1e-5) -> torch.Tensor:
    """Logits of a mamba_ssm state dict in float64, the whole sequence from an empty state."""
    sd = {k: v.double() for k, v in sd.items()}

    def norm(x, prefix):
        return norm_f64(sd, x, prefix, rms_norm, eps)

    hidden = sd["backbone.embedding.weight"][ids]  # [batch, L, d_model]
    layer = 0
    while f"backbone.layers.{layer}.norm.weight" in sd:
        p = f"backbone.layers.{layer}.mixer"
        x, z = linear_f64(sd, norm(hidden, f"backbone.layers.{layer}.norm"), f"{p}.in_proj").transpose(1, 2).chunk(2, 1)
        u = F.silu(causal_conv_f64(sd, x, f"{p}.conv1d"))
        dt, B, C = F.linear(u.transpose(1, 2), sd[f"{p}.x_proj.weight"]).split([dt_rank, d_state, d_state], -1)
        y, _ = selective_scan_naive(
            u, F.linear(dt, sd[f"{p}.dt_proj.weight"]).transpose(1, 2), -torch.exp(sd[f"{p}.A_log"]),
            B.transpose(1, 2)[:, None], C.transpose(1, 2)[:, None], D=sd[f"{p}.D"], z=z,
            delta_bias=sd[f"{p}.dt_proj.bias"], delta_softplus=True,
        )
        hidden = hidden + linear_f64(sd, y.transpose(1, 2), f"{p}.out_proj")
        layer += 1
    head = sd.get("lm_head.weight", sd["backbone.embedding.weight"])
    return F.linear(norm(hidden, "backbone.norm_f"), head)
