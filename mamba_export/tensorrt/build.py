"""Building a TensorRT engine from an ONNX export, with the scan plugin (SelectiveScan for
Mamba-1, SSDScan for Mamba-2) inside; also from the export of any module that calls the
selective scan (docs/custom-models.md).

The network is strongly typed: every tensor keeps the type the ONNX graph gives it, so the
precision is the export's (export in float16 / bfloat16 for a half-precision engine). Next
to PLAN goes PLAN.json: the export's export.json, the profiles and the TensorRT version, from
which the runtime learns the state layout and which profile serves which call.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from .. import console, jsonio
from ..errors import MambaExportError
from ..loading import resolve_dtype
from .compat import (
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    SCAN_OPS,
    describe,
    import_tensorrt,
    load_plugin,
    make_logger,
    scan_op,
)
from .profiles import Profiles


def sidecar_path(plan_path: str | os.PathLike) -> Path:
    plan = Path(plan_path)
    return plan.with_name(plan.name + ".json")


def read_engine_info(plan_path: str | os.PathLike) -> dict:
    """The sidecar build_engine wrote next to a plan."""
    path = sidecar_path(plan_path)
    if not Path(plan_path).is_file():
        raise MambaExportError(f"{plan_path}: no such engine file")
    if not path.is_file():
        raise MambaExportError(f"{plan_path} has no {path.name} beside it; build engines with `mamba-export build-engine`")
    return jsonio.loads(path.read_text())


def onnx_input(model_or_onnx: str | os.PathLike | None) -> Path | None:
    """model.onnx when the argument names an export (its directory or an .onnx file), else
    None (a checkpoint directory or hub id)."""
    if model_or_onnx is None:
        return None
    path = Path(model_or_onnx).expanduser()
    if path.is_dir():
        return path / "model.onnx" if (path / "model.onnx").is_file() else None
    if path.suffix == ".onnx":
        if not path.is_file():
            raise MambaExportError(f"{path}: no such file")
        return path
    return None


def check_plan_path(plan_path: str | os.PathLike, overwrite: bool) -> None:
    """Refuses a directory, and to replace an engine (or its sidecar) unless ``overwrite``."""
    if Path(plan_path).is_dir():  # first: --overwrite cannot make it a file
        raise MambaExportError(f"{plan_path} is a directory; give the engine's file name, e.g. model.plan")
    for path in (Path(plan_path), sidecar_path(plan_path)):
        if path.exists() and not overwrite:
            raise MambaExportError(f"{path} already exists; pass --overwrite to replace it")


def require_tensorrt():
    """The TensorRT module with the plugin loaded; raises MissingDependencyError otherwise."""
    trt = import_tensorrt()
    load_plugin(trt)
    return trt


def scan_nodes(info: dict) -> tuple[str, int]:
    """(op type, count) of an export's scan nodes, from its export.json: one per layer of a
    language model (docs/export.md), one SelectiveScan per scan call of a module."""
    if info.get("kind") == "module":
        return SCAN_OPS["mamba1"], info["selective_scans"]
    return scan_op(info), info["config"]["n_layer"]


def _checked_export(onnx_path: Path, dtype) -> dict:
    import onnx  # not at import

    from ..export.onnx_export import check_graph_matches, read_export_info

    info = read_export_info(onnx_path.parent)
    if info.get("portable"):
        raise MambaExportError(
            f"{onnx_path} is a portable export (the scan as a Scan loop); export without --portable so that "
            f"each scan is one mamba.{scan_nodes(info)[0]} node for the plugin"
        )
    want = resolve_dtype(dtype)
    if want is not None and str(want).removeprefix("torch.") != info["dtype"]:
        wanted = str(want).removeprefix("torch.")
        raise MambaExportError(
            f"{onnx_path} was exported in {info['dtype']}, not {wanted}: the engine's precision is the export's; "
            f"export in {wanted} (mamba-export export MODEL --dtype {dtype}) or give the checkpoint instead"
        )
    proto = onnx.load(str(onnx_path), load_external_data=False)  # (weights over 1 GiB stay in their file)
    check_graph_matches(onnx_path.parent, info, {p.key: p.value for p in proto.metadata_props})
    return info


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(f.name, 0o666 & ~umask)  # a plain new file's mode, not the temporary file's 0600
    os.replace(f.name, path)


def parse_network(trt, logger, onnx_path: Path, scans: int, op: str):
    """(builder, network, parser, plugin layers): the ONNX file parsed into a strongly typed
    network, checking that each of the ``scans`` mamba.``op`` nodes became a plugin layer.
    The parser owns the network's weights: keep it alive until the engine is built."""
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            name = error.node_name() if hasattr(error, "node_name") else ""  # TensorRT >= 10 has names
            where = f"node '{name}' ({error.node_operator()})" if name else f"node #{error.node()}"
            problems.append(f"{where if error.node() >= 0 else 'the model'}: {error.desc()}")
        # The plugin's own explanation (logged through TensorRT's logger) says more than the parser's.
        problems += [message for message in getattr(logger, "errors", []) if message.startswith(f"mamba.{op} ")]
        raise MambaExportError(f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(problems or ["no details"]))
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugin_layers = [layer for layer in layers if layer.type == trt.LayerType.PLUGIN_V3]
    if len(plugin_layers) != scans:
        raise MambaExportError(f"the parsed network has {len(plugin_layers)} plugin layers for {scans} mamba.{op} nodes")
    return builder, network, parser, plugin_layers


