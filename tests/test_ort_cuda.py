"""mamba.SelectiveScan on ONNX Runtime's CUDA execution provider (plugins/ort/selective_scan_cuda.cc)
and the `ort-cuda` backend.

On a GPU with onnxruntime-gpu: single nodes against the reference over the shapes, types and
optional inputs of tests/test_ort_selective_scan.py (whose model builders are reused), the
contract errors, and a whole model against eager PyTorch with every node on the GPU. Here
(no GPU): why ort-cuda is unavailable, the CUDA-enabled library on a machine without CUDA,
and the IO binding OrtBackend shares between its CPU and CUDA forms.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

import test_ort_selective_scan as single  # skips this module without onnxruntime or onnx
import test_ort_ssd_scan as ssd
from mamba_export import MambaExportError, MissingDependencyError, ort_session
from mamba_export.backends.factory import backend_unavailable
from mamba_export.backends.ort_backend import OrtBackend
from mamba_export.backends.torch_backend import TorchBackend
from mamba_export.export.onnx_export import export_onnx
from mamba_export.models import Mamba1Config, Mamba1LMHeadModel, Mamba2Config, build_model
from mamba_export.native import custom_op_library, kernels_library
from mamba_export.ops import selective_scan_reference
from mamba_export.runtime import ort as runtime
from mamba_export.validate import TOLERANCES, compare
from ort_ops import DTYPES, ELEMENT_TYPES, STATE_TOLERANCE, Y_TOLERANCE, poisoned
from scan_inputs import rel_err, scan_inputs

ort = single.ort
CUDA = "CUDAExecutionProvider"
HAS_GPU = torch.cuda.is_available() and CUDA in ort.get_available_providers()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and onnxruntime-gpu")
CONFIG = Mamba1Config(d_model=64, n_layer=2, vocab_size=96)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Mamba1LMHeadModel(CONFIG).eval()


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    """The model exported in float32 and float16 (exported once per run: it takes seconds)."""
    root = tmp_path_factory.mktemp("exports")
    return {dtype: export_onnx(model, root / dtype, dtype=dtype).parent for dtype in ("float32", "float16")}


def within_tolerances(errors: dict, dtype: str) -> bool:
    rel, state, greedy = TOLERANCES[dtype]
    return errors["max_rel_err"] <= rel and errors["state_max_rel_err"] <= state and errors["greedy_match"] >= greedy


def cuda_build() -> bool:
    try:
        return CUDA in runtime.custom_op_providers()
    except MissingDependencyError:
        return False


# --- here and everywhere: availability, the CUDA-enabled library without CUDA, IO binding ---

def test_ort_cuda_needs_a_cuda_device_argument():
    assert backend_unavailable("ort-cuda", "cpu") == "ort-cuda runs on CUDA; use --device cuda"
    assert backend_unavailable("ort", "cuda") == "ort runs on the CPU; use ort-cuda for the GPU"


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this onnxruntime has the CUDA provider")
def test_ort_cuda_unavailable_without_onnxruntime_gpu():
    reason = backend_unavailable("ort-cuda")
    assert reason.startswith(f"this onnxruntime ({ort.__version__}) has no CUDA execution provider")
    assert "pip install onnxruntime-gpu" in reason


@pytest.fixture
def ort_with_cuda_provider(monkeypatch):
    """This onnxruntime as if it were onnxruntime-gpu, to reach the checks after that one."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])


def test_ort_cuda_unavailable_with_a_cpu_only_library(ort_with_cuda_provider, monkeypatch):
    monkeypatch.setattr(runtime, "custom_op_providers", lambda: ["CPUExecutionProvider"])
    assert backend_unavailable("ort-cuda").startswith("the custom-op library was built without CUDA")


def test_ort_cuda_unavailable_without_the_library(ort_with_cuda_provider, monkeypatch, tmp_path):
    monkeypatch.setenv("MAMBA_EXPORT_ORT_LIBRARY", str(tmp_path / "missing.so"))
    assert backend_unavailable("ort-cuda") == f"MAMBA_EXPORT_ORT_LIBRARY={tmp_path / 'missing.so'}: no such file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
