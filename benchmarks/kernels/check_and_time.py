#!/usr/bin/env python3
"""GPU proof of the CUDA selective scan (plugins/kernels/cuda) in one run.

1. check: the kernels (through their C ABI, outputs poisoned with NaN) against the reference
   over many random shapes: odd dims, groups > 1, L = 0 / 1 / odd / long, every optional-input
   combination, float32 / float16 / bfloat16, every tiling (MAMBA_KERNELS_SCAN_PLAN),
   misaligned pointers; plus the torch op (non-contiguous inputs, CUDA-graph capture).
2. time: ours against mamba_ssm's forward scan and Triton decode step (third_party/mamba_ref,
   if present) at the issue's shapes, as CUDA-graph replays; with the floor of each shape.

Writes JSON under --out and prints the timing table last. Run by benchmarks/kernels/run.sh.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mamba_export.ops import selective_scan_reference  # noqa: E402
from mamba_export.ops.cuda import launch, load_library, scan_params  # noqa: E402
from tests.scan_inputs import rel_err, scan_inputs  # noqa: E402

# docs/ops.md: y tolerance per activation type; final_state 1e-5, or 1e-4 with rounded inputs.
Y_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
STATE_TOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The floors' bandwidth: the copy bandwidth of this machine type (nvidia-h100-x1, KINDS.md);
# each run's own copy_bandwidth() is reported next to it.
FLOOR_BANDWIDTH = 3.0e12
PLANS = ["chained", "fused_r8", "fused"]
DECODE_PLANS = ["decode4", "decode8"]
OPTIONAL = ("D", "z", "delta_bias", "initial_state")


# ---------------------------------------------------------------------------------- check


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values, one element into a larger buffer: defeats the kernels' vector paths."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def run_case(lib, case: dict) -> dict:
    """One shape through the library with NaN-poisoned outputs, against the reference."""
    batch, dim, length, n, groups = case["shape"]
    dtype = DTYPES[case["dtype"]]
    present = case["optional"]
    inputs = scan_inputs(batch, dim, length, n, groups, dtype=dtype, seed=case["seed"],
                         **{f"has_{k}": k in present for k in OPTIONAL})
    softplus = case["softplus"]
    if not softplus:  # dt = delta (+ bias) as is: keep it positive, or the state overflows
        inputs["delta"] = inputs["delta"].abs()
        if inputs["delta_bias"] is not None:
            inputs["delta_bias"] = inputs["delta_bias"].abs()
    elif case.get("small_dt") and inputs["delta_bias"] is not None:
        inputs["delta_bias"] = inputs["delta_bias"] - 4.0  # dt ~ 1e-2 .. 1e-3, as in trained models
    # The judge: the reference on the CPU (correctly rounded exp), before moving to the GPU.
    ref_y, ref_state = selective_scan_reference(**inputs, delta_softplus=softplus)
    inputs = {k: v.cuda() if v is not None else None for k, v in inputs.items()}
    if case.get("misaligned"):
        for k in ("u", "delta", "z", "B"):
            if inputs[k] is not None:
                inputs[k] = misaligned(inputs[k])
    y = torch.full((batch, dim, length), float("nan"), dtype=dtype, device="cuda")
    y = misaligned(y) if case.get("misaligned") else y
    state = torch.full((batch, dim, n), float("nan"), device="cuda")
    if case.get("inplace"):  # the state updated in place: final_state aliases initial_state
        state = inputs["initial_state"] = inputs["initial_state"].clone()
    if case.get("plan"):
        os.environ["MAMBA_KERNELS_SCAN_PLAN"] = case["plan"]
    try:
        launch(lib, scan_params(**inputs, delta_softplus=softplus, y=y, final_state=state), y.device)
        torch.cuda.synchronize()
    finally:
        os.environ.pop("MAMBA_KERNELS_SCAN_PLAN", None)
    y, state = y.cpu(), state.cpu()
    unwritten = bool(y.isnan().any() or state.isnan().any()) and not bool(ref_y.isnan().any())
    ey, es = rel_err(y, ref_y), rel_err(state, ref_state)
    ok = not unwritten and ey <= Y_TOL[dtype] and es <= STATE_TOL[dtype]
    return dict(case, y_err=ey, state_err=es, unwritten=unwritten, ok=ok)


def check_cases(seed: int, count: int) -> list[dict]:
    rnd = random.Random(seed)
    cases = []

    def add(shape, dtype="fp32", optional=OPTIONAL, softplus=1, **extra):
        cases.append(dict(shape=shape, dtype=dtype, optional=list(optional), softplus=softplus,
                          seed=len(cases), **extra))

    for dt in DTYPES:
        # Every tiling of dstate <= 16, odd and even sizes, with and without a tail tile.
        for plan in PLANS:
            add((2, 24, 203, 16, 3), dt, plan=plan)
            add((1, 7, 64, 5, 7), dt, plan=plan, optional=("z",))
            add((3, 10, 129, 16, 2), dt, plan=plan, misaligned=True)
        # Every optional-input combination, with and without softplus.
        for mask in range(16):
            opt = [k for i, k in enumerate(OPTIONAL) if mask >> i & 1]
            add((2, 8, 50, 16, 1), dt, optional=opt, softplus=mask % 2)
        # Other state sizes (every bucket) and the decode step.
        for n in (1, 3, 8, 17, 32, 33, 64, 65, 128, 129, 200, 256):
            add((2, 6, 77, n, 2), dt)
            add((3, 9, 1, n, 3), dt)
            if n <= 128:
                add((3, 9, 1, n, 3), dt, plan="decode8")
        add((2, 6, 1, 16, 1), dt, misaligned=True)
        add((70000, 1, 1, 16, 1), dt)  # more batch rows than a grid has (65535): the rows loop
        add((4, 24, 1, 16, 2), dt, inplace=True)
        for plan in PLANS:
            add((2, 40, 100, 16, 1), dt, inplace=True, plan=plan)
        for length in (0, 1, 2, 31, 32, 33, 255, 1000):
            add((1, 40, length, 16, 1), dt)
        # Long sequences with small dt: error accumulation, and the chained tiling's carries.
        add((1, 64, 4099, 16, 1), dt, small_dt=True, plan="chained")
        add((1, 64, 4096, 16, 1), dt, small_dt=True, plan="fused")
        add((1, 64, 4097, 16, 1), dt, small_dt=True, plan="fused_r8")
        add((1, 32, 3001, 16, 1), dt, small_dt=True)
    # Random shapes.
    for _ in range(count):
        n = rnd.choice([16, 16, 16, rnd.randint(1, 256)])
        groups = rnd.choice([1, 1, 2, 3, 4])
        dim = groups * rnd.randint(1, 96)
        length = rnd.choice([rnd.randint(0, 64), rnd.randint(64, 3000)])
        length = min(length, 20_000_000 // (dim * n * 3))  # keeps the CPU reference quick
        plan = rnd.choice([None, *PLANS]) if n <= 16 else None
        add((rnd.randint(1, 3), dim, length, n, groups), rnd.choice(list(DTYPES)),
            optional=[k for k in OPTIONAL if rnd.random() < 0.7], softplus=rnd.randint(0, 1),
            plan=plan, misaligned=rnd.random() < 0.2, small_dt=rnd.random() < 0.3)
    return cases


def check_torch_op() -> list[dict]:
    """torch.ops.mamba.selective_scan on CUDA: non-contiguous inputs, and a captured graph."""
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        x = scan_inputs(2, 32, 300, 16, 2, dtype=dtype, seed=7)
        rx = x
        x = {k: v.cuda() if v is not None else None for k, v in x.items()}
        # Non-contiguous u and z (transposed storage).
        x["u"] = x["u"].transpose(1, 2).contiguous().transpose(1, 2)
        x["z"] = x["z"].transpose(1, 2).contiguous().transpose(1, 2)
        y, s = torch.ops.mamba.selective_scan(**x, delta_softplus=True)
        y, s = y.cpu(), s.cpu()
        ry, rs = selective_scan_reference(**rx, delta_softplus=True)
        results.append(dict(name=f"torch op, non-contiguous, {dtype}", y_err=rel_err(y, ry),
                            state_err=rel_err(s, rs), ok=rel_err(y, ry) <= Y_TOL[dtype] and rel_err(s, rs) <= STATE_TOL[dtype]))
        # Capture once, replay on new inputs copied into the static ones.
        static = {k: v.clone() if v is not None else None for k, v in x.items()}
        torch.ops.mamba.selective_scan(**static, delta_softplus=True)  # warm-up (loads the library)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gy, gs = torch.ops.mamba.selective_scan(**static, delta_softplus=True)
        fresh = scan_inputs(2, 32, 300, 16, 2, dtype=dtype, seed=8)
        for k, v in fresh.items():
            if v is not None:
                static[k].copy_(v)
        graph.replay()
        ry, rs = selective_scan_reference(**fresh, delta_softplus=True)
        gy, gs = gy.cpu(), gs.cpu()
        ok = rel_err(gy, ry) <= Y_TOL[dtype] and rel_err(gs, rs) <= STATE_TOL[dtype]
        results.append(dict(name=f"torch op, CUDA graph replay, {dtype}", y_err=rel_err(gy, ry),
                            state_err=rel_err(gs, rs), ok=ok))
    return results


# ----------------------------------------------------------------------------------- time


def enqueue(lib, params) -> None:
    """One launch of our kernel on the current stream (the block was checked before)."""
    err = lib.mamba_selective_scan_cuda(ctypes.byref(params), None, torch.cuda.current_stream().cuda_stream)
    if err:
        raise RuntimeError(f"mamba_selective_scan_cuda failed: cudaError {err}")


def graph_time_us(calls: list, replays: int) -> float:
    """Median time of one call: `calls` (each enqueueing one op) captured into one graph and
    replayed; the calls cycle over input sets so that large-L2 shapes do not run from cache."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for fn in calls:  # warm up (Triton compiles here) outside the capture
            fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for fn in calls:
            fn()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the memory ceiling)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = graph_time_us([lambda: b.copy_(a)] * 4, 20)
    return 2 * a.numel() / (us * 1e-6)


