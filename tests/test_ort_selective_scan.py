"""mamba.SelectiveScan in ONNX Runtime (plugins/ort, CPU execution provider) against the
reference and tests/naive.py, with the tolerances and errors of docs/ops.md. Single-node
models with NaN-poisoned outputs, as tests/ort_ops.py builds and runs them.
"""

from __future__ import annotations

import functools
import random
import re
import sys

import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto  # noqa: E402

from mamba_export import ort_session  # noqa: E402
from mamba_export.errors import MambaExportError, MissingDependencyError  # noqa: E402
from mamba_export.export.schemas import register_schemas  # noqa: E402
from mamba_export.ops import selective_scan_reference  # noqa: E402

from naive import selective_scan_naive  # noqa: E402
from ort_ops import (DTYPES, ELEMENT_TYPES, STATE_TOLERANCE, Y_TOLERANCE, attribute, drop, extra,  # noqa: E402
                     flag_sets, node_model, replace, run_scan, session_for, shapes_of, survives_in_child)
from scan_inputs import rel_err, scan_inputs  # noqa: E402

OPTIONAL = ("D", "z", "delta_bias", "initial_state")
# Symbols of docs/ops.md, as the dimension names of the graph inputs and outputs.
SYMBOLS = {
    "u": ["batch", "dim", "L"], "delta": ["batch", "dim", "L"], "A": ["dim", "N"], "B": ["batch", "G", "N", "L"],
    "C": ["batch", "G", "N", "L"], "D": ["dim"], "z": ["batch", "dim", "L"], "delta_bias": ["dim"],
    "initial_state": ["batch", "dim", "N"], "y": ["batch", "dim", "L"], "final_state": ["batch", "dim", "N"],
}


def scan_model(inputs, attributes, input_shapes=None):
    """A one-node model: the present inputs packed in docs/ops.md's order, has_* from
    `attributes`. input_shapes overrides the declared shapes (default: the symbols)."""
    return node_model("SelectiveScan", inputs, attributes, input_shapes or SYMBOLS,
                      [("y", ELEMENT_TYPES[inputs["u"].dtype], SYMBOLS["y"]),
                       ("final_state", TensorProto.FLOAT, SYMBOLS["final_state"])])


@functools.lru_cache(maxsize=None)
def session(dtype, present, delta_softplus, threads=0):
    """One checked model and session per signature; the symbolic shapes serve every size."""
    register_schemas()
    example = scan_inputs(1, 1, 1, 1, dtype=dtype, **{f"has_{n}": n in present for n in OPTIONAL})
    attributes = {"delta_softplus": int(delta_softplus), **{f"has_{n}": int(n in present) for n in OPTIONAL}}
    model = scan_model(example, attributes)
    onnx.checker.check_model(model)
    return session_for(model, threads)


def run(sess, inputs, poison=True):
    """y and final_state, NaN-poisoned (see run_scan); poison=False for malformed inputs."""
    u = inputs["u"]
    return run_scan(sess, inputs, u, (u.shape[0], u.shape[1], inputs["A"].shape[1]) if poison else None)


def check_against_reference(shape, dtype, present, delta_softplus, seed=0):
    batch, dim, d_state, groups, length = shape
    inputs = scan_inputs(batch, dim, length, d_state, groups, dtype=dtype, seed=seed,
                         **{f"has_{n}": n in present for n in OPTIONAL})
    if not delta_softplus:  # the caller then supplies positive steps; negative ones make the state blow up
        inputs["delta"] = inputs["delta"].abs()
        if inputs["delta_bias"] is not None:
            inputs["delta_bias"] = inputs["delta_bias"].abs()
    y, state = run(session(dtype, frozenset(present), delta_softplus), inputs)
    ref_y, ref_state = selective_scan_reference(**inputs, delta_softplus=delta_softplus)
    assert not y.isnan().any() and not state.isnan().any(), "outputs not fully written"
    assert y.dtype == dtype and y.shape == ref_y.shape and state.shape == ref_state.shape
    assert rel_err(y, ref_y) <= Y_TOLERANCE[dtype]
    assert rel_err(state, ref_state) <= STATE_TOLERANCE[dtype]
    return inputs, y, state


