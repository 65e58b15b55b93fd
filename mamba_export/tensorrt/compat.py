"""TensorRT's Python API, loaded on first use: the ``tensorrt`` package, or else TensorRT-RTX's
``tensorrt_rtx_bindings`` (the same builder, ONNX parser, runtime and IPluginV3 plugin API),
with a minimum version; and the plugin library loaded into its plugin registry."""

from __future__ import annotations

import ctypes
import functools
import importlib
import re
import sys

from .. import console
from ..errors import MambaExportError, MissingDependencyError
from ..native import tensorrt_plugin_library

# IPluginV3 plugins in dynamically loaded libraries (getCreators), the ONNX parser's
# fallback to IPluginV3 creators, strongly typed networks and IProgressMonitor: TensorRT 10.
# TensorRT-RTX: 1.7 is the release whose API this was written and checked against.
MINIMUM = {"tensorrt": (10, 0), "tensorrt_rtx_bindings": (1, 7)}
PRODUCT = {"tensorrt": "TensorRT", "tensorrt_rtx_bindings": "TensorRT-RTX"}
INSTALL_HINT = (
    "pip install 'tensorrt>=10' on a machine with an NVIDIA GPU, or TensorRT-RTX >= 1.7 "
    "(tensorrt-rtx-cu13-bindings + tensorrt-rtx-cu13-libs); see docs/tensorrt.md"
)

# The plugins' identities: the ONNX parser looks each up by the node's op type (docs/tensorrt.md),
# so a plugin is named after the scan op of its architecture's exports.
SCAN_OPS = {"mamba1": "SelectiveScan", "mamba2": "SSDScan"}
PLUGIN_VERSION, PLUGIN_NAMESPACE = "1", ""


def scan_op(export_info: dict) -> str:
    """The op type (and plugin name) of the scan nodes of an export, from its export.json."""
    architecture = export_info["config"].get("architecture")
    if architecture not in SCAN_OPS:
        raise MambaExportError(f"no TensorRT plugin for architecture {architecture!r}; known: {', '.join(SCAN_OPS)}")
    return SCAN_OPS[architecture]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _rtx_library_by_plain_name() -> bool:
    """Whether dlopen("libtensorrt_rtx.so") works (without it TensorRT-RTX aborts the process
    when its parser meets a plugin node)."""
    try:
        ctypes.CDLL("libtensorrt_rtx.so")
    except OSError:
        return False
    return True


@functools.cache
def import_tensorrt():
    """The TensorRT module to use; MissingDependencyError when none (new enough) imports."""
    problems = []
    for name, minimum in MINIMUM.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # installed, but a library it needs is not
                problems.append(f"{PRODUCT[name]} ({name}) cannot be imported: {e}")
            continue
        except (ImportError, OSError) as e:
            problems.append(f"{PRODUCT[name]} ({name}) cannot be imported: {e}")
            continue
        version = getattr(module, "__version__", "0")
        if _version(version) < minimum:
            problems.append(f"{PRODUCT[name]} {version} is too old (need {'.'.join(map(str, minimum))} or newer)")
            continue
        if name == "tensorrt_rtx_bindings" and not _rtx_library_by_plain_name():
            problems.append(
                "TensorRT-RTX's ONNX parser loads libtensorrt_rtx.so by that name when it imports a plugin node, "
                "and the tensorrt-rtx-cu13-libs wheel only has libtensorrt_rtx.so.1: put a link "
                "libtensorrt_rtx.so -> tensorrt_rtx_libs/libtensorrt_rtx.so.1 in a folder on LD_LIBRARY_PATH"
            )
            continue
        return module
    if not problems:
        raise MissingDependencyError(f"TensorRT is not installed: {INSTALL_HINT}")
    raise MissingDependencyError(f"{'; '.join(problems)}; see docs/tensorrt.md")


def describe(trt) -> dict:
    """Which TensorRT a plan was built with (recorded in the plan's sidecar)."""
    return {"module": trt.__name__, "product": PRODUCT.get(trt.__name__, trt.__name__), "version": trt.__version__}


_loaded_libraries: dict[str, object] = {}


