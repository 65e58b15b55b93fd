"""ort-cuda's decode steps replayed as CUDA graphs (mamba_export/backends/ort_cuda_graphs.py).

On a GPU with onnxruntime-gpu, for a Mamba-1 and a Mamba-2 model: steps in graphs against the
same export launching every node (`cuda_graphs=False`) and against eager PyTorch; a returned
state stays the caller's through later steps and can be stepped from again; a returned state
with one tensor replaced; a state on the host; batch sizes each with their own graph and, past
the limit, without one; a state of the wrong shape refused; a portable export, whose Scan ORT
will not capture, run without graphs. Without a GPU: the session's setting on the CPU
provider, and the packing of a state into one buffer.
"""

from __future__ import annotations

import pytest
import torch

import test_ort_selective_scan as single  # skips this module without onnxruntime or onnx
from mamba_export import MambaExportError
from mamba_export.backends import ort_cuda_graphs
from mamba_export.backends.ort_backend import OrtBackend
from mamba_export.backends.torch_backend import TorchBackend
from mamba_export.export.onnx_export import export_onnx
from mamba_export.models import Mamba1Config, Mamba2Config, build_model
from mamba_export.validate import TOLERANCES, compare

ort = single.ort
HAS_GPU = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and onnxruntime-gpu")
VOCAB = 96
CONFIGS = {
    "mamba1": Mamba1Config(d_model=64, n_layer=2, vocab_size=VOCAB),
    "mamba2": Mamba2Config(d_model=64, n_layer=2, vocab_size=VOCAB, d_state=16, headdim=16, ngroups=2, chunk_size=8),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    """(eager model, export directory), float32."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[request.param]).eval()
    return model, export_onnx(model, tmp_path_factory.mktemp(request.param) / "export").parent


def graphs_and_plain(export_dir) -> tuple[OrtBackend, OrtBackend]:
    return (OrtBackend(export_dir, name="ort-cuda", device="cuda"),
            OrtBackend(export_dir, name="ort-cuda", device="cuda", cuda_graphs=False))  # fmt: skip


def flat(state) -> list[torch.Tensor]:
    return [t for pair in state for t in pair]


def prefill(backend: OrtBackend, batch: int, seed: int):
    ids = torch.randint(0, VOCAB, (batch, 11), generator=torch.Generator().manual_seed(seed))
    return backend.forward(ids, backend.empty_state(batch))[1]


def tokens(batch: int, steps: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, steps), generator=torch.Generator().manual_seed(seed))


def decode(backend: OrtBackend, ids: torch.Tensor, state):
    """Logits of every step [batch, steps, vocab] and the last state."""
    logits = []
    for i in range(ids.shape[1]):
        step, state = backend.forward(ids[:, i : i + 1], state)
        logits.append(step)
    return torch.cat(logits, 1), state


def assert_same_run(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """The same kernels on the same inputs: equal up to a reordered sum at most."""
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@gpu
def test_steps_in_graphs_match_launching_every_node_and_eager(exported):
    model, export_dir = exported
    graphs, plain = graphs_and_plain(export_dir)
    ids = tokens(2, 7, seed=1)
    runs = [decode(b, ids, prefill(b, 2, seed=0)) for b in (graphs, plain)]
    assert_same_run([runs[0][0], *flat(runs[0][1])], [runs[1][0], *flat(runs[1][1])])
    errors = compare(graphs, TorchBackend(model), batch=3, prompt_len=20, decode_steps=6, vocab_size=VOCAB)
    rel, state, greedy = TOLERANCES["float32"]
    assert errors["max_rel_err"] <= rel and errors["state_max_rel_err"] <= state and errors["greedy_match"] >= greedy


@gpu
def test_a_returned_state_stays_the_callers(exported):
    _, export_dir = exported
    graphs, plain = graphs_and_plain(export_dir)
    ids = tokens(2, 6, seed=2)
    logits, kept = graphs.forward(ids[:, :1], prefill(graphs, 2, seed=0))
    before = [t.clone() for t in [logits, *flat(kept)]]
    decode(graphs, ids[:, 1:], kept)  # later steps reuse the graph's buffers
    assert all(torch.equal(x, y) for x, y in zip(before, [logits, *flat(kept)], strict=True))
    # Stepping again from the older state (a branch) is stepping from it without graphs.
    assert_same_run(flat(graphs.forward(ids[:, 3:4], kept)[1]), flat(plain.forward(ids[:, 3:4], kept)[1]))


@gpu
def test_a_returned_state_with_a_tensor_replaced_goes_in_as_it_is(exported):
    """A returned state is views into one packed buffer, copied in at once when passed back;
    with one of its tensors replaced by the caller, the replacement is what goes in."""
    _, export_dir = exported
    graphs, plain = graphs_and_plain(export_dir)
    ids = tokens(2, 3, seed=7)
    _, state = graphs.forward(ids[:, :1], prefill(graphs, 2, seed=0))
    _, state = graphs.forward(ids[:, 1:2], state)  # a replay: the state is packed
    conv, ssm = state[-1]
    state[-1] = (conv, torch.full_like(ssm, 0.5))
    assert_same_run(flat(graphs.forward(ids[:, 2:], state)[1]), flat(plain.forward(ids[:, 2:], state)[1]))


@gpu
def test_a_state_on_the_host_is_copied_in(exported):
    _, export_dir = exported
    graphs, plain = graphs_and_plain(export_dir)
    state = [(conv.cpu(), ssm.cpu()) for conv, ssm in prefill(plain, 2, seed=3)]
    step = tokens(2, 1, seed=4)
    for _ in range(2):  # the capture, then a replay
        assert_same_run(flat(graphs.forward(step, state)[1]), flat(plain.forward(step, state)[1]))


@gpu
def test_each_batch_size_has_its_graph_up_to_the_limit(exported, monkeypatch):
    _, export_dir = exported
    monkeypatch.setattr(ort_cuda_graphs, "MAX_GRAPHS", 2)
    graphs, plain = graphs_and_plain(export_dir)
    for i, batch in enumerate([1, 3, 1, 2, 3, 4, 2]):  # 1 and 3 get graphs; 2 and 4 run without
        state, step = prefill(plain, batch, seed=10 + i), tokens(batch, 1, seed=20 + i)
        (a, a_state), (b, b_state) = graphs.forward(step, state), plain.forward(step, state)
        assert_same_run([a, *flat(a_state)], [b, *flat(b_state)])
    assert graphs.decode_graphs.batch_sizes == [1, 3]


@gpu
def test_a_state_of_another_batch_size_is_refused_in_a_graph_step(exported):
    _, export_dir = exported
    graphs, _ = graphs_and_plain(export_dir)
    graphs.forward(tokens(2, 1, seed=5), prefill(graphs, 2, seed=0))  # batch 2 has its graph now
    with pytest.raises(MambaExportError, match=r"past_conv_state\.0 must have shape \[batch=2"):
        graphs.forward(tokens(2, 1, seed=5), prefill(graphs, 3, seed=0))


@gpu
def test_an_export_onnx_runtime_will_not_capture_runs_without_graphs(exported, tmp_path):
    """The portable export's Scan is control flow, which ORT refuses to capture when it creates
    the session: the backend creates it again without graphs and decodes as the eager model."""
    model, _ = exported
    export_dir = export_onnx(model, tmp_path / "portable", portable=True).parent
    backend = OrtBackend(export_dir, name="ort-cuda", device="cuda")
    assert backend.decode_graphs is None
    errors = compare(backend, TorchBackend(model), batch=2, prompt_len=12, decode_steps=4, vocab_size=VOCAB)
    rel, state, greedy = TOLERANCES["float32"]
    assert errors["max_rel_err"] <= rel and errors["state_max_rel_err"] <= state and errors["greedy_match"] >= greedy


def test_on_the_cpu_provider_there_are_no_graphs(exported):
    _, export_dir = exported
    backend = OrtBackend(export_dir)
    assert backend.decode_graphs is None
    assert backend.forward(tokens(1, 1, seed=6), backend.empty_state(1))[0].shape == (1, 1, VOCAB)


def test_a_packing_lays_tensors_out_aligned_and_finds_its_own_views():
    shapes = [([2, 3, 5], torch.float32), ([7], torch.float16), ([2, 4], torch.int64)]
    packing = ort_cuda_graphs.Packing(shapes)
    buffer = packing.empty("cpu")
    views = packing.views(buffer)
    assert [(list(v.shape), v.dtype) for v in views] == shapes
    assert [v.data_ptr() - buffer.data_ptr() for v in views] == [0, 256, 512] and packing.nbytes == 768
    for i, v in enumerate(views):
        v.fill_(i + 1)
    copy = packing.views(buffer.clone())  # what a step returns
    assert all(torch.equal(a, b) for a, b in zip(views, copy, strict=True))
    packed = packing.buffer_of(copy)
    assert packed.dtype == torch.uint8 and packed.data_ptr() == copy[0].data_ptr() and packed.numel() == 768
    assert packing.buffer_of([copy[0], copy[1].clone(), copy[2]]) is None
    assert packing.buffer_of([copy[1], copy[0], copy[2]]) is None
    assert packing.buffer_of([t.clone() for t in copy]) is None
