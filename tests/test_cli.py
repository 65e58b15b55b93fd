"""The mamba-export command line, run in-process through cli.main on the shipped model
(models/mamba1-pystdlib) and a small random one: export, validate (passing, and failing on a
tampered export), generate through ONNX Runtime and eager PyTorch, and bad input as exit
status 2 with one line on stderr."""

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file, save_file

import mamba_export
import mamba_export.generate as generate_py
from mamba_export import console
from mamba_export.cli import DEFAULT_MODEL, main
from mamba_export.intercept import uninstall_mamba_ssm_shim
from mamba_export.tokenizer import TextStream, load_tokenizer
from mamba_export.validate import TOLERANCES
from test_export import random_model

SHIPPED = str(DEFAULT_MODEL)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"


def cli(capsys, *argv):
    """(exit status, stdout, stderr) of `mamba-export ARGV`."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def shipped_export(tmp_path_factory):
    """`mamba-export export` of the shipped model: (exit status, stdout, export directory)."""
    out = tmp_path_factory.mktemp("cli") / "shipped"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = main(["export", SHIPPED, "-o", str(out), "-q"])
    return code, stdout.getvalue(), out


# --- export -------------------------------------------------------------------------------

def test_export_writes_the_graph_and_its_description(shipped_export):
    code, stdout, out = shipped_export
    assert code == 0 and stdout == f"{out / 'model.onnx'}\n"
    n_layer = json.loads((DEFAULT_MODEL / "config.json").read_text())["num_hidden_layers"]
    proto = onnx.load(str(out / "model.onnx"))
    scans = [n for n in proto.graph.node if n.op_type == "SelectiveScan"]
    assert len(scans) == n_layer and all(n.domain == "mamba" for n in scans)
    info = json.loads((out / "export.json").read_text())
    assert (info["source"], info["dtype"], info["portable"]) == (SHIPPED, "float32", False)
    assert [i.name for i in proto.graph.input] == info["inputs"]
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx"]


def test_export_replaces_files_only_with_overwrite(tmp_path, capsys):
    checkpoint = mamba_export.save_pretrained(random_model(), tmp_path / "small")
    out = tmp_path / "out"
    out.mkdir()
    mine = {"model.onnx": b"the user's model", "export.json": b"{}", "notes.txt": b"keep"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    code, stdout, err = cli(capsys, "export", checkpoint, "-o", out, "-q")
    assert (code, stdout) == (2, "")
    assert err == (f"mamba-export export: error: {out} already holds an export (model.onnx); use --overwrite to "
                   "replace it\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == mine, "a refused export changes nothing"
    weights_only = tmp_path / "weights-only"  # an export's external weights alone are kept too
    weights_only.mkdir()
    (weights_only / "model.onnx.data").write_bytes(b"the user's weights")
    code, _, err = cli(capsys, "export", checkpoint, "-o", weights_only, "-q")
    assert code == 2 and "already holds an export (model.onnx.data)" in err, err
    assert (weights_only / "model.onnx.data").read_bytes() == b"the user's weights"

    code, stdout, err = cli(capsys, "export", checkpoint, "-o", out, "--overwrite", "-q")
    assert (code, stdout, err) == (0, f"{out / 'model.onnx'}\n", "")
    onnx.checker.check_model(str(out / "model.onnx"))
    assert json.loads((out / "export.json").read_text())["source"] == str(checkpoint)
    assert (out / "notes.txt").read_bytes() == b"keep"


def test_help_names_only_options_of_its_own_command():
    """generate's --overwrite once said what it did to validate's --json, an option generate lacks."""
    import argparse

    from mamba_export.cli import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    foreign = []
    for name, sub in commands.items():
        own = {option for action in sub._actions for option in action.option_strings}
        for action in sub._actions:
            named = re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", action.help or "")
            foreign += [f"{name} {action.option_strings[-1]}: {o}" for o in named if o not in own]
    assert not foreign


def test_every_option_with_a_default_says_it_in_its_help():
    import argparse

    from mamba_export.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {action.option_strings[-1]}" for name, sub in commands.items() for action in sub._actions
               if action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
               and "default" not in (action.help or "")]  # fmt: skip
    assert not missing, missing


# --- validate -----------------------------------------------------------------------------

def documented_table(heading_row: str) -> list[list[str]]:
    """The cells of the rows of docs/export.md's table whose header row is ``heading_row``."""
    lines = DOCS.read_text().splitlines()
    start = lines.index(heading_row) + 2  # past the header and the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_validation_tolerances_are_documented():
    def bound(cell):  # "≤ 1e-4" or "≥ 90%"
        number = cell.lstrip("≤≥ ")
        return float(number[:-1]) / 100 if number.endswith("%") else float(number)

    rows = documented_table("| dtype | logits max rel error | state max rel error | greedy tokens agree |")
    assert {dtype: tuple(bound(c) for c in cells) for dtype, *cells in rows} == TOLERANCES