def _progress_monitor(trt, log):
    """TensorRT's build phases as log lines (top level and one below), if it can report them."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self.depth, self.started = {}, {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
            self.depth[phase_name], self.started[phase_name] = depth, time.perf_counter()
            if depth <= 1:
                log(f"  {'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            if self.depth.pop(phase_name, 1) == 0:
                log(f"  {phase_name} done ({time.perf_counter() - self.started.pop(phase_name):.1f} s)")

    return Monitor()


def _timing_cache(trt, config, path: Path | None, log):
    if path is None:
        return None
    if trt.__name__.startswith("tensorrt_rtx"):
        log(f"  TensorRT-RTX has no timing cache (its builder does not time kernels); {path} is not used")
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log(f"  {path} was made by another TensorRT or GPU; starting a new timing cache")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    elif data:
        log(f"  Using the timing cache {path}")
    return cache


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    *,
    profiles: Profiles | None = None,
    dtype=None,
    timing_cache: str | os.PathLike | None = None,
    workspace: int | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    builder_config: Callable[[object], None] | None = None,
    log: Callable[[str], None] = console.info,
) -> Path:
    """Builds ``plan_path`` from an export's model.onnx (or its directory); returns its path.

    profiles: batch and prefill-sequence ranges (default: batch 1..8, sequence 1..2048 at
    128); a module export's engine has one profile over the batch range (the sequence range
    must be the default). dtype: if given ('fp16', ...), the export must be in it (precision
    comes from the ONNX types). timing_cache: a file read if it exists and written back. workspace: the
    limit of TensorRT's scratch memory in bytes. builder_config: called with TensorRT's
    IBuilderConfig before the build, for further settings (e.g. TensorRT-RTX's target compute
    capabilities). Existing files are kept unless ``overwrite``.
    """
    profiles = profiles or Profiles()
    onnx_path = Path(onnx_path)
    if onnx_path.is_dir():
        onnx_path = onnx_path / "model.onnx"
    if not onnx_path.is_file():
        raise MambaExportError(f"{onnx_path}: no such file")
    info = _checked_export(onnx_path, dtype)
    shapes = profiles.for_export(info)
    plan_path = Path(plan_path)
    check_plan_path(plan_path, overwrite)
    if workspace is not None and workspace < 1:
        raise MambaExportError(f"workspace must be positive, got {workspace}")
    timing_cache = Path(timing_cache) if timing_cache is not None else None

    trt = import_tensorrt()
    library = load_plugin(trt)
    logger = make_logger(trt, verbose)
    started = time.perf_counter()
    log(f"Parsing {onnx_path} ({describe(trt)['product']} {trt.__version__}, plugin {library})")
    op, scans = scan_nodes(info)
    builder, network, parser, _ = parse_network(trt, logger, onnx_path, scans, op)

    config = builder.create_builder_config()
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    monitor = _progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    cache = _timing_cache(trt, config, timing_cache, log)
    recorded = {}
    for kind, (record, shapes_of) in shapes.items():
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            profile.set_shape(tensor.name, *shapes_of(tensor.name, tuple(tensor.shape)))
        index = config.add_optimization_profile(profile)
        if index < 0:
            raise MambaExportError(f"TensorRT refused the {kind} optimisation profile{logger.explain()}")
        recorded[kind] = {"index": index, **record}

    if builder_config is not None:
        builder_config(config)
    log(f"Building the engine for {plan_path} (this can take minutes)")
    serialized = builder.build_serialized_network(network, config)
    del parser  # held until here: it owns the weights the build reads
    if serialized is None:
        raise MambaExportError(f"TensorRT could not build the engine{logger.explain()}")
    if cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))

    check_plan_path(plan_path, overwrite)  # nothing appeared there while building
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(plan_path, bytes(serialized))
    sidecar = {
        "plan": plan_path.name,
        "onnx": str(onnx_path.resolve()),
        "export": info,
        "profiles": recorded,
        "tensorrt": describe(trt),
        "plugin": {"name": op, "version": PLUGIN_VERSION, "namespace": PLUGIN_NAMESPACE},
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    _write_atomically(sidecar_path(plan_path), (jsonio.dumps(sidecar, indent=2) + "\n").encode())
    log(f"Wrote {plan_path} ({plan_path.stat().st_size / 2**20:.1f} MiB) in {sidecar['build_seconds']} s")
    return plan_path
