#!/usr/bin/env python3
"""Where a CPU prefill's time goes: the scans against everything else, in eager PyTorch
(torch.profiler) and in ONNX Runtime with the mamba custom ops (ORT's own session profile),
for a published architecture with random weights (docs/performance.md, "End to end on the CPU").

    python benchmarks/cpu/profile_scans.py --config mamba-130m --prompt-len 1024 --out DIR

Each backend runs the prompt once to warm up, then once profiled; the export is made in
--work (reused when it is there). Prints a table and writes DIR/profile-CONFIG.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mamba_export.backends.factory import ensure_export  # noqa: E402
from mamba_export.backends.ort_backend import OrtBackend  # noqa: E402
from mamba_export.backends.torch_backend import TorchBackend  # noqa: E402
from mamba_export.bench.configs import PUBLISHED, random_model  # noqa: E402
from mamba_export.runtime.ort import import_onnxruntime  # noqa: E402

# The scan as the eager model's profiler names it, and as an ONNX node.
SCANS = {"mamba::selective_scan": "SelectiveScan", "mamba::ssd_scan": "SSDScan"}


def profile_eager(model: torch.nn.Module, ids: torch.Tensor) -> dict:
    backend = TorchBackend(model)
    state = backend.empty_state(ids.shape[0])
    with torch.no_grad():
        backend.forward(ids, state)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            backend.forward(ids, state)
            total = time.perf_counter() - start
    scans = [e for e in prof.key_averages() if e.key in SCANS]
    # cpu_time_total: the op with everything it calls (the readable reference's torch ops).
    return dict(total_s=total, scans_s=sum(e.cpu_time_total for e in scans) / 1e6,
                scan_calls=sum(e.count for e in scans))


def profile_ort(model: torch.nn.Module, ids: torch.Tensor, work: Path) -> dict:
    export_dir = ensure_export(model, work / "ort", portable=False)
    options = import_onnxruntime().SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "ort-profile")
    backend = OrtBackend(export_dir, session_options=options)
    state = backend.empty_state(ids.shape[0])
    backend.forward(ids, state)
    start = time.perf_counter()
    backend.forward(ids, state)
    total = time.perf_counter() - start
    events = json.loads(Path(backend.session.end_profiling()).read_text())
    run = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-1]  # the profiled call
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
             and run["ts"] <= e["ts"] <= run["ts"] + run["dur"]]  # fmt: skip
    scans = [e for e in nodes if e["args"]["op_name"] in SCANS.values()]
    return dict(total_s=total, run_s=run["dur"] / 1e6, nodes_s=sum(e["dur"] for e in nodes) / 1e6,
                scans_s=sum(e["dur"] for e in scans) / 1e6, scan_calls=len(scans))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(PUBLISHED), default="mamba-130m")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--work", type=Path, help="where the export goes (default: a temporary folder)")
    ap.add_argument("--out", type=Path, help="folder for the JSON result")
    args = ap.parse_args()
    model = random_model(args.config)
    vocab = model.lm_head.weight.shape[0]
    ids = torch.randint(0, vocab, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = {"torch": profile_eager(model, ids), "ort": profile_ort(model, ids, work)}
    result = dict(config=args.config, batch=args.batch, prompt_len=args.prompt_len,
                  torch_version=torch.__version__, onnxruntime_version=import_onnxruntime().__version__,
                  torch_threads=torch.get_num_threads(), **rows)
    print(f"{args.config}, batch {args.batch}, prompt {args.prompt_len}, float32, one profiled prefill after one warm-up")
    print(f"{'backend':8} {'prefill s':>10} {'scans s':>8} {'scan calls':>10} {'share':>6} {'rest s':>7}")
    for name, r in rows.items():
        print(f"{name:8} {r['total_s']:10.3f} {r['scans_s']:8.3f} {r['scan_calls']:10d} "
              f"{r['scans_s'] / r['total_s']:6.0%} {r['total_s'] - r['scans_s']:7.3f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"profile-{args.config}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