def load_plugin(trt) -> str:
    """Loads libmamba_trt.so into TensorRT's plugin registry (once per process), checks that
    the creators of every scan op are registered, and returns the library's path.

    The builder, the ONNX parser and the runtime all use this process-wide registry."""
    path = tensorrt_plugin_library()
    registry = trt.get_plugin_registry()
    if path not in _loaded_libraries:
        handle = registry.load_library(path)
        if handle is None:
            raise MambaExportError(f"TensorRT could not load the plugin library {path} (see its messages above)")
        _loaded_libraries[path] = handle
    missing = [name for name in SCAN_OPS.values() if registry.get_creator(name, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None]
    if missing:
        raise MambaExportError(
            f"TensorRT loaded {path} but has no plugin creator {' or '.join(missing)} version {PLUGIN_VERSION}; "
            "rebuild the library with `make native`"
        )
    return path


_loggers: dict[str, object] = {}


def make_logger(trt, verbose: bool = False, quiet: bool = False):
    """TensorRT's logger, which prints warnings and errors (everything when ``verbose``, nothing
    when ``quiet``) on stderr and keeps the errors since this call, so that a failure can name them.

    TensorRT keeps the first logger a builder or runtime of the process was given and ignores
    later ones (with a warning), also for the plugins' messages; so there is one logger per
    TensorRT module, never freed, and each call hands it out afresh."""
    logger = _loggers.get(trt.__name__)
    if logger is None:

        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.verbose = self.quiet = False

            def log(self, severity, msg):
                level = int(severity)
                if level <= int(trt.ILogger.Severity.ERROR):
                    self.errors.append(msg)
                    if not self.quiet:
                        print(f"[TensorRT] error: {msg}", file=sys.stderr, flush=True)  # also with the CLI's --quiet
                elif not self.quiet and (level == int(trt.ILogger.Severity.WARNING) or self.verbose):
                    console.info(f"[TensorRT] {msg}")

            def explain(self) -> str:
                return f": {self.errors[-1]}" if self.errors else " (see TensorRT's messages above)"

        logger = _loggers[trt.__name__] = Logger()
    logger.verbose, logger.quiet = verbose, quiet
    logger.errors.clear()
    return logger


def compute_capability_target(trt, name: str):
    """A ``build_engine`` builder_config that makes TensorRT-RTX build for one named compute
    capability (``trt.ComputeCapability.<name>``, e.g. SM89) instead of the GPU it finds."""
    capability = getattr(trt.ComputeCapability, name)

    def configure(config):
        config.num_compute_capabilities = 1
        config.set_compute_capability(capability, 0)

    return configure


def _gpu() -> tuple[str, int | None]:
    """(a description of the current CUDA device, its index), or why there is none."""
    import torch  # not at import: only the probes need it

    if not torch.cuda.is_available():
        return "no CUDA device visible to PyTorch", None
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()}, compute capability {major}.{minor}", torch.cuda.current_device()


@functools.cache
def _probe(trt, device: int | None) -> tuple[str | None, str | None]:
    """Builds a one-layer engine with the builder's defaults (for the current GPU) and loads it:
    (TensorRT's errors of the build, of the loading), None for a step that worked.

    TensorRT-RTX, for one, builds engines for any GPU but its runtime refuses to load them on
    GPUs it does not support (1.7 on the H100: the build works, deserialisation fails); a
    trivial engine tells cheaply which case this is. ``device`` only keys the cache."""
    logger = make_logger(trt, quiet=True)  # the failures are the answer, not news for stderr
    try:
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        x = network.add_input("x", trt.float32, (1,))
        network.mark_output(network.add_identity(x).get_output(0))
        plan = builder.build_serialized_network(network, builder.create_builder_config())
        if plan is None:
            return " | ".join(logger.errors) or "no message", None
        runtime = trt.Runtime(logger)  # must outlive the engine
        engine = runtime.deserialize_cuda_engine(bytes(plan))
        if engine is None or engine.create_execution_context() is None:
            return None, " | ".join(logger.errors) or "no message"
        return None, None
    finally:
        logger.quiet = False


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_unavailable(trt) -> str | None:
    """Why ``trt`` cannot build engines here with its default settings (for the current GPU, or
    none), in one line; None when it can."""
    gpu, device = _gpu()
    error = _probe(trt, device)[0]
    if error is None:
        return None
    return _one_line(f"{PRODUCT.get(trt.__name__, trt.__name__)} {trt.__version__} cannot build engines "
                     f"for this machine ({gpu}): {error}")  # fmt: skip


def run_unavailable(trt) -> str | None:
    """Why ``trt`` cannot run engines on the current GPU, in one line; None when it can."""
    gpu, device = _gpu()
    if device is None:
        return gpu
    build, load = _probe(trt, device)
    if build is None and load is None:
        return None
    why = f"building one failed: {build}" if build is not None else load
    return _one_line(f"{PRODUCT.get(trt.__name__, trt.__name__)} {trt.__version__} cannot run engines "
                     f"on this GPU ({gpu}): {why}")  # fmt: skip
