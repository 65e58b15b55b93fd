"""The SSD scan (Mamba-2): the chunked reference and the torch op against a float64 loop
over time (tests/naive.py), at and around chunk boundaries, and its gradients."""

import itertools
import math

import pytest
import torch

from mamba_export.ops import ContractError, ssd_scan, ssd_scan_reference
from mamba_export.ops.ssd_scan import CHUNK_SIZE
from naive import ssd_scan_naive
from scan_inputs import rel_err, ssd_inputs

OPTIONALS = ("D", "z", "dt_bias", "initial_state")
LIMITS = {"none": (0.0, math.inf), "both": (0.05, 0.6), "low": (0.3, math.inf)}


def check(inputs, tol=1e-5, chunk_size=None, dt_softplus=True, limit=LIMITS["none"]):
    """Op (or the reference with ``chunk_size``) against the float64 loop: y and the final state."""
    options = dict(dt_softplus=dt_softplus, dt_min=limit[0], dt_max=limit[1])
    if chunk_size is None:
        y, state = ssd_scan(**inputs, **options)
    else:
        y, state = ssd_scan_reference(**inputs, **options, chunk_size=chunk_size)
    y_ref, state_ref = ssd_scan_naive(**inputs, **options)
    assert y.shape == inputs["x"].shape and y.dtype == inputs["x"].dtype
    assert state.shape == state_ref.shape and state.dtype == torch.float32
    assert rel_err(y, y_ref) < tol, "y"
    assert rel_err(state, state_ref) < 1e-5, "final_state"


# batch, L, heads, head_dim, d_state, groups
OP_SHAPES = [
    (2, 0, 2, 3, 4, 1),
    (1, 1, 4, 2, 3, 2),
    (2, CHUNK_SIZE - 1, 4, 3, 4, 1),
    (2, CHUNK_SIZE, 2, 2, 3, 2),
    (1, CHUNK_SIZE + 1, 6, 2, 3, 3),
    (1, 3 * CHUNK_SIZE + 7, 2, 2, 2, 1),
]


@pytest.mark.parametrize("shape", OP_SHAPES, ids=str)
def test_op_matches_naive_loop(shape):
    check(ssd_inputs(*shape, seed=sum(shape)), limit=LIMITS["both"])


# Small chunks: many chunk boundaries in short sequences, groups up to one per head.
@pytest.mark.parametrize("length", [1, 7, 8, 9, 23])
@pytest.mark.parametrize("heads, groups", [(4, 1), (4, 2), (3, 3)])
def test_reference_chunk_boundaries(length, heads, groups):
    check(ssd_inputs(2, length, heads, 3, 4, groups, seed=length + heads), chunk_size=8)


@pytest.mark.parametrize("present", list(itertools.product([False, True], repeat=4)),
                         ids=lambda p: "+".join(n for n, on in zip(OPTIONALS, p) if on) or "none")
def test_every_optional_input_combination(present):
    flags = {f"has_{name}": on for name, on in zip(OPTIONALS, present)}
    check(ssd_inputs(2, 11, 4, 2, 3, 2, **flags, seed=sum(present)), chunk_size=4)


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("softplus", [False, True])
def test_time_step_softplus_and_clamp(limit, softplus):
    """Without softplus, negative time steps reach the clamp's lower bound (0 by default)."""
    inputs = ssd_inputs(2, 13, 4, 2, 3, seed=5)
    inputs["dt"] = inputs["dt"] * 4  # spread over both sides of every bound
    check(inputs, chunk_size=5, dt_softplus=softplus, limit=LIMITS[limit])


def test_clamp_changes_the_result():
    """The bounds are applied: a clamp that binds gives another output than none."""
    inputs = ssd_inputs(1, 9, 2, 2, 3, seed=6)
    free, _ = ssd_scan(**inputs, dt_softplus=True)
    clamped, _ = ssd_scan(**inputs, dt_softplus=True, dt_min=0.2, dt_max=0.4)
    assert rel_err(free, clamped) > 1e-2


def test_large_time_steps_pass_softplus_unchanged():
    """softplus(x) = x above 20 (docs/ops.md), without overflow in exp."""
    inputs = ssd_inputs(1, 5, 2, 2, 3, has_dt_bias=False, seed=8)
    inputs["dt"] = torch.full_like(inputs["dt"], 30.0)
    inputs["A"] = torch.full_like(inputs["A"], -1e-3)
    check(inputs)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_inputs_compute_in_float32(dtype, tol):
    check(ssd_inputs(2, 19, 4, 3, 4, 2, dtype=dtype, seed=9), tol=tol)


