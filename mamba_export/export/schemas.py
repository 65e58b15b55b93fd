"""ONNX schemas of the ``mamba`` domain (docs/ops.md), so that onnx's checker and
onnxscript know the ops. Registered once per process by ``register_schemas()``."""

from __future__ import annotations

import math

import onnx
from onnx.defs import OpSchema

DOMAIN = "mamba"
DOMAIN_VERSION = 1

_ACTIVATIONS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def _flag(name: str, doc: str) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, OpSchema.AttrType.INT, doc, required=False)


def _scan_schema(name: str, doc: str, required: list[str], optional: list[str], attributes) -> OpSchema:
    """A scan op of the contract's shape: required inputs (all T but A, which is float), the
    present optional ones packed after them (the has_* flags say which), outputs y and final_state."""
    p = OpSchema.FormalParameter
    return OpSchema(
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


def _selective_scan() -> OpSchema:
    return _scan_schema(
        "SelectiveScan",
        "Mamba-1 selective scan; the contract is docs/ops.md of mamba_export.",
        ["u", "delta", "A", "B", "C"],
        ["D", "z", "delta_bias", "initial_state"],
        [_flag("delta_softplus", "apply softplus to delta + delta_bias")],
    )


def _ssd_scan() -> OpSchema:
    def bound(name: str, default: float, doc: str) -> OpSchema.Attribute:
        return OpSchema.Attribute(name, onnx.helper.make_attribute(name, default), doc)

    return _scan_schema(
        "SSDScan",
        "Mamba-2 state space duality scan; the contract is docs/ops.md of mamba_export.",
        ["x", "dt", "A", "B", "C"],
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
