"""Export any nn.Module that calls a selective scan (docs/custom-models.md).

The module is traced by torch.export while ``route_scans`` sends its scan calls to
``mamba::selective_scan``, so each call becomes one ``mamba.SelectiveScan`` node and the rest
is standard ONNX. The files and their handling (scratch folder, overwrite refusal, IR
version, portable form) are the language-model export's (onnx_export.py).
"""

from __future__ import annotations

import copy
import inspect
import os
import time
from pathlib import Path

import onnx
import torch

from .. import console
from ..errors import MambaExportError, errors_as_one_line
from ..intercept import route_scans
from ..loading import resolve_dtype
from .onnx_export import (
    DEFAULT_OPSET,
    check_opset,
    needs_external_data,
    quiet_exporter,
    reserved_output,
    tool_versions,
    weights_digest,
    write_export,
)
from .schemas import DOMAIN, DOMAIN_VERSION
from .translation import TRANSLATION_TABLE


def as_input_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        kinds = ", ".join(type(t).__name__ for t in inputs) or "nothing"
        raise MambaExportError(f"example_inputs must be a tensor or a tuple of tensors, got {kinds}")
    return inputs


def _names(given, n: int, default: list[str], what: str) -> list[str]:
    if given is None:
        return default
    names = list(given)
    if len(names) != n or len(set(names)) != n:
        raise MambaExportError(f"{what} must be {n} distinct names, got {names}")
    return names


def _default_input_names(module: torch.nn.Module, n: int) -> list[str]:
    """forward's positional parameter names (what a user knows the inputs as), else input_{i}."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        params = []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p.name for p in params if p.kind in kinds]
    return positional[:n] if len(positional) >= n else [f"input_{i}" for i in range(n)]


def _batch_shapes(inputs: tuple[torch.Tensor, ...]):
    """Dim 0 of every input is one dynamic ``batch``; a batch-1 example is traced at batch 2,
    since torch.export fixes a dimension of size 0 or 1."""
    sizes = {t.shape[0] for t in inputs if t.dim()}
    if len(sizes) > 1:
        raise MambaExportError(
            f"dynamic_batch makes dim 0 of every input the batch, but the example inputs have dim 0 of sizes "
            f"{sorted(sizes)}; pass dynamic_batch=False or dynamic_shapes"
        )
    if sizes == {0}:
        raise MambaExportError("the example inputs have batch size 0; give at least one example")
    if sizes == {1}:
        inputs = tuple(torch.cat([t, t]) if t.dim() else t for t in inputs)
    batch = torch.export.Dim("batch")
    return inputs, tuple({0: batch} if t.dim() else None for t in inputs)


def _trace(module: torch.nn.Module, inputs, dynamic_shapes, source: str) -> torch.export.ExportedProgram:
    with errors_as_one_line(f"torch.export cannot trace {source}"), route_scans(module):
        return torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes, strict=False)


def _value_info(v: onnx.ValueInfoProto) -> dict:
    tensor = v.type.tensor_type
    return {
        "name": v.name,
        "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim],
        "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)),
    }


def describe_graph(proto: onnx.ModelProto) -> dict:
    """Interface and scan count of a traced graph, for export.json."""
    return {
        "inputs": [_value_info(v) for v in proto.graph.input],
        "outputs": [_value_info(v) for v in proto.graph.output],
        "selective_scans": sum(n.domain == DOMAIN and n.op_type == "SelectiveScan" for n in proto.graph.node),
    }


def class_path(module: torch.nn.Module) -> str:
    """How export.json names a module by default: its class, with its module."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def module_dtype(module: torch.nn.Module) -> str:
    floating = [p.dtype for p in module.parameters() if p.is_floating_point()]
    return str(floating[0] if floating else torch.float32).removeprefix("torch.")


def export_module(
    module: torch.nn.Module,
    example_inputs,
    out_dir: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    dynamic_shapes=None,
    input_names=None,
    output_names=None,
    dtype=None,
    opset: int = DEFAULT_OPSET,
    portable: bool = False,
    overwrite: bool = False,
    source: str | None = None,
) -> Path:
    """Exports ``module(*example_inputs)`` to ``out_dir/model.onnx`` (+ export.json, kind "module").

    Scan calls (docs/custom-models.md) become ``mamba.SelectiveScan`` nodes. ``dynamic_batch``:
    dim 0 of every input is the dynamic ``batch``; ``dynamic_shapes`` (torch.export's format)
    replaces that. ``input_names`` default to forward's parameter names, ``output_names`` to
    ``output`` / ``output_{i}``. ``dtype`` converts a copy of the module and the floating
    inputs. The module is traced in the mode it is in (call ``.eval()`` first). ``source``
    names the model in export.json (default: its class). Returns the path of model.onnx.
    """
    if not isinstance(module, torch.nn.Module):
        raise MambaExportError(f"expected a torch.nn.Module to export, got {type(module).__name__}")
    inputs = as_input_tuple(example_inputs)
    target = resolve_dtype(dtype)
    if target is not None:
        module = copy.deepcopy(module).to(target)  # never change the caller's module
        inputs = tuple(t.to(target) if t.is_floating_point() else t for t in inputs)
    source = source or class_path(module)
    in_names = _names(input_names, len(inputs), _default_input_names(module, len(inputs)), "input_names")
    check_opset(opset)
    out_dir = Path(out_dir)
    with reserved_output(out_dir, overwrite):
        started = time.perf_counter()
        dynamic = dynamic_shapes is None and dynamic_batch
        if dynamic:
            inputs, dynamic_shapes = _batch_shapes(inputs)
        program = _trace(module, inputs, dynamic_shapes, source)
        n_out = sum(s.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT
                    for s in program.graph_signature.output_specs)  # fmt: skip
        out_names = _names(output_names, n_out, ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)],
                           "output_names")  # fmt: skip
        with quiet_exporter():
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,  # names the dynamic axes as given ("batch")
                opset_version=opset,
                custom_translation_table=TRANSLATION_TABLE,
                input_names=in_names,
                output_names=out_names,
                optimize=True,
                verbose=False,
            )
        info = {
            "kind": "module",
            "source": source,
            "dtype": module_dtype(module),
            "opset": opset,
            "custom_domain": None if portable else {"domain": DOMAIN, "version": DOMAIN_VERSION},
            "portable": portable,
            "dynamic_batch": dynamic,
            "weights_sha256": weights_digest(module),
            "versions": tool_versions(),
            "external_data": needs_external_data(module),
        }
        path = write_export(out_dir, onnx_program, info, ("kind", "source", "portable"), started, describe_graph)
        if info["selective_scans"] == 0:  # the export is valid, but the scan ran as unrolled ops (slow, large)
            console.info(f"Warning: no selective scan of {source} became a mamba.SelectiveScan node; see "
                         "docs/custom-models.md for the calls that are recognised")  # fmt: skip
        return path
