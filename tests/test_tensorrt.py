"""TensorRT engines (docs/tensorrt.md).

Runs everywhere: build-engine's argument and input checks, the trt backend's availability
reasons, one-line CLI errors. With TensorRT's public headers in third_party/TensorRT/include
(and nvcc): the plugin library is built against them and its creator and build-time methods
are driven through TensorRT's interfaces by tests/native/trt_plugin_probe.cpp, without
TensorRT. Where TensorRT or TensorRT-RTX imports (not in CI): real parses and builds; where
a GPU also runs the engine: the trt backend against eager PyTorch.
"""

import copy
import ctypes
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
import torch

import mamba_export
from mamba_export.backends.factory import backend_unavailable, open_backend
from mamba_export.backends.torch_backend import TorchBackend
from mamba_export.cli import main
from mamba_export.errors import MambaExportError, MissingDependencyError
from mamba_export.export.onnx_export import export_onnx
from mamba_export.export.schemas import _selective_scan
from mamba_export.models import Mamba1Config, Mamba1LMHeadModel
from mamba_export.tensorrt import DEFAULT_SEQUENCE, Profiles, ShapeRange, build_engine, import_tensorrt, load_plugin
from mamba_export.tensorrt import onnx_input, read_engine_info
from mamba_export.tensorrt.build import parse_network, sidecar_path
from mamba_export.tensorrt.compat import make_logger
from mamba_export.validate import TOLERANCES, compare

ROOT = Path(__file__).resolve().parents[1]
HEADERS = ROOT / "third_party" / "TensorRT" / "include"
NO_TENSORRT = (
    "TensorRT is not installed: its builder cannot be installed on this machine (PyPI's tensorrt-cu13-libs is a "
    "stub); see docs/tensorrt.md"
)
CONFIG = Mamba1Config(d_model=32, n_layer=2, vocab_size=61, d_state=4, d_conv=4, expand=2)
SMALL = Profiles(batch=ShapeRange(1, 2, 4), sequence=ShapeRange(1, 8, 32))


def tensorrt_or_none():
    try:
        return import_tensorrt()
    except MissingDependencyError:
        return None


def random_model(seed=0):
    torch.manual_seed(seed)
    return Mamba1LMHeadModel(CONFIG).eval()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return export_onnx(random_model(), tmp_path_factory.mktemp("export") / "fp32").parent


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


def test_profiles_are_prefill_then_decode():
    ranges = Profiles(batch=ShapeRange(1, 2, 8), sequence=ShapeRange(4, 16, 64)).ranges()
    assert list(ranges) == ["prefill", "decode"]
    assert ranges["prefill"] == (ShapeRange(1, 2, 8), ShapeRange(4, 16, 64))
    assert ranges["decode"] == (ShapeRange(1, 2, 8), ShapeRange(1, 1, 1))


@pytest.mark.parametrize("flags, what", [
    (["--min-batch", "4", "--max-batch", "2"], "batch range"),
    (["--opt-seq", "0"], "sequence range"),
    (["--min-seq", "9", "--opt-seq", "8"], "sequence range"),
    (["--max-seq", "16", "--opt-seq", "32"], "sequence range"),
])  # fmt: skip
def test_cli_rejects_bad_profiles(capsys, tmp_path, flags, what):
    code, out, err = run_cli(capsys, "build-engine", str(tmp_path / "any"), "-o", str(tmp_path / "m.plan"), *flags)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"mamba-export build-engine: error: {what}: need 1 <= min")


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


def test_portable_export_is_refused(export_dir, tmp_path):
    portable = Path(shutil.copytree(export_dir, tmp_path / "portable"))
    info = json.loads((portable / "export.json").read_text())
    (portable / "export.json").write_text(json.dumps({**info, "portable": True}))
    with pytest.raises(MambaExportError, match="portable export"):
        build_engine(portable, tmp_path / "m.plan")


def test_existing_plan_is_kept(capsys, export_dir, tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"an engine the user had")
    code, _, err = run_cli(capsys, "build-engine", str(export_dir), "-o", str(plan))
    assert code == 2 and "already exists; pass --overwrite" in err
    assert plan.read_bytes() == b"an engine the user had"


