"""The Mamba-2 scan: one torch custom op, ``mamba::ssd_scan``, and its reference.

The contract (shapes, dtypes, numerics) is docs/ops.md, ``SSDScan``; the ONNX node
``mamba.SSDScan`` and the native kernels implement the same document.
``ssd_scan_reference`` is the readable definition they are tested against, written in the
chunked "state space duality" form: within a chunk the scan is a masked matrix product
(attention-like, with the decay between two positions as the mask), and only one state per
chunk is passed on sequentially.
"""

from __future__ import annotations

import math

import torch

from .autograd import register_recompute_autograd
from .contract import SSD_SCAN
from .selective_scan import skip_and_gate, time_step

# Positions per chunk of the reference: the intra-chunk products cost O(CHUNK^2) per head,
# the sequential part O(L / CHUNK). Not part of the contract (any chunking only changes rounding).
CHUNK_SIZE = 64


def _segment_sums(log_decay: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T]: entry [t, s] = log_decay[s+1] + ... + log_decay[t] for s <= t, -inf above.

    exp() of it is the decay from position s to position t. Each entry is its own sum
    (a masked cumulative sum), not a difference of two prefix sums: those grow with T and
    their difference would lose the float32 digits of a short segment.
    """
    T = log_decay.shape[-1]
    later = torch.ones(T, T, dtype=torch.bool, device=log_decay.device).tril(-1)  # [r, s]: r > s
    terms = log_decay[..., :, None].expand(*log_decay.shape, T).masked_fill(~later, 0.0)
    sums = terms.cumsum(dim=-2)  # [t, s] = sum over s < r <= t
    causal = torch.ones(T, T, dtype=torch.bool, device=log_decay.device).tril()
    return sums.masked_fill(~causal, -math.inf)


def ssd_scan_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_min: float = 0.0,
    dt_max: float | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan in float32 (docs/ops.md, ``SSDScan``); differentiable by autograd.

    x, z: [batch, L, H, P]; dt: [batch, L, H]; A, D, dt_bias: [H]; B, C: [batch, L, G, N];
    initial_state: [batch, H, P, N] float32. dt_max None means +inf.
    Returns y [batch, L, H, P] in x's dtype and the final state [batch, H, P, N] float32.
    """
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    # time_step works on [batch, channels, L]; here the heads are the channels.
    dt = time_step(dt.transpose(1, 2), dt_bias, dt_softplus).transpose(1, 2)
    dt = dt.clamp(dt_min, math.inf if dt_max is None else dt_max)  # [batch, L, H]
    xf = x.float()
    # Head h reads B/C of group h // (H / G).
    Bh = B.float().repeat_interleave(heads // groups, dim=2)  # [batch, L, H, N]
    Ch = C.float().repeat_interleave(heads // groups, dim=2)
    state = x.new_zeros(batch, heads, head_dim, d_state, dtype=torch.float32)
    if initial_state is not None:
        state = state + initial_state.float()

    ys = []
    for start in range(0, length, chunk_size):
        t = slice(start, min(start + chunk_size, length))
        log_decay = (dt[:, t] * A.float()).transpose(1, 2)  # [batch, H, T]: log exp(dt_t * A)
        segments = _segment_sums(log_decay)  # [batch, H, T, T]
        dtx = dt[:, t, :, None] * xf[:, t]  # [batch, T, H, P]: the input term is dt_s * x_s * B_s
        # Within the chunk: y_t = sum_{s <= t} (C_t . B_s) * decay(s -> t) * dt_s x_s.
        scores = torch.einsum("bthn,bshn->bhts", Ch[:, t], Bh[:, t]) * torch.exp(segments)
        y = torch.einsum("bhts,bshp->bthp", scores, dtx)
        # The state entering the chunk, decayed to each position: y_t += C_t . (decay(start -> t) S).
        from_start = torch.exp(log_decay.cumsum(-1)).transpose(1, 2)  # [batch, T, H]
        y = y + torch.einsum("bthn,bhpn->bthp", Ch[:, t], state) * from_start[..., None]
        ys.append(y)
        # The state leaving the chunk: the entering one decayed over the whole chunk, plus each
        # position's input decayed to the chunk's last position (the last row of the segment sums).
        to_end = torch.exp(segments[:, :, -1])  # [batch, H, T]
        state = state * from_start[:, -1, :, None, None] + torch.einsum("bhs,bshp,bshn->bhpn", to_end, dtx, Bh[:, t])
    y = torch.cat(ys, dim=1) if ys else xf.new_zeros(batch, 0, heads, head_dim)
    # skip_and_gate scales dim 1 by D: give it [batch, H, L, P].
    y = skip_and_gate(y.transpose(1, 2), xf.transpose(1, 2), D, None if z is None else z.transpose(1, 2))
    return y.transpose(1, 2).to(x.dtype), state


@torch.library.custom_op("mamba::ssd_scan", mutates_args=())
def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_min: float = 0.0,
    dt_max: float | None = None,  # None: +inf (a torch op schema cannot spell an infinite default)
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mamba::ssd_scan``: see docs/ops.md. Returns (y, final_state)."""
    SSD_SCAN.check(x, dt, A, B, C, D, z, dt_bias, initial_state, dt_min=dt_min, dt_max=dt_max)
    return ssd_scan_reference(x, dt, A, B, C, D, z, dt_bias, initial_state, dt_softplus, dt_min, dt_max)


@ssd_scan.register_fake
def _(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None, dt_softplus=False, dt_min=0.0,
      dt_max=None):
    SSD_SCAN.check(x, dt, A, B, C, D, z, dt_bias, initial_state, dt_min=dt_min, dt_max=dt_max)
    batch, _, heads, head_dim = x.shape
    return torch.empty_like(x), x.new_empty(batch, heads, head_dim, B.shape[3], dtype=torch.float32)


# The chunked reference is made of differentiable torch ops with O(L / CHUNK_SIZE) Python steps.
register_recompute_autograd(ssd_scan, ssd_scan_reference, n_tensors=9)
