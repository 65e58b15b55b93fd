"""Validate the export of any nn.Module that calls a selective scan against eager PyTorch.

The export (exported here unless the directory already holds it) runs in ONNX Runtime, or
as a TensorRT engine built from it, on random inputs shaped like the example inputs, at
another batch size when the batch is dynamic; every output is compared with the eager module
run in float32 (max abs / max relative error, tolerance by the exported dtype, as
``mamba-export validate`` does for LMs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves

from . import console, jsonio
from .backends.factory import default_device, ensure_engine, require_backend
from .errors import MambaExportError, errors_as_one_line
from .export.module_export import as_input_tuple, class_path, export_module, module_dtype
from .export.onnx_export import check_graph_matches, made_from_other_weights, read_export_info
from .intercept import route_scans
from .runtime.ort import ort_session
from .tensorrt.profiles import Profiles, ShapeRange
from .validate import TOLERANCES, _max_abs_diff

MODULE_BACKENDS = {
    "ort": "ONNX Runtime, CPU, with the mamba custom-op library",
    "ort-portable": "ONNX Runtime, CPU, standard ONNX ops only (no custom-op library)",
    "ort-cuda": "ONNX Runtime, CUDA execution provider, with the mamba custom-op library",
    "trt": "TensorRT engine with the mamba plugin, CUDA (one profile over the batch, built into the export directory)",
}
# The trt engine's largest batch, in example batches, unless max_batch is given: room to run
# the export at other batch sizes without rebuilding.
MAX_BATCH_FACTOR = 4
REFERENCES = {
    "routed": "eager float32, scans routed to mamba::selective_scan (its reference on the CPU)",
    "module": "eager float32, the module as written (its own scan functions must run on the CPU)",
}


@dataclass
class ModuleValidationReport:
    backend: str
    model: str
    dtype: str
    batch: int
    reference: str
    outputs: list[dict]  # name, shape, max_abs_err, max_rel_err, passed
    tolerance: float
    passed: bool

    def to_json(self) -> str:
        return jsonio.dumps(asdict(self), indent=2)

    def table(self) -> str:
        head = (f"{self.backend} vs eager PyTorch (float32, {self.reference}) | {self.model} | {self.dtype} | "
                f"batch {self.batch}")  # fmt: skip
        lines = [head, f"  {'output':<16} {'shape':<20} {'max abs err':>12} {'max rel err':>12}"]
        for o in self.outputs:
            shape = "[" + ", ".join(map(str, o["shape"])) + "]"
            verdict = "ok" if o["passed"] else f"> {self.tolerance:.0e}"
            errors = f"{o['max_abs_err']:>12.3e} {o['max_rel_err']:>12.3e}"
            lines.append(f"  {o['name']:<16} {shape:<20} {errors}  {verdict}")
        lines.append(f"  {'result':<16} {'PASSED' if self.passed else 'FAILED'}")
        return "\n".join(lines)


def _takes(held: list[dict], inputs) -> bool:
    """Whether an export's inputs (export.json) take ``inputs``: the same number and types, and
    every dimension past the batch equal or dynamic (a name in export.json)."""
    return len(held) == len(inputs) and all(
        h["dtype"] == str(t.dtype).removeprefix("torch.") and len(h["shape"]) == t.dim()
        and all(not isinstance(d, int) or d == n for d, n in zip(h["shape"][1:], t.shape[1:]))
        for h, t in zip(held, inputs)
    )  # fmt: skip


def ensure_module_export(module, inputs, export_dir: Path, *, portable: bool, source: str,
                         overwrite: bool = False) -> dict:
    """Reuses ``export_dir`` when it holds this model's export (by ``source`` or by the module's
    class, the name export_onnx gives it) in this form, from these weights, for these inputs;
    else exports. Returns export.json."""
    if (export_dir / "export.json").is_file() and not overwrite:
        info = read_export_info(export_dir)
        if info.get("kind") != "module":
            raise MambaExportError(f"{export_dir} holds an export of the language model {info['source']}, not of "
                                   f"{source}; choose another directory or pass --overwrite")  # fmt: skip
        held = info["source"]
        why = (
            f"it is of {held}" if held not in (source, class_path(module))
            else f"it is {'' if info['portable'] else 'not '}portable" if info["portable"] != portable
            else f"it is {info['dtype']}, the module {module_dtype(module)} (convert the module to validate it)"
            if info.get("dtype", module_dtype(module)) != module_dtype(module)
            else "its inputs have other shapes or types" if not _takes(info["inputs"], inputs)
            else "it was made from other weights" if made_from_other_weights(info, module)
            else None
        )  # fmt: skip
        if why is None:
            console.info(f"Using the export in {export_dir}")
            return info
        raise MambaExportError(f"{export_dir} holds an export that does not fit {source}: {why}; choose another "
                               "directory or pass --overwrite")  # fmt: skip
    kind = "portable ONNX" if portable else "ONNX"
    with console.step(f"Exporting {source} to {kind} in {export_dir}"):
        export_module(module, inputs, export_dir, portable=portable, overwrite=overwrite, source=source)
    return read_export_info(export_dir)


def _session(export_dir: Path, backend: str, info: dict):
    path = export_dir / "model.onnx"
    if backend == "ort-portable":
        session = ort_session(path, custom_ops=False)
    else:
        cuda = ["CUDAExecutionProvider"] if backend == "ort-cuda" else []
        session = ort_session(path, providers=[*cuda, "CPUExecutionProvider"])
    check_graph_matches(export_dir, info, session.get_modelmeta().custom_metadata_map)
    return session


def engine_batch_range(example_batch: int, batch: int, max_batch: int | None = None) -> ShapeRange:
    """The trt engine's batch range: 1 .. ``max_batch`` (default: MAX_BATCH_FACTOR x the
    example's batch, at least ``batch``, the one run), tuned for the example's batch."""
    high = max(MAX_BATCH_FACTOR * example_batch, batch) if max_batch is None else max_batch
    if high < max(batch, 1):
        raise MambaExportError(f"--max-batch {high} is below the batch run ({batch})" if high >= 1
                               else f"--max-batch must be at least 1, got {high}")  # fmt: skip
    return ShapeRange(1, min(example_batch, high), high).check("batch")


def run_engine(plan: Path, info: dict, inputs) -> list[torch.Tensor]:
    """One run of a module's engine on CUDA, on torch's current stream; the outputs on the CPU."""
    from .tensorrt.engine import Engine

    engine = Engine(plan)
    stream = torch.cuda.current_stream(engine.device)
    outputs = engine.run({meta["name"]: t for meta, t in zip(info["inputs"], inputs)},
                         [meta["name"] for meta in info["outputs"]], stream.cuda_stream)  # fmt: skip
    stream.synchronize()
    return [t.cpu() for t in outputs]


def _run_session(session, info: dict, inputs) -> list[torch.Tensor]:
    feeds = {i["name"]: t.numpy() for i, t in zip(info["inputs"], inputs)}
    return [torch.from_numpy(a) for a in session.run([o["name"] for o in info["outputs"]], feeds)]


def random_inputs(inputs, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Normal noise of the inputs' shapes at ``batch``; non-floating inputs repeat the example's rows."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        shape = (batch, *t.shape[1:]) if t.dim() else ()
        if t.is_floating_point():
            out.append(torch.randn(shape, generator=g).to(t.dtype))
        else:
            out.append(t[torch.arange(batch) % t.shape[0]] if t.dim() else t)
    return tuple(out)


def _eager_float32(module, inputs, reference: str) -> list[torch.Tensor]:
    ref = copy.deepcopy(module).float().eval()
    args = tuple(t.float() if t.is_floating_point() else t for t in inputs)
    routing = route_scans(ref) if reference == "routed" else contextlib.nullcontext()
    with torch.no_grad(), routing:
        return [t for t in tree_leaves(ref(*args)) if isinstance(t, torch.Tensor)]


def validate_module(module: torch.nn.Module, example_inputs, export_dir=None, *, backend: str = "ort",
                    batch: int | None = None, max_batch: int | None = None, seed: int = 0,
                    reference: str = "routed", overwrite: bool = False, source: str | None = None,
                    json_path=None) -> ModuleValidationReport:
    """Exports ``module`` (unless ``export_dir`` holds its export) and compares ``backend`` with eager.

    ``batch``: the batch size run (default: the example's + 1 when the export's batch is
    dynamic, to exercise it). ``max_batch`` (trt only): the engine's largest batch (default:
    MAX_BATCH_FACTOR x the example's, at least ``batch``). ``reference``: "routed" (default)
    runs the eager module with its scans routed to mamba::selective_scan, which runs
    anywhere; "module" runs it as written. ``export_dir`` None: a temporary directory.
    """
    if backend not in MODULE_BACKENDS:
        raise MambaExportError(f"unknown backend '{backend}'; choose from {', '.join(MODULE_BACKENDS)}")
    if reference not in REFERENCES:
        raise MambaExportError(f"unknown reference '{reference}'; choose from {', '.join(REFERENCES)}")
    if max_batch is not None and backend != "trt":
        raise MambaExportError("--max-batch bounds the trt engine's batch; other backends take any batch")
    # The one availability check (each module backend has its device), before an export and a build are spent.
    require_backend(backend)
    inputs = as_input_tuple(example_inputs)
    # numpy, hence ORT's Python feeds, has no bfloat16; the trt backend binds torch tensors.
    if backend != "trt" and any(t.dtype == torch.bfloat16 for t in inputs):
        raise MambaExportError("bfloat16 inputs cannot be fed to ONNX Runtime from Python; validate in float16 "
                               "or float32, or with the trt backend")  # fmt: skip
    source = source or class_path(module)
    with contextlib.ExitStack() as stack:
        if export_dir is None:
            export_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mamba-export-"))
        export_dir = Path(export_dir)
        info = ensure_module_export(module, inputs, export_dir, portable=backend == "ort-portable", source=source,
                                    overwrite=overwrite)  # fmt: skip
        example_batch = inputs[0].shape[0] if inputs[0].dim() else 1
        if batch is None:
            batch = example_batch + 1 if info["dynamic_batch"] else example_batch
        if batch < 1:
            raise MambaExportError(f"batch must be at least 1, got {batch}")
        run_inputs = random_inputs(inputs, batch, seed)
        if backend == "trt":
            batch_range = engine_batch_range(example_batch, batch, max_batch)
            plan = ensure_engine(export_dir, overwrite, Profiles(batch=batch_range))
        with console.step(f"Running {backend} and eager PyTorch at batch {batch}"):
            session = None if backend == "trt" else _session(export_dir, backend, info)
            # Inputs the model cannot take (e.g. ids past an embedding) fail here, not in tracing.
            with errors_as_one_line(f"{backend} failed on the inputs"):
                got = run_engine(plan, info, run_inputs) if session is None else _run_session(session, info, run_inputs)
            with errors_as_one_line("the eager module failed on the inputs"):
                expected = _eager_float32(module, run_inputs, reference)
    if len(got) != len(expected):
        raise MambaExportError(f"the export has {len(got)} outputs, the eager module returns {len(expected)} tensors")
    # The loosest of the weights' and the activations' types: float32 weights run on float16
    # inputs compute in float16.
    types = {info["dtype"], *(t["dtype"] for t in info["inputs"] + info["outputs"])}
    tolerance = max((TOLERANCES[t][0] for t in types if t in TOLERANCES), default=TOLERANCES["float32"][0])
    outputs = []
    for meta, out, ref in zip(info["outputs"], got, expected):
        abs_err = _max_abs_diff(out, ref) if out.shape == ref.shape else float("inf")
        rel_err = abs_err / max(ref.abs().max().item() if ref.numel() else 0.0, 1e-12)
        outputs.append({"name": meta["name"], "shape": list(out.shape), "max_abs_err": abs_err,
                        "max_rel_err": rel_err, "passed": rel_err <= tolerance})  # fmt: skip
    report = ModuleValidationReport(
        backend=backend, model=source, dtype=info["dtype"], batch=batch, reference=reference, outputs=outputs,
        tolerance=tolerance, passed=all(o["passed"] for o in outputs),
    )  # fmt: skip
    if json_path:
        Path(json_path).write_text(report.to_json() + "\n")
    return report


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape such as 1,3,64,64, got '{text}'") from None
    if any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"dimensions must be at least 1, got '{text}'")
    return dims


INPUT_DTYPES = ("float32", "float16", "int64", "int32", "bool")


@dataclass(frozen=True)
class InputSpec:
    """How ``validate --entry`` draws one random input: normal noise for a floating type,
    integers uniform in [low, high) (ids below a vocabulary size, class labels ...), 0 or 1
    for bool."""

    dtype: torch.dtype
    low: int | None = None
    high: int | None = None

    def draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        if self.dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(self.dtype)
        if self.dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=generator).bool()
        return torch.randint(self.low, self.high, shape, generator=generator, dtype=self.dtype)


def _input_dtype(text: str) -> InputSpec:
    name, *bounds = text.split(":")
    if name not in INPUT_DTYPES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(INPUT_DTYPES)} (integers as TYPE:LOW:HIGH), "
                                         f"got '{text}'")  # fmt: skip
    dtype = getattr(torch, name)
    if dtype.is_floating_point or dtype == torch.bool:
        if bounds:
            raise argparse.ArgumentTypeError(f"a value range is for integer types; {name} inputs are "
                                             f"{'normal noise' if dtype.is_floating_point else '0 or 1'}")  # fmt: skip
        return InputSpec(dtype)
    # No default range: whatever the integers index (an embedding, a table), only the user knows its size.
    usage = f"{name}:LOW:HIGH with integers LOW < HIGH, values LOW <= v < HIGH (e.g. {name}:0:1000 for ids below 1000)"
    if not bounds:
        raise argparse.ArgumentTypeError(f"{name} needs a value range: {usage}")
    try:
        low, high = map(int, bounds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {usage}, got '{text}'") from None
    if low >= high:
        raise argparse.ArgumentTypeError(f"expected {usage}, got '{text}'")
    return InputSpec(dtype, low, high)


def example_inputs(shapes: list[tuple[int, ...]], specs: list[InputSpec], default: torch.dtype, seed: int):
    """The random example inputs of ``validate --entry``: ``specs`` one per shape, or one for
    every shape, or none (normal noise of type ``default``)."""
    if len(specs) not in (0, 1, len(shapes)):
        raise MambaExportError(f"give --input-dtype once (for every input) or once per --input-shape ({len(shapes)}), "
                               f"not {len(specs)} times")  # fmt: skip
    batches = sorted({shape[0] for shape in shapes})
    if len(batches) > 1:
        raise MambaExportError(f"--input-shape: dim 0 is the batch, the same for every input; got {batches}")
    specs = specs * len(shapes) if len(specs) == 1 else specs or [InputSpec(default)] * len(shapes)
    g = torch.Generator().manual_seed(seed)
    return tuple(spec.draw(shape, g) for shape, spec in zip(shapes, specs))


def add_module_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mamba-export validate --entry`` (any nn.Module; docs/custom-models.md)."""
    g = parser.add_argument_group("any PyTorch model (instead of MODEL; docs/custom-models.md)")
    g.add_argument("--entry", metavar="MODULE:FACTORY",
                   help="validate the nn.Module that FACTORY() returns, e.g. my_pkg.models:build_model")
    g.add_argument("--input-shape", metavar="D0,D1,...", type=_shape, action="append",
                   help="shape of one input of forward, repeated per input in order; dim 0 is the batch")
    g.add_argument("--input-dtype", metavar="TYPE[:LOW:HIGH]", type=_input_dtype, action="append", default=[],
                   help=f"type of the random input of the same position, repeated per input like --input-shape (once: "
                   f"every input): {', '.join(INPUT_DTYPES)}; floats are normal noise, integers uniform in [LOW, "
                   f"HIGH), required for them (int64:0:50277 for token ids), bool 0 or 1 (default: the float "
                   f"type of --dtype)")
    g.add_argument("--max-batch", type=int, metavar="N",
                   help=f"--backend trt: the engine's largest batch; its profile is 1 .. N, tuned for the example's "
                   f"batch (default: {MAX_BATCH_FACTOR} x the example's batch)")
    g.add_argument("--reference", choices=list(REFERENCES), default="routed",
                   help="; ".join(f"{k}: {v}" for k, v in REFERENCES.items()) + " (default: routed)")