FLAG_SETS = flag_sets(OPTIONAL)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("delta_softplus", [False, True])
@pytest.mark.parametrize("present", FLAG_SETS, ids=lambda p: "+".join(sorted(p)) or "none")
def test_every_optional_input_combination(present, delta_softplus, dtype):
    check_against_reference((2, 17, 4, 1, 7), dtype, present, delta_softplus)


def _random_shapes(count, seed=0):
    """(batch, dim, d_state, groups, L) drawn from the sizes that stress the kernel: odd
    channel counts (partial SIMD vectors), tiny and large d_state, L of 0, 1 (decode) and long."""
    rng = random.Random(seed)
    shapes = []
    while len(shapes) < count:
        groups = rng.choice([1, 2, 4])
        dim = rng.choice([d for d in (1, 3, 8, 17, 24, 64) if d % groups == 0])
        length = rng.choice([0, 1, 1, 2, 7, 64, 257])
        shapes.append((rng.randint(1, 4), dim, rng.choice([1, 4, 16, 64]), groups, length))
    return shapes


# Named edge cases, then random ones. Long sequences cross many time blocks of the kernel;
# d_state 300 and 5000 exceed its state tile (256) and its decode block (4096); empty tensors.
SHAPES = [(1, 1, 1, 1, 1), (3, 3, 16, 1, 0), (1, 64, 16, 4, 2048), (2, 24, 64, 2, 257), (1, 16, 300, 2, 9),
          (2, 8, 300, 1, 1), (4, 17, 16, 1, 1), (1, 3, 5000, 1, 1), (1, 2, 5000, 1, 3), (2, 3, 0, 1, 4),
          (0, 3, 4, 1, 5), (2, 0, 4, 2, 3)] + _random_shapes(24)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}_d{}_n{}_g{}_l{}".format(*s))
def test_shapes(shape, dtype):
    present = frozenset(OPTIONAL) if sum(shape) % 2 else frozenset({"z", "delta_bias"})
    check_against_reference(shape, dtype, present, delta_softplus=True, seed=sum(shape))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 3, 4, 1, 5), (1, 4, 3, 2, 9), (2, 5, 2, 1, 0)])