def sm_clock_hz() -> float:
    """The SM clock the exponential rate is counted at: the GPU's maximum (boost) clock."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
        return float(out.split()[0]) * 1e6
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return 1.98e9


def input_sets(make, bytes_per_set: int, l2_bytes: int) -> list:
    """Enough copies of the inputs that one graph's calls stream more than 3x the L2."""
    count = 1 if bytes_per_set >= 3 * l2_bytes else min(16, -(-3 * l2_bytes // bytes_per_set))
    return [make(i) for i in range(count)]


def prefill_shapes():
    for dtype in ("fp32", "bf16"):
        for dim in (1536, 5120):
            for batch in (1, 8):
                for length in (512, 2048, 8192):
                    yield dtype, batch, dim, length


def time_prefill(lib, ref, dtype_name, batch, dim, length, n, bw, exp_rate, l2, plan=None) -> dict:
    dtype = DTYPES[dtype_name]
    es = torch.tensor([], dtype=dtype).element_size()
    act = batch * dim * length

    def make(i):
        g = torch.Generator(device="cuda").manual_seed(i)
        r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device="cuda") * scale).to(dtype)  # noqa: E731
        x = dict(u=r(batch, dim, length), delta=r(batch, dim, length, scale=0.5),
                 A=-torch.rand(dim, n, generator=g, device="cuda") * 2 - 0.1,
                 B=r(batch, 1, n, length), C=r(batch, 1, n, length),
                 D=torch.randn(dim, generator=g, device="cuda"), z=r(batch, dim, length),
                 delta_bias=torch.randn(dim, generator=g, device="cuda") * 0.5 - 4)
        x["y"] = torch.empty_like(x["u"])
        x["state"] = torch.empty(batch, dim, n, device="cuda")
        return x

    # Minimum traffic: read u, delta, z, B, C (+A, D, bias), write y and the final state.
    min_bytes = 4 * act * es + 2 * batch * n * length * es + dim * (n + 2) * 4 + batch * dim * n * 4
    sets = input_sets(make, min_bytes, l2)
    params = [scan_params(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"], s["z"], s["delta_bias"], None, 1,
                          s["y"], s["state"]) for s in sets]

    def ours(p):
        return lambda: enqueue(lib, p)

    if plan:
        os.environ["MAMBA_KERNELS_SCAN_PLAN"] = plan
    try:
        t_ours = graph_time_us([ours(p) for p in params], 20)
    finally:
        os.environ.pop("MAMBA_KERNELS_SCAN_PLAN", None)
    t_ref = None
    if ref is not None and plan is None:
        bufs = []
        for s in sets:
            bufs.append((s, torch.empty_like(s["u"]), torch.empty_like(s["u"]),
                         torch.empty(batch, dim, -(-length // 2048), 2 * n, device="cuda")))
        calls = [ref.scan_call(s, out, out_z, xbuf) for s, out, out_z, xbuf in bufs]
        t_ref = graph_time_us(calls, 10)
    exps = batch * dim * length * n
    floor_mem, floor_exp = min_bytes / bw * 1e6, exps / exp_rate * 1e6
    floor = max(floor_mem, floor_exp)
    return dict(kind="prefill", dtype=dtype_name, batch=batch, dim=dim, L=length, N=n, plan=plan or "auto",
                us=t_ours, ref_us=t_ref, floor_us=floor, bound="exp" if floor_exp > floor_mem else "memory",
                floor_mem_us=floor_mem, floor_exp_us=floor_exp, gbps=min_bytes / t_ours / 1e3,
                pct_floor=100 * floor / t_ours, speedup=t_ref / t_ours if t_ref else None)


def time_decode(lib, ref, dtype_name, batch, dim, n, bw, l2, plan=None) -> dict:
    """One decode step, the state updated in place (final_state = initial_state, as in a
    generation loop); the calls cycle over enough states (one per layer, say) to exceed L2."""
    dtype = DTYPES[dtype_name]
    es = torch.tensor([], dtype=dtype).element_size()
    min_bytes = 2 * batch * dim * n * 4 + dim * n * 4 + batch * (4 * dim + 2 * n) * es

    def make(i):
        g = torch.Generator(device="cuda").manual_seed(i)
        r = lambda *s: torch.randn(*s, generator=g, device="cuda").to(dtype)  # noqa: E731
        x = dict(u=r(batch, dim, 1), delta=r(batch, dim, 1), A=-torch.rand(dim, n, generator=g, device="cuda") - 0.1,
                 B=r(batch, 1, n, 1), C=r(batch, 1, n, 1), D=torch.randn(dim, generator=g, device="cuda"),
                 z=r(batch, dim, 1), delta_bias=torch.randn(dim, generator=g, device="cuda"),
                 initial_state=torch.randn(batch, dim, n, generator=g, device="cuda"))
        x["y"] = torch.empty_like(x["u"])
        return x

    sets = input_sets(make, min_bytes, l2)
    reps = max(1, 48 // len(sets))
    params = [scan_params(**s, delta_softplus=1, final_state=s["initial_state"]) for s in sets]
    if plan:
        os.environ["MAMBA_KERNELS_SCAN_PLAN"] = plan
    try:
        t_ours = graph_time_us([lambda p=p: enqueue(lib, p) for p in params] * reps, 20)
    finally:
        os.environ.pop("MAMBA_KERNELS_SCAN_PLAN", None)
    t_ref = graph_time_us([ref.decode_call(s) for s in sets] * reps, 20) if ref is not None and not plan else None
    floor = min_bytes / bw * 1e6
    return dict(kind="decode", dtype=dtype_name, batch=batch, dim=dim, L=1, N=n, plan=plan or "auto",
                us=t_ours, ref_us=t_ref,
                floor_us=floor, bound="memory", gbps=min_bytes / t_ours / 1e3, pct_floor=100 * floor / t_ours,
                speedup=t_ref / t_ours if t_ref else None)


def load_reference():
    """mamba_ssm's kernels from third_party/mamba_ref (measurement only), or None."""
    path = ROOT / "third_party" / "mamba_ref"
    if not (path / "ref.py").is_file():
        return None
    sys.path.insert(0, str(path))
    import ref  # noqa: PLC0415

    return ref


# ----------------------------------------------------------------------------------- main


def fmt(v, spec):
    return format(v, spec) if v is not None else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "out"), help="folder for the JSON results")
    ap.add_argument("--random-cases", type=int, default=60)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--plans", action="store_true", help="also time every tiling at each dstate-16 shape, decode too")
    ap.add_argument("--time", choices=["all", "prefill", "decode"], default="all", help="which kernels to time")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lib = load_library()
    torch.backends.cuda.matmul.allow_tf32 = False
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__)
    failed = 0

    if not args.skip_check:
        t0 = time.time()
        checks = [run_case(lib, c) for c in check_cases(1234, args.random_cases)]
        checks += check_torch_op()
        bad = [c for c in checks if not c["ok"]]
        failed += len(bad)
        worst = {}
        for c in checks:
            key = c.get("dtype", "op")
            worst[key] = max(worst.get(key, 0.0), c["y_err"])
        print(f"check: {len(checks) - len(bad)}/{len(checks)} passed in {time.time() - t0:.0f} s; "
              f"worst y error by type: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
        for c in bad:
            print("  FAILED", c)
        result["checks"] = checks

    if not args.skip_time:
        ref = load_reference()
        props = torch.cuda.get_device_properties(0)
        l2 = getattr(props, "L2_cache_size", 50 * 2**20)
        bw, copy = FLOOR_BANDWIDTH, copy_bandwidth()
        clock = sm_clock_hz()
        exp_rate = 16 * props.multi_processor_count * clock
        result.update(bandwidth=bw, copy_bandwidth_measured=copy, sm_clock_hz=clock, exp_rate=exp_rate, anchor=ref is not None)
        rows = []
        for shape in prefill_shapes() if args.time != "decode" else ():
            rows.append(time_prefill(lib, ref, *shape, 16, bw, exp_rate, l2))
            for plan in PLANS if args.plans else ():
                rows.append(time_prefill(lib, None, *shape, 16, bw, exp_rate, l2, plan=plan))
            torch.cuda.empty_cache()
        for dtype in ("fp32", "bf16") if args.time != "prefill" else ():
            for dim in (1536, 5120):
                for batch in (1, 16, 64):
                    rows.append(time_decode(lib, ref, dtype, batch, dim, 16, bw, l2))
                    for plan in DECODE_PLANS if args.plans else ():
                        rows.append(time_decode(lib, None, dtype, batch, dim, 16, bw, l2, plan))
        result["timings"] = rows
        (out / "kernels.json").write_text(json.dumps(result, indent=1))
        print(f"floor bandwidth {bw / 1e12:.2f} TB/s (measured copy {copy / 1e12:.2f}), SM clock {clock / 1e9:.2f} GHz, "
              f"exp rate {exp_rate / 1e12:.2f} T/s, anchor {'mamba_ssm' if ref else 'absent'}")
        print("(plan auto: the tiling each shape picks by itself)")
        print(f"{'kind':8}{'plan':9}{'type':5}{'b':>3}{'dim':>5}{'L':>5}{'us':>9}{'floor':>8}{'bound':>7}"
              f"{'GB/s':>7}{'%floor':>7}{'ref us':>9}{'x ref':>7}")
        for r in rows:
            print(f"{r['kind']:8}{r['plan']:9}{r['dtype']:5}{r['batch']:>3}{r['dim']:>5}{r['L']:>5}"
                  f"{r['us']:9.1f}{r['floor_us']:8.1f}{r['bound']:>7}{r['gbps']:7.0f}{r['pct_floor']:7.0f}"
                  f"{fmt(r['ref_us'], '9.1f')}{fmt(r['speedup'], '7.2f')}")
    else:
        (out / "kernels.json").write_text(json.dumps(result, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
