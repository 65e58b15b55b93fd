"""Export a Mamba language model to ONNX: one graph for prefill and decode.

Interface of the exported graph (docs/export.md):
  inputs   input_ids [batch, sequence] int64, then per layer i
           past_conv_state.{i} [batch, ...] (model dtype)
           past_ssm_state.{i}  [batch, ...] (float32)
  outputs  logits [batch, sequence, vocab], then present_conv_state.{i}, present_ssm_state.{i}
The state tensors have the shapes of the model's ``empty_state`` (Mamba-1: conv [batch,
d_inner, d_conv-1], ssm [batch, d_inner, d_state]; Mamba-2: conv [batch, conv_dim, d_conv-1],
ssm [batch, nheads, headdim, d_state]). Zero states mean "start of sequence". Each scan is
one ``mamba`` node: ``SelectiveScan`` (Mamba-1) or ``SSDScan`` (Mamba-2).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import torch

from .. import __version__, jsonio
from ..errors import MambaExportError, MissingDependencyError
from ..loading import load, resolve_dtype
from ..runtime.ort import import_onnxruntime
from .portable import make_portable
from .schemas import DOMAIN, DOMAIN_VERSION
from .translation import TRANSLATION_TABLE

DEFAULT_OPSET = 18
# Protobuf cannot hold a file over 2 GiB; above this the weights go to model.onnx.data.
EXTERNAL_DATA_THRESHOLD = 1 << 30
EXAMPLE_BATCH, EXAMPLE_SEQUENCE = 2, 5  # not 0/1, which torch.export would specialise on


def state_names(n_layer: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_state.{i}" for i in range(n_layer) for kind in ("conv", "ssm")]


class _FlatStateLM(torch.nn.Module):
    """model(input_ids, state) with the state as a flat list, the order of state_names()."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, flat_state):
        state = [(flat_state[2 * i], flat_state[2 * i + 1]) for i in range(len(flat_state) // 2)]
        logits, new_state = self.model(input_ids, state)
        return logits, *[t for pair in new_state for t in pair]


def _prepare_model(model_or_path, dtype) -> torch.nn.Module:
    target = resolve_dtype(dtype)
    if isinstance(model_or_path, (str, os.PathLike)):
        return load(model_or_path, dtype=target or torch.float32)
    model = model_or_path
    if target is not None and model.lm_head.weight.dtype != target:
        model = copy.deepcopy(model).to(target)  # never change the caller's model
    return model.eval()


@contextlib.contextmanager
def quiet_exporter():
    """The exporter narrates on stdout and warns about unrelated registries (torchvision)."""
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        registry_log.setLevel(level)


@contextlib.contextmanager
def reserved_output(out_dir: Path, overwrite: bool):
    """Refuses to replace an export unasked and makes ``out_dir`` (before the export's work, so
    that an unusable path fails first); a directory it made is removed again if the export fails."""
    # model.onnx.data too: replacing an export deletes it (write_export), so it counts as one.
    existing = [p for p in (out_dir / "model.onnx", out_dir / "export.json", out_dir / "model.onnx.data") if p.exists()]
    if existing and not overwrite:
        raise MambaExportError(f"{out_dir} already holds an export ({existing[0].name}); use --overwrite to replace it")
    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for p in made:  # innermost first, each only if still empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise


def _trace(model: torch.nn.Module, opset: int):
    cfg = model.config
    ids = torch.zeros(EXAMPLE_BATCH, EXAMPLE_SEQUENCE, dtype=torch.long)
    state = [t for pair in model.empty_state(EXAMPLE_BATCH) for t in pair]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with quiet_exporter():
        return torch.onnx.export(
            _FlatStateLM(model),
            (ids, state),
            dynamo=True,
            opset_version=opset,
            custom_translation_table=TRANSLATION_TABLE,
            dynamic_shapes=({0: batch, 1: sequence}, [{0: batch} for _ in state]),
            input_names=["input_ids", *state_names(cfg.n_layer, "past")],
            output_names=["logits", *state_names(cfg.n_layer, "present")],
            optimize=True,
            verbose=False,
        )


def _finish(proto: onnx.ModelProto, portable: bool, metadata: dict) -> onnx.ModelProto:
    if portable:
        proto = make_portable(proto)
    # Readers accept an IR version up to theirs (ORT 1.31: 13); write the lowest that fits.
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    proto.producer_name, proto.producer_version = "mamba_export", __version__
    onnx.helper.set_model_props(proto, {f"mamba_export.{k}": jsonio.dumps(v) for k, v in metadata.items()})
    return proto


def tool_versions() -> dict:
    import onnxscript

    return {"mamba_export": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__}  # fmt: skip


def check_opset(opset: int) -> None:
    """Refuses an opset that would not be the one written (below DEFAULT_OPSET torch's exporter
    silently writes DEFAULT_OPSET, above the installed onnx's newest it cannot convert) or that
    the installed onnxruntime cannot load (onnx may know newer opsets than it runs)."""
    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise MambaExportError(f"opset must be between {DEFAULT_OPSET} and {newest} (this onnx's newest), not {opset}")
    readable = ort_newest_opset()
    if readable is not None and opset > readable:
        raise MambaExportError(f"opset {opset} cannot be loaded by the installed onnxruntime "
                               f"{import_onnxruntime().__version__}; choose one between {DEFAULT_OPSET} and {readable}")


@functools.cache
def ort_newest_opset() -> int | None:
    """The newest opset whose graphs, as export writes them, the installed onnxruntime loads
    (asked by loading a one-node graph per opset); None without onnxruntime."""
    try:
        ort = import_onnxruntime()
    except MissingDependencyError:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refusals are expected: keep them off the console
    for opset in range(onnx.defs.onnx_opset_version(), DEFAULT_OPSET, -1):
        try:
            probe = _identity_model(opset).SerializeToString()
            ort.InferenceSession(probe, options, providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001 - any refusal means "not this opset"
            continue
    return DEFAULT_OPSET


def _identity_model(opset: int) -> onnx.ModelProto:
    """A one-node graph at ``opset``, with the IR version an export at that opset declares."""
    x, y = (onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1]) for name in "xy")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    return proto


def export_onnx(
    model_or_path,
    out_dir: str | os.PathLike,
    *module_args,
    dtype=None,
    opset: int = DEFAULT_OPSET,
    portable: bool = False,
    overwrite: bool = False,
    **module_options,
) -> Path:
    """Exports a Mamba LM (a model or a checkpoint path/hub id) to ``out_dir/model.onnx``.

    Writes ``out_dir/export.json`` too (source, config, dtypes, tensor names, state layout,
    versions). ``portable=True`` replaces the custom ops by standard ONNX ops (runs in any
    ONNX Runtime, slower). Refuses to replace an existing export unless ``overwrite``.
    Returns the path of model.onnx.

    ``export_onnx(module, example_inputs, out_dir, ...)``, with a tensor or a tuple of tensors
    second, exports any nn.Module that calls a selective scan: ``module_export.export_module``.
    """
    if isinstance(out_dir, (torch.Tensor, tuple, list)):
        from .module_export import export_module

        return export_module(model_or_path, out_dir, *module_args, dtype=dtype, opset=opset, portable=portable,
                             overwrite=overwrite, **module_options)  # fmt: skip
    if module_args or module_options:
        raise TypeError("export_onnx(model_or_path, out_dir) of a language model takes no further arguments "
                        "except dtype, opset, portable, overwrite")  # fmt: skip
    check_opset(opset)
    out_dir = Path(out_dir)
    with reserved_output(out_dir, overwrite):
        model = _prepare_model(model_or_path, dtype)
        cfg = model.config
        model_dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
        started = time.perf_counter()
        program = _trace(model, opset)
        named = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else "<module>"
        source = getattr(model, "source", named)
        info = {
            "source": recorded_source(str(source)),
            "architecture": cfg.architecture,
            "config": cfg.to_dict(),
            "dtype": model_dtype,
            "opset": opset,
            "custom_domain": None if portable else {"domain": DOMAIN, "version": DOMAIN_VERSION},
            "portable": portable,
            "inputs": ["input_ids", *state_names(cfg.n_layer, "past")],
            "outputs": ["logits", *state_names(cfg.n_layer, "present")],
            "state": state_layout(model),
            "weights_sha256": weights_digest(model),
            "versions": tool_versions(),
        }
        info["external_data"] = needs_external_data(model)
        return write_export(out_dir, program, info, ("architecture", "config", "portable"), started)


def recorded_source(source: str) -> str:
    """A checkpoint as export.json names it: a local directory by its resolved absolute path, so
    that the export is recognised from any working directory however the path is spelled; a hub
    id or a model's own name as is. A relative path that earlier versions recorded resolves
    against the current directory, as they compared it: where it was exported from is unknown."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else source


def state_layout(model: torch.nn.Module) -> dict:
    """export.json's "state": each layer's conv and ssm state shapes and dtypes, from the model."""
    conv, ssm = model.empty_state(1)[0]
    return {
        "conv": {"shape": ["batch", *conv.shape[1:]], "dtype": str(conv.dtype).removeprefix("torch.")},
        "ssm": {"shape": ["batch", *ssm.shape[1:]], "dtype": str(ssm.dtype).removeprefix("torch.")},
        "zeros_mean": "start of sequence",
    }


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of the module's parameters and buffers (names, types, shapes, bytes), so that an
    export made from other weights of the same model is not taken for this one."""
    digest = hashlib.sha256()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()


def made_from_other_weights(info: dict, module: torch.nn.Module) -> bool:
    """Whether export.json records other weights than ``module``'s (exports written before
    weights_sha256 recorded none: they are taken as they are)."""
    recorded = info.get("weights_sha256")
    return recorded is not None and recorded != weights_digest(module)


def needs_external_data(model: torch.nn.Module) -> bool:
    return sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_THRESHOLD


def write_export(out_dir: Path, program, info: dict, metadata_keys, started: float, describe=None) -> Path:
    """Saves ``program`` (a torch.onnx ONNXProgram) as out_dir/model.onnx and ``info`` as export.json.

    ``metadata_keys``: entries of ``info`` also stored in the model's metadata. ``describe``:
    optional ``proto -> dict`` whose entries are added to ``info`` from the graph as traced.
    """
    # Write into a scratch folder and move into place, so a failure leaves no half export.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as scratch:
        path = Path(scratch) / "model.onnx"
        program.save(str(path), external_data=info["external_data"])
        proto = onnx.load(str(path), load_external_data=False)  # weights stay where they are
        # What was written (check_opset keeps it the opset asked for).
        info["opset"] = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        if describe is not None:
            info.update(describe(proto))
        proto = _finish(proto, info["portable"], {k: info[k] for k in metadata_keys})
        onnx.save_model(proto, str(path))
        onnx.checker.check_model(str(path))
        info["export_seconds"] = round(time.perf_counter() - started, 2)
        (Path(scratch) / "export.json").write_text(jsonio.dumps(info, indent=2) + "\n")
        (out_dir / "model.onnx.data").unlink(missing_ok=True)  # a previous, replaced export's
        for item in Path(scratch).iterdir():
            shutil.move(str(item), out_dir / item.name)
    return out_dir / "model.onnx"


def read_export_info(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / "export.json"
    if not path.is_file():
        raise MambaExportError(f"{out_dir}: no export.json (not a mamba_export export directory)")
    try:
        info = jsonio.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MambaExportError(f"{path}: not valid JSON ({e}); export again with --overwrite") from None
    missing = [key for key in _INFO_KEYS if not isinstance(info, dict) or key not in info]
    if missing:
        raise MambaExportError(f"{path}: missing {', '.join(missing)} (not written by mamba_export); "
                               "export again with --overwrite")  # fmt: skip
    if not (path.parent / "model.onnx").is_file():
        raise MambaExportError(f"{out_dir} holds export.json but no model.onnx (an incomplete export); "
                               "export again with --overwrite")  # fmt: skip
    return info


def check_graph_matches(export_dir: str | os.PathLike, info: dict, metadata: dict[str, str]) -> None:
    """model.onnx carries export.json's main entries in its metadata (``metadata``: the
    session's custom metadata map): a graph put there from another export must not run as
    the one that export.json describes."""
    prefix = "mamba_export."
    for key, value in metadata.items():
        name = key.removeprefix(prefix)
        if key.startswith(prefix) and name in info and jsonio.loads(value) != info[name]:
            raise MambaExportError(f"{Path(export_dir) / 'model.onnx'} is not the graph that export.json describes "
                                   f"(its {name} differs); export again with --overwrite")  # fmt: skip


# What the backends read from every export.json, language model or module.
_INFO_KEYS = ("source", "dtype", "portable", "inputs", "outputs")
