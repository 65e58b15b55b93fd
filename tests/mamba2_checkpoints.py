"""Small random Mamba-2 checkpoints for the tests, and a float64 recomputation.

transformers' Mamba2ForCausalLM is the independent implementation: it builds the models and
writes the Hugging Face layout. The mamba_ssm layout (MambaLMHeadModel with ssm_cfg.layer
"Mamba2") is written here by hand from a transformers state dict, and ``mamba2_logits_f64``
recomputes a mamba_ssm Mamba-2 checkpoint in float64 (the scan by tests/naive.py), sharing
no code with mamba_export: the reference where transformers has no counterpart
(norm_before_gate, no gated norm, LayerNorm).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Mamba2Config, Mamba2ForCausalLM

from mamba_checkpoints import causal_conv_f64, linear_f64, norm_f64, perturb, to_mamba_ssm_state_dict
from naive import ssd_scan_naive

# chunk_size 8: transformers' chunked scan crosses chunk boundaries in short sequences.
SMALL = dict(hidden_size=32, num_hidden_layers=2, vocab_size=50, state_size=8, expand=2, head_dim=8, num_heads=8,
             n_groups=2, conv_kernel=4, chunk_size=8)


def random_hf_mamba2(seed: int = 0, **config) -> Mamba2ForCausalLM:
    """A transformers model with every parameter away from its initial value (``perturb``)."""
    torch.manual_seed(seed)
    return perturb(Mamba2ForCausalLM(Mamba2Config(**{**SMALL, **config})).eval())


def mamba_ssm_config(model: Mamba2ForCausalLM, pad_multiple: int, **ssm_fields) -> dict:
    """config.json of mamba_ssm's MambaLMHeadModel for the same architecture. mamba_ssm builds
    the gated norm with eps 1e-5: the same model only when layer_norm_epsilon is 1e-5."""
    c = model.config
    assert c.layer_norm_epsilon == 1e-5
    ssm_cfg = dict(layer="Mamba2", d_state=c.state_size, d_conv=c.conv_kernel, expand=c.expand, headdim=c.head_dim,
                   ngroups=c.n_groups, chunk_size=c.chunk_size, dt_limit=list(c.time_step_limit), bias=c.use_bias,
                   conv_bias=c.use_conv_bias, rmsnorm=True, norm_before_gate=False, **ssm_fields)
    return dict(d_model=c.hidden_size, d_intermediate=0, n_layer=c.num_hidden_layers, vocab_size=c.vocab_size,
                ssm_cfg=ssm_cfg, attn_layer_idx=[], attn_cfg={}, rms_norm=True, residual_in_fp32=c.residual_in_fp32,
                fused_add_norm=True, pad_vocab_size_multiple=pad_multiple, tie_embeddings=c.tie_word_embeddings)


def save_mamba_ssm(sd: dict, config: dict, directory: Path) -> Path:
    """config.json (Python's json, Infinity included, as mamba_ssm writes it) + pytorch_model.bin."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(sd, directory / "pytorch_model.bin")
    return directory


def hf_to_mamba_ssm(model: Mamba2ForCausalLM, directory: Path, pad_multiple: int = 8) -> Path:
    sd = to_mamba_ssm_state_dict(model, pad_multiple)  # the names and padding are Mamba-1's
    return save_mamba_ssm(sd, mamba_ssm_config(model, pad_multiple), directory)


def mamba2_logits_f64(sd: dict, config: dict, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a mamba_ssm Mamba-2 checkpoint (state dict + config.json dict) in float64,
    the whole sequence from an empty state."""
    sd = {k: v.double() for k, v in sd.items()}
    ssm = config["ssm_cfg"]
    d_state, groups, headdim = ssm["d_state"], ssm["ngroups"], ssm["headdim"]
    d_inner = ssm["expand"] * config["d_model"]
    heads = d_inner // headdim
    eps = config.get("norm_epsilon", 1e-5)

    def norm(x, prefix):
        return norm_f64(sd, x, prefix, config["rms_norm"], eps)

    hidden = sd["backbone.embedding.weight"][ids]  # [batch, L, d_model]
    batch, length = ids.shape
    for layer in range(config["n_layer"]):
        p = f"backbone.layers.{layer}.mixer"
        zxbcdt = linear_f64(sd, norm(hidden, f"backbone.layers.{layer}.norm"), f"{p}.in_proj")
        z, xbc, dt = zxbcdt.split([d_inner, d_inner + 2 * groups * d_state, heads], dim=-1)
        conv = causal_conv_f64(sd, xbc.transpose(1, 2), f"{p}.conv1d")
        x, B, C = F.silu(conv).transpose(1, 2).split([d_inner, groups * d_state, groups * d_state], dim=-1)
        gated_norm = ssm.get("rmsnorm", True)
        y, _ = ssd_scan_naive(
            x.reshape(batch, length, heads, headdim), dt, -torch.exp(sd[f"{p}.A_log"]),
            B.reshape(batch, length, groups, d_state), C.reshape(batch, length, groups, d_state), D=sd[f"{p}.D"],
            z=None if gated_norm else z.reshape(batch, length, heads, headdim), dt_bias=sd[f"{p}.dt_bias"],
            dt_softplus=True, dt_min=ssm["dt_limit"][0], dt_max=ssm["dt_limit"][1],
        )
        y = y.reshape(batch, length, d_inner)
        if gated_norm:  # RMSNorm per group of d_inner / ngroups channels, eps 1e-5, gate before or after
            gate = F.silu(z)
            y = y if ssm.get("norm_before_gate", False) else y * gate
            yg = y.reshape(batch, length, groups, -1)
            y = (yg / torch.sqrt(yg.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(batch, length, d_inner)
            y = y * sd[f"{p}.norm.weight"]
            y = y * gate if ssm.get("norm_before_gate", False) else y
        hidden = hidden + linear_f64(sd, y, f"{p}.out_proj")
    head = sd.get("lm_head.weight", sd["backbone.embedding.weight"])
    return F.linear(norm(hidden, "backbone.norm_f"), head)
