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
