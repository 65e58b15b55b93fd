"""ONNX schemas of the ``mamba`` domain (docs/ops.md), so that onnx's checker, shape
inference and onnxscript know the ops. Registered once per process by ``register_schemas()``.
Inputs, outputs and their shapes come from the contract's tables (ops/contract.py)."""

from __future__ import annotations

import math

import onnx
from onnx.defs import OpSchema
from onnx.shape_inference import InferenceError

from ..ops.contract import SELECTIVE_SCAN, SSD_SCAN, OpContract, Operand

DOMAIN = "mamba"
DOMAIN_VERSION = 1

_ACTIVATIONS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def _flag(name: str, doc: str) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, OpSchema.AttrType.INT, doc, required=False)


def _type(operand: Operand) -> str:
    return "tensor(float)" if operand.float32 else "T"


def _scan_schema(name: str, doc: str, contract: OpContract, attributes) -> OpSchema:
    """A scan op from its contract's tables: the required inputs, then the optional ones
    (packed after them: the has_* flags say which are present), then the outputs."""
    p = OpSchema.FormalParameter
    optional = [o.name for o in contract.optional]
    schema = OpSchema(
        name,
        DOMAIN,
        DOMAIN_VERSION,
        doc,
        inputs=[
            *(p(o.name, _type(o)) for o in contract.required),
            # Each slot may hold any of the optional inputs (whichever are present come first).
            *(p(f"optional_{i}", f"V{i}", param_option=OpSchema.FormalParameterOption.Optional)
              for i in range(len(optional))),
        ],
        outputs=[p(o.name, _type(o)) for o in contract.outputs],
        type_constraints=[
            ("T", _ACTIVATIONS, "activation type"),
            *((f"V{i}", _ACTIVATIONS, f"{', '.join(optional)}: the packed optional inputs")
              for i in range(len(optional))),
        ],
        attributes=[*attributes, *(_flag(f"has_{n}", f"input {n} is present") for n in optional)],
    )
    schema.set_type_and_shape_inference_function(lambda ctx: _infer_scan(ctx, f"{DOMAIN}.{name}", contract))
    return schema


def _infer_scan(ctx, op: str, contract: OpContract) -> None:
    """The outputs' types (T is input 0's) and dimensions, the contract's symbols, each taken
    from whichever input has it (a size over a symbolic name). A has_* flag other than 0/1, a
    number of inputs the flags do not explain, a wrong rank or two sizes of one symbol are
    errors (raised even by non-strict inference: a Python inference function cannot report
    the soft failure onnx's own ops do)."""
    operands = list(contract.required)
    for o in contract.optional:
        flag = ctx.get_attribute(f"has_{o.name}")
        if flag is not None and flag.i not in (0, 1):
            raise InferenceError(f"{op}: attribute has_{o.name} must be 0 or 1, got {flag.i}")
        if flag is not None and flag.i:
            operands.append(o)
    if ctx.get_num_inputs() != len(operands):
        raise InferenceError(f"{op}: expected {len(operands)} inputs ({', '.join(o.name for o in operands)}) "
                             f"for its has_* attributes, got {ctx.get_num_inputs()}")
    dims: dict[str, onnx.TensorShapeProto.Dimension] = {}
    for i, operand in enumerate(operands):
        tensor = ctx.get_input_type(i)
        if tensor is None or not tensor.tensor_type.HasField("shape"):
            continue  # rank unknown: tells nothing
        shape, expected = tensor.tensor_type.shape.dim, operand.shape
        if len(shape) != len(expected):
            raise InferenceError(f"{op}: {operand.name} must have shape [{', '.join(expected)}], got rank {len(shape)}")
        for symbol, dim in zip(expected, shape):
            known = dims.get(symbol)
            if known is None or _knowledge(dim) > _knowledge(known):
                dims[symbol] = dim
            elif _knowledge(dim) == _knowledge(known) == 2 and dim.dim_value != known.dim_value:
                raise InferenceError(f"{op}: {operand.name} has {symbol} = {dim.dim_value}, "
                                     f"an earlier input {known.dim_value}")
    activation = ctx.get_input_type(0)
    activation_type = activation.tensor_type.elem_type if activation is not None else 0
    for index, output in enumerate(contract.outputs):
        elem_type = onnx.TensorProto.FLOAT if output.float32 else activation_type
        if not ctx.has_output(index) or not elem_type:
            continue
        inferred = onnx.TypeProto()
        inferred.tensor_type.elem_type = elem_type
        shape = inferred.tensor_type.shape
        for symbol in output.shape:
            shape.dim.add().CopyFrom(dims.get(symbol, onnx.TensorShapeProto.Dimension()))
        ctx.set_output_type(index, inferred)


def _knowledge(dim: onnx.TensorShapeProto.Dimension) -> int:
    """2 for a size, 1 for a symbolic name, 0 for an unknown dimension."""
    return 2 if dim.HasField("dim_value") else 1 if dim.HasField("dim_param") else 0


def _selective_scan() -> OpSchema:
    return _scan_schema(
        "SelectiveScan",
        "Mamba-1 selective scan; the contract is docs/ops.md of mamba_export.",
        SELECTIVE_SCAN,
        [_flag("delta_softplus", "apply softplus to delta + delta_bias")],
    )


def _ssd_scan() -> OpSchema:
    def bound(name: str, default: float, doc: str) -> OpSchema.Attribute:
        return OpSchema.Attribute(name, onnx.helper.make_attribute(name, default), doc)

    return _scan_schema(
        "SSDScan",
        "Mamba-2 state space duality scan; the contract is docs/ops.md of mamba_export.",
        SSD_SCAN,
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
