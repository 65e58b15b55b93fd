"""Loading a user's model from a 'package.module:factory' entry point (docs/custom-models.md)."""

from __future__ import annotations

import importlib
import os
import sys

import torch

from .errors import MambaExportError
from .intercept import install_mamba_ssm_shim


def _parse(spec: str) -> tuple[str, list[str]]:
    module, sep, attr = spec.partition(":")
    names = [*module.split("."), *attr.split(".")]
    if not sep or ":" in attr or not all(n.isidentifier() for n in names):
        raise MambaExportError(
            f"entry point '{spec}': expected 'package.module:factory' (a module path, a colon, then a "
            "function or class of that module returning the torch.nn.Module)"
        )
    return module, attr.split(".")


def _import(module: str, spec: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise MambaExportError(
                f"entry point '{spec}': no module named '{e.name}' (is it installed, on PYTHONPATH or in the "
                "current directory?)"
            ) from e
        raise MambaExportError(f"entry point '{spec}': importing {module} failed: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise MambaExportError(f"entry point '{spec}': importing {module} failed: {type(e).__name__}: {e}") from e


def load_entry_point(spec: str, *, shim: bool = True) -> torch.nn.Module:
    """Imports ``package.module`` and returns ``factory()`` (or the module object named, if it
    is already an nn.Module instance), in eval mode.

    The current directory is importable, as with ``python -m``. ``shim``: install the
    mamba_ssm stand-in first where mamba_ssm is not installed, so code importing its scan
    functions imports here (intercept/shim.py).
    """
    module_name, attrs = _parse(spec)
    if shim:
        install_mamba_ssm_shim()
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj = _import(module_name, spec)
    for i, name in enumerate(attrs):
        if not hasattr(obj, name):
            owner = ".".join([module_name, *attrs[:i]])
            raise MambaExportError(f"entry point '{spec}': {owner} has no attribute '{name}'")
        obj = getattr(obj, name)
    if isinstance(obj, torch.nn.Module):
        model = obj
    elif callable(obj):
        try:
            model = obj()
        except Exception as e:
            raise MambaExportError(f"entry point '{spec}': calling it failed: {type(e).__name__}: {e}") from e
    else:
        raise MambaExportError(f"entry point '{spec}' is a {type(obj).__name__}, not a callable returning a model")
    if not isinstance(model, torch.nn.Module):
        raise MambaExportError(
            f"entry point '{spec}' returned a {type(model).__name__}, expected a torch.nn.Module"
        )
    return model.eval()
