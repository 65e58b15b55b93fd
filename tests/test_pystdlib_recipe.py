"""models/recipes/train_pystdlib.py end to end on a tiny configuration of each architecture;
its defaults are the shipped checkpoints' settings."""

import importlib.util
import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch

from mamba_export import load

MODELS = Path(__file__).resolve().parents[1] / "models"
RECIPE = MODELS / "recipes" / "train_pystdlib.py"
ARCHITECTURES = ("mamba1", "mamba2")


@pytest.fixture(scope="module")
def recipe():
    if not (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").is_file():
        pytest.skip("this Python has no standard library sources")
    spec = importlib.util.spec_from_file_location("train_pystdlib", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(architecture: str, out: Path, *extra: str) -> list[str]:
    sizes = ["--d-state", "4"] + (["--headdim", "8"] if architecture == "mamba2" else [])
    return ["--architecture", architecture, "--out", str(out), "--d-model", "16", "--n-layer", "1", *sizes,
            "--seq-len", "8", "--batch", "2", "--steps", "4", "--eval-every", "2", "--eval-windows", "2",
            "--sample-bytes", "3", "--threads", str(torch.get_num_threads()), *extra]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_writes_a_loadable_checkpoint_with_its_log(recipe, tmp_path, architecture):
    out = tmp_path / "ckpt"
    recipe.main(tiny(architecture, out))
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                               "training_log.json"}
    model = load(out)
    assert model.config.architecture == architecture
    assert model.config.d_model == 16 and model.config.d_state == 4 and model.config.vocab_size == 256
    log = json.loads((out / "training_log.json").read_text())
    assert [p["step"] for p in log["curve"]] == [0, 2, 4]
    assert all(math.isfinite(p["val_loss"]) for p in log["curve"])
    assert log["corpus"]["val"]["names"] == list(recipe.VAL_FILES)
    assert log["corpus"]["train"]["files"] + log["corpus"]["val"]["files"] == len(
        list(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")))
    for key in ("untrained_samples", "samples"):
        assert [s["prompt"] for s in log[key]] == list(recipe.PROMPTS)
        assert all(len(s["greedy"].encode()) >= 3 and len(s["sampled"].encode()) >= 3 for s in log[key])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_defaults_are_the_shipped_checkpoints_settings(recipe, architecture):
    shipped = MODELS / f"{architecture}-pystdlib"
    if not (shipped / "training_log.json").is_file():
        pytest.skip(f"{shipped} is not shipped")
    logged = json.loads((shipped / "training_log.json").read_text())["args"]
    defaults = vars(recipe.parse_args(["--architecture", architecture]))
    assert defaults.pop("out") == shipped
    # Options added after a checkpoint was trained are not in its log.
    assert {key: defaults[key] for key in logged.keys() - {"out"}} == {k: v for k, v in logged.items() if k != "out"}


def test_refuses_to_overwrite_without_the_flag(recipe, tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="--overwrite"):
        recipe.main(tiny("mamba2", out))
    assert (out / "config.json").read_text() == "{}"
    recipe.main(tiny("mamba2", out, "--overwrite"))
    assert load(out).config.n_layer == 1


def test_unknown_validation_file_is_a_clear_error(recipe, tmp_path):
    with pytest.raises(SystemExit, match="no_such_module.py"):
        recipe.main(tiny("mamba1", tmp_path / "ckpt", "--val-files", "no_such_module.py"))


@pytest.mark.parametrize("extra, message", [
    (["--architecture", "mamba1", "--headdim", "8"], "--headdim: not an option of --architecture mamba1"),
    (["--architecture", "mamba2", "--headdim", "12"], r"d_inner \(32\) must be a multiple of headdim \(12\)"),
])
def test_a_size_the_architecture_cannot_take_is_a_clear_error(recipe, tmp_path, extra, message):
    argv = tiny("mamba2", tmp_path / "ckpt") + extra  # argparse keeps the last of a repeated option
    with pytest.raises(SystemExit, match=message):
        recipe.main(argv)
    assert not (tmp_path / "ckpt").exists()