@pytest.mark.parametrize("present", [frozenset(OPTIONAL), frozenset()], ids=["all", "none"])
def test_matches_naive_float64(shape, present):
    inputs, y, state = check_against_reference(shape, torch.float32, present, delta_softplus=True, seed=7)
    naive_y, naive_state = selective_scan_naive(**inputs, delta_softplus=True)
    assert rel_err(y, naive_y) <= Y_TOLERANCE[torch.float32]
    assert rel_err(state, naive_state) <= STATE_TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_conversions_are_exact(dtype):
    """With B = C = 0, y = D * u: every finite value of the type goes through the kernel's
    widening, a float32 multiply and its round-to-nearest-even store (including overflow to
    inf and subnormals), which must give the reference's bits exactly."""
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    values = values[values.float().isfinite()]
    dim = 4
    u = values[: values.numel() // dim * dim].reshape(1, dim, -1)
    length = u.shape[-1]
    inputs = dict(u=u, delta=torch.zeros_like(u), A=-torch.ones(dim, 1), B=torch.zeros(1, 1, 1, length, dtype=dtype),
                  C=torch.zeros(1, 1, 1, length, dtype=dtype), D=torch.tensor([1.0, 0.3, 1e-3, 1.9e3]), z=None,
                  delta_bias=None, initial_state=None)
    y, _ = run(session(dtype, frozenset({"D"}), False), inputs)
    ref_y, _ = selective_scan_reference(**inputs)
    assert torch.equal(y.view(torch.int16), ref_y.view(torch.int16))


def _close(out, ref, rel):
    """The same infinities and NaNs; elsewhere within rel, or both in the subnormal range
    (torch flushes some of those to 0)."""
    assert torch.equal(out.isnan(), ref.isnan())
    finite = ref.isfinite()
    assert torch.equal(out[~finite & ~ref.isnan()], ref[~finite & ~ref.isnan()])
    assert ((out - ref).abs() <= rel * ref.abs() + 1.2e-38)[finite].all()


def test_elementwise_functions_are_float32_accurate():
    """The kernel computes exp, softplus and silu with its own vectorisable code. Isolated
    through one state update (N = 1, L = 1) they match torch's float32 functions to a few
    units in the last place, also where exp underflows to 0 or overflows to inf."""
    inf = float("inf")
    x = torch.cat([torch.linspace(-130, 100, 4601), torch.tensor([-inf, inf, float("nan"), 19.999, 20.0, 20.001])])
    k = x.numel()
    column = dict(B=torch.ones(1, 1, 1, 1), C=torch.ones(1, 1, 1, 1), D=None, delta_bias=None)
    # final_state = exp(1 * A) * 1 + 0
    exp_inputs = dict(column, u=torch.zeros(1, k, 1), delta=torch.ones(1, k, 1), A=x[:, None], B=torch.zeros(1, 1, 1, 1),
                      z=torch.zeros(1, k, 1), initial_state=torch.ones(1, k, 1))
    _, state = run(session(torch.float32, frozenset({"z", "initial_state"}), False), exp_inputs)
    _close(state.flatten(), torch.exp(x), 1e-6)
    # final_state = 1 * 0 + softplus(delta) * u * B;  y = C * final_state * silu(z)
    x = x[x != inf]  # softplus(inf) * A = inf * 0 would make the state NaN
    k = x.numel()
    z = x.flip(0)
    act_inputs = dict(column, u=torch.ones(1, k, 1), delta=x[None, :, None], A=torch.zeros(k, 1), z=z[None, :, None],
                      initial_state=torch.zeros(1, k, 1))
    y, state = run(session(torch.float32, frozenset({"z", "initial_state"}), True), act_inputs)
    softplus = torch.nn.functional.softplus(x)
    _close(state.flatten(), softplus, 1e-6)
    _close(y.flatten(), softplus * torch.nn.functional.silu(z), 2e-6)


def test_same_result_with_one_and_two_threads():
    # Enough work that the kernel splits it into many tasks for the thread pool.
    inputs = scan_inputs(2, 64, 2048, 16, 2, seed=3)
    y1, state1 = run(session(torch.float32, frozenset(OPTIONAL), True, threads=1), inputs)
    y2, state2 = run(session(torch.float32, frozenset(OPTIONAL), True, threads=2), inputs)
    assert torch.equal(y1, y2) and torch.equal(state1, state2)
    ref_y, _ = selective_scan_reference(**inputs, delta_softplus=True)
    assert rel_err(y2, ref_y) <= Y_TOLERANCE[torch.float32]


def test_output_shapes_are_inferred():
    """The op's shape inference gives ORT y = [batch, dim, L] and final_state = [batch, dim, N]
    when the model declares only the output types (such a model fails onnx.checker, which
    wants shapes, so it is not checked)."""
    inputs = scan_inputs(1, 1, 1, 16, dtype=torch.float16, has_D=False, has_z=False, has_delta_bias=False,
                         has_initial_state=False)
    shapes = dict(SYMBOLS, A=["dim", 16])
    model = scan_model(inputs, {}, shapes)
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    outputs = ort_session(model.SerializeToString()).get_outputs()
    assert [(o.name, o.type, o.shape) for o in outputs] == [
        ("y", "tensor(float16)", ["batch", "dim", "L"]), ("final_state", "tensor(float)", ["batch", "dim", 16])]


# --- contract violations: each must be an ORT error naming the problem -------------------

def _good_inputs():
    return scan_inputs(2, 4, 5, 3, 2, seed=1)  # batch 2, dim 4, L 5, N 3, G 2, all optional inputs


f16, bf16 = torch.float16, torch.bfloat16
# case: (how the valid node is broken, the message after "mamba.SelectiveScan: ")
BAD_INPUTS = {
    "u rank": (replace("u", torch.zeros(2, 4)), "u must have shape [batch, dim, L], got [2, 4]"),
    "A rank": (replace("A", torch.zeros(4, 3, 1)), "A must have shape [dim, N], got [4, 3, 1]"),
    "B rank": (replace("B", torch.zeros(2, 3, 5)), "B must have shape [batch, G, N, L], got [2, 3, 5]"),
    "C rank": (replace("C", torch.zeros(2, 2, 3)), "C must have shape [batch, G, N, L] = [2, 2, 3, 5], got [2, 2, 3]"),
    "delta L": (replace("delta", torch.zeros(2, 4, 6)),
                "delta must have shape [batch, dim, L] = [2, 4, 5], got [2, 4, 6]"),
    "B batch": (replace("B", torch.zeros(1, 2, 3, 5)),
                "B must have shape [batch, G, N, L] = [2, 2, 3, 5], got [1, 2, 3, 5]"),
    "C groups": (replace("C", torch.zeros(2, 1, 3, 5)),
                 "C must have shape [batch, G, N, L] = [2, 2, 3, 5], got [2, 1, 3, 5]"),
    "C N": (replace("C", torch.zeros(2, 2, 4, 5)),
            "C must have shape [batch, G, N, L] = [2, 2, 3, 5], got [2, 2, 4, 5]"),
    "A dim": (replace("A", torch.zeros(5, 3)), "A must have shape [dim, N] = [4, 3], got [5, 3]"),
    "B N vs A": (replace("A", -torch.ones(4, 1000)),
                 "B must have shape [batch, G, N, L] = [2, 2, 1000, 5], got [2, 2, 3, 5]"),
    "dim % G": (replace("B", torch.zeros(2, 3, 3, 5)), "dim (4, from u) must be a multiple of G (3, from B)"),
    "G = 0": (replace("B", torch.zeros(2, 0, 3, 5)), "dim (4, from u) must be a multiple of G (0, from B)"),
    "D size": (replace("D", torch.zeros(5)), "D must have shape [dim] = [4], got [5]"),
    "z batch": (replace("z", torch.zeros(1, 4, 5)), "z must have shape [batch, dim, L] = [2, 4, 5], got [1, 4, 5]"),
    "delta_bias rank": (replace("delta_bias", torch.zeros(4, 1)),
                        "delta_bias must have shape [dim] = [4], got [4, 1]"),
    "initial_state N": (replace("initial_state", torch.zeros(2, 4, 2)),
                        "initial_state must have shape [batch, dim, N] = [2, 4, 3], got [2, 4, 2]"),
    "delta dtype": (replace("delta", torch.zeros(2, 4, 5, dtype=f16)), "delta must be float32 (like u), got float16"),
    "B dtype": (replace("B", torch.zeros(2, 2, 3, 5, dtype=bf16)), "B must be float32 (like u), got bfloat16"),
    "A dtype": (replace("A", torch.zeros(4, 3, dtype=f16)), "A must be float32, got float16"),
    "initial_state dtype": (replace("initial_state", torch.zeros(2, 4, 3, dtype=torch.float64)),
                            "initial_state must be float32, got float64"),
    "z dtype": (replace("z", torch.zeros(2, 4, 5, dtype=torch.int32)), "z must be float32 (like u), got int32"),
    "delta_softplus 2": (attribute("delta_softplus", 2), "attribute delta_softplus must be 0 or 1, got 2"),
    "has_D 2": (attribute("has_D", 2), "attribute has_D must be 0 or 1, got 2"),
    "has_z float": (attribute("has_z", 1.0), "attribute has_z must be an int, 0 or 1"),
    "missing input": (drop("initial_state"), "expected 9 inputs (u, delta, A, B, C, D, z, delta_bias, initial_state) "
                                              "for has_D=1 has_z=1 has_delta_bias=1 has_initial_state=1, got 8"),
    "extra input": (extra("initial_state", torch.zeros(2, 4, 3)),
                    "expected 8 inputs (u, delta, A, B, C, D, z, delta_bias) "
                    "for has_D=1 has_z=1 has_delta_bias=1 has_initial_state=0, got 9"),
}


def build_bad(mutation):
    inputs = _good_inputs()
    attributes = {"delta_softplus": 1, **{f"has_{n}": 1 for n in OPTIONAL}}
    mutation(inputs, attributes)
    return inputs, scan_model(inputs, attributes, shapes_of(inputs))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_contract_violations_are_reported(case):
    mutation, message = BAD_INPUTS[case]
    inputs, model = build_bad(mutation)
    with pytest.raises(Exception, match=re.escape("mamba.SelectiveScan: " + message)):
        run(ort_session(model.SerializeToString()), inputs, poison=False)


def test_activation_type_outside_the_contract_is_rejected():
    inputs = _good_inputs()
    inputs.update(u=torch.zeros(2, 4, 5, dtype=torch.float64), delta=torch.zeros(2, 4, 5, dtype=torch.float64))
    model = scan_model(inputs, {f"has_{n}": 1 for n in OPTIONAL}, shapes_of(inputs))
    with pytest.raises(Exception, match=r"tensor\(double\)"):  # ORT's own type check: no kernel for u float64
        run(ort_session(model.SerializeToString()), inputs, poison=False)


def test_nastiest_violations_do_not_crash_the_process():
    """Mismatches that would read out of bounds or divide by zero if unchecked, in a child
    process: it must survive to report each error and exit normally."""
    child = survives_in_child("test_ort_selective_scan", ["B N vs A", "G = 0", "missing input", "C rank"],
                              "mamba.SelectiveScan")
    assert child.returncode == 0 and "survived" in child.stdout, child.stderr[-2000:]


# --- ort_session ---------------------------------------------------------------------------

def test_session_options_can_be_reused():
    options = ort.SessionOptions()
    model = scan_model(_good_inputs(), {f"has_{n}": 1 for n in OPTIONAL}).SerializeToString()
    first, second = ort_session(model, session_options=options), ort_session(model, session_options=options)
    assert first.get_providers() == second.get_providers() == ["CPUExecutionProvider"]


def test_missing_onnxruntime_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError, match="onnxruntime is not installed"):
        ort_session("model.onnx")