@pytest.mark.skipif(tensorrt_or_none() is not None, reason="TensorRT (or TensorRT-RTX) imports here")
def test_cli_says_tensorrt_is_missing_in_one_line(capsys, export_dir, tmp_path):
    code, out, err = run_cli(capsys, "build-engine", str(export_dir), "-o", str(tmp_path / "m.plan"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mamba-export build-engine: error: TensorRT is not installed")
    assert not (tmp_path / "m.plan").exists()


@pytest.mark.skipif(tensorrt_or_none() is not None, reason="TensorRT (or TensorRT-RTX) imports here")
def test_validate_with_trt_backend_says_tensorrt_is_missing(capsys, tmp_path):
    checkpoint = mamba_export.save_pretrained(random_model(), tmp_path / "ckpt")
    code, _, err = run_cli(capsys, "validate", str(checkpoint), "--backend", "trt", "-q")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("mamba-export validate: error: backend trt: TensorRT is not installed")


# ---------------------------------------------------------------------------------------
# The trt backend's availability


def test_trt_backend_runs_on_cuda_only():
    assert backend_unavailable("trt", "cpu") == "trt runs on CUDA; use --device cuda"


@pytest.mark.skipif(tensorrt_or_none() is not None, reason="TensorRT (or TensorRT-RTX) imports here")
def test_trt_backend_unavailable_without_tensorrt():
    assert backend_unavailable("trt").startswith("TensorRT is not installed")


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


# Types and formats as TensorRT numbers them (NvInferRuntimeBase.h, NvInferRuntime.h).
F32, F16, I8, I32, BF16 = 0, 1, 2, 3, 7
LINEAR, CHW2 = 0, 1
KINT32, KINT64, KFLOAT32 = 5, 10, 1
ATTRIBUTES = ["delta_softplus", "has_D", "has_z", "has_delta_bias", "has_initial_state"]


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
        info = ctypes.create_string_buffer(4096)
        self.count = self.lib.probe_load(str(library).encode(), info, 4096)
        self.info = info.value.decode()

    @property
    def error(self) -> str:
        return self.lib.probe_last_error().decode()

    def create(self, fields: dict, types: dict | None = None, phase: int = 0):
        names = list(fields)
        handle = self.lib.probe_create(
            b"scan_node", len(names), (ctypes.c_char_p * len(names))(*[n.encode() for n in names]),
            (ctypes.c_int64 * len(names))(*fields.values()),
            (ctypes.c_int * len(names))(*[(types or {}).get(n, KINT32) for n in names]), phase,
        )  # fmt: skip
        return ctypes.c_void_p(handle) if handle else None

    def serialized(self, plugin) -> dict:
        out = ctypes.create_string_buffer(4096)
        self.lib.probe_serialized(plugin, out, 4096)
        return {k: int(v) for k, v in (item.split("=") for item in out.value.decode().split(","))}

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

    def configure(self, plugin, dims, max_dims, types):
        return self.lib.probe_configure(plugin, len(dims), (ctypes.c_int * len(dims))(*map(len, dims)),
                                        (ctypes.c_int64 * sum(map(len, dims)))(*itertools.chain(*dims)),
                                        (ctypes.c_int64 * sum(map(len, max_dims)))(*itertools.chain(*max_dims)),
                                        (ctypes.c_int * len(types))(*types))  # fmt: skip

    def shape_change(self, plugin, dims, types):
        return self.lib.probe_shape_change(plugin, len(dims), (ctypes.c_int * len(dims))(*map(len, dims)),
                                           (ctypes.c_int64 * sum(map(len, dims)))(*itertools.chain(*dims)),
                                           (ctypes.c_int * len(types))(*types))  # fmt: skip


@pytest.fixture(scope="session")
def probe(plugin_build, tmp_path_factory):
    return Probe(plugin_build, tmp_path_factory.mktemp("probe"))


ALL = dict.fromkeys(ATTRIBUTES, 1)
B, L = -1, -2  # run-time dimensions (batch, sequence) by their ids in the probe
DIM, N, G = 64, 16, 2


def inputs_of(attributes, batch=B, length=L, dim=DIM, n=N, g=G):
    """Shapes of the packed inputs of docs/ops.md for these attributes."""
    shapes = [[batch, dim, length], [batch, dim, length], [dim, n], [batch, g, n, length], [batch, g, n, length]]
    extra = {"has_D": [dim], "has_z": [batch, dim, length], "has_delta_bias": [dim],
             "has_initial_state": [batch, dim, n]}  # fmt: skip
    return shapes + [extra[name] for name in ATTRIBUTES[1:] if attributes.get(name)]


def types_of(attributes, t):
    activation = {"has_D": False, "has_z": True, "has_delta_bias": False, "has_initial_state": False}
    return [t, t, F32, t, t] + [t if activation[n] else F32 for n in ATTRIBUTES[1:] if attributes.get(n)]


def test_creator_is_what_the_onnx_parser_looks_up(probe):
    kind, name, version, namespace, fields = probe.info.split("|")
    assert probe.count == 1
    assert (kind, name, version, namespace) == ("PLUGIN CREATOR_V3ONE", "SelectiveScan", "1", "")
    # The parser hands over exactly the node attributes named here, INT ones as one kINT32.
    schema_attributes = sorted(_selective_scan().attributes)
    assert sorted(f.split(":")[0] for f in fields.split(",")) == schema_attributes
    assert {f.split(":", 1)[1] for f in fields.split(",")} == {f"{KINT32}:1"}


@pytest.mark.parametrize("values", list(itertools.product([0, 1], repeat=5)))
def test_attributes_round_trip_through_serialization(probe, values):
    fields = dict(zip(ATTRIBUTES, values))
    plugin = probe.create(fields)
    assert plugin and probe.lib.probe_capabilities(plugin) == 7  # core, build, runtime
    assert probe.serialized(plugin) == fields
    restored = ctypes.c_void_p(probe.lib.probe_deserialize(plugin))  # what an engine's deserialization creates
    assert restored and probe.serialized(restored) == fields
    probe.lib.probe_destroy(restored)
    probe.lib.probe_destroy(plugin)


def test_missing_attributes_take_the_onnx_default(probe):
    plugin = probe.create({"has_z": 1})
    assert probe.serialized(plugin) == {**dict.fromkeys(ATTRIBUTES, 0), "has_z": 1}
    probe.lib.probe_destroy(plugin)


@pytest.mark.parametrize("fields, types, message", [
    ({"has_D": 2}, {}, "attribute has_D must be 0 or 1, got 2"),
    ({"delta_softplus": -1}, {}, "attribute delta_softplus must be 0 or 1, got -1"),
    ({"has_z": 1}, {"has_z": KFLOAT32}, "attribute has_z must be a single int (0 or 1)"),
    ({"bias": 1}, {}, "unknown attribute 'bias'"),
])  # fmt: skip
def test_bad_attributes_are_refused_with_a_message(probe, fields, types, message):
    assert probe.create(fields, types) is None
    assert probe.error == f"mamba.SelectiveScan (node 'scan_node'): {message}"


def test_int64_attributes_are_accepted(probe):
    plugin = probe.create({"has_D": 1, "delta_softplus": 1}, {"has_D": KINT64, "delta_softplus": KINT64})
    assert probe.serialized(plugin)["has_D"] == 1 and probe.serialized(plugin)["delta_softplus"] == 1
    probe.lib.probe_destroy(plugin)


@pytest.mark.parametrize("values", list(itertools.product([0, 1], repeat=4)))
def test_output_shapes_follow_the_contract(probe, values):
    attributes = {"delta_softplus": 1, **dict(zip(ATTRIBUTES[1:], values))}
    plugin = probe.create(attributes)
    status, (y, final_state) = probe.output_shapes(plugin, inputs_of(attributes))
    assert status == 0, probe.error
    assert y == [B, DIM, L]  # u's dimension expressions: [batch, dim, L]
    assert final_state == [B, DIM, N]  # [batch, dim, N], N from A
    probe.lib.probe_destroy(plugin)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.__setitem__(3, [B, G, N]), "B must have shape [batch, G, N, L] (rank 4), got rank 3"),
    (lambda s: s.__setitem__(4, [B, G, 8, L]), "C must have shape [batch, G, N, L] with N = 16 (from A), got 8"),
    (lambda s: s.__setitem__(2, [32, N]), "A must have shape [dim, N] with dim = 64 (from u), got 32"),
    (lambda s: s.__setitem__(5, [65]), "D must have shape [dim] with dim = 64 (from u), got 65"),
    (lambda s: s.__setitem__(8, [B, DIM, 8]), "initial_state must have shape [batch, dim, N] with N = 16"),
    (lambda s: s.pop(), "expected 9 inputs (u, delta, A, B, C, D, z, delta_bias, initial_state)"),
])  # fmt: skip
def test_shape_errors_name_the_input_and_expected_shape(probe, change, message):
    plugin = probe.create(ALL)
    shapes = inputs_of(ALL)
    change(shapes)
    status, _ = probe.output_shapes(plugin, shapes)
    assert status != 0 and message in probe.error and "node 'scan_node'" in probe.error
    probe.lib.probe_destroy(plugin)