def test_ort_cuda_unavailable_without_a_gpu(ort_with_cuda_provider, monkeypatch, exports):
    monkeypatch.setattr(runtime, "custom_op_providers", lambda: ["CPUExecutionProvider", CUDA])
    assert backend_unavailable("ort-cuda") == "no CUDA device visible to PyTorch"
    with pytest.raises(MissingDependencyError, match="backend ort-cuda: no CUDA device visible to PyTorch"):
        OrtBackend(exports["float32"], name="ort-cuda", device="cuda")


@pytest.mark.skipif(not cuda_build(), reason="the custom-op library is built without CUDA")
@pytest.mark.skipif(not shutil.which("readelf"), reason="readelf (binutils) is not installed")
def test_cuda_build_loads_and_runs_the_cpu_op_without_cuda_libraries():
    """A CUDA build needs libmamba_kernels.so, found next to it through RUNPATH $ORIGIN, and
    no CUDA library (the kernels link the runtime statically, the driver only when they run)."""
    library = Path(custom_op_library())
    needed = subprocess.run(["readelf", "-d", str(library), kernels_library()], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    assert "[libmamba_kernels.so]" in needed and "[$ORIGIN]" in needed
    assert not re.search(r"NEEDED.*\[lib(cuda|cudart)", needed), needed
    resolved = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=True).stdout
    assert f"libmamba_kernels.so => {library.parent}/" in resolved and "not found" not in resolved
    for shape in [(2, 17, 16, 1, 7), (1, 64, 300, 2, 33)]:  # d_state 300: past the CUDA kernels' limit
        single.check_against_reference(shape, torch.float32, frozenset(single.OPTIONAL), delta_softplus=True)


def test_cpu_only_build(tmp_path):
    """MAMBA_EXPORT_CUDA=OFF: the library has the CPU op alone, links no CUDA kernels, and runs."""
    root = Path(__file__).parents[1]
    headers = sorted(root.glob("build/*/onnxruntime-headers/usr/include/onnxruntime/onnxruntime_cxx_api.h"))
    if not shutil.which("cmake") or not headers:
        pytest.skip("needs cmake and the ONNX Runtime headers of an earlier build (make native)")
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(root / "plugins"), "-B", str(build), "-DMAMBA_EXPORT_CUDA=OFF",
                    f"-DORT_INCLUDE_DIR={headers[0].parent}"], check=True, capture_output=True)  # fmt: skip
    subprocess.run(["cmake", "--build", str(build), "-j2", "--target", "mamba_ort"], check=True, capture_output=True)
    library = build / "ort" / "libmamba_ort.so"
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert "libmamba_kernels" not in dynamic
    script = ("import test_ort_selective_scan as t, torch; from mamba_export.runtime.ort import custom_op_providers; "
              "print(custom_op_providers()); "
              "t.check_against_reference((2, 17, 16, 1, 7), torch.float16, frozenset(t.OPTIONAL), True)")  # fmt: skip
    env = {**os.environ, "MAMBA_EXPORT_ORT_LIBRARY": str(library),
           "PYTHONPATH": os.pathsep.join([str(root / "tests"), str(root)])}  # fmt: skip
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "['CPUExecutionProvider']"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_ort_backend_binds_tensors_on_the_cpu(model, exports, dtype):
    """The IO binding the CUDA form uses, run on the CPU: prefill then decode match eager."""
    backend = OrtBackend(exports[dtype])
    state = backend.empty_state(3)
    assert [(tuple(c.shape), c.dtype, tuple(s.shape), s.dtype) for c, s in state] == \
        [((3, CONFIG.d_inner, CONFIG.d_conv - 1), getattr(torch, dtype), (3, CONFIG.d_inner, CONFIG.d_state),
          torch.float32)] * CONFIG.n_layer  # fmt: skip
    errors = compare(backend, TorchBackend(model), batch=3, prompt_len=9, decode_steps=4, vocab_size=96)
    assert within_tolerances(errors, dtype), errors


