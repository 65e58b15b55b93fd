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

# The plugin's identity: the ONNX parser looks it up by the node's op type (docs/tensorrt.md).
PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = "SelectiveScan", "1", ""


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
    the SelectiveScan creator is registered, and returns the library's path.

    The builder, the ONNX parser and the runtime all use this process-wide registry."""
    path = tensorrt_plugin_library()
    registry = trt.get_plugin_registry()
    if path not in _loaded_libraries:
        handle = registry.load_library(path)
        if handle is None:
            raise MambaExportError(f"TensorRT could not load the plugin library {path} (see its messages above)")
        _loaded_libraries[path] = handle
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise MambaExportError(
            f"TensorRT loaded {path} but has no plugin creator {PLUGIN_NAME} version {PLUGIN_VERSION}; "
            "rebuild the library with `make native`"
        )
    return path


def make_logger(trt, verbose: bool = False):
    """A TensorRT logger that prints warnings and errors (everything when ``verbose``) on
    stderr and keeps the errors, so that a failure can name them."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                print(f"[TensorRT] error: {msg}", file=sys.stderr, flush=True)  # also when --quiet
            elif level == int(trt.ILogger.Severity.WARNING) or verbose:
                console.info(f"[TensorRT] {msg}")

        def explain(self) -> str:
            return f": {self.errors[-1]}" if self.errors else " (see TensorRT's messages above)"

    return Logger()
