"""The CUDA kernel of torch.ops.mamba.selective_scan (plugins/kernels/cuda through ctypes)
against the reference, on a GPU. Needs libmamba_kernels.so (`make native`, or
MAMBA_EXPORT_KERNELS_LIBRARY); benchmarks/kernels/check_and_time.py checks many more shapes."""

from __future__ import annotations

import itertools

import pytest
import torch

from mamba_export.ops import ContractError, selective_scan_reference
from mamba_export.ops.cuda import load_library
from scan_inputs import rel_err, scan_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

Y_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # docs/ops.md
STATE_TOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}
OPTIONAL = ("D", "z", "delta_bias", "initial_state")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    """The tests are about the kernels: a missing library is a failure, not a fallback."""
    load_library()


def on_cuda(inputs: dict) -> dict:
    return {k: v.cuda() if v is not None else None for k, v in inputs.items()}


def positive_dt(inputs: dict) -> dict:
    """Without softplus dt is delta (+ bias) itself: keep it positive, or the state overflows."""
    inputs["delta"] = inputs["delta"].abs()
    if inputs["delta_bias"] is not None:
        inputs["delta_bias"] = inputs["delta_bias"].abs()
    return inputs


def assert_matches(inputs: dict, softplus: bool, dtype: torch.dtype) -> None:
    """CPU inputs: the op runs on copies on the GPU, the reference on the CPU."""
    y, state = torch.ops.mamba.selective_scan(**on_cuda(inputs), delta_softplus=softplus)
    ref_y, ref_state = selective_scan_reference(**inputs, delta_softplus=softplus)
    assert y.is_cuda and y.dtype == dtype and state.dtype == torch.float32
    assert rel_err(y.cpu(), ref_y) <= Y_TOL[dtype]
    assert rel_err(state.cpu(), ref_state) <= STATE_TOL[dtype]


# batch, dim, L, N, groups: decode, tails, odd sizes, groups, every d_state bucket.
SHAPES = [
    (1, 64, 1, 16, 1),
    (4, 48, 1, 33, 3),
    (2, 16, 0, 16, 1),
    (1, 40, 333, 16, 1),
    (2, 30, 257, 16, 3),
    (3, 7, 65, 5, 7),
    (8, 96, 64, 16, 2),
    (1, 12, 100, 32, 2),
    (2, 10, 90, 64, 1),
    (1, 6, 70, 100, 2),
    (2, 4, 40, 256, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, dtype):
    assert_matches(scan_inputs(*shape, dtype=dtype, seed=sum(shape)), True, dtype)


@pytest.mark.parametrize("present", itertools.product([False, True], repeat=4), ids=str)
@pytest.mark.parametrize("softplus", [False, True])
def test_optional_inputs(present, softplus):
    flags = {f"has_{k}": p for k, p in zip(OPTIONAL, present)}
    inputs = scan_inputs(2, 24, 130, 16, 2, **flags, seed=3)
    assert_matches(inputs if softplus else positive_dt(inputs), softplus, torch.float32)


# MAMBA_KERNELS_SCAN_PLAN values: the prefill tilings for dstate <= 16 (the shapes here are
# small enough that by default they all take the first).
TILINGS = ["chained", "fused_r8", "fused"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("plan", TILINGS)
def test_every_tiling(plan, dtype, monkeypatch):
    monkeypatch.setenv("MAMBA_KERNELS_SCAN_PLAN", plan)
    assert_matches(scan_inputs(2, 40, 300, 16, 2, dtype=dtype, seed=11), True, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("plan", ["decode4", "decode8"])
@pytest.mark.parametrize("shape", [(3, 40, 1, 16, 2), (2, 9, 1, 12, 1)], ids=lambda s: "x".join(map(str, s)))
def test_every_decode_tiling(shape, plan, dtype, monkeypatch):
    """4 or 8 states per lane; full lanes (16 states) and a partly empty one (12)."""
    monkeypatch.setenv("MAMBA_KERNELS_SCAN_PLAN", plan)
    assert_matches(scan_inputs(*shape, dtype=dtype, seed=13), True, dtype)


@pytest.mark.parametrize("plan", TILINGS)
def test_long_sequence_small_dt(plan, monkeypatch):
    """Trained models have dt ~ 1e-3..1e-2: errors must not accumulate over long sequences."""
    monkeypatch.setenv("MAMBA_KERNELS_SCAN_PLAN", plan)
    x = scan_inputs(1, 64, 4000, 16, seed=5)
    x["delta_bias"] = x["delta_bias"] - 4.0
    assert_matches(x, True, torch.float32)


def test_non_contiguous_inputs():
    x = scan_inputs(2, 32, 200, 16, 2, seed=9)
    y, state = torch.ops.mamba.selective_scan(**on_cuda(x), delta_softplus=True)
    strided = on_cuda(x)
    for k in ("u", "z", "B"):
        strided[k] = strided[k].transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not strided["u"].is_contiguous()
    y2, state2 = torch.ops.mamba.selective_scan(**strided, delta_softplus=True)
    assert torch.equal(y, y2) and torch.equal(state, state2)


def test_cuda_graph_capture():
    """The op enqueues without host syncs: a captured graph replays on new inputs."""
    static = on_cuda(scan_inputs(2, 32, 150, 16, seed=1))
    torch.ops.mamba.selective_scan(**static, delta_softplus=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, state = torch.ops.mamba.selective_scan(**static, delta_softplus=True)
    fresh = scan_inputs(2, 32, 150, 16, seed=2)
    for k, v in fresh.items():
        static[k].copy_(v)
    graph.replay()
    ref_y, ref_state = selective_scan_reference(**fresh, delta_softplus=True)
    assert rel_err(y.cpu(), ref_y) <= 1e-5 and rel_err(state.cpu(), ref_state) <= 1e-5


def test_rejects_mixed_devices():
    x = on_cuda(scan_inputs(1, 8, 10, 4, seed=0))
    x["A"] = x["A"].cpu()
    with pytest.raises(ContractError, match="A is on cpu"):
        torch.ops.mamba.selective_scan(**x)


def test_dstate_beyond_kernel_limit_falls_back():
    """Past the kernels' limit (dstate <= 256) the op still computes, through the reference."""
    with pytest.warns(UserWarning, match="dstate must be <= 256"):
        assert_matches(scan_inputs(1, 2, 3, 257, seed=0), True, torch.float32)
