"""Proof, on a GPU machine, that TensorRT builds our exported models with the plugin inside.

For the shipped Mamba-1 model (models/mamba1-pystdlib, else a small random model), a
mamba-130m-sized random model, the shipped Mamba-2 model (models/mamba2-pystdlib, if there), a
tiny random Mamba-2 with a binding time-step clamp and a mamba2-130m-sized random one, in
float32 and float16:
export to ONNX, load libmamba_trt.so into TensorRT's plugin registry, check both creators
(SelectiveScan, SSDScan), parse (every scan node, mamba.SelectiveScan or mamba.SSDScan, must
become an IPluginV3 layer whose outputs have the contract's types), build with the prefill and
decode profiles through mamba_export.build_engine, deserialize, and, where the runtime runs
the engine, validate it against eager PyTorch.

TensorRT comes through mamba_export's compat import: `tensorrt`, else TensorRT-RTX's
`tensorrt_rtx_bindings`. TensorRT-RTX 1.7's runtime does not run engines on an H100 (its
default build there works; the device proof in docs/tensorrt.md records both). The probe
engine of mamba_export.tensorrt (build_unavailable, run_unavailable; what the tests and
--backend trt go by) is asked first and recorded; after a failed default build, TensorRT-RTX
builds for --rtx-target (default SM89) instead. Every step is recorded as it happened.

Prints a table (step, ok/failed/skipped, detail) and writes $OUT/prove_build.json
(OUT defaults to ./out). Exit status 0 when every engine was built and serialized.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mamba_export import load  # noqa: E402
from mamba_export.backends.torch_backend import TorchBackend  # noqa: E402
from mamba_export.bench import random_model  # noqa: E402
from mamba_export.export.onnx_export import export_onnx  # noqa: E402
from mamba_export.models import Mamba1Config, Mamba2Config, build_model  # noqa: E402
from mamba_export.tensorrt import Profiles, ShapeRange, build_engine, import_tensorrt, load_plugin  # noqa: E402
from mamba_export.tensorrt import build_unavailable, run_unavailable  # noqa: E402
from mamba_export.tensorrt.build import parse_network, sidecar_path  # noqa: E402
from mamba_export.tensorrt.compat import (  # noqa: E402
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    SCAN_OPS,
    compute_capability_target,
    describe,
    make_logger,
)
from mamba_export.validate import TOLERANCES, compare  # noqa: E402

SHIPPED = ROOT / "models" / "mamba1-pystdlib"
SHIPPED_MAMBA2 = ROOT / "models" / "mamba2-pystdlib"
PROFILES = Profiles(batch=ShapeRange(1, 2, 4), sequence=ShapeRange(1, 64, 256))


class Record:
    def __init__(self):
        self.steps: list[dict] = []

    @contextlib.contextmanager
    def step(self, name: str):
        """Records the block as ok, or as failed with the exception's message; never raises.
        The block may set entry["detail"] and entry["status"] itself."""
        entry = {"step": name, "status": "ok", "detail": ""}
        started = time.perf_counter()
        try:
            yield entry
        except Exception as e:  # noqa: BLE001 - a failed step is a result here
            entry["status"] = "failed"
            entry["detail"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc(limit=4)
        entry["seconds"] = round(time.perf_counter() - started, 2)
        self.steps.append(entry)
        print(f"[{entry['status']:>7}] {name}: {entry['detail']}", flush=True)

    def skip(self, name: str, why: str):
        self.steps.append({"step": name, "status": "skipped", "detail": why, "seconds": 0})
        print(f"[skipped] {name}: {why}", flush=True)

    def ok(self, name: str) -> bool:
        return any(s["step"] == name and s["status"] == "ok" for s in self.steps)


def random(cfg, source: str):
    """float32, CPU, the model's own initialisation: real shapes, meaningless weights."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.source = f"{source} (random weights)"
    return model


MAMBA2_TINY = Mamba2Config(d_model=64, n_layer=2, vocab_size=256, d_state=16, headdim=16, ngroups=2,
                           dt_limit=(0.001, 0.1))  # fmt: skip


