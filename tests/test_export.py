"""ONNX export of the Mamba-1 LM: graph structure, the custom-op and portable forms in ONNX
Runtime against eager PyTorch (float32 and float16), prefill/decode through one graph, safe
output handling, and onnx's shape inference of the mamba ops."""

import json
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import mamba_export
from mamba_export.export.onnx_export import export_onnx, ort_newest_opset, state_names
from mamba_export.models import Mamba1Config, build_model
from mamba_export.runtime.ort import ort_session
from mamba_export.validate import TOLERANCES

CONFIG = Mamba1Config(d_model=32, n_layer=2, vocab_size=61, d_state=4, d_conv=4, expand=2)


def random_model(cfg=CONFIG, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg).eval()  # of cfg's architecture
    with torch.no_grad():  # move every parameter off its initial value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "custom": export_onnx(model, root / "custom"),
        "portable": export_onnx(model, root / "portable", portable=True),
    }


def run(session, ids, state):
    feeds = {"input_ids": ids.numpy()}
    for name, t in zip(state_names(len(state), "past"), [t for pair in state for t in pair]):
        feeds[name] = t.numpy()
    logits, *flat = session.run(None, feeds)
    return torch.from_numpy(logits), [(torch.from_numpy(flat[2 * i]), torch.from_numpy(flat[2 * i + 1]))
                                      for i in range(len(flat) // 2)]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def test_scan_is_one_custom_node_per_layer(exports):
    proto = onnx.load(str(exports["custom"]))
    scans = [n for n in proto.graph.node if n.op_type == "SelectiveScan"]
    assert len(scans) == CONFIG.n_layer and all(n.domain == "mamba" for n in scans)
    assert not [n for n in proto.graph.node if n.op_type in ("Loop", "Scan", "If")], "the scan must not be unrolled"
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("mamba", 1)}
    assert proto.ir_version <= 13  # what ONNX Runtime 1.31 reads
    for node in scans:
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs == dict(delta_softplus=1, has_D=1, has_z=1, has_delta_bias=1, has_initial_state=1)
        assert len(node.input) == 9
    onnx.checker.check_model(proto, full_check=True)


def test_interface_names_and_dynamic_dims(exports):
    proto = onnx.load(str(exports["custom"]))

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    inputs = {v.name: dims(v) for v in proto.graph.input}
    outputs = {v.name: dims(v) for v in proto.graph.output}
    assert list(inputs) == ["input_ids", *state_names(CONFIG.n_layer, "past")]
    assert list(outputs) == ["logits", *state_names(CONFIG.n_layer, "present")]
    assert inputs["input_ids"] == ["batch", "sequence"]
    assert inputs["past_conv_state.1"] == ["batch", CONFIG.d_inner, CONFIG.d_conv - 1]
    assert inputs["past_ssm_state.1"] == ["batch", CONFIG.d_inner, CONFIG.d_state]
    assert outputs["logits"] == ["batch", "sequence", CONFIG.vocab_size]


@pytest.mark.parametrize("form", ["custom", "portable"])
@pytest.mark.parametrize("batch, prompt, decode", [(1, 1, 3), (3, 7, 4), (2, 40, 2)])
def test_prefill_then_decode_matches_eager(model, exports, form, batch, prompt, decode):
    """One graph: prefill from zero state, then token-by-token decode from the returned state."""
    if form == "custom":
        session = mamba_export.ort_session(exports["custom"])
    else:  # the portable form needs no custom-op library: a stock session
        session = onnxruntime.InferenceSession(str(exports["portable"]))
    ids = torch.randint(0, CONFIG.vocab_size, (batch, prompt + decode), generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref_logits, ref_state = model(ids)
    logits, state = run(session, ids[:, :prompt], model.empty_state(batch))
    steps = [logits]
    for t in range(prompt, prompt + decode):
        logits, state = run(session, ids[:, t : t + 1], state)
        steps.append(logits)
    assert rel(torch.cat(steps, 1), ref_logits) < 1e-5
    for (conv, ssm), (ref_conv, ref_ssm) in zip(state, ref_state):
        assert rel(ssm, ref_ssm) < 1e-5 and rel(conv, ref_conv) < 1e-6


def test_portable_equals_custom(exports):
    custom = mamba_export.ort_session(exports["custom"])
    portable = onnxruntime.InferenceSession(str(exports["portable"]))
    model = random_model()
    ids = torch.randint(0, CONFIG.vocab_size, (2, 33), generator=torch.Generator().manual_seed(3))
    state = [(c.normal_(), s.normal_()) for c, s in model.empty_state(2)]  # a non-trivial incoming state
    (a, sa), (b, sb) = run(custom, ids, state), run(portable, ids, state)
    assert rel(a, b) < 1e-5
    assert all(rel(x[1], y[1]) < 1e-5 for x, y in zip(sa, sb))


def test_portable_has_no_custom_domain(exports):
    proto = onnx.load(str(exports["portable"]))
    assert not [n for n in proto.graph.node if n.domain == "mamba"]
    assert "mamba" not in {o.domain for o in proto.opset_import}


def test_export_json_describes_the_graph(exports):
    info = json.loads((exports["custom"].parent / "export.json").read_text())
    assert info["architecture"] == "mamba1" and info["config"]["d_model"] == CONFIG.d_model
    assert info["dtype"] == "float32" and info["portable"] is False
    assert info["custom_domain"] == {"domain": "mamba", "version": 1}
    assert info["inputs"][0] == "input_ids" and info["outputs"][0] == "logits"
    assert info["state"]["ssm"]["shape"] == ["batch", CONFIG.d_inner, CONFIG.d_state]
    assert {"torch", "onnx", "mamba_export"} <= set(info["versions"])


def test_fp16_export_keeps_ssm_state_float32(tmp_path):
    model = random_model()
    path = export_onnx(model, tmp_path / "fp16", dtype="fp16")
    proto = onnx.load(str(path))
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types["logits"] == F16 and types["past_conv_state.0"] == F16 and types["present_conv_state.0"] == F16
    assert types["past_ssm_state.0"] == F32 and types["present_ssm_state.0"] == F32
    assert model.lm_head.weight.dtype == torch.float32, "export must not convert the caller's model"


def test_existing_export_is_not_overwritten(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"user data")
    with pytest.raises(mamba_export.MambaExportError, match="already holds an export"):
        export_onnx(model, out)
    assert (out / "model.onnx").read_bytes() == b"user data"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"], "a refused export leaves nothing behind"


def test_fp16_export_runs_in_ort_against_eager_float32(tmp_path):
    """The float16 graph through ONNX Runtime with our op, prefill then decode, held to
    validate's float16 tolerances against the eager float32 model."""
    rel_tol, state_tol, greedy_tol = TOLERANCES["float16"]
    model = random_model()
    session = mamba_export.ort_session(export_onnx(model, tmp_path / "fp16", dtype="fp16"))
    ids = torch.randint(0, CONFIG.vocab_size, (2, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref_logits, ref_state = model(ids)
    half_state = [(conv.half(), ssm) for conv, ssm in model.empty_state(2)]
    logits, state = run(session, ids[:, :32], half_state)
    steps = [logits]
    for t in range(32, 40):
        logits, state = run(session, ids[:, t : t + 1], state)
        steps.append(logits)
    logits = torch.cat(steps, 1)
    assert logits.dtype == torch.float16 and state[0][0].dtype == torch.float16 and state[0][1].dtype == torch.float32
    assert rel(logits, ref_logits) <= rel_tol
    assert max(rel(t, r) for pair, ref_pair in zip(state, ref_state) for t, r in zip(pair, ref_pair)) <= state_tol
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).double().mean() >= greedy_tol


# --- ONNX shape inference from the schemas (export/schemas.py, docs/ops.md) ----------------

F16, BF16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT


def one_node(op_type, inputs, **attributes):
    """A model of one mamba node; inputs are (name, element type, shape) in packed order, the
    outputs y and final_state are declared without type or shape."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node(op_type, [n for n, _, _ in inputs], ["y", "final_state"], domain="mamba",
                               **attributes)],
        op_type,
        [onnx.helper.make_tensor_value_info(*i) for i in inputs],
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in ("y", "final_state")],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18),
                                                        onnx.helper.make_opsetid("mamba", 1)])


def inferred(model):
    """{output: (element type, dims as names or sizes, None where unknown)} after strict inference."""
    outputs = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output
    return {o.name: (o.type.tensor_type.elem_type,
                     [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                      for d in o.type.tensor_type.shape.dim]) for o in outputs}  # fmt: skip


def selective_scan_inputs(t=F16, n=16, **shapes):
    table = {"u": ["batch", "dim", "L"], "delta": ["batch", "dim", "L"], "A": ["dim", n], "B": ["batch", 1, n, "L"],
             "C": ["batch", 1, n, "L"], "D": ["dim"], "z": ["batch", "dim", "L"], "delta_bias": ["dim"],
             "initial_state": ["batch", "dim", n]}  # fmt: skip
    table.update(shapes)
    floats = ("A", "D", "delta_bias", "initial_state")
    return [(name, F32 if name in floats else t, shape) for name, shape in table.items()]


FLAGS = {f"has_{n}": 1 for n in ("D", "z", "delta_bias", "initial_state")}


def test_selective_scan_shape_inference():
    assert inferred(one_node("SelectiveScan", selective_scan_inputs(), delta_softplus=1, **FLAGS)) == {
        "y": (F16, ["batch", "dim", "L"]), "final_state": (F32, ["batch", "dim", 16])}
    # No optional inputs: N comes from A alone. Each symbol as the inputs know it best: batch
    # and L unknown in u, named in delta, sizes in B.
    inputs = selective_scan_inputs(BF16, 4, u=[None, "dim", None], B=[3, 1, 4, 7])[:5]
    assert inferred(one_node("SelectiveScan", inputs)) == {
        "y": (BF16, [3, "dim", 7]), "final_state": (F32, [3, "dim", 4])}
    inputs = selective_scan_inputs(u=[None, "dim", None])[:5]
    assert inferred(one_node("SelectiveScan", inputs))["y"] == (F16, ["batch", "dim", "L"])


def test_ssd_scan_shape_inference():
    inputs = [("x", BF16, ["batch", "L", "H", "P"]), ("dt", BF16, ["batch", "L", "H"]), ("A", F32, [8]),
              ("B", BF16, ["batch", "L", 2, 64]), ("C", BF16, ["batch", "L", 2, 64]), ("D", F32, ["H"]),
              ("dt_bias", F32, ["H"]), ("initial_state", F32, ["batch", "H", 32, "N"])]  # fmt: skip
    model = one_node("SSDScan", inputs, dt_softplus=1, dt_min=0.0, dt_max=1.0, has_D=1, has_dt_bias=1,
                     has_initial_state=1)
    assert inferred(model) == {"y": (BF16, ["batch", "L", 8, 32]), "final_state": (F32, ["batch", 8, 32, 64])}


@pytest.mark.parametrize("inputs, flags, message", [
    (selective_scan_inputs(A=["dim"]), FLAGS, "A must have shape [dim, N], got rank 1"),
    (selective_scan_inputs(initial_state=["batch", "dim", 8]), FLAGS, "initial_state has N = 8, an earlier input 16"),
    (selective_scan_inputs()[:8], FLAGS, "expected 9 inputs"),
    (selective_scan_inputs(), dict(FLAGS, has_z=2), "attribute has_z must be 0 or 1, got 2"),
])  # fmt: skip
def test_shape_inference_rejects_contract_violations(inputs, flags, message):
    with pytest.raises(onnx.shape_inference.InferenceError, match=re.escape(f"mamba.SelectiveScan: {message}")):
        onnx.shape_inference.infer_shapes(one_node("SelectiveScan", inputs, **flags))


def test_exported_graph_infers_scan_shapes(exports):
    """Onnx's own inference over the whole exported graph reaches the scan outputs, the
    present_ssm_state graph outputs included, once their declared shapes are removed."""
    proto = onnx.load(str(exports["custom"]))
    proto.graph.ClearField("value_info")
    for output in proto.graph.output:
        output.type.tensor_type.ClearField("shape")
    shapes = inferred(proto)
    for i in range(CONFIG.n_layer):
        assert shapes[f"present_ssm_state.{i}"] == (F32, ["batch", CONFIG.d_inner, CONFIG.d_state])


def test_export_json_records_the_opset_written(model, tmp_path):
    path = export_onnx(model, tmp_path, opset=19)
    written = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert json.loads((tmp_path / "export.json").read_text())["opset"] == written[""] == 19


def test_export_refuses_an_opset_onnxruntime_cannot_load(model, tmp_path):
    """onnx writes opsets that the installed onnxruntime may not read yet: such an export would
    only fail later, in every session."""
    readable = ort_newest_opset()
    if readable == onnx.defs.onnx_opset_version():
        pytest.skip("the installed onnxruntime reads every opset the installed onnx writes")
    with pytest.raises(mamba_export.MambaExportError, match=f"opset {readable + 1} cannot be loaded by the "
                       f"installed onnxruntime .*; choose one between 18 and {readable}"):  # fmt: skip
        export_onnx(model, tmp_path / "out", opset=readable + 1)
    assert not (tmp_path / "out").exists()
    newest = export_onnx(model, tmp_path / "newest", opset=readable)
    ort_session(newest)  # loads
    # The bound is ORT's own: the same graph declared one opset later is refused by it.
    proto = onnx.load(str(newest))
    next(o for o in proto.opset_import if o.domain in ("", "ai.onnx")).version = readable + 1
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    with pytest.raises(mamba_export.MambaExportError, match="ONNX Runtime cannot load"):
        ort_session(proto.SerializeToString())


def test_export_refuses_an_opset_it_would_not_write(model, tmp_path):
    """torch's exporter writes its lowest opset (18) when asked for less, without a word."""
    with pytest.raises(mamba_export.MambaExportError, match="opset must be between 18 and .*, not 17"):
        export_onnx(model, tmp_path / "out", opset=17)
    assert not (tmp_path / "out").exists()
