"""Mamba-2 config.json in both layouts: bad fields are one-line CheckpointErrors naming the file
and field, both spellings of an infinite time-step limit parse, half dtypes load; and
save_pretrained writes what transformers' Mamba2ForCausalLM.from_pretrained reads back as the
same model, refusing models the Hugging Face layout cannot express."""

import json
import math

import pytest
import torch
from transformers import Mamba2ForCausalLM

import mamba_export
from mamba2_checkpoints import hf_to_mamba_ssm, mamba_ssm_config, random_hf_mamba2, save_mamba_ssm
from mamba_checkpoints import edit_config, hf_forward, rel_err, save_hf, to_mamba_ssm_state_dict
from test_loading_errors import assert_load_fails


@pytest.fixture(scope="module")
def hf():
    return random_hf_mamba2(seed=4, n_groups=2, tie_word_embeddings=True)


def edit_ssm_cfg(directory, **fields):
    config = json.loads((directory / "config.json").read_text())
    edit_config(directory, ssm_cfg={**config["ssm_cfg"], **fields})


HF, SSM = "hf", "mamba_ssm"
CONFIG_CASES = {
    # case: (layout, mutation, fragments of the message)
    "heads * head_dim != expand * hidden": (HF, lambda d: edit_config(d, num_heads=6),
                                            ["num_heads * head_dim (6 * 8) must equal expand * hidden_size (64)"]),
    "groups do not divide heads": (HF, lambda d: edit_config(d, n_groups=3),
                                   ["number of heads (8) must be a multiple of 'n_groups' (3)"]),
    "limit not a pair": (HF, lambda d: edit_config(d, time_step_limit=[0.1]), ["'time_step_limit' must be [min, max]"]),
    "limit reversed": (HF, lambda d: edit_config(d, time_step_limit=[0.5, 0.1]), ["must be [min, max] with 0 <= min"]),
    "limit negative": (HF, lambda d: edit_config(d, time_step_limit=[-1, 1]), ["'time_step_limit' must be [min, max]"]),
    "limit a string": (HF, lambda d: edit_config(d, time_step_limit=["0", "inf"]), ["'time_step_limit' must be"]),
    "zero heads": (HF, lambda d: edit_config(d, num_heads=0), ["'num_heads' must be positive"]),
    "missing hidden_size": (HF, lambda d: edit_config(d, "hidden_size"), ["missing field 'hidden_size'"]),
    "d_ssm": (SSM, lambda d: edit_ssm_cfg(d, d_ssm=32), ["ssm_cfg.d_ssm", "not supported"]),
    "D_has_hdim": (SSM, lambda d: edit_ssm_cfg(d, D_has_hdim=True), ["ssm_cfg.D_has_hdim", "not supported"]),
    "headdim does not divide": (SSM, lambda d: edit_ssm_cfg(d, headdim=7),
                                ["expand * d_model (64) must be a multiple of 'ssm_cfg.headdim' (7)"]),
    "ngroups does not divide": (SSM, lambda d: edit_ssm_cfg(d, ngroups=3), ["multiple of 'ssm_cfg.ngroups' (3)"]),
    "bad dt_limit": (SSM, lambda d: edit_ssm_cfg(d, dt_limit="none"), ["'ssm_cfg.dt_limit' must be [min, max]"]),
    "bool for int": (SSM, lambda d: edit_ssm_cfg(d, headdim=True), ["'ssm_cfg.headdim' must be int"]),
}


def write_checkpoint(hf, directory, layout):
    return save_hf(hf, directory) if layout == HF else hf_to_mamba_ssm(hf, directory)


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config(case, hf, tmp_path):
    layout, mutate, fragments = CONFIG_CASES[case]
    write_checkpoint(hf, tmp_path, layout)
    mutate(tmp_path)
    assert_load_fails(tmp_path, tmp_path / "config.json", *fragments)


def test_config_disagreeing_with_the_weights(hf, tmp_path):
    save_hf(hf, tmp_path)
    edit_config(tmp_path, state_size=4)
    assert_load_fails(tmp_path, tmp_path / "model.safetensors", "mixer.in_proj.weight' has shape",
                      "config.json implies")


