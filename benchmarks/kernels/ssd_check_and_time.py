#!/usr/bin/env python3
"""GPU proof of the CUDA SSD scan (plugins/kernels/cuda/ssd_*) in one run.

1. check: the kernels (through their C ABI, outputs poisoned with NaN) against the chunked
   reference on the CPU over many shapes: L = 0 / 1 / chunk tails / long, odd head dims and
   d_state (every 64/128/256 bucket), head dims over one 64-column tile, groups, every
   optional-input combination with and without softplus, dt clamps, float32 / float16 /
   bfloat16, forced segmentations (MAMBA_KERNELS_SSD_SEGMENT), misaligned pointers, the
   state in place; plus the torch op (non-contiguous inputs, CUDA-graph capture).
2. time: ours against mamba_ssm's Triton mamba_chunk_scan_combined (third_party/mamba_ssd,
   if present) at mamba2-130m-like and mamba2-2.7b-like shapes, as CUDA-graph replays and
   as eager calls from Python, with the floor of each shape; every segmentation of ours
   (--sweep); the decode step against its floor.

Writes JSON under --out and prints the timing table last. Run by `benchmarks/kernels/run.sh ssd`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

from check_and_time import (
    DTYPES,
    FLOOR_BANDWIDTH,
    ROOT,
    STATE_TOL,
    Y_TOL,
    copy_bandwidth,
    fmt,
    graph_time_us,
    input_sets,
    misaligned,
)

from mamba_export.ops import ssd_scan_reference  # noqa: E402
from mamba_export.ops.cuda import launch, load_library, ssd_params  # noqa: E402
from tests.scan_inputs import rel_err, ssd_inputs  # noqa: E402

OPTIONAL = ("D", "z", "dt_bias", "initial_state")
CHUNK = 64  # the kernels' chunk (ssd_prefill.cuh): the floor's matmul count uses it

# ---------------------------------------------------------------------------------- check


def run_case(lib, case: dict) -> dict:
    """One shape through the library with NaN-poisoned outputs, against the reference."""
    batch, length, heads, head_dim, n, groups = case["shape"]
    dtype = DTYPES[case["dtype"]]
    inputs = ssd_inputs(batch, length, heads, head_dim, n, groups, dtype=dtype, seed=case["seed"],
                        **{f"has_{k}": k in case["optional"] for k in OPTIONAL})
    options = dict(dt_softplus=bool(case["softplus"]), dt_min=case.get("dt_min", 0.0), dt_max=case.get("dt_max"))
    if not case["softplus"]:  # dt (+ bias) as is: keep it positive, or the state grows
        inputs["dt"] = inputs["dt"].abs()
        if inputs["dt_bias"] is not None:
            inputs["dt_bias"] = inputs["dt_bias"].abs()
    elif case.get("small_dt") and inputs["dt_bias"] is not None:
        inputs["dt_bias"] = inputs["dt_bias"] - 4.0  # dt ~ 1e-2 .. 1e-3, as in trained models
        inputs["A"] = inputs["A"] * 0.2  # and a long memory
    ref_y, ref_state = ssd_scan_reference(**inputs, **options)
    inputs = {k: v.cuda() if v is not None else None for k, v in inputs.items()}
    if case.get("misaligned"):
        for k in ("x", "z", "B", "dt"):
            if inputs[k] is not None:
                inputs[k] = misaligned(inputs[k])
    y = torch.full((batch, length, heads, head_dim), math.nan, dtype=dtype, device="cuda")
    y = misaligned(y) if case.get("misaligned") else y
    state = torch.full((batch, heads, head_dim, n), math.nan, device="cuda")
    if case.get("inplace"):  # the state updated in place: final_state aliases initial_state
        state = inputs["initial_state"] = inputs["initial_state"].clone()
    if case.get("segment"):
        os.environ["MAMBA_KERNELS_SSD_SEGMENT"] = str(case["segment"])
    try:
        launch(lib, ssd_params(**inputs, **options, y=y, final_state=state), y.device)
        torch.cuda.synchronize()
    finally:
        os.environ.pop("MAMBA_KERNELS_SSD_SEGMENT", None)
    y, state = y.cpu(), state.cpu()
    unwritten = bool(y.isnan().any() or state.isnan().any()) and not bool(ref_y.isnan().any())
    ey, es = rel_err(y, ref_y), rel_err(state, ref_state)
    ok = not unwritten and ey <= Y_TOL[dtype] and es <= STATE_TOL[dtype]
    return dict(case, y_err=ey, state_err=es, unwritten=unwritten, ok=ok)


def check_cases(seed: int, count: int) -> list[dict]:
    rnd = random.Random(seed)
    cases = []

    def add(shape, dtype="fp32", optional=OPTIONAL, softplus=1, **extra):
        cases.append(dict(shape=shape, dtype=dtype, optional=list(optional), softplus=softplus, seed=len(cases),
                          **extra))

    for dt in DTYPES:
        # Every optional-input combination, with and without softplus.
        for mask in range(16):
            add((2, 130, 4, 32, 64, 2), dt, optional=[k for i, k in enumerate(OPTIONAL) if mask >> i & 1],
                softplus=mask % 2)
        # Chunk tails and the decode step, every d_state bucket, odd sizes, groups, P > 64.
        for length in (0, 1, 2, 63, 64, 65, 127, 129, 1000):
            add((1, length, 3, 64, 128, 1), dt)
        for n in (1, 5, 16, 64, 65, 100, 128, 129, 200, 256):
            add((2, 150, 4, 24, 100 if n == 100 else n, 2), dt)
            add((3, 1, 4, 24, n, 4), dt)
        for p in (1, 7, 64, 65, 80, 128, 130):
            add((1, 100, 2, p, 64, 1), dt)
        add((2, 300, 6, 64, 128, 3), dt, misaligned=True)
        add((2, 1, 6, 64, 128, 3), dt, misaligned=True)
        add((2, 97, 3, 33, 17, 1), dt, misaligned=True)
        add((2, 1, 4, 64, 128, 1), dt, inplace=True)
        add((2, 200, 4, 64, 128, 1), dt, inplace=True)
        add((2, 200, 4, 64, 128, 1), dt, inplace=True, segment=1)
        add((1, 300, 4, 16, 32, 1), dt, dt_min=0.2, dt_max=0.6)
        add((1, 1, 4, 16, 32, 1), dt, dt_min=0.2, dt_max=0.6)
        # Segmentations, with a carried state, over head-dim tiles and d_state buckets.
        for segment in (1, 2, 3, 5):
            add((2, 700, 3, 64, 128, 1), dt, segment=segment)
            add((1, 450, 2, 80, 64, 2), dt, segment=segment)
            add((1, 333, 2, 32, 256, 1), dt, segment=segment)
        # Long sequences with trained-model dt (long memory): error accumulation.
        add((1, 4097, 4, 64, 128, 1), dt, small_dt=True)
        add((1, 4097, 4, 64, 128, 1), dt, small_dt=True, segment=4)
    for _ in range(count):
        groups = rnd.choice([1, 1, 2, 4])
        heads = groups * rnd.randint(1, 6)
        n = rnd.choice([64, 128, 128, rnd.randint(1, 256)])
        p = rnd.choice([64, 64, rnd.randint(1, 140)])
        length = rnd.choice([rnd.randint(0, 70), rnd.randint(70, 2500)])
        length = min(length, 40_000_000 // (heads * p * n))  # keeps the CPU reference quick
        add((rnd.randint(1, 3), length, heads, p, n, groups), rnd.choice(list(DTYPES)),
            optional=[k for k in OPTIONAL if rnd.random() < 0.7], softplus=rnd.randint(0, 1),
            misaligned=rnd.random() < 0.2, small_dt=rnd.random() < 0.3,
            segment=rnd.choice([None, None, 1, 2, 3]))
    return cases


def check_torch_op() -> list[dict]:
    """torch.ops.mamba.ssd_scan on CUDA: non-contiguous inputs, and a captured graph."""
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        shape = (2, 700, 4, 64, 128, 1)
        rx = ssd_inputs(*shape, dtype=dtype, seed=7)
        x = {k: v.cuda() if v is not None else None for k, v in rx.items()}
        x["x"] = x["x"].transpose(1, 2).contiguous().transpose(1, 2)
        x["B"] = x["B"].transpose(1, 2).contiguous().transpose(1, 2)
        y, s = torch.ops.mamba.ssd_scan(**x, dt_softplus=True)
        ry, rs = ssd_scan_reference(**rx, dt_softplus=True)
        ey, es = rel_err(y.cpu(), ry), rel_err(s.cpu(), rs)
        results.append(dict(name=f"torch op, non-contiguous, {dtype}", y_err=ey, state_err=es,
                            ok=ey <= Y_TOL[dtype] and es <= STATE_TOL[dtype]))
        static = {k: v.clone() if v is not None else None for k, v in x.items()}
        torch.ops.mamba.ssd_scan(**static, dt_softplus=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gy, gs = torch.ops.mamba.ssd_scan(**static, dt_softplus=True)
        fresh = ssd_inputs(*shape, dtype=dtype, seed=8)
        for k, v in fresh.items():
            static[k].copy_(v)
        graph.replay()
        ry, rs = ssd_scan_reference(**fresh, dt_softplus=True)
        ey, es = rel_err(gy.cpu(), ry), rel_err(gs.cpu(), rs)
        results.append(dict(name=f"torch op, CUDA graph replay, {dtype}", y_err=ey, state_err=es,
                            ok=ey <= Y_TOL[dtype] and es <= STATE_TOL[dtype]))
    return results


# ----------------------------------------------------------------------------------- time

MODELS = {"mamba2-130m": 24, "mamba2-2.7b": 80}  # heads of 64; d_state 128, one group


def model_inputs(dtype, batch, heads, length, seed, p=64, n=128):
    """Mamba-2's magnitudes: dt_bias from dt in [1e-3, 1e-1], A = -exp(A_log), A_log in [log 1, log 16]."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda").to(dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, device="cuda")  # noqa: E731
    dt0 = torch.exp(u(heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(x=r(batch, length, heads, p), dt=r(batch, length, heads), A=-torch.exp(u(heads) * math.log(16)),
                B=r(batch, length, 1, n), C=r(batch, length, 1, n), D=torch.randn(heads, generator=g, device="cuda"),
                z=r(batch, length, heads, p), dt_bias=dt0 + torch.log(-torch.expm1(-dt0)))


def floors(dtype, batch, heads, length, bw, tc_rate, p=64, n=128, groups=1):
    """(memory floor, matmul floor) in us: x, dt, B, C, z read, y and the final state written;
    the chunked algorithm's products at 64-step chunks (causal halves), at the tensor-core rate."""
    es = torch.tensor([], dtype=dtype).element_size()
    act = batch * length * heads * p
    nbytes = es * (3 * act + batch * length * heads + 2 * batch * length * groups * n) + 4 * batch * heads * p * n
    chunks = batch * math.ceil(length / CHUNK)
    flops = chunks * (groups * CHUNK**2 * n + heads * (CHUNK**2 * p + 4 * CHUNK * p * n))
    return nbytes / bw * 1e6, flops / tc_rate * 1e6, nbytes


def eager_time_us(fn, calls: int = 30) -> float:
    """Wall time of one call from Python, back to back (launch-bound calls show their host cost)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def enqueue_call(lib, params, keep, segment=None):
    """One launch of our kernels on the current stream (the block was checked before); `keep`
    holds the tensors behind the block's pointers; `segment` forces the segmentation (the plan
    is made at each launch, so also while a graph is captured)."""
    workspace = keep.get("workspace")
    ptr = workspace.data_ptr() if workspace is not None else None

    def call():
        if segment:
            os.environ["MAMBA_KERNELS_SSD_SEGMENT"] = str(segment)
        try:
            err = lib.mamba_ssd_scan_cuda(ctypes.byref(params), ptr, torch.cuda.current_stream().cuda_stream)
        finally:
            os.environ.pop("MAMBA_KERNELS_SSD_SEGMENT", None)
        if err:
            raise RuntimeError(f"mamba_ssd_scan_cuda failed: cudaError {err} ({keep})")

    call.keep = keep
    return call


def our_calls(lib, sets, segment=None):
    """Graph-capturable calls of ours over the input sets (outputs and workspace per set)."""
    calls = []
    for s in sets:
        keep = dict(s, y=torch.empty_like(s["x"]),
                    state=torch.empty(s["x"].shape[0], s["x"].shape[2], s["x"].shape[3], s["B"].shape[3], device="cuda"))
        params = ssd_params(**s, initial_state=None, dt_softplus=True, dt_min=0.0, dt_max=None, y=keep["y"],
                            final_state=keep["state"])
        if segment:
            os.environ["MAMBA_KERNELS_SSD_SEGMENT"] = str(segment)
        try:
            size = lib.mamba_ssd_scan_cuda_workspace_size(ctypes.byref(params))
        finally:
            os.environ.pop("MAMBA_KERNELS_SSD_SEGMENT", None)
        keep["workspace"] = torch.empty(size, dtype=torch.uint8, device="cuda") if size else None
        calls.append(enqueue_call(lib, params, keep, segment))
    return calls


def kernel_times(fn) -> dict:
    """CUDA time per kernel name (us) of one eager call, from the profiler."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key[:60]: round(e.device_time_total, 1) for e in prof.key_averages() if e.device_time_total > 0}


def time_prefill(lib, ref, model, dtype_name, batch, length, bw, tc_rate, l2, sweep) -> dict:
    dtype, heads = DTYPES[dtype_name], MODELS[model]
    floor_mem, floor_mma, nbytes = floors(dtype, batch, heads, length, bw, tc_rate)
    sets = input_sets(lambda i: model_inputs(dtype, batch, heads, length, i), nbytes, l2)
    row = dict(kind="prefill", model=model, dtype=dtype_name, batch=batch, L=length, heads=heads,
               floor_us=max(floor_mem, floor_mma), floor_mem_us=floor_mem, floor_mma_us=floor_mma,
               bound="memory" if floor_mem >= floor_mma else "matmul")
    row["us"] = graph_time_us(our_calls(lib, sets), 20)
    s0 = sets[0]
    with torch.no_grad():
        row["eager_us"] = eager_time_us(lambda: torch.ops.mamba.ssd_scan(**s0, dt_softplus=True))
    if sweep:
        chunks = math.ceil(length / CHUNK)
        row["segments"] = {str(seg): round(graph_time_us(our_calls(lib, sets, seg), 10), 1)
                           for seg in (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128) if seg <= chunks}
        row["kernels"] = kernel_times(our_calls(lib, sets[:1])[0])
    if ref is not None and dtype_name != "fp32":
        with torch.no_grad():
            row["ref_us"] = graph_time_us([ref.scan_call(s) for s in sets], 10)
            row["ref_eager_us"] = eager_time_us(ref.scan_call(s0))
            if sweep:
                row["ref_kernels"] = kernel_times(ref.scan_call(s0))
        row["speedup"] = row["ref_us"] / row["us"]
        row["speedup_eager"] = row["ref_eager_us"] / row["us"]
    row["pct_floor"] = 100 * row["floor_us"] / row["us"]
    return row


def time_decode(lib, dtype_name, model, batch, bw, l2) -> dict:
    """One step, the state updated in place, cycling over enough states to exceed the L2."""
    dtype, heads = DTYPES[dtype_name], MODELS[model]
    es = torch.tensor([], dtype=dtype).element_size()
    nbytes = 2 * batch * heads * 64 * 128 * 4 + batch * (3 * heads * 64 + heads + 2 * 128) * es

    def make(i):
        x = model_inputs(dtype, batch, heads, 1, i)
        x["initial_state"] = torch.randn(batch, heads, 64, 128, device="cuda")
        return x

    sets = input_sets(make, nbytes, l2)
    reps = max(1, 48 // len(sets))
    calls = []
    for s in sets:
        keep = dict(s, y=torch.empty_like(s["x"]))
        params = ssd_params(**s, dt_softplus=True, dt_min=0.0, dt_max=None, y=keep["y"], final_state=s["initial_state"])
        calls.append(enqueue_call(lib, params, keep))
    us = graph_time_us(calls * reps, 20)
    floor = nbytes / bw * 1e6
    return dict(kind="decode", model=model, dtype=dtype_name, batch=batch, L=1, us=us, floor_us=floor,
                pct_floor=100 * floor / us)


def tensor_core_rate() -> float:
    """bf16 matrix product, 8192^3, flop/s (the matmul ceiling)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    us = graph_time_us([lambda: a @ b] * 4, 10)
    return 2 * 8192**3 / (us * 1e-6)


def load_reference():
    """mamba_ssm's Triton SSD from third_party/mamba_ssd (measurement only), or None."""
    path = ROOT / "third_party" / "mamba_ssd"
    if not (path / "ref.py").is_file():
        return None
    sys.path.insert(0, str(path))
    import ref  # noqa: PLC0415

    return ref


# ----------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "out"), help="folder for the JSON results")
    ap.add_argument("--random-cases", type=int, default=40)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="also time every segmentation of ours")
    ap.add_argument("--no-anchor", action="store_true", help="time ours only (e.g. a second build of ours)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lib = load_library()
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__)
    failed = 0

    def save():
        (out / "ssd.json").write_text(json.dumps(result, indent=1))

    if not args.skip_check:
        t0 = time.time()
        checks = []
        for c in check_cases(4321, args.random_cases):
            try:
                checks.append(run_case(lib, c))
            except Exception as err:  # noqa: BLE001  a crash is a failed case, with its reason
                checks.append(dict(c, ok=False, error=repr(err)[:300], y_err=math.inf))
                if "CUDA error" in repr(err) or "cudaError" in repr(err):
                    break  # the context is gone
        checks += check_torch_op()
        bad = [c for c in checks if not c["ok"]]
        failed += len(bad)
        worst = {}
        for c in checks:
            key = c.get("dtype", "op")
            worst[key] = max(worst.get(key, 0.0), c["y_err"])
        print(f"check: {len(checks) - len(bad)}/{len(checks)} passed in {time.time() - t0:.0f} s; "
              f"worst y error by type: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
        for c in bad[:40]:
            print("  FAILED", {k: c.get(k) for k in ("shape", "dtype", "optional", "softplus", "segment", "misaligned",
                                                    "inplace", "small_dt", "y_err", "state_err", "unwritten", "error")})
        result["checks"] = checks
        save()

    if not args.skip_time:
        ref = None if args.no_anchor else load_reference()
        props = torch.cuda.get_device_properties(0)
        l2 = getattr(props, "L2_cache_size", 50 * 2**20)
        bw, tc_rate = FLOOR_BANDWIDTH, tensor_core_rate()
        result.update(copy_bandwidth_measured=copy_bandwidth(), tensor_core_rate=tc_rate, bandwidth=bw,
                      anchor=ref.COMMIT if ref else None)
        rows = []
        for model in MODELS:
            for batch in (1, 8):
                for length in (2048, 8192):
                    rows.append(time_prefill(lib, ref, model, "bf16", batch, length, bw, tc_rate, l2, args.sweep))
                    print("  ", json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in rows[-1].items()}))
                    torch.cuda.empty_cache()
                    result["timings"] = rows
                    save()
        for dtype in ("fp16", "fp32"):
            for model, batch in (("mamba2-130m", 1), ("mamba2-2.7b", 8)):
                rows.append(time_prefill(lib, None, model, dtype, batch, 2048, bw, tc_rate, l2, False))
        for dtype in ("bf16", "fp32"):
            for model in MODELS:
                for batch in (1, 8, 64):
                    rows.append(time_decode(lib, dtype, model, batch, bw, l2))
        result["timings"] = rows
        save()
        print(f"bandwidth {bw / 1e12:.2f} TB/s (measured copy {result['copy_bandwidth_measured'] / 1e12:.2f}), "
              f"tensor cores {tc_rate / 1e12:.0f} TFLOP/s, anchor {'mamba_ssm ' + ref.COMMIT[:7] if ref else 'absent'}")
        print(f"{'kind':8}{'model':12}{'type':5}{'b':>3}{'L':>6}{'us':>9}{'eager':>8}{'floor':>8}{'bound':>7}"
              f"{'%fl':>5}{'ref us':>9}{'ref eag':>9}{'x ref':>7}{'x eag':>7}")
        for r in rows:
            print(f"{r['kind']:8}{r['model']:12}{r['dtype']:5}{r['batch']:>3}{r['L']:>6}{r['us']:9.1f}"
                  f"{fmt(r.get('eager_us'), '8.1f')}{r['floor_us']:8.1f}{r.get('bound', 'memory'):>7}"
                  f"{r['pct_floor']:5.0f}{fmt(r.get('ref_us'), '9.1f')}{fmt(r.get('ref_eager_us'), '9.1f')}"
                  f"{fmt(r.get('speedup'), '7.2f')}{fmt(r.get('speedup_eager'), '7.2f')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
