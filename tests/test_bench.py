"""The cross-backend benchmark: each backend validated before it is timed, backends that cannot
run (or break) listed with the reason, the reports, the published sizes, the CLI."""

import json
import re
import warnings

import pytest
import torch

from mamba_export import cli
from mamba_export.bench import PUBLISHED, Settings, published_config, run_bench, write_reports
from mamba_export.bench import runner
from mamba_export.bench.report import markdown
from mamba_export.models import Mamba1Config, Mamba2Config, build_model
from test_export import random_model

MAMBA1 = Mamba1Config(d_model=32, n_layer=2, vocab_size=61, d_state=4)
MAMBA2 = Mamba2Config(d_model=32, n_layer=2, vocab_size=61, d_state=8, headdim=16, ngroups=2)
FAST = dict(batches=[1, 2], prompt_lens=[3, 8], decode_tokens=2, warmup=0, repeat=2)


def _by_backend(results):
    return {r["backend"]: r for r in results}


@pytest.mark.parametrize("cfg", [MAMBA1, MAMBA2], ids=["mamba1", "mamba2"])
def test_every_backend_is_timed_or_says_why_not(cfg, tmp_path):
    settings = Settings(backends=["torch", "ort", "ort-portable", "ort-cuda", "trt"], **FAST)
    results = _by_backend(run_bench(random_model(cfg), settings, tmp_path))
    assert list(results) == settings.backends  # none dropped, in the order asked
    for name in ("torch", "ort", "ort-portable"):
        res = results[name]
        assert res["status"] == "ok", res
        assert res["validation"]["passed"] and res["validation"]["greedy_match"] == 1.0
        assert [(r["batch"], r["prompt_len"]) for r in res["runs"]] == [(1, 3), (1, 8), (2, 3), (2, 8)]
        for r in res["runs"]:
            for stats in (r["prefill"], r["decode_per_token"]):
                assert 0 < stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]
            assert r["prefill"]["runs"] == 2 and r["decode_per_token"]["runs"] == 2
            assert r["decode_tokens_per_s"] == pytest.approx(r["batch"] / (r["decode_per_token"]["median_ms"] / 1e3))
        assert res["peak_rss_mb"] > 0 and res["load_s"] >= 0
    assert "export_s" not in results["torch"] and results["ort"]["export_s"] > 0
    # Both CUDA backends ask for a GPU (this run is on the CPU): skipped, with the reason.
    for name in ("ort-cuda", "trt"):
        assert results[name]["status"] == "skipped" and "cuda" in results[name]["reason"].lower()


class _Wrong:
    """A backend that is fast and wrong: the eager model with one logit shifted."""

    def __init__(self, model):
        self.name, self.device, self.model = "ort", torch.device("cpu"), model

    def empty_state(self, batch):
        return self.model.empty_state(batch)

    @torch.inference_mode()
    def forward(self, ids, state):
        logits, state = self.model(ids, state)
        return logits + torch.nn.functional.one_hot(torch.tensor(5), logits.shape[-1]) * 10.0, state


def test_a_wrong_backend_is_never_timed_and_a_broken_one_does_not_stop_the_others(monkeypatch, tmp_path):
    model = random_model(MAMBA1)
    real_open = runner.open_backend

    def open_backend(name, model, **kwargs):
        if name == "ort":
            return _Wrong(model)
        if name == "ort-portable":
            raise RuntimeError("session failed\nsecond line")
        return real_open(name, model, **kwargs)

    monkeypatch.setattr(runner, "open_backend", open_backend)
    monkeypatch.setattr(runner, "needs_export", lambda name: False)
    results = _by_backend(run_bench(model, Settings(backends=["ort", "ort-portable", "torch"], **FAST), tmp_path))
    wrong = results["ort"]
    assert wrong["status"] == "failed validation" and "runs" not in wrong
    assert not wrong["validation"]["passed"] and wrong["validation"]["max_rel_err"] > 1e-2
    assert results["ort-portable"] == {"backend": "ort-portable", "status": "failed",
                                       "reason": "RuntimeError: session failed"}
    assert results["torch"]["status"] == "ok" and len(results["torch"]["runs"]) == 4


def test_cli_bench_reports_a_broken_backend_and_exits_1(monkeypatch, tmp_path, capsys):
    def open_backend(name, model, export_dir, **kwargs):
        raise RuntimeError(f"the session of {export_dir / 'model.onnx'} broke")

    monkeypatch.setattr(runner, "open_backend", open_backend)
    out = tmp_path / "report"
    assert cli.main(["bench", "--backends", "ort", "--prompt-len", "4", "--decode-tokens", "1", "--repeat", "1",
                     "--warmup", "0", "--out", str(out), "-q"]) == 1  # fmt: skip
    # The export was in a temporary directory, gone by now: the report does not name it.
    assert "- ort: failed (RuntimeError: the session of <bench temp dir>/ort/model.onnx broke)" in \
        (out / "bench.md").read_text()


