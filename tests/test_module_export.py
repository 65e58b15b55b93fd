"""Export of arbitrary nn.Modules that call a selective scan (docs/custom-models.md): vision-style
models importing mamba_ssm's scan through the shim, a transformers MambaMixer, a registered
function of the user's own; one mamba.SelectiveScan node per scan call, dynamic batch, ONNX
Runtime (custom-op library and portable form) against eager; the adapters against independent
references; routing and restoring; entry points; `mamba-export validate --entry` through the
command line's main (per-input types, one-line errors, the trt backend); TensorRT engines of
module exports where TensorRT or TensorRT-RTX imports, run where a GPU takes them."""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from naive import selective_scan_naive
from scan_inputs import rel_err, scan_inputs
from torch import nn
from transformers import FalconMambaConfig, MambaConfig
from transformers.models.falcon_mamba import modeling_falcon_mamba
from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaMixer
from transformers.models.mamba import modeling_mamba
from transformers.models.mamba.modeling_mamba import MambaMixer

import mamba_export
import mamba_export.validate_module as validate_module_py  # the module; validate_module is its function
from mamba_export.validate import TOLERANCES
from mamba_export import export_onnx
from mamba_export.backends import factory
from mamba_export.backends.factory import backend_unavailable, ensure_engine
from mamba_export.cli import main
from mamba_export.entry_point import load_entry_point
from mamba_export.errors import MambaExportError, MissingDependencyError
from mamba_export.export.portable import make_portable
from mamba_export.intercept import (
    UnsupportedScanError,
    install_mamba_ssm_shim,
    mamba_inner_fn,
    register_scan_function,
    route_scans,
    uninstall_mamba_ssm_shim,
    unregister_scan_function,
)
from mamba_export.tensorrt import Profiles, ShapeRange, build_engine, import_tensorrt, load_plugin, read_engine_info
from mamba_export.tensorrt.build import parse_network
from mamba_export.tensorrt.compat import make_logger
from mamba_export.validate_module import (
    InputSpec,
    engine_batch_range,
    example_inputs,
    validate_module,
)

# Imported like user code does (module_models imports mamba_ssm too). The shim is removed again
# so that no other test module sees a mamba_ssm (transformers would pick it up as its kernel package).
SHIMMED = install_mamba_ssm_shim()
try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    from module_models import perturbed
finally:
    uninstall_mamba_ssm_shim()

REPO = Path(__file__).resolve().parents[1]


class BidirectionalPatchMamba(nn.Module):
    """Vision-Mamba-like: patch embedding, one selective scan along the patch sequence and one
    along the reversed sequence, merged, plus a classification head. Returns (logits, tokens)."""

    def __init__(self, channels=3, dim=16, d_inner=32, d_state=4, rank=2, patch=4, classes=5):
        super().__init__()
        self.rank, self.d_state = rank, d_state
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * d_inner)
        self.conv = nn.Conv1d(d_inner, d_inner, 3, padding=2, groups=d_inner)
        self.x_proj = nn.ModuleList(nn.Linear(d_inner, rank + 2 * d_state, bias=False) for _ in range(2))
        self.dt_proj = nn.ModuleList(nn.Linear(rank, d_inner) for _ in range(2))
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, d_state + 1).repeat(2, d_inner, 1)))
        self.D = nn.Parameter(torch.ones(2, d_inner))
        self.out_proj = nn.Linear(d_inner, dim)
        self.head = nn.Linear(dim, classes)

    def _scan(self, direction, x, z):
        dt, B, C = self.x_proj[direction](x.transpose(1, 2)).split([self.rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj[direction].weight @ dt.transpose(1, 2)
        return selective_scan_fn(x, delta, -torch.exp(self.A_log[direction]), B.transpose(1, 2), C.transpose(1, 2),
                                 self.D[direction], z=z, delta_bias=self.dt_proj[direction].bias,
                                 delta_softplus=True)  # fmt: skip

    def forward(self, images):
        tokens = self.embed(images).flatten(2).transpose(1, 2)  # [batch, patches, dim]
        length = tokens.shape[1]
        x, z = self.in_proj(self.norm(tokens)).transpose(1, 2).chunk(2, dim=1)
        x = F.silu(self.conv(x)[..., :length])
        forward_scan = self._scan(0, x, z)
        backward_scan = self._scan(1, x.flip(-1), z.flip(-1)).flip(-1)
        tokens = tokens + self.out_proj(((forward_scan + backward_scan) / 2).transpose(1, 2))
        return self.head(tokens.mean(1)), tokens


class CrossScan2D(nn.Module):
    """VMamba-like 2-D selective scan: the feature map read in four orders (row-major,
    column-major and both reversed) as K=4 groups of one scan call, then merged back."""

    K = 4

    def __init__(self, channels=3, dim=8, d_inner=16, d_state=4, rank=2, patch=4):
        super().__init__()
        self.rank, self.d_state = rank, d_state
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.in_proj = nn.Linear(dim, 2 * d_inner)
        self.dwconv = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner)
        self.x_proj_weight = nn.Parameter(torch.randn(self.K, rank + 2 * d_state, d_inner) * d_inner**-0.5)
        self.dt_proj_weight = nn.Parameter(torch.randn(self.K, d_inner, rank) * rank**-0.5)
        self.dt_proj_bias = nn.Parameter(torch.randn(self.K, d_inner) * 0.5 - 1)
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, d_state + 1).repeat(self.K * d_inner, 1)))
        self.D = nn.Parameter(torch.ones(self.K * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim)

    def forward(self, images):
        x, z = self.in_proj(self.embed(images).permute(0, 2, 3, 1)).chunk(2, dim=-1)  # [batch, H, W, d_inner]
        x = F.silu(self.dwconv(x.permute(0, 3, 1, 2)))
        batch, d, height, width = x.shape
        rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)  # [batch, d, L] in two orders
        xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # [batch, K, d, L]
        dbc = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dt, B, C = dbc.split([self.rank, self.d_state, self.d_state], dim=2)  # B, C: [batch, K, N, L]
        delta = torch.einsum("bkrl,kdr->bkdl", dt, self.dt_proj_weight)
        y = selective_scan_fn(xs.flatten(1, 2), delta.flatten(1, 2), -torch.exp(self.A_log), B, C, self.D,
                              delta_bias=self.dt_proj_bias.flatten(), delta_softplus=True)  # fmt: skip
        y = y.view(batch, self.K, d, height * width)
        by_rows = y[:, 0] + y[:, 2].flip(-1)
        by_cols = (y[:, 1] + y[:, 3].flip(-1)).view(batch, d, width, height).transpose(2, 3).flatten(2)
        y = self.out_norm((by_rows + by_cols).transpose(1, 2)) * F.silu(z.flatten(1, 2))
        return self.out_proj(y).view(batch, height, width, -1)


