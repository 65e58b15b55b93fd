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
"""

from __future__ import annotations

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


class _Graph:
    """One batch size's captured step: its buffers, their binding, its run options."""

    def __init__(self, backend, sizes: dict[str, int], graph_id: int):
        self.inputs, self.outputs = backend.empty(backend.inputs, sizes), backend.empty(backend.outputs, sizes)
        self.binding = backend.bind(self.inputs, self.outputs)
        self.options = run_options(graph_id)


class DecodeGraphs:
    """The decode-step graphs of one OrtBackend whose session has ``enable_cuda_graph``."""

    def __init__(self, backend):
        self._backend = backend
        self._graphs: dict[int, _Graph] = {}

    def _run(self, graph: _Graph, flat: list[torch.Tensor]) -> None:
        # On the session's stream: a replay in flight there still reads the buffers.
        with self._backend.on_session_stream():
            torch._foreach_copy_(graph.inputs, flat)
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
        return [t.clone() for t in graph.outputs]
