"""mamba.SSDScan in ONNX Runtime (plugins/ort, CPU execution provider) against the chunked
reference and tests/naive.py, with the tolerances and errors of docs/ops.md. Single-node
models with NaN-poisoned outputs, as tests/ort_ops.py builds and runs them.
"""

from __future__ import annotations

import functools
import math
import random
import re

import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto  # noqa: E402

from mamba_export import ort_session  # noqa: E402
from mamba_export.export.schemas import register_schemas  # noqa: E402
from mamba_export.ops import ssd_scan_reference  # noqa: E402

from naive import ssd_scan_naive  # noqa: E402
from ort_ops import (DTYPES, ELEMENT_TYPES, STATE_TOLERANCE, Y_TOLERANCE, attribute, drop, extra,  # noqa: E402
                     flag_sets, node_model, python_in_child, replace, run_scan, session_for, shapes_of,
                     survives_in_child)
from scan_inputs import rel_err, ssd_inputs  # noqa: E402

OPTIONAL = ("D", "z", "dt_bias", "initial_state")
# Symbols of docs/ops.md, as the dimension names of the graph inputs and outputs.
SYMBOLS = {
    "x": ["batch", "L", "H", "P"], "dt": ["batch", "L", "H"], "A": ["H"], "B": ["batch", "L", "G", "N"],
    "C": ["batch", "L", "G", "N"], "D": ["H"], "z": ["batch", "L", "H", "P"], "dt_bias": ["H"],
    "initial_state": ["batch", "H", "P", "N"], "y": ["batch", "L", "H", "P"], "final_state": ["batch", "H", "P", "N"],
}
# A time-step range that cuts both tails of the steps ssd_inputs gives (with and without softplus).
CLAMP = (0.25, 0.9)


def ssd_model(inputs, attributes, input_shapes=None):
    """A one-node model: the present inputs packed in docs/ops.md's order, has_* from
    `attributes`. input_shapes overrides the declared shapes (default: the symbols)."""
    return node_model("SSDScan", inputs, attributes, input_shapes or SYMBOLS,
                      [("y", ELEMENT_TYPES[inputs["x"].dtype], SYMBOLS["y"]),
                       ("final_state", TensorProto.FLOAT, SYMBOLS["final_state"])])


def attributes_for(present, dt_softplus, clamp=None):
    """The node's attributes; clamp (dt_min, dt_max) None leaves both out (0 and +inf)."""
    bounds = {} if clamp is None else {"dt_min": float(clamp[0]), "dt_max": float(clamp[1])}
    return {"dt_softplus": int(dt_softplus), **bounds, **{f"has_{n}": int(n in present) for n in OPTIONAL}}


@functools.lru_cache(maxsize=None)
def session(dtype, present, dt_softplus, clamp=None, threads=0):
    """One checked model and session per signature; the symbolic shapes serve every size."""
    register_schemas()
    example = ssd_inputs(1, 1, 1, 1, 1, dtype=dtype, **{f"has_{n}": n in present for n in OPTIONAL})
    model = ssd_model(example, attributes_for(present, dt_softplus, clamp))
    onnx.checker.check_model(model)
    return session_for(model, threads)


def run(sess, inputs, poison=True):
    """y and final_state, NaN-poisoned (see run_scan); poison=False for malformed inputs."""
    x = inputs["x"]
    return run_scan(sess, inputs, x, (x.shape[0], x.shape[2], x.shape[3], inputs["B"].shape[3]) if poison else None)


def make_inputs(shape, dtype, present, dt_softplus, seed=0):
    """shape = (batch, L, H, P, N, G). Without softplus the steps are made positive: negative
    ones with a negative A make the state grow without bound."""
    batch, length, heads, head_dim, d_state, groups = shape
    inputs = ssd_inputs(batch, length, heads, head_dim, d_state, groups, dtype=dtype, seed=seed,
                        **{f"has_{n}": n in present for n in OPTIONAL})
    if not dt_softplus:
        inputs["dt"] = inputs["dt"].abs()
        if inputs["dt_bias"] is not None:
            inputs["dt_bias"] = inputs["dt_bias"].abs()
    return inputs


