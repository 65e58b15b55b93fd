"""ONNX export of the Mamba-2 LM: one mamba.SSDScan node per layer, the interface of
docs/export.md with Mamba-2's state shapes, and the graph in ONNX Runtime against eager
PyTorch for prefill and token-by-token decode: the portable form (standard ops only) in a stock
session, the custom-op form through the mamba op library. Also the portable expansion of a
single SSDScan node against the float64 loop of tests/naive.py."""

import itertools
import json
import math

import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

import mamba_export
from mamba_export import jsonio
from mamba_export.export.onnx_export import export_onnx, state_names
from mamba_export.export.portable import make_portable
from mamba_export.models import Mamba2Config
from naive import ssd_scan_naive
from scan_inputs import rel_err, ssd_inputs
from test_export import random_model, run

# A: the Hugging Face shape (gated norm, no gate in the scan), 2 groups, a binding dt clamp.
# B: mamba_ssm's rmsnorm=false (the scan applies the gate: has_z), one group, exported in float16.
CONFIG_A = Mamba2Config(d_model=32, n_layer=2, vocab_size=61, d_state=8, headdim=8, ngroups=2, dt_limit=(0.05, 0.5))
CONFIG_B = Mamba2Config(d_model=32, n_layer=2, vocab_size=40, d_state=16, headdim=16, ngroups=1, d_conv=3,
                        gated_norm=False, tie_embeddings=False)


@pytest.fixture(scope="module")
def models():
    return {"A": random_model(CONFIG_A), "B": random_model(CONFIG_B, seed=1)}


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "A-custom": export_onnx(models["A"], root / "a-custom"),
        "A-portable": export_onnx(models["A"], root / "a-portable", portable=True),
        "B-fp16": export_onnx(models["B"], root / "b-fp16", dtype="fp16"),
    }


def portable_session(path):
    """A stock session (no custom-op library) of the portable form of an export."""
    proto = onnx.load(str(path))
    if any(n.domain == "mamba" for n in proto.graph.node):
        proto = make_portable(proto)
    return onnxruntime.InferenceSession(proto.SerializeToString())


def assert_prefill_then_decode(session, model, batch, prompt, decode, tol):
    """Prefill from the zero state, then one token a call from the returned state: the logits of
    every position and the final states equal the eager model's on the whole sequence."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, prompt + decode), generator=torch.Generator().manual_seed(prompt))
    with torch.no_grad():
        ref_logits, ref_state = model(ids)
    logits, state = run(session, ids[:, :prompt], model.empty_state(batch))
    steps = [logits]
    for t in range(prompt, prompt + decode):
        logits, state = run(session, ids[:, t : t + 1], state)
        steps.append(logits)
    assert rel_err(torch.cat(steps, 1), ref_logits) < tol
    for (conv, ssm), (ref_conv, ref_ssm) in zip(state, ref_state):
        assert conv.dtype == ref_conv.dtype and ssm.dtype == torch.float32
        assert rel_err(ssm, ref_ssm) < tol and rel_err(conv, ref_conv) < tol


# ---- graph --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, cfg, has_z", [("A-custom", CONFIG_A, 0), ("B-fp16", CONFIG_B, 1)])
def test_scan_is_one_custom_node_per_layer(exports, name, cfg, has_z):
    proto = onnx.load(str(exports[name]))
    scans = [n for n in proto.graph.node if n.op_type == "SSDScan"]
    assert len(scans) == cfg.n_layer and all(n.domain == "mamba" for n in scans)
    assert not [n for n in proto.graph.node if n.op_type in ("Loop", "Scan", "If", "SelectiveScan")]
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("mamba", 1)}
    for node in scans:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.pop("dt_min") == pytest.approx(cfg.dt_limit[0]) and attrs.pop("dt_max") == pytest.approx(
            cfg.dt_limit[1])
        assert attrs == dict(dt_softplus=1, has_D=1, has_z=has_z, has_dt_bias=1, has_initial_state=1)
        assert len(node.input) == 8 + has_z
    onnx.checker.check_model(proto, full_check=True)


def dims(v):
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]


def test_interface_names_and_dynamic_dims(exports):
    proto = onnx.load(str(exports["A-custom"]))
    inputs = {v.name: dims(v) for v in proto.graph.input}
    outputs = {v.name: dims(v) for v in proto.graph.output}
    cfg = CONFIG_A
    assert list(inputs) == ["input_ids", *state_names(cfg.n_layer, "past")]
    assert list(outputs) == ["logits", *state_names(cfg.n_layer, "present")]
    assert inputs["input_ids"] == ["batch", "sequence"]
    conv_dim = cfg.d_inner + 2 * cfg.ngroups * cfg.d_state
    for i in range(cfg.n_layer):
        assert inputs[f"past_conv_state.{i}"] == outputs[f"present_conv_state.{i}"] == ["batch", conv_dim, 3]
        assert inputs[f"past_ssm_state.{i}"] == outputs[f"present_ssm_state.{i}"] == ["batch", 8, 8, 8]
    assert outputs["logits"] == ["batch", "sequence", cfg.vocab_size]


def strict_json(text: str):
    """JSON as every reader takes it: Python's bare Infinity / NaN words refused."""
    return json.loads(text, parse_constant=lambda word: pytest.fail(f"not JSON: {word}"))