def test_ort_backend_rejects_a_state_of_another_batch_or_depth(exports):
    backend = OrtBackend(exports["float32"])
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(MambaExportError, match=re.escape("past_conv_state.0 must have shape [batch=2, 128, 3], "
                                                         "got [3, 128, 3]")):  # fmt: skip
        backend.forward(ids, backend.empty_state(3))
    with pytest.raises(MambaExportError, match="expected the state of 2 layers, got 1"):
        backend.forward(ids, backend.empty_state(2)[:1])


def test_node_placement_reads_the_profile(exports, tmp_path):
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "profile")
    backend = OrtBackend(exports["float32"], session_options=options)
    backend.forward(torch.zeros(1, 4, dtype=torch.long), backend.empty_state(1))
    placement = runtime.node_placement(backend.session.end_profiling())
    ops = sorted(op for op, _ in placement.values())
    assert ops.count("SelectiveScan") == CONFIG.n_layer and ops.count("Conv") == CONFIG.n_layer
    assert {where for _, where in placement.values()} == {"CPUExecutionProvider"}
    assert runtime.off_provider(placement, "CPUExecutionProvider") == []
    assert len(runtime.off_provider(placement)) == len(placement)  # none ran on CUDA


def test_cuda_provider_gets_float32_arithmetic_unless_asked_otherwise():
    """ORT's CUDA provider defaults to TF32 products; every session of ours turns that off, and
    leaves a user's explicit choice and the other providers alone."""
    assert runtime.float32_cuda(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    chosen = ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "1"})
    assert runtime.float32_cuda([chosen]) == [chosen]
    assert runtime.float32_cuda([("CUDAExecutionProvider", {"device_id": "1"})]) == [
        ("CUDAExecutionProvider", {"use_tf32": "0", "device_id": "1"})]


def test_shape_computations_may_stay_on_the_host_but_nothing_else(tmp_path):
    """Mamba-2's head reshapes take their target shapes from Concat(Shape(x), constants): ORT keeps
    those nodes on the CPU on purpose, and off_provider must not count them; anything reading a
    tensor's values (or a copy between providers) still counts."""
    cfg = Mamba2Config(d_model=64, n_layer=2, vocab_size=96, d_state=16, headdim=16, ngroups=2, chunk_size=8)
    model = onnx.load(str(export_onnx(build_model(cfg).eval(), tmp_path)))
    shapes = runtime.shape_computations(model)
    by_name = {n.name: n for n in model.graph.node}
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    shape_concats = [n.name for n in concats if n.name in shapes]
    assert shape_concats and len(shape_concats) < len(concats)  # the conv state's Concat reads values
    readers = {c.op_type for n in shape_concats for c in model.graph.node if by_name[n].output[0] in c.input}
    assert readers == {"Reshape"}
    assert not shapes & {n.name for n in model.graph.node if n.op_type in ("SSDScan", "Conv", "MatMul", "Gather")}
    placement = {name: ("Concat", "CPUExecutionProvider") for name in shape_concats}
    placement["node_conv1d"] = ("Conv", "CUDAExecutionProvider")
    assert runtime.off_provider(placement, model=model) == []
    assert len(runtime.off_provider(placement)) == len(shape_concats)  # without the model, all count
    placement["node_cat"] = ("Concat", "CPUExecutionProvider")  # the conv state: values
    placement["copy"] = ("MemcpyToHost", "CUDAExecutionProvider")
    assert runtime.off_provider(placement, model=model) == ["copy (MemcpyToHost on CUDAExecutionProvider)",
                                                            "node_cat (Concat on CPUExecutionProvider)"]


# --- on a GPU ---------------------------------------------------------------------------

def on_gpu(t: torch.Tensor) -> torch.Tensor:
    """A CUDA copy with storage of its own even when it has no elements: ORT refuses to bind
    a null pointer, which data_ptr() is for an empty tensor."""
    buffer = torch.empty(max(t.numel(), 1), dtype=t.dtype, device="cuda")
    return buffer[: t.numel()].view(t.shape).copy_(t)


