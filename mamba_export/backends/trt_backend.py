"""A TensorRT engine built by build_engine (`trt`): runs on CUDA, states stay on the GPU."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MambaExportError, MissingDependencyError
from ..models import config_from_dict, zero_state
from ..tensorrt import import_tensorrt, load_plugin, read_engine_info
from ..tensorrt.compat import make_logger
from .base import State


class TrtBackend:
    """``plan_path`` and its sidecar PLAN.json as written by ``build_engine``. Sequence
    length 1 runs in the decode profile, anything longer in the prefill profile."""

    def __init__(self, plan_path: str | Path, name: str = "trt"):
        self.name = name
        self.info = read_engine_info(plan_path)
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise MissingDependencyError("the trt backend needs a CUDA device visible to PyTorch")
        load_plugin(trt)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise MambaExportError(f"TensorRT could not load {plan_path}{self._logger.explain()}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise MambaExportError(f"TensorRT could not create an execution context{self._logger.explain()}")
        export = self.info["export"]
        self.input_names, self.output_names = export["inputs"], export["outputs"]
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                    trt.int32: torch.int32, trt.int64: torch.int64}  # fmt: skip
        self.dtypes = {name: to_torch[self.engine.get_tensor_dtype(name)] for name in self.input_names + self.output_names}
        self.config = config_from_dict(export["config"])
        self._profile = None

    def empty_state(self, batch: int) -> State:
        return zero_state(self.config, batch, self.dtypes["past_conv_state.0"], self.device)

    def _select_profile(self, batch: int, sequence: int, stream: int) -> None:
        kind = "decode" if sequence == 1 else "prefill"
        profile = self.info["profiles"][kind]
        checks = (("batch", "batch", batch, profile["batch"]), ("sequence", "seq", sequence, profile["sequence"]))
        for what, flag, value, (low, _, high) in checks:
            if not low <= value <= high:
                raise MambaExportError(
                    f"{what} {value} is outside the engine's {kind} range {low}..{high}; "
                    f"rebuild it with mamba-export build-engine --min-{flag}/--max-{flag}"
                )
        if self._profile != profile["index"]:
            self.context.set_optimization_profile_async(profile["index"], stream)
            self._profile = profile["index"]

    def forward(self, input_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self._select_profile(input_ids.shape[0], input_ids.shape[1], stream)
        flat = [input_ids, *(t for pair in state for t in pair)]
        if len(flat) != len(self.input_names):
            raise MambaExportError(f"expected the state of {self.config.n_layer} layers, got {len(state)}")
        inputs = [t.to(self.device, self.dtypes[name]).contiguous() for name, t in zip(self.input_names, flat)]
        for name, tensor in zip(self.input_names, inputs):
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise MambaExportError(f"the engine does not accept {name} of shape {list(tensor.shape)}")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = [torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device=self.device)
                   for name in self.output_names]  # fmt: skip
        for name, tensor in zip(self.output_names, outputs):
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(stream):
            raise MambaExportError(f"TensorRT failed to run the engine{self._logger.explain()}")
        logits, *new = outputs
        return logits, [(new[2 * i], new[2 * i + 1]) for i in range(len(new) // 2)]
