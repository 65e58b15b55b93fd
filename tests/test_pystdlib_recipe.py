"""models/recipes/train_mamba1_pystdlib.py end to end on a tiny configuration."""

import importlib.util
import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch

from mamba_export import load

RECIPE = Path(__file__).resolve().parents[1] / "models" / "recipes" / "train_mamba1_pystdlib.py"


@pytest.fixture(scope="module")
def recipe():
    if not (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").is_file():
        pytest.skip("this Python has no standard library sources")
    spec = importlib.util.spec_from_file_location("train_mamba1_pystdlib", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--d-model", "16", "--n-layer", "1", "--seq-len", "8", "--batch", "2",
            "--steps", "4", "--eval-every", "2", "--eval-windows", "2", "--sample-bytes", "3",
            "--threads", str(torch.get_num_threads()), *extra]


def test_writes_a_loadable_checkpoint_with_its_log(recipe, tmp_path):
    out = tmp_path / "ckpt"
    recipe.main(tiny(out))
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                               "training_log.json"}
    model = load(out)
    assert model.config.d_model == 16 and model.config.vocab_size == 256
    log = json.loads((out / "training_log.json").read_text())
    assert [p["step"] for p in log["curve"]] == [0, 2, 4]
    assert all(math.isfinite(p["val_loss"]) for p in log["curve"])
    assert log["corpus"]["val"]["names"] == list(recipe.VAL_FILES)
    assert log["corpus"]["train"]["files"] + log["corpus"]["val"]["files"] == len(
        list(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")))
    assert len(log["samples"]) == len(recipe.PROMPTS)


def test_refuses_to_overwrite_without_the_flag(recipe, tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="--overwrite"):
        recipe.main(tiny(out))
    assert (out / "config.json").read_text() == "{}"
    recipe.main(tiny(out, "--overwrite"))
    assert load(out).config.n_layer == 1


def test_unknown_validation_file_is_a_clear_error(recipe, tmp_path):
    with pytest.raises(SystemExit, match="no_such_module.py"):
        recipe.main(tiny(tmp_path / "ckpt", "--val-files", "no_such_module.py"))
