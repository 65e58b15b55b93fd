"""The shipped checkpoints models/mamba1-pystdlib and models/mamba2-pystdlib: load (ours and
transformers'), match their model cards, tokenize bytes, are trained, decode consistently."""

import json
import math
import re
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mamba_export import load

MODELS = Path(__file__).resolve().parents[1] / "models"
# Checkpoint -> its Hugging Face model_type and class.
SHIPPED = {"mamba1-pystdlib": ("mamba", "MambaForCausalLM"), "mamba2-pystdlib": ("mamba2", "Mamba2ForCausalLM")}


@pytest.fixture(scope="module", params=SHIPPED)
def name(request):
    return request.param


def read_json(name: str, file: str) -> dict:
    return json.loads((MODELS / name / file).read_text())


@pytest.fixture(scope="module")
def model(name):
    return load(MODELS / name)


def held_out_slice(name: str, length: int) -> torch.Tensor:
    """[1, length] bytes from the middle of the last validation file (never trained on)."""
    path = Path(sysconfig.get_paths()["stdlib"]) / read_json(name, "training_log.json")["corpus"]["val"]["names"][-1]
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    data = path.read_bytes()
    middle = len(data) // 2
    return torch.tensor([list(data[middle : middle + length])])


def test_checkpoint_is_hf_layout(name, model):
    config = read_json(name, "config.json")
    model_type, hf_class = SHIPPED[name]
    assert config["model_type"] == model_type and config["architectures"] == [hf_class]
    assert config["vocab_size"] == 256
    assert (MODELS / name / "model.safetensors").stat().st_size < 8 * 2**20
    assert sum(p.numel() for p in model.parameters()) == read_json(name, "training_log.json")["parameters"]


def test_transformers_loads_it_with_the_same_logits(name, model):
    transformers = pytest.importorskip("transformers")
    hf = getattr(transformers, SHIPPED[name][1]).from_pretrained(MODELS / name).eval()
    ids = held_out_slice(name, 200)
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    assert (ours - theirs).abs().max() < 1e-4 * theirs.abs().max()


def card_table(name: str, first_header: str) -> list[list[str]]:
    """The body rows of the model card's markdown table whose header starts with ``| first_header |``."""
    lines = (MODELS / name / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_config_is_what_the_model_card_says(name):
    config = read_json(name, "config.json")
    rows = {re.fullmatch(r"`(\w+)`", key).group(1): value for key, value in card_table(name, "field")}
    # Every field but the names and the ones transformers fixes for Mamba (silu, the epsilon).
    assert rows.keys() == config.keys() - {"architectures", "model_type", "hidden_act", "layer_norm_epsilon"}
    for key, value in rows.items():
        assert json.loads(value) == config[key], key


def test_loss_table_is_the_training_log(name):
    curve = {p["step"]: p for p in read_json(name, "training_log.json")["curve"]}
    rows = card_table(name, "step")
    assert rows and int(rows[-1][0]) == max(curve)  # the table ends with the final model
    for row in rows:
        point = curve[int(row[0])]
        assert float(row[5]) == round(point["val_bits_per_byte"], 3), row


TEXTS = [
    "def __init__(self):\n\treturn {'a': 1}  # ASCII\r\n",
    "naïve café, Straße, Ελληνικά, 日本語, 🐍 and \x00\x01\x1f\x7f controls",
    "",
]


def test_both_checkpoints_share_one_tokenizer_file():
    assert len({(MODELS / name / "tokenizer.json").read_bytes() for name in SHIPPED}) == 1


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_ids_are_utf8_bytes(name, text):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODELS / name / "tokenizer.json"))
    ids = tokenizer.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_tokenizer_maps_every_utf8_byte_to_its_value(name):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODELS / name / "tokenizer.json"))
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


def test_held_out_stdlib_file_is_predicted_far_better_than_chance(name, model):
    """A slice of a validation file: the loss stays near the logged final value."""
    ids = held_out_slice(name, 1025)
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    loss = F.cross_entropy(logits[0], ids[0, 1:]).item()
    final_val = read_json(name, "training_log.json")["curve"][-1]["val_loss"]
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
