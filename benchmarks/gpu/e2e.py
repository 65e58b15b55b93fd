"""Python steps of benchmarks/gpu/e2e.sh (see there): the machine and versions, ort-cuda
validated against eager PyTorch with the node placement, and the summary of a run.

  python3 benchmarks/gpu/e2e.py environment --out DIR
  python3 benchmarks/gpu/e2e.py validate --config mamba-130m --export DIR --json FILE   (or mamba2-130m, ...)
  python3 benchmarks/gpu/e2e.py bench --config mamba-1.4b --work DIR --out DIR [--batch 1 --prompt-len 128,1024]
  python3 benchmarks/gpu/e2e.py summary --out DIR

`bench` is `mamba-export bench --config ... --device cuda --backends torch,ort-cuda` with its
exports kept in --work, where `validate` may have left them: a model of mamba-1.4b's size
takes minutes to export, and so it is exported once, even across calls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch  # before onnxruntime: onnxruntime-gpu then finds the CUDA libraries torch loaded


def environment(out: Path) -> int:
    import onnxruntime

    import mamba_export
    from mamba_export.runtime.ort import custom_op_providers

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True)  # fmt: skip
    library = mamba_export.custom_op_library()
    info = {
        "gpu": smi.stdout.strip() or smi.stderr.strip(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "custom_op_library": library,
        "custom_op_providers": custom_op_providers(),
        "ldd": subprocess.run(["ldd", library], capture_output=True, text=True).stdout.split("\n"),
    }
    (out / "environment.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0 if "CUDAExecutionProvider" in info["custom_op_providers"] else 1


def validate_config(config: str, export_dir: Path, json_path: Path, prompt_len: int) -> int:
    """ort-cuda on ``config`` with random weights against eager float32, and where every node ran."""
    import onnx
    import onnxruntime

    from mamba_export.backends.factory import ensure_export
    from mamba_export.backends.ort_backend import OrtBackend
    from mamba_export.backends.torch_backend import TorchBackend
    from mamba_export.bench import random_model
    from mamba_export.runtime.ort import node_placement, off_provider
    from mamba_export.validate import validate

    model = random_model(config)
    ensure_export(model, export_dir, portable=False)
    options = onnxruntime.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(export_dir / "profile")
    backend = OrtBackend(export_dir, name="ort-cuda", device="cuda", session_options=options)
    report = validate(backend, TorchBackend(model, name="reference"), model_name=model.source, dtype="float32",
                      batch=2, prompt_len=prompt_len, decode_steps=16, vocab_size=model.config.vocab_size)  # fmt: skip
    placement = node_placement(backend.session.end_profiling())
    off = off_provider(placement, model=onnx.load(str(export_dir / "model.onnx"), load_external_data=False))
    scan_op = "SSDScan" if model.config.architecture == "mamba2" else "SelectiveScan"
    scans = sum(op == scan_op for op, _ in placement.values())
    print(report.table())
    print(f"  nodes: {len(placement)} ({scans} {scan_op}); "
          + ("all on CUDAExecutionProvider, no copies through the host" if not off
             else f"{len(off)} NOT ON THE GPU, e.g. {', '.join(off[:5])}"))
    result = json.loads(report.to_json())
    result["placement"] = {"nodes": len(placement), "scan_op": scan_op, "scans": scans, "off_gpu": off}
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if report.passed and not off and scans == model.config.n_layer else 1


def bench_config(config: str, work: Path, out: Path, batches: list[int], prompt_lens: list[int]) -> int:
    from mamba_export.bench import Settings, random_model, run_bench, write_reports

    model = random_model(config)
    settings = Settings(backends=["torch", "ort-cuda"], device="cuda", batches=batches, prompt_lens=prompt_lens,
                        decode_tokens=32, warmup=2, repeat=5)  # fmt: skip
    results = run_bench(model, settings, work)
    paths = write_reports(out, model.source, vars(settings), results)
    print(paths["md"].read_text())
    return 0 if all(r["status"] == "ok" for r in results) else 1


def _rows(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    def line(row):  # the first column left-aligned, numbers right-aligned
        return "  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return ["", title, line(header), *(line(r) for r in rows)]


def summary(out: Path) -> int:
    lines = [f"== Summary of {out}"]
    steps = out / "steps.tsv"
    if steps.is_file():
        rows = [line.split("\t") for line in steps.read_text().splitlines() if line]
        lines += _rows("Steps", ["step", "exit", "time"], [[r[0], r[1], r[2]] for r in rows])
    tests = out / "tests.log"
    if tests.is_file():
        tail = [line for line in tests.read_text().splitlines() if " passed" in line or " failed" in line]
        lines += ["", "Tests: " + (tail[-1].strip("= ") if tail else "no result line")]
    rows = []
    for path in sorted(out.glob("validate_*.json")):
        v = json.loads(path.read_text())
        placement = v.get("placement")
        where = "–" if not placement else ("all on CUDA" if not placement["off_gpu"] else "OFF THE GPU")
        rows.append([v["backend"], v["model"], v["dtype"], f"{v['batch']}x{v['prompt_len']}+{v['decode_steps']}",
                     f"{v['max_rel_err']:.1e}", f"{v['state_max_rel_err']:.1e}", f"{v['greedy_match']:.0%}", where,
                     "PASSED" if v["passed"] else "FAILED"])  # fmt: skip
    lines += _rows("Validation against eager PyTorch (float32)",
                   ["backend", "model", "dtype", "batch x prompt + decode", "logits rel", "state rel", "greedy",
                    "nodes", ""], rows)  # fmt: skip
    for path in sorted(out.glob("bench-*/bench.json")):
        bench = json.loads(path.read_text())
        torch_runs = {(r["batch"], r["prompt_len"]): r for res in bench["results"] if res["backend"] == "torch"
                      and res["status"] == "ok" for r in res["runs"]}  # fmt: skip
        rows, not_timed = [], []
        for res in bench["results"]:
            if res["status"] != "ok":
                not_timed.append(f"  {res['backend']}: {res['status']} ({res.get('reason', '')})")
                continue
            for r in res["runs"]:
                base = torch_runs.get((r["batch"], r["prompt_len"]))
                p, d = r["prefill"]["median_ms"], r["decode_per_token"]["median_ms"]
                speed = lambda key, value: f"{base[key]['median_ms'] / value:.2f}x" if base else "–"  # noqa: E731
                rows.append([res["backend"], str(r["batch"]), str(r["prompt_len"]), f"{p:.2f}",
                             f"{d:.3f}", speed("prefill", p), speed("decode_per_token", d),
                             f"{res['validation']['max_rel_err']:.1e}"])  # fmt: skip
        title = (f"{bench['model']} on {bench['machine'].get('gpu', '?')} ({bench['settings']['dtype']}, "
                 f"median of {bench['settings']['repeat']})")  # fmt: skip
        header = ["backend", "batch", "prompt", "prefill ms", "decode ms/token", "prefill vs torch", "decode vs torch",
                  "validation rel err"]  # fmt: skip
        lines += (_rows(title, header, rows) or ["", title]) + not_timed
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("environment", "summary"):
        sub.add_parser(name).add_argument("--out", type=Path, required=True)
    p = sub.add_parser("validate")
    p.add_argument("--config", required=True)
    p.add_argument("--export", type=Path, required=True, help="export directory (reused when it holds this model)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--prompt-len", type=int, default=256)
    p = sub.add_parser("bench")
    p.add_argument("--config", required=True)
    p.add_argument("--work", type=Path, required=True, help="exports go to WORK/<backend>, reused when they match")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--batch", type=lambda t: [int(v) for v in t.split(",")], default=[1])
    p.add_argument("--prompt-len", type=lambda t: [int(v) for v in t.split(",")], default=[128, 1024])
    args = parser.parse_args()
    if args.command == "environment":
        return environment(args.out)
    if args.command == "validate":
        return validate_config(args.config, args.export, args.json, args.prompt_len)
    if args.command == "bench":
        return bench_config(args.config, args.work, args.out, args.batch, args.prompt_len)
    return summary(args.out)


if __name__ == "__main__":
    sys.exit(main())
