"""Backends that run a Mamba LM with its recurrent state: eager torch, ONNX Runtime, TensorRT."""

from .base import Backend, State
from .torch_backend import TorchBackend

__all__ = ["Backend", "State", "TorchBackend"]
