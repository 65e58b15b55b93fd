"""Input checks of the custom ops, written once from docs/ops.md.

The torch op and its fake (export-time) implementation both call these, so a contract
violation is a clear ``ContractError`` at the call site, in eager mode and while exporting.
"""

from __future__ import annotations

import torch

from ..errors import MambaExportError

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ContractError(MambaExportError, ValueError):
    """An input violates the op contract in docs/ops.md."""


def _require(ok, op: str, message: str) -> None:
    if not ok:
        raise ContractError(f"{op}: {message}")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(op: str, name: str, t: torch.Tensor | None, shape: tuple, dtypes) -> None:
    """Checks rank, every named dimension and the dtype of one (optional) input."""
    if t is None:
        return
    expected = "[" + ", ".join(str(s) for s in shape) + "]"
    _require(t.dim() == len(shape), op, f"{name} must have shape {expected}, got {_shape(t)}")
    for got, want in zip(t.shape, shape):
        _require(got == want, op, f"{name} must have shape {expected}, got {_shape(t)}")
    names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
    _require(t.dtype in dtypes, op, f"{name} must be one of ({names}), got {str(t.dtype).removeprefix('torch.')}")


def check_selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    op = "mamba::selective_scan"
    _require(u.dim() == 3, op, f"u must have shape [batch, dim, seqlen], got {_shape(u)}")
    _require(u.dtype in ACTIVATION_DTYPES, op, f"u must be float32, float16 or bfloat16, got {u.dtype}")
    batch, dim, length = u.shape
    _require(A.dim() == 2, op, f"A must have shape [dim, dstate], got {_shape(A)}")
    _require(B.dim() == 4, op, f"B must have shape [batch, groups, dstate, seqlen], got {_shape(B)}")
    d_state, groups = A.shape[1], B.shape[1]
    _require(groups >= 1 and dim % groups == 0, op, f"dim ({dim}) must be a multiple of groups ({groups})")
    act = (u.dtype,)
    f32 = (torch.float32,)
    check_tensor(op, "delta", delta, (batch, dim, length), act)
    check_tensor(op, "A", A, (dim, d_state), f32)
    check_tensor(op, "B", B, (batch, groups, d_state, length), act)
    check_tensor(op, "C", C, (batch, groups, d_state, length), act)
    check_tensor(op, "D", D, (dim,), f32)
    check_tensor(op, "z", z, (batch, dim, length), act)
    check_tensor(op, "delta_bias", delta_bias, (dim,), f32)
    check_tensor(op, "initial_state", initial_state, (batch, dim, d_state), f32)


def check_ssd_scan(x, dt, A, B, C, D, z, dt_bias, initial_state) -> None:
    op = "mamba::ssd_scan"
    _require(x.dim() == 4, op, f"x must have shape [batch, seqlen, heads, headdim], got {_shape(x)}")
    _require(x.dtype in ACTIVATION_DTYPES, op, f"x must be float32, float16 or bfloat16, got {x.dtype}")
    batch, length, heads, head_dim = x.shape
    _require(B.dim() == 4, op, f"B must have shape [batch, seqlen, groups, dstate], got {_shape(B)}")
    groups, d_state = B.shape[2], B.shape[3]
    _require(groups >= 1 and heads % groups == 0, op, f"heads ({heads}) must be a multiple of groups ({groups})")
    act = (x.dtype,)
    f32 = (torch.float32,)
    check_tensor(op, "dt", dt, (batch, length, heads), act)
    check_tensor(op, "A", A, (heads,), f32)
    check_tensor(op, "B", B, (batch, length, groups, d_state), act)
    check_tensor(op, "C", C, (batch, length, groups, d_state), act)
    check_tensor(op, "D", D, (heads,), f32)
    check_tensor(op, "z", z, (batch, length, heads, head_dim), act)
    check_tensor(op, "dt_bias", dt_bias, (heads,), f32)
    check_tensor(op, "initial_state", initial_state, (batch, heads, head_dim, d_state), f32)
