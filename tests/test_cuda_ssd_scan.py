"""The CUDA kernel of torch.ops.mamba.ssd_scan (plugins/kernels/cuda through ctypes) against
the chunked reference, on a GPU. Needs libmamba_kernels.so (`make native`, or
MAMBA_EXPORT_KERNELS_LIBRARY); benchmarks/kernels/check_and_time.py checks many more shapes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mamba_export.ops import ContractError, ssd_scan_reference
from mamba_export.ops.cuda import launch, load_library, ssd_params
from scan_inputs import rel_err, ssd_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

Y_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # docs/ops.md
STATE_TOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}
OPTIONAL = ("D", "z", "dt_bias", "initial_state")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    """The tests are about the kernels: a missing library is a failure, not a fallback."""
    load_library()


def on_cuda(inputs: dict) -> dict:
    return {k: v.cuda() if v is not None else None for k, v in inputs.items()}


def positive_dt(inputs: dict) -> dict:
    """Without softplus dt is dt (+ bias) itself: keep it positive, or the state grows."""
    inputs["dt"] = inputs["dt"].abs()
    if inputs["dt_bias"] is not None:
        inputs["dt_bias"] = inputs["dt_bias"].abs()
    return inputs


def run_kernel(inputs: dict, dtype: torch.dtype, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """The library called directly, outputs poisoned with NaN: every element must be written."""
    x = inputs["x"]
    batch, _, heads, head_dim = x.shape
    y = torch.full_like(x, math.nan)
    state = torch.full((batch, heads, head_dim, inputs["B"].shape[3]), math.nan, device=x.device)
    launch(load_library(), ssd_params(**inputs, **options, y=y, final_state=state), x.device)
    torch.cuda.synchronize()
    return y, state


def assert_matches(inputs: dict, dtype: torch.dtype, **options) -> None:
    """CPU inputs: the kernel runs on copies on the GPU, the reference on the CPU."""
    options = dict(dt_softplus=True, dt_min=0.0, dt_max=None) | options
    y, state = run_kernel(on_cuda(inputs), dtype, **options)
    ref_y, ref_state = ssd_scan_reference(**inputs, **options)
    assert y.dtype == dtype and state.dtype == torch.float32
    assert not y.isnan().any() and not state.isnan().any(), "unwritten outputs"
    assert rel_err(y.cpu(), ref_y) <= Y_TOL[dtype]
    assert rel_err(state.cpu(), ref_state) <= STATE_TOL[dtype]


# batch, L, heads, head_dim, d_state, groups: decode, chunk tails, odd sizes, groups, every
# d_state bucket (64, 128, 256), head dims past one 64-column tile.
SHAPES = [
    (2, 1, 4, 16, 16, 1),
    (1, 1, 3, 5, 200, 3),
    (2, 0, 2, 8, 16, 1),
    (1, 2, 2, 8, 16, 2),
    (1, 63, 3, 64, 64, 1),
    (2, 65, 4, 32, 128, 2),
    (1, 200, 6, 24, 32, 3),
    (2, 130, 2, 80, 128, 1),
    (1, 97, 2, 7, 5, 1),
    (1, 150, 2, 64, 256, 2),
    (3, 300, 4, 16, 100, 4),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, dtype):
    assert_matches(ssd_inputs(*shape, dtype=dtype, seed=sum(shape)), dtype)


@pytest.mark.parametrize("present", itertools.product([False, True], repeat=4), ids=str)
@pytest.mark.parametrize("softplus", [False, True])
def test_optional_inputs(present, softplus):
    flags = {f"has_{k}": p for k, p in zip(OPTIONAL, present)}
    inputs = ssd_inputs(2, 140, 4, 32, 64, 2, **flags, seed=3)
    assert_matches(inputs if softplus else positive_dt(inputs), torch.float32, dt_softplus=softplus)


@pytest.mark.parametrize("length", [1, 300])
def test_dt_clamp(length):
    inputs = ssd_inputs(1, length, 4, 16, 32, seed=4)
    assert_matches(inputs, torch.float32, dt_min=0.2, dt_max=0.6)


@pytest.mark.parametrize("segment", ["1", "3"])
def test_segments(segment, monkeypatch):
    """Sequences cut into segments scanned in parallel and chained (MAMBA_KERNELS_SSD_SEGMENT
    chunks of 64 steps each), with a carried initial state."""
    monkeypatch.setenv("MAMBA_KERNELS_SSD_SEGMENT", segment)
    assert_matches(ssd_inputs(2, 700, 3, 64, 128, seed=6), torch.float32)
    assert_matches(ssd_inputs(1, 450, 2, 80, 64, seed=7, dtype=torch.bfloat16), torch.bfloat16)


def test_long_sequence_small_dt():
    """Trained models have dt ~ 1e-3..1e-2: errors must not accumulate over long sequences."""
    x = ssd_inputs(1, 4000, 2, 32, 64, seed=5)
    x["dt_bias"] = x["dt_bias"] - 4.0
    x["A"] = x["A"] * 0.1
    assert_matches(x, torch.float32)


def test_state_in_place():
    """final_state may be initial_state's buffer (a generation loop's state)."""
    for length in (1, 200):
        inputs = on_cuda(ssd_inputs(2, length, 3, 16, 64, seed=8))
        ref_y, ref_state = ssd_scan_reference(**inputs, dt_softplus=True)
        state = inputs["initial_state"].clone()
        y = torch.empty_like(inputs["x"])
        params = ssd_params(**(inputs | {"initial_state": state}), dt_softplus=True, dt_min=0.0, dt_max=None, y=y,
                            final_state=state)
        launch(load_library(), params, y.device)
        assert rel_err(y, ref_y) <= 1e-5 and rel_err(state, ref_state) <= 1e-5


def test_torch_op_non_contiguous_inputs():
    x = on_cuda(ssd_inputs(2, 150, 4, 32, 64, 2, seed=9))
    y, state = torch.ops.mamba.ssd_scan(**x, dt_softplus=True)
    strided = dict(x)
    for k in ("x", "z", "B"):
        strided[k] = strided[k].transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided["x"].is_contiguous()
    y2, state2 = torch.ops.mamba.ssd_scan(**strided, dt_softplus=True)
    assert torch.equal(y, y2) and torch.equal(state, state2)


def test_cuda_graph_capture():
    """The op enqueues without host syncs: a captured graph replays on new inputs."""
    static = on_cuda(ssd_inputs(1, 900, 4, 64, 128, seed=1))
    torch.ops.mamba.ssd_scan(**static, dt_softplus=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, state = torch.ops.mamba.ssd_scan(**static, dt_softplus=True)
    fresh = ssd_inputs(1, 900, 4, 64, 128, seed=2)
    for k, v in fresh.items():
        static[k].copy_(v)
    graph.replay()
    ref_y, ref_state = ssd_scan_reference(**fresh, dt_softplus=True)
    assert rel_err(y.cpu(), ref_y) <= 1e-5 and rel_err(state.cpu(), ref_state) <= 1e-5


def test_rejects_mixed_devices():
    x = on_cuda(ssd_inputs(1, 10, 2, 4, 8, seed=0))
    x["A"] = x["A"].cpu()
    with pytest.raises(ContractError, match="A is on cpu"):
        torch.ops.mamba.ssd_scan(**x)


def test_dstate_beyond_kernel_limit_falls_back():
    """Past the kernels' limit (dstate <= 256) the op still computes, through the reference."""
    inputs = ssd_inputs(1, 3, 2, 4, 257, seed=0)
    with pytest.warns(UserWarning, match="dstate must be <= 256"):
        y, state = torch.ops.mamba.ssd_scan(**on_cuda(inputs), dt_softplus=True)
    ref_y, ref_state = ssd_scan_reference(**inputs, dt_softplus=True)
    assert rel_err(y.cpu(), ref_y) <= 1e-5 and rel_err(state.cpu(), ref_state) <= 1e-5