class MixerTagger(nn.Module):
    """A user model around transformers' MambaMixer: embed features, two mixers, per-step head."""

    def __init__(self, features=6, hidden=16, layers=2, classes=3):
        super().__init__()
        cfg = MambaConfig(hidden_size=hidden, state_size=4, intermediate_size=32, conv_kernel=4, time_step_rank=2,
                          num_hidden_layers=layers)  # fmt: skip
        self.embed = nn.Linear(features, hidden)
        self.mixers = nn.ModuleList(MambaMixer(cfg, layer_idx=i) for i in range(layers))
        self.head = nn.Linear(hidden, classes)

    def forward(self, features):
        h = self.embed(features)
        for mixer in self.mixers:
            h = h + mixer(h)
        return self.head(h)


def scan_nodes(proto):
    return [n for n in proto.graph.node if n.domain == "mamba" and n.op_type == "SelectiveScan"]


def dims(values):
    return [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]


def run_custom(path, *inputs):
    session = mamba_export.ort_session(path)
    names = [i.name for i in session.get_inputs()]
    return [torch.from_numpy(a) for a in session.run(None, dict(zip(names, (t.numpy() for t in inputs))))]


def run_portable(proto, *inputs):
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return [torch.from_numpy(a) for a in session.run(None, dict(zip(names, (t.numpy() for t in inputs))))]


def eager(model, *inputs):
    # Routed: where the real mamba_ssm is installed its kernels need CUDA; the adapters run anywhere
    # and are held to independent references below.
    with torch.no_grad(), route_scans(model):
        out = model(*inputs)
    return list(out) if isinstance(out, tuple) else [out]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


CASES = {
    # name: (model factory, example input, input at another batch size, SelectiveScan nodes, export options)
    "vim": (BidirectionalPatchMamba, torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16), 2, {}),
    # A batch-1 example (torch.export would fix a dimension of size 1) must still give a dynamic batch.
    "cross_scan": (CrossScan2D, torch.randn(1, 3, 16, 12), torch.randn(5, 3, 16, 12), 1,
                   {"output_names": ["features"]}),
    "transformers": (MixerTagger, torch.randn(2, 9, 6), torch.randn(4, 9, 6), 2, {}),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shim_run):
    """name -> (model, model.onnx path). Depends on shim_run only to start that subprocess first."""
    root = tmp_path_factory.mktemp("module_exports")
    out = {}
    for name, (factory, example, _, _, options) in CASES.items():
        model = perturbed(factory())
        out[name] = (model, export_onnx(model, (example,), root / name, **options))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_one_scan_node_per_call_not_unrolled(exported, name):
    proto = onnx.load(str(exported[name][1]))
    nodes = scan_nodes(proto)
    assert len(nodes) == CASES[name][3]
    assert not [n for n in proto.graph.node if n.op_type in ("Loop", "Scan", "If")], "the scan must not be unrolled"
    assert all(n.domain == "mamba" for n in proto.graph.node if n.op_type == "SelectiveScan")
    for node in nodes:  # all of these models pass D, delta_bias and softplus
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs["delta_softplus"] == 1 and attrs["has_D"] == 1 and attrs["has_delta_bias"] == 1
    onnx.checker.check_model(proto, full_check=True)


def test_cross_scan_is_one_node_with_four_groups(exported):
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(exported["cross_scan"][1])))
    (node,) = scan_nodes(proto)
    shapes = {v.name: v for v in proto.graph.value_info}
    u, B, C = (dims([shapes[node.input[i]]])[0] for i in (0, 3, 4))
    assert u == ["batch", CrossScan2D.K * 16, 12]  # [batch, K * d_inner, L]; L = 4 x 3 patches
    assert B == C == ["batch", CrossScan2D.K, 4, 12]  # [batch, K, N, L]


@pytest.mark.parametrize("name", list(CASES))
def test_custom_op_form_matches_eager_at_another_batch(exported, name):
    model, path = exported[name]
    x = CASES[name][2]
    for out, ref in zip(run_custom(path, x), eager(model, x), strict=True):
        assert out.shape == ref.shape and rel(out, ref) < 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_portable_form_matches_eager_at_another_batch(exported, name):
    model, path = exported[name]
    x = CASES[name][2]
    for out, ref in zip(run_portable(make_portable(onnx.load(str(path))), x), eager(model, x), strict=True):
        assert out.shape == ref.shape and rel(out, ref) < 1e-4


