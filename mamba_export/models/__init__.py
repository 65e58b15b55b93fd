"""Eager reference models, one module per architecture, and the registry that lets the rest
of the package (loading, export, backends) stay architecture-generic."""

from __future__ import annotations

from typing import NamedTuple

from ..errors import MambaExportError
from .lm import MambaLMHeadModel, zero_state
from .mamba1 import Mamba1Config, Mamba1LMHeadModel
from .mamba2 import Mamba2Config, Mamba2LMHeadModel


class Architecture(NamedTuple):
    config: type  # a dataclass with to_dict/from_dict and state_shapes() (which zero_state reads)
    model: type[MambaLMHeadModel]


ARCHITECTURES = {
    "mamba1": Architecture(Mamba1Config, Mamba1LMHeadModel),
    "mamba2": Architecture(Mamba2Config, Mamba2LMHeadModel),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise MambaExportError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def config_from_dict(data: dict):
    """A config from its ``to_dict()`` form (export.json's "config"), of the architecture it names."""
    return architecture(data.get("architecture")).config.from_dict(data)


def build_model(cfg) -> MambaLMHeadModel:
    return architecture(cfg.architecture).model(cfg)


__all__ = [
    "ARCHITECTURES",
    "Mamba1Config",
    "Mamba1LMHeadModel",
    "Mamba2Config",
    "Mamba2LMHeadModel",
    "MambaLMHeadModel",
    "build_model",
    "config_from_dict",
    "zero_state",
]