def cuda_session(model_proto):
    """A session that fails to load unless every node runs on the CUDA provider. It runs on
    ORT's own stream and synchronises at the end of each run (torch's copies to the GPU are
    complete when they return)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort_session(model_proto.SerializeToString(), providers=[CUDA], session_options=options)


def run_scan_on_gpu(session, inputs: dict, y_like, state_shape):
    """ort_ops.run_scan on CUDA: y and final_state, back on the CPU, NaN-poisoned so that
    elements the kernel does not write show; state_shape None: ORT allocates the outputs."""
    binding = session.io_binding()
    device = torch.cuda.current_device()

    def bind(method, tensors):
        for name, t in tensors.items():
            method(name, "cuda", device, ELEMENT_TYPES[t.dtype], list(t.shape), t.untyped_storage().data_ptr())

    kept = {name: on_gpu(t.contiguous()) for name, t in inputs.items() if t is not None}  # alive through the run
    bind(binding.bind_input, kept)
    if state_shape is None:
        for name in ("y", "final_state"):
            binding.bind_output(name, "cuda", device)
        session.run_with_iobinding(binding)
        return None
    outputs = {"y": on_gpu(poisoned(y_like.shape, y_like.dtype)), "final_state": on_gpu(poisoned(state_shape))}
    bind(binding.bind_output, outputs)
    session.run_with_iobinding(binding)
    return outputs["y"].cpu(), outputs["final_state"].cpu()


@pytest.fixture
def on_cuda_provider(monkeypatch):
    """Runs an op's CPU test module (its reference checks, tolerances, poisoned outputs) on the
    CUDA provider: its sessions built by cuda_session (and cached apart from the CPU ones), its
    runs bound to CUDA tensors."""

    def switch(module):
        monkeypatch.setattr(module, "session_for", lambda model, threads=0: cuda_session(model))
        monkeypatch.setattr(module, "session", functools.lru_cache(maxsize=None)(module.session.__wrapped__))
        monkeypatch.setattr(module, "run_scan", run_scan_on_gpu)
        return module

    return switch


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("delta_softplus", [False, True])
@pytest.mark.parametrize("present", single.FLAG_SETS, ids=lambda p: "+".join(sorted(p)) or "none")
def test_gpu_every_optional_input_combination(present, delta_softplus, dtype, on_cuda_provider):
    on_cuda_provider(single).check_against_reference((2, 17, 4, 1, 7), dtype, present, delta_softplus)


GPU_SHAPES = [s for s in single.SHAPES if s[2] <= 256]  # d_state past 256: the CUDA kernels' limit, below


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "b{}_d{}_n{}_g{}_l{}".format(*s))
def test_gpu_shapes(shape, dtype, on_cuda_provider):
    present = frozenset(single.OPTIONAL) if sum(shape) % 2 else frozenset({"z", "delta_bias"})
    on_cuda_provider(single).check_against_reference(shape, dtype, present, delta_softplus=True, seed=sum(shape))


@gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 3, 4, 1, 5), (1, 4, 3, 2, 9)])
def test_gpu_matches_naive_float64(shape, on_cuda_provider):
    on_cuda_provider(single).test_matches_naive_float64(shape, frozenset(single.OPTIONAL))


@gpu
def test_gpu_kernel_limit_is_a_clear_error():
    inputs = scan_inputs(1, 4, 3, 300)
    model = single.scan_model(inputs, {f"has_{n}": 1 for n in single.OPTIONAL})
    with pytest.raises(Exception, match=re.escape("mamba.SelectiveScan: mamba_selective_scan (CUDA): dstate must be "
                                                  "<= 256 (a limit of the CUDA kernel")):  # fmt: skip
        run_scan_on_gpu(cuda_session(model), inputs, inputs["u"], (1, 4, 300))


@gpu
@pytest.mark.parametrize("case", ["B N vs A", "dim % G", "C groups", "initial_state N", "B dtype", "missing input"])
def test_gpu_contract_violations_are_reported(case):
    mutation, message = single.BAD_INPUTS[case]
    inputs, model = single.build_bad(mutation)
    with pytest.raises(Exception, match=re.escape("mamba.SelectiveScan: " + message)):
        run_scan_on_gpu(cuda_session(model), inputs, None, None)


# SSDScan: the CPU module's checks on the CUDA provider (d_state up to the kernel's limit).
SSD_GPU_SHAPES = [s for s in ssd.SHAPES if s[4] <= 256]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dt_softplus", [False, True])
@pytest.mark.parametrize("present", ssd.FLAG_SETS, ids=lambda p: "+".join(sorted(p)) or "none")
def test_gpu_ssd_every_optional_input_combination(present, dt_softplus, dtype, on_cuda_provider):
    on_cuda_provider(ssd).check_against_reference((2, 70, 4, 8, 16, 2), dtype, present, dt_softplus, ssd.CLAMP)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SSD_GPU_SHAPES, ids=lambda s: "b{}_l{}_h{}_p{}_n{}_g{}".format(*s))
def test_gpu_ssd_shapes(shape, dtype, on_cuda_provider):
    on_cuda_provider(ssd).test_shapes(shape, dtype)


@gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1, 1), (2, 5, 3, 4, 3, 1), (1, 9, 4, 2, 5, 2)])
def test_gpu_ssd_matches_naive_float64(shape, on_cuda_provider):
    on_cuda_provider(ssd).test_matches_naive_float64(shape, frozenset(ssd.OPTIONAL), ssd.CLAMP)


@gpu
def test_gpu_ssd_kernel_limit_is_a_clear_error():
    inputs = ssd.make_inputs((1, 3, 2, 4, 300, 1), torch.float32, frozenset(ssd.OPTIONAL), True)
    model = ssd.ssd_model(inputs, ssd.attributes_for(frozenset(ssd.OPTIONAL), True))
    with pytest.raises(Exception, match=re.escape("mamba.SSDScan: ") + ".*a limit of the CUDA kernel"):
        run_scan_on_gpu(cuda_session(model), inputs, inputs["x"], (1, 2, 4, 300))


def cuda_backend(export_dir, tmp_path) -> OrtBackend:
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "profile")
    return OrtBackend(export_dir, name="ort-cuda", device="cuda", session_options=options)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_model_matches_eager_with_every_node_on_cuda(model, exports, dtype, tmp_path):
    backend = cuda_backend(exports[dtype], tmp_path)
    errors = compare(backend, TorchBackend(model), batch=3, prompt_len=33, decode_steps=6, vocab_size=96)
    assert within_tolerances(errors, dtype), errors
    logits, state = backend.forward(torch.zeros(3, 1, dtype=torch.long), backend.empty_state(3))
    assert logits.is_cuda and all(t.is_cuda for pair in state for t in pair)  # nothing comes back to the host
    placement = runtime.node_placement(backend.session.end_profiling())
    assert [op for op, _ in placement.values()].count("SelectiveScan") == CONFIG.n_layer
    assert runtime.off_provider(placement) == []


@gpu
def test_gpu_model_on_another_torch_stream(model, exports, tmp_path):
    """A caller on a stream of its own, and one on the session's stream, get the same ordering."""
    backend = cuda_backend(exports["float32"], tmp_path)
    for stream in (torch.cuda.Stream(), backend._stream):
        with torch.cuda.stream(stream):
            errors = compare(backend, TorchBackend(model), batch=2, prompt_len=64, decode_steps=4, vocab_size=96)
        assert within_tolerances(errors, "float32"), errors


@gpu
def test_gpu_mamba2_model_matches_eager_with_every_node_on_cuda(tmp_path):
    """Every node but the shape computations of the head reshapes (ORT keeps those on the CPU)."""
    cfg = Mamba2Config(d_model=64, n_layer=2, vocab_size=96, d_state=16, headdim=16, ngroups=2, chunk_size=8)
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    path = export_onnx(model, tmp_path / "mamba2")
    backend = cuda_backend(path.parent, tmp_path)
    errors = compare(backend, TorchBackend(model), batch=2, prompt_len=40, decode_steps=5, vocab_size=96)
    assert within_tolerances(errors, "float32"), errors
    placement = runtime.node_placement(backend.session.end_profiling())
    assert [op for op, _ in placement.values()].count("SSDScan") == cfg.n_layer
    assert runtime.off_provider(placement, model=onnx.load(str(path))) == []
