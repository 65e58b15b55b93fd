"""The op's backward: the time-major formulation it differentiates against the reference."""

import pytest
import torch

from mamba_export.ops import selective_scan, selective_scan_reference
from mamba_export.ops.selective_scan import _LinearRecurrence, _scan_for_autograd
from scan_inputs import rel_err, scan_inputs

CASES = [
    # batch, dim, length, d_state, groups
    (1, 4, 1, 3, 1),
    (2, 6, 9, 4, 1),
    (2, 8, 17, 5, 2),
    (3, 4, 0, 2, 1),
    (1, 6, 40, 2, 3),
]
OPTIONALS = ("D", "z", "delta_bias", "initial_state")


@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("absent", [None, *OPTIONALS])
def test_formulation_equals_reference(shape, absent):
    flags = {f"has_{name}": name != absent for name in OPTIONALS}
    inputs = scan_inputs(*shape, **flags, seed=sum(shape))
    y, state = _scan_for_autograd(**inputs, delta_softplus=True)
    y_ref, state_ref = selective_scan_reference(**inputs, delta_softplus=True)
    assert y.shape == y_ref.shape and state.shape == state_ref.shape
    assert rel_err(y, y_ref) < 1e-5 and rel_err(state, state_ref) < 1e-5


def test_linear_recurrence_gradient_by_finite_differences():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(7, 2, 3, generator=g, dtype=torch.float64) * 0.9).requires_grad_()
    b = torch.randn(7, 2, 3, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(_LinearRecurrence.apply, (a, b, h0))


def _grads(fn, inputs, loss):
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    y, state = fn(**leaves, delta_softplus=True)
    loss(y, state).backward()
    # An input the loss does not depend on (D and z for the state alone) may get None or zeros.
    return {k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in leaves.items() if v is not None}


LOSSES = {
    "y and state": lambda y, s: (y * y.detach().sign()).sum() + s.pow(2).sum(),
    "y only": lambda y, s: y.pow(2).sum(),
    "state only": lambda y, s: s.sum(),
}


@pytest.mark.parametrize("shape", [(2, 6, 9, 4, 1), (2, 8, 17, 5, 2), (1, 3, 1, 2, 1)])
@pytest.mark.parametrize("loss", LOSSES)
def test_op_gradients_match_autograd_through_reference(shape, loss):
    inputs = scan_inputs(*shape, seed=len(loss) + sum(shape))
    ours = _grads(selective_scan, inputs, LOSSES[loss])
    ref = _grads(selective_scan_reference, inputs, LOSSES[loss])
    assert ours.keys() == ref.keys()
    for name in ref:
        assert rel_err(ours[name], ref[name]) < 1e-4, name


def test_op_gradients_without_optional_inputs():
    inputs = scan_inputs(2, 4, 6, 3, has_D=False, has_z=False, has_delta_bias=False, has_initial_state=False,
                         seed=4)
    ours = _grads(selective_scan, inputs, LOSSES["y and state"])
    ref = _grads(selective_scan_reference, inputs, LOSSES["y and state"])
    assert set(ours) == {"u", "delta", "A", "B", "C"} == set(ref)
    for name in ref:
        assert rel_err(ours[name], ref[name]) < 1e-4, name