def test_export_json_describes_the_graph(exports):
    info = jsonio.decode(strict_json((exports["B-fp16"].parent / "export.json").read_text()))
    assert info["architecture"] == "mamba2" and info["config"]["architecture"] == "mamba2"
    assert Mamba2Config.from_dict(info["config"]) == CONFIG_B
    assert info["dtype"] == "float16"
    assert info["state"]["conv"] == {"shape": ["batch", 64 + 2 * 16, 2], "dtype": "float16"}  # d_inner + 2 G N
    assert info["state"]["ssm"] == {"shape": ["batch", 4, 16, 16], "dtype": "float32"}
    proto = onnx.load(str(exports["B-fp16"]))
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    assert types["past_conv_state.1"] == types["logits"] == TensorProto.FLOAT16
    assert types["past_ssm_state.1"] == types["present_ssm_state.1"] == TensorProto.FLOAT


def test_the_metadata_is_json_and_names_the_config(exports):
    """Mamba-2's dt_limit ends at Infinity, which export.json and the metadata write as
    transformers does ({"__float__": "Infinity"}): JavaScript, Go or Java tools can read them."""
    assert CONFIG_B.dt_limit[1] == math.inf
    metadata = {p.key: p.value for p in onnx.load(str(exports["B-fp16"])).metadata_props}
    assert Mamba2Config.from_dict(jsonio.decode(strict_json(metadata["mamba_export.config"]))) == CONFIG_B


def test_portable_has_no_custom_domain(exports):
    proto = onnx.load(str(exports["A-portable"]))
    assert not [n for n in proto.graph.node if n.domain == "mamba"]
    assert "mamba" not in {o.domain for o in proto.opset_import}
    assert json.loads((exports["A-portable"].parent / "export.json").read_text())["portable"] is True


# ---- ONNX Runtime against eager ----------------------------------------------------------------

@pytest.mark.parametrize("batch, prompt, decode", [(1, 1, 3), (3, 9, 4), (2, 70, 2)])
def test_portable_prefill_then_decode_matches_eager(models, exports, batch, prompt, decode):
    session = onnxruntime.InferenceSession(str(exports["A-portable"]))  # stock ONNX Runtime
    assert_prefill_then_decode(session, models["A"], batch, prompt, decode, 1e-5)


def test_portable_float16_with_gate_in_the_scan_matches_eager(models, exports):
    """float16 I/O: both sides round the activations to float16 between ops, in different places."""
    eager = models["B"].half()
    assert_prefill_then_decode(portable_session(exports["B-fp16"]), eager, 2, 12, 3, 2e-2)


@pytest.mark.parametrize("batch, prompt, decode", [(1, 1, 3), (3, 9, 4), (2, 70, 2)])
def test_custom_op_prefill_then_decode_matches_eager(models, exports, batch, prompt, decode):
    session = mamba_export.ort_session(exports["A-custom"])
    assert_prefill_then_decode(session, models["A"], batch, prompt, decode, 1e-5)


def test_custom_op_equals_portable(models, exports):
    custom = mamba_export.ort_session(exports["A-custom"])
    portable = onnxruntime.InferenceSession(str(exports["A-portable"]))
    ids = torch.randint(0, CONFIG_A.vocab_size, (2, 33), generator=torch.Generator().manual_seed(3))
    state = [(c.normal_(), s.normal_()) for c, s in models["A"].empty_state(2)]  # a non-trivial incoming state
    (a, sa), (b, sb) = run(custom, ids, state), run(portable, ids, state)
    assert rel_err(a, b) < 1e-5
    assert all(rel_err(x[1], y[1]) < 1e-5 for x, y in zip(sa, sb))


# ---- one SSDScan node ---------------------------------------------------------------------------

OPTIONALS = ("D", "z", "dt_bias", "initial_state")
ONNX_TYPES = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}