def models() -> dict:
    first = ("mamba1-pystdlib", lambda: load(SHIPPED)) if SHIPPED.is_dir() else \
        ("small-random", lambda: random(Mamba1Config(d_model=64, n_layer=2, vocab_size=256), "small model"))  # fmt: skip
    shipped_mamba2 = [("mamba2-pystdlib", lambda: load(SHIPPED_MAMBA2))] if SHIPPED_MAMBA2.is_dir() else []
    return dict([
        first,
        ("mamba-130m-random", lambda: random_model("mamba-130m")),
        *shipped_mamba2,
        ("mamba2-tiny-random", lambda: random(MAMBA2_TINY, "tiny Mamba-2")),
        ("mamba2-130m-random", lambda: random_model("mamba2-130m")),
    ])  # fmt: skip


def check_creators(trt) -> str:
    found = []
    for plugin in SCAN_OPS.values():
        creator = trt.get_plugin_registry().get_creator(plugin, PLUGIN_VERSION, PLUGIN_NAMESPACE)
        if creator is None:
            raise RuntimeError(f"no creator {plugin}/{PLUGIN_VERSION} in the registry")
        name = getattr(creator, "name", "?")
        version = getattr(creator, "plugin_version", "?")
        namespace = getattr(creator, "plugin_namespace", "?")
        fields = getattr(creator, "field_names", None)
        field_names = [f.name for f in fields] if fields is not None else "?"
        if (name, version, namespace) != (plugin, PLUGIN_VERSION, PLUGIN_NAMESPACE):
            raise RuntimeError(f"creator says name={name!r} version={version!r} namespace={namespace!r}")
        found.append(f"name={name!r} version={version!r} namespace={namespace!r} fields={field_names}")
    return "; ".join(found)


