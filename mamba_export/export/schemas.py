"""ONNX schemas of the ``mamba`` domain (docs/ops.md), so that onnx's checker, shape
inference and onnxscript know the ops. Registered once per process by ``register_schemas()``."""

from __future__ import annotations

import math

import onnx
from onnx.defs import OpSchema
from onnx.shape_inference import InferenceError

DOMAIN = "mamba"
DOMAIN_VERSION = 1

_ACTIVATIONS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
# docs/ops.md's shape tables: inputs in their packed order, then the outputs.
SELECTIVE_SCAN_SYMBOLS = {
    "u": ["batch", "dim", "L"], "delta": ["batch", "dim", "L"], "A": ["dim", "N"], "B": ["batch", "G", "N", "L"],
    "C": ["batch", "G", "N", "L"], "D": ["dim"], "z": ["batch", "dim", "L"], "delta_bias": ["dim"],
    "initial_state": ["batch", "dim", "N"], "y": ["batch", "dim", "L"], "final_state": ["batch", "dim", "N"],
}  # fmt: skip
SSD_SCAN_SYMBOLS = {
    "x": ["batch", "L", "H", "P"], "dt": ["batch", "L", "H"], "A": ["H"], "B": ["batch", "L", "G", "N"],
    "C": ["batch", "L", "G", "N"], "D": ["H"], "z": ["batch", "L", "H", "P"], "dt_bias": ["H"],
    "initial_state": ["batch", "H", "P", "N"], "y": ["batch", "L", "H", "P"], "final_state": ["batch", "H", "P", "N"],
}  # fmt: skip


def _flag(name: str, doc: str) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, OpSchema.AttrType.INT, doc, required=False)


def _scan_schema(name: str, doc: str, symbols: dict[str, list[str]], optional: list[str], attributes) -> OpSchema:
    """A scan op of the contract's shape: ``symbols`` gives each input's and output's dimensions
    as docs/ops.md names them, required inputs first (all T but A, which is float), then the
    optional ones (packed after them: the has_* flags say which are present), then y and
    final_state."""
    p = OpSchema.FormalParameter
    required = [n for n in symbols if n not in optional and n not in ("y", "final_state")]
    schema = OpSchema(
        name,
        DOMAIN,
        DOMAIN_VERSION,
        doc,
        inputs=[
            *(p(n, "tensor(float)" if n == "A" else "T") for n in required),
            # Each slot may hold any of the optional inputs (whichever are present come first).
            *(p(f"optional_{i}", f"V{i}", param_option=OpSchema.FormalParameterOption.Optional)
              for i in range(len(optional))),
        ],
        outputs=[p("y", "T"), p("final_state", "tensor(float)")],
        type_constraints=[
            ("T", _ACTIVATIONS, "activation type"),
            *((f"V{i}", _ACTIVATIONS, f"{', '.join(optional)}: the packed optional inputs")
              for i in range(len(optional))),
        ],
        attributes=[*attributes, *(_flag(f"has_{n}", f"input {n} is present") for n in optional)],
    )
    schema.set_type_and_shape_inference_function(
        lambda ctx: _infer_scan(ctx, f"{DOMAIN}.{name}", symbols, required, optional))
    return schema


def _infer_scan(ctx, op: str, symbols: dict[str, list[str]], required: list[str], optional: list[str]) -> None:
    """y: the first input's type, final_state: float32; their dimensions are the contract's
    symbols, each taken from whichever input has it (a size over a symbolic name). A has_* flag
    other than 0/1, a number of inputs the flags do not explain, a wrong rank or two sizes of
    one symbol are errors (raised even by non-strict inference: a Python inference function
    cannot report the soft failure onnx's own ops do)."""
    present = []
    for n in optional:
        flag = ctx.get_attribute(f"has_{n}")
        if flag is not None and flag.i not in (0, 1):
            raise InferenceError(f"{op}: attribute has_{n} must be 0 or 1, got {flag.i}")
        if flag is not None and flag.i:
            present.append(n)
    names = required + present
    if ctx.get_num_inputs() != len(names):
        raise InferenceError(f"{op}: expected {len(names)} inputs ({', '.join(names)}) for its has_* attributes, "
                             f"got {ctx.get_num_inputs()}")
    dims: dict[str, onnx.TensorShapeProto.Dimension] = {}
    for i, input_name in enumerate(names):
        tensor = ctx.get_input_type(i)
        if tensor is None or not tensor.tensor_type.HasField("shape"):
            continue  # rank unknown: tells nothing
        shape, expected = tensor.tensor_type.shape.dim, symbols[input_name]
        if len(shape) != len(expected):
            raise InferenceError(f"{op}: {input_name} must have shape [{', '.join(expected)}], got rank {len(shape)}")
        for symbol, dim in zip(expected, shape):
            known = dims.get(symbol)
            if known is None or _knowledge(dim) > _knowledge(known):
                dims[symbol] = dim
            elif _knowledge(dim) == _knowledge(known) == 2 and dim.dim_value != known.dim_value:
                raise InferenceError(f"{op}: {input_name} has {symbol} = {dim.dim_value}, "
                                     f"an earlier input {known.dim_value}")
    activation = ctx.get_input_type(0)
    types = {"y": activation.tensor_type.elem_type if activation is not None else 0,
             "final_state": onnx.TensorProto.FLOAT}  # fmt: skip
    for index, output in enumerate(types):
        if not ctx.has_output(index) or not types[output]:
            continue
        inferred = onnx.TypeProto()
        inferred.tensor_type.elem_type = types[output]
        shape = inferred.tensor_type.shape
        for symbol in symbols[output]:
            shape.dim.add().CopyFrom(dims.get(symbol, onnx.TensorShapeProto.Dimension()))
        ctx.set_output_type(index, inferred)


def _knowledge(dim: onnx.TensorShapeProto.Dimension) -> int:
    """2 for a size, 1 for a symbolic name, 0 for an unknown dimension."""
    return 2 if dim.HasField("dim_value") else 1 if dim.HasField("dim_param") else 0


def _selective_scan() -> OpSchema:
    return _scan_schema(
        "SelectiveScan",
        "Mamba-1 selective scan; the contract is docs/ops.md of mamba_export.",
        SELECTIVE_SCAN_SYMBOLS,
        ["D", "z", "delta_bias", "initial_state"],
        [_flag("delta_softplus", "apply softplus to delta + delta_bias")],
    )


def _ssd_scan() -> OpSchema:
    def bound(name: str, default: float, doc: str) -> OpSchema.Attribute:
        return OpSchema.Attribute(name, onnx.helper.make_attribute(name, default), doc)

    return _scan_schema(
        "SSDScan",
        "Mamba-2 state space duality scan; the contract is docs/ops.md of mamba_export.",
        SSD_SCAN_SYMBOLS,
        ["D", "z", "dt_bias", "initial_state"],
        [
            _flag("dt_softplus", "apply softplus to dt + dt_bias"),
            bound("dt_min", 0.0, "lower clamp of the time step after softplus"),
            bound("dt_max", math.inf, "upper clamp of the time step after softplus"),
        ],
    )


def register_schemas() -> None:
    for schema in (_selective_scan(), _ssd_scan()):
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)
