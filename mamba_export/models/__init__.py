"""Eager reference models, one module per architecture."""

from .mamba1 import Mamba1Config, Mamba1LMHeadModel

__all__ = ["Mamba1Config", "Mamba1LMHeadModel"]