def test_a_library_ort_cannot_register_is_one_clear_error(monkeypatch, tmp_path):
    """MAMBA_EXPORT_ORT_LIBRARY naming a shared library without RegisterCustomOps (ORT's own
    extension module here; our kernel library is another), or a file that is no library."""
    not_a_library = tmp_path / "libmamba_ort.so"
    not_a_library.write_text("not a library")
    for path in (ort.capi.onnxruntime_pybind11_state.__file__, not_a_library):
        monkeypatch.setenv("MAMBA_EXPORT_ORT_LIBRARY", str(path))
        with pytest.raises(MambaExportError) as error:
            ort_session("model.onnx")
        message = str(error.value)
        assert message.startswith(f"MAMBA_EXPORT_ORT_LIBRARY={path}: ONNX Runtime cannot register its custom ops")
        assert "\n" not in message and type(error.value.__cause__).__module__.startswith("onnxruntime")


def test_a_model_ort_cannot_load_is_one_clear_error(tmp_path):
    """ORT's load failures become MambaExportError: the file and ORT's first message line."""
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"not a protobuf")
    cases = [(corrupt, f"ONNX Runtime cannot load {corrupt}: ", "INVALID_PROTOBUF"),
             (tmp_path / "missing.onnx", f"ONNX Runtime cannot load {tmp_path / 'missing.onnx'}: ", "NO_SUCHFILE"),
             (b"not a protobuf", "ONNX Runtime cannot load the serialized model: ", "INVALID_PROTOBUF")]  # fmt: skip
    for model, prefix, code in cases:
        with pytest.raises(MambaExportError) as error:
            ort_session(model)
        message = str(error.value)
        assert message.startswith(prefix) and code in message and "\n" not in message, message
        assert type(error.value.__cause__).__module__.startswith("onnxruntime")