def run_module_validate(args: argparse.Namespace) -> int:
    """``mamba-export validate --entry ...``: returns the exit status (1 when outside tolerance)."""
    from .entry_point import load_entry_point
    from .loading import resolve_dtype

    if args.model:
        raise MambaExportError("give MODEL or --entry, not both")
    if not args.input_shape:
        raise MambaExportError("--entry needs --input-shape for each input of forward (e.g. --input-shape 1,3,64,64)")
    if args.backend not in MODULE_BACKENDS:
        raise MambaExportError(f"--entry: --backend must be one of {', '.join(MODULE_BACKENDS)}")
    device = default_device(args.backend)  # each module backend has one device
    if args.device is not None and args.device != device:
        raise MambaExportError(f"--entry: --backend {args.backend} runs on {device}, not --device {args.device}")
    dtype = resolve_dtype(args.dtype) or torch.float32
    inputs = example_inputs(args.input_shape, args.input_dtype, dtype, args.seed)
    with console.step(f"Loading {args.entry}"):
        module = load_entry_point(args.entry).to(dtype)
    if args.onnx is None:
        console.info("Exporting to a temporary directory (pass --onnx DIR to keep the export)")
    report = validate_module(module, inputs, args.onnx, backend=args.backend, max_batch=args.max_batch,
                             seed=args.seed, reference=args.reference, overwrite=args.overwrite, source=args.entry,
                             json_path=args.json)  # fmt: skip
    print(report.table())
    return 0 if report.passed else 1
