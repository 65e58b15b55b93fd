"""The custom ops' contract (docs/ops.md) as data, and the input checks read from it.

Each op's Inputs and Outputs tables are written here once: the checks below and the ONNX
schemas with their shape inference (export/schemas.py) both read them. The torch op and its
fake (export-time) implementation both call ``check``, so a contract violation is a clear
``ContractError`` at the call site, in eager mode and while exporting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import MambaExportError

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The torch messages spell these symbols as mamba_ssm's arguments do.
_WORDS = {"L": "seqlen", "N": "dstate", "G": "groups", "H": "heads", "P": "headdim"}


class ContractError(MambaExportError, ValueError):
    """An input violates the op contract in docs/ops.md."""


def _require(ok, op: str, message: str) -> None:
    if not ok:
        raise ContractError(f"{op}: {message}")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _words(symbols: tuple[str, ...]) -> str:
    return ", ".join(_WORDS.get(s, s) for s in symbols)


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


@dataclass(frozen=True)
class Operand:
    """One row of an Inputs or Outputs table: its shape in the page's symbols, its type
    float32 or else the activation type T (that of input 0)."""

    name: str
    shape: tuple[str, ...]
    float32: bool = False
    optional: bool = False


@dataclass(frozen=True)
class OpContract:
    """One op's tables: inputs in packing order (the required ones, then the optional ones),
    outputs; ``grouped`` is the symbol that must be a multiple of G; ``attributes`` checks the
    op's attributes that the page restricts (called with the op's name and them)."""

    torch_name: str
    inputs: tuple[Operand, ...]
    outputs: tuple[Operand, ...]
    grouped: str
    attributes: Callable[..., None] | None = None

    @property
    def required(self) -> tuple[Operand, ...]:
        return tuple(o for o in self.inputs if not o.optional)

    @property
    def optional(self) -> tuple[Operand, ...]:
        return tuple(o for o in self.inputs if o.optional)

    def check(self, *tensors: torch.Tensor | None, **attributes) -> None:
        """Checks the op's inputs, given in table order (None for an absent optional one), and
        its restricted attributes by name. Each symbol's size comes from the first required
        input that has it, so the ranks of those inputs and input 0's type are checked first;
        then every input against them."""
        op = self.torch_name
        sizes: dict = {}
        for index, (operand, t) in enumerate(zip(self.required, tensors)):
            if all(s in sizes for s in operand.shape):
                continue
            _require(t.dim() == len(operand.shape), op,
                     f"{operand.name} must have shape [{_words(operand.shape)}], got {_shape(t)}")
            if index == 0:
                _require(t.dtype in ACTIVATION_DTYPES, op,
                         f"{operand.name} must be float32, float16 or bfloat16, got {t.dtype}")
            for symbol, size in zip(operand.shape, t.shape):
                sizes.setdefault(symbol, size)
        whole, groups = sizes[self.grouped], sizes["G"]
        _require(groups >= 1 and whole % groups == 0, op,
                 f"{_words((self.grouped,))} ({whole}) must be a multiple of groups ({groups})")
        activation = (tensors[0].dtype,)
        for operand, t in zip(self.inputs, tensors, strict=True):
            dtypes = (torch.float32,) if operand.float32 else activation
            check_tensor(op, operand.name, t, tuple(sizes[s] for s in operand.shape), dtypes)
        if self.attributes is not None:
            self.attributes(op, **attributes)


def _check_dt_limits(op: str, dt_min: float, dt_max: float | None) -> None:
    """SSDScan's time-step clamp [dt_min, dt_max] (dt_max None: +inf), as the C kernels and the
    ORT op check it: a NaN bound or dt_min > dt_max would make every step NaN or dt_max."""
    high = math.inf if dt_max is None else dt_max
    _require(not (math.isnan(dt_min) or math.isnan(high)), op,
             f"dt_min and dt_max must not be NaN, got dt_min={dt_min}, dt_max={high}")
    _require(dt_min <= high, op, f"dt_min ({dt_min}) must be <= dt_max ({high})")


def _operand(name: str, shape: str, float32: bool = False, optional: bool = False) -> Operand:
    return Operand(name, tuple(shape.split()), float32, optional)


SELECTIVE_SCAN = OpContract(
    "mamba::selective_scan",
    inputs=(
        _operand("u", "batch dim L"),
        _operand("delta", "batch dim L"),
        _operand("A", "dim N", float32=True),
        _operand("B", "batch G N L"),
        _operand("C", "batch G N L"),
        _operand("D", "dim", float32=True, optional=True),
        _operand("z", "batch dim L", optional=True),
        _operand("delta_bias", "dim", float32=True, optional=True),
        _operand("initial_state", "batch dim N", float32=True, optional=True),
    ),
    outputs=(_operand("y", "batch dim L"), _operand("final_state", "batch dim N", float32=True)),
    grouped="dim",
)

SSD_SCAN = OpContract(
    "mamba::ssd_scan",
    inputs=(
        _operand("x", "batch L H P"),
        _operand("dt", "batch L H"),
        _operand("A", "H", float32=True),
        _operand("B", "batch L G N"),
        _operand("C", "batch L G N"),
        _operand("D", "H", float32=True, optional=True),
        _operand("z", "batch L H P", optional=True),
        _operand("dt_bias", "H", float32=True, optional=True),
        _operand("initial_state", "batch H P N", float32=True, optional=True),
    ),
    outputs=(_operand("y", "batch L H P"), _operand("final_state", "batch H P N", float32=True)),
    grouped="H",
    attributes=_check_dt_limits,
)