def test_groups_must_divide_dim(probe):
    plugin = probe.create({})
    status, _ = probe.output_shapes(plugin, inputs_of({}, g=3))
    assert status != 0 and "dim (64, from u) must be a multiple of G (3, from B)" in probe.error
    probe.lib.probe_destroy(plugin)


@pytest.mark.parametrize("t", [F32, F16, BF16])
def test_output_types_are_t_and_float32(probe, t):
    plugin = probe.create(ALL)
    assert probe.output_types(plugin, types_of(ALL, t)) == (0, [t, F32])
    probe.lib.probe_destroy(plugin)


@pytest.mark.parametrize("index, bad, message", [
    (1, F32, "delta must be float16 (like u), got float32"),
    (2, F16, "A must be float32, got float16"),
    (6, BF16, "z must be float16 (like u), got bfloat16"),
    (8, F16, "initial_state must be float32, got float16"),
    (0, I32, "u must be float32, float16 or bfloat16, got int32"),
])  # fmt: skip
def test_type_errors_name_the_input(probe, index, bad, message):
    plugin = probe.create(ALL)
    types = types_of(ALL, F16)
    types[index] = bad
    status, _ = probe.output_types(plugin, types)
    assert status != 0 and message in probe.error
    probe.lib.probe_destroy(plugin)


