"""The exported norms are ones ONNX Runtime fuses: in the graph a session runs (its optimised
graph, written by ORT itself), every RMSNorm of a Mamba-1 model and of a one-group Mamba-2
model (its gated norm too) is one SimplifiedLayerNormalization node, in float32 and float16.
Left unfused, each is seven elementwise nodes: kernels and per-node host work at every
decode step (docs/performance.md, "End to end on the H100")."""

import collections

import onnx
import pytest

from mamba_export.export.onnx_export import export_onnx
from mamba_export.models import Mamba1Config, Mamba2Config
from mamba_export.runtime.ort import import_onnxruntime, ort_session
from test_export import random_model

MAMBA1 = Mamba1Config(d_model=32, n_layer=2, vocab_size=61, d_state=4, d_conv=4, expand=2)
MAMBA2 = Mamba2Config(d_model=32, n_layer=2, vocab_size=61, d_state=8, headdim=8, ngroups=1)


def optimised_ops(path, tmp_path) -> collections.Counter:
    options = import_onnxruntime().SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort_session(path, session_options=options)
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("cfg, norms", [(MAMBA1, MAMBA1.n_layer + 1), (MAMBA2, 2 * MAMBA2.n_layer + 1)],
                         ids=["mamba1", "mamba2"])
def test_every_rms_norm_is_one_fused_node(cfg, norms, dtype, tmp_path):
    ops = optimised_ops(export_onnx(random_model(cfg), tmp_path / "export", dtype=dtype), tmp_path)
    assert ops["SimplifiedLayerNormalization"] == norms, ops
    assert not ops.keys() & {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Div"}, ops
