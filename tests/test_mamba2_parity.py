"""mamba_export.load of Mamba-2 checkpoints against transformers' Mamba2ForCausalLM (an
independent implementation): the same random weights give the same logits and the same
recurrent state, for a whole sequence (batch > 1) and token by token through our state and
through transformers' own cache; the same gradients; the mamba_ssm layout too, and its
variants transformers has no counterpart for against a float64 recomputation."""

import math
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

import mamba_export
from mamba2_checkpoints import hf_to_mamba_ssm, mamba2_logits_f64, mamba_ssm_config, random_hf_mamba2, save_mamba_ssm
from mamba_checkpoints import hf_forward, rel_err, save_hf, to_mamba_ssm_state_dict
from test_transformers_parity import assert_decode_matches as assert_decode_matches_mamba1
from test_transformers_parity import assert_states_match

TOL = 1e-4  # float32 throughout: max |ours - ref| / max |ref|

# Each differs from the others in most fields (SMALL in mamba2_checkpoints: hidden 32, 8 heads of 8,
# 2 groups, d_state 8, conv 4, chunk 8, 2 layers, vocab 50, untied).
CONFIGS = {
    "g2-tied": dict(tie_word_embeddings=True),
    "g1-h4x16-bias-k3": dict(n_groups=1, num_heads=4, head_dim=16, conv_kernel=3, use_bias=True, use_conv_bias=False,
                             residual_in_fp32=False, vocab_size=37),
    "g4-limit-k2-eps": dict(n_groups=4, state_size=16, conv_kernel=2, time_step_limit=(0.05, 0.4), num_hidden_layers=3,
                            layer_norm_epsilon=1e-3, tie_word_embeddings=True),
    "g8-per-head-groups": dict(hidden_size=16, num_heads=8, head_dim=4, n_groups=8, expand=2, state_size=4,
                               vocab_size=61, chunk_size=4),
}


@lru_cache(maxsize=None)
def hf_model(name: str):
    return random_hf_mamba2(seed=len(name), **CONFIGS[name])


def token_ids(name: str, batch: int = 3, length: int = 19) -> torch.Tensor:
    gen = torch.Generator().manual_seed(len(name))
    return torch.randint(hf_model(name).config.vocab_size, (batch, length), generator=gen)


def assert_decode_matches(ours, hf, ids, prefill: int):
    """Mamba-1's check (test_transformers_parity.py). transformers' one-token cached Mamba-2 step
    does not clamp the time step to time_step_limit (its whole-sequence path does, as docs/ops.md
    does): with a limit, the steps are held to the whole sequence only."""
    clamps = tuple(hf.config.time_step_limit) != (0.0, math.inf)
    assert_decode_matches_mamba1(ours, hf, ids, prefill, cached_steps=not clamps)


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_layout_prefill_matches_transformers(name, tmp_path):
    save_hf(hf_model(name), tmp_path)
    model = mamba_export.load(tmp_path)
    assert model.config.architecture == "mamba2"
    ids = token_ids(name)
    with torch.no_grad():
        logits, state = model(ids)
    ref, cache = hf_forward(hf_model(name), ids)
    assert logits.shape == ref.shape
    assert rel_err(logits, ref) < TOL
    assert_states_match(state, cache, hf_model(name).config.conv_kernel)


@pytest.mark.parametrize("prefill", [1, 6])
@pytest.mark.parametrize("name", CONFIGS)
def test_hf_layout_decode_matches_transformers(name, prefill, tmp_path):
    model = mamba_export.load(save_hf(hf_model(name), tmp_path))
    assert_decode_matches(model, hf_model(name), token_ids(name, batch=2, length=14), prefill)


def test_continuing_a_sequence_in_several_tokens(tmp_path):
    """Calls of several tokens from a carried state (chunked prefill), as transformers' cache allows."""
    hf = hf_model("g2-tied")
    model = mamba_export.load(save_hf(hf, tmp_path))
    ids = token_ids("g2-tied", batch=2, length=23)
    full, _ = hf_forward(hf, ids)
    state, cache, pieces = None, None, []
    for start, stop in [(0, 5), (5, 14), (14, 23)]:
        with torch.no_grad():
            logits, state = model(ids[:, start:stop], state)
        ref, cache = hf_forward(hf, ids[:, start:stop], cache)
        assert rel_err(logits, ref) < TOL
        pieces.append(logits)
    assert rel_err(torch.cat(pieces, 1), full) < TOL
    assert_states_match(state, cache, hf.config.conv_kernel)