@pytest.mark.parametrize("t", [F32, F16, BF16])
def test_supported_formats_are_linear_t_and_float32(probe, t):
    plugin = probe.create(ALL)
    want = types_of(ALL, t) + [t, F32]  # inputs, then y and final_state
    for pos in range(len(want)):
        for candidate in (F32, F16, BF16, I8, I32):
            types = list(want)
            types[pos] = candidate
            expected = candidate in (F32, F16, BF16) if pos == 0 else candidate == want[pos]
            assert probe.supports(plugin, pos, types) == expected, (pos, candidate)
        formats = [LINEAR] * len(want)
        formats[pos] = CHW2
        assert not probe.supports(plugin, pos, want, formats)
    probe.lib.probe_destroy(plugin)


def test_configure_checks_the_profile_against_the_kernels_limits(probe):
    plugin = probe.create(ALL)
    types = types_of(ALL, F32)
    runtime = inputs_of(ALL)
    assert probe.configure(plugin, runtime, inputs_of(ALL, batch=8, length=512), types) == 0, probe.error
    too_wide = inputs_of(ALL, n=257)  # the CUDA kernels take dstate <= 256
    assert probe.configure(plugin, too_wide, inputs_of(ALL, batch=8, length=512, n=257), types) != 0
    assert "dstate must be <= 256" in probe.error
    too_many = inputs_of(ALL, batch=2**25, length=1)  # batch * dim = 2^31
    assert probe.configure(plugin, runtime, too_many, types) != 0 and "batch * dim must be < 2^31" in probe.error
    probe.lib.probe_destroy(plugin)


def test_shape_change_checks_run_time_dimensions(probe):
    plugin = probe.create(ALL)
    types = types_of(ALL, F16)
    assert probe.shape_change(plugin, inputs_of(ALL, batch=3, length=1), types) == 0, probe.error  # decode
    shapes = inputs_of(ALL, batch=3, length=5)
    shapes[8] = [2, DIM, N]
    assert probe.shape_change(plugin, shapes, types) != 0
    assert "initial_state must have shape [batch, dim, N] with batch = 3 (from u), got 2" in probe.error
    probe.lib.probe_destroy(plugin)


# ---------------------------------------------------------------------------------------
# Real parses and builds (TensorRT or TensorRT-RTX importable; not in CI)