def test_reports(tmp_path):
    settings = Settings(backends=["torch", "ort", "ort-cuda"], **FAST)
    results = run_bench(random_model(MAMBA1), settings, tmp_path / "work")
    paths = write_reports(tmp_path / "out", "tiny model", vars(settings), results)
    data = json.loads(paths["json"].read_text())
    assert data["model"] == "tiny model" and data["settings"]["batches"] == [1, 2]
    assert data["machine"]["cpu_count"] >= 1 and data["versions"]["torch"] == torch.__version__
    assert data["results"] == json.loads(json.dumps(results))
    md = paths["md"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| torch ") or line.startswith("| ort ")]
    assert len(rows) == 8  # two backends x two batches x two prompt lengths
    torch_rows = [row for row in rows if row.startswith("| torch ")]
    assert all("| 1.00× | 1.00× |" in row for row in torch_rows)  # the baseline against itself
    ort_row = rows[4].split("|")
    ort = results[1]["runs"][0]
    base = results[0]["runs"][0]
    assert ort_row[8].strip() == f"{base['prefill']['median_ms'] / ort['prefill']['median_ms']:.2f}×"
    assert re.search(r"- ort-cuda: skipped \(.+\)", md)
    assert "matched eager PyTorch" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("graphs", [True, False])
def test_the_report_says_how_ort_cuda_ran_its_decode_steps(graphs):
    settings = vars(Settings(backends=["torch", "ort-cuda"], device="cuda", cuda_graphs=graphs))
    md = markdown("tiny model", settings, [])
    assert ("ort-cuda replays each decode step as a CUDA graph" in md) == graphs
    assert ("ort-cuda launches every node of a decode step (--no-cuda-graphs)" in md) == (not graphs)
    assert "CUDA graph" not in markdown("tiny model", {**settings, "backends": ["torch"]}, [])


# Parameter counts implied by each published name (embedding tied, as released).
_NAMED = {"130m": 130e6, "370m": 370e6, "790m": 790e6, "780m": 780e6, "1.4b": 1.4e9, "1.3b": 1.3e9,
          "2.8b": 2.8e9, "2.7b": 2.7e9}  # fmt: skip


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_sizes_have_the_size_of_their_name(name):
    with torch.device("meta"):
        model = build_model(published_config(name))
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(_NAMED[name.split("-")[1]], rel=0.06)
    assert model.config.architecture == ("mamba2" if name.startswith("mamba2") else "mamba1")


def test_cli_bench_on_a_checkpoint(tmp_path, capsys):
    import mamba_export

    checkpoint = mamba_export.save_pretrained(random_model(MAMBA2), tmp_path / "ckpt")
    out = tmp_path / "report"
    args = ["bench", str(checkpoint), "--backends", "torch,ort", "--prompt-len", "4", "--decode-tokens", "2",
            "--repeat", "1", "--warmup", "0", "--out", str(out), "-q"]  # fmt: skip
    assert cli.main(args) == 0
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.md", "bench.png"}
    assert [r["status"] for r in json.loads((out / "bench.json").read_text())["results"]] == ["ok", "ok"]
    before = (out / "bench.json").read_bytes()
    capsys.readouterr()
    assert cli.main(args) == 2  # a report is never overwritten unasked
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "bench.json").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--config", "mamba-130m", "some/model"], "give MODEL or --config, not both"),
    (["--config", "mamba-2b"], "invalid choice"),
    (["--decode-tokens", "0"], "at least 1"),
    (["--backends", "torch,onnx"], "unknown backends onnx; choose from torch, ort,"),
    (["--backends", " ,"], "no backend named; choose from torch, ort,"),
    (["--backends", "torch,ort,torch"], "backends named twice: torch"),
    (["--backends", "ort-cuda,trt", "--device", "cpu"],
     "no backend can run here: ort-cuda: ort-cuda runs on CUDA; use --device cuda; trt: trt runs on CUDA"),
])  # fmt: skip
def test_cli_bench_errors(argv, message, tmp_path, capsys):
    try:
        code = cli.main(["bench", *argv, "--out", str(tmp_path / "r"), "-q"])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["bench.json", "bench.md", "bench.png"])
def test_cli_bench_keeps_any_report_file_already_in_out(name, tmp_path, capsys):
    (tmp_path / name).write_text("my notes")
    code = cli.main(["bench", "--config", "mamba-130m", "--out", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and f"already holds {name}; pass --overwrite" in err, err
    assert (tmp_path / name).read_text() == "my notes"


@pytest.mark.parametrize("target", ["a file", "under a file"])
def test_cli_bench_refuses_an_unusable_out_before_any_work(target, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    out = a_file if target == "a file" else a_file / "report"
    code = cli.main(["bench", "--config", "mamba-130m", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a directory" in err, err
    assert a_file.read_text() == "keep"


def test_the_decode_bars_are_of_one_stated_setting(tmp_path, monkeypatch):
    """Every bar is the decode rate after the longest prompt, for every backend alike (the
    best over prompt lengths mixed settings between bars)."""
    import matplotlib.pyplot as plt

    from mamba_export.bench import report

    def run(batch, prompt_len, rate):
        return {"batch": batch, "prompt_len": prompt_len, "prefill": {"median_ms": 1.0}, "decode_tokens_per_s": rate}

    results = [{"backend": name, "status": "ok",
                "runs": [run(1, 8, fast), run(1, 16, slow), run(2, 8, fast), run(2, 16, slow)]}
               for name, fast, slow in (("torch", 50.0, 10.0), ("ort", 90.0, 70.0))]  # fmt: skip
    figures = []
    real = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: figures.append(real(*a, **k)) or figures[-1])
    report.plot(results, tmp_path / "bench.png", "title")
    right = figures[0][1][1]
    assert [bar.get_height() for bar in right.patches] == [10.0, 10.0, 70.0, 70.0]
    assert "after a 16-token prompt" in right.get_title()


def test_a_report_of_only_skipped_backends_plots_without_warnings(tmp_path):
    settings = Settings(backends=["ort-cuda"], **FAST)
    results = [{"backend": "ort-cuda", "status": "skipped", "reason": "no GPU"}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_reports(tmp_path, "tiny model", vars(settings), results)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
