"""The selective scan: one torch custom op, ``mamba::selective_scan``, and its reference.

The contract (shapes, dtypes, numerics) is written in docs/ops.md; the ONNX node
``mamba.SelectiveScan``, the ONNX Runtime kernels and the TensorRT plugin implement the
same document. ``selective_scan_reference`` is the readable definition every backend is
tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .autograd import register_recompute_autograd
from .contract import ContractError  # noqa: F401  (re-exported: the op raises it)
from .contract import SELECTIVE_SCAN

# Sequence positions whose dA / dB*u are materialised at once: bounds the reference's
# memory to O(batch * dim * CHUNK * d_state) whatever the sequence length.
_CHUNK = 128


def time_step(delta, delta_bias, delta_softplus):
    """delta [batch, channels, L] (+ delta_bias [channels]), softplus'ed as docs/ops.md says, in float32."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def skip_and_gate(y, uf, D, z):
    """y + D * u, then the SiLU gate; D [channels] scales dim 1 of u [batch, channels, ...]."""
    if D is not None:
        y = y + D.float().view(-1, *[1] * (uf.dim() - 2)) * uf
    return y * F.silu(z.float()) if z is not None else y


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
    # Channels as [groups, dim / groups]: channel d reads B/C of group d // (dim / groups).
    grouped = (batch, groups, dim // groups)
    uf = u.float()
    dt = time_step(delta, delta_bias, delta_softplus).view(*grouped, length)
    dtu = dt * uf.view(*grouped, length)
    Ag = A.float().view(groups, dim // groups, 1, d_state)
    Bf, Cf = B.float().unsqueeze(2), C.float().unsqueeze(2)  # [batch, groups, 1, N, L]

    h = u.new_zeros(*grouped, d_state, dtype=torch.float32)
    if initial_state is not None:
        h = h + initial_state.float().view(*grouped, d_state)
    ys = []
    for start in range(0, length, _CHUNK):
        t = slice(start, min(start + _CHUNK, length))
        # Time-major [T, batch, groups, dim / groups, N], so each step reads contiguous memory.
        dA = torch.exp(dt[..., t, None] * Ag).movedim(3, 0).contiguous()
        dBu = (dtu[..., t, None] * Bf[..., t].transpose(-1, -2)).movedim(3, 0).contiguous()
        Ct = Cf[..., t].movedim(-1, 0).transpose(-1, -2).contiguous()  # [T, batch, groups, N, 1]
        for i in range(dA.shape[0]):
            h = dA[i] * h + dBu[i]
            ys.append(h @ Ct[i])  # sum over N: [batch, groups, dim / groups, 1]
    y = torch.cat(ys, dim=-1).view(batch, dim, length) if ys else uf.new_zeros(batch, dim, 0)
    y = skip_and_gate(y, uf, D, z)
    return y.to(u.dtype), h.view(batch, dim, d_state)


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
    SELECTIVE_SCAN.check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)


@selective_scan.register_fake
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None, delta_softplus=False):
    SELECTIVE_SCAN.check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return torch.empty_like(u), u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)


class _LinearRecurrence(torch.autograd.Function):
    """All states of ``h[t] = a[t] * h[t-1] + b[t]`` from ``h0``; time is dim 0, length >= 1.

    Differentiating a Python loop records ~L small autograd nodes per call; this
    backward is one reverse loop of the same shape instead.
    """

    @staticmethod
    def forward(ctx, a, b, h0):
        hs = torch.empty_like(b)
        h = h0
        for t in range(b.shape[0]):
            h = hs[t] = torch.addcmul(b[t], a[t], h)
        ctx.save_for_backward(a, hs, h0)
        return hs

    @staticmethod
    def backward(ctx, grad_hs):
        a, hs, h0 = ctx.saved_tensors
        grad_b = torch.empty_like(grad_hs)
        g = grad_b[-1] = grad_hs[-1]
        for t in range(grad_hs.shape[0] - 2, -1, -1):
            g = grad_b[t] = torch.addcmul(grad_hs[t], a[t + 1], g)  # h[t] also feeds h[t+1]
        h_prev = torch.cat([h0[None], hs[:-1]])
        return grad_b * h_prev, grad_b, grad_b[0] * a[0]


def _scan_for_autograd(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                       delta_softplus=False):
    """The reference's function, computed time-major with ``_LinearRecurrence``: what the
    backward differentiates (tests/test_scan_backward.py holds it to the reference)."""
    batch, dim, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    delta = time_step(delta, delta_bias, delta_softplus)
    uf = u.float()
    # [L, batch, groups, dim // groups, N], contiguous so that each time step is one
    # block of memory; channels broadcast over their group's B and C.
    shape = (length, batch, groups, dim // groups, 1)
    dt = delta.permute(2, 0, 1).contiguous().reshape(shape)
    Bt = B.float().permute(3, 0, 1, 2).contiguous().unsqueeze(3)  # [L, batch, groups, 1, N]
    Ct = C.float().permute(3, 0, 1, 2).contiguous().unsqueeze(-1)  # [L, batch, groups, N, 1]
    h0 = u.new_zeros(batch, dim, d_state, dtype=torch.float32)
    if initial_state is not None:
        h0 = h0 + initial_state.float()
    h0 = h0.reshape(batch, groups, dim // groups, d_state)
    if length:
        dA = torch.exp(dt * A.float().reshape(groups, dim // groups, d_state))
        hs = _LinearRecurrence.apply(dA, dt * uf.permute(2, 0, 1).contiguous().reshape(shape) * Bt, h0)
        y = (hs @ Ct).reshape(length, batch, dim).permute(1, 2, 0)
        h = hs[-1]
    else:
        y, h = uf.new_zeros(batch, dim, 0), h0
    y = skip_and_gate(y, uf, D, z)
    return y.to(u.dtype), h.reshape(batch, dim, d_state)


register_recompute_autograd(selective_scan, _scan_for_autograd, n_tensors=9)
