"""TensorRT engines (docs/tensorrt.md).

Runs everywhere: build-engine's argument and input checks, the trt backend's availability
reasons, one-line CLI errors. With TensorRT's public headers in third_party/TensorRT/include
(and nvcc): the plugin library is built against them and its creator and build-time methods
are driven through TensorRT's interfaces by tests/native/trt_plugin_probe.cpp, without
TensorRT. Where TensorRT or TensorRT-RTX imports (not in CI): real parses; builds where its
builder builds for this machine (and, with TensorRT-RTX, for an explicit target anywhere); where
the runtime also runs engines on this GPU (a probe engine says): the trt backend and generate
against eager PyTorch. Every skip says which of these is missing.
"""

import copy
import ctypes
import itertools
import json
import math
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from onnx import helper
from onnx.defs import OpSchema

import mamba_export
from mamba_export.backends.factory import backend_unavailable, open_backend
from mamba_export.backends.torch_backend import TorchBackend
from mamba_export.backends.trt_backend import TrtBackend
from mamba_export.cli import main
from mamba_export.errors import MambaExportError, MissingDependencyError
from mamba_export.export.onnx_export import export_onnx
from mamba_export.export.schemas import _selective_scan, _ssd_scan
from mamba_export.models import Mamba1Config, Mamba2Config, build_model
from mamba_export.ops.cuda import SsdParams
from mamba_export.tensorrt import DEFAULT_BATCH, DEFAULT_SEQUENCE, Profiles, ShapeRange, build_engine, import_tensorrt
from mamba_export.tensorrt import load_plugin
from mamba_export.tensorrt import build_unavailable, compat, onnx_input, read_engine_info, run_unavailable
from mamba_export.tensorrt.build import parse_network, sidecar_path
from mamba_export.tensorrt.compat import compute_capability_target, make_logger, scan_op
from mamba_export.validate import TOLERANCES, compare

ROOT = Path(__file__).resolve().parents[1]
HEADERS = ROOT / "third_party" / "TensorRT" / "include"
SHIPPED = {"mamba1": ROOT / "models" / "mamba1-pystdlib", "mamba2": ROOT / "models" / "mamba2-pystdlib"}
CONFIGS = {
    "mamba1": Mamba1Config(d_model=32, n_layer=2, vocab_size=61, d_state=4, d_conv=4, expand=2),
    # A binding time-step clamp, so that the float attributes reach the plugin with other values than the defaults.
    "mamba2": Mamba2Config(d_model=32, n_layer=2, vocab_size=61, d_state=8, headdim=8, ngroups=2, dt_limit=(0.05, 0.5)),
}
CONFIG = CONFIGS["mamba1"]
SMALL = Profiles(batch=ShapeRange(1, 2, 4), sequence=ShapeRange(1, 8, 32))


def tensorrt_or_none():
    try:
        return import_tensorrt()
    except MissingDependencyError:
        return None


def random_model(seed=0, architecture="mamba1"):
    torch.manual_seed(seed)
    return build_model(CONFIGS[architecture]).eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """export(architecture): the float32 export of its small random model, made once."""
    made = {}

    def export(architecture):
        if architecture not in made:
            model = random_model(architecture=architecture)
            made[architecture] = export_onnx(model, tmp_path_factory.mktemp(architecture) / "fp32").parent
        return made[architecture]

    return export


@pytest.fixture(scope="module")
def export_dir(exports):
    return exports("mamba1")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------
# Profiles and build-engine's checks (no TensorRT needed)


@pytest.mark.parametrize("bounds", [(0, 1, 4), (2, 1, 4), (1, 5, 4), (3, 3, 2), (-1, 1, 1)])
def test_shape_range_rejects_bad_bounds(bounds):
    with pytest.raises(MambaExportError, match=r"batch range: need 1 <= min <= opt <= max, got min=.*"):
        ShapeRange(*bounds).check("batch")


def test_shape_range_of_fills_only_what_was_not_given():
    assert ShapeRange.of("sequence", None, None, 64, DEFAULT_SEQUENCE) == ShapeRange(1, 64, 64)
    assert ShapeRange.of("sequence", 256, None, None, DEFAULT_SEQUENCE) == ShapeRange(256, 256, 2048)
    assert ShapeRange.of("sequence", None, 7, None, DEFAULT_SEQUENCE) == ShapeRange(1, 7, 2048)
    with pytest.raises(MambaExportError, match="opt=128, max=64"):  # a given opt is never adjusted
        ShapeRange.of("sequence", None, 128, 64, DEFAULT_SEQUENCE)
    # A bound below 1 is named as given, not after a default opt was clamped to it (opt=0).
    with pytest.raises(MambaExportError, match="^batch range: max must be at least 1, got 0$"):
        ShapeRange.of("batch", None, None, 0, DEFAULT_BATCH)


def test_profiles_are_prefill_then_decode():
    ranges = Profiles(batch=ShapeRange(1, 2, 8), sequence=ShapeRange(4, 16, 64)).ranges()
    assert list(ranges) == ["prefill", "decode"]
    assert ranges["prefill"] == (ShapeRange(1, 2, 8), ShapeRange(4, 16, 64))
    assert ranges["decode"] == (ShapeRange(1, 2, 8), ShapeRange(1, 1, 1))


@pytest.mark.parametrize("flags, message", [
    (["--min-batch", "4", "--max-batch", "2"], "batch range: need 1 <= min"),
    (["--opt-seq", "0"], "sequence range: opt must be at least 1, got 0"),
    (["--max-batch", "0"], "batch range: max must be at least 1, got 0"),
    (["--min-seq", "9", "--opt-seq", "8"], "sequence range: need 1 <= min"),
    (["--max-seq", "16", "--opt-seq", "32"], "sequence range: need 1 <= min"),
])  # fmt: skip
def test_cli_rejects_bad_profiles(capsys, tmp_path, flags, message):
    code, out, err = run_cli(capsys, "build-engine", str(tmp_path / "any"), "-o", str(tmp_path / "m.plan"), *flags)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"mamba-export build-engine: error: {message}")


def test_cli_rejects_zero_workspace(capsys, export_dir, tmp_path):
    code, _, err = run_cli(capsys, "build-engine", str(export_dir), "-o", str(tmp_path / "m.plan"), "--workspace", "0")
    assert code == 2 and "--workspace must be at least 1" in err


def test_onnx_input_names_exports_only(export_dir, tmp_path):
    assert onnx_input(export_dir) == export_dir / "model.onnx"
    assert onnx_input(export_dir / "model.onnx") == export_dir / "model.onnx"
    assert onnx_input(tmp_path) is None  # a directory without model.onnx: a checkpoint
    assert onnx_input("state-spaces/mamba-130m-hf") is None  # a hub id
    with pytest.raises(MambaExportError, match="no such file"):
        onnx_input(tmp_path / "missing.onnx")


