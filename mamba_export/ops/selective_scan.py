"""The selective scan: one torch custom op, ``mamba::selective_scan``, and its reference.

The contract (shapes, dtypes, numerics) is written in docs/ops.md; the ONNX node
``mamba.SelectiveScan``, the ONNX Runtime kernels and the TensorRT plugin implement the
same document. ``selective_scan_reference`` is the readable definition every backend is
tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .contract import ContractError  # noqa: F401  (re-exported: the op raises it)
from .contract import check_selective_scan

# Sequence positions whose dA / dB*u are materialised at once: bounds the reference's
# memory to O(batch * dim * CHUNK * d_state) whatever the sequence length.
_CHUNK = 128


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential selective scan in float32 (docs/ops.md, ``SelectiveScan``).

    u, delta, z: [batch, dim, L]; A: [dim, N]; B, C: [batch, groups, N, L];
    D, delta_bias: [dim]; initial_state: [batch, dim, N] float32.
    Returns y [batch, dim, L] in u's dtype and the final state [batch, dim, N] float32.
    """
    batch, dim, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # Channel d reads B/C of group d // (dim / groups).
    Bd = B.float().repeat_interleave(dim // groups, dim=1)  # [batch, dim, N, L]
    Cd = C.float().repeat_interleave(dim // groups, dim=1)
    uf, Af = u.float(), A.float()

    h = u.new_zeros(batch, dim, d_state, dtype=torch.float32)
    if initial_state is not None:
        h = h + initial_state.float()
    ys = []
    for start in range(0, length, _CHUNK):
        t = slice(start, min(start + _CHUNK, length))
        dA = torch.exp(delta[:, :, t, None] * Af[:, None, :])  # [batch, dim, T, N]
        dBu = (delta[:, :, t] * uf[:, :, t])[..., None] * Bd[:, :, :, t].transpose(2, 3)
        Ct = Cd[:, :, :, t]
        for i in range(dA.shape[2]):
            h = dA[:, :, i] * h + dBu[:, :, i]
            ys.append((h * Ct[:, :, :, i]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.float()[:, None] * uf
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), h


@torch.library.custom_op("mamba::selective_scan", mutates_args=())
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mamba::selective_scan``: see docs/ops.md. Returns (y, final_state)."""
    check_selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)


@selective_scan.register_fake
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None, delta_softplus=False):
    check_selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return torch.empty_like(u), u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)


_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*(t for t in inputs[: len(_INPUTS)] if t is not None))
    ctx.present = [t is not None for t in inputs[: len(_INPUTS)]]
    ctx.delta_softplus = inputs[len(_INPUTS)]


def _backward(ctx, grad_y, grad_state):
    # Training is not the hot path here (inference export is): differentiate by
    # re-running the reference under autograd instead of keeping a second kernel.
    saved = iter(ctx.saved_tensors)
    args = [next(saved).detach().requires_grad_() if present else None for present in ctx.present]
    with torch.enable_grad():
        y, state = selective_scan_reference(*args, delta_softplus=ctx.delta_softplus)
        outs, grads = [y], [grad_y]
        if grad_state is not None:
            outs.append(state)
            grads.append(grad_state)
        wrt = [a for a in args if a is not None]
        g = iter(torch.autograd.grad(outs, wrt, grads, allow_unused=True))
    return (*[next(g) if a is not None else None for a in args], None)


selective_scan.register_autograd(_backward, setup_context=_setup_context)
