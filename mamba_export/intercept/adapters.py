"""Scan functions of other libraries, re-implemented on ``torch.ops.mamba.selective_scan``.

Each adapter has the exact signature of the function it stands in for (mamba_ssm's
``selective_scan_fn`` / ``selective_scan_ref`` / ``mamba_inner_fn``, transformers' Mamba-1
``mamba_selective_scan`` / ``mamba_selective_state_update``) and computes the same result,
so a traced model gets one ``mamba.SelectiveScan`` node per scan call instead of a kernel
torch.export cannot trace or a Python loop it would unroll. Inputs are cast to the op
contract's types (docs/ops.md): activations to u's type, A/D/delta_bias to float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import MambaExportError
from ..ops import selective_scan
from ..ops.contract import ACTIVATION_DTYPES


class UnsupportedScanError(MambaExportError, ValueError):
    """A scan call uses a feature mamba.SelectiveScan does not have (docs/custom-models.md, "Limits")."""


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _grouped(t: torch.Tensor, name: str, caller: str) -> torch.Tensor:
    """B or C as [batch, G, N, L]: a 3-D [batch, N, L] is one group."""
    if t.dim() == 2:
        raise UnsupportedScanError(
            f"{caller}: a time-invariant {name} of shape [dim, N] ({_shape(t)}) is not supported by "
            f"mamba.SelectiveScan; {name} must be input-dependent, [batch, N, L] or [batch, G, N, L]"
        )
    if t.dim() == 3:
        return t.unsqueeze(1)
    if t.dim() == 4:
        return t
    raise UnsupportedScanError(f"{caller}: {name} must have shape [batch, N, L] or [batch, G, N, L], got {_shape(t)}")


def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None, delta_softplus=False, *,
         caller: str = "selective_scan_fn"):
    """(y, final_state) of the op for mamba_ssm-style arguments; y in u's dtype, final_state float32."""
    if any(t is not None and t.is_complex() for t in (u, delta, A, B, C)):
        raise UnsupportedScanError(
            f"{caller}: complex A/B/C (complex-valued state) is not supported by mamba.SelectiveScan; A must be real"
        )
    B, C = _grouped(B, "B", caller), _grouped(C, "C", caller)
    if B.shape[1] != C.shape[1]:  # one group shared by all channels is the same as G copies of it
        groups = max(B.shape[1], C.shape[1])
        if min(B.shape[1], C.shape[1]) != 1:
            raise UnsupportedScanError(f"{caller}: B has {B.shape[1]} groups and C has {C.shape[1]}; they must match")
        B, C = (t.expand(t.shape[0], groups, *t.shape[2:]) for t in (B, C))
    # The op computes in float32 whatever the type; other float types (float64) go through float32.
    T = u.dtype if u.dtype in ACTIVATION_DTYPES else torch.float32

    def act(t):
        return None if t is None else t.to(T)

    def f32(t):
        return None if t is None else t.to(torch.float32)

    y, state = selective_scan(act(u), act(delta), f32(A), act(B), act(C), D=f32(D), z=act(z),
                              delta_bias=f32(delta_bias), initial_state=f32(initial_state),
                              delta_softplus=bool(delta_softplus))  # fmt: skip
    return y.to(u.dtype), state


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """mamba_ssm.ops.selective_scan_interface.selective_scan_fn on mamba::selective_scan.

    u, delta, z: [batch, dim, L]; A: [dim, N] (real); B, C: [batch, N, L] or [batch, G, N, L];
    D, delta_bias: [dim]. Returns y [batch, dim, L], and the last state [batch, dim, N] (float32)
    too when ``return_last_state``.
    """
    y, last_state = scan(u, delta, A, B, C, D, z, delta_bias, None, delta_softplus)
    return (y, last_state) if return_last_state else y


# mamba_ssm's readable reference has the same signature and result as its kernel.
selective_scan_ref = selective_scan_fn