def test_dynamic_batch_names_and_export_json(exported):
    model, path = exported["vim"]
    proto = onnx.load(str(path))
    assert [v.name for v in proto.graph.input] == ["images"]  # forward's parameter name
    assert [v.name for v in proto.graph.output] == ["output_0", "output_1"]
    assert dims(proto.graph.input) == [["batch", 3, 16, 16]]
    assert [d[0] for d in dims(proto.graph.output)] == ["batch", "batch"]
    info = json.loads((path.parent / "export.json").read_text())
    assert info["kind"] == "module" and info["source"].endswith("BidirectionalPatchMamba")
    assert info["dynamic_batch"] is True and info["selective_scans"] == 2 and info["dtype"] == "float32"
    assert info["inputs"] == [{"name": "images", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    assert [o["shape"] for o in info["outputs"]] == [["batch", 5], ["batch", 16, 16]]
    assert info["custom_domain"] == {"domain": "mamba", "version": 1}
    proto = onnx.load(str(exported["cross_scan"][1]))  # exported from a batch-1 example
    assert dims(proto.graph.input) == [["batch", 3, 16, 12]] and [v.name for v in proto.graph.output] == ["features"]


# -- a scan function of the user's own, under a module path of the user's -------------------------------

USER_KERNELS = '''
import torch


def loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """A plain-PyTorch selective scan with selective_scan_fn's signature; B, C: [batch, N, L]."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return (y, h) if return_last_state else y
'''


class UserScanTwice(nn.Module):
    def __init__(self, scan, dim=8, d_state=3):
        super().__init__()
        self.proj = nn.Linear(dim, dim + 2 * d_state)
        self.A_log = nn.Parameter(torch.randn(dim, d_state))
        self.D = nn.Parameter(torch.randn(dim))
        self.dims = (dim, d_state)
        self.scan = scan  # held as an attribute, like a configurable kernel

    def forward(self, x):  # x: [batch, L, dim]
        dim, n = self.dims
        delta, B, C = self.proj(x).transpose(1, 2).split([dim, n, n], dim=1)
        y = self.scan(x.transpose(1, 2), delta, -torch.exp(self.A_log), B, C, self.D, delta_softplus=True)
        y2, last = self.scan(y, delta, -torch.exp(self.A_log), C, B, None, z=y, return_last_state=True)
        return y2.transpose(1, 2), last


@pytest.fixture
def user_kernels(tmp_path, monkeypatch):
    package = tmp_path / "acme_kernels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scan.py").write_text(USER_KERNELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import acme_kernels.scan

    yield acme_kernels.scan
    unregister_scan_function("acme_kernels.scan.loop_scan")
    for name in ("acme_kernels.scan", "acme_kernels"):
        sys.modules.pop(name, None)


def test_registered_function_is_one_node_per_call(user_kernels, tmp_path):
    model = perturbed(UserScanTwice(user_kernels.loop_scan))
    register_scan_function("acme_kernels.scan.loop_scan")
    path = export_onnx(model, torch.randn(2, 6, 8), tmp_path / "user")
    proto = onnx.load(str(path))
    assert len(scan_nodes(proto)) == 2
    assert not [n for n in proto.graph.node if n.op_type in ("Loop", "Scan")]
    assert model.scan is user_kernels.loop_scan, "routing must restore the module's attribute"
    x3 = torch.randn(3, 6, 8)
    with torch.no_grad():
        ref = model(x3)  # the user's own loop: the independent reference
        with route_scans(model):
            routed = model(x3)
    for out, r, rr in zip(run_portable(make_portable(proto), x3), ref, routed, strict=True):
        assert rel(out, r) < 1e-4 and rel(rr, r) < 1e-5


# -- the adapters compute what they replace -----------------------------------------------------------------


@pytest.mark.parametrize("groups, layout", [(1, "3d"), (1, "4d"), (2, "4d")])
def test_selective_scan_fn_adapter_matches_naive(groups, layout):
    inp = scan_inputs(2, 6, 9, 3, groups, has_initial_state=False, seed=groups)
    B, C = inp["B"], inp["C"]
    if layout == "3d":
        B, C = B[:, 0], C[:, 0]
    y, last = selective_scan_fn(inp["u"], inp["delta"], inp["A"], B, C, inp["D"], inp["z"], inp["delta_bias"],
                                True, True)  # fmt: skip
    ref_y, ref_last = selective_scan_naive(**inp, delta_softplus=True)
    assert rel_err(y, ref_y) < 1e-5 and rel_err(last, ref_last) < 1e-5
    assert last.dtype == torch.float32
    only_y = selective_scan_fn(inp["u"], inp["delta"], inp["A"], B, C)  # defaults: no D, z, bias, softplus
    assert rel_err(only_y, selective_scan_naive(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"])[0]) < 1e-5


def test_selective_scan_fn_casts_to_the_contract_types():
    """mamba_ssm takes fp32 A/D/delta_bias with fp16 activations, and double tensors in its ref."""
    inp = scan_inputs(1, 4, 5, 2, seed=3, has_initial_state=False)
    half = {k: v.half() for k, v in inp.items() if k in ("u", "delta", "B", "C", "z")}
    y = selective_scan_fn(half["u"], half["delta"], inp["A"].double(), half["B"], half["C"], inp["D"].half(),
                          half["z"], inp["delta_bias"].double(), delta_softplus=True)  # fmt: skip
    assert y.dtype == torch.float16
    ref, _ = selective_scan_naive(half["u"], half["delta"], inp["A"], half["B"], half["C"], inp["D"].half(), half["z"],
                                  inp["delta_bias"], delta_softplus=True)  # fmt: skip
    assert rel_err(y, ref) < 2e-3
    y64 = selective_scan_fn(*(inp[k].double() for k in ("u", "delta", "A", "B", "C")))
    assert y64.dtype == torch.float64
    assert rel_err(y64, selective_scan_naive(*(inp[k] for k in ("u", "delta", "A", "B", "C")))[0]) < 1e-5


def test_transformers_mixer_routed_equals_transformers_own_path():
    mixer = perturbed(MambaMixer(MambaConfig(hidden_size=8, state_size=3, intermediate_size=16, time_step_rank=2),
                                 layer_idx=0))  # fmt: skip
    x = torch.randn(2, 7, 8)
    original = modeling_mamba.mamba_selective_scan
    with torch.no_grad():
        ref = mixer(x)  # transformers' own torch loop
        with route_scans(mixer):
            assert modeling_mamba.mamba_selective_scan is not original
            routed = mixer(x)
    assert rel(routed, ref) < 1e-5
    assert modeling_mamba.mamba_selective_scan is original, "restored after routing"


def test_transformers_state_update_adapter_matches_transformers():
    inp = scan_inputs(2, 6, 1, 3, has_initial_state=True, seed=5)
    args = [inp["u"][..., 0], inp["delta"][..., 0], inp["A"], inp["B"][:, 0, :, 0], inp["C"][:, 0, :, 0], inp["D"]]
    kwargs = dict(dt_bias=inp["delta_bias"], dt_softplus=True, z=inp["z"][..., 0])
    state_ref, state = inp["initial_state"].clone(), inp["initial_state"].clone()
    ref = modeling_mamba.mamba_selective_state_update(state_ref, *args, **kwargs)
    with route_scans():
        out = modeling_mamba.mamba_selective_state_update(state, *args, **kwargs)
    assert rel(out, ref) < 1e-5 and rel(state, state_ref) < 1e-5


def _mixer_inner_args(mixer, x, **extra):
    """What transformers' mixers hand mamba_ssm's mamba_inner_fn in training mode."""
    return dict(
        xz=mixer.in_proj(x).transpose(1, 2), conv1d_weight=mixer.conv1d.weight, conv1d_bias=mixer.conv1d.bias,
        x_proj_weight=mixer.x_proj.weight, delta_proj_weight=mixer.dt_proj.weight,
        out_proj_weight=mixer.out_proj.weight, out_proj_bias=None, A=-torch.exp(mixer.A_log.float()),
        D=mixer.D.float(), delta_bias=mixer.dt_proj.bias.float(), delta_softplus=True, **extra,
    )  # fmt: skip


def test_mamba_inner_fn_adapter_matches_the_unfused_mixer():
    mixer = perturbed(MambaMixer(MambaConfig(hidden_size=8, state_size=3, intermediate_size=16, time_step_rank=2),
                                 layer_idx=0))  # fmt: skip
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        assert rel(mamba_inner_fn(**_mixer_inner_args(mixer, x)), mixer(x)) < 1e-5


def test_mamba_inner_fn_adapter_with_b_c_norms_matches_falcon_mamba():
    cfg = FalconMambaConfig(hidden_size=8, state_size=3, intermediate_size=16, time_step_rank=2)
    mixer = FalconMambaMixer(cfg, layer_idx=0, initialize_mixer_weights=False)  # its init needs the norms it lacks
    with torch.no_grad():
        mixer.A_log.copy_(torch.log(torch.arange(1.0, 4.0)).expand(16, 3))
        mixer.D.fill_(1.0)
    mixer = perturbed(mixer)
    # transformers normalises dt before dt_proj, mamba_ssm's kernel after it (over the channels, the
    # next test): only the B and C norms are the same function in both.
    mixer.dt_layernorm = nn.Identity()
    x = torch.randn(2, 7, 8)
    norms = dict(b_rms_weight=mixer.b_layernorm.weight, c_rms_weight=mixer.c_layernorm.weight,
                 b_c_dt_rms_eps=mixer.rms_eps)  # fmt: skip
    original = modeling_falcon_mamba.mamba_selective_scan
    with torch.no_grad():
        ref = mixer(x)
        assert rel(mamba_inner_fn(**_mixer_inner_args(mixer, x, **norms)), ref) < 1e-5
        with route_scans(mixer):
            assert rel(mixer(x), ref) < 1e-5
    assert modeling_falcon_mamba.mamba_selective_scan is original


def test_mamba_inner_fn_adapter_with_weighted_norms_matches_its_definition():
    """mamba_ssm's fused path written out with standard ops and the naive scan: B, C normalised
    over d_state and delta (after dt_proj) over the channels, each with its own weights."""
    g = torch.Generator().manual_seed(7)
    batch, d_model, dim, n, rank, length, eps = 2, 5, 6, 3, 2, 7, 1e-5

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    args = dict(xz=rnd(batch, 2 * dim, length), conv1d_weight=rnd(dim, 1, 4), conv1d_bias=rnd(dim),
                x_proj_weight=rnd(rank + 2 * n, dim), delta_proj_weight=rnd(dim, rank),
                out_proj_weight=rnd(d_model, dim), out_proj_bias=rnd(d_model), A=-torch.rand(dim, n, generator=g),
                D=rnd(dim), delta_bias=rnd(dim), B_proj_bias=rnd(n), C_proj_bias=rnd(n),
                b_rms_weight=rnd(n), c_rms_weight=rnd(n), dt_rms_weight=rnd(dim), b_c_dt_rms_eps=eps)  # fmt: skip

    def rms(t, w):  # over the last axis
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * w

    x, z = args["xz"].chunk(2, dim=1)
    x = F.silu(F.conv1d(F.pad(x, (3, 0)), args["conv1d_weight"], args["conv1d_bias"], groups=dim))
    dbc = x.transpose(1, 2) @ args["x_proj_weight"].T  # [batch, L, rank + 2n]
    delta = rms(dbc[..., :rank] @ args["delta_proj_weight"].T, args["dt_rms_weight"]).transpose(1, 2)
    B = rms(dbc[..., rank : rank + n] + args["B_proj_bias"], args["b_rms_weight"]).transpose(1, 2)
    C = rms(dbc[..., rank + n :] + args["C_proj_bias"], args["c_rms_weight"]).transpose(1, 2)
    y, _ = selective_scan_naive(x, delta, args["A"], B[:, None], C[:, None], args["D"], z, args["delta_bias"],
                                delta_softplus=True)  # fmt: skip
    ref = y.float().transpose(1, 2) @ args["out_proj_weight"].T + args["out_proj_bias"]
    assert rel(mamba_inner_fn(**args), ref) < 1e-5


# -- routing --------------------------------------------------------------------------------------------------


def test_route_scans_replaces_every_reference_and_restores_after_an_error(user_kernels):
    original = user_kernels.loop_scan
    register_scan_function(original)

    class Holder(nn.Module):
        as_static = staticmethod(original)

        def __init__(self):
            super().__init__()
            self.fn = original
            self.partial = functools.partial(original, delta_softplus=True)

    holder = Holder()
    this_module = sys.modules[__name__]
    this_module.GLOBAL_REFERENCE = original
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with route_scans(holder):
                routed = (user_kernels.loop_scan, holder.fn, holder.as_static, holder.partial.func,
                          this_module.GLOBAL_REFERENCE)  # fmt: skip
                assert all(f is mamba_export.intercept.selective_scan_fn for f in routed)
                assert holder.partial.keywords == {"delta_softplus": True}
                raise RuntimeError("inside")
        restored = (user_kernels.loop_scan, holder.fn, holder.as_static, holder.partial.func,
                    this_module.GLOBAL_REFERENCE)  # fmt: skip
        assert all(f is original for f in restored)
    finally:
        del this_module.GLOBAL_REFERENCE
        unregister_scan_function(original)


def test_registering_a_bad_path_or_object_is_refused():
    for bad in ("noattribute", "a..b", "pkg.mod:1x", ""):
        with pytest.raises(mamba_export.MambaExportError, match="dotted path"):
            register_scan_function(bad)
    with pytest.raises(mamba_export.MambaExportError, match="function or a dotted path"):
        register_scan_function(42)
    register_scan_function("no_such_package_xyz.scan")
    try:
        with pytest.raises(mamba_export.MambaExportError, match="cannot import no_such_package_xyz"):
            with route_scans():
                pass
    finally:
        unregister_scan_function("no_such_package_xyz.scan")


def test_an_installed_mamba_ssm_is_not_shadowed_and_its_kernel_is_routed(tmp_path, monkeypatch):
    """A stand-in for a real mamba_ssm whose CUDA kernel cannot run here."""
    interface = tmp_path / "mamba_ssm" / "ops"
    interface.mkdir(parents=True)
    (tmp_path / "mamba_ssm" / "__init__.py").write_text("")
    (interface / "__init__.py").write_text("")
    (interface / "selective_scan_interface.py").write_text(textwrap.dedent("""
        def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              return_last_state=False):
            raise RuntimeError("selective_scan_cuda is not available")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert install_mamba_ssm_shim() is False
        import mamba_ssm.ops.selective_scan_interface as installed

        kernel = installed.selective_scan_fn
        inp = scan_inputs(2, 4, 6, 3, has_initial_state=False, seed=9)
        args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        with pytest.raises(RuntimeError, match="not available"):
            kernel(*args)
        with route_scans():
            y = installed.selective_scan_fn(*args, delta_softplus=True)
        assert installed.selective_scan_fn is kernel
        assert rel_err(y, selective_scan_naive(**inp, delta_softplus=True)[0]) < 1e-5
    finally:
        for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
            del sys.modules[name]


# -- errors -----------------------------------------------------------------------------------------------------


def test_time_invariant_b_is_refused_with_a_clear_error():
    inp = scan_inputs(1, 4, 5, 2, seed=1)
    with pytest.raises(UnsupportedScanError, match=r"time-invariant B of shape \[dim, N\]"):
        selective_scan_fn(inp["u"], inp["delta"], inp["A"], torch.randn(4, 2), inp["C"])
    with pytest.raises(UnsupportedScanError, match="B has 2 groups and C has 3"):
        selective_scan_fn(torch.randn(1, 6, 5), torch.randn(1, 6, 5), -torch.rand(6, 2), torch.randn(1, 2, 2, 5),
                          torch.randn(1, 3, 2, 5))  # fmt: skip


def test_complex_a_is_refused_with_a_clear_error():
    inp = scan_inputs(1, 4, 5, 2, seed=1)
    with pytest.raises(UnsupportedScanError, match="complex"):
        selective_scan_fn(inp["u"], inp["delta"], torch.complex(inp["A"], inp["A"]), inp["B"], inp["C"])


def test_unsupported_scan_fails_the_export_with_that_error(tmp_path):
    class TimeInvariant(nn.Module):
        def forward(self, u):
            return selective_scan_fn(u, u, -torch.ones(4, 2), torch.ones(4, 2), torch.ones(4, 2))

    with pytest.raises(UnsupportedScanError, match="time-invariant"):
        export_onnx(TimeInvariant(), torch.randn(2, 4, 5), tmp_path / "x")
    assert not (tmp_path / "x").exists(), "a failed export leaves nothing behind, not even the directory it made"


def test_bad_example_inputs_and_existing_exports(tmp_path):
    model = CrossScan2D()
    with pytest.raises(mamba_export.MambaExportError, match="tensor or a tuple of tensors"):
        export_onnx(model, ("not a tensor",), tmp_path / "a")
    with pytest.raises(mamba_export.MambaExportError, match="dim 0 of sizes"):
        export_onnx(nn.Bilinear(2, 2, 2), (torch.randn(2, 2), torch.randn(3, 2)), tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model.onnx").write_bytes(b"user data")
    with pytest.raises(mamba_export.MambaExportError, match="already holds an export"):
        export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "c")
    assert (tmp_path / "c" / "model.onnx").read_bytes() == b"user data"


@pytest.fixture
def entry_package(tmp_path, monkeypatch):
    (tmp_path / "acme_models.py").write_text(textwrap.dedent("""
        import torch

        def build():
            return torch.nn.Linear(3, 2)

        def not_a_model():
            return 42

        def broken():
            raise RuntimeError("weights missing")

        INSTANCE = torch.nn.Identity()
        NUMBER = 7
    """))
    (tmp_path / "acme_broken.py").write_text("import acme_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("acme_models", "acme_broken"):
        sys.modules.pop(name, None)
    uninstall_mamba_ssm_shim()  # load_entry_point installed it; other test modules must not see a mamba_ssm


def test_entry_points_load_or_fail_clearly(entry_package):
    assert isinstance(load_entry_point("acme_models:build"), nn.Linear)
    assert isinstance(load_entry_point("acme_models:INSTANCE"), nn.Identity)
    cases = {
        "acme_models": "expected 'package.module:factory'",
        "acme_models:": "expected 'package.module:factory'",
        ":build": "expected 'package.module:factory'",
        "acme models:build": "expected 'package.module:factory'",
        "acme_models:build:x": "expected 'package.module:factory'",
        "acme_nowhere:build": "no module named 'acme_nowhere'",
        "acme_broken:build": "importing acme_broken failed: ModuleNotFoundError",
        "acme_models:missing": "acme_models has no attribute 'missing'",
        "acme_models:build.deeper": "acme_models.build has no attribute 'deeper'",
        "acme_models:not_a_model": "returned a int, expected a torch.nn.Module",
        "acme_models:broken": "calling it failed: RuntimeError: weights missing",
        "acme_models:NUMBER": "is a int, not a callable",
    }
    for spec, message in cases.items():
        with pytest.raises(mamba_export.MambaExportError, match=message):
            load_entry_point(spec)


def test_validate_module_reuses_its_export_and_reports_per_output_errors(exported, tmp_path):
    model, path = exported["cross_scan"]
    before = path.stat().st_mtime_ns
    report = validate_module(model, CASES["cross_scan"][1], path.parent, backend="ort", json_path=tmp_path / "r.json")
    assert path.stat().st_mtime_ns == before, "the export in the directory is reused"
    assert report.passed and report.batch == 2 and report.reference == "routed"  # the example's batch + 1
    assert report.outputs[0]["name"] == "features" and report.outputs[0]["shape"] == [2, 4, 3, 8]
    assert report.outputs[0]["max_rel_err"] < 1e-4
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    with pytest.raises(mamba_export.MambaExportError, match="does not fit .*: it is not portable"):
        validate_module(model, CASES["cross_scan"][1], path.parent, backend="ort-portable")
    with pytest.raises(mamba_export.MambaExportError, match="its inputs have other shapes or types"):
        validate_module(model, torch.randn(2, 3, 8, 8), path.parent, backend="ort")
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    with pytest.raises(mamba_export.MambaExportError, match="it was made from other weights"):
        validate_module(retrained, CASES["cross_scan"][1], path.parent, backend="ort")
    half = tmp_path / "half"  # export_onnx(dtype="fp16") converts a copy: this module is still float32
    mamba_export.export_onnx(model, (CASES["cross_scan"][1],), half, dtype="fp16", **CASES["cross_scan"][4])
    with pytest.raises(mamba_export.MambaExportError, match="it is float16, the module float32 "):
        validate_module(model, CASES["cross_scan"][1].half(), half, backend="ort")


# -- the shim and the validate command, in clean interpreters ---------------------------------------------------

USER_MODEL = '''
import torch
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn


class TwoScans(torch.nn.Module):
    def __init__(self, dim=6, d_state=3):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(dim, dim + 2 * d_state)
        self.A_log = torch.nn.Parameter(torch.randn(dim, d_state))
        self.sizes = [dim, d_state, d_state]

    def forward(self, x):  # [batch, L, dim]
        delta, B, C = self.proj(x).transpose(1, 2).split(self.sizes, dim=1)
        y = selective_scan_fn(x.transpose(1, 2), delta, -torch.exp(self.A_log), B, C, delta_softplus=True)
        y = selective_scan_fn(y.flip(-1), delta, -torch.exp(self.A_log), B, C, delta_softplus=True).flip(-1)
        return y.transpose(1, 2)


def build():
    return TwoScans()
'''

CLEAN_RUN = '''
import sys
assert "mamba_ssm" not in sys.modules
try:
    import mamba_ssm
    raise SystemExit("mamba_ssm is installed: this test is for machines without it")
except ModuleNotFoundError:
    pass
from mamba_export.cli import main
status = 0
for form in ("ort", "ort-portable"):
    status = status or main(["validate", *sys.argv[1:], "--backend", form, "--onnx", form, "--json", form + ".json"])
import mamba_ssm.ops.selective_scan_interface as interface, mamba_export.intercept as intercept
assert interface.selective_scan_fn is intercept.selective_scan_fn
try:
    import mamba_ssm.ops.triton.selective_state_update
    raise SystemExit("the shim must provide nothing beyond the scan interface")
except ModuleNotFoundError:
    pass
sys.exit(status)
'''


@pytest.fixture(scope="module")
def shim_run(tmp_path_factory):
    """A clean interpreter (pristine sys.modules) running the user's file, which imports mamba_ssm,
    through `mamba-export validate --entry`. Started before the in-process exports
    so that it runs alongside them."""
    work = tmp_path_factory.mktemp("shim")
    (work / "user_model.py").write_text(USER_MODEL)
    (work / "run.py").write_text(CLEAN_RUN)
    process = subprocess.Popen(
        [sys.executable, str(work / "run.py"), "--entry", "user_model:build", "--input-shape", "1,7,6"],
        cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    yield process, work
    if process.poll() is None:
        process.kill()
        process.wait()


def test_shim_lets_unmodified_user_code_export_and_validate(shim_run):
    process, work = shim_run
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    for form in ("ort", "ort-portable"):
        report = json.loads((work / f"{form}.json").read_text())
        assert report["passed"] and report["model"] == "user_model:build" and report["batch"] == 2
    proto = onnx.load(str(work / "ort" / "model.onnx"))
    assert len(scan_nodes(proto)) == 2, "one node per call"
    assert not [n for n in proto.graph.node if n.op_type in ("Loop", "Scan")]
    info = json.loads((work / "ort-portable" / "export.json").read_text())
    assert info["portable"] is True and info["selective_scans"] == 2
    assert not [n for n in onnx.load(str(work / "ort-portable" / "model.onnx")).graph.node if n.domain == "mamba"]


# -- `mamba-export validate --entry` through the command line's main -----------------------------------------

VISION = ("--entry", "module_models:build_vision", "--input-shape", "1,3,16,12")
TAGGER_INPUTS = ("--input-shape", "2,9", "--input-dtype", "int64:0:50", "--input-shape", "2,9,4", "--input-dtype",
                 "float32")  # fmt: skip


@pytest.fixture
def cli(capsys):
    """main(argv) -> (exit status, stdout, stderr), for models of tests/module_models.py."""

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    uninstall_mamba_ssm_shim()  # validate --entry installed it; other test modules must not see a mamba_ssm


def test_cli_validates_a_vision_model_from_its_entry_point(cli, tmp_path):
    code, out, err = cli("validate", *VISION, "--onnx", str(tmp_path / "onnx"), "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    assert "ort vs eager PyTorch" in out and "PASSED" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["model"] == "module_models:build_vision" and report["backend"] == "ort"
    assert report["batch"] == 2 and [o["shape"] for o in report["outputs"]] == [[2, 5]]
    assert report["outputs"][0]["max_rel_err"] < 1e-4
    assert len(scan_nodes(onnx.load(str(tmp_path / "onnx" / "model.onnx")))) == 2  # forwards and backwards


def test_cli_validates_integer_ids_with_per_input_dtypes(cli, tmp_path):
    code, _, err = cli("validate", "--entry", "module_models:build_tagger", *TAGGER_INPUTS, "--onnx",
                       str(tmp_path / "onnx"), "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert code == 0, err
    info = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert info["inputs"] == [{"name": "input_ids", "shape": ["batch", 9], "dtype": "int64"},
                              {"name": "features", "shape": ["batch", 9, 4], "dtype": "float32"}]  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["batch"] == 3 and report["outputs"][0]["shape"] == [3, 9, 3]


def test_input_specs_draw_their_types_and_ranges():
    shapes = [(4, 500), (4, 500), (4, 3), (4, 50)]
    specs = [InputSpec(torch.int64, 3, 7), InputSpec(torch.int32, -2, 0), InputSpec(torch.float16),
             InputSpec(torch.bool)]  # fmt: skip
    ids, negative, noise, mask = example_inputs(shapes, specs, torch.float32, seed=1)
    assert ids.dtype == torch.int64 and set(ids.unique().tolist()) == {3, 4, 5, 6}  # LOW <= v < HIGH, all drawn
    assert negative.dtype == torch.int32 and set(negative.unique().tolist()) == {-2, -1}
    assert noise.dtype == torch.float16 and noise.shape == (4, 3) and noise.float().std() > 0.1
    assert mask.dtype == torch.bool and mask.any() and not mask.all()
    again = example_inputs(shapes, specs, torch.float32, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(again, (ids, negative, noise, mask)))  # the seed decides
    once = example_inputs([(2, 3), (2, 5)], [InputSpec(torch.float16)], torch.float32, seed=0)  # once: every input
    assert [t.dtype for t in once] == [torch.float16, torch.float16]
    assert [t.dtype for t in example_inputs([(2, 3)], [], torch.float16, seed=0)] == [torch.float16]


@pytest.mark.parametrize("value, message", [
    ("int64", "int64 needs a value range: int64:LOW:HIGH"),
    ("int32:5:5", "expected int32:LOW:HIGH with integers LOW < HIGH"),
    ("int64:a:9", "expected int64:LOW:HIGH"),
    ("int64:1:2:3", "expected int64:LOW:HIGH"),
    ("float32:0:1", "a value range is for integer types; float32 inputs are normal noise"),
    ("bool:0:1", "a value range is for integer types; bool inputs are 0 or 1"),
    ("complex64", "expected one of float32, float16, int64, int32, bool"),
])  # fmt: skip
def test_cli_refuses_bad_input_dtypes(capsys, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["validate", *VISION, "--input-dtype", value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"mamba-export validate: error: argument --input-dtype: "
                                                               f"{message}")  # fmt: skip


@pytest.mark.parametrize("argv, message", [
    (("--entry", "module_models:missing", "--input-shape", "1,3,16,12"), "module_models has no attribute 'missing'"),
    (("--entry", "acme_absent_xyz:build", "--input-shape", "1,3,16,12"), "no module named 'acme_absent_xyz'"),
    (("--entry", "module_models:build_vision", "--input-shape", "1,3,16"),
     "torch.export cannot trace module_models:build_vision: "),
    (("--entry", "module_models:build_tagger", "--input-shape", "2,9", "--input-dtype", "int64:0:50"),
     "torch.export cannot trace module_models:build_tagger: "),  # forward takes two inputs
    (("--entry", "module_models:build_tagger", "--input-shape", "2,9", "--input-shape", "3,9,4"),
     "--input-shape: dim 0 is the batch, the same for every input; got [2, 3]"),
    (("--entry", "module_models:build_tagger", *TAGGER_INPUTS, "--input-dtype", "float32"),
     "give --input-dtype once (for every input) or once per --input-shape (2), not 3 times"),
    (("--entry", "module_models:build_tagger", "--input-shape", "2,9", "--input-dtype", "int64:50:60",
      "--input-shape", "2,9,4", "--input-dtype", "float32"), "ort failed on the inputs: "),  # past the 50 embeddings
    ((*VISION, "--max-batch", "8"), "--max-batch bounds the trt engine's batch"),
    (("MODEL", *VISION), "give MODEL or --entry, not both"),
    (("--entry", "module_models:build_vision"), "--entry needs --input-shape"),
    ((*VISION, "--backend", "torch"), "--entry: --backend must be one of ort, ort-portable, ort-cuda, trt"),
    ((*VISION, "--device", "cuda"), "--entry: --backend ort runs on cpu, not --device cuda"),
    ((*VISION, "--backend", "trt", "--device", "cpu"), "--entry: --backend trt runs on cuda, not --device cpu"),
])  # fmt: skip
def test_cli_errors_are_one_line(cli, argv, message):
    code, out, err = cli("validate", *argv, "-q")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("mamba-export validate: error: ") and message in err, err


@pytest.mark.parametrize("backend", ["ort-cuda", "trt"])
def test_a_backend_that_cannot_run_here_is_refused_before_the_export(cli, tmp_path, backend):
    reason = backend_unavailable(backend)
    if reason is None:
        pytest.skip(f"{backend} runs here")
    code, out, err = cli("validate", *VISION, "--backend", backend, "--onnx", str(tmp_path / "onnx"), "-q")
    assert (code, out, err) == (2, "", f"mamba-export validate: error: backend {backend}: {reason}\n")
    assert not (tmp_path / "onnx").exists(), "nothing is exported for a backend that cannot run"


@pytest.mark.parametrize("backend", list(validate_module_py.MODULE_BACKENDS))
def test_every_backend_is_asked_once_before_the_export(cli, monkeypatch, tmp_path, backend):
    """Wherever the tests run (with a GPU or not): a stub says no."""
    asked = []
    monkeypatch.setattr(factory, "backend_unavailable", lambda *args: asked.append(args) or "no such thing")
    monkeypatch.setattr(validate_module_py, "export_module", lambda *_, **__: pytest.fail("exported"))
    code, out, err = cli("validate", *VISION, "--backend", backend, "--onnx", str(tmp_path / "onnx"), "-q")
    assert (code, out, err) == (2, "", f"mamba-export validate: error: backend {backend}: no such thing\n")
    assert asked == [(backend, None)] and not (tmp_path / "onnx").exists()


def test_an_export_that_does_not_fit_is_replaced_only_with_overwrite(cli, tmp_path):
    """The refusal names the command's option, as every message the command prints does (errors.py)."""
    onnx_dir = tmp_path / "onnx"
    assert cli("validate", *VISION, "--onnx", str(onnx_dir), "-q")[0] == 0
    code, out, err = cli("validate", *VISION, "--backend", "ort-portable", "--onnx", str(onnx_dir), "-q")
    assert (code, out) == (2, "") and err == (
        f"mamba-export validate: error: {onnx_dir} holds an export that does not fit module_models:build_vision: "
        "it is not portable; choose another directory or pass --overwrite\n")  # fmt: skip
    code, out, err = cli("validate", *VISION, "--backend", "ort-portable", "--onnx", str(onnx_dir), "--overwrite")
    assert code == 0 and "PASSED" in out, err


def test_ort_without_its_custom_op_library_is_refused_before_the_export(cli, monkeypatch, tmp_path):
    missing = tmp_path / "missing.so"
    monkeypatch.setenv("MAMBA_EXPORT_ORT_LIBRARY", str(missing))
    code, out, err = cli("validate", *VISION, "--backend", "ort", "--onnx", str(tmp_path / "onnx"), "-q")
    assert (code, out) == (2, "")
    assert err == f"mamba-export validate: error: backend ort: MAMBA_EXPORT_ORT_LIBRARY={missing}: no such file\n"
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("backend", ["ort", "ort-portable", "ort-cuda"])
def test_without_onnxruntime_the_reason_says_how_to_install_it(monkeypatch, backend):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    assert backend_unavailable(backend).startswith("onnxruntime is not installed: pip install onnxruntime")


def test_engine_batch_range_is_tuned_for_the_example():
    assert engine_batch_range(2, 3) == ShapeRange(1, 2, 8)  # MAX_BATCH_FACTOR x the example's batch
    assert engine_batch_range(1, 2) == ShapeRange(1, 1, 4)
    assert engine_batch_range(2, 9) == ShapeRange(1, 2, 9)  # at least the batch run
    assert engine_batch_range(2, 3, 16) == ShapeRange(1, 2, 16)
    assert engine_batch_range(4, 1, 2) == ShapeRange(1, 2, 2)
    with pytest.raises(MambaExportError, match="--max-batch 2 is below the batch run"):
        engine_batch_range(2, 3, 2)
    with pytest.raises(MambaExportError, match="--max-batch must be at least 1, got 0"):
        engine_batch_range(1, 0, 0)  # (a batch of 0 would leave the range's opt at 0)


def test_module_exports_refused_by_build_engine_before_tensorrt(cli, exported, tmp_path):
    path = exported["vim"][1]
    with pytest.raises(MambaExportError, match=r"one profile, over the batch: a sequence range \(--min/--opt/--max-seq"):
        build_engine(path.parent, tmp_path / "m.plan", profiles=Profiles(sequence=ShapeRange(1, 8, 32)))
    code, _, err = cli("build-engine", str(path.parent), "-o", str(tmp_path / "m.plan"), "--max-seq", "16", "-q")
    assert code == 2 and "a sequence range (--min/--opt/--max-seq) does not apply" in err
    portable = export_onnx(CrossScan2D().eval(), torch.randn(2, 3, 8, 8), tmp_path / "portable", portable=True)
    with pytest.raises(MambaExportError, match="is a portable export .* each scan is one mamba.SelectiveScan node"):
        build_engine(portable, tmp_path / "m.plan")
    assert not (tmp_path / "m.plan").exists()


def test_cli_trt_says_why_it_cannot_run_before_exporting(cli, tmp_path):
    reason = backend_unavailable("trt")
    if reason is None:
        pytest.skip("the trt backend runs here: test_trt_backend_matches_eager_for_modules covers it")
    code, out, err = cli("validate", *VISION, "--backend", "trt", "--onnx", str(tmp_path / "onnx"), "-q")
    assert (code, out) == (2, "") and err == f"mamba-export validate: error: backend trt: {reason}\n"
    assert not (tmp_path / "onnx").exists(), "nothing is exported for a backend that cannot run"


# -- TensorRT engines of module exports (TensorRT or TensorRT-RTX importable; not in CI) -------------------------


@pytest.fixture(scope="module")
def trt():
    try:
        module = import_tensorrt()
        load_plugin(module)
    except MissingDependencyError as e:
        pytest.skip(f"no TensorRT builder with the plugin here: {e}")
    return module


def test_module_export_parses_with_the_plugin_and_builds_one_profile(trt, exported, tmp_path):
    export_dir = Path(shutil.copytree(exported["vim"][1].parent, tmp_path / "vim"))
    _, _, _, layers = parse_network(trt, make_logger(trt), export_dir / "model.onnx", 2, "SelectiveScan")
    assert [layer.name for layer in layers] == [n.name for n in scan_nodes(onnx.load(str(export_dir / "model.onnx")))]
    for layer in layers:  # y [batch, d_inner, L] float32 and final_state [batch, d_inner, N] float32; L = 4 x 4 patches
        y, state = layer.get_output(0), layer.get_output(1)
        assert (tuple(y.shape), tuple(state.shape)) == ((-1, 32, 16), (-1, 32, 4))
        assert (y.dtype, state.dtype) == (trt.float32, trt.float32)
    batch = engine_batch_range(2, 3)  # the vim example's batch is 2
    plan = ensure_engine(export_dir, profiles=Profiles(batch=batch))
    assert plan == export_dir / "model.plan" and b"SelectiveScan" in plan.read_bytes()
    info = read_engine_info(plan)
    assert info["profiles"] == {"module": {"index": 0, "batch": [1, 2, 8]}}
    assert info["export"] == json.loads((export_dir / "export.json").read_text())
    assert info["plugin"] == {"name": "SelectiveScan", "version": "1", "namespace": ""}
    built = plan.stat().st_mtime_ns
    assert ensure_engine(export_dir, profiles=Profiles(batch=batch)) == plan and plan.stat().st_mtime_ns == built
    wider = Profiles(batch=engine_batch_range(2, 3, 16))
    with pytest.raises(MambaExportError, match=r"with other profiles; pass --overwrite"):
        ensure_engine(export_dir, profiles=wider)
    ensure_engine(export_dir, True, wider)
    assert read_engine_info(plan)["profiles"]["module"]["batch"] == [1, 2, 16]


def test_cli_builds_an_engine_for_a_module_with_integer_inputs(trt, cli, tmp_path):
    model = load_entry_point("module_models:build_tagger")
    export_onnx(model, (torch.randint(0, 50, (1, 9)), torch.randn(1, 9, 4)), tmp_path / "tagger")
    plan = tmp_path / "tagger.plan"
    code, out, err = cli("build-engine", str(tmp_path / "tagger"), "-o", str(plan), "--max-batch", "4", "-q")
    assert code == 0 and out.strip() == str(plan), err
    assert read_engine_info(plan)["profiles"] == {"module": {"index": 0, "batch": [1, 1, 4]}}


def test_trt_backend_matches_eager_for_modules(trt, cli, tmp_path):
    reason = backend_unavailable("trt")
    if reason is not None:
        pytest.skip(f"running an engine needs a GPU TensorRT runs on: {reason}")
    code, out, err = cli("validate", "--entry", "module_models:build_tagger", *TAGGER_INPUTS, "--backend", "trt",
                         "--onnx", str(tmp_path / "tagger"), "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert code == 0, out + err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["backend"] == "trt" and report["batch"] == 3
    assert read_engine_info(tmp_path / "tagger" / "model.plan")["profiles"]["module"]["batch"] == [1, 2, 8]
    model = perturbed(BidirectionalPatchMamba())
    report = validate_module(model, torch.randn(2, 3, 16, 16), tmp_path / "vim", backend="trt", max_batch=5)
    assert report.passed and report.batch == 3, report.table()


def test_cli_reuses_the_export_that_export_onnx_made(cli, tmp_path):
    """The quick start's order: export_onnx(model, ...) names the export by the model's class,
    `validate --entry` by the entry point; both name the same model."""
    install_mamba_ssm_shim()
    import module_models  # noqa: PLC0415  (needs the shim, as user code does)

    export_onnx(module_models.build_vision(), torch.randn(1, 3, 16, 12), tmp_path / "vim")
    code, out, err = cli("validate", *VISION, "--onnx", str(tmp_path / "vim"))
    assert code == 0 and "PASSED" in out, err
    assert f"Using the export in {tmp_path / 'vim'}" in err


class HalfActivations(nn.Module):
    """float32 parameters, float16 activations: the scan computes in float16."""

    def __init__(self, dim=8, d_state=4):
        super().__init__()
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, d_state + 1).repeat(dim, 1)))
        self.D = nn.Parameter(torch.ones(dim))

    def forward(self, u, delta, B, C):
        return selective_scan_fn(u, delta, -torch.exp(self.A_log), B, C, self.D, delta_softplus=True)


def test_float16_activations_are_held_to_the_float16_tolerance(tmp_path):
    model = perturbed(HalfActivations())
    example = tuple(torch.randn(*shape).half() for shape in ((2, 8, 40), (2, 8, 40), (2, 4, 40), (2, 4, 40)))
    report = validate_module(model, example, tmp_path / "half", backend="ort")
    assert report.tolerance == TOLERANCES["float16"][0] and report.passed
    assert 1e-5 < report.outputs[0]["max_rel_err"] <= report.tolerance  # float16 rounding, not float32 agreement


def test_dynamic_dimensions_take_any_size():
    held = [{"name": "images", "shape": ["batch", 3, "4*h", "4*w"], "dtype": "float32"}]
    assert validate_module_py._takes(held, [torch.randn(2, 3, 32, 16)])
    assert not validate_module_py._takes(held, [torch.randn(2, 4, 32, 16)])  # a fixed dimension differs
    assert not validate_module_py._takes(held, [torch.randn(2, 3, 32)])  # another rank
    assert not validate_module_py._takes(held, [torch.randn(2, 3, 32, 16).half()])  # another type


def test_an_export_without_a_scan_node_says_so(tmp_path, capsys):
    export_onnx(nn.Sequential(nn.Linear(4, 4), nn.GELU()), torch.randn(2, 4), tmp_path / "plain")
    assert "Warning: no selective scan of torch.nn.modules.container.Sequential became" in capsys.readouterr().err
    export_onnx(perturbed(HalfActivations()), tuple(torch.randn(2, *s) for s in ((8, 9), (8, 9), (4, 9), (4, 9))),
                tmp_path / "scan")  # fmt: skip
    assert "Warning" not in capsys.readouterr().err


def test_a_failed_export_leaves_no_directory_it_made(tmp_path):
    out = tmp_path / "new" / "dir"
    with pytest.raises(MambaExportError, match="torch.export cannot trace"):
        export_onnx(perturbed(HalfActivations()), torch.randn(2, 3), out)  # not the inputs forward takes
    assert not (tmp_path / "new").exists(), "nor its parents"
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(MambaExportError):
        export_onnx(perturbed(HalfActivations()), torch.randn(2, 3), kept)
    assert kept.is_dir(), "a directory the user had stays"
