"""A stand-in for mamba_ssm where it is not installed (it needs CUDA to build).

``install_mamba_ssm_shim()`` registers three small modules in ``sys.modules`` — ``mamba_ssm``,
``mamba_ssm.ops`` and ``mamba_ssm.ops.selective_scan_interface`` — whose ``selective_scan_fn``,
``selective_scan_ref`` and ``mamba_inner_fn`` are the adapters of this package. Unmodified
code doing ``from mamba_ssm.ops.selective_scan_interface import selective_scan_fn`` then
imports, runs on the CPU (through the op's reference) and exports with the scan as
``mamba.SelectiveScan``. Nothing else of mamba_ssm exists in the shim: importing any other
part of it fails with ModuleNotFoundError, as it would without mamba_ssm.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

_MARK = "__mamba_export_shim__"
_PACKAGES = ("mamba_ssm", "mamba_ssm.ops")
_INTERFACE = "mamba_ssm.ops.selective_scan_interface"
EXPORTS = ("selective_scan_fn", "selective_scan_ref", "mamba_inner_fn")


def is_shim(module) -> bool:
    return bool(getattr(module, _MARK, False))


def mamba_ssm_installed() -> bool:
    """Whether the real mamba_ssm is installed (importable or already imported), not the shim."""
    loaded = sys.modules.get("mamba_ssm")
    if loaded is not None:
        return not is_shim(loaded)
    return importlib.util.find_spec("mamba_ssm") is not None


def _module(name: str, is_package: bool, **attrs) -> types.ModuleType:
    module = types.ModuleType(name, f"mamba_export's stand-in for {name} (docs/custom-models.md)")
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=is_package)
    if is_package:
        module.__path__ = []  # a package with no files: other submodules are not found
    module.__dict__.update(attrs, **{_MARK: True})
    return module


def install_mamba_ssm_shim() -> bool:
    """Installs the stand-in unless the real mamba_ssm is installed (it is never shadowed).

    Returns True when the shim is in place (now or already), False when the real package
    is used. Install it before importing the code that imports mamba_ssm.
    """
    if is_shim(sys.modules.get("mamba_ssm")):
        return True
    if mamba_ssm_installed():
        return False
    from . import adapters

    functions = {name: getattr(adapters, name) for name in EXPORTS}
    interface = _module(_INTERFACE, False, **functions)
    ops = _module("mamba_ssm.ops", True, selective_scan_interface=interface)
    # The real package re-exports the two functions from its top level.
    root = _module("mamba_ssm", True, ops=ops, selective_scan_fn=functions["selective_scan_fn"],
                   mamba_inner_fn=functions["mamba_inner_fn"])  # fmt: skip
    sys.modules.update({"mamba_ssm": root, "mamba_ssm.ops": ops, _INTERFACE: interface})
    return True


def uninstall_mamba_ssm_shim() -> None:
    """Removes the stand-in modules (code that imported from them keeps its references)."""
    for name in (*_PACKAGES, _INTERFACE):
        if is_shim(sys.modules.get(name)):
            del sys.modules[name]