@pytest.fixture(scope="module")
def trt():
    module = tensorrt_or_none()
    if module is None:
        pytest.skip(NO_TENSORRT)
    try:
        load_plugin(module)
    except MissingDependencyError as e:
        pytest.skip(f"the plugin library is not built: {e}")
    return module


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_parser_maps_every_scan_to_the_plugin(trt, tmp_path, dtype):
    onnx_path = export_onnx(random_model(), tmp_path, dtype=dtype)
    _, network, _, layers = parse_network(trt, make_logger(trt), onnx_path, CONFIG.n_layer)
    t = {"fp32": trt.float32, "fp16": trt.float16, "bf16": trt.bfloat16}[dtype]
    nodes = [n for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "SelectiveScan"]
    assert [layer.name for layer in layers] == [n.name for n in nodes]
    for layer, node in zip(layers, nodes):
        assert layer.num_inputs == len(node.input) and layer.num_outputs == 2
        y, state = layer.get_output(0), layer.get_output(1)
        assert (y.dtype, state.dtype) == (t, trt.float32)
        assert tuple(y.shape) == (-1, CONFIG.d_inner, -1) and tuple(state.shape) == (-1, CONFIG.d_inner, CONFIG.d_state)


def test_build_engine_writes_plan_sidecar_and_timing_cache(trt, export_dir, tmp_path):
    plan, cache = tmp_path / "model.plan", tmp_path / "timing.cache"
    assert build_engine(export_dir, plan, profiles=SMALL, timing_cache=cache) == plan
    assert b"SelectiveScan" in plan.read_bytes()
    assert cache.is_file() == (trt.__name__ == "tensorrt")  # TensorRT-RTX has no timing cache
    info = read_engine_info(plan)
    assert info["export"] == json.loads((export_dir / "export.json").read_text())
    assert info["profiles"] == {"prefill": {"index": 0, "batch": [1, 2, 4], "sequence": [1, 8, 32]},
                                "decode": {"index": 1, "batch": [1, 2, 4], "sequence": [1, 1, 1]}}  # fmt: skip
    assert info["plugin"] == {"name": "SelectiveScan", "version": "1", "namespace": ""}
    assert info["tensorrt"]["version"] == trt.__version__
    with pytest.raises(MambaExportError, match="already exists"):
        build_engine(export_dir, plan, profiles=SMALL)
    before = plan.stat().st_mtime_ns
    build_engine(export_dir, plan, profiles=SMALL, timing_cache=cache, overwrite=True)
    assert plan.stat().st_mtime_ns != before


def test_cli_builds_an_engine(trt, capsys, export_dir, tmp_path):
    plan = tmp_path / "cli.plan"
    code, out, _ = run_cli(capsys, "build-engine", str(export_dir / "model.onnx"), "-o", str(plan), "--max-batch", "2",
                           "--max-seq", "16", "-q")  # fmt: skip
    assert code == 0 and out.strip() == str(plan)
    assert read_engine_info(plan)["profiles"]["prefill"]["sequence"] == [1, 16, 16]


def test_bad_node_attribute_is_a_parser_error_naming_the_node(trt, export_dir, tmp_path):
    broken = Path(shutil.copytree(export_dir, tmp_path / "broken"))
    proto = onnx.load(str(broken / "model.onnx"))
    node = next(n for n in proto.graph.node if n.op_type == "SelectiveScan")
    next(a for a in node.attribute if a.name == "has_D").i = 2
    onnx.save(proto, str(broken / "model.onnx"))
    with pytest.raises(MambaExportError, match=f"node '{node.name}' \\(SelectiveScan\\)"):
        build_engine(broken, tmp_path / "m.plan", profiles=SMALL)


# ---------------------------------------------------------------------------------------
# Running engines (TensorRT and a GPU it supports)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="running an engine needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_trt_backend_matches_eager(trt, tmp_path, dtype):
    reference = random_model()
    model = reference if dtype == "fp32" else copy.deepcopy(reference).to(torch.float16)
    backend = open_backend("trt", model, export_dir=tmp_path)
    errors = compare(backend, TorchBackend(reference), batch=2, prompt_len=16, decode_steps=6,
                     vocab_size=CONFIG.vocab_size)  # fmt: skip
    rel_tol, state_tol, greedy_tol = TOLERANCES["float32" if dtype == "fp32" else "float16"]
    assert errors["max_rel_err"] <= rel_tol and errors["state_max_rel_err"] <= state_tol, errors
    assert errors["greedy_match"] >= greedy_tol, errors
    assert all(t.is_cuda for pair in backend.empty_state(1) for t in pair)  # states stay on the GPU
    assert os.path.isfile(sidecar_path(tmp_path / "model.plan"))