def check_against_reference(shape, dtype, present, dt_softplus, clamp=None, seed=0):
    inputs = make_inputs(shape, dtype, present, dt_softplus, seed)
    y, state = run(session(dtype, frozenset(present), dt_softplus, clamp), inputs)
    dt_min, dt_max = clamp or (0.0, math.inf)
    ref_y, ref_state = ssd_scan_reference(**inputs, dt_softplus=dt_softplus, dt_min=dt_min, dt_max=dt_max)
    assert not y.isnan().any() and not state.isnan().any(), "outputs not fully written"
    assert y.dtype == dtype and y.shape == ref_y.shape and state.shape == ref_state.shape
    assert rel_err(y, ref_y) <= Y_TOLERANCE[dtype]
    assert rel_err(state, ref_state) <= STATE_TOLERANCE[dtype]
    return inputs, y, state


FLAG_SETS = flag_sets(OPTIONAL)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("clamp", [None, CLAMP], ids=["open", "clamped"])
@pytest.mark.parametrize("dt_softplus", [False, True])
@pytest.mark.parametrize("present", FLAG_SETS, ids=lambda p: "+".join(sorted(p)) or "none")
def test_every_optional_input_combination(present, dt_softplus, clamp, dtype):
    check_against_reference((2, 7, 4, 5, 8, 2), dtype, present, dt_softplus, clamp)


def _random_shapes(count, seed=0):
    """(batch, L, H, P, N, G) drawn from the sizes docs/ops.md and the kernel care about:
    L of 0, 1 (decode) and long, heads sharing groups, tiny and Mamba-2-sized P and N."""
    rng = random.Random(seed)
    shapes = []
    while len(shapes) < count:
        heads = rng.choice([1, 3, 8])
        groups = rng.choice([g for g in (1, 2, 4) if heads % g == 0])
        shapes.append((rng.randint(1, 3), rng.choice([0, 1, 2, 7, 65, 300]), heads, rng.choice([1, 4, 16, 64]),
                       rng.choice([1, 8, 16, 128]), groups))
    return shapes


# Named edge cases, then random ones: empty dimensions (L = 0 leaves final_state =
# initial_state; N = 0 leaves y = D x gated), P that is not a multiple of the kernel's chunks
# of rows (8, 16, 32) or exceeds its rows per task (64), states too large for its tile (N 300
# with 64 rows, N 1030: several tiles over n, reloaded per block of 32 steps), L across those
# blocks, decode with many heads, a Mamba-2-sized long sequence.
SHAPES = [(1, 1, 1, 1, 1, 1), (3, 0, 3, 4, 8, 1), (0, 5, 2, 4, 8, 2), (2, 3, 2, 0, 8, 1), (2, 3, 2, 4, 0, 1),
          (2, 3, 0, 4, 8, 1), (2, 65, 3, 17, 16, 1), (1, 7, 1, 130, 8, 1), (1, 40, 2, 5, 1030, 2),
          (1, 70, 2, 64, 300, 1), (1, 130, 2, 8, 16, 1), (2, 1, 8, 64, 128, 2),
          (1, 300, 8, 64, 128, 4)] + _random_shapes(20)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}_l{}_h{}_p{}_n{}_g{}".format(*s))
def test_shapes(shape, dtype):
    present = frozenset(OPTIONAL) if sum(shape) % 2 else frozenset({"z", "dt_bias"})
    check_against_reference(shape, dtype, present, dt_softplus=True, clamp=CLAMP if sum(shape) % 3 else None,
                            seed=sum(shape))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1, 1), (2, 5, 3, 4, 3, 1), (1, 9, 4, 2, 5, 2), (2, 0, 2, 3, 4, 2)])
@pytest.mark.parametrize("present", [frozenset(OPTIONAL), frozenset()], ids=["all", "none"])
@pytest.mark.parametrize("clamp", [None, CLAMP], ids=["open", "clamped"])
def test_matches_naive_float64(shape, present, clamp):
    inputs, y, state = check_against_reference(shape, torch.float32, present, dt_softplus=True, clamp=clamp, seed=7)
    dt_min, dt_max = clamp or (0.0, math.inf)
    naive_y, naive_state = ssd_scan_naive(**inputs, dt_softplus=True, dt_min=dt_min, dt_max=dt_max)
    assert rel_err(y, naive_y) <= Y_TOLERANCE[torch.float32]
    assert rel_err(state, naive_state) <= STATE_TOLERANCE[torch.float32]


