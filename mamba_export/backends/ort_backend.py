"""An exported model run by ONNX Runtime: `ort` (CPU) and `ort-cuda` (CUDA execution provider).

Tensors are bound by pointer (IO binding) on the backend's device, so on CUDA the logits and
the states stay on the GPU between calls. ORT runs on a stream torch made for it (the CUDA
provider's ``user_compute_stream``; torch's default stream has the null handle, which ORT
would not take as one) and does not synchronise at the end of a run: each call orders that
stream after the caller's current stream and the caller's stream after it, with events, so
the results are used like those of any torch operation.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .. import console
from ..errors import MambaExportError, MissingDependencyError
from ..export.onnx_export import check_graph_matches, read_export_info
from ..runtime.ort import cuda_unavailable, ort_session
from .base import State, check_token_ids
from .ort_cuda_graphs import DecodeGraphs, run_options

# ORT's type names of the graph's inputs and outputs, and their onnx.TensorProto numbers
# (what IO binding takes; numpy, hence ORT's numpy types, has no bfloat16).
_TORCH_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
                "tensor(int64)": torch.int64, "tensor(int32)": torch.int32}  # fmt: skip
_ONNX_TYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16, torch.int64: 7, torch.int32: 6}


class _Tensor:
    """A graph input or output: name, torch dtype, shape with symbolic dimensions as names."""

    def __init__(self, node_arg):
        self.name, self.shape = node_arg.name, list(node_arg.shape)
        if node_arg.type not in _TORCH_TYPES:
            raise MambaExportError(f"{self.name} has type {node_arg.type}, which this backend does not bind")
        self.dtype = _TORCH_TYPES[node_arg.type]

    def resolve(self, sizes: dict[str, int]) -> list[int]:
        """The shape with the symbols' sizes filled in."""
        if not all(isinstance(d, int) or d in sizes for d in self.shape):
            raise MambaExportError(f"the size of {self.name} {self.shape} does not follow from the inputs")
        return [d if isinstance(d, int) else sizes[d] for d in self.shape]


