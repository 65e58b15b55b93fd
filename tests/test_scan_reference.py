"""The selective-scan reference and the torch op against a naive float64 loop."""

import pytest
import torch

from mamba_export.ops import ContractError, selective_scan, selective_scan_reference
from naive import selective_scan_naive
from scan_inputs import rel_err, scan_inputs

CASES = [
    # batch, dim, length, d_state, groups
    (1, 4, 1, 3, 1),
    (2, 6, 9, 4, 1),
    (2, 8, 17, 5, 2),
    (3, 4, 0, 2, 1),
    (1, 3, 300, 2, 3),  # crosses the reference's internal chunk boundary
]


@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("softplus", [False, True])
def test_reference_matches_naive_loop(shape, softplus):
    inputs = scan_inputs(*shape, seed=hash(shape) % 1000)
    if not softplus:  # a time step must be positive, or the recurrence grows without bound
        inputs["delta"], inputs["delta_bias"] = inputs["delta"].abs(), inputs["delta_bias"].abs()
    y, state = selective_scan_reference(**inputs, delta_softplus=softplus)
    y_ref, state_ref = selective_scan_naive(**inputs, delta_softplus=softplus)
    assert y.dtype == torch.float32 and state.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(state, state_ref) < 1e-5


@pytest.mark.parametrize("optional", ["D", "z", "delta_bias", "initial_state"])
def test_each_optional_input_alone_is_absent(optional):
    flags = {f"has_{name}": name == optional for name in ("D", "z", "delta_bias", "initial_state")}
    inputs = scan_inputs(2, 4, 7, 3, **flags, seed=3)
    y, state = selective_scan(**inputs, delta_softplus=True)
    y_ref, state_ref = selective_scan_naive(**inputs, delta_softplus=True)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(state, state_ref) < 1e-5


def test_state_carries_across_calls():
    """Scanning [0, L) at once equals scanning [0, k) and then [k, L) from the returned state."""
    inputs = scan_inputs(2, 5, 20, 4, seed=7)
    full_y, full_state = selective_scan(**inputs, delta_softplus=True)
    k = 6
    head = {n: (t[..., :k] if t is not None and t.dim() >= 3 and n != "initial_state" else t) for n, t in inputs.items()}
    tail = {n: (t[..., k:] if t is not None and t.dim() >= 3 and n != "initial_state" else t) for n, t in inputs.items()}
    y1, s1 = selective_scan(**head, delta_softplus=True)
    y2, s2 = selective_scan(**{**tail, "initial_state": s1}, delta_softplus=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), full_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, full_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    inputs = scan_inputs(2, 4, 11, 3, dtype=dtype, seed=5)
    y, state = selective_scan(**inputs, delta_softplus=True)
    y_ref, state_ref = selective_scan_naive(**inputs, delta_softplus=True)
    assert y.dtype == dtype and state.dtype == torch.float32
    assert rel_err(y, y_ref) < (2e-3 if dtype == torch.float16 else 1.6e-2)
    assert rel_err(state, state_ref) < 1e-5


def test_gradients_match_float64_autograd():
    inputs = scan_inputs(1, 4, 6, 2, groups=2, seed=11)
    leaves = {k: v.double().requires_grad_() for k, v in inputs.items()}
    y, s = selective_scan_reference(**leaves, delta_softplus=True)
    (y.sum() + s.pow(2).sum()).backward()
    ours = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y, s = selective_scan(**ours, delta_softplus=True)
    (y.sum() + s.pow(2).sum()).backward()
    for name in inputs:
        torch.testing.assert_close(ours[name].grad.double(), leaves[name].grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(u=torch.zeros(2, 4)), "u must have shape"),
        (dict(delta=torch.zeros(2, 4, 6)), "delta must have shape"),
        (dict(A=torch.zeros(5, 3)), "A must have shape"),
        (dict(B=torch.zeros(2, 3, 3, 7)), "multiple of groups"),
        (dict(C=torch.zeros(2, 1, 3, 6)), "C must have shape"),
        (dict(D=torch.zeros(4, dtype=torch.float16)), "D must be one of"),
        (dict(z=torch.zeros(2, 4, 7, dtype=torch.float64)), "z must be one of"),
        (dict(initial_state=torch.zeros(2, 4, 2)), "initial_state must have shape"),
    ],
)
def test_contract_violations_are_named(change, message):
    inputs = {**scan_inputs(2, 4, 7, 3, seed=1), **change}
    with pytest.raises(ContractError, match=message):
        selective_scan(**inputs)