@pytest.mark.parametrize("dt_softplus", [False, True])
def test_clamp_cuts_both_ends(dt_softplus):
    """CLAMP really moves steps at both ends here, and the op follows the reference there
    (while the unclamped result differs): the clamp is applied after softplus."""
    shape = (2, 33, 4, 8, 16, 2)
    inputs, y, _ = check_against_reference(shape, torch.float32, frozenset(OPTIONAL), dt_softplus, CLAMP, seed=3)
    steps = inputs["dt"] + inputs["dt_bias"]
    if dt_softplus:
        steps = torch.nn.functional.softplus(steps)
    assert (steps < CLAMP[0]).any() and (steps > CLAMP[1]).any()
    open_y, _ = run(session(torch.float32, frozenset(OPTIONAL), dt_softplus), inputs)
    assert rel_err(open_y, y) > 1e-3


def test_explicit_default_bounds_equal_absent_ones():
    inputs = make_inputs((2, 9, 3, 4, 8, 1), torch.float32, frozenset(OPTIONAL), True, seed=5)
    absent = run(session(torch.float32, frozenset(OPTIONAL), True), inputs)
    explicit = run(session(torch.float32, frozenset(OPTIONAL), True, (0.0, math.inf)), inputs)
    assert all(torch.equal(a, b) for a, b in zip(absent, explicit))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_conversions_are_exact(dtype):
    """With B = C = 0, y = D * x: every finite value of the type goes through the kernel's
    widening, a float32 multiply and its round-to-nearest-even store (including overflow to
    inf and subnormals), which must give the reference's bits exactly."""
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    values = values[values.float().isfinite()]
    heads, head_dim = 4, 64
    x = values[: values.numel() // (heads * head_dim) * heads * head_dim].reshape(1, -1, heads, head_dim)
    length = x.shape[1]
    inputs = dict(x=x, dt=torch.zeros(1, length, heads, dtype=dtype), A=-torch.ones(heads),
                  B=torch.zeros(1, length, 1, 1, dtype=dtype), C=torch.zeros(1, length, 1, 1, dtype=dtype),
                  D=torch.tensor([1.0, 0.3, 1e-3, 1.9e3]), z=None, dt_bias=None, initial_state=None)
    y, _ = run(session(dtype, frozenset({"D"}), False), inputs)
    ref_y, _ = ssd_scan_reference(**inputs)
    assert torch.equal(y.view(torch.int16), ref_y.view(torch.int16))


def test_same_result_with_one_and_two_threads():
    # Enough work that the kernel splits every head into several tasks for the thread pool.
    inputs = ssd_inputs(2, 256, 3, 64, 128, 1, seed=3)
    y1, state1 = run(session(torch.float32, frozenset(OPTIONAL), True, threads=1), inputs)
    y2, state2 = run(session(torch.float32, frozenset(OPTIONAL), True, threads=2), inputs)
    assert torch.equal(y1, y2) and torch.equal(state1, state2)
    ref_y, ref_state = ssd_scan_reference(**inputs, dt_softplus=True)
    assert rel_err(y2, ref_y) <= Y_TOLERANCE[torch.float32]
    assert rel_err(state2, ref_state) <= STATE_TOLERANCE[torch.float32]


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_instruction_set_variants(isa):
    """The kernel's AVX2 and portable variants (MAMBA_EXPORT_CPU_ISA caps the CPU's pick, once
    per process, hence a child) against the reference: decode, the state tile held for the
    whole sequence, tiles over n, and each chunk width of rows (8, 16)."""
    child = python_in_child("""
        import torch, test_ort_ssd_scan as t
        for shape in [(2, 1, 3, 64, 128, 1), (1, 70, 3, 64, 128, 1), (1, 40, 2, 5, 1030, 2), (2, 33, 2, 20, 16, 2)]:
            for dtype in (torch.float32, torch.bfloat16):
                t.check_against_reference(shape, dtype, frozenset(t.OPTIONAL), True, t.CLAMP)
        print("matched")
    """, {"MAMBA_EXPORT_CPU_ISA": isa})
    assert child.returncode == 0 and "matched" in child.stdout, child.stderr[-2000:]


def test_output_shapes_are_inferred():
    """The op's shape inference gives ORT y = [batch, L, H, P] and final_state = [batch, H, P, N]
    when the model declares only the output types (such a model fails onnx.checker, which
    wants shapes, so it is not checked)."""
    inputs = ssd_inputs(1, 1, 1, 1, 16, dtype=torch.bfloat16, has_D=False, has_z=False, has_dt_bias=False,
                        has_initial_state=False)
    shapes = dict(SYMBOLS, B=["batch", "L", "G", 16], C=["batch", "L", "G", 16])
    model = ssd_model(inputs, {}, shapes)
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    outputs = ort_session(model.SerializeToString()).get_outputs()
    assert [(o.name, o.type, o.shape) for o in outputs] == [
        ("y", "tensor(bfloat16)", ["batch", "L", "H", "P"]), ("final_state", "tensor(float)", ["batch", "H", "P", 16])]


# --- contract violations: each must be an ORT error naming the problem -------------------

def _good_inputs():
    return ssd_inputs(2, 5, 4, 3, 6, 2, seed=1)  # batch 2, L 5, H 4, P 3, N 6, G 2, all optional inputs


f16, bf16, f64 = torch.float16, torch.bfloat16, torch.float64
# case: (how the valid node is broken, the message after "mamba.SSDScan: ")
BAD_INPUTS = {
    "x rank": (replace("x", torch.zeros(2, 5, 4)), "x must have shape [batch, L, H, P], got [2, 5, 4]"),
    "B rank": (replace("B", torch.zeros(2, 5, 6)), "B must have shape [batch, L, G, N], got [2, 5, 6]"),
    "C rank": (replace("C", torch.zeros(2, 5, 2)), "C must have shape [batch, L, G, N] = [2, 5, 2, 6], got [2, 5, 2]"),
    "dt rank": (replace("dt", torch.zeros(2, 5, 4, 1)),
                "dt must have shape [batch, L, H] = [2, 5, 4], got [2, 5, 4, 1]"),
    "dt L": (replace("dt", torch.zeros(2, 6, 4)), "dt must have shape [batch, L, H] = [2, 5, 4], got [2, 6, 4]"),
    "A size": (replace("A", torch.zeros(5)), "A must have shape [H] = [4], got [5]"),
    "A rank": (replace("A", torch.zeros(4, 1)), "A must have shape [H] = [4], got [4, 1]"),
    "B batch": (replace("B", torch.zeros(1, 5, 2, 6)),
                "B must have shape [batch, L, G, N] = [2, 5, 2, 6], got [1, 5, 2, 6]"),
    "B L": (replace("B", torch.zeros(2, 4, 2, 6)),
            "B must have shape [batch, L, G, N] = [2, 5, 2, 6], got [2, 4, 2, 6]"),
    "C groups": (replace("C", torch.zeros(2, 5, 1, 6)),
                 "C must have shape [batch, L, G, N] = [2, 5, 2, 6], got [2, 5, 1, 6]"),
    "C N": (replace("C", torch.zeros(2, 5, 2, 7)),
            "C must have shape [batch, L, G, N] = [2, 5, 2, 6], got [2, 5, 2, 7]"),
    "H % G": (replace("B", torch.zeros(2, 5, 3, 6)), "H (4, from x) must be a multiple of G (3, from B)"),
    "G = 0": (replace("B", torch.zeros(2, 5, 0, 6)), "H (4, from x) must be a multiple of G (0, from B)"),
    "D size": (replace("D", torch.zeros(3)), "D must have shape [H] = [4], got [3]"),
    "z P": (replace("z", torch.zeros(2, 5, 4, 2)),
            "z must have shape [batch, L, H, P] = [2, 5, 4, 3], got [2, 5, 4, 2]"),
    "dt_bias rank": (replace("dt_bias", torch.zeros(4, 1)), "dt_bias must have shape [H] = [4], got [4, 1]"),
    "initial_state N": (replace("initial_state", torch.zeros(2, 4, 3, 5)),
                        "initial_state must have shape [batch, H, P, N] = [2, 4, 3, 6], got [2, 4, 3, 5]"),
    "initial_state batch": (replace("initial_state", torch.zeros(1, 4, 3, 6)),
                            "initial_state must have shape [batch, H, P, N] = [2, 4, 3, 6], got [1, 4, 3, 6]"),
    "dt dtype": (replace("dt", torch.zeros(2, 5, 4, dtype=f16)), "dt must be float32 (like x), got float16"),
    "B dtype": (replace("B", torch.zeros(2, 5, 2, 6, dtype=bf16)), "B must be float32 (like x), got bfloat16"),
    "C dtype": (replace("C", torch.zeros(2, 5, 2, 6, dtype=f64)), "C must be float32 (like x), got float64"),
    "z dtype": (replace("z", torch.zeros(2, 5, 4, 3, dtype=torch.int32)), "z must be float32 (like x), got int32"),
    "A dtype": (replace("A", torch.zeros(4, dtype=f16)), "A must be float32, got float16"),
    "D dtype": (replace("D", torch.zeros(4, dtype=f64)), "D must be float32, got float64"),
    "dt_bias dtype": (replace("dt_bias", torch.zeros(4, dtype=bf16)), "dt_bias must be float32, got bfloat16"),
    "initial_state dtype": (replace("initial_state", torch.zeros(2, 4, 3, 6, dtype=f16)),
                            "initial_state must be float32, got float16"),
    "dt_softplus 2": (attribute("dt_softplus", 2), "attribute dt_softplus must be 0 or 1, got 2"),
    "has_z 2": (attribute("has_z", 2), "attribute has_z must be 0 or 1, got 2"),
    "has_D float": (attribute("has_D", 1.0), "attribute has_D must be an int, 0 or 1"),
    "dt_min int": (attribute("dt_min", 0), "attribute dt_min must be a float"),
    "dt_max string": (attribute("dt_max", "inf"), "attribute dt_max must be a float"),
    "dt_min NaN": (attribute("dt_min", math.nan), "attribute dt_min must not be NaN"),
    "dt_max NaN": (attribute("dt_max", math.nan), "attribute dt_max must not be NaN"),
    "dt_min > dt_max": (lambda inputs, attributes: attributes.update(dt_min=0.5, dt_max=0.125),
                        "attribute dt_min (0.5) must be <= dt_max (0.125)"),
    "missing input": (drop("initial_state"), "expected 9 inputs (x, dt, A, B, C, D, z, dt_bias, initial_state) "
                                             "for has_D=1 has_z=1 has_dt_bias=1 has_initial_state=1, got 8"),
    "extra input": (extra("initial_state", torch.zeros(2, 4, 3, 6)),
                    "expected 8 inputs (x, dt, A, B, C, D, z, dt_bias) "
                    "for has_D=1 has_z=1 has_dt_bias=1 has_initial_state=0, got 9"),
}


def build_bad(mutation):
    inputs = _good_inputs()
    attributes = attributes_for(frozenset(OPTIONAL), True)
    mutation(inputs, attributes)
    return inputs, ssd_model(inputs, attributes, shapes_of(inputs))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_contract_violations_are_reported(case):
    mutation, message = BAD_INPUTS[case]
    inputs, model = build_bad(mutation)
    with pytest.raises(Exception, match=re.escape("mamba.SSDScan: " + message)):
        run(ort_session(model.SerializeToString()), inputs, poison=False)


def test_activation_type_outside_the_contract_is_rejected():
    inputs = _good_inputs()
    inputs.update(x=torch.zeros(2, 5, 4, 3, dtype=f64), dt=torch.zeros(2, 5, 4, dtype=f64))
    model = ssd_model(inputs, attributes_for(frozenset(OPTIONAL), True), shapes_of(inputs))
    with pytest.raises(Exception, match=r"tensor\(double\)"):  # ORT's own type check: no kernel for x float64
        run(ort_session(model.SerializeToString()), inputs, poison=False)


def test_nastiest_violations_do_not_crash_the_process():
    """Mismatches that would read out of bounds or divide by zero if unchecked, in a child
    process: it must survive to report each error and exit normally."""
    child = survives_in_child("test_ort_ssd_scan", ["C N", "G = 0", "missing input", "x rank", "initial_state N"],
                              "mamba.SSDScan")
    assert child.returncode == 0 and "survived" in child.stdout, child.stderr[-2000:]
