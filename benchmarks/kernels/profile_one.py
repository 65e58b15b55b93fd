#!/usr/bin/env python3
"""Runs one prefill shape through a CUDA scan twice (warm-up, then the profiled launch),
for Nsight Compute: ncu --launch-skip 1 --launch-count 1 python3 profile_one.py ...
(for the SSD scan, pick the kernel: ncu --kernel-name regex:ssd_prefill ...)."""

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mamba_export.ops.cuda import launch, load_library, scan_params  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--op", choices=["scan", "ssd"], default="scan")
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--dim", type=int, default=5120, help="scan: channels; ssd: heads x 64")
ap.add_argument("--length", type=int, default=2048)
ap.add_argument("--dstate", type=int, help="default: 16 (scan), 128 (ssd)")
ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="bf16")
ap.add_argument("--plan", help="a tiling name for MAMBA_KERNELS_SCAN_PLAN (plugins/kernels/cuda/selective_scan.cu)")
args = ap.parse_args()
if args.plan:
    os.environ["MAMBA_KERNELS_SCAN_PLAN"] = args.plan
dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
b, d, length = args.batch, args.dim, args.length
r = lambda *s: torch.randn(*s, device="cuda").to(dtype)  # noqa: E731
if args.op == "ssd":
    import mamba_export.ops  # noqa: F401, PLC0415  registers torch.ops.mamba
    n, heads = args.dstate or 128, d // 64
    x = dict(x=r(b, length, heads, 64), dt=r(b, length, heads), A=-torch.rand(heads, device="cuda") * 15 - 1,
             B=r(b, length, 1, n), C=r(b, length, 1, n), D=torch.randn(heads, device="cuda"),
             z=r(b, length, heads, 64), dt_bias=torch.rand(heads, device="cuda") * -4)
    with torch.no_grad():
        for _ in range(2):
            torch.ops.mamba.ssd_scan(**x, dt_softplus=True)
else:
    n = args.dstate or 16
    x = dict(u=r(b, d, length), delta=r(b, d, length), A=-torch.rand(d, n, device="cuda") - 0.1, B=r(b, 1, n, length),
             C=r(b, 1, n, length), D=torch.randn(d, device="cuda"), z=r(b, d, length),
             delta_bias=torch.randn(d, device="cuda") - 4, initial_state=None)
    y, state = torch.empty_like(x["u"]), torch.empty(b, d, n, device="cuda")
    lib = load_library()
    for _ in range(2):
        launch(lib, scan_params(**x, delta_softplus=1, y=y, final_state=state), y.device)
torch.cuda.synchronize()
