"""Rewrite ``mamba.SelectiveScan`` nodes into standard ONNX ops (a ``Scan`` over time).

For users who cannot load the custom-op library: the graph then runs in any ONNX
Runtime. The rewrite follows docs/ops.md step by step, in float32; it is slower than the
custom op (one loop iteration per time step) and computes the same numbers.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .schemas import DOMAIN

_OPTIONAL = ("D", "z", "delta_bias", "initial_state")


class _Builder:
    """Appends nodes with unique names under one prefix."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.count = prefix, [], 0

    def __call__(self, op: str, *inputs: str, outputs: int = 1, **attrs):
        self.count += 1
        names = [f"{self.prefix}/{op}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, name=f"{self.prefix}/{op}_{self.count}", **attrs))
        return names[0] if outputs == 1 else names

    def const(self, values, dtype=TensorProto.INT64) -> str:
        self.count += 1
        name = f"{self.prefix}/const_{self.count}"
        tensor = helper.make_tensor(name, dtype, [len(values)], values)
        self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        return name


def _step_body(prefix: str, A: str, group_shape: str, channel_shape: str) -> onnx.GraphProto:
    """One time step: h' = exp(dt*A) h + dt*u*B;  y = sum_n C h'.  A and the shapes come from the outer scope."""
    b = _Builder(f"{prefix}/step")

    def per_channel(bc_t: str) -> str:  # [batch, G, N] -> [batch, dim, N]: channel d reads group d // (dim / G)
        return b("Reshape", b("Expand", b("Unsqueeze", bc_t, b.const([2])), group_shape), channel_shape)

    last = b.const([-1])
    dA = b("Exp", b("Mul", b("Unsqueeze", "dt_t", last), A))
    dBu = b("Mul", b("Unsqueeze", b("Mul", "dt_t", "u_t"), last), per_channel("B_t"))
    h_next = b("Add", b("Mul", dA, "h"), dBu)
    y_t = b("ReduceSum", b("Mul", h_next, per_channel("C_t")), last, keepdims=0)
    b.nodes += [helper.make_node("Identity", [h_next], ["h_next"]), helper.make_node("Identity", [y_t], ["y_t"])]
    f = TensorProto.FLOAT
    return helper.make_graph(
        b.nodes,
        f"{prefix}_step",
        [helper.make_tensor_value_info(n, f, None) for n in ("h", "u_t", "dt_t", "B_t", "C_t")],
        [helper.make_tensor_value_info(n, f, None) for n in ("h_next", "y_t")],
    )


def _expand(node: onnx.NodeProto, index: int) -> list[onnx.NodeProto]:
    attrs = {a.name: a.i for a in node.attribute}
    inputs = iter(node.input)
    u, delta, A, B, C = (next(inputs) for _ in range(5))
    opt = {name: next(inputs) if attrs.get(f"has_{name}", 0) else None for name in _OPTIONAL}
    b = _Builder(f"portable_scan_{index}")
    f32 = TensorProto.FLOAT

    uf, dt, Bf, Cf = (b("Cast", t, to=f32) for t in (u, delta, B, C))
    if opt["delta_bias"]:
        dt = b("Add", dt, b("Unsqueeze", opt["delta_bias"], b.const([1])))
    if attrs.get("delta_softplus", 0):  # softplus(x) = x for x > 20 (docs/ops.md), without overflow
        twenty = b("Constant", value=helper.make_tensor("t", f32, [], [20.0]))
        dt = b("Where", b("Greater", dt, twenty), dt, b("Softplus", b("Min", dt, twenty)))

    # Shapes the step needs: [batch, G, dim/G, N] to spread groups over channels, [batch, dim, N].
    u_shape, b_shape = b("Shape", u), b("Shape", B)
    batch, dim = b("Slice", u_shape, b.const([0]), b.const([1])), b("Slice", u_shape, b.const([1]), b.const([2]))
    groups, n = b("Slice", b_shape, b.const([1]), b.const([2])), b("Slice", b_shape, b.const([2]), b.const([3]))
    group_shape = b("Concat", batch, groups, b("Div", dim, groups), n, axis=0)
    channel_shape = b("Concat", batch, dim, n, axis=0)

    h0 = opt["initial_state"] or b("ConstantOfShape", channel_shape, value=helper.make_tensor("z", f32, [1], [0.0]))
    final_state, y = b(
        "Scan", h0, uf, dt, Bf, Cf, outputs=2, num_scan_inputs=4,
        scan_input_axes=[2, 2, 3, 3], scan_output_axes=[2],
        body=_step_body(b.prefix, A, group_shape, channel_shape),
    )  # fmt: skip
    if opt["D"]:
        y = b("Add", y, b("Mul", b("Unsqueeze", opt["D"], b.const([1])), uf))
    if opt["z"]:
        zf = b("Cast", opt["z"], to=f32)
        y = b("Mul", y, b("Mul", zf, b("Sigmoid", zf)))
    y_out, state_out = node.output
    b.nodes += [helper.make_node("CastLike", [y, u], [y_out]), helper.make_node("Identity", [final_state], [state_out])]
    return b.nodes


def make_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Returns a copy of ``model`` with every mamba.SelectiveScan replaced by standard ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for i, node in enumerate(out.graph.node):
        if node.domain == DOMAIN and node.op_type == "SelectiveScan":
            nodes += _expand(node, i)
        elif node.domain == DOMAIN:
            raise ValueError(f"no portable form for {DOMAIN}.{node.op_type}")
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out
