"""Running a serialized engine from torch: tensors bound by address, on a torch CUDA stream.
One place for the `trt` backend (language models) and for validating any module's engine."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MambaExportError, MissingDependencyError
from .compat import import_tensorrt, load_plugin, make_logger


class Engine:
    """``plan_path``'s engine with one execution context on the current CUDA device."""

    def __init__(self, plan_path: str | Path):
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise MissingDependencyError("running a TensorRT engine needs a CUDA device visible to PyTorch")
        load_plugin(trt)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.logger = make_logger(trt)
        self._runtime = trt.Runtime(self.logger)  # must outlive the engine
        self.engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise MambaExportError(f"TensorRT could not load {plan_path}{self.logger.explain()}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise MambaExportError(f"TensorRT could not create an execution context{self.logger.explain()}")
        self._to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                          trt.int32: torch.int32, trt.int64: torch.int64, trt.bool: torch.bool}  # fmt: skip

    def dtype(self, name: str) -> torch.dtype:
        """The engine's type of tensor ``name`` (the network is strongly typed: the export's)."""
        return self._to_torch[self.engine.get_tensor_dtype(name)]

    def run(self, inputs: dict[str, torch.Tensor], output_names: list[str], stream: int) -> list[torch.Tensor]:
        """Enqueues one run on ``stream`` (a CUDA stream handle) and returns the outputs, fresh
        tensors that are ready once the stream gets there. Inputs are moved to the device and
        the engine's types first; allocations later in stream order may reuse them safely."""
        bound = {name: t.to(self.device, self.dtype(name)).contiguous() for name, t in inputs.items()}
        for name, tensor in bound.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise MambaExportError(f"the engine does not accept {name} of shape {list(tensor.shape)}"
                                       f"{self.logger.explain()}")  # fmt: skip
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = [torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtype(name), device=self.device)
                   for name in output_names]  # fmt: skip
        for name, tensor in zip(output_names, outputs):
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(stream):
            raise MambaExportError(f"TensorRT failed to run the engine{self.logger.explain()}")
        return outputs