def test_precision_flag_must_match_the_export(capsys, export_dir, tmp_path):
    code, _, err = run_cli(capsys, "build-engine", str(export_dir), "-o", str(tmp_path / "m.plan"), "--fp16")
    assert code == 2 and err.count("\n") == 1
    assert "exported in float32, not float16" in err and not (tmp_path / "m.plan").exists()


def test_a_graph_from_another_export_is_refused(exports, tmp_path):
    swapped = Path(shutil.copytree(exports("mamba1"), tmp_path / "swapped"))
    shutil.copy(exports("mamba2") / "model.onnx", swapped / "model.onnx")
    with pytest.raises(MambaExportError, match="is not the graph that export.json describes"):
        build_engine(swapped, tmp_path / "m.plan")
    assert not (tmp_path / "m.plan").exists()


@pytest.mark.parametrize("architecture, op", [("mamba1", "SelectiveScan"), ("mamba2", "SSDScan")])
def test_portable_export_is_refused(exports, tmp_path, architecture, op):
    portable = Path(shutil.copytree(exports(architecture), tmp_path / "portable"))
    info = json.loads((portable / "export.json").read_text())
    (portable / "export.json").write_text(json.dumps({**info, "portable": True}))
    with pytest.raises(MambaExportError, match=f"portable export .* each scan is one mamba.{op} node for the plugin"):
        build_engine(portable, tmp_path / "m.plan")


def test_scan_op_of_each_architecture(exports):
    assert scan_op(json.loads((exports("mamba1") / "export.json").read_text())) == "SelectiveScan"
    assert scan_op(json.loads((exports("mamba2") / "export.json").read_text())) == "SSDScan"
    with pytest.raises(MambaExportError, match="no TensorRT plugin for architecture 'mamba3'; known: mamba1, mamba2"):
        scan_op({"config": {"architecture": "mamba3"}})


def test_load_plugin_names_a_missing_creator(monkeypatch, tmp_path):
    """An outdated library (one creator only) is named as such, before any export is parsed."""
    library = tmp_path / "libmamba_trt.so"
    library.write_bytes(b"")
    monkeypatch.setenv("MAMBA_EXPORT_TRT_PLUGIN", str(library))

    class Registry:
        def load_library(self, path):
            return object()

        def get_creator(self, name, version, namespace):
            return object() if (name, version, namespace) == ("SelectiveScan", "1", "") else None

    class FakeTensorRT:
        def get_plugin_registry(self):
            return Registry()

    with pytest.raises(MambaExportError, match="has no plugin creator SSDScan version 1; rebuild the library"):
        load_plugin(FakeTensorRT())


def test_existing_plan_is_kept(capsys, export_dir, tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"an engine the user had")
    code, _, err = run_cli(capsys, "build-engine", str(export_dir), "-o", str(plan))
    assert code == 2 and err == f"mamba-export build-engine: error: {plan} already exists; pass --overwrite to " \
        "replace it\n"  # fmt: skip
    assert plan.read_bytes() == b"an engine the user had"


def test_a_directory_as_the_plan_is_named_as_such(capsys, export_dir, tmp_path):
    """--overwrite cannot turn a directory into an engine file, so it is not suggested."""
    code, _, err = run_cli(capsys, "build-engine", str(export_dir), "-o", str(tmp_path))
    assert code == 2 and err == f"mamba-export build-engine: error: {tmp_path} is a directory; give the engine's " \
        "file name, e.g. model.plan\n"  # fmt: skip