def inspect_parse(trt, onnx_path: Path, dtype: torch.dtype, op: str) -> str:
    """Parses the export; every ``op`` node is a plugin layer with y: T, final_state: f32."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == op]
    logger = make_logger(trt)
    _, network, _, layers = parse_network(trt, logger, onnx_path, len(nodes), op)
    want = {torch.float32: trt.float32, torch.float16: trt.float16, torch.bfloat16: trt.bfloat16}[dtype]
    for layer, node in zip(layers, nodes):
        if layer.num_inputs != len(node.input) or layer.num_outputs != 2:
            raise RuntimeError(f"{layer.name}: {layer.num_inputs} inputs / {layer.num_outputs} outputs, "
                               f"node {node.name} has {len(node.input)} / {len(node.output)}")  # fmt: skip
        types = (layer.get_output(0).dtype, layer.get_output(1).dtype)
        if types != (want, trt.float32):
            raise RuntimeError(f"{layer.name}: output types {types}, expected ({want}, float32)")
    shapes = f"{tuple(layers[0].get_output(0).shape)}, {tuple(layers[0].get_output(1).shape)}" if layers else ""
    return (f"{network.num_layers} layers; {len(nodes)} {op} nodes -> {len(layers)} IPluginV3 layers "
            f"({', '.join(layer.name for layer in layers[:2])}{', ...' if len(layers) > 2 else ''}), "
            f"outputs ({want.name}, FLOAT) {shapes}")  # fmt: skip


def prove_model(rec: Record, trt, tag: str, make_model, dtype: str, work: Path, out: Path, rtx_target_name: str):
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    name = f"{tag} {dtype}"
    export_dir, plan = work / f"{tag}-{dtype}", work / f"{tag}-{dtype}" / "model.plan"
    with rec.step(f"{name}: export ONNX") as s:
        model = make_model()
        export_onnx(model, export_dir, dtype=dtype)
        s["detail"] = f"{export_dir / 'model.onnx'} ({(export_dir / 'model.onnx').stat().st_size / 2**20:.1f} MiB)"
    if not rec.ok(f"{name}: export ONNX"):
        return
    with rec.step(f"{name}: parse (plugin layers)") as s:
        s["detail"] = inspect_parse(trt, export_dir / "model.onnx", torch_dtype, SCAN_OPS[model.config.architecture])

    cache = out / "timing.cache"
    built = f"{name}: build + serialize (build_engine)"
    with rec.step(built) as s:
        build_engine(export_dir, plan, profiles=PROFILES, timing_cache=cache, log=print)
        profiles = json.loads(sidecar_path(plan).read_text())["profiles"]
        s["detail"] = f"{plan.stat().st_size / 2**20:.1f} MiB, profiles {profiles}"
    if not rec.ok(built) and trt.__name__.startswith("tensorrt_rtx"):
        built = f"{name}: build + serialize for {rtx_target_name} (TensorRT-RTX target)"
        with rec.step(built) as s:
            build_engine(export_dir, plan, profiles=PROFILES, timing_cache=cache, overwrite=True,
                         builder_config=compute_capability_target(trt, rtx_target_name), log=print)  # fmt: skip
            s["detail"] = f"{plan.stat().st_size / 2**20:.1f} MiB"
    if not rec.ok(built):
        return

    engine = None
    with rec.step(f"{name}: deserialize") as s:
        logger = make_logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            s["status"] = "refused"
            s["detail"] = "the runtime refused the engine: " + (" | ".join(logger.errors) or "no message")
        else:
            io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            s["detail"] = f"{len(io)} I/O tensors, {engine.num_optimization_profiles} profiles"
    if engine is None:
        rec.skip(f"{name}: validate against eager PyTorch", "the engine cannot run here")
        return
    with rec.step(f"{name}: validate against eager PyTorch") as s:
        from mamba_export.backends.trt_backend import TrtBackend

        reference = make_model()
        errors = compare(TrtBackend(plan), TorchBackend(reference, name="reference"), batch=2, prompt_len=16,
                         decode_steps=4, vocab_size=reference.config.vocab_size)  # fmt: skip
        rel_tol, state_tol, greedy_tol = TOLERANCES[str(torch_dtype).removeprefix("torch.")]
        passed = errors["max_rel_err"] <= rel_tol and errors["state_max_rel_err"] <= state_tol and \
            errors["greedy_match"] >= greedy_tol  # fmt: skip
        s["status"] = "ok" if passed else "failed"
        s["detail"] = json.dumps(errors)


def environment(trt) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    if trt is not None:
        env["tensorrt"] = describe(trt)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="comma-separated subset of: " + ", ".join(models()))
    parser.add_argument("--dtypes", default="fp32,fp16", help="comma-separated: fp32, fp16, bf16")
    parser.add_argument("--rtx-target", default="SM89", help="TensorRT-RTX compute capability to retry a build for")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    rec = Record()
    trt = None
    with rec.step("import TensorRT (compat: tensorrt, else tensorrt_rtx_bindings)") as s:
        trt = import_tensorrt()
        s["detail"] = json.dumps(describe(trt))
    if trt is not None:
        with rec.step("load libmamba_trt.so into the plugin registry") as s:
            s["detail"] = load_plugin(trt)
        with rec.step("creators registered") as s:
            s["detail"] = check_creators(trt)
        with rec.step("probe engine (default build here; engines run on this GPU)") as s:
            s["detail"] = f"build: {build_unavailable(trt) or 'yes'}; run: {run_unavailable(trt) or 'yes'}"
    chosen = models() if args.models == "all" else {k: v for k, v in models().items() if k in args.models.split(",")}
    if trt is not None and rec.ok("creators registered"):
        with tempfile.TemporaryDirectory(prefix="prove-build-") as work:
            for tag, make_model in chosen.items():
                for dtype in args.dtypes.split(","):
                    prove_model(rec, trt, tag, make_model, dtype, Path(work), out, args.rtx_target)

    width = max(len(s["step"]) for s in rec.steps)
    print("\n" + f"{'step':<{width}}  {'result':<8}  detail")
    for s in rec.steps:
        print(f"{s['step']:<{width}}  {s['status']:<8}  {s['detail'][:300]}")
    report = {"environment": environment(trt), "steps": rec.steps}
    (out / "prove_build.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out / 'prove_build.json'}")
    built = [s for s in rec.steps if "build + serialize" in s["step"] and s["status"] == "ok"]
    return 0 if built and len(built) == len(chosen) * len(args.dtypes.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
