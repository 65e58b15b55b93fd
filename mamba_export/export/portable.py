"""Rewrite the ``mamba`` scan nodes (SelectiveScan, SSDScan) into standard ONNX ops: a
``Scan`` over time.

For users who cannot load the custom-op library: the graph then runs in any ONNX
Runtime. The rewrite follows docs/ops.md step by step, in float32; it is slower than the
custom op (one loop iteration per time step) and computes the same numbers.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..ops.contract import SELECTIVE_SCAN, SSD_SCAN
from .schemas import DOMAIN

F32 = TensorProto.FLOAT


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

    def scalar(self, value: float) -> str:
        return self("Constant", value=helper.make_tensor("v", F32, [], [value]))

    def dims(self, tensor: str, *axes: int) -> list[str]:
        """Each listed dimension of ``tensor`` as a 1-element int64 tensor."""
        shape = self("Shape", tensor)
        return [self("Slice", shape, self.const([a]), self.const([a + 1])) for a in axes]

    def unsqueeze(self, tensor: str, *axes: int) -> str:
        return self("Unsqueeze", tensor, self.const(list(axes)))


def _spread_groups(b: _Builder, bc_t: str, group_shape: str, channel_shape: str) -> str:
    """[batch, G, N] -> [batch, channels, N]: channel c reads group c // (channels / G)."""
    return b("Reshape", b("Expand", b.unsqueeze(bc_t, 2), group_shape), channel_shape)


def _step_graph(b: _Builder, inputs: tuple[str, ...], h_next: str, y_t: str) -> onnx.GraphProto:
    """The Scan body built in ``b``: state ``inputs[0]`` and the scanned inputs in, h_next and y_t out."""
    b.nodes += [helper.make_node("Identity", [h_next], ["h_next"]), helper.make_node("Identity", [y_t], ["y_t"])]
    return helper.make_graph(
        b.nodes,
        b.prefix.replace("/", "_"),
        [helper.make_tensor_value_info(n, F32, None) for n in inputs],
        [helper.make_tensor_value_info(n, F32, None) for n in ("h_next", "y_t")],
    )


def _time_step(b: _Builder, dt: str, bias: str | None, softplus: bool) -> str:
    """dt + bias (already shaped to broadcast), then softplus(x) = x for x > 20 (docs/ops.md), without overflow."""
    if bias:
        dt = b("Add", dt, bias)
    if softplus:
        twenty = b.scalar(20.0)
        dt = b("Where", b("Greater", dt, twenty), dt, b("Softplus", b("Min", dt, twenty)))
    return dt


def _selective_scan(b: _Builder, inputs: list[str], opt: dict, attrs: dict) -> tuple[str, str, str]:
    """SelectiveScan's recurrence: returns (y before skip and gate, final state, u in float32)."""
    u, delta, A, B, C = inputs
    uf, dt, Bf, Cf = (b("Cast", t, to=F32) for t in (u, delta, B, C))
    bias = opt["delta_bias"] and b.unsqueeze(opt["delta_bias"], 1)  # [dim, 1] against [batch, dim, L]
    dt = _time_step(b, dt, bias, attrs.get("delta_softplus", 0))
    batch, dim = b.dims(u, 0, 1)
    groups, n = b.dims(B, 1, 2)
    group_shape = b("Concat", batch, groups, b("Div", dim, groups), n, axis=0)
    channel_shape = b("Concat", batch, dim, n, axis=0)

    # One step: h' = exp(dt*A) h + dt*u*B;  y = sum_n C h'. A and the shapes come from the outer scope.
    s = _Builder(f"{b.prefix}/step")
    dA = s("Exp", s("Mul", s.unsqueeze("dt_t", -1), A))
    dBu = s("Mul", s.unsqueeze(s("Mul", "dt_t", "u_t"), -1), _spread_groups(s, "B_t", group_shape, channel_shape))
    h_next = s("Add", s("Mul", dA, "h"), dBu)
    y_t = s("ReduceSum", s("Mul", h_next, _spread_groups(s, "C_t", group_shape, channel_shape)), s.const([-1]),
            keepdims=0)  # fmt: skip
    body = _step_graph(s, ("h", "u_t", "dt_t", "B_t", "C_t"), h_next, y_t)

    h0 = opt["initial_state"] or b("ConstantOfShape", channel_shape, value=helper.make_tensor("z", F32, [1], [0.0]))
    final_state, y = b("Scan", h0, uf, dt, Bf, Cf, outputs=2, num_scan_inputs=4, scan_input_axes=[2, 2, 3, 3],
                       scan_output_axes=[2], body=body)  # fmt: skip
    return y, final_state, uf