@pytest.mark.parametrize("high", [{"__float__": "Infinity"}, math.inf, 1e9])
def test_time_step_limit_spellings(high, hf, tmp_path):
    """transformers 5 writes an infinite limit as {"__float__": "Infinity"}, older writers as Infinity."""
    save_hf(hf, tmp_path)
    edit_config(tmp_path, time_step_limit=[0.0, high])
    model = mamba_export.load(tmp_path)
    assert model.config.dt_limit == (0.0, math.inf if high != 1e9 else 1e9)


@pytest.mark.parametrize("dtype, tol", [("fp16", 2e-3), ("bf16", 2e-2)])
def test_half_dtypes(dtype, tol, hf, tmp_path):
    model = mamba_export.load(save_hf(hf, tmp_path), dtype=dtype)
    ids = torch.randint(hf.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, state = model(ids)
    half = torch.float16 if dtype == "fp16" else torch.bfloat16
    assert logits.dtype == half and state[0][0].dtype == half and state[0][1].dtype == torch.float32
    assert rel_err(logits, hf_forward(hf, ids)[0]) < tol


# ---- save_pretrained ------------------------------------------------------------------------------

FIELDS = ("hidden_size", "num_hidden_layers", "vocab_size", "state_size", "expand", "head_dim", "num_heads",
          "n_groups", "conv_kernel", "chunk_size", "use_bias", "use_conv_bias", "layer_norm_epsilon",
          "residual_in_fp32", "tie_word_embeddings")


def read_back(directory) -> Mamba2ForCausalLM:
    hf, info = Mamba2ForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    return hf.eval()


@pytest.mark.parametrize("config", [dict(tie_word_embeddings=True),
                                    dict(n_groups=4, use_bias=True, time_step_limit=(0.01, 0.7), conv_kernel=3)])
def test_round_trip_through_transformers(config, tmp_path):
    original = random_hf_mamba2(seed=5, **config)
    ours = mamba_export.load(save_hf(original, tmp_path / "in"))
    hf = read_back(mamba_export.save_pretrained(ours, tmp_path / "out"))
    for field in FIELDS:
        assert getattr(hf.config, field) == getattr(original.config, field), field
    assert tuple(hf.config.time_step_limit) == tuple(original.config.time_step_limit)
    for key, value in original.state_dict().items():
        assert torch.equal(hf.state_dict()[key], value), key
    assert mamba_export.load(tmp_path / "out").config == ours.config


def test_round_trip_of_a_mamba_ssm_checkpoint(tmp_path):
    """The padded vocabulary is kept: transformers then gives the same logits on all of it."""
    original = random_hf_mamba2(seed=6)
    ours = mamba_export.load(hf_to_mamba_ssm(original, tmp_path / "in", pad_multiple=16))
    hf = read_back(mamba_export.save_pretrained(ours, tmp_path / "out"))
    assert hf.config.vocab_size == ours.config.vocab_size == 64
    ids = torch.randint(50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = ours(ids)
    assert rel_err(hf_forward(hf, ids)[0], logits) < 1e-4


@pytest.mark.parametrize("ssm_fields, message", [
    (dict(norm_before_gate=True), "this model gates after it (ssm_cfg.norm_before_gate=true)"),
    (dict(rmsnorm=False), "this model has none (ssm_cfg.rmsnorm=false)"),
])
def test_refuses_what_the_hf_layout_cannot_express(ssm_fields, message, tmp_path):
    original = random_hf_mamba2(seed=7)
    config = mamba_ssm_config(original, 8)
    config["ssm_cfg"].update(ssm_fields)
    sd = to_mamba_ssm_state_dict(original, 8)
    if ssm_fields.get("rmsnorm") is False:
        sd = {k: v for k, v in sd.items() if not k.endswith("mixer.norm.weight")}
    ours = mamba_export.load(save_mamba_ssm(sd, config, tmp_path / "in"))
    with pytest.raises(mamba_export.CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mamba_export.save_pretrained(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()