class OrtBackend:
    """``export_dir`` holds model.onnx + export.json as written by ``export_onnx``.
    ``device``: "cpu" (CPU execution provider) or a CUDA device (CUDA execution provider,
    the CPU one behind it for anything the CUDA one cannot run). ``cuda_graphs``: on CUDA,
    decode steps are captured and replayed as CUDA graphs (ort_cuda_graphs)."""

    def __init__(self, export_dir: str | Path, name: str = "ort", device: str | torch.device = "cpu",
                 session_options=None, cuda_graphs: bool = True):
        self.name, self.device = name, torch.device(device)
        self.info = read_export_info(export_dir)
        path = Path(export_dir) / "model.onnx"
        providers, self._run_options, self.decode_graphs = ["CPUExecutionProvider"], None, None
        if self.device.type == "cuda":
            reason = cuda_unavailable(needs_custom_op=not self.info["portable"])
            if reason:
                raise MissingDependencyError(f"backend {name}: {reason}")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            self._stream = torch.cuda.Stream(self.device)
            # HEURISTIC: cuDNN's exhaustive search (ORT's default) would rerun for every new prompt length.
            cuda = {"device_id": str(self.device.index), "user_compute_stream": str(self._stream.cuda_stream),
                    "cudnn_conv_algo_search": "HEURISTIC", "enable_cuda_graph": str(int(cuda_graphs))}  # fmt: skip
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
            # Runs not in a decode graph (prompts) must say so: ORT takes a run without an id as graph 0.
            self._run_options = run_options(-1)
        elif self.device.type != "cpu":
            raise MambaExportError(f"backend {name} runs on the CPU or CUDA, not on {self.device}")
        try:
            self.session = ort_session(path, providers=providers, session_options=session_options,
                                       custom_ops=not self.info["portable"])
        except MambaExportError as e:  # e.g. a node ORT would feed through host memory
            if not (cuda_graphs and "graph capture" in str(e)):
                raise
            console.info(f"{name}: decode steps run without CUDA graphs, which ONNX Runtime refused for this "
                         f"export ({e})")
            cuda_graphs = False
            providers[0][1]["enable_cuda_graph"] = "0"
            self.session = ort_session(path, providers=providers, session_options=session_options,
                                       custom_ops=not self.info["portable"])
        check_graph_matches(export_dir, self.info, self.session.get_modelmeta().custom_metadata_map)
        if self.device.type == "cuda":
            if self.session.get_providers()[0] != "CUDAExecutionProvider":
                raise MissingDependencyError(f"backend {name}: onnxruntime could not start its CUDA execution provider "
                                             "(its warning above says why, e.g. missing CUDA or cuDNN libraries)")
            if cuda_graphs:
                self.decode_graphs = DecodeGraphs(self)
        self.inputs = [_Tensor(a) for a in self.session.get_inputs()]
        self.outputs = [_Tensor(a) for a in self.session.get_outputs()]

    def empty_state(self, batch: int) -> State:
        """Zeros in the shapes and types of the graph's state inputs (zeros mean "start of sequence")."""
        zeros = [torch.zeros(t.resolve({"batch": batch}), dtype=t.dtype, device=self.device) for t in self.inputs[1:]]
        return [(zeros[i], zeros[i + 1]) for i in range(0, len(zeros), 2)]

    def _sizes(self, flat: list[torch.Tensor]) -> dict[str, int]:
        """The sizes of the graph's symbolic dimensions implied by its inputs, or
        MambaExportError naming an input of the wrong shape."""
        if len(flat) != len(self.inputs):
            layers, given = (len(self.inputs) - 1) // 2, (len(flat) - 1) // 2
            raise MambaExportError(f"expected the state of {layers} layers, got {given}")
        sizes: dict[str, int] = {}
        for spec, t in zip(self.inputs, flat):  # the first input to use a symbol sets its size
            expected = [sizes.setdefault(d, n) if isinstance(d, str) else d for d, n in zip(spec.shape, t.shape)]
            if len(spec.shape) != t.dim() or expected != list(t.shape):
                named = ", ".join(f"{d}={sizes[d]}" if d in sizes else str(d) for d in spec.shape)
                raise MambaExportError(f"{spec.name} must have shape [{named}], got {list(t.shape)}")
        return sizes

    def bind(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]):
        """An IO binding of the graph's inputs and outputs to these tensors on the device."""
        binding = self.session.io_binding()
        index = self.device.index or 0
        for bind, specs, tensors in ((binding.bind_input, self.inputs, inputs),
                                     (binding.bind_output, self.outputs, outputs)):  # fmt: skip
            for spec, t in zip(specs, tensors):
                bind(spec.name, self.device.type, index, _ONNX_TYPES[t.dtype], list(t.shape), t.data_ptr())
        return binding

    def empty(self, specs: list[_Tensor], sizes: dict[str, int]) -> list[torch.Tensor]:
        """Uninitialised tensors on the device for ``specs`` (self.inputs or self.outputs)."""
        return [torch.empty(spec.resolve(sizes), dtype=spec.dtype, device=self.device) for spec in specs]

    @contextlib.contextmanager
    def on_session_stream(self):
        """Work inside is enqueued on the session's stream, after what the caller's stream has
        enqueued so far and before what it enqueues next."""
        current = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        if current is None or current == self._stream:
            yield
            return
        self._stream.wait_stream(current)
        try:
            with torch.cuda.stream(self._stream):
                yield
        finally:
            current.wait_stream(self._stream)

    def forward(self, input_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        flat = [input_ids, *(t for pair in state for t in pair)]
        sizes = self._sizes(flat)
        check_token_ids(input_ids, self.info["config"]["vocab_size"])
        outputs = None
        if self.decode_graphs is not None and input_ids.shape[1] == 1:
            outputs = self.decode_graphs.step(flat, sizes)  # None: this batch size runs without a graph
        if outputs is None:
            inputs = [t.to(self.device, spec.dtype).contiguous() for spec, t in zip(self.inputs, flat)]
            outputs = self.empty(self.outputs, sizes)
            binding = self.bind(inputs, outputs)
            with self.on_session_stream():
                self.session.run_with_iobinding(binding, self._run_options)  # inputs: alive until then
        logits, *new = outputs
        return logits, [(new[2 * i], new[2 * i + 1]) for i in range(len(new) // 2)]