def _rms_norm_state_axis(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMS norm over dim -2 (d_state of B/C, channels of delta), in float32 like mamba_ssm's kernel."""
    if weight is None:
        return x
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-2, keepdim=True) + eps)
    return (xf * weight.float()[:, None]).to(x.dtype)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                   out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                   delta_softplus=True, checkpoint_lvl=1, b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None,
                   b_c_dt_rms_eps=1e-6):
    """mamba_ssm's fused Mamba-1 inner path on mamba::selective_scan.

    xz [batch, 2*dim, L] splits into x and the gate z; x goes through the causal depthwise
    conv (+ SiLU), x_proj gives [dt_rank | B | C] (B/C only where not passed), dt_proj
    gives delta, then the scan, then out_proj: returns [batch, L, d_model].
    ``checkpoint_lvl`` only concerns training memory and is ignored.
    """
    caller = "mamba_inner_fn"
    if A.is_complex():
        raise UnsupportedScanError(f"{caller}: complex A is not supported by mamba.SelectiveScan; A must be real")
    dtype, length = xz.dtype, xz.shape[-1]
    rank, d_state = delta_proj_weight.shape[1], A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    weight = conv1d_weight if conv1d_weight.dim() == 3 else conv1d_weight.unsqueeze(1)  # [dim, 1, width]
    bias = None if conv1d_bias is None else conv1d_bias.to(dtype)
    x = F.conv1d(x, weight.to(dtype), bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., :length]
    x = F.silu(x)
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight.to(dtype))  # [batch, L, dt_rank + ...]
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight.to(dtype)).transpose(1, 2)  # [batch, dim, L]
    if B is None:
        B = x_dbl[..., rank : rank + d_state]
        B = (B if B_proj_bias is None else B + B_proj_bias.to(dtype)).transpose(1, 2)  # [batch, N, L]
    if C is None:
        C = x_dbl[..., x_dbl.shape[-1] - d_state :]
        C = (C if C_proj_bias is None else C + C_proj_bias.to(dtype)).transpose(1, 2)
    B = _rms_norm_state_axis(B, b_rms_weight, b_c_dt_rms_eps)
    C = _rms_norm_state_axis(C, c_rms_weight, b_c_dt_rms_eps)
    delta = _rms_norm_state_axis(delta, dt_rms_weight, b_c_dt_rms_eps)
    y, _ = scan(x, delta, A, B, C, D, z, delta_bias, None, delta_softplus, caller=caller)
    out_bias = None if out_proj_bias is None else out_proj_bias.to(dtype)
    return F.linear(y.transpose(1, 2), out_proj_weight.to(dtype), out_bias)


def _reject_packed(kwargs: dict, caller: str) -> None:
    if kwargs.get("cu_seqlens") is not None or kwargs.get("seq_idx") is not None:
        raise UnsupportedScanError(f"{caller}: packed sequences (cu_seqlens / seq_idx) are not supported")


def transformers_selective_scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                return_last_state=False, use_mambapy=False, use_associative_scan=False, **kwargs):
    """transformers' Mamba-1 ``mamba_selective_scan`` (mamba, falcon_mamba, jamba, zamba): B, C
    are [batch, N, L]. ``use_mambapy`` / ``use_associative_scan`` choose among equivalent
    algorithms and are ignored."""
    _reject_packed(kwargs, "mamba_selective_scan")
    y, last_state = scan(hidden_states, dt, A, B, C, D, z, delta_bias, None, delta_softplus,
                         caller="mamba_selective_scan")  # fmt: skip
    return (y, last_state) if return_last_state else y


def transformers_selective_state_update(state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False,
                                        z=None, **kwargs):
    """transformers' ``mamba_selective_state_update``: one decode step from ``state`` [batch, dim, N],
    updated in place; hidden_states, dt, z: [batch, dim]; B, C: [batch, N]. Returns y [batch, dim]."""
    _reject_packed(kwargs, "mamba_selective_state_update")

    def step(t):
        return None if t is None else t.unsqueeze(-1)

    y, new_state = scan(step(hidden_states), step(dt), A, step(B), step(C), D, step(z), dt_bias, state,
                        dt_softplus, caller="mamba_selective_state_update")  # fmt: skip
    state.copy_(new_state.to(state.dtype))
    return y[..., 0]