def ssd_node_model(inputs: dict, **attrs) -> onnx.ModelProto:
    """A graph of one mamba.SSDScan node with the present optional inputs packed (docs/ops.md)."""
    names = [k for k, v in inputs.items() if v is not None]
    flags = {f"has_{k}": int(inputs[k] is not None) for k in OPTIONALS}
    node = helper.make_node("SSDScan", names, ["y", "final_state"], domain="mamba", **flags, **attrs)
    outputs = {"y": ONNX_TYPES[inputs["x"].dtype], "final_state": TensorProto.FLOAT}
    graph = helper.make_graph(
        [node], "ssd",
        [helper.make_tensor_value_info(k, ONNX_TYPES[inputs[k].dtype], list(inputs[k].shape)) for k in names],
        [helper.make_tensor_value_info(k, t, None) for k, t in outputs.items()],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("mamba", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)  # what ONNX Runtime 1.31 reads


def run_node(session, inputs):
    return [torch.from_numpy(a) for a in session.run(None, {k: v.numpy() for k, v in inputs.items() if v is not None})]


NODE_CASES = [  # every combination of present optional inputs
    pytest.param(dict(zip(OPTIONALS, present)), id="+".join(n for n, p in zip(OPTIONALS, present) if p) or "none")
    for present in itertools.product([False, True], repeat=4)
]


@pytest.mark.parametrize("present", NODE_CASES)
# Not L = 0: ONNX Runtime 1.31 dies of a floating point exception in a Scan of no iterations
# (the LM's interface has sequence >= 1, docs/export.md).
@pytest.mark.parametrize("shape", [(2, 9, 4, 3, 5, 2), (1, 1, 3, 2, 4, 3), (1, 20, 6, 2, 3, 6)], ids=str)
def test_portable_node_matches_naive_loop(shape, present):
    inputs = ssd_inputs(*shape, **{f"has_{k}": v for k, v in present.items()}, seed=sum(shape))
    attrs = dict(dt_softplus=1, dt_min=0.05, dt_max=0.8)
    session = onnxruntime.InferenceSession(make_portable(ssd_node_model(inputs, **attrs)).SerializeToString())
    y, state = run_node(session, inputs)
    y_ref, state_ref = ssd_scan_naive(**inputs, dt_softplus=True, dt_min=0.05, dt_max=0.8)
    assert y.shape == y_ref.shape and state.shape == state_ref.shape
    assert rel_err(y, y_ref) < 1e-5 and rel_err(state, state_ref) < 1e-5


@pytest.mark.parametrize("softplus", [0, 1])
def test_portable_node_defaults_and_float16(softplus):
    """No dt_min/dt_max attributes: the contract's defaults 0 and +inf (negative steps clamp to 0)."""
    inputs = ssd_inputs(2, 7, 4, 3, 5, 2, dtype=torch.float16, seed=softplus)
    session = onnxruntime.InferenceSession(make_portable(ssd_node_model(inputs, dt_softplus=softplus))
                                           .SerializeToString())  # fmt: skip
    y, state = run_node(session, inputs)
    y_ref, state_ref = ssd_scan_naive(**inputs, dt_softplus=bool(softplus))
    assert y.dtype == torch.float16 and rel_err(y, y_ref) < 2e-3 and rel_err(state, state_ref) < 1e-5


@pytest.mark.parametrize("present", NODE_CASES)
def test_custom_op_node_matches_naive_loop(present):
    inputs = ssd_inputs(2, 9, 4, 3, 5, 2, **{f"has_{k}": v for k, v in present.items()}, seed=3)
    session = mamba_export.ort_session(ssd_node_model(inputs, dt_softplus=1, dt_min=0.05, dt_max=0.8)
                                       .SerializeToString())  # fmt: skip
    y, state = run_node(session, inputs)
    y_ref, state_ref = ssd_scan_naive(**inputs, dt_softplus=True, dt_min=0.05, dt_max=0.8)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(state, state_ref) < 1e-5


def test_ort_backend_runs_the_portable_export(models, exports):
    """The ort backend learns Mamba-2's state layout from export.json and validates against eager."""
    from mamba_export.backends import TorchBackend
    from mamba_export.backends.ort_backend import OrtBackend
    from mamba_export.validate import compare

    backend = OrtBackend(exports["A-portable"].parent, name="ort-portable")
    reference = TorchBackend(models["A"])
    for (conv, ssm), (ref_conv, ref_ssm) in zip(backend.empty_state(3), reference.empty_state(3)):
        assert conv.shape == ref_conv.shape and ssm.shape == ref_ssm.shape and ssm.dtype == torch.float32
    errors = compare(backend, reference, batch=2, prompt_len=10, decode_steps=3, vocab_size=CONFIG_A.vocab_size)
    assert errors["max_rel_err"] < 1e-5 and errors["state_max_rel_err"] < 1e-5 and errors["greedy_match"] == 1.0
