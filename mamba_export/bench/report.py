"""bench.json (everything), bench.md (the table a person reads) and bench.png (the plot)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .. import __version__, jsonio


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]  # fmt: skip
        info["cpu"] = models[0] if models else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict:
    found = {"mamba_export": __version__, "torch": torch.__version__}
    for module in ("onnx", "onnxruntime", "tensorrt", "tensorrt_rtx_bindings"):
        try:
            found[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            pass
    return found


def _speedup(value: float, base: float | None) -> str:
    return f"{base / value:.2f}×" if base else "–"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _graphs_note(settings: dict) -> str:
    if settings.get("cuda_graphs", False):  # settings from before the option: no graphs then
        return " ort-cuda replays each decode step as a CUDA graph (captured once per batch size)."
    return " ort-cuda launches every node of a decode step (--no-cuda-graphs)."


def markdown(model: str, settings: dict, results: list[dict]) -> str:
    on_gpu = settings["device"] == "cuda"
    lines = [
        f"# Benchmark: {model}",
        "",
        f"device {settings['device']}, dtype {settings['dtype']}. Prefill: median of {settings['repeat']} "
        f"calls after {settings['warmup']} warm-up; decode: median of {settings['decode_tokens']} one-token "
        f"steps after {settings['warmup']} warm-up steps, from the prompt's state (p10–p90 in brackets). "
        "Every timed backend first matched eager PyTorch (float32) within the validation tolerances. "
        "Setup = ONNX export / engine build / session or engine load."
        + (_graphs_note(settings) if "ort-cuda" in settings["backends"] else "")
        + (" Device MB = growth of the GPU's memory in use (the whole device, as cudaMemGetInfo counts it: "
           "other processes show too) from before the backend's setup to after its runs (weights included)."
           if on_gpu else ""),
        "",
        "| backend | batch | prompt | prefill ms | prefill tok/s | decode ms/token | decode tok/s "
        "| prefill vs torch | decode vs torch | peak RSS MB |" + (" device MB |" if on_gpu else "") + " setup s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if on_gpu else "") + " ---: |",
    ]
    torch_runs = {(r["batch"], r["prompt_len"]): r for res in results if res["backend"] == "torch"
                  and res["status"] == "ok" for r in res["runs"]}  # fmt: skip
    for res in results:
        if res["status"] != "ok":
            continue
        setup = " / ".join(_seconds(res.get(key)) for key in ("export_s", "build_s", "load_s"))
        device = f" {res['device_memory_mb']:,.0f} |" if on_gpu else ""
        for r in res["runs"]:
            base = torch_runs.get((r["batch"], r["prompt_len"]))
            p, d = r["prefill"], r["decode_per_token"]
            lines.append(
                f"| {res['backend']} | {r['batch']} | {r['prompt_len']} "
                f"| {p['median_ms']:.2f} ({p['p10_ms']:.2f}–{p['p90_ms']:.2f}) | {r['prefill_tokens_per_s']:,.0f} "
                f"| {d['median_ms']:.2f} ({d['p10_ms']:.2f}–{d['p90_ms']:.2f}) | {r['decode_tokens_per_s']:,.1f} "
                f"| {_speedup(p['median_ms'], base and base['prefill']['median_ms'])} "
                f"| {_speedup(d['median_ms'], base and base['decode_per_token']['median_ms'])} "
                f"| {res['peak_rss_mb']:,.0f} |{device} {setup} |"
            )
    others = [res for res in results if res["status"] != "ok"]
    if others:
        lines += ["", "Not timed:", ""]
        lines += [f"- {res['backend']}: {res['status']} ({res['reason']})" for res in others]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    timed = [res for res in results if res["status"] == "ok"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    batches = sorted({r["batch"] for res in timed for r in res["runs"]})
    colors = {res["backend"]: f"C{i}" for i, res in enumerate(timed)}  # one colour per backend, both panels
    styles = ["-", "--", ":", "-."]
    for res in timed:
        for k, batch in enumerate(batches):
            runs = sorted((r for r in res["runs"] if r["batch"] == batch), key=lambda r: r["prompt_len"])
            left.plot([r["prompt_len"] for r in runs], [r["prefill"]["median_ms"] for r in runs], marker="o",
                      color=colors[res["backend"]], linestyle=styles[k % len(styles)],
                      label=f"{res['backend']}, batch {batch}")  # fmt: skip
    left.set(xscale="log", yscale="log", xlabel="prompt length (tokens)", ylabel="prefill latency (ms)",
             title="Prefill")  # fmt: skip
    lengths = sorted({r["prompt_len"] for res in timed for r in res["runs"]})
    left.set_xticks(lengths, [str(n) for n in lengths])  # the measured lengths, not powers of ten
    left.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    left.grid(True, which="both", alpha=0.3)
    if timed:  # (a legend of nothing only warns)
        left.legend(fontsize=8)
    # Decode at one setting for every bar: after the longest prompt (the rate changes with it).
    width, longest = 0.8 / max(len(timed), 1), max(lengths, default=0)
    for i, res in enumerate(timed):
        rates = [next((r["decode_tokens_per_s"] for r in res["runs"] if (r["batch"], r["prompt_len"]) == (b, longest)), 0)
                 for b in batches]  # fmt: skip
        right.bar([j + i * width for j in range(len(batches))], rates, width, label=res["backend"],
                  color=colors[res["backend"]])
    right.set_xticks([j + width * (len(timed) - 1) / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    right.set(ylabel="decode tokens/s", title=f"Decode (with the state cache), after a {longest}-token prompt")
    right.grid(True, axis="y", alpha=0.3)
    if timed:
        right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPORT_FILES = {"json": "bench.json", "md": "bench.md", "png": "bench.png"}


def write_reports(out_dir: Path, model: str, settings: dict, results: list[dict]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / name for kind, name in REPORT_FILES.items()}
    payload = {"model": model, "machine": machine(), "versions": versions(), "settings": settings, "results": results}
    paths["json"].write_text(jsonio.dumps(payload, indent=2) + "\n")
    paths["md"].write_text(markdown(model, settings, results))
    plot(results, paths["png"], f"{model} — {settings['device']}, {settings['dtype']}")
    return paths