def test_validate_passes_and_writes_the_documented_report(shipped_export, tmp_path, capsys):
    report = tmp_path / "report.json"
    code, stdout, err = cli(capsys, "validate", SHIPPED, "--backend", "ort", "--onnx", shipped_export[2],
                            "--decode-steps", 4, "--json", report)
    assert code == 0 and "PASSED" in stdout and "Traceback" not in err
    assert f"Using the export in {shipped_export[2]}" in err
    result = json.loads(report.read_text())
    documented = {name.strip("` ") for cells in documented_table("| field | content |") for name in cells[0].split(",")}
    assert set(result) == documented
    assert (result["backend"], result["dtype"], result["batch"], result["decode_steps"]) == ("ort", "float32", 2, 4)
    assert result["tolerance"] == dict(zip(("max_rel_err", "state_max_rel_err", "greedy_match"), TOLERANCES["float32"]))
    assert result["passed"] is True and 0 <= result["max_rel_err"] <= TOLERANCES["float32"][0]


def test_validate_report_may_go_into_the_export_it_makes(tmp_path, capsys):
    """make demo's form: --json inside the --onnx directory that this run creates."""
    export = tmp_path / "new-export"
    code, stdout, err = cli(capsys, "validate", SHIPPED, "--onnx", export, "--decode-steps", 2,
                            "--json", export / "validation.json")
    assert code == 0 and "PASSED" in stdout, err
    assert json.loads((export / "validation.json").read_text())["passed"] is True


def test_an_export_of_the_default_model_is_reused_from_other_directories(tmp_path, monkeypatch, capsys):
    """From the checkout the default model is models/mamba1-pystdlib; its export records the
    resolved path, so the model is recognised from anywhere and however it is named."""
    export = tmp_path / "export"
    quick = ("--onnx", export, "--batch", 1, "--prompt-len", 4, "--decode-steps", 1)
    monkeypatch.chdir(DEFAULT_MODEL.parents[1])
    code, _, err = cli(capsys, "validate", *quick)
    assert code == 0 and "Exporting models/mamba1-pystdlib to ONNX" in err, err
    info = json.loads((export / "export.json").read_text())
    assert info["source"] == SHIPPED
    for cwd, model in ((tmp_path, []), (DEFAULT_MODEL.parent, ["./mamba1-pystdlib"])):
        monkeypatch.chdir(cwd)
        code, _, err = cli(capsys, "validate", *model, *quick)
        assert code == 0 and f"Using the export in {export}" in err, err
    # An export that recorded the relative name (earlier versions) is still recognised where it was made.
    (export / "export.json").write_text(json.dumps({**info, "source": "models/mamba1-pystdlib"}))
    monkeypatch.chdir(DEFAULT_MODEL.parents[1])
    code, _, err = cli(capsys, "validate", *quick)
    assert code == 0 and f"Using the export in {export}" in err, err