def test_sharded_and_bin_formats(tmp_path):
    hf, ids = hf_model("g1-h4x16-bias-k3"), token_ids("g1-h4x16-bias-k3")
    ref, _ = hf_forward(hf, ids)
    for fmt in ("sharded_safetensors", "bin"):
        with torch.no_grad():
            logits, _ = mamba_export.load(save_hf(hf, tmp_path / fmt, fmt))(ids)
        assert rel_err(logits, ref) < TOL, fmt


@pytest.mark.parametrize("name", ["g2-tied", "g4-limit-k2-eps"])
def test_gradients_match_transformers(name, tmp_path):
    """The backward through our scan gives transformers' gradients for every parameter."""
    hf = hf_model(name)
    model = mamba_export.load(save_hf(hf, tmp_path))
    ids = token_ids(name, batch=2, length=13)

    def loss(logits):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    hf.zero_grad()
    loss(hf(ids).logits).backward()
    loss(model(ids)[0]).backward()
    theirs = dict(hf.named_parameters())
    ours = dict(model.named_parameters())
    assert ours.keys() == theirs.keys()
    for key, param in ours.items():
        assert rel_err(param.grad, theirs[key].grad) < 1e-4, key
    hf.zero_grad()


# ---- the mamba_ssm layout -------------------------------------------------------------------------

@pytest.mark.parametrize("name, multiple", [("g2-tied", 16), ("g1-h4x16-bias-k3", 8), ("g8-per-head-groups", 1)])
def test_mamba_ssm_layout_matches_transformers(name, multiple, tmp_path):
    hf = hf_model(name)
    model = mamba_export.load(hf_to_mamba_ssm(hf, tmp_path, multiple))
    vocab = hf.config.vocab_size
    assert model.config.vocab_size == -(-vocab // multiple) * multiple  # mamba_ssm's logits keep the padding
    ids = token_ids(name)
    with torch.no_grad():
        logits, _ = model(ids)
    assert rel_err(logits[..., :vocab], hf_forward(hf, ids)[0]) < TOL
    assert_decode_matches(model, hf, ids[:2, :10], prefill=3)


def test_float64_reference_matches_transformers():
    """The test's own float64 recomputation agrees with transformers, so it can serve as the
    reference where transformers has no counterpart (below)."""
    hf = hf_model("g1-h4x16-bias-k3")
    ids = token_ids("g1-h4x16-bias-k3")
    ref = mamba2_logits_f64(to_mamba_ssm_state_dict(hf, 1), mamba_ssm_config(hf, 1), ids)
    assert rel_err(hf_forward(hf, ids)[0], ref) < TOL


VARIANTS = {  # mamba_ssm options transformers' Mamba2 cannot express
    "norm_before_gate": (dict(norm_before_gate=True), {}),
    "no gated norm (the scan gates)": (dict(rmsnorm=False), {}),
    "layer norm blocks, dt_limit": (dict(dt_limit=[0.02, 0.3]), dict(rms_norm=False)),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_mamba_ssm_variants_match_float64_reference(variant, tmp_path):
    hf = hf_model("g2-tied")
    ssm_fields, top_fields = VARIANTS[variant]
    config = mamba_ssm_config(hf, 8)
    config = {**config, **top_fields, "ssm_cfg": {**config["ssm_cfg"], **ssm_fields}}
    sd = to_mamba_ssm_state_dict(hf, 8)
    gen = torch.Generator().manual_seed(1)
    if not config["ssm_cfg"].get("rmsnorm", True):
        for key in [k for k in sd if k.endswith("mixer.norm.weight")]:
            del sd[key]
    if not config["rms_norm"]:
        for key in [k for k in sd if k.endswith(".norm.weight") and "mixer" not in k or k.endswith("norm_f.weight")]:
            sd[key.replace(".weight", ".bias")] = 0.2 * torch.randn(sd[key].shape, generator=gen)
    model = mamba_export.load(save_mamba_ssm(sd, config, tmp_path))
    ids = token_ids("g2-tied", batch=2, length=12)
    ref = mamba2_logits_f64(sd, config, ids)
    with torch.no_grad():
        logits, state = model(ids[:, :5])
        steps = [logits]
        for t in range(5, ids.shape[1]):
            logits, state = model(ids[:, t : t + 1], state)
            steps.append(logits)
    assert rel_err(torch.cat(steps, dim=1), ref) < TOL
