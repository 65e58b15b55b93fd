"""Bad checkpoints and arguments: mamba_export.load raises one clear, one-line error that
names the file and the problem, and never changes the checkpoint directory. Also hub ids
(offline) and the dtype argument."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mamba_export
from mamba_export import CheckpointError, MissingDependencyError
from mamba_checkpoints import edit_config, hf_forward, hf_to_mamba_ssm, random_hf_model, rel_err, save_hf


@pytest.fixture(scope="module")
def hf():
    return random_hf_model(seed=3)


def snapshot(directory: Path) -> dict:
    """Every path under ``directory`` with its content hash and modification time."""
    return {
        str(p.relative_to(directory)): (p.is_dir() or hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
    }


def assert_load_fails(directory: Path, names: Path, *fragments: str):
    """load raises CheckpointError with one line naming ``names`` and each fragment; nothing changes."""
    before = snapshot(directory)
    with pytest.raises(CheckpointError) as info:
        mamba_export.load(directory)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(names) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert snapshot(directory) == before


def write_checkpoint(hf, directory: Path, layout: str):
    """``layout``: mamba_ssm, or one of the Hugging Face formats of ``save_hf``."""
    return hf_to_mamba_ssm(hf, directory) if layout == "mamba_ssm" else save_hf(hf, directory, layout)


# ---- config.json -------------------------------------------------------------------------------

CONFIG = "config.json"
HF, SSM = "safetensors", "mamba_ssm"  # the layout a case starts from


def write_config(text: str):
    return lambda d: (d / CONFIG).write_bytes(text.encode() if isinstance(text, str) else text)


CONFIG_CASES = {
    # case: (layout, mutation, fragments of the message)
    "missing config.json": (HF, lambda d: (d / CONFIG).unlink(), ["file not found"]),
    "invalid JSON": (HF, write_config('{"model_type": "mamba",'), ["not valid JSON"]),
    "not UTF-8": (HF, write_config(b"\xff\xfe{}"), ["not valid JSON"]),
    "not an object": (HF, write_config("[1, 2]"), ["expected a JSON object"]),
    "unknown model_type": (HF, lambda d: edit_config(d, model_type="llama"), ["model_type 'llama' is not supported"]),
    "unknown architecture": (HF, write_config('{"hidden_size": 16}'), ["unknown architecture"]),
    "missing field": (HF, lambda d: edit_config(d, "hidden_size"), ["missing field 'hidden_size'"]),
    "str for int": (HF, lambda d: edit_config(d, hidden_size="16"), ["'hidden_size' must be int, got '16'"]),
    "float for int": (HF, lambda d: edit_config(d, state_size=4.5), ["field 'state_size' must be int"]),
    "str for bool": (HF, lambda d: edit_config(d, use_bias="no"), ["field 'use_bias' must be bool"]),
    "bad time_step_rank": (HF, lambda d: edit_config(d, time_step_rank="big"), ["'time_step_rank' must be int"]),
    "zero layers": (HF, lambda d: edit_config(d, num_hidden_layers=0), ["'num_hidden_layers' must be positive"]),
    "str for float": (HF, lambda d: edit_config(d, layer_norm_epsilon="1e-5"), ["'layer_norm_epsilon' must be float"]),
    "other activation": (HF, lambda d: edit_config(d, hidden_act="gelu"), ["hidden_act 'gelu' is not supported"]),
    "missing vocab_size": (SSM, lambda d: edit_config(d, "vocab_size"), ["missing field 'vocab_size'"]),
    "ssm_cfg not an object": (SSM, lambda d: edit_config(d, ssm_cfg=[4]), ["field 'ssm_cfg' must be an object"]),
    "ssm_cfg field type": (SSM, lambda d: edit_config(d, ssm_cfg={"d_state": 4.5}), ["'ssm_cfg.d_state' must be int"]),
    "hybrid (attention layers)": (SSM, lambda d: edit_config(d, attn_layer_idx=[1], d_intermediate=64), ["hybrid"]),
    "unknown layer": (SSM, lambda d: edit_config(d, ssm_cfg={"layer": "Mamba3"}), ["layer 'Mamba3' is not supported"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config(case, hf, tmp_path):
    layout, mutate, fragments = CONFIG_CASES[case]
    write_checkpoint(hf, tmp_path, layout)
    mutate(tmp_path)
    assert_load_fails(tmp_path, tmp_path / CONFIG, *fragments)


# ---- weight files ------------------------------------------------------------------------------

def edit_safetensors(path: Path, edit):
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def truncate(path: Path, keep: float):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


SAFETENSORS, BIN = "model.safetensors", "pytorch_model.bin"


def set_tensor(name: str, value: torch.Tensor):
    return lambda d: edit_safetensors(d / SAFETENSORS, lambda tensors: tensors.update({name: value}))


def drop_tensor(name: str):
    return lambda d: edit_safetensors(d / SAFETENSORS, lambda tensors: tensors.pop(name))


def write_bin(obj):
    return lambda d: (d / BIN).write_bytes(obj) if isinstance(obj, bytes) else torch.save(obj, d / BIN)


WEIGHT_CASES = {
    # case: (layout, mutation, the file the message names, fragments of the message)
    "no weights": (HF, lambda d: (d / SAFETENSORS).unlink(), ".", ["no weights found"]),
    "truncated safetensors": (HF, lambda d: truncate(d / SAFETENSORS, 0.6), SAFETENSORS, ["truncated or corrupt"]),
    "truncated safetensors header": (HF, lambda d: truncate(d / SAFETENSORS, 1e-4), SAFETENSORS,
                                     ["truncated or corrupt"]),
    "garbage .bin": ("bin", write_bin(b"not a checkpoint" * 50), BIN, ["truncated or corrupt"]),
    "truncated .bin": ("bin", lambda d: truncate(d / BIN, 0.5), BIN, ["truncated or corrupt"]),
    "pickled object in .bin": ("bin", write_bin(torch.nn.Linear(2, 2)), BIN,
                               ["pickled Python objects (torch.nn.modules.linear.Linear)"]),
    ".bin not a state dict": ("bin", write_bin([torch.zeros(2)]), BIN, ["expected a dict of tensors"]),
    "wrong shape": (HF, set_tensor("backbone.layers.1.mixer.in_proj.weight", torch.zeros(64, 15)), SAFETENSORS,
                    ["'backbone.layers.1.mixer.in_proj.weight' has shape [64, 15], config.json implies [64, 16]"]),
    "config disagrees with weights": (HF, lambda d: edit_config(d, state_size=5), SAFETENSORS,
                                      ["has shape", "config.json implies"]),
    "missing tensor": (HF, drop_tensor("backbone.layers.0.mixer.D"), SAFETENSORS,
                       ["missing tensors ['backbone.layers.0.mixer.D']"]),
    "untied config, no lm_head": (HF, lambda d: edit_config(d, tie_word_embeddings=False), SAFETENSORS,
                                  ["missing tensors ['lm_head.weight']"]),
    "unexpected tensor": (HF, set_tensor("backbone.layers.0.mixer.extra", torch.zeros(3)), SAFETENSORS,
                          ["unexpected tensors ['backbone.layers.0.mixer.extra']"]),
    "more layers than config": (HF, lambda d: edit_config(d, num_hidden_layers=1), SAFETENSORS,
                                ["unexpected tensors ['backbone.layers.1."]),
    "integer tensor": (HF, set_tensor("backbone.norm_f.weight", torch.ones(16, dtype=torch.int32)), SAFETENSORS,
                       ["'backbone.norm_f.weight' has dtype torch.int32"]),
    "mamba_ssm names in messages": (SSM, lambda d: edit_config(d, vocab_size=90), BIN,
                                    ["tensor 'backbone.embedding.weight' has shape [56, 16]"]),
}


@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_bad_weights(case, hf, tmp_path):
    layout, mutate, names, fragments = WEIGHT_CASES[case]
    write_checkpoint(hf, tmp_path, layout)
    mutate(tmp_path)
    assert_load_fails(tmp_path, tmp_path / names, *fragments)


def test_unreadable_weights_say_why(hf, tmp_path):
    write_checkpoint(hf, tmp_path, HF)
    weights = tmp_path / SAFETENSORS
    weights.chmod(0)
    try:
        if os.access(weights, os.R_OK):
            pytest.skip("this user reads files without read permission (root)")
        with pytest.raises(CheckpointError) as info:
            mamba_export.load(tmp_path)
        assert str(info.value) == f"{weights}: cannot be read (Permission denied)"
    finally:
        weights.chmod(0o644)


def shard_index(directory: Path) -> dict:
    return json.loads((directory / "model.safetensors.index.json").read_text())


def rewrite_index(directory: Path, edit):
    index = shard_index(directory)
    edit(index)
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def first_shard(directory: Path) -> str:
    return sorted(set(shard_index(directory)["weight_map"].values()))[0]


SHARD_CASES = {
    "missing shard": (lambda d: (d / first_shard(d)).unlink(), ["lists shard 'model-0000", "which is missing"]),
    "no weight_map": (lambda d: rewrite_index(d, lambda i: i.pop("weight_map")), ["no 'weight_map'"]),
    "shard outside the directory": (
        lambda d: rewrite_index(d, lambda i: i["weight_map"].update({"backbone.norm_f.weight": "../x.safetensors"})),
        ["must be a file name beside the index, got '../x.safetensors'"]),
    "not a file name": (lambda d: rewrite_index(d, lambda i: i["weight_map"].update({"backbone.norm_f.weight": 3})),
                        ["weight_map['backbone.norm_f.weight'] must be a file name"]),
}


@pytest.mark.parametrize("case", SHARD_CASES)
def test_bad_shard_index(case, hf, tmp_path):
    mutate, fragments = SHARD_CASES[case]
    save_hf(hf, tmp_path, "sharded_safetensors")
    mutate(tmp_path)
    assert_load_fails(tmp_path, tmp_path / "model.safetensors.index.json", *fragments)


def test_shard_without_a_tensor_its_index_lists(hf, tmp_path):
    save_hf(hf, tmp_path, "sharded_safetensors")
    shard = first_shard(tmp_path)
    rewrite_index(tmp_path, lambda i: i["weight_map"].update({"backbone.extra": shard}))
    assert_load_fails(tmp_path, tmp_path / shard, "missing tensors listed in the index: ['backbone.extra']")


@pytest.mark.parametrize("layout", ["safetensors", "sharded_safetensors", "bin", "sharded_bin", "mamba_ssm"])
def test_loading_changes_nothing(layout, hf, tmp_path):
    write_checkpoint(hf, tmp_path, layout)
    before = snapshot(tmp_path)
    mamba_export.load(tmp_path)
    assert snapshot(tmp_path) == before


# ---- paths and hub ids --------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory") as info:
        mamba_export.load(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value)


def test_file_instead_of_directory(hf, tmp_path):
    save_hf(hf, tmp_path)
    with pytest.raises(CheckpointError, match="expected a checkpoint directory") as info:
        mamba_export.load(tmp_path / SAFETENSORS)
    assert str(tmp_path / SAFETENSORS) in str(info.value)


def test_hub_id_offline_is_a_clear_error(tmp_path):
    """HF_HUB_OFFLINE=1 as a user sets it: read when huggingface_hub is imported, hence a fresh process."""
    code = (
        "import mamba_export\n"
        "try:\n    mamba_export.load('state-spaces/mamba-130m-hf')\n"
        "except mamba_export.CheckpointError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("'state-spaces/mamba-130m-hf' is not a local directory"), message
    assert "HF_HUB_OFFLINE" in message and "offline" in message and "pass its directory" in message
    assert "\n" not in message and "Traceback" not in result.stderr


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_hub_id_in_the_cache_loads_offline(layout, hf, tmp_path, monkeypatch):
    """A snapshot in the hub cache (laid out as huggingface_hub writes it) needs no network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--test--tiny-mamba"
    save_hf(hf, repo / "snapshots" / commit, layout)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert rel_err(mamba_export.load("test/tiny-mamba")(ids)[0], hf_forward(hf, ids)[0]) < 1e-4


