"""mamba_export.load against transformers' MambaForCausalLM (an independent implementation):
the same random weights, saved in every checkpoint layout, give the same logits and the
same recurrent state, for a whole sequence and token by token, batch > 1."""

from functools import lru_cache

import pytest
import torch

import mamba_export
from mamba_checkpoints import (
    HF_FORMATS,
    hf_forward,
    hf_to_mamba_ssm,
    random_hf_model,
    reference_logits_f64,
    rel_err,
    save_hf,
    save_mamba_ssm,
    edit_config,
    to_mamba_ssm_state_dict,
)

TOL = 1e-4  # float32 throughout: max |ours - ref| / max |ref|

# Each differs from the others in most fields; time_step_rank absent means "auto".
CONFIGS = {
    "k4-tied": dict(),
    "k2-bias-untied": dict(hidden_size=24, state_size=8, expand=1, conv_kernel=2, time_step_rank=5, vocab_size=37,
                           use_bias=True, use_conv_bias=False, tie_word_embeddings=False, residual_in_fp32=False),
    "k3-3layers": dict(hidden_size=40, state_size=3, expand=3, conv_kernel=3, time_step_rank=2, vocab_size=61,
                       use_bias=True, num_hidden_layers=3),
    "k4-odd-width-eps": dict(hidden_size=33, state_size=16, conv_kernel=4, vocab_size=101, use_conv_bias=False,
                             tie_word_embeddings=False, num_hidden_layers=1, layer_norm_epsilon=1e-3),
}


@lru_cache(maxsize=None)
def hf_model(name: str):
    return random_hf_model(seed=len(name), **CONFIGS[name])


def token_ids(name: str, batch: int = 3, length: int = 9) -> torch.Tensor:
    gen = torch.Generator().manual_seed(len(name))
    return torch.randint(hf_model(name).config.vocab_size, (batch, length), generator=gen)


def save_hf_layout(name: str, directory, fmt: str = "safetensors"):
    save_hf(hf_model(name), directory, fmt)
    if "time_step_rank" not in CONFIGS[name]:  # transformers writes the resolved rank; parse "auto" too
        edit_config(directory, time_step_rank="auto")
    return directory


def assert_states_match(state, cache, d_conv: int):
    """Ours keep the last d_conv - 1 conv inputs, transformers' the last d_conv: compare the overlap."""
    for layer, (conv, ssm) in enumerate(state):
        hf_conv, hf_ssm = cache.get_conv_state(layer), cache.get_recurrent_state(layer)
        assert conv.shape[-1] == d_conv - 1 and hf_conv.shape[-1] == d_conv
        assert rel_err(conv, hf_conv[..., 1:]) < TOL, f"conv state of layer {layer}"
        assert ssm.dtype == torch.float32 and rel_err(ssm, hf_ssm) < TOL, f"ssm state of layer {layer}"


def assert_decode_matches(ours, hf, ids, prefill: int, cached_steps: bool = True):
    """Prefill ``prefill`` tokens, then one token a call. Each step's logits equal transformers'
    whole-sequence logits at that position and (``cached_steps``) its own cached step; the states
    equal its cache. Our vocabulary may be padded (mamba_ssm): the columns past transformers' are
    not compared."""
    vocab, d_conv = hf.config.vocab_size, hf.config.conv_kernel
    full, _ = hf_forward(hf, ids)
    with torch.no_grad():
        logits, state = ours(ids[:, :prefill])
    ref, cache = hf_forward(hf, ids[:, :prefill])
    assert rel_err(logits[..., :vocab], ref) < TOL
    assert_states_match(state, cache, d_conv)
    for t in range(prefill, ids.shape[1]):
        with torch.no_grad():
            logits, state = ours(ids[:, t : t + 1], state)
        ref, cache = hf_forward(hf, ids[:, t : t + 1], cache)
        assert rel_err(logits[:, 0, :vocab], full[:, t]) < TOL, f"step {t} vs whole sequence"
        if cached_steps:
            assert rel_err(logits[..., :vocab], ref) < TOL, f"step {t} vs transformers' cached step"
    if cached_steps:
        assert_states_match(state, cache, d_conv)


@pytest.mark.parametrize("fmt", HF_FORMATS)
@pytest.mark.parametrize("name", CONFIGS)
def test_hf_layout_prefill_matches_transformers(name, fmt, tmp_path):
    model = mamba_export.load(save_hf_layout(name, tmp_path, fmt))
    ids = token_ids(name)
    with torch.no_grad():
        logits, state = model(ids)
    ref, _ = hf_forward(hf_model(name), ids)
    assert logits.shape == ref.shape
    assert rel_err(logits, ref) < TOL
    assert len(state) == hf_model(name).config.num_hidden_layers