def test_validate_fails_on_a_tampered_export(shipped_export, tmp_path, capsys):
    """One layer's D off by 1% in model.onnx, export.json unchanged: the export is reused and
    validation must fail (exit 1), on the logits and state errors."""
    tampered = tmp_path / "tampered"
    shutil.copytree(shipped_export[2], tampered)
    proto = onnx.load(str(tampered / "model.onnx"))
    (weight,) = [t for t in proto.graph.initializer if t.name == "model.backbone.layers.0.mixer.D"]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
    onnx.save(proto, str(tampered / "model.onnx"))
    report = tmp_path / "report.json"
    code, stdout, err = cli(capsys, "validate", SHIPPED, "--onnx", tampered, "--decode-steps", 4, "--json", report)
    assert code == 1 and "FAILED" in stdout and "Traceback" not in err
    assert f"Using the export in {tampered}" in err, "the tampered file must be what ran"
    result = json.loads(report.read_text())
    assert result["passed"] is False
    assert result["max_rel_err"] > result["tolerance"]["max_rel_err"]
    assert result["state_max_rel_err"] > result["tolerance"]["state_max_rel_err"]


# --- generate -----------------------------------------------------------------------------

def test_generate_greedy_text_is_the_same_in_ort_and_torch(shipped_export, capsys):
    prompt, new_tokens = "def read(path):\n    ", 24
    texts = {}
    for backend in ("ort", "torch"):
        code, texts[backend], err = cli(capsys, "generate", SHIPPED, "--backend", backend, "--onnx", shipped_export[2],
                                        "--prompt", prompt, "--max-new-tokens", new_tokens, "-q")
        assert (code, err) == (0, "")
    assert texts["ort"] == texts["torch"]
    code, _, err = cli(capsys, "generate", SHIPPED, "--onnx", shipped_export[2], "--prompt", prompt,
                       "--max-new-tokens", 1)  # the default backend, torch, says it does not use the export
    assert code == 0 and f"--onnx {shipped_export[2]} is not used: the torch backend runs the checkpoint" in err
    # Independently: greedy decoding by rerunning the eager model on the whole prefix each step.
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    model = mamba_export.load(SHIPPED)
    ids = tokenizer.encode(prompt).ids
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert texts["torch"] == tokenizer.decode(ids) + "\n"


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_generate_stops_at_the_end_of_sequence_token_of_the_config(backend, tmp_path, capsys):
    """A copy of the shipped model whose config.json names the newline as eos_token_id: the
    text is the shipped model's greedy text up to its first newline, without that newline;
    with --ignore-eos it is the whole text again."""
    prompt, options = "import os", ("--max-new-tokens", 40, "--onnx", tmp_path / "onnx", "-q")
    code, full, err = cli(capsys, "generate", SHIPPED, "--prompt", prompt, *options)
    assert (code, err) == (0, "")
    continuation = full.removeprefix(prompt).removesuffix("\n")
    assert "\n" in continuation, "the shipped model writes a newline within 40 tokens of this prompt"
    checkpoint = tmp_path / "eos"
    shutil.copytree(DEFAULT_MODEL, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    [config["eos_token_id"]] = load_tokenizer(DEFAULT_MODEL).encode("\n").ids
    (checkpoint / "config.json").write_text(json.dumps(config))
    for extra, expected in (((), prompt + continuation.split("\n")[0] + "\n"), (("--ignore-eos",), full)):
        code, out, err = cli(capsys, "generate", checkpoint, "--backend", backend, "--prompt", prompt, *options, *extra)
        assert (code, out, err) == (0, expected, "")


@pytest.mark.parametrize("data", [b"ok \xe6\x97", b"ok \xff", "na\u00efve \u2192 \u65e5".encode(), b"\xe6\x97\xa5\xe6"],
                         ids=repr)
def test_streamed_text_adds_up_to_the_decoded_bytes(data):
    """The shipped tokenizer's ids are byte values: the pieces, with what finish() flushes,
    are the bytes decoded with U+FFFD for any that never became a character."""
    stream = TextStream(load_tokenizer(DEFAULT_MODEL))
    pieces = [stream.push(byte) for byte in data]
    assert "".join(pieces + [stream.finish()]) == data.decode(errors="replace")


def test_generate_prints_an_incomplete_character_at_the_end(monkeypatch, capsys):
    monkeypatch.setattr(generate_py, "generate", lambda *_, **__: iter(b"ok \xe6\x97"))
    code, out, err = cli(capsys, "generate", SHIPPED, "--prompt", "say", "-q")
    assert (code, out, err) == (0, "sayok \ufffd\n", "")


@pytest.mark.parametrize(("flags", "graphs"), [((), True), (("--no-cuda-graphs",), False)])
def test_no_cuda_graphs_reaches_the_backend(flags, graphs, monkeypatch, capsys):
    from mamba_export.backends import factory

    opened, real = [], factory.open_backend
    monkeypatch.setattr(factory, "open_backend", lambda *a, **kw: opened.append(kw["cuda_graphs"]) or real(*a, **kw))
    monkeypatch.setattr(generate_py, "generate", lambda *_, **__: iter(b"ok"))
    assert cli(capsys, "generate", SHIPPED, "--prompt", "say", "-q", *flags)[0] == 0
    assert opened == [graphs]


# --- bad input: exit status 2, one line on stderr ------------------------------------------

@pytest.fixture
def paths(shipped_export, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(shipped_export[2], corrupt)
    (corrupt / "model.onnx").write_bytes(b"not a protobuf")
    bad_info = tmp_path / "bad_info"
    shutil.copytree(shipped_export[2], bad_info)
    (bad_info / "export.json").write_text('{"source": ')
    bad_eos = tmp_path / "bad_eos"  # what generate reads before the weights
    bad_eos.mkdir()
    shutil.copy(DEFAULT_MODEL / "tokenizer.json", bad_eos)
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    (bad_eos / "config.json").write_text(json.dumps({**config, "eos_token_id": "</s>"}))
    return {"FILE": a_file, "CORRUPT": corrupt, "BAD_INFO": bad_info, "BAD_EOS": bad_eos, "OUT": tmp_path / "out"}


BAD_INPUT = {
    "missing model": (["validate", "/nonexistent/model"], "/nonexistent/model: no such directory"),
    "json into a missing directory": (["validate", "--json", "/nonexistent/dir/report.json"],
                                      "--json /nonexistent/dir/report.json: directory /nonexistent/dir does not exist"),
    "json is a directory": (["validate", "--json", "CORRUPT"], "--json CORRUPT: is a directory"),
    "onnx is a file": (["validate", "--onnx", "FILE"], "--onnx FILE: not a directory"),
    "generate onnx is a file": (["generate", "--backend", "ort", "--onnx", "FILE", "--prompt", "x"],
                                "--onnx FILE: not a directory"),
    "export into a file": (["export", "-o", "FILE"], "-o/--output FILE: not a directory"),
    "opset too old": (["export", "-o", "OUT", "--opset", "17"], "opset must be between 18 and"),
    "corrupt model.onnx": (["validate", "--onnx", "CORRUPT"],
                           "ONNX Runtime cannot load CORRUPT/model.onnx: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF"),
    "corrupt export.json": (["validate", "--onnx", "BAD_INFO"], "BAD_INFO/export.json: not valid JSON"),
    "eos_token_id not an id": (["generate", "BAD_EOS", "--prompt", "x"],
                               "BAD_EOS/config.json: field 'eos_token_id' must be a token id or a list of them, "
                               "got '</s>'"),
    "no new tokens": (["generate", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    "negative temperature": (["generate", "--prompt", "x", "--temperature", "-1"], "--temperature must be 0"),
    "bad device": (["validate", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    "entry option without --entry": (["validate", "--max-batch", "4"],
                                     "--input-shape, --input-dtype and --max-batch go with --entry"),
    "json onto a file that is not a report": (["validate", "--json", "FILE"],
                                              "--json FILE: exists and is not a validation report"),
    "empty output path": (["export", "-o", ""], "argument -o/--output: empty path"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(case, paths, capsys):
    argv, message = BAD_INPUT[case]
    for name, path in paths.items():
        argv = [str(a).replace(name, str(path)) for a in argv]
        message = message.replace(name, str(path))
    code, stdout, err = cli(capsys, *argv, "-q")
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert re.fullmatch(f"mamba-export {argv[0]}: error: {re.escape(message)}[^\n]*\n", err), err
    assert not paths["OUT"].exists(), "nothing is written"
    assert paths["FILE"].read_text() == "not a directory", "nothing the user had is changed"


@pytest.mark.parametrize("entry", [[], ["--entry", "module_models:build_vision", "--input-shape", "1,3,16,12"]],
                         ids=["model", "entry"])
def test_path_errors_come_before_any_work(capsys, entry):
    """Without -q, nothing is loaded or exported before a bad --json is refused."""
    code, _, err = cli(capsys, "validate", *entry, "--json", "/nonexistent/dir/report.json")
    assert code == 2 and err.count("\n") == 1


def test_a_report_is_replaced_but_another_file_only_with_overwrite(tmp_path, capsys):
    quick = ("--batch", 1, "--prompt-len", 4, "--decode-steps", 1, "-q")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    code, _, err = cli(capsys, "validate", "--json", notes, *quick)
    assert code == 2 and "exists and is not a validation report" in err and notes.read_text() == '{"mine": true}'
    code, _, err = cli(capsys, "validate", "--json", notes, "--overwrite", *quick)
    assert code == 0 and json.loads(notes.read_text())["passed"] is True, err
    code, _, err = cli(capsys, "validate", "--json", notes, *quick)  # an earlier report: rerun replaces it
    assert code == 0, err


def test_an_export_whose_graph_was_replaced_is_refused(shipped_export, tmp_path, capsys):
    """model.onnx from another model's export under the shipped model's export.json."""
    other = tmp_path / "other"
    checkpoint = mamba_export.save_pretrained(random_model(), tmp_path / "small")
    assert cli(capsys, "export", checkpoint, "-o", other, "-q")[0] == 0
    swapped = tmp_path / "swapped"
    shutil.copytree(shipped_export[2], swapped)
    shutil.copy(other / "model.onnx", swapped / "model.onnx")
    for argv in (["validate", "--backend", "ort"], ["generate", "--backend", "ort", "--prompt", "x"]):
        code, stdout, err = cli(capsys, *argv, SHIPPED, "--onnx", swapped, "-q")
        assert (code, stdout) == (2, ""), err
        assert err == (f"mamba-export {argv[0]}: error: {swapped / 'model.onnx'} is not the graph that export.json "
                       "describes (its config differs); export again with --overwrite\n")


def test_an_export_made_before_the_checkpoint_changed_is_refused(tmp_path, capsys):
    checkpoint = mamba_export.save_pretrained(random_model(), tmp_path / "small")
    export = tmp_path / "export"
    quick = ("--backend", "ort", "--onnx", export, "--batch", 1, "--prompt-len", 4, "--decode-steps", 1, "-q")
    assert cli(capsys, "validate", checkpoint, *quick)[0] == 0
    assert cli(capsys, "validate", checkpoint, *quick)[0] == 0  # unchanged: reused
    weights = checkpoint / "model.safetensors"  # new weights, nothing else changed
    save_file({k: v * 1.01 for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    code, _, err = cli(capsys, "validate", checkpoint, *quick)
    assert code == 2, err
    assert f"{export} holds an export of {checkpoint} made from other weights than the model loaded now" in err, err
    code, stdout, err = cli(capsys, "validate", checkpoint, *quick, "--overwrite")
    assert code == 0 and "PASSED" in stdout, err
    config = json.loads((checkpoint / "config.json").read_text())
    config["layer_norm_epsilon"] *= 10  # the same weights, another model
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "validate", checkpoint, *quick)
    assert code == 2 and "made from another config than the model loaded now" in err, err
    assert cli(capsys, "validate", checkpoint, *quick, "--overwrite")[0] == 0


def test_an_export_of_a_changed_model_in_memory_is_not_taken_for_its_checkpoint(tmp_path, capsys):
    """A model loaded from a checkpoint and then changed (fine-tuned, pruned) keeps its source's
    name; its export must not be used to run the checkpoint."""
    model = mamba_export.load(SHIPPED)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    export = tmp_path / "export"
    mamba_export.export_onnx(model, export)
    code, stdout, err = cli(capsys, "generate", SHIPPED, "--backend", "ort", "--onnx", export, "--prompt", "x", "-q")
    assert (code, stdout) == (2, "") and "made from other weights than the model loaded now" in err, err


def test_an_incomplete_export_is_named_as_such(shipped_export, tmp_path, capsys):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(shipped_export[2], incomplete)
    (incomplete / "model.onnx").unlink()
    code, _, err = cli(capsys, "validate", "--backend", "ort", SHIPPED, "--onnx", incomplete, "-q")
    assert code == 2 and err == (f"mamba-export validate: error: {incomplete} holds export.json but no model.onnx "
                                 "(an incomplete export); export again with --overwrite\n"), err


def test_module_validation_refuses_a_language_model_export(shipped_export, capsys):
    try:
        code, _, err = cli(capsys, "validate", "--entry", "module_models:build_vision", "--input-shape", "1,3,16,12",
                           "--onnx", shipped_export[2], "-q")
    finally:
        uninstall_mamba_ssm_shim()  # --entry installed it; other test modules must not see a mamba_ssm
    assert code == 2 and "Traceback" not in err
    assert f"{shipped_export[2]} holds an export of the language model {SHIPPED}, not of" in err, err


def test_the_progress_bar_is_drawn_on_a_terminal_only(monkeypatch):
    """`make demo > log 2>&1`: no bar in the log, where its last redraw shared a line with what came next."""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(console, "QUIET", False)
    for stderr, drawn in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stderr)
        with console.progress(3, "some work") as bar:
            bar.update(3)
        assert ("some work" in stderr.getvalue()) == drawn, stderr.getvalue()


def test_python_m_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "mamba_export", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == f"mamba-export {mamba_export.__version__}\n", done.stderr


def test_quiet_before_or_after_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(console, "QUIET", False)
    checkpoint = mamba_export.save_pretrained(random_model(), tmp_path / "small")
    code, _, err = cli(capsys, "export", checkpoint, "-o", tmp_path / "loud")
    assert code == 0 and "done (" in err, err
    for where, argv in (("after", ("export", checkpoint, "-o", tmp_path / "after", "-q")),
                        ("before", ("-q", "export", checkpoint, "-o", tmp_path / "before"))):
        monkeypatch.setattr(console, "QUIET", False)
        code, stdout, err = cli(capsys, *argv)
        assert (code, err) == (0, ""), f"-q {where} the command: {err}"
        assert stdout == f"{tmp_path / where / 'model.onnx'}\n"


def test_generate_into_a_closed_pipe_ends_quietly():
    """`mamba-export generate ... | head -c 20`: no error message once the reader has gone."""
    argv = [sys.executable, "-m", "mamba_export", "generate", SHIPPED, "--prompt", "import os", "--max-new-tokens",
            "400", "--ignore-eos", "-q"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert len(proc.stdout.read(20)) == 20
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=300)
    assert (code, err) == (141, "")