def test_invalid_hub_id(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="'not a/valid id': no such directory, and not a valid Hugging Face"):
        mamba_export.load("not a/valid id")


def test_hub_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match="pip install huggingface_hub"):
        mamba_export.load("state-spaces/mamba-130m-hf")


# ---- dtype --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, expected, tol", [
    (None, torch.float32, 1e-4), ("fp32", torch.float32, 1e-4), (torch.float32, torch.float32, 1e-4),
    ("fp16", torch.float16, 2e-3), ("float16", torch.float16, 2e-3), (torch.float16, torch.float16, 2e-3),
    ("bf16", torch.bfloat16, 2e-2), (torch.bfloat16, torch.bfloat16, 2e-2), ("auto", torch.float32, 1e-4),
])
def test_dtype(dtype, expected, tol, hf, tmp_path):
    model = mamba_export.load(save_hf(hf, tmp_path), dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}
    ids = torch.randint(hf.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, state = model(ids)
    assert logits.dtype == expected
    assert state[0][0].dtype == expected and state[0][1].dtype == torch.float32  # the SSM state stays float32
    assert rel_err(logits, hf_forward(hf, ids)[0]) < tol


def test_auto_dtype_keeps_the_checkpoints(hf, tmp_path):
    """Stored bfloat16 with A_log and D in float32 (as some conversions do): 'auto' is bfloat16,
    the default is float32."""
    save_hf(hf, tmp_path)
    edit_safetensors(tmp_path / SAFETENSORS, lambda t: t.update(
        {k: v if k.endswith(("A_log", ".D")) else v.bfloat16() for k, v in t.items()}))
    assert {p.dtype for p in mamba_export.load(tmp_path, dtype="auto").parameters()} == {torch.bfloat16}
    assert {p.dtype for p in mamba_export.load(tmp_path).parameters()} == {torch.float32}


def test_auto_dtype_of_a_float64_checkpoint(hf, tmp_path):
    save_hf(hf, tmp_path)
    edit_safetensors(tmp_path / SAFETENSORS, lambda t: t.update({k: v.double() for k, v in t.items()}))
    with pytest.raises(CheckpointError, match="torch.float64; pass dtype='fp32'"):
        mamba_export.load(tmp_path, dtype="auto")
    assert {p.dtype for p in mamba_export.load(tmp_path).parameters()} == {torch.float32}


@pytest.mark.parametrize("dtype", ["fp8", "int8", "float64", torch.float64, torch.int64])
def test_unsupported_dtype(dtype, hf, tmp_path):
    with pytest.raises(ValueError, match="use one of fp32, fp16, bf16, auto"):
        mamba_export.load(save_hf(hf, tmp_path), dtype=dtype)