def _ssd_scan(b: _Builder, inputs: list[str], opt: dict, attrs: dict) -> tuple[str, str, str]:
    """SSDScan's recurrence: returns (y before skip and gate, final state, x in float32)."""
    x, dt, A, B, C = inputs
    xf, dt, Bf, Cf = (b("Cast", t, to=F32) for t in (x, dt, B, C))
    dt = _time_step(b, dt, opt["dt_bias"], attrs.get("dt_softplus", 0))  # dt_bias [H] against [batch, L, H]
    dt = b("Min", b("Max", dt, b.scalar(attrs.get("dt_min", 0.0))), b.scalar(attrs.get("dt_max", float("inf"))))
    batch, heads, head_dim = b.dims(x, 0, 2, 3)
    groups, n = b.dims(B, 2, 3)
    group_shape = b("Concat", batch, groups, b("Div", heads, groups), n, axis=0)
    head_shape = b("Concat", batch, heads, n, axis=0)

    # One step: S' = exp(dt*A) S + (dt*x) B^T;  y = S' C. Per head: S [P, N], x [P], B and C [N].
    s = _Builder(f"{b.prefix}/step")
    dA = s.unsqueeze(s("Exp", s("Mul", "dt_t", A)), 2, 3)  # [batch, H, 1, 1]
    dtx = s.unsqueeze(s("Mul", s.unsqueeze("dt_t", 2), "x_t"), 3)  # [batch, H, P, 1]
    # [batch, H, 1, N] each
    B_h, C_h = (s.unsqueeze(_spread_groups(s, t, group_shape, head_shape), 2) for t in ("B_t", "C_t"))
    h_next = s("Add", s("Mul", dA, "h"), s("Mul", dtx, B_h))
    y_t = s("ReduceSum", s("Mul", h_next, C_h), s.const([-1]), keepdims=0)
    body = _step_graph(s, ("h", "x_t", "dt_t", "B_t", "C_t"), h_next, y_t)

    state_shape = b("Concat", batch, heads, head_dim, n, axis=0)
    h0 = opt["initial_state"] or b("ConstantOfShape", state_shape, value=helper.make_tensor("z", F32, [1], [0.0]))
    final_state, y = b("Scan", h0, xf, dt, Bf, Cf, outputs=2, num_scan_inputs=4, scan_input_axes=[1, 1, 1, 1],
                       scan_output_axes=[1], body=body)  # fmt: skip
    return y, final_state, xf


# op type -> (its contract: the inputs in packing order, the recurrence's expansion)
_SCANS = {
    "SelectiveScan": (SELECTIVE_SCAN, _selective_scan),
    "SSDScan": (SSD_SCAN, _ssd_scan),
}


def _expand(node: onnx.NodeProto, index: int) -> list[onnx.NodeProto]:
    contract, recurrence = _SCANS[node.op_type]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = iter(node.input)
    required = [next(inputs) for _ in contract.required]
    opt = {o.name: next(inputs) if attrs.get(f"has_{o.name}", 0) else None for o in contract.optional}
    b = _Builder(f"portable_scan_{index}")
    y, final_state, xf = recurrence(b, required, opt, attrs)
    # Skip and gate: D [channels or heads] scales dim 1 (SelectiveScan's u) or 2 (SSDScan's x),
    # against which [D, 1] broadcasts in both.
    if opt["D"]:
        y = b("Add", y, b("Mul", b.unsqueeze(opt["D"], 1), xf))
    if opt["z"]:
        zf = b("Cast", opt["z"], to=F32)
        y = b("Mul", y, b("Mul", zf, b("Sigmoid", zf)))
    y_out, state_out = node.output
    b.nodes += [helper.make_node("CastLike", [y, required[0]], [y_out]),
                helper.make_node("Identity", [final_state], [state_out])]  # fmt: skip
    return b.nodes


def make_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Returns a copy of ``model`` with every mamba scan node replaced by standard ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for i, node in enumerate(out.graph.node):
        if node.domain == DOMAIN and node.op_type in _SCANS:
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
