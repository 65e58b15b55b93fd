"""Random inputs for the SelectiveScan contract, shared by every backend's tests."""

from __future__ import annotations

import torch


def scan_inputs(batch, dim, length, d_state, groups=1, *, dtype=torch.float32, has_D=True, has_z=True,
                has_delta_bias=True, has_initial_state=True, seed=0):
    """Realistic magnitudes: A negative, delta around softplus' knee, unit-scale activations."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    f32 = torch.float32
    return dict(
        u=rnd(batch, dim, length),
        delta=rnd(batch, dim, length, scale=0.5),
        A=-torch.rand(dim, d_state, generator=g) * 2 - 0.1,
        B=rnd(batch, groups, d_state, length),
        C=rnd(batch, groups, d_state, length),
        D=rnd(dim, dt=f32) if has_D else None,
        z=rnd(batch, dim, length) if has_z else None,
        delta_bias=rnd(dim, scale=0.5, dt=f32) - 1 if has_delta_bias else None,
        initial_state=rnd(batch, dim, d_state, dt=f32) if has_initial_state else None,
    )


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max(max |ref|, 1): the measure docs/ops.md states tolerances in."""
    out, ref = out.double(), ref.double()
    if out.numel() == 0:
        return 0.0
    return ((out - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()


def ssd_inputs(batch, length, heads, head_dim, d_state, groups=1, *, dtype=torch.float32, has_D=True, has_z=True,
               has_dt_bias=True, has_initial_state=True, seed=0):
    """The SSDScan contract's inputs (docs/ops.md), with Mamba-2's magnitudes: one negative A per
    head, dt around softplus' knee, unit-scale activations."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    f32 = torch.float32
    return dict(
        x=rnd(batch, length, heads, head_dim),
        dt=rnd(batch, length, heads, scale=0.5),
        A=-torch.rand(heads, generator=g) * 2 - 0.1,
        B=rnd(batch, length, groups, d_state),
        C=rnd(batch, length, groups, d_state),
        D=rnd(heads, dt=f32) if has_D else None,
        z=rnd(batch, length, heads, head_dim) if has_z else None,
        dt_bias=rnd(heads, scale=0.5, dt=f32) - 1 if has_dt_bias else None,
        initial_state=rnd(batch, heads, head_dim, d_state, dt=f32) if has_initial_state else None,
    )