@pytest.mark.skipif(tensorrt_or_none() is not None, reason="TensorRT (or TensorRT-RTX) imports here")
def test_cli_says_tensorrt_is_missing_in_one_line(capsys, export_dir, tmp_path):
    code, out, err = run_cli(capsys, "build-engine", str(export_dir), "-o", str(tmp_path / "m.plan"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mamba-export build-engine: error: TensorRT is not installed")
    assert not (tmp_path / "m.plan").exists()


@pytest.mark.skipif(tensorrt_or_none() is not None, reason="TensorRT (or TensorRT-RTX) imports here")
@pytest.mark.parametrize("command", [["validate"], ["generate", "--prompt", "x"]])
def test_a_trt_backend_that_cannot_run_fails_before_loading(capsys, command):
    """Without -q: the one line is the error, before the model is loaded or exported."""
    from mamba_export.cli import DEFAULT_MODEL

    code, _, err = run_cli(capsys, command[0], str(DEFAULT_MODEL), "--backend", "trt", *command[1:])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"mamba-export {command[0]}: error: backend trt: TensorRT is not installed")


# ---------------------------------------------------------------------------------------
# The trt backend's availability


def test_trt_backend_runs_on_cuda_only():
    assert backend_unavailable("trt", "cpu") == "trt runs on CUDA; use --device cuda"


@pytest.mark.skipif(tensorrt_or_none() is not None, reason="TensorRT (or TensorRT-RTX) imports here")
def test_trt_backend_unavailable_without_tensorrt():
    assert backend_unavailable("trt").startswith("TensorRT is not installed")


@pytest.fixture
def fresh_import(monkeypatch):
    """fake({module name: module}) answers import_tensorrt()'s imports (a name not given: not
    installed); its cache is emptied before and after, so that other tests see the real TensorRT."""
    real = compat.importlib.import_module

    def fake(answers):
        def import_module(name, *args):
            if name not in compat.MINIMUM:
                return real(name, *args)
            if answers.get(name) is None:
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
            return answers[name]

        monkeypatch.setattr(compat.importlib, "import_module", import_module)

    import_tensorrt.cache_clear()
    yield fake
    import_tensorrt.cache_clear()


@pytest.mark.parametrize("module, version, message", [
    ("tensorrt", "8.6.1", "TensorRT 8.6.1 is too old (need 10.0 or newer); see docs/tensorrt.md"),
    ("tensorrt_rtx_bindings", "1.6.0.20", "TensorRT-RTX 1.6.0.20 is too old (need 1.7 or newer); see docs/tensorrt.md"),
])  # fmt: skip
def test_too_old_tensorrt_is_refused_in_one_line(fresh_import, capsys, export_dir, tmp_path, module, version, message):
    fresh_import({module: SimpleNamespace(__name__=module, __version__=version)})
    with pytest.raises(MissingDependencyError) as error:
        import_tensorrt()
    assert str(error.value) == message
    code, out, err = run_cli(capsys, "build-engine", str(export_dir), "-o", str(tmp_path / "m.plan"))
    assert (code, out, err) == (2, "", f"mamba-export build-engine: error: {message}\n")
    assert backend_unavailable("trt") == message and not (tmp_path / "m.plan").exists()


def test_new_enough_tensorrt_is_taken_before_tensorrt_rtx(fresh_import):
    tensorrt = SimpleNamespace(__name__="tensorrt", __version__="10.0.1")
    fresh_import({"tensorrt": tensorrt, "tensorrt_rtx_bindings": SimpleNamespace(__version__="1.7.1")})
    assert import_tensorrt() is tensorrt


@pytest.fixture
def gpu(monkeypatch):
    """An H100 as PyTorch would describe it; the probe engine's results set by the test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (9, 0))
    return lambda build, load: monkeypatch.setattr(compat, "_probe", lambda trt, device: (build, load))


RTX = SimpleNamespace(__name__="tensorrt_rtx_bindings", __version__="1.7.1.116")
H100 = "NVIDIA H100 80GB HBM3, compute capability 9.0"


def test_trt_backend_unavailable_where_the_runtime_refuses_the_gpu(gpu, monkeypatch, tmp_path):
    """What bench lists as the reason for skipping trt and the CLI prints: one line naming
    TensorRT, the GPU and TensorRT's own message."""
    monkeypatch.setattr("mamba_export.tensorrt.import_tensorrt", lambda: RTX)
    plugin = tmp_path / "libmamba_trt.so"
    plugin.write_bytes(b"")
    monkeypatch.setenv("MAMBA_EXPORT_TRT_PLUGIN", str(plugin))
    # What TensorRT-RTX 1.7 said on the H100 (docs/tensorrt.md): the build works, loading does not.
    refused = ("IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The engine cannot run on\nthis GPU. "
               "Supported compute capabilities: 8.0 8.6 8.9 12.0 12.1)")
    gpu(None, refused)
    assert backend_unavailable("trt") == f"TensorRT-RTX 1.7.1.116 cannot run engines on this GPU ({H100}): " \
        "IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The engine cannot run on this GPU. " \
        "Supported compute capabilities: 8.0 8.6 8.9 12.0 12.1)"  # fmt: skip
    gpu("Unsupported SM.", None)  # a GPU it cannot even build for: the build's error comes first
    assert backend_unavailable("trt") == f"TensorRT-RTX 1.7.1.116 cannot run engines on this GPU ({H100}): " \
        "building one failed: Unsupported SM."  # fmt: skip
    assert build_unavailable(RTX) == f"TensorRT-RTX 1.7.1.116 cannot build engines for this machine ({H100}): " \
        "Unsupported SM."  # fmt: skip
    gpu(None, None)
    assert backend_unavailable("trt") is None and build_unavailable(RTX) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
def test_trt_backend_unavailable_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr("mamba_export.tensorrt.import_tensorrt", lambda: "a TensorRT module")
    monkeypatch.setenv("MAMBA_EXPORT_TRT_PLUGIN", str(tmp_path / "missing.so"))
    assert "MAMBA_EXPORT_TRT_PLUGIN" in backend_unavailable("trt")  # the plugin library is checked
    plugin = tmp_path / "libmamba_trt.so"
    plugin.write_bytes(b"")
    monkeypatch.setenv("MAMBA_EXPORT_TRT_PLUGIN", str(plugin))
    assert backend_unavailable("trt") == "no CUDA device visible to PyTorch"


# ---------------------------------------------------------------------------------------
# The plugin library against TensorRT's public headers, driven without TensorRT


def _tool(name):
    return shutil.which(name) or pytest.skip(f"{name} is not installed")


@pytest.fixture(scope="session")
def plugin_build():
    """libmamba_trt.so (next to libmamba_kernels.so) built from plugins/ against the headers."""
    if not (HEADERS / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT's headers are not in {HEADERS} (see docs/tensorrt.md, 'Building the plugin')")
    _tool("nvcc"), _tool("cmake")
    build = ROOT / "build" / "tensorrt-test"
    configure = ["cmake", "-S", str(ROOT / "plugins"), "-B", str(build), "-DMAMBA_EXPORT_CUDA=ON",
                 "-DMAMBA_EXPORT_ORT=OFF", f"-DTENSORRT_INCLUDE_DIR={HEADERS}"]  # fmt: skip
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    for command in (configure, ["cmake", "--build", str(build), "-j2", "--target", "mamba_trt"]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    libs = build / "lib"
    libs.mkdir(exist_ok=True)
    for built in (build / "tensorrt" / "libmamba_trt.so", build / "kernels" / "cuda" / "libmamba_kernels.so"):
        shutil.copy2(built, libs / built.name)
    return libs / "libmamba_trt.so"


def cuda_include() -> Path:
    """The CUDA headers CMake found for the plugin build (TensorRT's headers include them)."""
    cache = (ROOT / "build" / "tensorrt-test" / "CMakeCache.txt").read_text()
    bin_dir = next(line.split("=", 1)[1] for line in cache.splitlines() if line.startswith("CUDAToolkit_BIN_DIR:"))
    return Path(bin_dir).parent / "include"


def test_plugin_library_exports_the_entry_points_and_needs_no_libnvinfer(plugin_build):
    symbols = subprocess.run([_tool("nm"), "-D", "--defined-only", str(plugin_build)], capture_output=True, text=True)
    assert sorted(line.split()[-1] for line in symbols.stdout.splitlines()) == ["getCreators", "setLoggerFinder"]
    dynamic = subprocess.run([_tool("readelf"), "-d", str(plugin_build)], capture_output=True, text=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert "libmamba_kernels.so" in needed
    assert not [n for n in needed if "nvinfer" in n or "tensorrt" in n or "cudart" in n], needed
    assert "[$ORIGIN]" in dynamic  # finds libmamba_kernels.so beside itself in mamba_export/_lib


# Types and formats as TensorRT numbers them (NvInferRuntimeBase.h, NvInferRuntime.h, NvInferPluginBase.h).
F32, F16, I8, I32, BF16 = 0, 1, 2, 3, 7
LINEAR, CHW2 = 0, 1
KFLOAT32, KFLOAT64, KINT32, KINT64 = 1, 2, 5, 10
B, L = -1, -2  # run-time dimensions (batch, sequence) by their ids in the probe


@dataclass(frozen=True)
class Op:
    """A scan op of docs/ops.md as these tests read it: its ONNX schema, its inputs in the
    contract's order (name, shape symbols, of type T) and the sizes the tests give its symbols."""

    name: str
    schema: OpSchema
    softplus: str  # the name of its softplus flag
    inputs: tuple  # the five required ones, then the optional ones, each present iff has_<name>
    final_state: str
    sizes: dict

    @property
    def flags(self) -> list[str]:
        return [f"has_{name}" for name, _, _ in self.inputs[5:]]

    def defaults(self) -> dict:
        """The ONNX defaults: 0 for the ints, the schema's for the floats."""
        return {name: helper.get_attribute_value(a.default_value) if a.type == OpSchema.AttrType.FLOAT else 0
                for name, a in self.schema.attributes.items()}  # fmt: skip

    def present(self, attributes: dict) -> list[tuple]:
        return list(self.inputs[:5]) + [spec for flag, spec in zip(self.flags, self.inputs[5:]) if attributes.get(flag)]

    def shapes(self, attributes: dict, **sizes) -> list[list[int]]:
        """Shapes of the packed inputs for these attributes; B and L stay run-time dimensions unless given."""
        size = {"b": B, "L": L, **self.sizes, **sizes}
        return [[size[s] for s in symbols] for _, symbols, _ in self.present(attributes)]

    def types(self, attributes: dict, t: int) -> list[int]:
        return [t if activation else F32 for _, _, activation in self.present(attributes)]

    def all_inputs(self) -> dict:
        return {**dict.fromkeys(self.flags, 1), self.softplus: 1}


SELECTIVE_SCAN = Op(
    "SelectiveScan", _selective_scan(), "delta_softplus",
    (("u", "bdL", True), ("delta", "bdL", True), ("A", "dN", False), ("B", "bGNL", True), ("C", "bGNL", True),
     ("D", "d", False), ("z", "bdL", True), ("delta_bias", "d", False), ("initial_state", "bdN", False)),
    "bdN", {"d": 64, "N": 16, "G": 2},
)  # fmt: skip
SSD_SCAN = Op(
    "SSDScan", _ssd_scan(), "dt_softplus",
    (("x", "bLHP", True), ("dt", "bLH", True), ("A", "H", False), ("B", "bLGN", True), ("C", "bLGN", True),
     ("D", "H", False), ("z", "bLHP", True), ("dt_bias", "H", False), ("initial_state", "bHPN", False)),
    "bHPN", {"H": 8, "P": 16, "N": 32, "G": 2},
)  # fmt: skip
OPS = [pytest.param(SELECTIVE_SCAN, id="SelectiveScan"), pytest.param(SSD_SCAN, id="SSDScan")]


def float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


class Probe:
    """tests/native/trt_plugin_probe.cpp: the plugin library as TensorRT sees it."""

    def __init__(self, library: Path, build_dir: Path):
        source = Path(__file__).parent / "native" / "trt_plugin_probe.cpp"
        binary = build_dir / "trt_plugin_probe.so"
        subprocess.run([_tool("c++"), "-std=c++17", "-shared", "-fPIC", "-isystem", str(HEADERS), "-isystem",
                        str(cuda_include()), str(source), "-ldl", "-o", str(binary)], check=True)  # fmt: skip
        self.lib = ctypes.CDLL(str(binary))
        self.lib.probe_create.restype = ctypes.c_void_p
        self.lib.probe_deserialize.restype = ctypes.c_void_p
        self.lib.probe_last_error.restype = ctypes.c_char_p
        self.lib.probe_workspace.restype = ctypes.c_size_t
        info = ctypes.create_string_buffer(8192)
        self.count = self.lib.probe_load(str(library).encode(), info, 8192)
        self.creators = info.value.decode().splitlines()

    @property
    def error(self) -> str:
        return self.lib.probe_last_error().decode()

    def create(self, op: Op, fields: dict, types: dict | None = None, phase: int = 0):
        """A plugin from the creator TensorRT's registry finds for ``op``; fields are sent as
        kINT32, or kFLOAT32 for float values, unless ``types`` says otherwise."""
        assert self.lib.probe_use(op.name.encode()) == 0, f"no creator {op.name}"
        names = list(fields)
        kinds = [(types or {}).get(n, KFLOAT32 if isinstance(v, float) else KINT32) for n, v in fields.items()]
        handle = self.lib.probe_create(
            b"scan_node", len(names), (ctypes.c_char_p * len(names))(*[n.encode() for n in names]),
            (ctypes.c_double * len(names))(*fields.values()), (ctypes.c_int * len(names))(*kinds), phase,
        )  # fmt: skip
        return ctypes.c_void_p(handle) if handle else None

    def serialized(self, plugin) -> dict:
        """The fields the plugin hands TensorRT to serialize: ints and floats (of their own type only)."""
        out = ctypes.create_string_buffer(4096)
        self.lib.probe_serialized(plugin, out, 4096)
        fields = {}
        for item in out.value.decode().split(","):
            name_type, value = item.split("=")
            name, kind = name_type.split(":")
            fields[name] = int(value) if int(kind) == KINT32 else float.fromhex(value) if int(kind) == KFLOAT32 else value
        return fields

    def timing_cache_id(self, plugin) -> str:
        out = ctypes.create_string_buffer(4096)
        self.lib.probe_timing_cache_id(plugin, out, 4096)
        return out.value.decode()

    def output_shapes(self, plugin, shapes):
        ranks = (ctypes.c_int * len(shapes))(*map(len, shapes))
        dims = (ctypes.c_int64 * sum(map(len, shapes)))(*itertools.chain(*shapes))
        out_ranks, out_dims = (ctypes.c_int * 2)(), (ctypes.c_int64 * 16)()
        status = self.lib.probe_output_shapes(plugin, len(shapes), ranks, dims, out_ranks, out_dims)
        return status, [list(out_dims[8 * o: 8 * o + out_ranks[o]]) for o in range(2)]

    def output_types(self, plugin, types):
        out = (ctypes.c_int * 2)()
        status = self.lib.probe_output_types(plugin, len(types), (ctypes.c_int * len(types))(*types), out)
        return status, list(out)

    def supports(self, plugin, pos, types, formats=None):
        formats = formats or [LINEAR] * len(types)
        return bool(self.lib.probe_supports(plugin, pos, len(types) - 2, (ctypes.c_int * len(types))(*types),
                                            (ctypes.c_int * len(types))(*formats)))  # fmt: skip

    @staticmethod
    def _dims(shapes):
        return (ctypes.c_int * len(shapes))(*map(len, shapes)), \
            (ctypes.c_int64 * sum(map(len, shapes)))(*itertools.chain(*shapes))  # fmt: skip

    def configure(self, plugin, dims, max_dims, types):
        ranks, flat = self._dims(dims)
        return self.lib.probe_configure(plugin, len(dims), ranks, flat, self._dims(max_dims)[1],
                                        (ctypes.c_int * len(types))(*types))  # fmt: skip

    def workspace(self, plugin, min_dims, max_dims, types) -> int:
        ranks, low = self._dims(min_dims)
        return self.lib.probe_workspace(plugin, len(min_dims), ranks, low, self._dims(max_dims)[1],
                                        (ctypes.c_int * len(types))(*types))  # fmt: skip

    def shape_change(self, plugin, dims, types):
        ranks, flat = self._dims(dims)
        return self.lib.probe_shape_change(plugin, len(dims), ranks, flat, (ctypes.c_int * len(types))(*types))


@pytest.fixture(scope="session")
def probe(plugin_build, tmp_path_factory):
    return Probe(plugin_build, tmp_path_factory.mktemp("probe"))


@pytest.fixture
def plugins(probe):
    """probe.create, destroying what it created after the test."""
    created = []

    def create(*args, **kwargs):
        plugin = probe.create(*args, **kwargs)
        created.append(plugin)
        return plugin

    yield create
    for plugin in created:
        if plugin:
            probe.lib.probe_destroy(plugin)


def test_creators_are_what_the_onnx_parser_looks_up(probe):
    assert probe.count == 2 and len(probe.creators) == 2
    parser_type = {OpSchema.AttrType.INT: f"{KINT32}:1", OpSchema.AttrType.FLOAT: f"{KFLOAT32}:1"}
    for op, line in zip((SELECTIVE_SCAN, SSD_SCAN), probe.creators):
        kind, name, version, namespace, fields = line.split("|")
        assert (kind, name, version, namespace) == ("PLUGIN CREATOR_V3ONE", op.name, "1", "")
        # The parser hands over exactly the node attributes named here: an INT as one kINT32, a FLOAT as one kFLOAT32.
        fields = dict(f.split(":", 1) for f in fields.split(","))
        assert fields == {name: parser_type[a.type] for name, a in op.schema.attributes.items()}


# Float attributes of SSDScan through serialization: the defaults, a binding clamp, values float32 rounds.
CLAMPS = [(0.0, math.inf), (0.001, 0.1), (-1.5, 2.0**-20), (0.0, 0.0)]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("values", list(itertools.product([0, 1], repeat=5)))
def test_fields_round_trip_through_serialization(probe, plugins, op, values):
    fields = dict(zip([op.softplus, *op.flags], values))
    if op is SSD_SCAN:
        fields["dt_min"], fields["dt_max"] = CLAMPS[sum(values) % len(CLAMPS)]
    plugin = plugins(op, fields)
    assert plugin and probe.lib.probe_capabilities(plugin) == 7  # core, build, runtime
    want = {name: float32(v) if isinstance(v, float) else v for name, v in fields.items()}
    assert probe.serialized(plugin) == want
    restored = ctypes.c_void_p(probe.lib.probe_deserialize(plugin))  # what an engine's deserialization creates
    assert restored and probe.serialized(restored) == want
    probe.lib.probe_destroy(restored)


@pytest.mark.parametrize("op", OPS)
def test_missing_fields_take_the_onnx_defaults(probe, plugins, op):
    plugin = plugins(op, {"has_z": 1})
    assert probe.serialized(plugin) == {**op.defaults(), "has_z": 1}
    if op is SSD_SCAN:
        assert probe.serialized(plugin)["dt_max"] == math.inf


@pytest.mark.parametrize("op", OPS)
def test_timing_cache_id_tells_fields_apart(probe, plugins, op):
    ids = set()
    for values in itertools.product([0, 1], repeat=5):
        fields = dict(zip([op.softplus, *op.flags], values))
        ids.add(probe.timing_cache_id(plugins(op, fields)))
    if op is SSD_SCAN:
        ids.add(probe.timing_cache_id(plugins(op, {"dt_min": 0.001})))
        ids.add(probe.timing_cache_id(plugins(op, {"dt_max": 0.1})))
    assert len(ids) == 32 + 2 * (op is SSD_SCAN)


@pytest.mark.parametrize("op, fields, types, message", [
    (SELECTIVE_SCAN, {"has_D": 2}, {}, "attribute has_D must be 0 or 1, got 2"),
    (SELECTIVE_SCAN, {"delta_softplus": -1}, {}, "attribute delta_softplus must be 0 or 1, got -1"),
    (SELECTIVE_SCAN, {"has_z": 1}, {"has_z": KFLOAT32}, "attribute has_z must be a single int (0 or 1)"),
    (SELECTIVE_SCAN, {"bias": 1}, {}, "unknown attribute 'bias'"),
    (SELECTIVE_SCAN, {"dt_softplus": 1}, {}, "unknown attribute 'dt_softplus'"),  # SSDScan's, not this op's
    (SSD_SCAN, {"has_dt_bias": 2}, {}, "attribute has_dt_bias must be 0 or 1, got 2"),
    (SSD_SCAN, {"dt_softplus": -1}, {}, "attribute dt_softplus must be 0 or 1, got -1"),
    (SSD_SCAN, {"has_initial_state": 1}, {"has_initial_state": KFLOAT32},
     "attribute has_initial_state must be a single int (0 or 1)"),
    (SSD_SCAN, {"dt_max": 1}, {}, "attribute dt_max must be a single float"),  # an INT attribute
    (SSD_SCAN, {"dt_min": math.nan}, {}, "attribute dt_min must not be NaN"),
    (SSD_SCAN, {"dt_max": math.nan}, {"dt_max": KFLOAT64}, "attribute dt_max must not be NaN"),
    (SSD_SCAN, {"dt_min": 0.5, "dt_max": 0.25}, {}, "attribute dt_min (0.5) must be <= dt_max (0.25)"),
    (SSD_SCAN, {"dt_max": -1.0}, {}, "attribute dt_min (0) must be <= dt_max (-1)"),  # against the default dt_min
    (SSD_SCAN, {"delta_softplus": 1}, {}, "unknown attribute 'delta_softplus'"),
])  # fmt: skip
def test_bad_fields_are_refused_with_a_message(probe, op, fields, types, message):
    assert probe.create(op, fields, types) is None
    assert probe.error == f"mamba.{op.name} (node 'scan_node'): {message}"


@pytest.mark.parametrize("op", OPS)
def test_wider_python_types_are_accepted(probe, plugins, op):
    fields = {"has_D": 1, op.softplus: 1}
    types = {"has_D": KINT64, op.softplus: KINT64}
    if op is SSD_SCAN:
        fields.update(dt_min=0.001, dt_max=0.1)
        types.update(dt_min=KFLOAT64, dt_max=KFLOAT64)
    serialized = probe.serialized(plugins(op, fields, types))
    assert {name: serialized[name] for name in fields} == {n: float32(v) if isinstance(v, float) else v
                                                         for n, v in fields.items()}  # fmt: skip


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("values", list(itertools.product([0, 1], repeat=4)))
def test_output_shapes_follow_the_contract(probe, plugins, op, values):
    attributes = {op.softplus: 1, **dict(zip(op.flags, values))}
    plugin = plugins(op, attributes)
    status, (y, final_state) = probe.output_shapes(plugin, op.shapes(attributes))
    assert status == 0, probe.error
    size = {"b": B, "L": L, **op.sizes}
    assert y == [size[s] for s in op.inputs[0][1]]  # the first input's dimension expressions
    assert final_state == [size[s] for s in op.final_state]


def _set(index, shape):
    return lambda shapes: shapes.__setitem__(index, shape)


@pytest.mark.parametrize("op, change, message", [
    (SELECTIVE_SCAN, _set(3, [B, 2, 16]), "B must have shape [batch, G, N, L] (rank 4), got rank 3"),
    (SELECTIVE_SCAN, _set(4, [B, 2, 8, L]), "C must have shape [batch, G, N, L] with N = 16 (from A), got 8"),
    (SELECTIVE_SCAN, _set(2, [32, 16]), "A must have shape [dim, N] with dim = 64 (from u), got 32"),
    (SELECTIVE_SCAN, _set(5, [65]), "D must have shape [dim] with dim = 64 (from u), got 65"),
    (SELECTIVE_SCAN, _set(8, [B, 64, 8]), "initial_state must have shape [batch, dim, N] with N = 16"),
    (SELECTIVE_SCAN, lambda s: s.pop(), "expected 9 inputs (u, delta, A, B, C, D, z, delta_bias, initial_state)"),
    (SSD_SCAN, _set(1, [B, L]), "dt must have shape [batch, L, H] (rank 3), got rank 2"),
    (SSD_SCAN, _set(2, [4]), "A must have shape [H] with H = 8 (from x), got 4 in dimension 0"),
    (SSD_SCAN, _set(3, [B, L, 2, 32, 1]), "B must have shape [batch, L, G, N] (rank 4), got rank 5"),
    (SSD_SCAN, _set(4, [B, L, 2, 16]), "C must have shape [batch, L, G, N] with N = 32 (from B), got 16 in dimension 3"),
    (SSD_SCAN, _set(4, [B, L, 1, 32]), "C must have shape [batch, L, G, N] with G = 2 (from B), got 1 in dimension 2"),
    (SSD_SCAN, _set(5, [16]), "D must have shape [H] with H = 8 (from x), got 16"),
    (SSD_SCAN, _set(6, [B, L, 8, 8]), "z must have shape [batch, L, H, P] with P = 16 (from x), got 8 in dimension 3"),
    (SSD_SCAN, _set(7, [8, 1]), "dt_bias must have shape [H] (rank 1), got rank 2"),
    (SSD_SCAN, _set(8, [B, 8, 32, 16]),
     "initial_state must have shape [batch, H, P, N] with P = 16 (from x), got 32 in dimension 2"),
    (SSD_SCAN, _set(8, [B, 8, 16, 16]),
     "initial_state must have shape [batch, H, P, N] with N = 32 (from B), got 16 in dimension 3"),
    (SSD_SCAN, lambda s: s.pop(), "expected 9 inputs (x, dt, A, B, C, D, z, dt_bias, initial_state) for dt_softplus=1,"),
])  # fmt: skip
def test_shape_errors_name_the_input_and_expected_shape(probe, plugins, op, change, message):
    plugin = plugins(op, op.all_inputs())
    shapes = op.shapes(op.all_inputs())
    change(shapes)
    status, _ = probe.output_shapes(plugin, shapes)
    assert status != 0 and message in probe.error and f"mamba.{op.name} (node 'scan_node'): " in probe.error


@pytest.mark.parametrize("op, sizes, message", [
    (SELECTIVE_SCAN, {"G": 3}, "dim (64, from u) must be a multiple of G (3, from B)"),
    (SSD_SCAN, {"G": 3}, "H (8, from x) must be a multiple of G (3, from B)"),
    (SSD_SCAN, {"G": 0}, "H (8, from x) must be a multiple of G (0, from B)"),
])  # fmt: skip
def test_groups_must_divide(probe, plugins, op, sizes, message):
    status, _ = probe.output_shapes(plugins(op, {}), op.shapes({}, **sizes))
    assert status != 0 and message in probe.error


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("t", [F32, F16, BF16])
def test_output_types_are_t_and_float32(probe, plugins, op, t):
    plugin = plugins(op, op.all_inputs())
    assert probe.output_types(plugin, op.types(op.all_inputs(), t)) == (0, [t, F32])


@pytest.mark.parametrize("op, index, bad, message", [
    (SELECTIVE_SCAN, 1, F32, "delta must be float16 (like u), got float32"),
    (SELECTIVE_SCAN, 2, F16, "A must be float32, got float16"),
    (SELECTIVE_SCAN, 6, BF16, "z must be float16 (like u), got bfloat16"),
    (SELECTIVE_SCAN, 8, F16, "initial_state must be float32, got float16"),
    (SELECTIVE_SCAN, 0, I32, "u must be float32, float16 or bfloat16, got int32"),
    (SSD_SCAN, 1, BF16, "dt must be float16 (like x), got bfloat16"),
    (SSD_SCAN, 2, F16, "A must be float32, got float16"),
    (SSD_SCAN, 3, F32, "B must be float16 (like x), got float32"),
    (SSD_SCAN, 4, I8, "C must be float16 (like x), got int8"),
    (SSD_SCAN, 5, F16, "D must be float32, got float16"),
    (SSD_SCAN, 6, F32, "z must be float16 (like x), got float32"),
    (SSD_SCAN, 7, BF16, "dt_bias must be float32, got bfloat16"),
    (SSD_SCAN, 8, F16, "initial_state must be float32, got float16"),
    (SSD_SCAN, 0, I32, "x must be float32, float16 or bfloat16, got int32"),
])  # fmt: skip
def test_type_errors_name_the_input(probe, plugins, op, index, bad, message):
    plugin = plugins(op, op.all_inputs())
    types = op.types(op.all_inputs(), F16)
    types[index] = bad
    status, _ = probe.output_types(plugin, types)
    assert status != 0 and message in probe.error


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("t", [F32, F16, BF16])
def test_supported_formats_are_linear_t_and_float32(probe, plugins, op, t):
    plugin = plugins(op, op.all_inputs())
    want = op.types(op.all_inputs(), t) + [t, F32]  # inputs, then y and final_state
    for pos in range(len(want)):
        for candidate in (F32, F16, BF16, I8, I32):
            types = list(want)
            types[pos] = candidate
            expected = candidate in (F32, F16, BF16) if pos == 0 else candidate == want[pos]
            assert probe.supports(plugin, pos, types) == expected, (pos, candidate)
        formats = [LINEAR] * len(want)
        formats[pos] = CHW2
        assert not probe.supports(plugin, pos, want, formats)


@pytest.mark.parametrize("op, too_wide, too_many, message", [
    (SELECTIVE_SCAN, "dstate must be <= 256", {"b": 2**25, "L": 1}, "batch * dim must be < 2^31"),  # 2^25 * 64
    (SSD_SCAN, "dstate must be <= 256", {"b": 2**24, "L": 1}, "batch * nheads * headdim must be < 2^31"),  # * 8 * 16
])  # fmt: skip
def test_configure_checks_the_profile_against_the_kernels_limits(probe, plugins, op, too_wide, too_many, message):
    plugin = plugins(op, op.all_inputs())
    types = op.types(op.all_inputs(), F32)
    runtime = op.shapes(op.all_inputs())
    assert probe.configure(plugin, runtime, op.shapes(op.all_inputs(), b=8, L=512), types) == 0, probe.error
    wide = op.shapes(op.all_inputs(), N=257)
    assert probe.configure(plugin, wide, op.shapes(op.all_inputs(), b=8, L=512, N=257), types) != 0
    assert "the largest shapes of this optimisation profile exceed the CUDA kernels" in probe.error
    assert too_wide in probe.error
    assert probe.configure(plugin, runtime, op.shapes(op.all_inputs(), **too_many), types) != 0
    assert message in probe.error


@pytest.mark.parametrize("op", OPS)
def test_shape_change_checks_run_time_dimensions(probe, plugins, op):
    plugin = plugins(op, op.all_inputs())
    types = op.types(op.all_inputs(), F16)
    assert probe.shape_change(plugin, op.shapes(op.all_inputs(), b=3, L=1), types) == 0, probe.error  # decode
    assert probe.shape_change(plugin, op.shapes(op.all_inputs(), b=3, L=0), types) == 0, probe.error  # empty
    shapes = op.shapes(op.all_inputs(), b=3, L=5)
    shapes[8][0] = 2  # initial_state's batch
    assert probe.shape_change(plugin, shapes, types) != 0
    assert f"initial_state must have shape {'[batch, dim, N]' if op is SELECTIVE_SCAN else '[batch, H, P, N]'} " \
           "with batch = 3 (from " in probe.error  # fmt: skip


def test_ssd_workspace_covers_every_shape_of_the_profile(probe, plugins, plugin_build):
    """TensorRT reserves getWorkspaceSize once for the whole profile: it must be the kernels'
    largest need over every batch and length in it, which is not their need at the largest
    shapes (a smaller batch leaves the GPU room for more segments of a long sequence)."""
    kernels = ctypes.CDLL(str(plugin_build.parent / "libmamba_kernels.so"))
    kernels.mamba_ssd_scan_cuda_workspace_size.restype = ctypes.c_size_t
    kernels.mamba_ssd_scan_cuda_workspace_size.argtypes = [ctypes.POINTER(SsdParams)]
    fields = {"dt_softplus": 1, "has_D": 1, "has_dt_bias": 1, "has_initial_state": 1}
    plugin = plugins(SSD_SCAN, fields)
    sizes = {"H": 24, "P": 64, "N": 128, "G": 1}  # mamba2-130m's heads
    placeholder = ctypes.create_string_buffer(256)
    at = ctypes.addressof(placeholder)

    def kernel_need(batch, length, t=0):
        p = SsdParams(batch, length, sizes["H"], sizes["P"], sizes["N"], sizes["G"], t, at, at, at, at, at, at, None,
                      at, at, 1, 0.0, math.inf, at, at)  # fmt: skip
        return kernels.mamba_ssd_scan_cuda_workspace_size(ctypes.byref(p))

    for t, kernel_t in ((F32, 0), (BF16, 2)):
        types = SSD_SCAN.types(fields, t)
        low, high = SSD_SCAN.shapes(fields, b=1, L=1, **sizes), SSD_SCAN.shapes(fields, b=8, L=1024, **sizes)
        needs = {(b, n): kernel_need(b, n, kernel_t) for b in range(1, 9) for n in range(1, 1025)}
        assert probe.workspace(plugin, low, high, types) == max(needs.values())
        assert max(needs.values()) > needs[8, 1024]  # what sizing at the largest shapes would miss
        decode = SSD_SCAN.shapes(fields, b=8, L=1, **sizes)
        assert probe.workspace(plugin, low, decode, types) == max(needs[b, 1] for b in range(1, 9))


# ---------------------------------------------------------------------------------------
# Real parses and builds (TensorRT or TensorRT-RTX importable; not in CI)


@pytest.fixture(scope="module")
def trt():
    """TensorRT (or TensorRT-RTX) with the plugin loaded: enough to parse."""
    try:
        module = import_tensorrt()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    try:
        load_plugin(module)
    except MissingDependencyError as e:
        pytest.skip(f"the plugin library is not built: {e}")
    return module


@pytest.fixture(scope="module")
def trt_builds(trt):
    """... whose builder builds with its default settings here (for this machine's GPU)."""
    reason = build_unavailable(trt)
    if reason:
        pytest.skip(reason)
    return trt


@pytest.fixture(scope="module")
def trt_runs(trt):
    """... whose runtime also runs engines on this GPU: what --backend trt needs."""
    reason = backend_unavailable("trt")
    if reason:
        pytest.skip(reason)
    return trt


ARCHITECTURES = [("mamba1", "SelectiveScan"), ("mamba2", "SSDScan")]


def contract_shapes(cfg):
    """(y, final_state) of each layer's scan as the parser sees them (-1: batch, sequence)."""
    if cfg.architecture == "mamba1":
        return (-1, cfg.d_inner, -1), (-1, cfg.d_inner, cfg.d_state)
    return (-1, -1, cfg.nheads, cfg.headdim), (-1, cfg.nheads, cfg.headdim, cfg.d_state)


@pytest.mark.parametrize("architecture, op", ARCHITECTURES)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_parser_maps_every_scan_to_the_plugin(trt, tmp_path, architecture, op, dtype):
    cfg = CONFIGS[architecture]
    onnx_path = export_onnx(random_model(architecture=architecture), tmp_path, dtype=dtype)
    _, network, _, layers = parse_network(trt, make_logger(trt), onnx_path, cfg.n_layer, op)
    t = {"fp32": trt.float32, "fp16": trt.float16, "bf16": trt.bfloat16}[dtype]
    nodes = [n for n in onnx.load(str(onnx_path)).graph.node if n.op_type == op]
    assert len(nodes) == cfg.n_layer and [layer.name for layer in layers] == [n.name for n in nodes]
    for layer, node in zip(layers, nodes):
        assert layer.num_inputs == len(node.input) and layer.num_outputs == 2
        y, state = layer.get_output(0), layer.get_output(1)
        assert (y.dtype, state.dtype) == (t, trt.float32)
        assert (tuple(y.shape), tuple(state.shape)) == contract_shapes(cfg)


@pytest.mark.parametrize("architecture, op", ARCHITECTURES)
@pytest.mark.usefixtures("trt_builds")
def test_build_engine_writes_plan_sidecar_and_timing_cache(trt, exports, tmp_path, architecture, op):
    export_dir = exports(architecture)
    plan, cache = tmp_path / "model.plan", tmp_path / "timing.cache"
    assert build_engine(export_dir, plan, profiles=SMALL, timing_cache=cache) == plan
    assert op.encode() in plan.read_bytes()
    assert cache.is_file() == (trt.__name__ == "tensorrt")  # TensorRT-RTX has no timing cache
    info = read_engine_info(plan)
    assert info["export"] == json.loads((export_dir / "export.json").read_text())
    assert info["profiles"] == {"prefill": {"index": 0, "batch": [1, 2, 4], "sequence": [1, 8, 32]},
                                "decode": {"index": 1, "batch": [1, 2, 4], "sequence": [1, 1, 1]}}  # fmt: skip
    assert info["plugin"] == {"name": op, "version": "1", "namespace": ""}
    assert info["tensorrt"]["version"] == trt.__version__
    with pytest.raises(MambaExportError, match="already exists"):
        build_engine(export_dir, plan, profiles=SMALL)
    before = plan.stat().st_mtime_ns
    build_engine(export_dir, plan, profiles=SMALL, timing_cache=cache, overwrite=True)
    assert plan.stat().st_mtime_ns != before


@pytest.mark.parametrize("architecture", ["mamba1", "mamba2"])
@pytest.mark.usefixtures("trt_builds")
def test_cli_builds_an_engine(capsys, exports, tmp_path, architecture):
    plan = tmp_path / "cli.plan"
    code, out, _ = run_cli(capsys, "build-engine", str(exports(architecture) / "model.onnx"), "-o", str(plan),
                           "--max-batch", "2", "--max-seq", "16", "-q")  # fmt: skip
    assert code == 0 and out.strip() == str(plan)
    assert read_engine_info(plan)["profiles"]["prefill"]["sequence"] == [1, 16, 16]


@pytest.mark.parametrize("architecture, op, attribute, value, explanation", [
    ("mamba1", "SelectiveScan", "has_D", 2, "attribute has_D must be 0 or 1, got 2"),
    ("mamba2", "SSDScan", "has_dt_bias", 2, "attribute has_dt_bias must be 0 or 1, got 2"),
    ("mamba2", "SSDScan", "dt_min", 1.0, "attribute dt_min (1) must be <= dt_max (0.5)"),
])  # fmt: skip
def test_bad_node_attribute_is_a_parser_error_naming_the_node(trt, exports, tmp_path, architecture, op, attribute,
                                                              value, explanation):
    broken = Path(shutil.copytree(exports(architecture), tmp_path / "broken"))
    proto = onnx.load(str(broken / "model.onnx"))
    node = next(n for n in proto.graph.node if n.op_type == op)
    field = next(a for a in node.attribute if a.name == attribute)
    field.CopyFrom(helper.make_attribute(attribute, value))
    onnx.save(proto, str(broken / "model.onnx"))
    with pytest.raises(MambaExportError, match=f"node '{node.name}' \\({op}\\)") as error:
        build_engine(broken, tmp_path / "m.plan", profiles=SMALL)
    assert f"mamba.{op} (node '{node.name}'): {explanation}" in str(error.value)  # the plugin's own explanation


def sm89(trt):
    """TensorRT-RTX's builder settings for one explicit target, Ada."""
    if not trt.__name__.startswith("tensorrt_rtx"):
        pytest.skip(f"{trt.__name__} builds for the GPU it runs on; explicit targets are TensorRT-RTX's")
    return compute_capability_target(trt, "SM89")


@pytest.mark.parametrize("architecture, op", ARCHITECTURES)
def test_rtx_builds_for_an_explicit_target(trt, exports, tmp_path, architecture, op):
    """TensorRT-RTX builds for a named compute capability on any machine, also where it cannot
    build for (or run on) the GPU it finds: the plugin's build path is proven there too."""
    plan = build_engine(exports(architecture), tmp_path / "sm89.plan", profiles=SMALL, builder_config=sm89(trt))
    assert op.encode() in plan.read_bytes()  # the plugin layer, serialized by TensorRT


def test_probe_agrees_with_building_and_loading_an_export(trt, exports, tmp_path):
    """A wrong 'cannot' from the probe engine would skip tests that should run (and a wrong
    'can' fail them): its answers against what TensorRT does with a real export."""
    plan = tmp_path / "m.plan"
    if build_unavailable(trt) is None:
        build_engine(exports("mamba1"), plan, profiles=SMALL)
    else:
        with pytest.raises(MambaExportError, match="TensorRT could not build the engine"):
            build_engine(exports("mamba1"), plan, profiles=SMALL)
        build_engine(exports("mamba1"), plan, profiles=SMALL, builder_config=sm89(trt))
    if not torch.cuda.is_available():
        assert run_unavailable(trt) == "no CUDA device visible to PyTorch"
        return  # nothing to load an engine on
    if run_unavailable(trt) is None:
        TrtBackend(plan)  # loads: Engine raises with TensorRT's message otherwise
    else:
        assert "cannot run engines on this GPU" in run_unavailable(trt)
        with pytest.raises(MambaExportError, match="TensorRT could not load"):
            TrtBackend(plan)


# ---------------------------------------------------------------------------------------
# Running engines (TensorRT and a GPU its runtime supports)


@pytest.mark.parametrize("architecture", ["mamba1", "mamba2"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_trt_backend_matches_eager(trt_runs, tmp_path, architecture, dtype):
    reference = random_model(architecture=architecture)
    model = reference if dtype == "fp32" else copy.deepcopy(reference).to(torch.float16)
    backend = open_backend("trt", model, export_dir=tmp_path)
    errors = compare(backend, TorchBackend(reference), batch=2, prompt_len=16, decode_steps=6,
                     vocab_size=CONFIGS[architecture].vocab_size)  # fmt: skip
    rel_tol, state_tol, greedy_tol = TOLERANCES["float32" if dtype == "fp32" else "float16"]
    assert errors["max_rel_err"] <= rel_tol and errors["state_max_rel_err"] <= state_tol, errors
    assert errors["greedy_match"] >= greedy_tol, errors
    assert all(t.is_cuda for pair in backend.empty_state(1) for t in pair)  # states stay on the GPU
    assert os.path.isfile(sidecar_path(tmp_path / "model.plan"))


@pytest.mark.parametrize("architecture", ["mamba1", "mamba2"])
def test_generate_with_trt_backend_matches_torch(trt_runs, capsys, tmp_path, architecture):
    """Greedy float32 text from the shipped model: the engine's tokens are eager PyTorch's."""
    prompt = "class Parser:\n    def __init__(self"  # both models continue it with code, not blanks
    argv = ["generate", str(SHIPPED[architecture]), "--prompt", prompt, "--max-new-tokens", "32", "-q"]
    code, expected, _ = run_cli(capsys, *argv)
    assert code == 0 and expected.startswith(prompt) and len(expected[len(prompt):].split()) > 2
    code, out, _ = run_cli(capsys, *argv, "--backend", "trt", "--onnx", str(tmp_path / "export"))
    assert code == 0 and out == expected
    assert read_engine_info(tmp_path / "export" / "model.plan")["export"]["config"]["architecture"] == architecture


def test_generate_with_trt_backend_says_why_it_cannot_run(capsys):
    """Where engines cannot run (no TensorRT, no GPU, a GPU its runtime refuses): one line, before any export."""
    reason = backend_unavailable("trt")
    if reason is None:
        pytest.skip("TensorRT runs engines here: test_generate_with_trt_backend_matches_torch covers generate")
    code, out, err = run_cli(capsys, "generate", str(SHIPPED["mamba1"]), "--prompt", "def", "--backend", "trt", "-q")
    assert (code, out, err) == (2, "", f"mamba-export generate: error: backend trt: {reason}\n")
