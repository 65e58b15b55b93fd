"""One-node ONNX models of the mamba ops run in ONNX Runtime with the custom-op library: what
the ORT tests of every op share (tests/test_ort_selective_scan.py, tests/test_ort_ssd_scan.py).

Models are built with onnx.helper exactly as docs/ops.md describes the nodes. They run through
io_binding: inputs are OrtValues (ORT's Python API has no bfloat16 numpy type, so bfloat16
travels as its uint16 bits), and outputs can be bound to tensors pre-filled with NaN, so that
an element the kernel does not write fails the comparison. Import it after
pytest.importorskip("onnxruntime") and ("onnx").
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from mamba_export import ort_session

ELEMENT_TYPES = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.float64: TensorProto.DOUBLE,
    torch.int32: TensorProto.INT32,
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# docs/ops.md's tolerances (the same for every op), relative to the reference.
Y_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
STATE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def flag_sets(optional):
    """Every subset of the optional inputs, as frozensets."""
    return [frozenset(c) for r in range(len(optional) + 1) for c in itertools.combinations(optional, r)]


def node_model(op_type, inputs, attributes, input_shapes, outputs):
    """A model of one mamba node: the present inputs (those not None) packed in the order of
    `inputs`, declared with input_shapes[name] (symbols or sizes); outputs are (name, element
    type, shape) triples."""
    names = [name for name, tensor in inputs.items() if tensor is not None]
    graph = helper.make_graph(
        [helper.make_node(op_type, names, [name for name, _, _ in outputs], domain="mamba", **attributes)],
        op_type,
        [helper.make_tensor_value_info(n, ELEMENT_TYPES[inputs[n].dtype], input_shapes[n]) for n in names],
        [helper.make_tensor_value_info(*output) for output in outputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("mamba", 1)],
                             ir_version=10)


def ortvalue(t: torch.Tensor):
    """An OrtValue sharing t's memory."""
    if t.dtype == torch.bfloat16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(t.view(torch.int16).numpy().view(np.uint16),
                                                               TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(t.numpy())


def run_bound(sess, inputs, outputs):
    """Runs sess on `inputs` (None ones left out). outputs maps each output name to the tensor
    it is written into, or to None for ORT to allocate it (and throw it away)."""
    binding = sess.io_binding()
    for name, t in inputs.items():
        if t is not None:
            binding.bind_ortvalue_input(name, ortvalue(t.contiguous()))
    for name, t in outputs.items():
        if t is None:
            binding.bind_output(name)
        else:
            binding.bind_ortvalue_output(name, ortvalue(t))
    sess.run_with_iobinding(binding)


def poisoned(shape, dtype=torch.float32):
    return torch.full(tuple(shape), float("nan"), dtype=dtype)


def run_scan(sess, inputs, y_like, state_shape):
    """y (y_like's shape and type) and final_state (float32, state_shape) of one run; both start
    as NaN, so that elements the kernel does not write show. state_shape None: ORT allocates
    the outputs and None is returned (for malformed inputs, whose shapes say nothing)."""
    if state_shape is None:
        run_bound(sess, inputs, {"y": None, "final_state": None})
        return None
    y, state = poisoned(y_like.shape, y_like.dtype), poisoned(state_shape)
    run_bound(sess, inputs, {"y": y, "final_state": state})
    return y, state


def session_for(model, threads=0):
    """An ORT session of `model` with the custom-op library; threads: intra_op_num_threads (0: ORT's choice)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # ORT's pool threads spin after each run by default, taking the cores the reference needs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort_session(model.SerializeToString(), session_options=options)


# --- contract violations: each test module breaks a valid node with these ---------------

def replace(name, value):
    def mutate(inputs, attributes):
        inputs[name] = value
    return mutate


def attribute(name, value):
    def mutate(inputs, attributes):
        attributes[name] = value
    return mutate


def drop(name):
    def mutate(inputs, attributes):
        inputs[name] = None  # the input is left out, the attribute still says it is there
    return mutate


def extra(name, value):
    def mutate(inputs, attributes):
        inputs[name] = value
        attributes[f"has_{name}"] = 0
    return mutate


def shapes_of(inputs):
    """Declared shapes that follow the tensors (one symbol per dimension), so that ORT hands
    malformed inputs on to the kernel."""
    return {n: [f"{n}{i}" for i in range(t.dim())] for n, t in inputs.items() if t is not None}


def python_in_child(code: str, env=None) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with tests/ on sys.path, the environment plus `env`."""
    script = f"import sys\nsys.path[:0] = {[os.path.dirname(__file__)]!r}\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def survives_in_child(module: str, cases, op: str) -> subprocess.CompletedProcess:
    """Runs module.build_bad(module.BAD_INPUTS[case][0]) through module.run for each case in a
    child process, which must report each error (naming `op`) and print "survived"."""
    return python_in_child(f"""
        import {module} as t
        for case in {list(cases)!r}:
            inputs, model = t.build_bad(t.BAD_INPUTS[case][0])
            try:
                t.run(t.ort_session(model.SerializeToString()), inputs, poison=False)
            except Exception as e:
                assert {op!r} in str(e), e
            else:
                raise SystemExit(case + ": no error")
        print("survived")
    """)
