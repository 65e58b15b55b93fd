"""A TensorRT engine built by build_engine (`trt`): runs on CUDA, states stay on the GPU."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MambaExportError
from ..models import config_from_dict, zero_state
from ..tensorrt import read_engine_info
from ..tensorrt.engine import Engine
from .base import State, check_token_ids


class TrtBackend:
    """``plan_path`` and its sidecar PLAN.json as written by ``build_engine``. Sequence
    length 1 runs in the decode profile, anything longer in the prefill profile."""

    def __init__(self, plan_path: str | Path, name: str = "trt"):
        self.name = name
        self.info = read_engine_info(plan_path)
        self._engine = Engine(plan_path)
        self.device, self.context = self._engine.device, self._engine.context
        export = self.info["export"]
        self.input_names, self.output_names = export["inputs"], export["outputs"]
        self.config = config_from_dict(export["config"])
        self._profile = None

    def empty_state(self, batch: int) -> State:
        return zero_state(self.config, batch, self._engine.dtype("past_conv_state.0"), self.device)

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
        check_token_ids(input_ids, self.config.vocab_size)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self._select_profile(input_ids.shape[0], input_ids.shape[1], stream)
        flat = [input_ids, *(t for pair in state for t in pair)]
        if len(flat) != len(self.input_names):
            raise MambaExportError(f"expected the state of {self.config.n_layer} layers, got {len(state)}")
        outputs = self._engine.run(dict(zip(self.input_names, flat)), self.output_names, stream)
        logits, *new = outputs
        return logits, [(new[2 * i], new[2 * i + 1]) for i in range(len(new) // 2)]
