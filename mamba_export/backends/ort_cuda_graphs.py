"""CUDA graphs for ort-cuda's decode steps (one token per sequence).

ONNX Runtime launches a kernel per node with its executor's host work around it, which made a
decode step of a 130M model take milliseconds for a fraction of a millisecond on the GPU
(docs/performance.md). With the CUDA provider's ``enable_cuda_graph`` it captures the step
once and then replays it: one graph launch per step.

ORT replays a graph on the device addresses bound when it was captured and looks at no later
binding, so each batch size gets its own graph (the run option ``gpu_graph_id``) and its own
buffers, bound once. A step copies the token ids and the state into them and copies the
logits and the new state out into fresh tensors, so the caller owns what ``forward`` returns,
as without graphs. The state goes in and comes out through separate buffers: ORT runs a new
graph's step twice before capturing it (to size its memory arena), which would advance a
state updated in place.

A state is two tensors per layer, so copying it tensor by tensor cost more than the replay
itself (a mamba-130m step on an H100: 0.8 ms of copies around a 1.06 ms replay). The graph's
state buffers are therefore views into one packed buffer, a returned state is views into one
packed copy of it, and a state passed back in that form (the usual generation loop) goes in
with one copy; any other state goes in tensor by tensor.
"""

from __future__ import annotations

import math

import torch

from ..errors import MambaExportError, first_line
from ..runtime.ort import import_onnxruntime

GRAPH_ID = "gpu_graph_id"  # ORT's run option: which graph a run captures or replays; "-1": none
# Graphs per session (one per batch size); steps of further batch sizes run without one.
MAX_GRAPHS = 8


def run_options(graph_id: int):
    """ORT run options for a run in graph ``graph_id`` (-1: without a graph), not synchronising
    at its end (the backend orders its stream with the caller's)."""
    options = import_onnxruntime().RunOptions()
    options.add_run_config_entry("disable_synchronize_execution_providers", "1")
    options.add_run_config_entry(GRAPH_ID, str(graph_id))
    return options


class Packing:
    """Tensors of given shapes and types laid out in one byte buffer, each at a 256-byte aligned
    offset, so that all of them move in one copy."""

    ALIGN = 256

    def __init__(self, specs: list[tuple[list[int], torch.dtype]]):
        self._items, offset = [], 0  # (byte offset, dtype, shape, contiguous strides)
        for shape, dtype in specs:
            strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
            self._items.append((offset, dtype, list(shape), strides))
            offset += -(-math.prod(shape) * dtype.itemsize // self.ALIGN) * self.ALIGN
        self.nbytes = offset
        self._dtypes = {dtype for _, dtype, _, _ in self._items}

    def empty(self, device) -> torch.Tensor:
        return torch.empty(self.nbytes, dtype=torch.uint8, device=device)

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """The tensors inside ``buffer`` (a tensor of ``empty``'s size, type and layout); one
        strided view each, a third of the host time of slicing and viewing (a step makes 48)."""
        typed = {dtype: buffer.view(dtype) for dtype in self._dtypes}
        return [typed[dtype].as_strided(shape, strides, offset // dtype.itemsize)
                for offset, dtype, shape, strides in self._items]  # fmt: skip

    def buffer_of(self, tensors: list[torch.Tensor]) -> torch.Tensor | None:
        """The packed buffer (bytes) whose ``views`` these tensors are, in order, or None."""
        if not tensors:
            return None
        storage = tensors[0].untyped_storage()
        start = storage.data_ptr()
        if storage.nbytes() != self.nbytes or len(tensors) != len(self._items):
            return None
        for t, (offset, dtype, shape, _) in zip(tensors, self._items):
            if (t.untyped_storage().data_ptr() != start or t.data_ptr() != start + offset or t.dtype != dtype
                    or list(t.shape) != shape or not t.is_contiguous()):  # fmt: skip
                return None
        return torch.empty(0, dtype=torch.uint8, device=tensors[0].device).set_(storage)


class _Graph:
    """One batch size's captured step: its buffers (the states' packed), their binding, its run
    options."""

    def __init__(self, backend, sizes: dict[str, int], graph_id: int):
        # inputs: the token ids, then the state; outputs: the logits, then the new state
        self.packing_in, self.packing_out = (Packing([(spec.resolve(sizes), spec.dtype) for spec in specs[1:]])
                                             for specs in (backend.inputs, backend.outputs))  # fmt: skip
        self.state_in, self.state_out = self.packing_in.empty(backend.device), self.packing_out.empty(backend.device)
        self.inputs = [*backend.empty(backend.inputs[:1], sizes), *self.packing_in.views(self.state_in)]
        self.outputs = [*backend.empty(backend.outputs[:1], sizes), *self.packing_out.views(self.state_out)]
        self.binding = backend.bind(self.inputs, self.outputs)
        self.options = run_options(graph_id)

    def copy_in(self, flat: list[torch.Tensor]) -> None:
        packed = self.packing_in.buffer_of(flat[1:])
        if packed is None:
            torch._foreach_copy_(self.inputs, flat)
        else:
            self.inputs[0].copy_(flat[0])
            self.state_in.copy_(packed)

    def copy_out(self) -> list[torch.Tensor]:
        return [self.outputs[0].clone(), *self.packing_out.views(self.state_out.clone())]


class DecodeGraphs:
    """The decode-step graphs of one OrtBackend whose session has ``enable_cuda_graph``."""

    def __init__(self, backend):
        self._backend = backend
        self._graphs: dict[int, _Graph] = {}

    def _run(self, graph: _Graph, flat: list[torch.Tensor]) -> None:
        # On the session's stream: a replay in flight there still reads the buffers.
        with self._backend.on_session_stream():
            graph.copy_in(flat)
            self._backend.session.run_with_iobinding(graph.binding, graph.options)

    @property
    def batch_sizes(self) -> list[int]:
        """The batch sizes whose step has been captured."""
        return sorted(self._graphs)

    def step(self, flat: list[torch.Tensor], sizes: dict[str, int]) -> list[torch.Tensor] | None:
        """The outputs of one decode step on inputs ``flat`` (ids, then the states; shapes
        checked), or None when this batch size gets no graph."""
        batch = flat[0].shape[0]
        graph = self._graphs.get(batch)
        if graph is None:
            if len(self._graphs) == MAX_GRAPHS:
                return None
            # Ids from 1: ORT takes a run without the option as graph 0.
            graph = _Graph(self._backend, sizes, len(self._graphs) + 1)
            try:  # ORT's capture: two runs to size its memory, the capture, a replay
                self._run(graph, flat)
            except Exception as e:  # ORT's exception types have no common base
                raise MambaExportError(f"ONNX Runtime could not capture the decode step (batch {batch}) as a "
                                       f"CUDA graph: {first_line(e)}; --no-cuda-graphs (cuda_graphs=False) runs "
                                       "without") from e
            self._graphs[batch] = graph
        else:
            self._run(graph, flat)
        # Copies made on the caller's stream, after the step: the next step's copy-in waits for them.
        return graph.copy_out()
