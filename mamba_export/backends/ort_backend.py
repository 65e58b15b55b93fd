"""An exported model run by ONNX Runtime (`ort`: CPU execution provider)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MissingDependencyError
from ..export.onnx_export import read_export_info
from ..models import config_from_dict, zero_state
from .base import State


class OrtBackend:
    """``export_dir`` holds model.onnx + export.json as written by ``export_onnx``."""

    def __init__(self, export_dir: str | Path, providers: list[str] | None = None, name: str = "ort",
                 session_options=None):
        self.name, self.device = name, torch.device("cpu")
        self.info = read_export_info(export_dir)
        path = Path(export_dir) / "model.onnx"
        if self.info["portable"]:  # standard ops only: no custom-op library needed
            try:
                import onnxruntime
            except ImportError:
                raise MissingDependencyError("the ort backend needs onnxruntime (pip install onnxruntime)") from None
            self.session = onnxruntime.InferenceSession(str(path), session_options, providers=providers)
        else:
            from ..runtime.ort import ort_session

            self.session = ort_session(path, providers=providers, session_options=session_options)
        self.conv_dtype = getattr(torch, self.info["state"]["conv"]["dtype"])
        self.output_names = self.info["outputs"]

    def empty_state(self, batch: int) -> State:
        return zero_state(config_from_dict(self.info["config"]), batch, self.conv_dtype, self.device)

    def forward(self, input_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        flat = [t for pair in state for t in pair]
        feeds = dict(zip(self.info["inputs"], [input_ids.cpu().numpy(), *(t.cpu().numpy() for t in flat)]))
        logits, *new = (torch.from_numpy(a) for a in self.session.run(self.output_names, feeds))
        return logits, [(new[2 * i], new[2 * i + 1]) for i in range(len(new) // 2)]
