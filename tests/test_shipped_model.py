"""The shipped checkpoint models/mamba1-pystdlib: loads, tokenizes bytes, is trained, decodes consistently."""

import json
import math
import re
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mamba_export import load

MODEL = Path(__file__).resolve().parents[1] / "models" / "mamba1-pystdlib"
LOG = json.loads((MODEL / "training_log.json").read_text())


@pytest.fixture(scope="module")
def model():
    return load(MODEL)


def test_checkpoint_is_hf_mamba_layout(model):
    config = json.loads((MODEL / "config.json").read_text())
    assert config["model_type"] == "mamba" and config["architectures"] == ["MambaForCausalLM"]
    assert config["vocab_size"] == 256
    assert (MODEL / "model.safetensors").stat().st_size < 8 * 2**20
    assert sum(p.numel() for p in model.parameters()) == LOG["parameters"]


def test_config_is_what_the_model_card_says():
    config = json.loads((MODEL / "config.json").read_text())
    card = (MODEL / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", card, flags=re.M))
    assert {"hidden_size", "num_hidden_layers", "state_size", "vocab_size"} <= rows.keys()
    for key, value in rows.items():
        assert json.loads(value) == config[key], key


TEXTS = [
    "def __init__(self):\n\treturn {'a': 1}  # ASCII\r\n",
    "naïve café, Straße, Ελληνικά, 日本語, 🐍 and \x00\x01\x1f\x7f controls",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_ids_are_utf8_bytes(text):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    ids = tokenizer.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_tokenizer_maps_every_utf8_byte_to_its_value():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 256
    # Every code point below U+0800, one per 3-byte lead byte (avoiding surrogates), one per
    # 4-byte lead byte: together their UTF-8 holds every byte value UTF-8 can contain.
    points = [*range(0x800), *(max(k * 0x1000, 0x800) + 0x100 for k in range(16)),
              0x10000, 0x40000, 0x80000, 0xC0000, 0x100000]
    text = "".join(map(chr, points))
    ids = tokenizer.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert set(ids) == set(range(256)) - {0xC0, 0xC1, *range(0xF5, 0x100)}  # bytes UTF-8 never uses
    assert tokenizer.decode(ids) == text


def test_held_out_stdlib_file_is_predicted_far_better_than_chance(model):
    """A slice of a validation file (never trained on): the loss stays near the logged final value."""
    name = LOG["corpus"]["val"]["names"][-1]
    path = Path(sysconfig.get_paths()["stdlib"]) / name
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    data = path.read_bytes()
    middle = len(data) // 2
    ids = torch.tensor([list(data[middle : middle + 1025])])
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    loss = F.cross_entropy(logits[0], ids[0, 1:]).item()
    final_val = LOG["curve"][-1]["val_loss"]
    assert loss < 1.3 * final_val + 0.1, (loss, final_val)
    assert loss < 0.5 * math.log(256)  # an untrained model scores about log(256)


def test_greedy_decode_with_state_equals_rerunning_the_prefix(model):
    prompt = list(b"def __init__(self")
    with torch.no_grad():
        logits, state = model(torch.tensor([prompt]))
        stepped = []
        for _ in range(20):
            stepped.append(logits[0, -1].argmax().item())
            logits, state = model(torch.tensor([[stepped[-1]]]), state)
        rerun = []
        for _ in range(20):
            full, _ = model(torch.tensor([prompt + rerun]))
            rerun.append(full[0, -1].argmax().item())
    assert stepped == rerun
    assert len(set(stepped)) > 1  # not one byte repeated: the check exercised distinct states