@pytest.mark.parametrize("prefill", [1, 5])
@pytest.mark.parametrize("name", CONFIGS)
def test_hf_layout_decode_matches_transformers(name, prefill, tmp_path):
    model = mamba_export.load(save_hf_layout(name, tmp_path))
    assert_decode_matches(model, hf_model(name), token_ids(name, batch=2), prefill)


# name, pad_vocab_size_multiple, lm_head.weight written for a tied head, ssm_cfg dt_rank "auto"
MAMBA_SSM_CASES = [
    ("k4-tied", 8, False, True),  # 50 -> 56 rows, tied head implicit
    ("k4-tied", 16, True, False),  # 50 -> 64 rows, tied head in the file as torch.save writes it
    ("k2-bias-untied", 8, True, False),  # 37 -> 40 rows, explicit untied head
    ("k3-3layers", 1, False, False),  # no padding
]


@pytest.mark.parametrize("name, multiple, lm_head, auto_rank", MAMBA_SSM_CASES)
def test_mamba_ssm_layout_matches_transformers(name, multiple, lm_head, auto_rank, tmp_path):
    hf = hf_model(name)
    model = mamba_export.load(hf_to_mamba_ssm(hf, tmp_path, multiple, lm_head, auto_rank))
    vocab = hf.config.vocab_size
    assert model.config.vocab_size == -(-vocab // multiple) * multiple  # mamba_ssm's logits keep the padding
    ids = token_ids(name)
    with torch.no_grad():
        logits, _ = model(ids)
    assert logits.shape[-1] == model.config.vocab_size
    assert rel_err(logits[..., :vocab], hf_forward(hf, ids)[0]) < TOL
    assert_decode_matches(model, hf, ids[:2], prefill=3)


def test_minimal_mamba_ssm_config(tmp_path):
    """Only the fields state-spaces/mamba-130m's config.json has: ssm_cfg {} and tie_embeddings absent
    mean mamba_ssm's defaults (d_state 16, d_conv 4, expand 2, dt_rank auto, tied)."""
    hf = random_hf_model(seed=11, state_size=16, conv_kernel=4, expand=2, vocab_size=45)
    directory = hf_to_mamba_ssm(hf, tmp_path)
    edit_config(directory, "tie_embeddings", "d_intermediate", "attn_layer_idx", "attn_cfg", ssm_cfg={})
    ids = torch.randint(45, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = mamba_export.load(directory)(ids)
    assert rel_err(logits[..., :45], hf_forward(hf, ids)[0]) < TOL


@pytest.mark.parametrize("name", ["k4-tied", "k2-bias-untied"])
def test_float64_reference_matches_transformers(name):
    """The test's own float64 recomputation agrees with transformers, so it can serve
    as the reference where transformers has no counterpart (LayerNorm, below)."""
    hf, ids = hf_model(name), token_ids(name)
    ref = reference_logits_f64(to_mamba_ssm_state_dict(hf, 1), ids, d_state=hf.config.state_size,
                               dt_rank=hf.config.time_step_rank, rms_norm=True)
    assert rel_err(hf_forward(hf, ids)[0], ref) < TOL


def test_mamba_ssm_layer_norm_matches_float64_reference(tmp_path):
    """rms_norm=false: transformers' Mamba has RMSNorm only, so the reference is the float64 recomputation."""
    hf = hf_model("k3-3layers")
    c = hf.config
    sd = to_mamba_ssm_state_dict(hf, 8)
    gen = torch.Generator().manual_seed(1)
    for name in [k for k in sd if k.endswith("norm.weight") or k.endswith("norm_f.weight")]:
        sd[name.replace(".weight", ".bias")] = 0.2 * torch.randn(sd[name].shape, generator=gen)
    ssm_cfg = dict(d_state=c.state_size, d_conv=c.conv_kernel, expand=c.expand, dt_rank=c.time_step_rank, bias=True)
    model = mamba_export.load(save_mamba_ssm(sd, tmp_path, d_model=c.hidden_size, n_layer=c.num_hidden_layers,
                                             vocab_size=c.vocab_size, ssm_cfg=ssm_cfg, pad_multiple=8, tied=True,
                                             rms_norm=False))
    ids = token_ids("k3-3layers", batch=2, length=7)
    ref = reference_logits_f64(sd, ids, d_state=c.state_size, dt_rank=c.time_step_rank, rms_norm=False)
    with torch.no_grad():
        logits, state = model(ids[:, :3])
        steps = [logits]
        for t in range(3, ids.shape[1]):
            logits, state = model(ids[:, t : t + 1], state)
            steps.append(logits)
    assert rel_err(torch.cat(steps, dim=1), ref) < TOL