@pytest.mark.parametrize("split", [1, 5, CHUNK_SIZE - 1, CHUNK_SIZE + 3])
def test_state_carries_across_calls(split):
    """Scanning [0, L) at once equals scanning [0, k), then [k, L) from the returned state."""
    inputs = ssd_inputs(2, CHUNK_SIZE + 9, 4, 2, 3, 2, seed=split)
    options = dict(dt_softplus=True, dt_min=0.01, dt_max=2.0)
    full_y, full_state = ssd_scan(**inputs, **options)

    def part(t):  # the time axis is dim 1 of every sequence input
        return {k: v[:, t] if k in ("x", "dt", "B", "C", "z") else v for k, v in inputs.items()}

    y1, s1 = ssd_scan(**part(slice(0, split)), **options)
    y2, s2 = ssd_scan(**{**part(slice(split, None)), "initial_state": s1}, **options)
    assert rel_err(torch.cat([y1, y2], 1), full_y) < 1e-5
    assert rel_err(s2, full_state) < 1e-5


def grads(fn, inputs, weights, **options):
    leaves = {k: v.clone().requires_grad_() if v is not None else None for k, v in inputs.items()}
    y, state = fn(**leaves, **options)
    ((y * weights[0]).sum() + (state * weights[1]).sum()).backward()
    return {k: v.grad for k, v in leaves.items() if v is not None}


@pytest.mark.parametrize("absent", [None, "D", "z", "dt_bias", "initial_state"])
def test_gradients_match_float64_autograd(absent):
    """The op's backward (float32) against autograd through the float64 loop."""
    flags = {f"has_{name}": name != absent for name in OPTIONALS}
    inputs = ssd_inputs(2, 10, 4, 2, 3, 2, **flags, seed=12)
    options = dict(dt_softplus=True, dt_min=0.05, dt_max=1.5)
    g = torch.Generator().manual_seed(0)
    weights = (torch.randn(inputs["x"].shape, generator=g), torch.randn(2, 4, 2, 3, generator=g))
    ours = grads(ssd_scan, inputs, weights, **options)
    ref = grads(ssd_scan_naive, {k: v.double() if v is not None else None for k, v in inputs.items()},
                [w.double() for w in weights], **options)
    assert ours.keys() == ref.keys()
    for name in ref:
        assert ours[name].dtype == inputs[name].dtype
        assert rel_err(ours[name], ref[name]) < 1e-4, name


def test_gradients_across_chunks_and_half_types():
    """Many chunks, and bfloat16 activations: gradients come back in each input's dtype."""
    inputs = ssd_inputs(1, 2 * CHUNK_SIZE + 5, 2, 2, 2, seed=13)
    weights = (torch.ones(inputs["x"].shape), torch.ones(1, 2, 2, 2))
    ours = grads(ssd_scan, inputs, weights, dt_softplus=True)
    ref = grads(ssd_scan_naive, {k: v.double() for k, v in inputs.items()}, [w.double() for w in weights],
                dt_softplus=True)
    assert all(rel_err(ours[name], ref[name]) < 1e-4 for name in ref)
    half = {k: v.bfloat16() if k in ("x", "dt", "B", "C", "z") else v for k, v in inputs.items()}
    assert all(g.dtype == half[k].dtype for k, g in grads(ssd_scan, half, weights, dt_softplus=True).items())


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x=torch.zeros(2, 7, 4)), "x must have shape"),
        (dict(x=torch.zeros(2, 7, 4, 3, dtype=torch.float64)), "x must be float32, float16 or bfloat16"),
        (dict(dt=torch.zeros(2, 7, 3)), "dt must have shape"),
        (dict(A=torch.zeros(4, 1)), "A must have shape"),
        (dict(B=torch.zeros(2, 7, 3, 5)), "multiple of groups"),
        (dict(C=torch.zeros(2, 6, 2, 5)), "C must have shape"),
        (dict(D=torch.zeros(4, dtype=torch.float16)), "D must be one of"),
        (dict(z=torch.zeros(2, 7, 4, 3, dtype=torch.bfloat16)), "z must be one of"),
        (dict(dt_bias=torch.zeros(5)), "dt_bias must have shape"),
        (dict(initial_state=torch.zeros(2, 4, 5, 3)), "initial_state must have shape"),
    ],
)
def test_contract_violations_are_named(change, message):
    inputs = {**ssd_inputs(2, 7, 4, 3, 5, 2, seed=1), **change}
    with pytest.raises(ContractError, match=message):
        ssd_scan(**inputs)


@pytest.mark.parametrize("limits, message", [(dict(dt_max=math.nan), "must not be NaN"),
                                             (dict(dt_min=math.nan), "must not be NaN"),
                                             (dict(dt_min=0.5, dt_max=0.1), r"dt_min \(0.5\) must be <= dt_max \(0.1\)")])
def test_a_clamp_the_kernels_refuse_is_refused_by_the_torch_op_too(limits, message):
    """The C kernels and the ORT op refuse these clamps; the torch op returned NaN or dt_max everywhere."""
    with pytest.raises(ContractError, match=message):
        ssd_scan(**ssd_inputs(2, 7, 4, 3, 5, 2, seed=1), **limits)
