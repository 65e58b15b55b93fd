"""mamba_export.save_pretrained writes the Hugging Face layout: transformers'
MambaForCausalLM.from_pretrained reads it back as the same model. It never writes a
checkpoint that would load as another model, and never overwrites one unasked."""

import pytest
import torch
from transformers import MambaForCausalLM

import mamba_export
from mamba_checkpoints import hf_forward, hf_to_mamba_ssm, random_hf_model, rel_err, save_hf

ROUND_TRIPS = {
    "tied": dict(),
    "untied-bias-k3": dict(hidden_size=24, state_size=6, conv_kernel=3, time_step_rank=4, vocab_size=41,
                           use_bias=True, use_conv_bias=False, tie_word_embeddings=False, residual_in_fp32=False),
}

FIELDS = ("hidden_size", "state_size", "num_hidden_layers", "vocab_size", "expand", "intermediate_size",
          "conv_kernel", "time_step_rank", "use_bias", "use_conv_bias", "layer_norm_epsilon", "residual_in_fp32",
          "tie_word_embeddings")


def read_back(directory) -> MambaForCausalLM:
    hf, info = MambaForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    return hf.eval()


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip_through_transformers(name, tmp_path):
    original = random_hf_model(seed=5, **ROUND_TRIPS[name])
    ours = mamba_export.load(save_hf(original, tmp_path / "in"))
    hf = read_back(mamba_export.save_pretrained(ours, tmp_path / "out"))
    for field in FIELDS:
        assert getattr(hf.config, field) == getattr(original.config, field), field
    for key, value in original.state_dict().items():
        assert torch.equal(hf.state_dict()[key], value), key
    ids = torch.randint(original.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = ours(ids)
    assert rel_err(hf_forward(hf, ids)[0], logits) < 1e-4


def test_round_trip_of_a_mamba_ssm_checkpoint(tmp_path):
    """The padded vocabulary is kept: transformers then gives the same logits on all of it."""
    original = random_hf_model(seed=6)
    ours = mamba_export.load(hf_to_mamba_ssm(original, tmp_path / "in", pad_multiple=16))
    hf = read_back(mamba_export.save_pretrained(ours, tmp_path / "out"))
    assert hf.config.vocab_size == ours.config.vocab_size == 64
    ids = torch.randint(original.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = ours(ids)
    assert rel_err(hf_forward(hf, ids)[0], logits) < 1e-4
    assert rel_err(logits[..., :50], hf_forward(original, ids)[0]) < 1e-4


def test_refuses_a_layer_norm_model(tmp_path):
    """transformers' Mamba has RMSNorm only: a LayerNorm model written as one would load as another model."""
    original = random_hf_model(seed=7)
    source = hf_to_mamba_ssm(original, tmp_path / "in")
    sd = torch.load(source / "pytorch_model.bin")
    for key in [k for k in sd if k.endswith("norm.weight") or k.endswith("norm_f.weight")]:
        sd[key.replace(".weight", ".bias")] = torch.zeros_like(sd[key])
    torch.save(sd, source / "pytorch_model.bin")
    config = (source / "config.json").read_text().replace('"rms_norm": true', '"rms_norm": false')
    (source / "config.json").write_text(config)
    ours = mamba_export.load(source)
    with pytest.raises(mamba_export.CheckpointError, match="RMSNorm only; this model uses LayerNorm"):
        mamba_export.save_pretrained(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_does_not_overwrite_unasked(tmp_path):
    ours = mamba_export.load(save_hf(random_hf_model(seed=8), tmp_path / "a"))
    other = save_hf(random_hf_model(seed=9, vocab_size=30), tmp_path / "b", "bin")
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    with pytest.raises(FileExistsError, match="already holds config.json, pytorch_model.bin"):
        mamba_export.save_pretrained(ours, other)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    mamba_export.save_pretrained(ours, other, overwrite=True)
    assert mamba_export.load(other).config == ours.config  # model.safetensors is read before the .bin
    assert not list(other.glob(".*partial"))
