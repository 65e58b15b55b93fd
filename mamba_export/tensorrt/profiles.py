"""The engine's optimisation profiles: one for prefill (a range of sequence lengths) and one
for decode (sequence 1), both over the same batch range. Every state input takes the
profile's batch dimension; its other dimensions are fixed by the model. The export of any
other module (docs/custom-models.md) gets one profile, over the batch alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable

from ..errors import MambaExportError


@dataclass(frozen=True)
class ShapeRange:
    """min <= opt <= max, all at least 1; TensorRT tunes the kernels for ``opt``."""

    min: int
    opt: int
    max: int

    def check(self, what: str) -> ShapeRange:
        values = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) for v in values) or not 1 <= self.min <= self.opt <= self.max:
            raise MambaExportError(
                f"{what} range: need 1 <= min <= opt <= max, got min={self.min}, opt={self.opt}, max={self.max}"
            )
        return self

    def as_tuple(self) -> tuple[int, int, int]:
        return self.min, self.opt, self.max

    @classmethod
    def of(cls, what: str, min: int | None, opt: int | None, max: int | None, default: ShapeRange) -> ShapeRange:
        """From optional bounds: missing ones come from ``default``, an unspecified opt is
        the default's clamped into [min, max]; what was given is checked, never adjusted."""
        for name, given in (("min", min), ("opt", opt), ("max", max)):
            if given is not None and given < 1:  # before a default opt is clamped into the range
                raise MambaExportError(f"{what} range: {name} must be at least 1, got {given}")
        low = default.min if min is None else min
        high = default.max if max is None else max
        if opt is None:
            opt = default.opt if low <= default.opt <= high else (low if default.opt < low else high)
        return cls(low, opt, high).check(what)


DEFAULT_BATCH = ShapeRange(1, 1, 8)
DEFAULT_SEQUENCE = ShapeRange(1, 128, 2048)


@dataclass(frozen=True)
class Profiles:
    batch: ShapeRange = field(default=DEFAULT_BATCH)
    sequence: ShapeRange = field(default=DEFAULT_SEQUENCE)  # of the prefill profile

    def __post_init__(self):
        self.batch.check("batch")
        self.sequence.check("sequence")

    def ranges(self) -> dict[str, tuple[ShapeRange, ShapeRange]]:
        """Profile name -> (batch, sequence), in the order the profiles get their indices."""
        return {"prefill": (self.batch, self.sequence), "decode": (self.batch, ShapeRange(1, 1, 1))}

    def to_dict(self) -> dict:
        return {"batch": asdict(self.batch), "sequence": asdict(self.sequence)}

    def recorded(self, info: dict) -> dict:
        """What an engine built with these profiles for that export records of them (the
        "profiles" of its sidecar, build_engine)."""
        return {kind: {"index": i, **record} for i, (kind, (record, _)) in enumerate(self.for_export(info).items())}

    def for_export(self, info: dict) -> dict[str, tuple[dict, Callable]]:
        """Profile name -> (what the engine's sidecar records of it, the function giving an
        input's (min, opt, max) shapes from its name and dims), in index order, for the export
        that ``info`` (its export.json) describes. A module export has the one profile
        "module" over the batch range."""
        if info.get("kind") == "module":
            if self.sequence != DEFAULT_SEQUENCE:  # the CLI passes the default when no --*-seq is given
                raise MambaExportError(
                    "a module export's engine has one profile, over the batch: a sequence range "
                    "(--min/--opt/--max-seq) does not apply"
                )
            return {"module": ({"batch": list(self.batch.as_tuple())}, partial(module_input_shapes, batch=self.batch))}
        return {
            kind: ({"batch": list(batch.as_tuple()), "sequence": list(sequence.as_tuple())},
                   partial(input_shapes, batch=batch, sequence=sequence))
            for kind, (batch, sequence) in self.ranges().items()
        }  # fmt: skip


def input_shapes(name: str, dims: tuple[int, ...], batch: ShapeRange, sequence: ShapeRange):
    """(min, opt, max) shapes of one graph input (docs/export.md): input_ids is [batch,
    sequence]; a state input has a dynamic batch and fixed other dimensions."""
    if name == "input_ids":
        return tuple(zip(batch.as_tuple(), sequence.as_tuple()))
    if len(dims) < 1 or any(d < 0 for d in dims[1:]):
        raise MambaExportError(f"graph input {name} has shape {list(dims)}; expected [batch, fixed sizes...]")
    return tuple((b, *dims[1:]) for b in batch.as_tuple())


def module_input_shapes(name: str, dims: tuple[int, ...], batch: ShapeRange):
    """(min, opt, max) shapes of one input of a module export (docs/custom-models.md): a
    dynamic dim 0 is the batch; the other dimensions must be fixed by the export."""
    if any(d < 0 for d in dims[1:]):
        raise MambaExportError(
            f"graph input {name} has shape {list(dims)}: a module's engine takes a dynamic batch (dim 0) only; "
            "export without other dynamic dimensions"
        )
    if dims and dims[0] < 0:
        return tuple((b, *dims[1:]) for b in batch.as_tuple())
    return dims, dims, dims
