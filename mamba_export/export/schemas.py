"""ONNX schemas of the ``mamba`` domain (docs/ops.md), so that onnx's checker and
onnxscript know the ops. Registered once per process by ``register_schemas()``."""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

DOMAIN = "mamba"
DOMAIN_VERSION = 1

_ACTIVATIONS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def _flag(name: str, doc: str) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, OpSchema.AttrType.INT, doc, required=False)


def _selective_scan() -> OpSchema:
    p = OpSchema.FormalParameter
    return OpSchema(
        "SelectiveScan",
        DOMAIN,
        DOMAIN_VERSION,
        "Mamba-1 selective scan; the contract is docs/ops.md of mamba_export.",
        inputs=[
            p("u", "T"),
            p("delta", "T"),
            p("A", "tensor(float)"),
            p("B", "T"),
            p("C", "T"),
            # D, z, delta_bias, initial_state: the present ones, packed in this order (the
            # has_* attributes say which), so each slot may hold any of them.
            *(p(f"optional_{i}", f"V{i}", param_option=OpSchema.FormalParameterOption.Optional)
              for i in range(4)),
        ],
        outputs=[p("y", "T"), p("final_state", "tensor(float)")],
        type_constraints=[
            ("T", _ACTIVATIONS, "activation type"),
            *((f"V{i}", _ACTIVATIONS, "D, delta_bias, initial_state: float; z: T") for i in range(4)),
        ],
        attributes=[
            _flag("delta_softplus", "apply softplus to delta + delta_bias"),
            _flag("has_D", "input D is present"),
            _flag("has_z", "input z is present"),
            _flag("has_delta_bias", "input delta_bias is present"),
            _flag("has_initial_state", "input initial_state is present"),
        ],
    )


def register_schemas() -> None:
    for schema in (_selective_scan(),):
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)
