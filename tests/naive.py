"""Independent float64 references for the tests: the op contracts of docs/ops.md written
as plain per-element loops, sharing no code with mamba_export."""

from __future__ import annotations

import math

import torch


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                         delta_softplus=False):
    """Float64, one (b, d, n) element at a time, straight from docs/ops.md."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    y = torch.zeros(batch, dim, length, dtype=torch.float64)
    final = torch.zeros(batch, dim, n_state, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            g = d // (dim // groups)
            h = [float(initial_state[b, d, n]) if initial_state is not None else 0.0 for n in range(n_state)]
            for t in range(length):
                dt = float(delta[b, d, t]) + (float(delta_bias[d]) if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = dt if dt > 20 else math.log1p(math.exp(dt))
                acc = 0.0
                for n in range(n_state):
                    h[n] = math.exp(dt * float(A[d, n])) * h[n] + dt * float(B[b, g, n, t]) * float(u[b, d, t])
                    acc += float(C[b, g, n, t]) * h[n]
                if D is not None:
                    acc += float(D[d]) * float(u[b, d, t])
                if z is not None:
                    zt = float(z[b, d, t])
                    acc *= zt / (1 + math.exp(-zt))
                y[b, d, t] = acc
            final[b, d] = torch.tensor(h, dtype=torch.float64)
    return y, final


def ssd_scan_naive(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None, dt_softplus=False,
                   dt_min=0.0, dt_max=math.inf):
    """Float64, one (b, h, t) step at a time over a [P, N] state, straight from docs/ops.md.
    Made of float64 torch ops on the inputs, so autograd differentiates it too."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    batch, length, heads, head_dim = x.shape
    groups, n_state = B.shape[2], B.shape[3]
    ys, finals = [], []
    for b in range(batch):
        y_b, final_b = [], []
        for h in range(heads):
            g = h // (heads // groups)
            S = initial_state[b, h].double() if initial_state is not None else x.new_zeros(head_dim, n_state)
            y_h = []
            for t in range(length):
                step = dt[b, t, h] + (dt_bias[h].double() if dt_bias is not None else 0.0)
                if dt_softplus:
                    step = step if step > 20 else torch.log1p(torch.exp(step))
                step = torch.clamp(step, dt_min, dt_max)
                S = torch.exp(step * A[h]) * S + step * torch.outer(x[b, t, h], B[b, t, g])
                y = S @ C[b, t, g]
                if D is not None:
                    y = y + D[h].double() * x[b, t, h]
                if z is not None:
                    zt = z[b, t, h].double()
                    y = y * zt / (1 + torch.exp(-zt))
                y_h.append(y)
            y_b.append(torch.stack(y_h) if y_h else x.new_zeros(0, head_dim))
            final_b.append(S)
        ys.append(torch.stack(y_b, dim=1))  # [L, H, P]
        finals.append(torch.stack(final_b))
    return torch.stack(ys), torch.stack(finals)
